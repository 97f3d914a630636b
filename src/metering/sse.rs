//! Server-sent events read incrementally, chunk by chunk as they stream past, keeping only
//! the event being read: a line longer than the bound is dropped, never buffered whole.

/// The most of one event's data kept while it is read (a usage chunk is a few hundred
/// bytes; a text delta a few KB).
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// One event: its `event:` name (if any) and its `data:` lines joined with `\n`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Event {
    pub(super) name: Option<String>,
    pub(super) data: String,
}

/// Splits a byte stream into events. Feed it chunks in order; it hands back each event
/// once its blank line has arrived.
#[derive(Default)]
pub(super) struct Events {
    line: Vec<u8>,
    /// The current line grew past the bound: its rest is skipped.
    overlong: bool,
    current: Event,
    has_data: bool,
}

impl Events {
    /// The events `chunk` completes.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !std::mem::take(&mut self.overlong) {
                    self.line_done(&line, &mut out);
                }
            } else if self.line.len() < MAX_EVENT_BYTES {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
        out
    }

    /// Whatever the stream ended on without a blank line after it.
    pub(super) fn finish(&mut self) -> Option<Event> {
        if !self.line.is_empty() && !self.overlong {
            let line = std::mem::take(&mut self.line);
            let mut out = Vec::new();
            self.line_done(&line, &mut out);
        }
        self.has_data.then(|| {
            self.has_data = false;
            std::mem::take(&mut self.current)
        })
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_data || self.current.name.is_some() {
                out.push(std::mem::take(&mut self.current));
            }
            self.has_data = false;
            return;
        }
        let line = String::from_utf8_lossy(line);
        // A line starting with ':' is a comment (a keep-alive): its field is empty.
        let (field, value) = match line.find(':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&line[..], ""),
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                if self.current.data.len() + value.len() <= MAX_EVENT_BYTES {
                    self.current.data.push_str(value);
                }
                self.has_data = true;
            }
            "event" => self.current.name = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&str]) -> Vec<Event> {
        let mut e = Events::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(e.feed(c.as_bytes()));
        }
        out.extend(e.finish());
        out
    }

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let got = all(&[
            "data: {\"a\"",
            ":1}\n",
            "\nevent: done\ndata: x\r\n\r\n: ping\n\n",
            "data: tail",
        ]);
        assert_eq!(
            got,
            vec![
                Event {
                    name: None,
                    data: "{\"a\":1}".into()
                },
                Event {
                    name: Some("done".into()),
                    data: "x".into()
                },
                Event {
                    name: None,
                    data: "tail".into()
                },
            ]
        );
    }

    #[test]
    fn data_lines_join_and_an_overlong_line_is_dropped_not_kept() {
        let got = all(&["data: a\ndata: b\n\n"]);
        assert_eq!(got[0].data, "a\nb");
        let huge = format!(
            "data: {}\n\ndata: after\n\n",
            "x".repeat(MAX_EVENT_BYTES + 10)
        );
        let got = all(&[&huge]);
        assert_eq!(
            got,
            vec![Event {
                name: None,
                data: "after".into()
            }]
        );
    }
}

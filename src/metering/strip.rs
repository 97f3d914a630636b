//! The usage chunk the vault asked for and the caller did not: OpenAI's streamed chat sends
//! its usage only when asked (`stream_options.include_usage`), in one extra event whose
//! `choices` is empty. When the vault asked for it to meter the call, that event is left
//! out of what the caller receives; every other byte passes as it came.

use serde_json::Value;

/// An event not ended within this many bytes is passed on as it is (a hostile stream
/// cannot make the vault hold it).
const MAX_PENDING: usize = 64 * 1024;

/// Holds back at most one unfinished event, to see whether it is the usage chunk.
#[derive(Default)]
pub(super) struct Strip {
    pending: Vec<u8>,
    /// The stream broke the event shape: everything passes from now on.
    gave_up: bool,
}

impl Strip {
    /// What of `chunk` (with what was held back) goes on now.
    pub(super) fn chunk(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.gave_up {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(end) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            if !is_usage_only(&event) {
                out.extend(event);
            }
        }
        if self.pending.len() > MAX_PENDING {
            self.gave_up = true;
            out.append(&mut self.pending);
        }
        out
    }

    /// The stream ended: what was held back, unless it is the usage chunk.
    pub(super) fn end(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        if !self.gave_up && is_usage_only(&rest) {
            Vec::new()
        } else {
            rest
        }
    }
}

/// Where the first whole event of `buf` ends (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') => return Some(i + 2),
            (b'\r', b'\n') if buf[i + 2..].starts_with(b"\r\n") => return Some(i + 4),
            _ => i += 1,
        }
    }
    None
}

/// Whether an event is the usage-only chunk: data that is a JSON object with an empty
/// `choices` and a `usage` object.
fn is_usage_only(event: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(event) else {
        return false;
    };
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(v) = serde_json::from_slice::<Value>(data.as_bytes()) else {
        return false;
    };
    v.get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && v.get("usage").is_some_and(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(chunk: usize, stream: &str) -> String {
        let mut s = Strip::default();
        let mut out = Vec::new();
        for c in stream.as_bytes().chunks(chunk) {
            out.extend(s.chunk(c));
        }
        out.extend(s.end());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_usage_chunk_is_left_out_and_every_other_byte_passes() {
        let want = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: [DONE]\n\n"
        );
        for chunk in [1, 5, 13, 4096] {
            assert_eq!(run(chunk, STREAM), want, "chunks of {chunk}");
        }
        // CRLF framing, and a usage chunk that is the stream's last bytes.
        let crlf = STREAM.replace("\n\n", "\r\n\r\n");
        assert_eq!(run(7, &crlf), want.replace("\n\n", "\r\n\r\n"));
        let unended = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}";
        assert_eq!(run(3, unended), "");
    }

    #[test]
    fn a_stream_without_event_boundaries_is_not_held() {
        let long = "x".repeat(MAX_PENDING + 10);
        let mut s = Strip::default();
        let out = s.chunk(long.as_bytes());
        assert_eq!(out.len(), long.len());
        assert_eq!(s.chunk(b"data: {}\n\n"), b"data: {}\n\n");
    }
}

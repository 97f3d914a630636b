//! The configuration's shared vocabulary, on the ground floor so that every owner of a
//! section of the settings (auth, keys, providers, jobs, notify, system keys) speaks it
//! without reaching up to `config`, which gathers the sections: the deployment
//! ([`Environment`]), a problem with one variable ([`ConfigError`]) and the reader every
//! section's parser takes ([`Vars`]: blank is unset, numbers, switches, choices, and every
//! problem kept in one list).

/// Which deployment this is: production refuses what development allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Staging,
    Production,
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl Environment {
    /// `ENVIRONMENT`: production unless it says otherwise.
    pub fn parse(vars: &mut Vars) -> Environment {
        use Environment::*;
        vars.choice(
            "ENVIRONMENT",
            &[
                ("production", Production),
                ("staging", Staging),
                ("development", Development),
            ],
            "must be development, staging or production",
        )
    }
}

/// The Worker's variables (vars and secrets alike) as each section's parser reads them,
/// and every problem found, in the order found. A problem names its variable, never its
/// value; a value with a problem leaves the default in its place.
pub struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<ConfigError>,
}

impl<'a> Vars<'a> {
    pub fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            get,
            problems: Vec::new(),
        }
    }

    /// The value of `name`, untrimmed; blank means unset.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    /// Notes a problem with `var`, in words that quote no value.
    pub fn problem(&mut self, var: &'static str, problem: impl Into<String>) {
        self.problems.push(ConfigError {
            var,
            problem: problem.into(),
        });
    }

    /// How many problems have been noted so far.
    pub fn problems(&self) -> usize {
        self.problems.len()
    }

    /// Every problem noted, in order.
    pub fn finish(self) -> Vec<ConfigError> {
        self.problems
    }

    /// An integer from `min` to `max`.
    pub fn number(&mut self, var: &'static str, default: u64, min: u64, max: u64) -> u64 {
        match self.get(var) {
            None => default,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.problem(var, format!("must be an integer from {min} to {max}"));
                    default
                }
            },
        }
    }

    /// `true`/`1` or `false`/`0`.
    pub fn flag(&mut self, var: &'static str, default: bool) -> bool {
        match self.get(var).as_deref() {
            None => default,
            Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(_) => {
                self.problem(var, "must be true or false");
                default
            }
        }
    }

    /// An on/off switch.
    pub fn switch(&mut self, var: &'static str, default: bool) -> bool {
        match self.get(var).as_deref() {
            None => default,
            Some("on") => true,
            Some("off") => false,
            Some(_) => {
                self.problem(var, "must be on or off");
                default
            }
        }
    }

    /// One of `options` by its exact name; unset is the first.
    pub fn choice<T: Copy>(
        &mut self,
        var: &'static str,
        options: &[(&str, T)],
        problem: &str,
    ) -> T {
        let value = self.get(var);
        let Some(raw) = value.as_deref() else {
            return options[0].1;
        };
        match options.iter().find(|(name, _)| *name == raw) {
            Some((_, v)) => *v,
            None => {
                self.problem(var, problem);
                options[0].1
            }
        }
    }
}

/// Runs `parse` over `pairs` as the Worker's variables: what it returns and the problems
/// it noted.
#[cfg(test)]
pub(crate) fn read_vars<T>(
    pairs: &[(&str, &str)],
    parse: impl FnOnce(&mut Vars) -> T,
) -> (T, Vec<ConfigError>) {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let mut vars = Vars::new(&get);
    let out = parse(&mut vars);
    (out, vars.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_unset_and_a_bad_value_is_named_and_leaves_the_default() {
        let (got, problems) = read_vars(
            &[
                ("N", " 7 "),
                ("BLANK", "  "),
                ("BAD", "seven"),
                ("WIDE", "70"),
            ],
            |v| {
                (
                    v.number("N", 1, 0, 10),
                    v.number("BLANK", 1, 0, 10),
                    v.number("BAD", 1, 0, 10),
                    v.number("WIDE", 1, 0, 10),
                )
            },
        );
        assert_eq!(got, (7, 1, 1, 1));
        let named: Vec<_> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            named,
            [
                "BAD: must be an integer from 0 to 10",
                "WIDE: must be an integer from 0 to 10"
            ]
        );
    }

    #[test]
    fn switches_flags_and_choices_take_only_their_words() {
        let (got, problems) = read_vars(
            &[
                ("S", "off"),
                ("F", "1"),
                ("C", "b"),
                ("BAD_S", "yes"),
                ("BAD_C", "B"),
            ],
            |v| {
                (
                    v.switch("S", true),
                    v.flag("F", false),
                    v.choice("C", &[("a", 'a'), ("b", 'b')], "must be a or b"),
                    v.choice("UNSET", &[("a", 'a'), ("b", 'b')], "must be a or b"),
                    v.switch("BAD_S", true),
                    v.choice("BAD_C", &[("a", 'a'), ("b", 'b')], "must be a or b"),
                )
            },
        );
        assert_eq!(got, (false, true, 'b', 'a', true, 'a'));
        let named: Vec<_> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(named, ["BAD_S: must be on or off", "BAD_C: must be a or b"]);
    }
}

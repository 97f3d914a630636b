//! A budget's vocabulary: the period it counts over, the units it counts, its limits and
//! amounts in them. The rules and the counting are `budgets`'.

use serde_json::{json, Map, Value};

use super::Timestamp;

crate::wire_enum! {
    /// The period a budget counts over, in UTC.
    pub enum Period {
        Day = "day",
        Month = "month",
    }
}

crate::wire_enum! {
    /// What a budget counts.
    pub enum Unit {
        Requests = "requests",
        InputTokens = "input_tokens",
        OutputTokens = "output_tokens",
        Characters = "characters",
        AudioSeconds = "audio_seconds",
    }
}

/// Every unit, in the order amounts list them.
pub const UNITS: [Unit; 5] = [
    Unit::Requests,
    Unit::InputTokens,
    Unit::OutputTokens,
    Unit::Characters,
    Unit::AudioSeconds,
];

/// The most any one limit may be.
const MAX_LIMIT: f64 = 1e15;

/// Amounts in each unit (used, reserved, limits where set).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Amounts(pub [f64; 5]);

impl Amounts {
    pub fn get(&self, unit: Unit) -> f64 {
        self.0[index(unit)]
    }

    pub fn set(&mut self, unit: Unit, v: f64) {
        self.0[index(unit)] = v;
    }

    /// `self - other`, unit by unit.
    pub fn minus(&self, other: &Amounts) -> Amounts {
        let mut out = *self;
        for (o, b) in out.0.iter_mut().zip(other.0) {
            *o -= b;
        }
        out
    }

    /// As a JSON object with a member per unit.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for unit in UNITS {
            m.insert(unit.as_str().to_owned(), amount_json(self.get(unit)));
        }
        Value::Object(m)
    }
}

fn index(unit: Unit) -> usize {
    UNITS.iter().position(|u| *u == unit).unwrap_or(0)
}

/// An amount in JSON: a whole number as an integer, else as it is.
pub fn amount_json(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// A budget: a period and at least one limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub period: Period,
    /// The limit of each unit that has one.
    pub limits: [Option<f64>; 5],
}

impl Budget {
    pub fn limit(&self, unit: Unit) -> Option<f64> {
        self.limits[index(unit)]
    }

    /// `{"period", "<unit>": limit, …}`, as it is written.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("period".into(), json!(self.period.as_str()));
        for unit in UNITS {
            if let Some(l) = self.limit(unit) {
                m.insert(unit.as_str().to_owned(), amount_json(l));
            }
        }
        Value::Object(m)
    }

    /// Reads `{"period":"day"|"month", "requests"?, "input_tokens"?, "output_tokens"?,
    /// "characters"?, "audio_seconds"?}` (at least one limit, each a number ≥ 0), naming
    /// each problem under `field`.
    pub fn parse(value: &Value, field: &str) -> Result<Budget, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let Some(map) = value.as_object() else {
            return Err(vec![(field.to_owned(), "must be a JSON object".to_owned())]);
        };
        let period = match map
            .get("period")
            .and_then(Value::as_str)
            .and_then(Period::parse)
        {
            Some(p) => Some(p),
            None => {
                errors.push((
                    format!("{field}.period"),
                    "must be \"day\" or \"month\"".to_owned(),
                ));
                None
            }
        };
        let mut limits = [None; 5];
        for (name, v) in map {
            if name == "period" {
                continue;
            }
            let at = format!("{field}.{name}");
            let Some(unit) = Unit::parse(name) else {
                errors.push((at, "is not a known field".to_owned()));
                continue;
            };
            match v.as_f64() {
                Some(n) if n.is_finite() && (0.0..=MAX_LIMIT).contains(&n) => {
                    limits[index(unit)] = Some(n)
                }
                _ => errors.push((at, "must be a number from 0 to 10^15".to_owned())),
            }
        }
        if errors.is_empty() && limits.iter().all(Option::is_none) {
            errors.push((
                field.to_owned(),
                "must set at least one of requests, input_tokens, output_tokens, characters, audio_seconds".to_owned(),
            ));
        }
        match (period, errors.is_empty()) {
            (Some(period), true) => Ok(Budget { period, limits }),
            _ => Err(errors),
        }
    }
}

impl Period {
    /// The period's name at `now` (`2026-12-06`, `2026-12`), the key its counters are kept
    /// under.
    pub fn key(self, now: Timestamp) -> String {
        let day = &now.to_rfc3339()[..10];
        match self {
            Period::Day => day.to_owned(),
            Period::Month => day[..7].to_owned(),
        }
    }

    /// When the period that holds `now` ends (and its budget is whole again).
    pub fn resets_at(self, now: Timestamp) -> Timestamp {
        const DAY_MS: u64 = 86_400_000;
        let next_day = Timestamp::from_millis((now.as_millis() / DAY_MS + 1) * DAY_MS);
        match self {
            Period::Day => next_day,
            Period::Month => {
                // The first day whose month differs.
                let month = &now.to_rfc3339()[..7];
                let mut t = next_day;
                while &t.to_rfc3339()[..7] == month {
                    t = t.plus_millis(DAY_MS);
                }
                t
            }
        }
    }
}

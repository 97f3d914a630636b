//! Which consumer a queue's messages go to. One Worker consumes every queue of its
//! environment; a queue's name (`byok-vault-audit-staging-dlq`, …) says what it carries
//! (its `audit` or `jobs` segment) and whether it is a dead-letter queue (its last
//! segment, `dlq`). wrangler.toml names them so in every environment.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    /// Nudges and whole audit events: chain the outbox.
    Audit,
    /// What the audit consumer gave up on: one more try, then keep it.
    AuditDeadLetters,
    /// Background jobs: the revalidation sweep's checks.
    Jobs,
    /// Jobs that kept failing: logged and dropped (a sweep's claim expires and the
    /// credential is queued again).
    JobsDeadLetters,
}

impl QueueRole {
    /// The role of the queue named `name`; `None` for a queue this Worker does not know.
    pub fn of(name: &str) -> Option<Self> {
        let segments: Vec<&str> = name.split('-').collect();
        let dead_letters = segments.last() == Some(&"dlq");
        let carries = |what: &str| segments.contains(&what);
        match (carries("audit"), carries("jobs"), dead_letters) {
            (true, false, false) => Some(Self::Audit),
            (true, false, true) => Some(Self::AuditDeadLetters),
            (false, true, false) => Some(Self::Jobs),
            (false, true, true) => Some(Self::JobsDeadLetters),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_in_wrangler_toml_has_its_role() {
        let toml = include_str!("../wrangler.toml");
        let mut seen = 0;
        for line in toml.lines() {
            for part in line.split("queue = \"").skip(1) {
                let name = part.split('"').next().unwrap();
                let role = QueueRole::of(name).unwrap_or_else(|| panic!("{name}"));
                let expected = match (name.contains("audit"), name.ends_with("-dlq")) {
                    (true, false) => QueueRole::Audit,
                    (true, true) => QueueRole::AuditDeadLetters,
                    (false, false) => QueueRole::Jobs,
                    (false, true) => QueueRole::JobsDeadLetters,
                };
                assert_eq!(role, expected, "{name}");
                seen += 1;
            }
        }
        // Producers and consumers, in three environments.
        assert!(seen >= 18, "read only {seen} queue names");
    }

    #[test]
    fn names_are_read_by_segment_not_by_substring() {
        assert_eq!(QueueRole::of("byok-vault-audit"), Some(QueueRole::Audit));
        assert_eq!(
            QueueRole::of("byok-vault-jobs-dlq"),
            Some(QueueRole::JobsDeadLetters)
        );
        for unknown in [
            "byok-vault-auditlog",
            "byok-vault-audit-jobs",
            "other",
            "dlq",
            "",
        ] {
            assert_eq!(QueueRole::of(unknown), None, "{unknown}");
        }
    }
}

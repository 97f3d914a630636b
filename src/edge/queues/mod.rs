//! The queue producers: the audit sink over `AUDIT_QUEUE` (`audit.rs`), the jobs queue over
//! `JOBS_QUEUE` (`jobs.rs`), and how a message is sent (`send.rs`). What consumes them is
//! the core's (`crate::jobs::consume`).

pub(super) mod audit;
pub(super) mod jobs;
mod send;

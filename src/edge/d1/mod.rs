//! D1, the only place that knows SQL: one repository per seam of the core, over the
//! invocation's one binding (`db.rs`). Every write that changes something the audit trail
//! describes writes its event into the outbox in the same transaction.

pub(super) mod audit;
pub(super) mod budgets;
pub(super) mod credentials;
mod db;
pub(super) mod imports;
pub(super) mod jobs;
pub(super) mod notices;
mod rows;
pub(super) mod usage;

pub(super) use db::Db;

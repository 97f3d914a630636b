//! What can go wrong with a store, whichever one: the vocabulary every storage seam answers in.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("a stored row is not readable: {0}")]
    Corrupt(String),
    /// A uniqueness rule refused the write: another request wrote the same thing first.
    #[error("a concurrent write got there first: {0}")]
    Conflict(String),
}

//! The store's one error type: every operation of every store trait returns it, and
//! callers fail closed on it.

/// Result type of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// A store failure. Callers fail closed on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A write shared by several callers failed (group commit): each caller gets the
    /// failure's text.
    #[error("database error: {0}")]
    Shared(String),
    /// A row holds something this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

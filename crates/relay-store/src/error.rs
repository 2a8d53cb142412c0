//! The one error type of the store, and the mapping of constraint violations to it.

use sqlx::error::ErrorKind;

/// Everything that can go wrong in the store.
///
/// Callers distinguish the variants that describe the request (`NotFound`, `Conflict`,
/// `InvalidUrl`) from those that describe the database (`Database`, `Migration`, `Corrupt`):
/// the first kind becomes a 4xx answer or a configuration message, the second an internal
/// error whose details are logged, never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row the operation needs does not exist.
    #[error("not found")]
    NotFound,
    /// The operation would break a rule of the data: a unique name already taken, a group that
    /// still has accounts or API keys, a reference to a group that does not exist.
    #[error("conflict: {0}")]
    Conflict(String),
    /// `DATABASE_URL` cannot be used. The message never contains the URL's password.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The driver or the database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A stored value cannot be read back: the database holds something this version of the
    /// relay never writes (an unknown platform, malformed JSON, a negative token count).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Stored credentials cannot be sealed or opened: sealed ones without
    /// `RELAY_ENCRYPTION_KEY`, or with another key than the one that sealed them.
    #[error("stored credentials cannot be read: {0}")]
    Credentials(String),
}

/// Turns a unique or foreign-key violation into `Conflict` with a message the operator can
/// act on, and keeps every other failure as it is.
///
/// The explicit checks done before writes give the precise message in the common case; this
/// mapping covers the race where two writers pass the check at the same time and the database
/// constraint is what refuses the second one.
pub(crate) fn conflict_on_constraint(
    error: sqlx::Error,
    describe_conflict: impl FnOnce() -> String,
) -> StoreError {
    let is_constraint_violation = error.as_database_error().is_some_and(|database_error| {
        matches!(
            database_error.kind(),
            ErrorKind::UniqueViolation | ErrorKind::ForeignKeyViolation
        )
    });
    if is_constraint_violation {
        StoreError::Conflict(describe_conflict())
    } else {
        StoreError::Database(error)
    }
}

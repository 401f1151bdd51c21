//! Store errors, classified by `DatabaseError::kind()` — never by constraint names.

use sqlx::error::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique or check constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database is out of reach or overloaded (pool timeout, connection lost): retryable.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) => match db.kind() {
                // The message names the constraint: kept for logs, never matched on.
                ErrorKind::UniqueViolation => {
                    StoreError::Conflict(format!("unique: {}", db.message()))
                }
                ErrorKind::CheckViolation => {
                    StoreError::Conflict(format!("check: {}", db.message()))
                }
                ErrorKind::ForeignKeyViolation => {
                    StoreError::Conflict(format!("foreign key: {}", db.message()))
                }
                _ => {
                    let msg = db.message().to_ascii_lowercase();
                    if msg.contains("database is locked") || msg.contains("busy") {
                        StoreError::Unavailable(e.to_string())
                    } else {
                        StoreError::Other(anyhow::Error::new(e))
                    }
                }
            },
            _ => StoreError::Other(anyhow::Error::new(e)),
        }
    }
}

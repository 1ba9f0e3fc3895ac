//! What went wrong in the database, classified for the code that decides what to do about it.
//!
//! plinth-core never sees a `sqlx::Error` or an SQLSTATE: it asks whether a row was missing,
//! which constraint refused a write, whether trying again may succeed, or whether the database
//! is away. Everything else is `Other`, kept whole so that whoever turns it into a 500 logs the
//! cause once.

use std::fmt;

/// The kind of rule a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 23505: a unique index or constraint.
    Unique,
    /// 23P01: an exclusion constraint (overlapping subnets, rack slots, live tokens).
    Exclusion,
    /// 23503: a foreign key (still referenced, or referring to nothing).
    ForeignKey,
    /// 23514: a check constraint, or a trigger raising check_violation with a constraint name.
    Check,
    /// 23502: a NOT NULL column.
    NotNull,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Violation::Unique => "unique",
            Violation::Exclusion => "exclusion",
            Violation::ForeignKey => "foreign key",
            Violation::Check => "check",
            Violation::NotNull => "not null",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query that expects a row found none.
    #[error("no such row")]
    NotFound,
    /// A write broke a rule of the schema; `constraint` names it (empty when PostgreSQL did
    /// not say), `message` is PostgreSQL's.
    #[error("{kind} violation of {constraint:?}: {message}")]
    Violation {
        kind: Violation,
        constraint: String,
        message: String,
    },
    /// A serialization failure or a deadlock: the same transaction again may succeed.
    #[error("the transaction may succeed if tried again: {0}")]
    Retryable(#[source] sqlx::Error),
    /// The database cannot be reached, is shutting down, or is read-only (a standby after a
    /// failover): nothing was written.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug, or a state plinth does not expect.
    #[error(transparent)]
    Other(sqlx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        match &err {
            sqlx::Error::RowNotFound => return Error::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => return Error::Unavailable(err),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let kind = match code.as_ref() {
                    "23505" => Some(Violation::Unique),
                    "23P01" => Some(Violation::Exclusion),
                    "23503" => Some(Violation::ForeignKey),
                    "23514" => Some(Violation::Check),
                    "23502" => Some(Violation::NotNull),
                    _ => None,
                };
                if let Some(kind) = kind {
                    return Error::Violation {
                        kind,
                        constraint: db.constraint().unwrap_or_default().to_owned(),
                        message: db.message().to_owned(),
                    };
                }
                // 40001 serialization_failure, 40P01 deadlock_detected.
                if matches!(code.as_ref(), "40001" | "40P01") {
                    return Error::Retryable(err);
                }
                // 08: connection exceptions; 57P01-57P03: the server is shutting down or
                // starting; 25006: a read-only transaction (a standby after a failover).
                if code.starts_with("08")
                    || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "25006")
                {
                    return Error::Unavailable(err);
                }
            }
            _ => {}
        }
        Error::Other(err)
    }
}

impl Error {
    /// The constraint a write broke, if it broke one.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            Error::Violation { constraint, .. } => Some(constraint),
            _ => None,
        }
    }

    /// Whether the same transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Retryable(_))
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// An answer the database gave that breaks what the caller relies on (a batch function
    /// answering for an item it was not given): a bug, reported as `Other`.
    pub fn protocol(message: String) -> Error {
        Error::Other(sqlx::Error::Protocol(message))
    }
}

//! The one error type of the store contract and the engine.
//!
//! Variants mean the same whichever backend produced them, so callers match
//! on them without knowing the store: a PostgreSQL unique violation and a
//! Redis CAS failure are both [`Error::Conflict`], a refused connection is
//! [`Error::Unavailable`] from every backend.

use crate::schedule::ScheduleError;

/// A boxed error from a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a store or engine call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such item (or it belongs to another tenant).
    #[error("{entity} {id} not found")]
    NotFound {
        /// `"task"` or `"execution"`.
        entity: &'static str,
        /// The identifier asked for.
        id: String,
    },
    /// The write lost a race: a version that moved on, a fence taken over, a
    /// duplicate key.
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// A field of the input is not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, dotted for nested ones (`policy.max_retries`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The cron expression or time zone is not acceptable.
    #[error("schedule: {0}")]
    InvalidSchedule(#[from] ScheduleError),
    /// The store cannot be reached right now; retrying later may work.
    #[error("{backend} store unavailable: {source}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// Any other backend failure.
    #[error("{backend} store error: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// The scheduler is shutting down and takes no new work.
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}

impl Error {
    /// An [`Error::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An [`Error::NotFound`] for a task.
    pub fn task_not_found(id: impl ToString) -> Self {
        Error::NotFound {
            entity: "task",
            id: id.to_string(),
        }
    }

    /// An [`Error::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

//! Mapping sqlx failures onto the store contract's [`Error`] variants.
//!
//! A connection that is refused, lost or terminated, a pool that timed out
//! or was closed, and a server that is starting or shutting down are
//! [`Error::Unavailable`] (the engine retries them with backoff); a unique
//! violation is [`Error::Conflict`]; anything else is [`Error::Backend`].

use tickwheel::Error;

pub(crate) const BACKEND: &str = "postgres";

/// SQLSTATE classes and codes that mean "the server cannot be used right
/// now": connection exceptions (08), insufficient resources (53), operator
/// intervention (57: admin shutdown, crash shutdown, cannot connect now),
/// and system errors (58).
fn transient_state(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "58"))
        // A serialization failure or deadlock: the statement can be retried.
        || code == "40001"
        || code == "40P01"
}

/// Whether `err` is a deadlock or serialization failure worth retrying at once.
pub(crate) fn is_retryable_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// Whether `err` is a unique violation (a taken key).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

pub(crate) fn db_err(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::Unavailable {
            backend: BACKEND,
            source: Box::new(err),
        },
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if transient_state(&code) {
                Error::Unavailable {
                    backend: BACKEND,
                    source: Box::new(err),
                }
            } else if code == "23505" {
                Error::conflict(db.message().to_owned())
            } else {
                Error::Backend {
                    backend: BACKEND,
                    source: Box::new(err),
                }
            }
        }
        _ => Error::Backend {
            backend: BACKEND,
            source: Box::new(err),
        },
    }
}

/// A stored value this crate cannot read back (written outside tickwheel).
pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::Backend {
        backend: BACKEND,
        source: what.into().into(),
    }
}

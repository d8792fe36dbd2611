//! What the host implements: the code that performs a run.
//!
//! The engine hands an [`Executor`] one [`Run`] per execution: a snapshot of
//! the task, the occurrence, the attempt and why it started, and a
//! cancellation token that fires when the run times out, is replaced
//! (`overlap: replace`), loses its lease, or the scheduler shuts down. An
//! executor should stop promptly when it fires; the engine stops waiting
//! for it either way.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::model::{Execution, Task};

/// One run handed to an [`Executor`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Run {
    /// The task as it was when the run started.
    pub task: Arc<Task>,
    /// The execution record (`scheduled_for`, `attempt`, `trigger`, …).
    pub execution: Execution,
    /// Fires when the run should stop.
    pub cancel: CancellationToken,
}

/// The result of a run: success with optional output, or an error message.
pub type RunResult = Result<Option<String>, String>;

/// Performs runs. Implement it, or wrap a closure with [`executor_fn`].
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Performs one run.
    async fn run(&self, run: Run) -> RunResult;
}

/// An [`Executor`] made from an async closure.
///
/// # Examples
///
/// ```
/// use tickwheel::executor_fn;
///
/// let executor = executor_fn(|run| async move {
///     println!("running {} for {}", run.task.name, run.execution.scheduled_for);
///     Ok(None)
/// });
/// # let _ = executor;
/// ```
pub fn executor_fn<F, Fut>(f: F) -> FnExecutor<F>
where
    F: Fn(Run) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RunResult> + Send + 'static,
{
    FnExecutor(f)
}

/// The [`Executor`] returned by [`executor_fn`].
pub struct FnExecutor<F>(F);

impl<F> fmt::Debug for FnExecutor<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnExecutor")
    }
}

#[async_trait]
impl<F, Fut> Executor for FnExecutor<F>
where
    F: Fn(Run) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RunResult> + Send + 'static,
{
    async fn run(&self, run: Run) -> RunResult {
        (self.0)(run).await
    }
}

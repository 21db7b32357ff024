//! Supervised background tasks (the sequencer, the health probe, and the CRL publisher to come):
//! each is told to stop through one shutdown token and drained, never aborted mid-step unless it
//! outlives the drain bound.
//!
//! Contract for a task: it runs until its `CancellationToken` is cancelled, then finishes what it
//! owes (the sequencer signs the head it sequenced) and returns. A task that returns or panics
//! before shutdown is a failure of the service: `Supervisor::stopped` reports it, and the service
//! shuts down rather than serve without it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// The service's background tasks.
#[derive(Debug)]
pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
}

/// A task ended before it was told to stop.
#[derive(Debug, thiserror::Error)]
#[error("background task {name} {how} before shutdown")]
pub struct TaskStopped {
    /// The task's name.
    pub name: &'static str,
    /// "returned" or "panicked".
    pub how: &'static str,
}

impl Supervisor {
    /// A supervisor with no tasks yet.
    pub fn new() -> Supervisor {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Starts `task` on the runtime, handing it the shutdown token.
    pub fn spawn<F>(&mut self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(task(self.shutdown.child_token()));
        self.names.insert(handle.id(), name);
    }

    /// Resolves when a task ends on its own (returns or panics); pending forever while they all run.
    pub async fn stopped(&mut self) -> TaskStopped {
        match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => TaskStopped {
                name: self.name(id),
                how: "returned",
            },
            Some(Err(error)) => TaskStopped {
                name: self.name(error.id()),
                how: "panicked",
            },
            None => std::future::pending().await,
        }
    }

    /// Tells every task to stop and waits for them, at most `bound`; aborts those still running then.
    pub async fn shutdown(mut self, bound: Duration) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(bound, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                match joined {
                    Ok((id, ())) => tracing::debug!(task = self.name(id), "background task drained"),
                    Err(error) => {
                        tracing::error!(task = self.name(error.id()), %error, "background task failed while draining")
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            let running: Vec<&str> = self.names.values().copied().collect();
            tracing::warn!(
                ?running,
                bound_ms = bound.as_millis() as u64,
                "background tasks did not drain in time: aborted"
            );
            self.tasks.abort_all();
        }
    }

    fn name(&mut self, id: Id) -> &'static str {
        self.names.remove(&id).unwrap_or("unnamed")
    }
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        Supervisor::new()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropped without `shutdown` (an error while building the service): tell the tasks to
        // stop; the JoinSet aborts whatever is left.
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_drains_a_task_that_finishes_what_it_owes() {
        let mut supervisor = Supervisor::new();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        supervisor.spawn("owes a last step", |stop| async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = sender.send("finished");
        });
        supervisor.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            receiver.await.expect("the task finished before shutdown returned"),
            "finished"
        );
    }

    #[tokio::test]
    async fn a_task_that_outlives_the_drain_bound_is_aborted() {
        let mut supervisor = Supervisor::new();
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        supervisor.spawn("ignores the token", |_stop| async move {
            let _sender = sender;
            std::future::pending::<()>().await;
        });
        let started = tokio::time::Instant::now();
        supervisor.shutdown(Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(receiver.await.is_err(), "aborted: its sender was dropped");
    }

    #[tokio::test]
    async fn a_task_that_ends_on_its_own_is_reported_by_name() {
        let mut supervisor = Supervisor::new();
        supervisor.spawn("forever", |stop| async move { stop.cancelled().await });
        supervisor.spawn("gives up", |_stop| async {});
        supervisor.spawn("panics", |_stop| async { panic!("on purpose") });
        let mut ended = [supervisor.stopped().await, supervisor.stopped().await];
        ended.sort_by_key(|stopped| stopped.name);
        assert_eq!((ended[0].name, ended[0].how), ("gives up", "returned"));
        assert_eq!((ended[1].name, ended[1].how), ("panics", "panicked"));
        let still_running = tokio::time::timeout(Duration::from_millis(50), supervisor.stopped()).await;
        assert!(still_running.is_err(), "the task still running is not reported");
        supervisor.shutdown(Duration::from_secs(5)).await;
    }
}

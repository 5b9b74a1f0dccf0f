//! Supervised work: every task and blocking job the daemon starts reports how it ended (its
//! result, a panic, or its cancellation) to whoever waits for it, instead of vanishing.
//!
//! tokio catches a panic inside a task and hands it over through the `JoinHandle`; a task
//! nobody awaits loses it. [`spawn`] and [`spawn_blocking`] await the work on a small
//! companion task and call `report` with the outcome, so the main loop learns of every end,
//! can count it, log it and retry.

use std::any::Any;
use std::future::Future;
use tokio::task::{AbortHandle, JoinError};

/// How a supervised piece of work ended, when it did not return `Ok`.
#[derive(Debug, thiserror::Error)]
pub enum TaskError<E> {
    #[error(transparent)]
    Failed(E),
    #[error("panicked: {0}")]
    Panicked(String),
    /// Aborted on purpose (superseded or stopped).
    #[error("cancelled")]
    Cancelled,
}

impl<E> TaskError<E> {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled)
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Turns a joined task's outcome into one result.
pub fn outcome<T, E>(joined: Result<Result<T, E>, JoinError>) -> Result<T, TaskError<E>> {
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TaskError::Failed(e)),
        Err(e) if e.is_panic() => Err(TaskError::Panicked(panic_message(&*e.into_panic()))),
        Err(_) => Err(TaskError::Cancelled),
    }
}

/// Spawns `work` and calls `report` with how it ended. The handle aborts the work (which then
/// reports [`TaskError::Cancelled`]).
pub fn spawn<T, E, F, R>(work: F, report: R) -> AbortHandle
where
    T: Send + 'static,
    E: Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
    R: FnOnce(Result<T, TaskError<E>>) + Send + 'static,
{
    let handle = tokio::spawn(work);
    let abort = handle.abort_handle();
    tokio::spawn(async move { report(outcome(handle.await)) });
    abort
}

/// Runs `work` on a blocking thread and calls `report` with how it ended.
pub fn spawn_blocking<T, E, F, R>(work: F, report: R)
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
    R: FnOnce(Result<T, TaskError<E>>) + Send + 'static,
{
    let handle = tokio::task::spawn_blocking(work);
    tokio::spawn(async move { report(outcome(handle.await)) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn every_end_is_reported() {
        let (tx, rx) = oneshot::channel();
        spawn_blocking(|| Ok::<_, String>(7), |r| tx.send(r).unwrap());
        assert_eq!(rx.await.unwrap().unwrap(), 7);

        let (tx, rx) = oneshot::channel();
        spawn_blocking(
            || -> Result<(), String> { panic!("sysfs went away at {}", 3) },
            |r| tx.send(r).unwrap(),
        );
        match rx.await.unwrap() {
            Err(TaskError::Panicked(m)) => assert_eq!(m, "sysfs went away at 3"),
            other => panic!("{other:?}"),
        }

        let (tx, rx) = oneshot::channel();
        spawn(async { Err::<(), _>("refused") }, |r| tx.send(r).unwrap());
        assert_eq!(rx.await.unwrap().unwrap_err().to_string(), "refused");

        let (tx, rx) = oneshot::channel();
        let abort = spawn(
            async {
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            },
            |r| tx.send(r).unwrap(),
        );
        abort.abort();
        assert!(rx.await.unwrap().unwrap_err().is_cancelled());

        let (tx, rx) = oneshot::channel();
        spawn(
            async {
                if true {
                    panic!("inside a task");
                }
                Ok::<(), String>(())
            },
            |r| tx.send(r).unwrap(),
        );
        assert_eq!(
            rx.await.unwrap().unwrap_err().to_string(),
            "panicked: inside a task"
        );
    }
}

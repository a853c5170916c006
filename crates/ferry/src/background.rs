//! Work that runs beside a stage (reading the next round of changes, measuring the oplog
//! window, verifying) in the stage's own task rather than a spawned one: it stops when the stage
//! ends, whichever way, so nothing a stage starts outlives it. Work that needs a thread of its
//! own (a copy's writer, beside its reader) is spawned but owned the same way.

use std::future::Future;

use anyhow::{anyhow, Result};
use tokio::task::JoinHandle;

/// Runs `stage` with `work` beside it and returns the stage's result. `work` is stopped (dropped)
/// when the stage ends; if `work` ends first, the stage goes on alone.
pub async fn beside<T>(stage: impl Future<Output = T>, work: impl Future<Output = ()>) -> T {
    tokio::pin!(stage);
    tokio::select! {
        biased;
        out = &mut stage => out,
        () = work => stage.await,
    }
}

/// Runs the futures `work` yields, at most `limit` at a time, in the caller's task; stops at the
/// first error. Per-collection work (probes, sizes, plans, index builds) goes through this: with
/// tens of thousands of collections, all at once would queue on the connection pool and hold
/// every future's state in memory, one after the other would wait on each round trip.
pub async fn at_most<F>(limit: usize, work: impl IntoIterator<Item = F>) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    use futures_util::StreamExt;
    let mut work = work.into_iter();
    let mut running = futures_util::stream::FuturesUnordered::new();
    loop {
        while running.len() < limit.max(1) {
            match work.next() {
                Some(next) => running.push(next),
                None => break,
            }
        }
        match running.next().await {
            Some(done) => done?,
            None => return Ok(()),
        }
    }
}

/// A spawned task that is owned like a future: dropping it aborts the task.
pub struct Owned<T>(JoinHandle<T>);

/// Spawns `work` onto the runtime's threads, owned by the returned handle.
pub fn spawn_owned<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> Owned<T> {
    Owned(tokio::spawn(work))
}

impl<T> Owned<T> {
    /// Waits for the task's result; a panic in it becomes an error.
    pub async fn join(mut self) -> Result<T> {
        (&mut self.0)
            .await
            .map_err(|e| anyhow!("a spawned part of the stage failed: {e}"))
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn work_stops_with_its_stage_and_a_stage_outlives_its_work() {
        let stopped = AtomicBool::new(false);
        struct Flag<'a>(&'a AtomicBool);
        impl Drop for Flag<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let work = async {
            let _flag = Flag(&stopped);
            std::future::pending::<()>().await
        };
        let stage = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            7
        };
        assert_eq!(beside(stage, work).await, 7);
        assert!(stopped.load(Ordering::SeqCst), "the work was stopped");
        let stage = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            8
        };
        assert_eq!(beside(stage, async {}).await, 8);
    }

    #[tokio::test]
    async fn an_owned_task_stops_when_dropped() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = spawn_owned(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(task);
        assert!(
            rx.await.is_err(),
            "the task was aborted and dropped its sender"
        );
        assert_eq!(spawn_owned(async { 9 }).join().await.unwrap(), 9);
    }

    #[tokio::test]
    async fn at_most_runs_everything_within_its_limit_and_stops_at_an_error() {
        use std::sync::atomic::AtomicUsize;
        let (now, most, ran) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let work = (0..50u64).map(|i| {
            let (now, most, ran) = (&now, &most, &ran);
            async move {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(i % 3)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
        at_most(4, work).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 50);
        assert_eq!(most.load(Ordering::SeqCst), 4);
        let started = AtomicUsize::new(0);
        let failing = (0..50).map(|i| {
            let started = &started;
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 5 {
                    anyhow::bail!("the sixth failed");
                }
                std::future::pending::<Result<()>>().await
            }
        });
        let error = at_most(8, failing).await.unwrap_err();
        assert_eq!(error.to_string(), "the sixth failed");
        assert!(
            started.load(Ordering::SeqCst) <= 8,
            "no more started after it"
        );
    }
}

//! Work that runs beside a stage (reading the next round of changes, measuring the oplog
//! window, verifying) in the stage's own task rather than a spawned one: it stops when the stage
//! ends, whichever way, so nothing a stage starts outlives it.

use std::future::Future;

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
}

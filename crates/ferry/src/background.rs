//! Work that runs beside a migration attempt (reading the next round of changes, measuring the
//! oplog window, verifying) and stops when the attempt drops it.

/// A spawned task, aborted when dropped.
pub struct Background(tokio::task::JoinHandle<()>);

impl Background {
    pub fn spawn(work: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(work))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

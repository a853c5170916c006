//! The individual pre-flight checks, by theme. Each asks the servers (or probes them with the
//! exact operations the migration will run) and returns a [`Check`](super::Check) with a stable
//! id, what it found, and the fix when something is wrong.

mod blocking;
mod capacity;
mod connection;
mod privileges;
mod reverse;
mod scope;
mod versions;

pub use blocking::{write_blocking, writes_open_at_commit};
pub use capacity::{destination_disk, oplog_size_and_span, oplog_window, read_oplog};
pub use connection::{reachable, source_replica_set};
pub use privileges::{destination_privileges, source_privileges};
pub use reverse::{reverse_ready, reversible};
pub use scope::{filters_match, not_migrated};
pub use versions::versions;

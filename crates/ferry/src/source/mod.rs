//! Facts about the source server, without policy: its clock (latest and majority-committed
//! writes, and which primary said so), its version and what that version allows, its oplog, and
//! how to read it at a given time.

pub mod clock;
pub mod info;
pub mod oplog;
pub mod reads;

//! Ferry: live-migrate a MongoDB replica set into another one.
//!
//! The binary (`main.rs`) is a thin shell over [`cli::run`]; only the command line is public, so
//! the compiler reports whatever nothing uses.

mod apply;
mod background;
mod catalog;
mod changes;
pub mod cli;
mod control;
mod copy;
mod explain;
mod filter;
mod id_order;
mod incarnations;
mod lifecycle;
mod majority;
mod migration;
mod namespace;
mod plan;
mod preflight;
mod progress;
mod redact;
mod reply;
mod reset;
mod server_error;
mod source;
mod state;
mod surface;
mod verify;

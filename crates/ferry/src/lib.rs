//! Ferry: live-migrate a MongoDB replica set into another one.
//!
//! The binary (`main.rs`) is a thin shell over [`migration::Migration`]; the HTTP API and the
//! terminal view only read its [`progress::Progress`] and send it a commit request.

pub mod apply;
pub mod background;
pub mod catalog;
pub mod changes;
pub mod cli;
pub mod control;
pub mod copy;
pub mod filter;
pub mod id_order;
pub mod incarnations;
pub mod lifecycle;
pub mod majority;
pub mod migration;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod redact;
pub mod reply;
pub mod reset;
pub mod server_error;
pub mod source;
pub mod state;
pub mod surface;
pub mod verify;

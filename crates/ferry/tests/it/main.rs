//! Ferry's integration tests: real servers, the real `ferry` binary, one test binary with a
//! module per theme.

mod claims;
mod cli;
mod edges;
mod faults;
mod harness;
mod live;
mod messages;
mod old_sources;
mod operator;
mod preflight;
mod replica;
mod reverse;
mod scale;
mod verify;

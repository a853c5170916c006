//! Ferry's integration tests: real servers, the real `ferry` binary, one test binary with a
//! module per theme.

mod harness;
mod live;
mod edges;
mod cli;
mod faults;
mod verify;

//! Test support for Ferry: real servers, a seeded random workload, and cluster comparison.
//! Shared by the integration tests, `cargo xtask demo` and the benchmark.

pub mod compare;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod workload;

pub use server::{Server, ServerOptions};

//! What people and scripts see of a running migration, all read from one `Progress` snapshot:
//! the mongosync-compatible HTTP API and the dashboard it serves (`api`), the live terminal view
//! or log lines (`view`), the Prometheus metrics (`metrics`), and the rates and estimates they
//! show (`rates`). None of them holds a rule of the migration: the API asks the controller.

pub mod api;
pub mod metrics;
pub mod rates;
pub mod view;

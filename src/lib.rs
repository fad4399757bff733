//! event-trigger: turns a stream of user events into actions, per user, enriched with
//! the user's profile and judged by a rhai rule; built on timely dataflow.

pub mod actions;
pub mod checkpoint;
pub mod coerce;
pub mod concurrency;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod filter;
pub mod http_client;
pub mod http_server;
pub mod intern;
pub mod kafka;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod mock_api;
pub mod model;
pub mod operators;
pub mod partition;
pub mod profile_api;
pub mod retry;
pub mod shutdown;
pub mod sources;
pub mod state;
pub mod stats;

/// The job graphs (kept in `dataflows/` at the top of the repository).
#[path = "../dataflows/mod.rs"]
pub mod dataflows;

//! event-trigger: turns a stream of user events into actions, per user, enriched with
//! the user's profile and judged by a rhai rule; built on timely dataflow.

pub mod actions;
pub mod allocator;
pub mod async_bridge;
pub mod checkpoint;
pub mod clock;
pub mod coerce;
pub mod concurrency;
pub mod config;
pub mod counters;
pub mod dead_letter;
pub mod dict;
pub mod filter;
pub mod history;
pub mod http_client;
pub mod http_pool;
pub mod http_server;
pub mod intern;
pub mod json_scan;
pub mod kafka_client;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod mock_api;
pub mod model;
pub mod operators;
pub mod partition;
pub mod prefetch;
pub mod profile_api;
pub mod retry;
pub mod shutdown;
pub mod small_pages;
pub mod small_text;
pub mod sources;
pub mod store;
pub mod string_key;
pub mod triggers;
pub mod wire;

/// The job graphs. They live in the top-level `dataflows/` folder, where the project
/// keeps its graphs apart from the parts they are built of; a `#[path]` include keeps
/// them in this crate (a workspace crate of their own would need every module they wire
/// to be public API of a second crate, and a second build of the dependency tree's
/// features for nothing).
#[path = "../dataflows/mod.rs"]
pub mod dataflows;

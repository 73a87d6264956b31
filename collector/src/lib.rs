//! The inference-gate collector: receives billing and audit records from the filter, stores
//! them durably, answers operators' billing, usage and audit queries, and keeps the tenant
//! registry that every filter syncs from.
//!
//! | module | one job |
//! |---|---|
//! | [`app`] | shared state and the router, built in one function so tests can call it in-process |
//! | [`api`] | one module per group of endpoints: record ingest, queries, the registry, health |
//! | [`auth`] | the bearer tokens (named admin tokens, the ingest token): startup checks and constant-time comparison |
//! | [`client`] | the `tenant` and `health` commands' HTTP client to the API |
//! | [`error`] | the one error type handlers return, rendered as OpenAI-shaped JSON |
//! | [`metrics`] | the collector's own counters and latencies, rendered for `GET /metrics` |
//! | [`records`] | billing and audit record types and the validation of an ingest batch |
//! | [`registry`] | tenants, keys and the snapshot the filter polls; operators' input rules; new keys |
//! | [`retention`] | the background job that deletes records past their retention period |
//! | [`timestamp`] | RFC 3339 timestamps kept as written, compared as instants |
//! | [`store`] | durable storage behind [`store::Store`]: SQLite or PostgreSQL |
//!
//! `main.rs` holds only the command line, startup and graceful shutdown.

pub mod api;
pub mod app;
pub mod auth;
pub mod client;
pub mod error;
pub mod metrics;
pub mod records;
pub mod registry;
pub mod retention;
pub mod store;
pub mod timestamp;

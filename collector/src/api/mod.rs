//! The HTTP endpoints, one module per group: what the filter calls ([`ingest`]), what
//! operators call ([`query`]), and what probes and Prometheus call ([`health`], [`metrics`]).

pub mod health;
pub mod ingest;
pub mod metrics;
pub mod query;

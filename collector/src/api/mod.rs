//! The HTTP endpoints, one module per group: what the filter calls ([`ingest`]), what
//! operators call ([`query`]), and what probes call ([`health`]).

pub mod health;
pub mod ingest;
pub mod query;

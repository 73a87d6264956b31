//! The HTTP endpoints, one module per group: what the filter calls ([`ingest`],
//! [`snapshot`]), what operators call ([`query`], [`tenants`], audited by [`trail`]), and
//! what probes and Prometheus call ([`health`], [`metrics`]).

pub mod health;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod snapshot;
pub mod tenants;
pub mod trail;

//! inference-gate: a Proxy-Wasm filter that puts a paid, multi-tenant inference service in
//! front of any OpenAI-compatible model server.
//!
//! On every request it identifies the tenant from its API key, holds it to its request rate
//! and token budget, meters the tokens the model really used, and queues a billing record and
//! an audit entry for the collector.
//!
//! Module map:
//! - `config`: the plugin configuration, validated and compiled once;
//! - `auth`: credential extraction and constant-time key lookup;
//! - `limits`: sliding-window limits, reservation and settlement, as pure functions of time;
//! - `ratelimit`: fleet-wide limits through Envoy's rate-limit service protocol (global mode):
//!   the messages, the answers and the decision;
//! - `shared`: compare-and-swap updates of state shared by all workers;
//! - `metering`: per API shape (OpenAI, Anthropic, Ollama), request estimates and usage from
//!   responses and streams;
//! - `records`: billing records, audit entries, ids and timestamps;
//! - `shipper`: the lease-holding flusher that moves records to the collector;
//! - `registry`: the collector's tenant registry: its snapshot, the merged O(1) tenant
//!   table, and the lease-holding syncer that polls it;
//! - `reply`: OpenAI-shaped local replies and rate-limit headers;
//! - `saml`: SAML 2.0 sign-on: hardened XML, canonicalisation, signatures, assertion rules,
//!   replay protection and the session token;
//! - `host`: the thin adapter to Envoy, the only code that calls the host.

pub mod auth;
pub mod config;
pub mod host;
pub mod limits;
pub mod metering;
pub mod ratelimit;
pub mod records;
pub mod registry;
pub mod reply;
pub mod saml;
pub mod shared;
pub mod shipper;

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Installs the SDK's logger first; the hook below replaces its panic hook.
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // A panic aborts this worker's VM; say so loudly, in one line.
        let _ = hostcalls::log(LogLevel::Critical, &format!("panic, worker VM lost: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(host::root::Root::new()));
}}

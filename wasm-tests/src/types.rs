//! Values that cross the ABI or that a test reads back: status codes, log levels, filter
//! actions, log lines, local replies and pending callouts.

use std::fmt;
use std::time::Duration;

/// Result codes of the Proxy-Wasm ABI (`WasmResult` in Envoy's host).
///
/// The SDK only names some of them; the host may return any, as Envoy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    BadExpression = 5,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    ResultMismatch = 9,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

impl Status {
    /// The value written to the guest.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Log levels in ABI order (`proxy_log` passes them as 0..=5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub(crate) fn from_abi(level: i32) -> Option<LogLevel> {
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    pub(crate) fn to_abi(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        };
        f.write_str(name)
    }
}

/// What a stream callback returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Continue,
    /// `StopIteration` for headers, `StopIterationAndBuffer` for bodies.
    Pause,
    /// Any other value (Envoy maps 2 and 3 to the watermark and no-buffer variants).
    Other(u32),
}

impl Action {
    pub(crate) fn from_abi(value: i32) -> Action {
        match value {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other as u32),
        }
    }
}

/// Where a captured log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// `proxy_log`.
    Proxy,
    /// WASI `fd_write` to fd 1 (recorded at info, as Envoy does).
    Stdout,
    /// WASI `fd_write` to fd 2 (recorded at error, as Envoy does).
    Stderr,
}

/// One captured log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Index of the VM (worker) that logged it, in `start_vm` order from 0.
    pub vm: usize,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[vm{} {}] {}", self.vm, self.level, self.message)
    }
}

/// A reply the filter sent with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    /// The additional headers the filter asked for, keys lower-cased as Envoy does.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// -1 when the filter set no gRPC status.
    pub grpc_status: i32,
}

impl LocalReply {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP callout the filter dispatched and that has not been answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCall {
    pub token: u32,
    /// The context that dispatched it; the response is delivered to it.
    pub context_id: u32,
    /// The cluster name.
    pub upstream: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl PendingCall {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A unary gRPC call the filter dispatched (`proxy_grpc_call`) that has not been answered,
/// failed or cancelled yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingGrpcCall {
    pub token: u32,
    /// The context that dispatched it; the answer is delivered to it.
    pub context_id: u32,
    /// The cluster: the name given, or the `envoy_grpc.cluster_name` of a serialized
    /// `GrpcService`.
    pub cluster: String,
    /// Whether the target came as a serialized `GrpcService` rather than a plain name.
    pub serialized_service: bool,
    /// E.g. `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: String,
    /// E.g. `ShouldRateLimit`.
    pub method: String,
    pub initial_metadata: Vec<(String, String)>,
    /// The serialized request message.
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// gRPC status codes the tests use to fail a call as Envoy does.
pub mod grpc_status {
    /// Envoy's answer to a call that ran past its timeout.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const INTERNAL: u32 = 13;
    /// Envoy's answer to a call whose cluster has no healthy host, or that could not connect.
    pub const UNAVAILABLE: u32 = 14;
}

/// The three metric kinds of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub(crate) fn from_abi(value: i32) -> Option<MetricType> {
        Some(match value {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// First value of `name` in `headers`, compared case-insensitively.
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Copies test-supplied headers, lower-casing keys as Envoy's codecs do.
pub(crate) fn owned_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), (*value).to_owned()))
        .collect()
}

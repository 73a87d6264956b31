//! The one error type of the harness. Guest failures carry the log lines that explain them,
//! so a failing test prints the filter's own words.

use std::fmt;
use std::path::PathBuf;

use crate::types::LogEntry;

/// How many of the most recent log lines a trap or rejection shows.
const SHOWN_LOG_LINES: usize = 20;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The built filter is not where the workspace puts it.
    ArtifactMissing { path: PathBuf },
    /// Reading a module from disk failed.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes are not a valid module for the enabled Wasm features.
    Compile(String),
    /// The module imports functions this host does not provide (`module.name`).
    UnsupportedImports(Vec<String>),
    /// The module does not export what the Proxy-Wasm ABI needs, or instantiation failed.
    Abi(String),
    /// The guest trapped (a panic aborts; so does running out of fuel).
    Trap {
        callback: String,
        message: String,
        logs: Vec<LogEntry>,
    },
    /// The VM trapped earlier; like Envoy, the harness does not call a failed VM again.
    VmFailed { first_trap: String },
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false.
    Rejected {
        callback: &'static str,
        logs: Vec<LogEntry>,
    },
    /// The test asked for something that does not exist (unknown token, finished stream...).
    Usage(String),
}

impl Error {
    /// The log lines attached to a trap or a rejection (empty for other errors).
    pub fn logs(&self) -> &[LogEntry] {
        match self {
            Error::Trap { logs, .. } | Error::Rejected { logs, .. } => logs,
            _ => &[],
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ArtifactMissing { path } => write!(
                f,
                "filter artifact not found at {}; build it first: cargo build --release \
                 --target wasm32-wasip1 -p inference-gate (or `make wasm`)",
                path.display()
            ),
            Error::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Error::Compile(message) => write!(f, "invalid wasm module: {message}"),
            Error::UnsupportedImports(names) => write!(
                f,
                "the module imports functions this host does not provide: {}",
                names.join(", ")
            ),
            Error::Abi(message) => write!(f, "module does not fit the Proxy-Wasm ABI: {message}"),
            Error::Trap {
                callback,
                message,
                logs,
            } => {
                write!(f, "guest trapped in {callback}: {message}")?;
                write_logs(f, logs)
            }
            Error::VmFailed { first_trap } => {
                write!(
                    f,
                    "the VM failed earlier and is not called again: {first_trap}"
                )
            }
            Error::Rejected { callback, logs } => {
                write!(f, "{callback} returned false")?;
                write_logs(f, logs)
            }
            Error::Usage(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn write_logs(f: &mut fmt::Formatter<'_>, logs: &[LogEntry]) -> fmt::Result {
    if logs.is_empty() {
        return write!(f, " (the VM logged nothing)");
    }
    let skip = logs.len().saturating_sub(SHOWN_LOG_LINES);
    write!(f, "; last log lines:")?;
    for entry in logs.iter().skip(skip) {
        // A panic message spans lines; keep them under their entry.
        let text = entry.to_string().replace('\n', "\n    ");
        write!(f, "\n  {text}")?;
    }
    Ok(())
}

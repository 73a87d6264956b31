//! An in-process Proxy-Wasm host for testing inference-gate's filter deterministically.
//!
//! It loads the built `.wasm` into the `wasmi` interpreter and plays Envoy's part: a clock
//! the test sets, shared data with compare-and-swap and shared queues seen by several VMs
//! (Envoy workers), HTTP callouts the test answers, and captured logs, metrics and local
//! replies. Where a filter could tell the difference (which maps are readable when, body
//! buffering after a pause, callout failures, unary gRPC calls, cas rules) it does what Envoy
//! does; this crate's README lists those rules, what is left out, and a full stream example.
//!
//! ```
//! use std::time::Duration;
//! use wasm_tests::Host;
//!
//! // One Envoy process; every `start_vm(&wasm, config)` on it is one more worker.
//! let host = Host::new();
//! let start = host.now_nanos();
//! host.advance(Duration::from_secs(90));
//! assert_eq!(host.now_nanos() - start, 90_000_000_000);
//!
//! // Shared state the workers see, readable and writable from the test.
//! host.set_shared_data("lease", b"worker-0");
//! let (value, cas) = host.shared_data("lease").unwrap();
//! assert_eq!((value.as_slice(), cas), (&b"worker-0"[..], 1));
//! ```
//!
//! Layout:
//!
//! - `host`: [`Host`], what Envoy shares across workers (clock, shared data, queues,
//!   metrics, logs, randomness, which clusters exist).
//! - `vm`: [`Vm`] and [`HttpStream`], one worker's instance (`vm/instance.rs` runs guest
//!   code), its contexts, streams and callouts, and Envoy's rules for which maps and
//!   buffers the guest may see when (`vm/state.rs`).
//! - `imports`: the host functions, Proxy-Wasm `env` and the WASI subset, each a thin
//!   wrapper over that state.
//! - `abi`: bounded guest memory access and the map serialisation.
//! - `types`, `error`: the values tests read back and the one error type.

#![forbid(unsafe_code)]

mod abi;
mod error;
mod host;
mod imports;
mod types;
mod vm;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use error::Error;
pub use host::Host;
pub use types::{
    grpc_status, Action, LocalReply, LogEntry, LogLevel, LogSource, MetricType, PendingCall,
    PendingGrpcCall, Status,
};
pub use vm::{HttpStream, Vm, VmOptions};

/// The root of the cargo workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set, as cargo does).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where `cargo build --release --target wasm32-wasip1 -p inference-gate` puts the filter.
pub fn filter_wasm_path() -> PathBuf {
    target_dir()
        .join("wasm32-wasip1")
        .join("release")
        .join("inference_gate.wasm")
}

/// Reads the built filter, or fails with the command that builds it.
///
/// Warns on stderr when a file under `src/` is newer than the artifact: the tests would be
/// exercising stale code.
pub fn load_filter_wasm() -> Result<Vec<u8>, Error> {
    let path = filter_wasm_path();
    if !path.is_file() {
        return Err(Error::ArtifactMissing { path });
    }
    if let Some(newer) = newer_source(&path) {
        eprintln!(
            "warning: {} is newer than {}; rebuild the filter (cargo build --release \
             --target wasm32-wasip1 -p inference-gate)",
            newer.display(),
            path.display()
        );
    }
    std::fs::read(&path).map_err(|source| Error::Io { path, source })
}

fn newer_source(artifact: &Path) -> Option<PathBuf> {
    let built = modified(artifact)?;
    let mut pending = vec![workspace_root().join("src")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if modified(&path).is_some_and(|time| time > built) {
                return Some(path);
            }
        }
    }
    None
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Host>();
        send_sync::<Vm>();
        send_sync::<HttpStream>();
        send_sync::<Error>();
    }
}

//! Shared by the harness's own tests: the echo-filter fixture, built once per test binary,
//! and a few hand-assembled modules for what a Rust guest cannot show.

#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use wasm_tests::{Host, HttpStream, Vm};

/// The echo-filter fixture, built for wasm32-wasip1 under the workspace's target directory.
///
/// A target directory of its own (`target/wasm-fixtures`) keeps this nested cargo from
/// waiting on the lock of the `cargo test` that runs it.
pub fn echo_wasm() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(build_echo).clone()
}

fn build_echo() -> Vec<u8> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/echo-filter/Cargo.toml");
    let target_dir = wasm_tests::target_dir().join("wasm-fixtures");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "building the echo-filter fixture failed (is the wasm32-wasip1 target installed? \
         rustup target add wasm32-wasip1):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let wasm = target_dir.join("wasm32-wasip1/release/echo_filter.wasm");
    std::fs::read(&wasm).unwrap_or_else(|e| panic!("reading {}: {e}", wasm.display()))
}

/// A host with one echo-filter worker started with `config`.
pub fn echo_vm(config: &str) -> (Host, Vm) {
    let host = Host::new();
    let vm = host
        .start_vm(&echo_wasm(), config)
        .expect("echo-filter starts");
    (host, vm)
}

/// Sends request headers for `path` (end of stream) and returns the stream.
pub fn get(vm: &Vm, path: &str, extra: &[(&str, &str)]) -> HttpStream {
    let stream = vm.http().unwrap();
    let mut headers = vec![(":method", "GET"), (":path", path), (":authority", "api")];
    headers.extend_from_slice(extra);
    stream.request_headers(&headers, true).unwrap();
    stream
}

/// Minimal encoder for hand-built modules (LEB128, sections, names).
pub mod wasm {
    pub const I32: u8 = 0x7f;

    pub fn leb(mut value: u32) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    pub fn sleb(mut value: i32) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
            if done {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    pub fn name(text: &str) -> Vec<u8> {
        let mut out = leb(text.len() as u32);
        out.extend_from_slice(text.as_bytes());
        out
    }

    pub fn vec(items: Vec<Vec<u8>>) -> Vec<u8> {
        let mut out = leb(items.len() as u32);
        for item in items {
            out.extend(item);
        }
        out
    }

    pub fn section(id: u8, payload: Vec<u8>) -> Vec<u8> {
        let mut out = vec![id];
        out.extend(leb(payload.len() as u32));
        out.extend(payload);
        out
    }

    /// `(i32 x params) -> (i32 x results)`
    pub fn func_type(params: usize, results: usize) -> Vec<u8> {
        let mut out = vec![0x60];
        out.extend(vec(vec![vec![I32]; params]));
        out.extend(vec(vec![vec![I32]; results]));
        out
    }

    pub fn import_func(module: &str, field: &str, type_index: u32) -> Vec<u8> {
        let mut out = name(module);
        out.extend(name(field));
        out.push(0x00);
        out.extend(leb(type_index));
        out
    }

    /// kind 0: function, 2: memory.
    pub fn export(field: &str, kind: u8, index: u32) -> Vec<u8> {
        let mut out = name(field);
        out.push(kind);
        out.extend(leb(index));
        out
    }

    /// A function body without locals; `end` is appended.
    pub fn body(code: Vec<u8>) -> Vec<u8> {
        let mut inner = vec![0x00];
        inner.extend(code);
        inner.push(0x0b);
        let mut out = leb(inner.len() as u32);
        out.extend(inner);
        out
    }

    pub fn i32_const(value: i32) -> Vec<u8> {
        let mut out = vec![0x41];
        out.extend(sleb(value));
        out
    }

    pub fn call(index: u32) -> Vec<u8> {
        let mut out = vec![0x10];
        out.extend(leb(index));
        out
    }

    pub fn module(sections: Vec<Vec<u8>>) -> Vec<u8> {
        let mut out = b"\0asm".to_vec();
        out.extend([1, 0, 0, 0]);
        for section in sections {
            out.extend(section);
        }
        out
    }
}

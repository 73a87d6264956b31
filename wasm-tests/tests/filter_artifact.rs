//! The real filter's artifact: where it is expected, the hint when it is missing, and (when
//! it has been built) that it needs nothing this host lacks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use wasm_tests::{filter_wasm_path, load_filter_wasm, Error, Host};

const BUILD_HINT: &str = "cargo build --release --target wasm32-wasip1 -p inference-gate";

#[test]
fn the_path_is_the_release_artifact() {
    let path = filter_wasm_path();
    assert!(
        path.ends_with("wasm32-wasip1/release/inference_gate.wasm"),
        "{path:?}"
    );
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        assert!(path.starts_with(wasm_tests::workspace_root().join("target")));
    }
}

#[test]
fn a_missing_artifact_says_how_to_build_it() {
    let err = Error::ArtifactMissing {
        path: PathBuf::from("/nowhere/inference_gate.wasm"),
    };
    let text = err.to_string();
    assert!(text.contains(BUILD_HINT), "{text}");
    assert!(text.contains("make wasm"), "{text}");

    if !filter_wasm_path().exists() {
        let err = load_filter_wasm().unwrap_err();
        assert!(err.to_string().contains(BUILD_HINT));
    }
}

/// Runs only where the filter has been built (as `make test` does before the tests).
#[test]
fn the_built_filter_imports_only_what_the_host_provides() {
    match load_filter_wasm() {
        Ok(wasm) => {
            if let Err(err) = Host::new().check_module(&wasm) {
                panic!("the filter does not fit this host: {err}");
            }
        }
        Err(Error::ArtifactMissing { .. }) => {
            eprintln!("skipped: the filter is not built ({BUILD_HINT})");
        }
        Err(err) => panic!("{err}"),
    }
}

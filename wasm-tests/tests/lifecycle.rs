//! Starting, configuring, failing and stopping VMs, and modules the host must refuse.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{echo_vm, echo_wasm, get, wasm};
use wasm_tests::{Error, Host, LogLevel, LogSource, VmOptions};

#[test]
fn start_runs_vm_start_and_configure() {
    let host = Host::new();
    let options = VmOptions::new()
        .vm_config("vm-settings")
        .plugin_config("tick_ms=1500");
    let vm = host.start_vm_with(&echo_wasm(), options).unwrap();

    assert_eq!(vm.tick_period(), Some(Duration::from_millis(1500)));
    assert_eq!(host.logs_containing("configured").len(), 1);

    // println! in the guest goes through WASI fd_write and is logged at info.
    let started = host.logs_containing("echo-filter started");
    assert_eq!(started.len(), 1);
    assert_eq!(
        started[0].message,
        "echo-filter started with vm config `vm-settings`"
    );
    assert_eq!(started[0].source, LogSource::Stdout);
    assert_eq!(started[0].level, LogLevel::Info);
}

#[test]
fn no_tick_period_unless_asked() {
    let (_, vm) = echo_vm("");
    assert_eq!(vm.tick_period(), None);
}

#[test]
fn bad_config_fails_at_start_with_a_message_naming_the_field() {
    let host = Host::new();
    let err = host
        .start_vm(&echo_wasm(), "tick_ms=1000\nbogus=1")
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Rejected {
            callback: "proxy_on_configure",
            ..
        }
    ));
    let text = err.to_string();
    assert!(text.contains("unknown field `bogus`"), "{text}");

    let err = host.start_vm(&echo_wasm(), "tick_ms=soon").unwrap_err();
    assert!(err.to_string().contains("field `tick_ms`"), "{err}");
    assert_eq!(err.logs().last().unwrap().level, LogLevel::Error);
}

#[test]
fn reconfigure_runs_on_configure_again() {
    let (_, vm) = echo_vm("tick_ms=1000");
    vm.reconfigure("tick_ms=250").unwrap();
    assert_eq!(vm.tick_period(), Some(Duration::from_millis(250)));

    let err = vm.reconfigure("nope=1").unwrap_err();
    assert!(err.to_string().contains("unknown field `nope`"), "{err}");
}

#[test]
fn a_panic_is_an_error_carrying_the_panic_message() {
    let (_, vm) = echo_vm("");
    let stream = vm.http().unwrap();
    let err = stream
        .request_headers(&[(":path", "/panic"), (":method", "GET")], true)
        .unwrap_err();

    let Error::Trap { callback, logs, .. } = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert!(
        callback.starts_with("proxy_on_request_headers"),
        "{callback}"
    );
    let last = logs.last().unwrap();
    assert_eq!(last.level, LogLevel::Critical);
    assert!(
        last.message.contains("echo-filter was asked to panic"),
        "{last}"
    );
    assert!(err.to_string().contains("echo-filter was asked to panic"));

    // Like Envoy, a VM that trapped is not called again.
    assert!(vm.failure().is_some());
    assert!(matches!(vm.http(), Err(Error::VmFailed { .. })));
    assert!(matches!(vm.tick(), Err(Error::VmFailed { .. })));
}

#[test]
fn an_endless_callback_runs_out_of_fuel() {
    let (host, vm) = echo_vm("");
    host.set_fuel_per_callback(Some(2_000_000));
    let stream = vm.http().unwrap();
    let err = stream
        .request_headers(&[(":path", "/spin"), (":method", "GET")], true)
        .unwrap_err();
    assert!(err.to_string().contains("endless loop"), "{err}");
}

#[test]
fn shutdown_is_immediate_or_waits_for_proxy_done() {
    let (_, vm) = echo_vm("");
    assert!(vm.shutdown().unwrap());
    assert!(vm.is_done());

    let (host, vm) = echo_vm("slow_shutdown=true");
    assert!(!vm.shutdown().unwrap());
    assert!(!vm.is_done());
    vm.tick().unwrap();
    assert!(vm.is_done());
    assert_eq!(host.logs_containing("drained, telling the host").len(), 1);
}

#[test]
fn log_level_is_reported_and_filters() {
    let host = Host::new();
    host.set_log_level(LogLevel::Warn);
    host.set_echo_logs(false);
    let vm = host.start_vm(&echo_wasm(), "").unwrap();
    get(&vm, "/", &[]);
    assert!(host.logs_containing("configured").is_empty());

    let err = host.start_vm(&echo_wasm(), "bogus=1").unwrap_err();
    assert!(err.to_string().contains("bogus"));
}

#[test]
fn missing_imports_are_named_before_anything_runs() {
    use wasm::*;
    let module = module(vec![
        section(1, vec(vec![func_type(0, 0)])),
        section(
            2,
            vec(vec![
                import_func("env", "proxy_does_not_exist", 0),
                import_func("wasi_snapshot_preview1", "path_open", 0),
                import_func("env", "proxy_log", 0),
            ]),
        ),
        section(7, vec(vec![export("proxy_abi_version_0_2_1", 0, 0)])),
    ]);

    let err = Host::new().start_vm(&module, "").unwrap_err();
    let Error::UnsupportedImports(names) = &err else {
        panic!("expected missing imports, got {err:?}");
    };
    assert_eq!(
        names,
        &[
            "env.proxy_does_not_exist (function)",
            "wasi_snapshot_preview1.path_open (function)"
        ]
    );
    assert!(err.to_string().contains("env.proxy_does_not_exist"));
    assert!(Host::new().check_module(&module).is_err());
}

#[test]
fn other_abi_versions_are_refused() {
    use wasm::*;
    let module = module(vec![
        section(1, vec(vec![func_type(0, 0)])),
        section(3, vec(vec![leb(0)])),
        section(7, vec(vec![export("proxy_abi_version_0_1_0", 0, 0)])),
        section(10, vec(vec![body(vec![])])),
    ]);
    let err = Host::new().start_vm(&module, "").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Abi(_)), "{text}");
    assert!(text.contains("proxy_abi_version_0_1_0"), "{text}");

    assert!(matches!(
        Host::new().start_vm(b"not wasm", ""),
        Err(Error::Compile(_))
    ));
}

/// A guest that passes out-of-range pointers and unknown enum values. The host must answer
/// with error statuses (and not panic): `proxy_on_vm_start` returns true only if every call
/// got the status Envoy gives.
#[test]
fn hostile_pointers_get_error_statuses() {
    use wasm::*;
    const LOG: u32 = 0;
    const GET_BUFFER: u32 = 1;
    const GET_PAIRS: u32 = 2;
    const SET_SHARED: u32 = 3;
    let invalid_memory = 6;
    let bad_argument = 2;

    let expect = |mut code: Vec<u8>, status: i32| {
        code.extend(i32_const(status));
        code.push(0x46); // i32.eq
        code
    };
    let args = |values: &[i32]| {
        values
            .iter()
            .flat_map(|v| i32_const(*v))
            .collect::<Vec<u8>>()
    };

    let checks = vec![
        // proxy_log from beyond the end of memory, and straddling it.
        expect([args(&[2, -16, 100]), call(LOG)].concat(), invalid_memory),
        expect([args(&[2, 65530, 10]), call(LOG)].concat(), invalid_memory),
        // an unknown log level
        expect([args(&[9, 0, 1]), call(LOG)].concat(), bad_argument),
        // the VM configuration to an out-of-range out-pointer
        expect(
            [args(&[6, 0, 10, -16, 0]), call(GET_BUFFER)].concat(),
            invalid_memory,
        ),
        // an unknown buffer and map type
        expect(
            [args(&[99, 0, 10, 0, 4]), call(GET_BUFFER)].concat(),
            bad_argument,
        ),
        expect([args(&[99, 0, 4]), call(GET_PAIRS)].concat(), bad_argument),
        // a value longer than memory
        expect(
            [args(&[0, 1, 0, -1, 0]), call(SET_SHARED)].concat(),
            invalid_memory,
        ),
    ];
    let mut code = i32_const(1);
    for check in checks {
        code.extend(check);
        code.push(0x71); // i32.and
    }

    let module = module(vec![
        section(
            1,
            vec(vec![
                func_type(3, 1),
                func_type(5, 1),
                func_type(1, 1),
                func_type(2, 1),
            ]),
        ),
        section(
            2,
            vec(vec![
                import_func("env", "proxy_log", 0),
                import_func("env", "proxy_get_buffer_bytes", 1),
                import_func("env", "proxy_get_header_map_pairs", 0),
                import_func("env", "proxy_set_shared_data", 1),
            ]),
        ),
        section(3, vec(vec![leb(2), leb(3)])),
        section(5, vec(vec![vec![0x00, 0x01]])),
        section(
            7,
            vec(vec![
                export("memory", 2, 0),
                export("proxy_abi_version_0_2_1", 0, 4),
                export("proxy_on_memory_allocate", 0, 4),
                export("proxy_on_vm_start", 0, 5),
            ]),
        ),
        section(10, vec(vec![body(i32_const(0)), body(code)])),
    ]);

    let host = Host::new();
    let options = VmOptions::new().vm_config("some vm config");
    host.start_vm_with(&module, options)
        .expect("every hostile call got the expected status");
}

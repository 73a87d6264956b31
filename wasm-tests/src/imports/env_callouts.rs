//! HTTP callouts, recorded for the test to answer; gRPC, which this host does not model.

use std::time::Duration;

use super::{host_fn, Imports};
use crate::abi::memory::{self, Fail, Guest};
use crate::abi::pairs;
use crate::error::Error;
use crate::types::{find_header, PendingCall, Status};

pub(super) fn define(imports: &mut Imports) -> Result<(), Error> {
    host_fn!(imports, "env", "proxy_http_call", http_call,
        (upstream: i32, upstream_len: i32, headers: i32, headers_len: i32, body: i32,
         body_len: i32, trailers: i32, trailers_len: i32, timeout_ms: i32, ret_token: i32));
    host_fn!(imports, "env", "proxy_grpc_call", grpc_call,
        (a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32, h: i32, i: i32, j: i32,
         timeout: i32, ret: i32));
    host_fn!(imports, "env", "proxy_grpc_stream", grpc_stream,
        (a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32, h: i32, ret: i32));
    host_fn!(imports, "env", "proxy_grpc_send", grpc_send,
        (token: i32, message: i32, message_len: i32, end_stream: i32));
    host_fn!(imports, "env", "proxy_grpc_cancel", grpc_unknown_token, (token: i32));
    host_fn!(imports, "env", "proxy_grpc_close", grpc_unknown_token, (token: i32));
    Ok(())
}

/// Envoy's checks, in its order: a negative timeout, an unknown cluster and a request
/// without `:path`, `:method` or `:authority` are `BadArgument`; a cluster the test refused
/// fails with the status it chose. Otherwise the call is pending until the test answers.
#[allow(clippy::too_many_arguments)] // the ABI's shape
fn http_call(
    caller: Guest<'_, '_>,
    upstream: i32,
    upstream_len: i32,
    headers: i32,
    headers_len: i32,
    body: i32,
    body_len: i32,
    trailers: i32,
    trailers_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> Result<(), Fail> {
    let upstream = memory::read_string(caller, upstream, upstream_len)?;
    let headers = pairs::decode(&memory::read(caller, headers, headers_len)?)?;
    let body = memory::read(caller, body, body_len)?;
    let trailers = pairs::decode(&memory::read(caller, trailers, trailers_len)?)?;
    memory::check(caller, ret_token, 4)?;

    if timeout_ms < 0 {
        return Err(Status::BadArgument.into());
    }
    let dispatch = caller.data().host.lock().dispatch_status(&upstream);
    if dispatch == Status::BadArgument {
        return Err(dispatch.into());
    }
    let required = [":path", ":method", ":authority"];
    if required
        .iter()
        .any(|name| find_header(&headers, name).is_none())
    {
        return Err(Status::BadArgument.into());
    }
    if dispatch != Status::Ok {
        return Err(dispatch.into());
    }

    let state = caller.data_mut();
    let token = state.next_call_token();
    let call = PendingCall {
        token,
        context_id: state.effective,
        upstream,
        headers: lowercase(headers),
        body,
        trailers: lowercase(trailers),
        timeout: Duration::from_millis(u64::from(timeout_ms as u32)),
    };
    state.calls.pending.insert(token, call);
    memory::write_u32(caller, ret_token, token)?;
    Ok(())
}

/// Envoy's header maps lower-case keys.
fn lowercase(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect()
}

/// gRPC is not modelled: dispatch fails the way the SDK reports as an error, not a panic.
#[allow(clippy::too_many_arguments)] // the ABI's shape
fn grpc_call(
    _caller: Guest<'_, '_>,
    _a: i32,
    _b: i32,
    _c: i32,
    _d: i32,
    _e: i32,
    _f: i32,
    _g: i32,
    _h: i32,
    _i: i32,
    _j: i32,
    _timeout: i32,
    _ret: i32,
) -> Result<(), Fail> {
    Err(Status::InternalFailure.into())
}

#[allow(clippy::too_many_arguments)] // the ABI's shape
fn grpc_stream(
    _caller: Guest<'_, '_>,
    _a: i32,
    _b: i32,
    _c: i32,
    _d: i32,
    _e: i32,
    _f: i32,
    _g: i32,
    _h: i32,
    _ret: i32,
) -> Result<(), Fail> {
    Err(Status::InternalFailure.into())
}

fn grpc_send(
    _caller: Guest<'_, '_>,
    _token: i32,
    _message: i32,
    _message_len: i32,
    _end_stream: i32,
) -> Result<(), Fail> {
    Err(Status::NotFound.into())
}

fn grpc_unknown_token(_caller: Guest<'_, '_>, _token: i32) -> Result<(), Fail> {
    Err(Status::NotFound.into())
}

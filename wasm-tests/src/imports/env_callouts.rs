//! HTTP callouts and unary gRPC calls, recorded for the test to answer; gRPC streams, which
//! this host does not model.

use std::time::Duration;

use super::{host_fn, Imports};
use crate::abi::memory::{self, Fail, Guest};
use crate::abi::pairs;
use crate::error::Error;
use crate::types::{find_header, PendingCall, PendingGrpcCall, Status};

pub(super) fn define(imports: &mut Imports) -> Result<(), Error> {
    host_fn!(imports, "env", "proxy_http_call", http_call,
        (upstream: i32, upstream_len: i32, headers: i32, headers_len: i32, body: i32,
         body_len: i32, trailers: i32, trailers_len: i32, timeout_ms: i32, ret_token: i32));
    host_fn!(imports, "env", "proxy_grpc_call", grpc_call,
        (target: i32, target_len: i32, service: i32, service_len: i32, method: i32,
         method_len: i32, metadata: i32, metadata_len: i32, message: i32, message_len: i32,
         timeout_ms: i32, ret_token: i32));
    host_fn!(imports, "env", "proxy_grpc_stream", grpc_stream,
        (a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32, h: i32, ret: i32));
    host_fn!(imports, "env", "proxy_grpc_send", grpc_send,
        (token: i32, message: i32, message_len: i32, end_stream: i32));
    host_fn!(imports, "env", "proxy_grpc_cancel", grpc_cancel, (token: i32));
    host_fn!(imports, "env", "proxy_grpc_close", grpc_cancel, (token: i32));
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

/// A unary gRPC call, with Envoy's checks in its order. The target is either a serialized
/// `GrpcService` (Envoy tries that first) naming an `envoy_grpc` cluster, or a plain cluster
/// name: an unknown plain name is `ParseFailure`; an unknown cluster inside a serialized
/// service is `InternalFailure` (Envoy cannot start the call). A cluster the test refused
/// fails with the status it chose. Otherwise the call is pending until the test answers
/// (`Vm::respond_grpc_call`), fails it (`Vm::fail_grpc_call`, a timeout among others) or the
/// guest cancels it.
#[allow(clippy::too_many_arguments)] // the ABI's shape
fn grpc_call(
    caller: Guest<'_, '_>,
    target: i32,
    target_len: i32,
    service: i32,
    service_len: i32,
    method: i32,
    method_len: i32,
    metadata: i32,
    metadata_len: i32,
    message: i32,
    message_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> Result<(), Fail> {
    let target = memory::read(caller, target, target_len)?;
    let service = memory::read_string(caller, service, service_len)?;
    let method = memory::read_string(caller, method, method_len)?;
    let initial_metadata = pairs::decode(&memory::read(caller, metadata, metadata_len)?)?;
    let message = memory::read(caller, message, message_len)?;
    memory::check(caller, ret_token, 4)?;

    let (cluster, serialized_service) = match envoy_grpc_cluster(&target) {
        Some(name) => (name, true),
        None => (String::from_utf8_lossy(&target).into_owned(), false),
    };
    let dispatch = caller.data().host.lock().dispatch_status(&cluster);
    match dispatch {
        Status::Ok => {}
        Status::BadArgument if serialized_service => return Err(Status::InternalFailure.into()),
        Status::BadArgument => return Err(Status::ParseFailure.into()),
        other => return Err(other.into()),
    }

    let state = caller.data_mut();
    let token = state.next_call_token();
    let call = PendingGrpcCall {
        token,
        context_id: state.effective,
        cluster,
        serialized_service,
        service,
        method,
        initial_metadata: lowercase(initial_metadata),
        message,
        timeout: Duration::from_millis(u64::from(timeout_ms as u32)),
    };
    state.calls.grpc_pending.insert(token, call);
    memory::write_u32(caller, ret_token, token)?;
    Ok(())
}

/// The cluster of a serialized `envoy.config.core.v3.GrpcService` whose first field is
/// `envoy_grpc` (1) with `cluster_name` (1) first in it; `None` for anything else, which
/// Envoy would read as a plain cluster name (or refuse).
fn envoy_grpc_cluster(bytes: &[u8]) -> Option<String> {
    let inner = length_delimited(bytes, 0x0a)?;
    let name = length_delimited(inner, 0x0a)?;
    let name = std::str::from_utf8(name).ok()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The payload of a length-delimited field that starts `bytes` with this tag byte.
fn length_delimited(bytes: &[u8], tag: u8) -> Option<&[u8]> {
    let (&first, rest) = bytes.split_first()?;
    if first != tag {
        return None;
    }
    let (mut len, mut shift, mut used) = (0usize, 0u32, 0usize);
    for &byte in rest.iter().take(5) {
        len |= usize::from(byte & 0x7f) << shift;
        used += 1;
        if byte & 0x80 == 0 {
            return rest.get(used..used.checked_add(len)?);
        }
        shift += 7;
    }
    None
}

/// gRPC streams are not modelled: opening one fails the way the SDK reports as an error.
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

/// `proxy_grpc_cancel` and `proxy_grpc_close` on a call: it is dropped and never answered.
fn grpc_cancel(caller: Guest<'_, '_>, token: i32) -> Result<(), Fail> {
    match caller.data_mut().calls.grpc_pending.remove(&(token as u32)) {
        Some(_) => Ok(()),
        None => Err(Status::NotFound.into()),
    }
}

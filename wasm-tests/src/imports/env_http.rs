//! Header maps, body buffers and stream control, with the availability rules of Envoy's
//! HTTP filter (see `VmState::read_map` and friends).

use super::env_core::into_result;
use super::{host_fn, Imports};
use crate::abi::memory::{self, abi_len, hand_over, Fail, Guest};
use crate::abi::pairs;
use crate::error::Error;
use crate::types::{find_header, LocalReply, Status};

pub(super) fn define(imports: &mut Imports) -> Result<(), Error> {
    host_fn!(imports, "env", "proxy_get_buffer_bytes", get_buffer_bytes,
        (kind: i32, start: i32, max_size: i32, ret_ptr: i32, ret_size: i32));
    host_fn!(imports, "env", "proxy_set_buffer_bytes", set_buffer_bytes,
        (kind: i32, start: i32, size: i32, data: i32, data_len: i32));
    host_fn!(imports, "env", "proxy_get_header_map_pairs", get_map_pairs,
        (kind: i32, ret_ptr: i32, ret_size: i32));
    host_fn!(imports, "env", "proxy_set_header_map_pairs", set_map_pairs,
        (kind: i32, ptr: i32, len: i32));
    host_fn!(imports, "env", "proxy_get_header_map_value", get_map_value,
        (kind: i32, key: i32, key_len: i32, ret_ptr: i32, ret_size: i32));
    host_fn!(imports, "env", "proxy_add_header_map_value", add_map_value,
        (kind: i32, key: i32, key_len: i32, value: i32, value_len: i32));
    host_fn!(imports, "env", "proxy_replace_header_map_value", replace_map_value,
        (kind: i32, key: i32, key_len: i32, value: i32, value_len: i32));
    host_fn!(imports, "env", "proxy_remove_header_map_value", remove_map_value,
        (kind: i32, key: i32, key_len: i32));
    host_fn!(imports, "env", "proxy_continue_stream", continue_stream, (kind: i32));
    host_fn!(imports, "env", "proxy_close_stream", close_stream, (kind: i32));
    host_fn!(imports, "env", "proxy_send_local_response", send_local_response,
        (status: i32, details: i32, details_len: i32, body: i32, body_len: i32,
         headers: i32, headers_len: i32, grpc_status: i32));
    Ok(())
}

/// Envoy clips the range to the buffer and writes nothing for an empty result (the SDK
/// then reads `None`).
fn get_buffer_bytes(
    caller: Guest<'_, '_>,
    kind: i32,
    start: i32,
    max_size: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> Result<(), Fail> {
    let buffer = caller.data().read_buffer(kind)?.ok_or(Status::NotFound)?;
    let start = abi_len(start);
    let Some(rest) = buffer.get(start..) else {
        return Err(Status::BadArgument.into());
    };
    let len = rest.len().min(abi_len(max_size));
    if len == 0 {
        return Ok(());
    }
    let bytes = rest.get(..len).unwrap_or_default().to_vec();
    hand_over(caller, &bytes, ret_ptr, ret_size)
}

fn set_buffer_bytes(
    caller: Guest<'_, '_>,
    kind: i32,
    start: i32,
    size: i32,
    data: i32,
    data_len: i32,
) -> Result<(), Fail> {
    let data = memory::read(caller, data, data_len)?;
    let status = caller
        .data_mut()
        .write_buffer(kind, abi_len(start), abi_len(size), &data);
    into_result(status)
}

/// A map Envoy does not have at this moment reads as empty, not as an error.
fn get_map_pairs(
    caller: Guest<'_, '_>,
    kind: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> Result<(), Fail> {
    let encoded = match caller.data().read_map(kind)? {
        Some(map) => pairs::encode(map),
        None => pairs::encode(&[]),
    };
    hand_over(caller, &encoded, ret_ptr, ret_size)
}

/// Replaces the whole map (Envoy removes every key, then adds the pairs in order).
fn set_map_pairs(caller: Guest<'_, '_>, kind: i32, ptr: i32, len: i32) -> Result<(), Fail> {
    let new = pairs::decode(&memory::read(caller, ptr, len)?)?;
    let map = caller.data_mut().write_map(kind)?;
    *map = new
        .into_iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect();
    Ok(())
}

/// The first value of the key; a missing map is `BadArgument`, except in the log phase
/// where Envoy answers `NotFound`.
fn get_map_value(
    caller: Guest<'_, '_>,
    kind: i32,
    key: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> Result<(), Fail> {
    let key = memory::read_string(caller, key, key_len)?;
    let state = caller.data();
    let value = match state.read_map(kind)? {
        Some(map) => find_header(map, &key).map(str::to_owned),
        None if state.in_log_phase => None,
        None => return Err(Status::BadArgument.into()),
    };
    let value = value.ok_or(Status::NotFound)?;
    hand_over(caller, value.as_bytes(), ret_ptr, ret_size)
}

fn add_map_value(
    caller: Guest<'_, '_>,
    kind: i32,
    key: i32,
    key_len: i32,
    value: i32,
    value_len: i32,
) -> Result<(), Fail> {
    let key = memory::read_string(caller, key, key_len)?.to_ascii_lowercase();
    let value = memory::read_string(caller, value, value_len)?;
    caller.data_mut().write_map(kind)?.push((key, value));
    Ok(())
}

/// Envoy's `setCopy`: replaces the first occurrence, leaves later ones, adds if absent.
fn replace_map_value(
    caller: Guest<'_, '_>,
    kind: i32,
    key: i32,
    key_len: i32,
    value: i32,
    value_len: i32,
) -> Result<(), Fail> {
    let key = memory::read_string(caller, key, key_len)?.to_ascii_lowercase();
    let value = memory::read_string(caller, value, value_len)?;
    let map = caller.data_mut().write_map(kind)?;
    match map.iter_mut().find(|(existing, _)| *existing == key) {
        Some(entry) => entry.1 = value,
        None => map.push((key, value)),
    }
    Ok(())
}

/// Removes every occurrence of the key.
fn remove_map_value(caller: Guest<'_, '_>, kind: i32, key: i32, key_len: i32) -> Result<(), Fail> {
    let key = memory::read_string(caller, key, key_len)?.to_ascii_lowercase();
    caller
        .data_mut()
        .write_map(kind)?
        .retain(|(existing, _)| *existing != key);
    Ok(())
}

/// Recorded on the stream. Like Envoy, continuing the request also drops the filter's
/// access to the request maps and body; continuing the response drops nothing.
fn continue_stream(caller: Guest<'_, '_>, kind: i32) -> Result<(), Fail> {
    let stream = caller.data_mut().current_stream_mut();
    match kind {
        0 => {
            if let Some(stream) = stream {
                stream.continued_request += 1;
                stream.request.resume();
                stream.request.headers_live = false;
                stream.request.trailers_live = false;
            }
            Ok(())
        }
        1 => {
            if let Some(stream) = stream {
                stream.continued_response += 1;
                stream.response.resume();
            }
            Ok(())
        }
        // A network filter's read side; an HTTP filter has none, and Envoy says Ok.
        2 => Ok(()),
        3 => Err(Status::Unimplemented.into()),
        _ => Err(Status::BadArgument.into()),
    }
}

fn close_stream(caller: Guest<'_, '_>, kind: i32) -> Result<(), Fail> {
    let stream = caller.data_mut().current_stream_mut();
    match (kind, stream) {
        (0, Some(stream)) => stream.reset_request = true,
        (1, Some(stream)) => stream.reset_response = true,
        (0..=3, _) => {}
        _ => return Err(Status::BadArgument.into()),
    }
    Ok(())
}

/// Recorded on the current stream; from a root context Envoy has no stream and ignores it.
#[allow(clippy::too_many_arguments)] // the ABI's shape
fn send_local_response(
    caller: Guest<'_, '_>,
    status: i32,
    details: i32,
    details_len: i32,
    body: i32,
    body_len: i32,
    headers: i32,
    headers_len: i32,
    grpc_status: i32,
) -> Result<(), Fail> {
    let details = memory::read_string(caller, details, details_len)?;
    let body = memory::read(caller, body, body_len)?;
    let headers = pairs::decode(&memory::read(caller, headers, headers_len)?)?
        .into_iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect();
    if let Some(stream) = caller.data_mut().current_stream_mut() {
        stream.local_replies.push(LocalReply {
            status: status as u32,
            details,
            headers,
            body,
            grpc_status,
        });
    }
    Ok(())
}

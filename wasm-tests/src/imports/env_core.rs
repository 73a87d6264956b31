//! Logging, time, ticks, properties, contexts and metrics.

use super::{host_fn, Imports};
use crate::abi::memory::{self, hand_over, Fail, Guest};
use crate::abi::pairs::split_path;
use crate::error::Error;
use crate::types::{LogLevel, LogSource, MetricType, Status};
use crate::vm::Shutdown;

pub(super) fn define(imports: &mut Imports) -> Result<(), Error> {
    host_fn!(imports, "env", "proxy_log", log, (level: i32, ptr: i32, size: i32));
    host_fn!(imports, "env", "proxy_get_log_level", get_log_level, (ret: i32));
    host_fn!(imports, "env", "proxy_get_current_time_nanoseconds", current_time, (ret: i32));
    host_fn!(imports, "env", "proxy_set_tick_period_milliseconds", set_tick_period, (ms: i32));
    host_fn!(imports, "env", "proxy_get_property", get_property,
        (path: i32, path_len: i32, ret_ptr: i32, ret_size: i32));
    host_fn!(imports, "env", "proxy_set_property", set_property,
        (path: i32, path_len: i32, value: i32, value_len: i32));
    host_fn!(imports, "env", "proxy_set_effective_context", set_effective_context, (id: i32));
    host_fn!(imports, "env", "proxy_done", done, ());
    host_fn!(imports, "env", "proxy_get_status", get_status,
        (ret_code: i32, ret_ptr: i32, ret_size: i32));
    host_fn!(imports, "env", "proxy_call_foreign_function", call_foreign_function,
        (name: i32, name_len: i32, args: i32, args_len: i32, ret_ptr: i32, ret_size: i32));
    host_fn!(imports, "env", "proxy_define_metric", define_metric,
        (kind: i32, name: i32, name_len: i32, ret_id: i32));
    host_fn!(imports, "env", "proxy_get_metric", get_metric, (id: i32, ret: i32));
    host_fn!(imports, "env", "proxy_record_metric", record_metric, (id: i32, value: i64));
    host_fn!(imports, "env", "proxy_increment_metric", increment_metric, (id: i32, offset: i64));
    Ok(())
}

fn log(caller: Guest<'_, '_>, level: i32, ptr: i32, size: i32) -> Result<(), Fail> {
    let level = LogLevel::from_abi(level).ok_or(Status::BadArgument)?;
    let message = memory::read_string(caller, ptr, size)?;
    let state = caller.data();
    state
        .host
        .lock()
        .log(state.index, level, LogSource::Proxy, message);
    Ok(())
}

fn get_log_level(caller: Guest<'_, '_>, ret: i32) -> Result<(), Fail> {
    let level = caller.data().host.lock().log_level;
    memory::write_u32(caller, ret, level.to_abi())?;
    Ok(())
}

fn current_time(caller: Guest<'_, '_>, ret: i32) -> Result<(), Fail> {
    let now = caller.data().host.lock().now_ns;
    memory::write_u64(caller, ret, now)?;
    Ok(())
}

fn set_tick_period(caller: Guest<'_, '_>, ms: i32) -> Result<(), Fail> {
    caller.data_mut().tick_period_ms = ms as u32;
    Ok(())
}

fn get_property(
    caller: Guest<'_, '_>,
    path: i32,
    path_len: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> Result<(), Fail> {
    let path = split_path(&memory::read(caller, path, path_len)?);
    let value = caller
        .data()
        .property(&path)
        .map(<[u8]>::to_vec)
        .ok_or(Status::NotFound)?;
    hand_over(caller, &value, ret_ptr, ret_size)
}

/// Envoy stores a property set by the filter in the stream's filter state, where later
/// reads find it; a root context has no stream, hence `NotFound`.
fn set_property(
    caller: Guest<'_, '_>,
    path: i32,
    path_len: i32,
    value: i32,
    value_len: i32,
) -> Result<(), Fail> {
    let path = split_path(&memory::read(caller, path, path_len)?);
    let value = memory::read(caller, value, value_len)?;
    let stream = caller
        .data_mut()
        .current_stream_mut()
        .ok_or(Status::NotFound)?;
    stream.properties.insert(path, value);
    Ok(())
}

fn set_effective_context(caller: Guest<'_, '_>, id: i32) -> Result<(), Fail> {
    let id = id as u32;
    if !caller.data().is_live_context(id) {
        return Err(Status::BadArgument.into());
    }
    caller.data_mut().effective = id;
    Ok(())
}

/// Only meaningful after `proxy_on_done` returned false; otherwise Envoy has nothing
/// pending and answers `NotFound`.
fn done(caller: Guest<'_, '_>) -> Result<(), Fail> {
    let state = caller.data_mut();
    if state.shutdown != Shutdown::Draining {
        return Err(Status::NotFound.into());
    }
    state.shutdown = Shutdown::Signalled;
    Ok(())
}

fn get_status(
    caller: Guest<'_, '_>,
    ret_code: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> Result<(), Fail> {
    let (code, message) = caller.data().calls.status.clone();
    memory::check(caller, ret_code, 4)?;
    hand_over(caller, message.as_bytes(), ret_ptr, ret_size)?;
    memory::write_u32(caller, ret_code, code)?;
    Ok(())
}

/// No foreign functions are registered, as in an Envoy without extensions for them.
fn call_foreign_function(
    caller: Guest<'_, '_>,
    name: i32,
    name_len: i32,
    args: i32,
    args_len: i32,
    _ret_ptr: i32,
    _ret_size: i32,
) -> Result<(), Fail> {
    memory::read(caller, name, name_len)?;
    memory::read(caller, args, args_len)?;
    Err(Status::NotFound.into())
}

fn define_metric(
    caller: Guest<'_, '_>,
    kind: i32,
    name: i32,
    name_len: i32,
    ret_id: i32,
) -> Result<(), Fail> {
    let kind = MetricType::from_abi(kind).ok_or(Status::BadArgument)?;
    let name = memory::read_string(caller, name, name_len)?;
    memory::check(caller, ret_id, 4)?;
    let id = caller.data().host.lock().metrics.define(kind, &name)?;
    memory::write_u32(caller, ret_id, id)?;
    Ok(())
}

fn get_metric(caller: Guest<'_, '_>, id: i32, ret: i32) -> Result<(), Fail> {
    let value = caller.data().host.lock().metrics.get(id as u32)?;
    memory::write_u64(caller, ret, value)?;
    Ok(())
}

fn record_metric(caller: Guest<'_, '_>, id: i32, value: i64) -> Result<(), Fail> {
    // The ABI passes a u64 in an i64 slot.
    let status = caller
        .data()
        .host
        .lock()
        .metrics
        .record(id as u32, value as u64);
    into_result(status)
}

fn increment_metric(caller: Guest<'_, '_>, id: i32, offset: i64) -> Result<(), Fail> {
    let status = caller
        .data()
        .host
        .lock()
        .metrics
        .increment(id as u32, offset);
    into_result(status)
}

pub(super) fn into_result(status: Status) -> Result<(), Fail> {
    match status {
        Status::Ok => Ok(()),
        other => Err(other.into()),
    }
}

//! The WASI preview-1 functions Rust's standard library imports on `wasm32-wasip1`, kept as
//! small as Envoy's: no files, no arguments, no environment; stdout and stderr become log
//! lines; the clocks are the host's controlled clock; randomness comes from the host's seed.

use wasmi::Caller;

use super::{HostResult, Imports};
use crate::abi::memory::{self, abi_len};
use crate::error::Error;
use crate::types::{LogLevel, LogSource};
use crate::vm::VmState;

const MODULE: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const SPIPE: i32 = 70;

/// `filetype::character_device`, what a terminal or a pipe reports.
const CHARACTER_DEVICE: u8 = 2;

type Guest<'a> = Caller<'a, VmState>;

pub(super) fn define(imports: &mut Imports) -> Result<(), Error> {
    imports.func(
        MODULE,
        "args_sizes_get",
        |mut c: Guest<'_>, count: i32, size: i32| Ok(write_pair(&mut c, count, size)),
    )?;
    imports.func(MODULE, "args_get", |_: Guest<'_>, _: i32, _: i32| {
        Ok(SUCCESS)
    })?;
    imports.func(
        MODULE,
        "environ_sizes_get",
        |mut c: Guest<'_>, count: i32, size: i32| Ok(write_pair(&mut c, count, size)),
    )?;
    imports.func(MODULE, "environ_get", |_: Guest<'_>, _: i32, _: i32| {
        Ok(SUCCESS)
    })?;
    imports.func(MODULE, "clock_res_get", clock_res_get)?;
    imports.func(MODULE, "clock_time_get", clock_time_get)?;
    imports.func(MODULE, "fd_write", fd_write)?;
    imports.func(MODULE, "fd_read", fd_read)?;
    imports.func(MODULE, "fd_close", |_: Guest<'_>, fd: i32| {
        Ok(std_fd_or(fd, SUCCESS))
    })?;
    imports.func(
        MODULE,
        "fd_seek",
        |_: Guest<'_>, fd: i32, _: i64, _: i32, _: i32| Ok(std_fd_or(fd, SPIPE)),
    )?;
    imports.func(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    imports.func(MODULE, "fd_prestat_get", |_: Guest<'_>, _: i32, _: i32| {
        Ok(BADF)
    })?;
    imports.func(
        MODULE,
        "fd_prestat_dir_name",
        |_: Guest<'_>, _: i32, _: i32, _: i32| Ok(BADF),
    )?;
    imports.func(MODULE, "random_get", random_get)?;
    imports.func(MODULE, "sched_yield", |_: Guest<'_>| Ok(SUCCESS))?;
    imports.func(
        MODULE,
        "proc_exit",
        |_: Guest<'_>, code: i32| -> Result<(), wasmi::Error> { Err(wasmi::Error::i32_exit(code)) },
    )?;
    Ok(())
}

/// Zero arguments, zero environment variables.
fn write_pair(caller: &mut Guest<'_>, count: i32, size: i32) -> i32 {
    let written = memory::write_u32(caller, count, 0).and(memory::write_u32(caller, size, 0));
    if written.is_ok() {
        SUCCESS
    } else {
        FAULT
    }
}

fn std_fd_or(fd: i32, errno: i32) -> i32 {
    if (0..=2).contains(&fd) {
        errno
    } else {
        BADF
    }
}

fn clock_res_get(mut caller: Guest<'_>, id: i32, ret: i32) -> HostResult {
    if !(0..=3).contains(&id) {
        return Ok(INVAL);
    }
    Ok(errno(memory::write_u64(&mut caller, ret, 1)))
}

/// Realtime and monotonic (and the CPU-time clocks) all read the host's clock.
fn clock_time_get(mut caller: Guest<'_>, id: i32, _precision: i64, ret: i32) -> HostResult {
    if !(0..=3).contains(&id) {
        return Ok(INVAL);
    }
    let now = caller.data().host.lock().now_ns;
    Ok(errno(memory::write_u64(&mut caller, ret, now)))
}

/// Stdout and stderr become log lines, one per newline (info and error, as Envoy logs
/// them); a trailing partial line waits for its newline or for a trap.
fn fd_write(mut caller: Guest<'_>, fd: i32, iovs: i32, iovs_len: i32, ret: i32) -> HostResult {
    let (level, source) = match fd {
        1 => (LogLevel::Info, LogSource::Stdout),
        2 => (LogLevel::Error, LogSource::Stderr),
        _ => return Ok(BADF),
    };
    let Ok(bytes) = gather(&caller, iovs, iovs_len) else {
        return Ok(FAULT);
    };
    if memory::write_u32(&mut caller, ret, bytes.len() as u32).is_err() {
        return Ok(FAULT);
    }

    let state = caller.data_mut();
    let pending = if fd == 1 {
        &mut state.stdout
    } else {
        &mut state.stderr
    };
    pending.extend_from_slice(&bytes);
    let mut lines = Vec::new();
    while let Some(newline) = pending.iter().position(|byte| *byte == b'\n') {
        let line: Vec<u8> = pending.drain(..=newline).collect();
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
        lines.push(text.trim_end_matches('\r').to_owned());
    }
    let mut host = state.host.lock();
    for line in lines {
        host.log(state.index, level, source, line);
    }
    Ok(SUCCESS)
}

/// Concatenates an iovec array: `iovs_len` pairs of (pointer, length), each checked.
fn gather(caller: &Guest<'_>, iovs: i32, iovs_len: i32) -> Result<Vec<u8>, ()> {
    let table_len = abi_len(iovs_len).checked_mul(8).ok_or(())?;
    let table =
        memory::read(caller, iovs, i32::try_from(table_len).map_err(|_| ())?).map_err(|_| ())?;
    let mut bytes = Vec::new();
    for entry in table.chunks_exact(8) {
        let (ptr, len) = entry.split_at(4);
        let ptr = i32::from_le_bytes(ptr.try_into().map_err(|_| ())?);
        let len = i32::from_le_bytes(len.try_into().map_err(|_| ())?);
        bytes.extend(memory::read(caller, ptr, len).map_err(|_| ())?);
    }
    Ok(bytes)
}

/// Stdin is empty; nothing else is open.
fn fd_read(mut caller: Guest<'_>, fd: i32, _iovs: i32, _iovs_len: i32, ret: i32) -> HostResult {
    if fd != 0 {
        return Ok(BADF);
    }
    Ok(errno(memory::write_u32(&mut caller, ret, 0)))
}

fn fd_fdstat_get(mut caller: Guest<'_>, fd: i32, ret: i32) -> HostResult {
    if !(0..=2).contains(&fd) {
        return Ok(BADF);
    }
    // struct fdstat { u8 filetype; u16 flags; u64 rights_base; u64 rights_inheriting }
    let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 }; // fd_read / fd_write
    let mut stat = Vec::with_capacity(24);
    stat.push(CHARACTER_DEVICE);
    stat.extend_from_slice(&[0; 7]);
    stat.extend_from_slice(&rights.to_le_bytes());
    stat.extend_from_slice(&[0; 8]);
    Ok(errno(memory::write(&mut caller, ret, &stat)))
}

fn random_get(mut caller: Guest<'_>, buf: i32, len: i32) -> HostResult {
    let len = abi_len(len);
    if memory::check(&caller, buf, len).is_err() {
        return Ok(FAULT);
    }
    let mut bytes = Vec::with_capacity(len);
    {
        let mut host = caller.data().host.lock();
        while bytes.len() < len {
            bytes.extend_from_slice(&host.next_random().to_le_bytes());
        }
    }
    bytes.truncate(len);
    Ok(errno(memory::write(&mut caller, buf, &bytes)))
}

fn errno<E>(result: Result<(), E>) -> i32 {
    if result.is_ok() {
        SUCCESS
    } else {
        FAULT
    }
}

//! Guest memory access for host functions. Every pointer and length from the guest is
//! checked against the memory's current size; a bad one is `InvalidMemoryAccess`, as in
//! Envoy, never a panic of the harness.

use std::ops::Range;

use wasmi::Caller;

use crate::types::Status;
use crate::vm::VmState;

/// Why a host function did not complete: a status for the guest, or a trap raised while
/// the host called back into it (the allocator).
#[derive(Debug)]
pub(crate) enum Fail {
    Status(Status),
    Trap(wasmi::Error),
}

impl From<Status> for Fail {
    fn from(status: Status) -> Fail {
        Fail::Status(status)
    }
}

pub(crate) type Guest<'a, 'b> = &'a mut Caller<'b, VmState>;

pub(crate) fn read(caller: &Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = caller.data().memory.ok_or(Status::InternalFailure)?;
    let data = memory.data(caller);
    let range = checked_range(ptr, abi_len(len), data.len())?;
    data.get(range)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Reads bytes the guest passed as text (keys, names); invalid UTF-8 is replaced.
pub(crate) fn read_string(
    caller: &Caller<'_, VmState>,
    ptr: i32,
    len: i32,
) -> Result<String, Status> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub(crate) fn write(caller: Guest<'_, '_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = caller.data().memory.ok_or(Status::InternalFailure)?;
    let data = memory.data_mut(caller);
    let range = checked_range(ptr, bytes.len(), data.len())?;
    data.get_mut(range)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(caller: Guest<'_, '_>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: Guest<'_, '_>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Checks that `len` bytes at `ptr` lie inside memory, without touching them.
pub(crate) fn check(caller: &Caller<'_, VmState>, ptr: i32, len: usize) -> Result<(), Status> {
    let memory = caller.data().memory.ok_or(Status::InternalFailure)?;
    checked_range(ptr, len, memory.data_size(caller)).map(|_| ())
}

/// Hands `bytes` to the guest the way Envoy does: memory from the guest's own allocator
/// (`proxy_on_memory_allocate`, which the guest later frees), its address and length
/// written to `ptr_ptr` and `size_ptr`. Empty data is a null pointer and size 0.
pub(crate) fn hand_over(
    caller: Guest<'_, '_>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<(), Fail> {
    // Check the out-pointers first so that a bad one does not leak a guest allocation.
    check(caller, ptr_ptr, 4)?;
    check(caller, size_ptr, 4)?;
    if bytes.is_empty() {
        write_u32(caller, ptr_ptr, 0)?;
        write_u32(caller, size_ptr, 0)?;
        return Ok(());
    }

    let len = i32::try_from(bytes.len()).map_err(|_| Status::InternalFailure)?;
    let allocate = caller.data().allocate.ok_or(Status::InternalFailure)?;
    let ptr = allocate.call(&mut *caller, len).map_err(Fail::Trap)?;
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    write(caller, ptr, bytes)?;
    write_u32(caller, ptr_ptr, ptr as u32)?;
    write_u32(caller, size_ptr, len as u32)?;
    Ok(())
}

/// Pointers and lengths are unsigned 32-bit values in wasm32, passed as `i32`.
pub(crate) fn abi_len(len: i32) -> usize {
    len as u32 as usize
}

fn checked_range(ptr: i32, len: usize, memory_size: usize) -> Result<Range<usize>, Status> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    if end > memory_size {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_bounded() {
        assert_eq!(checked_range(0, 0, 0), Ok(0..0));
        assert_eq!(checked_range(10, 6, 16), Ok(10..16));
        assert_eq!(checked_range(10, 7, 16), Err(Status::InvalidMemoryAccess));
        // A negative i32 is a large unsigned pointer, not an index from the end.
        assert_eq!(
            checked_range(-1, 1, 65536),
            Err(Status::InvalidMemoryAccess)
        );
        assert_eq!(
            checked_range(0, usize::MAX, 65536),
            Err(Status::InvalidMemoryAccess)
        );
        assert_eq!(abi_len(-1), u32::MAX as usize);
    }
}

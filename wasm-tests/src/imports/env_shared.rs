//! Shared data and shared queues, backed by the process-wide state of the `Host`. The host
//! lock is held only while the state is read or changed, never while the guest allocates.

use super::env_core::into_result;
use super::{host_fn, Imports};
use crate::abi::memory::{self, hand_over, Fail, Guest};
use crate::error::Error;
use crate::host::QueueOwner;
use crate::types::Status;

pub(super) fn define(imports: &mut Imports) -> Result<(), Error> {
    host_fn!(imports, "env", "proxy_get_shared_data", get_shared_data,
        (key: i32, key_len: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32));
    host_fn!(imports, "env", "proxy_set_shared_data", set_shared_data,
        (key: i32, key_len: i32, value: i32, value_len: i32, cas: i32));
    host_fn!(imports, "env", "proxy_register_shared_queue", register_queue,
        (name: i32, name_len: i32, ret_id: i32));
    host_fn!(imports, "env", "proxy_resolve_shared_queue", resolve_queue,
        (vm_id: i32, vm_id_len: i32, name: i32, name_len: i32, ret_id: i32));
    host_fn!(imports, "env", "proxy_dequeue_shared_queue", dequeue,
        (id: i32, ret_ptr: i32, ret_size: i32));
    host_fn!(imports, "env", "proxy_enqueue_shared_queue", enqueue,
        (id: i32, value: i32, value_len: i32));
    Ok(())
}

fn get_shared_data(
    caller: Guest<'_, '_>,
    key: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_size: i32,
    ret_cas: i32,
) -> Result<(), Fail> {
    let key = memory::read(caller, key, key_len)?;
    memory::check(caller, ret_cas, 4)?;
    let entry = caller.data().host.lock().shared.get(&key);
    let (value, cas) = entry.ok_or(Status::NotFound)?;
    hand_over(caller, &value, ret_ptr, ret_size)?;
    memory::write_u32(caller, ret_cas, cas)?;
    Ok(())
}

fn set_shared_data(
    caller: Guest<'_, '_>,
    key: i32,
    key_len: i32,
    value: i32,
    value_len: i32,
    cas: i32,
) -> Result<(), Fail> {
    let key = memory::read(caller, key, key_len)?;
    let value = memory::read(caller, value, value_len)?;
    let status = caller
        .data()
        .host
        .lock()
        .shared
        .set(&key, &value, cas as u32);
    into_result(status)
}

/// Registers under the host's VM id; this VM's root context becomes the one told about new
/// items (the last registrar wins, as in Envoy).
fn register_queue(
    caller: Guest<'_, '_>,
    name: i32,
    name_len: i32,
    ret_id: i32,
) -> Result<(), Fail> {
    let name = memory::read_string(caller, name, name_len)?;
    memory::check(caller, ret_id, 4)?;
    let state = caller.data();
    let owner = QueueOwner {
        vm: state.index,
        context: state.root_id,
    };
    let token = {
        let mut host = state.host.lock();
        let vm_id = host.vm_id.clone();
        host.queues.register(&vm_id, &name, Some(owner))
    };
    memory::write_u32(caller, ret_id, token)?;
    Ok(())
}

fn resolve_queue(
    caller: Guest<'_, '_>,
    vm_id: i32,
    vm_id_len: i32,
    name: i32,
    name_len: i32,
    ret_id: i32,
) -> Result<(), Fail> {
    let vm_id = memory::read_string(caller, vm_id, vm_id_len)?;
    let name = memory::read_string(caller, name, name_len)?;
    let token = caller.data().host.lock().queues.resolve(&vm_id, &name);
    memory::write_u32(caller, ret_id, token.ok_or(Status::NotFound)?)?;
    Ok(())
}

fn dequeue(caller: Guest<'_, '_>, id: i32, ret_ptr: i32, ret_size: i32) -> Result<(), Fail> {
    memory::check(caller, ret_ptr, 4)?;
    memory::check(caller, ret_size, 4)?;
    let item = caller.data().host.lock().queues.dequeue(id as u32)?;
    hand_over(caller, &item, ret_ptr, ret_size)
}

fn enqueue(caller: Guest<'_, '_>, id: i32, value: i32, value_len: i32) -> Result<(), Fail> {
    let value = memory::read(caller, value, value_len)?;
    let status = caller.data().host.lock().queues.enqueue(id as u32, &value);
    into_result(status)
}

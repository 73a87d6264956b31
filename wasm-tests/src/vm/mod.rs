//! One worker's VM: its own wasmi store and memory, started and called back the way Envoy
//! does it. Tests drive it through [`Vm`] and the [`HttpStream`] handles it creates.

mod instance;
mod state;
mod stream;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use wasmi::Module;

use crate::error::Error;
use crate::host::Host;
use crate::types::{LogEntry, PendingCall, PendingGrpcCall};

pub(crate) use instance::{check_module, VmInner};
pub(crate) use state::{CallResponse, Properties, Shutdown, StreamState, VmState};
pub use stream::HttpStream;

/// How a VM is started: the plugin configuration (served to `proxy_on_configure`), the VM
/// configuration (served to `proxy_on_vm_start`) and properties the root context can read.
#[derive(Clone, Debug, Default)]
pub struct VmOptions {
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    properties: Properties,
}

impl VmOptions {
    pub fn new() -> VmOptions {
        VmOptions::default()
    }

    pub fn plugin_config(mut self, config: impl AsRef<[u8]>) -> VmOptions {
        self.plugin_config = config.as_ref().to_vec();
        self
    }

    pub fn vm_config(mut self, config: impl AsRef<[u8]>) -> VmOptions {
        self.vm_config = config.as_ref().to_vec();
        self
    }

    /// A property every context of the VM can read, e.g. `&["plugin_name"]`.
    pub fn property(mut self, path: &[&str], value: impl AsRef<[u8]>) -> VmOptions {
        self.properties
            .insert(owned_path(path), value.as_ref().to_vec());
        self
    }
}

/// One Envoy worker's instance of the module. Cheap to clone; clones are the same VM.
#[derive(Clone)]
pub struct Vm {
    inner: Arc<Mutex<VmInner>>,
    host: Host,
    index: usize,
    root_id: u32,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Vm {
    pub(crate) fn start(host: Host, module: &Module, options: VmOptions) -> Result<Vm, Error> {
        let index = {
            let mut state = host.lock();
            state.vm_count += 1;
            state.vm_count - 1
        };
        let mut inner = VmInner::instantiate(&host, module, index, options)?;
        let root = inner.store.data().root_id;
        inner.initialize()?;
        inner.invoke("proxy_on_context_create", root, &[abi(root), 0])?;

        let vm_config_len = len_arg(inner.store.data().vm_config.len());
        let started = inner.invoke("proxy_on_vm_start", root, &[abi(root), vm_config_len])?;
        if started == Some(0) {
            return Err(Error::Rejected {
                callback: "proxy_on_vm_start",
                logs: logs_of(&host, index),
            });
        }
        inner.configure()?;

        Ok(Vm {
            inner: Arc::new(Mutex::new(inner)),
            host,
            index,
            root_id: root,
        })
    }

    /// The worker number, in start order from 0; log lines carry it.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn root_context_id(&self) -> u32 {
        self.root_id
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Opens an HTTP stream: a new context under the root (`proxy_on_context_create`).
    pub fn http(&self) -> Result<HttpStream, Error> {
        let mut inner = self.lock();
        let state = inner.store.data_mut();
        let id = state.next_context_id;
        state.next_context_id += 1;
        state.streams.insert(id, StreamState::default());
        inner.invoke("proxy_on_context_create", id, &[abi(id), abi(self.root_id)])?;
        Ok(HttpStream::new(self.inner.clone(), id))
    }

    /// Calls `proxy_on_tick` on the root context, whatever the period (the test owns time).
    pub fn tick(&self) -> Result<(), Error> {
        let root = self.root_id;
        self.lock().invoke("proxy_on_tick", root, &[abi(root)])?;
        Ok(())
    }

    /// The period the guest asked for with `proxy_set_tick_period_milliseconds`; `None` when
    /// it asked for none (or for 0, which stops ticks).
    pub fn tick_period(&self) -> Option<Duration> {
        let period = self.lock().store.data().tick_period_ms;
        (period > 0).then(|| Duration::from_millis(u64::from(period)))
    }

    /// Callouts dispatched by this VM and not answered yet, oldest first.
    pub fn pending_calls(&self) -> Vec<PendingCall> {
        self.lock()
            .store
            .data()
            .calls
            .pending
            .values()
            .cloned()
            .collect()
    }

    /// Answers a callout: `:status` plus `headers`, and `body`, delivered through
    /// `proxy_on_http_call_response` to the context that dispatched it.
    pub fn respond_call(
        &self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Error> {
        let mut response_headers = vec![(":status".to_owned(), status.to_string())];
        response_headers.extend(crate::types::owned_headers(headers));
        let response = CallResponse {
            headers: response_headers,
            body: body.to_vec(),
            trailers: Vec::new(),
        };
        self.lock().deliver_call(token, Some(response))
    }

    /// Fails a callout as Envoy does on a reset: zero headers, no body, and
    /// `proxy_get_status` reporting `BrokenConnection` / "reset" during the callback.
    ///
    /// Envoy answers a timeout or an unreachable cluster with a 504/503 *response*, not a
    /// failure; script those with [`Vm::respond_call`].
    pub fn fail_call(&self, token: u32) -> Result<(), Error> {
        self.lock().deliver_call(token, None)
    }

    /// Unary gRPC calls dispatched by this VM and not answered, failed or cancelled yet,
    /// oldest first.
    pub fn pending_grpc_calls(&self) -> Vec<PendingGrpcCall> {
        self.lock()
            .store
            .data()
            .calls
            .grpc_pending
            .values()
            .cloned()
            .collect()
    }

    /// Answers a gRPC call with `message` (the serialized response), delivered through
    /// `proxy_on_grpc_receive` to the context that dispatched it.
    pub fn respond_grpc_call(&self, token: u32, message: &[u8]) -> Result<(), Error> {
        self.lock().deliver_grpc(token, Ok(message.to_vec()))
    }

    /// Fails a gRPC call with a gRPC status (see [`crate::grpc_status`]) and message,
    /// delivered through `proxy_on_grpc_close`, as Envoy ends a call that timed out
    /// (`DEADLINE_EXCEEDED`), could not reach a healthy host (`UNAVAILABLE`) or that the
    /// service refused. The harness never times a call out by itself.
    pub fn fail_grpc_call(&self, token: u32, status: u32, message: &str) -> Result<(), Error> {
        self.lock()
            .deliver_grpc(token, Err((status, message.to_owned())))
    }

    /// Delivers the `proxy_on_queue_ready` notifications owed to this VM (one per enqueue
    /// into a queue it registered last). Returns how many were delivered.
    pub fn deliver_queue_ready(&self) -> Result<usize, Error> {
        let ready = self.host.lock().queues.take_ready(self.index);
        let mut inner = self.lock();
        for notification in &ready {
            let context = notification.owner.context;
            inner.invoke(
                "proxy_on_queue_ready",
                context,
                &[abi(context), abi(notification.token)],
            )?;
        }
        Ok(ready.len())
    }

    /// Notifications waiting for [`Vm::deliver_queue_ready`].
    pub fn queue_ready_pending(&self) -> usize {
        self.host.lock().queues.ready_count(self.index)
    }

    /// Sets a property every context of this VM can read.
    pub fn set_property(&self, path: &[&str], value: impl AsRef<[u8]>) {
        let mut inner = self.lock();
        let properties = &mut inner.store.data_mut().properties;
        properties.insert(owned_path(path), value.as_ref().to_vec());
    }

    /// Runs `proxy_on_configure` again with a new plugin configuration.
    pub fn reconfigure(&self, plugin_config: &str) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.store.data_mut().plugin_config = plugin_config.as_bytes().to_vec();
        inner.configure()
    }

    /// Starts shutting the VM down: `proxy_on_done` on the root. `Ok(true)` when the guest
    /// is done at once; `Ok(false)` when it will call `proxy_done` later (see
    /// [`Vm::is_done`]).
    pub fn shutdown(&self) -> Result<bool, Error> {
        let root = self.root_id;
        let mut inner = self.lock();
        inner.store.data_mut().shutdown = Shutdown::Draining;
        let done = inner.invoke("proxy_on_done", root, &[abi(root)])?;
        if done != Some(0) {
            inner.store.data_mut().shutdown = Shutdown::Done;
            inner.invoke("proxy_on_delete", root, &[abi(root)])?;
        }
        Ok(inner.store.data().shutdown == Shutdown::Done)
    }

    pub fn is_done(&self) -> bool {
        self.lock().store.data().shutdown == Shutdown::Done
    }

    /// The first trap, if the VM failed.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// This VM's log lines.
    pub fn logs(&self) -> Vec<LogEntry> {
        logs_of(&self.host, self.index)
    }

    fn lock(&self) -> MutexGuard<'_, VmInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn logs_of(host: &Host, index: usize) -> Vec<LogEntry> {
    host.logs()
        .into_iter()
        .filter(|entry| entry.vm == index)
        .collect()
}

pub(crate) fn owned_path(path: &[&str]) -> Vec<String> {
    path.iter().map(|segment| (*segment).to_owned()).collect()
}

/// Context ids and tokens are u32 in the ABI and i32 on the wasm stack.
pub(crate) fn abi(value: u32) -> i32 {
    value as i32
}

/// Sizes passed to callbacks; guest memory is 32-bit so nothing real exceeds it.
pub(crate) fn len_arg(len: usize) -> i32 {
    u32::try_from(len).unwrap_or(u32::MAX) as i32
}

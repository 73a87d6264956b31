//! Running guest code: instantiation, calling exports on behalf of a context, turning traps
//! into errors that carry the VM's log, and delivering callout responses.

use wasmi::{Instance, Linker, Module, Store, TrapCode, Val};

use super::state::{CallResponse, Shutdown, VmState};
use super::{abi, len_arg, logs_of, VmOptions};
use crate::error::Error;
use crate::host::Host;
use crate::imports;
use crate::types::{LogLevel, LogSource, Status};

/// ABI versions whose semantics this host implements (the SDK exports the first).
const ABI_VERSIONS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

/// One VM's store and instance.
pub(crate) struct VmInner {
    pub(super) store: Store<VmState>,
    pub(super) instance: Instance,
    /// Set by the first trap. Envoy stops calling a VM that trapped; so does the harness.
    pub(super) failed: Option<String>,
}

impl VmInner {
    /// Links the imports, instantiates (running a wasm start function, if any) and finds the
    /// memory and the allocator. No Proxy-Wasm callback runs yet.
    pub(super) fn instantiate(
        host: &Host,
        module: &Module,
        index: usize,
        options: VmOptions,
    ) -> Result<VmInner, Error> {
        let linker = check_module(host, module)?;
        let state = VmState::new(
            host.clone(),
            index,
            options.vm_config,
            options.plugin_config,
            options.properties,
        );
        let mut store = Store::new(host.engine(), state);
        let fuel = host.lock().fuel.unwrap_or(u64::MAX);
        store
            .set_fuel(fuel)
            .map_err(|e| Error::Abi(e.to_string()))?;
        let instance = linker
            .instantiate_and_start(&mut store, module)
            .map_err(|e| Error::Abi(format!("instantiation failed: {e}")))?;

        let memory = instance
            .get_memory(&store, "memory")
            .ok_or_else(|| Error::Abi("the module exports no memory named `memory`".into()))?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&store, "malloc"))
            .map_err(|_| {
                Error::Abi(
                    "the module exports no allocator (`proxy_on_memory_allocate(i32) -> i32`)"
                        .into(),
                )
            })?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);

        Ok(VmInner {
            store,
            instance,
            failed: None,
        })
    }

    pub(crate) fn state(&self) -> &VmState {
        self.store.data()
    }

    pub(crate) fn state_mut(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    /// Calls an export with i32 arguments on behalf of `context`. A missing export is
    /// `Ok(None)`: Envoy treats absent callbacks as no-ops.
    pub(crate) fn invoke(
        &mut self,
        name: &str,
        context: u32,
        args: &[i32],
    ) -> Result<Option<i32>, Error> {
        if let Some(first_trap) = &self.failed {
            return Err(Error::VmFailed {
                first_trap: first_trap.clone(),
            });
        }
        let Some(func) = self.instance.get_func(&self.store, name) else {
            return Ok(None);
        };
        let ty = func.ty(&self.store);
        if ty.params().len() != args.len() || ty.results().len() > 1 {
            return Err(Error::Abi(format!(
                "export {name} has signature {ty:?}; the ABI passes {} i32 arguments",
                args.len()
            )));
        }

        self.store.data_mut().effective = context;
        let fuel = self.store.data().host.lock().fuel.unwrap_or(u64::MAX);
        self.store
            .set_fuel(fuel)
            .map_err(|e| Error::Abi(e.to_string()))?;
        let params: Vec<Val> = args.iter().map(|arg| Val::I32(*arg)).collect();
        let mut results = vec![Val::I32(0); ty.results().len()];
        if let Err(err) = func.call(&mut self.store, &params, &mut results) {
            // `_start` of a command module ends with proc_exit(0).
            if name == "_start" && err.i32_exit_status() == Some(0) {
                return Ok(None);
            }
            return Err(self.trapped(name, context, &err, fuel));
        }

        if self.store.data().shutdown == Shutdown::Signalled {
            let root = self.store.data().root_id;
            self.store.data_mut().shutdown = Shutdown::Done;
            self.invoke("proxy_on_delete", root, &[abi(root)])?;
        }
        Ok(results.first().and_then(Val::i32))
    }

    pub(super) fn initialize(&mut self) -> Result<(), Error> {
        if self.instance.get_func(&self.store, "_initialize").is_some() {
            self.invoke("_initialize", 0, &[])?;
        } else {
            self.invoke("_start", 0, &[])?;
        }
        Ok(())
    }

    pub(super) fn configure(&mut self) -> Result<(), Error> {
        let root = self.store.data().root_id;
        let len = len_arg(self.store.data().plugin_config.len());
        self.store.data_mut().configuring = true;
        let configured = self.invoke("proxy_on_configure", root, &[abi(root), len]);
        self.store.data_mut().configuring = false;
        if configured? == Some(0) {
            let state = self.store.data();
            return Err(Error::Rejected {
                callback: "proxy_on_configure",
                logs: logs_of(&state.host, state.index),
            });
        }
        Ok(())
    }

    pub(super) fn deliver_call(
        &mut self,
        token: u32,
        response: Option<CallResponse>,
    ) -> Result<(), Error> {
        let call = self
            .store
            .data_mut()
            .calls
            .pending
            .remove(&token)
            .ok_or_else(|| Error::Usage(format!("no pending callout with token {token}")))?;
        let (headers, body) = match &response {
            Some(r) => (len_arg(r.headers.len()), len_arg(r.body.len())),
            None => (0, 0),
        };
        let status = match response {
            Some(_) => (Status::Ok as u32, String::new()),
            None => (Status::BrokenConnection as u32, "reset".to_owned()),
        };

        let state = self.store.data_mut();
        state.calls.response = response;
        state.calls.status = status;
        let context = call.context_id;
        let result = self.invoke(
            "proxy_on_http_call_response",
            context,
            &[abi(context), abi(token), headers, body, 0],
        );
        let state = self.store.data_mut();
        state.calls.response = None;
        state.calls.status = (Status::Ok as u32, String::new());
        result.map(|_| ())
    }

    /// Ends a pending gRPC call as Envoy does: an answer (`Ok(message)`) through
    /// `proxy_on_grpc_receive` with the message readable as buffer type 5; a failure
    /// (`Err((status, message))`) through `proxy_on_grpc_close` with `proxy_get_status`
    /// reporting it during the callback.
    pub(super) fn deliver_grpc(
        &mut self,
        token: u32,
        outcome: Result<Vec<u8>, (u32, String)>,
    ) -> Result<(), Error> {
        let call = self
            .store
            .data_mut()
            .calls
            .grpc_pending
            .remove(&token)
            .ok_or_else(|| Error::Usage(format!("no pending gRPC call with token {token}")))?;
        let context = call.context_id;
        let result = match outcome {
            Ok(message) => {
                let size = len_arg(message.len());
                self.store.data_mut().calls.grpc_response = Some(message);
                self.invoke(
                    "proxy_on_grpc_receive",
                    context,
                    &[abi(context), abi(token), size],
                )
            }
            Err((status, message)) => {
                self.store.data_mut().calls.status = (status, message);
                self.invoke(
                    "proxy_on_grpc_close",
                    context,
                    &[abi(context), abi(token), abi(status)],
                )
            }
        };
        let state = self.store.data_mut();
        state.calls.grpc_response = None;
        state.calls.status = (Status::Ok as u32, String::new());
        result.map(|_| ())
    }

    fn trapped(&mut self, name: &str, context: u32, err: &wasmi::Error, fuel: u64) -> Error {
        let mut message = err.to_string();
        if err.as_trap_code() == Some(TrapCode::OutOfFuel) {
            message.push_str(&format!(
                " (more than {fuel} instructions in one callback: an endless loop? \
                 Host::set_fuel_per_callback raises the budget)"
            ));
        }
        let state = self.store.data_mut();
        flush_output(state);
        let logs = logs_of(&state.host, state.index);
        self.failed = Some(format!("{name}: {message}"));
        Error::Trap {
            callback: format!("{name} (context {context})"),
            message,
            logs,
        }
    }
}

/// Writes out stdout/stderr text that did not end with a newline before a trap.
fn flush_output(state: &mut VmState) {
    let stdout = std::mem::take(&mut state.stdout);
    let stderr = std::mem::take(&mut state.stderr);
    let mut host = state.host.lock();
    for (bytes, level, source) in [
        (stdout, LogLevel::Info, LogSource::Stdout),
        (stderr, LogLevel::Error, LogSource::Stderr),
    ] {
        if !bytes.is_empty() {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            host.log(state.index, level, source, text);
        }
    }
}

/// Checks that the module fits the ABI and that every import it needs is provided; returns
/// the linker to instantiate it with.
pub(crate) fn check_module(host: &Host, module: &Module) -> Result<Linker<VmState>, Error> {
    check_exports(module)?;
    let (linker, provided) = imports::linker(host.engine())?;
    imports::check(module, &provided)?;
    Ok(linker)
}

fn check_exports(module: &Module) -> Result<(), Error> {
    let exports: Vec<&str> = module.exports().map(|export| export.name()).collect();
    if ABI_VERSIONS.iter().any(|version| exports.contains(version)) {
        return Ok(());
    }
    let found: Vec<&str> = exports
        .iter()
        .copied()
        .filter(|name| name.starts_with("proxy_abi_version_"))
        .collect();
    Err(Error::Abi(format!(
        "it exports no supported ABI version (want {}; found {})",
        ABI_VERSIONS.join(" or "),
        if found.is_empty() {
            "none".to_owned()
        } else {
            found.join(", ")
        }
    )))
}

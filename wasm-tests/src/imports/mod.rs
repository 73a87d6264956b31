//! The functions the host gives the guest: the Proxy-Wasm `env` imports and the WASI
//! preview-1 subset the Rust standard library needs. Each host function is a thin wrapper:
//! read the guest's arguments, act on the VM or host state, write results back.

mod env_callouts;
mod env_core;
mod env_http;
mod env_shared;
mod wasi;

use std::collections::BTreeSet;

use wasmi::{Engine, ExternType, IntoFunc, Linker, Module};

use crate::abi::memory::Fail;
use crate::error::Error;
use crate::vm::VmState;

/// What every `env` host function returns to wasmi: a status code, or a trap.
pub(crate) type HostResult = Result<i32, wasmi::Error>;

/// Turns the outcome of a host function into the status the guest sees.
pub(crate) fn finish(result: Result<(), Fail>) -> HostResult {
    match result {
        Ok(()) => Ok(0),
        Err(Fail::Status(status)) => Ok(status.code()),
        Err(Fail::Trap(err)) => Err(err),
    }
}

/// Defines a host function whose body is `$func(&mut caller, args...) -> Result<(), Fail>`.
macro_rules! host_fn {
    ($imports:expr, $module:literal, $name:literal, $func:path, ($($arg:ident: $ty:ty),*)) => {
        $imports.func(
            $module,
            $name,
            |mut caller: ::wasmi::Caller<'_, $crate::vm::VmState>, $($arg: $ty),*| {
                $crate::imports::finish($func(&mut caller, $($arg),*))
            },
        )?
    };
}
pub(crate) use host_fn;

/// A linker that remembers the names it defines, to name what a module lacks.
pub(crate) struct Imports {
    linker: Linker<VmState>,
    provided: Provided,
}

impl Imports {
    pub(crate) fn func<Params, Args>(
        &mut self,
        module: &str,
        name: &str,
        func: impl IntoFunc<VmState, Params, Args>,
    ) -> Result<(), Error> {
        self.linker
            .func_wrap(module, name, func)
            .map_err(|e| Error::Abi(format!("defining {module}.{name}: {e}")))?;
        self.provided.insert((module.to_owned(), name.to_owned()));
        Ok(())
    }
}

/// `(module, name)` of every function the host provides.
pub(crate) type Provided = BTreeSet<(String, String)>;

/// Builds the linker with every host function, and the set of names it provides.
pub(crate) fn linker(engine: &Engine) -> Result<(Linker<VmState>, Provided), Error> {
    let mut imports = Imports {
        linker: Linker::new(engine),
        provided: BTreeSet::new(),
    };
    env_core::define(&mut imports)?;
    env_http::define(&mut imports)?;
    env_shared::define(&mut imports)?;
    env_callouts::define(&mut imports)?;
    wasi::define(&mut imports)?;
    Ok((imports.linker, imports.provided))
}

/// Fails with every import the module needs and the host lacks, by name, before anything
/// runs (rather than a trap with no hint when the guest first calls it).
pub(crate) fn check(module: &Module, provided: &Provided) -> Result<(), Error> {
    let missing: Vec<String> = module
        .imports()
        .filter(|import| {
            let key = (import.module().to_owned(), import.name().to_owned());
            !matches!(import.ty(), ExternType::Func(_)) || !provided.contains(&key)
        })
        .map(|import| {
            let kind = match import.ty() {
                ExternType::Func(_) => "function",
                ExternType::Memory(_) => "memory",
                ExternType::Table(_) => "table",
                ExternType::Global(_) => "global",
            };
            format!("{}.{} ({kind})", import.module(), import.name())
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::UnsupportedImports(missing))
    }
}

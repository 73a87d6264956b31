//! The process-wide side of the host: what every Envoy worker shares. One `Host` stands for
//! one Envoy process; each `start_vm` on it is one more worker running its own copy of the
//! module.

mod metrics;
mod shared;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use wasmi::{Config, Engine, Module};

use crate::error::Error;
use crate::types::{LogEntry, LogLevel, LogSource, MetricType, Status};
use crate::vm::{Vm, VmOptions};

pub(crate) use metrics::Metrics;
pub(crate) use shared::{QueueOwner, Queues, SharedData};

/// 2024-01-01T00:00:00Z: a fixed start so that tests never depend on the real clock.
const DEFAULT_TIME_NS: u64 = 1_704_067_200_000_000_000;

/// Instructions a single callback may run before it is stopped as a runaway: far more than
/// a real callback needs, and a runaway is stopped within seconds even in a debug build.
const DEFAULT_FUEL: u64 = 100_000_000;

/// The shared state behind a [`Host`]. Locked only for short, non-reentrant steps, never
/// while guest code runs.
#[derive(Debug)]
pub(crate) struct HostState {
    pub(crate) now_ns: u64,
    pub(crate) log_level: LogLevel,
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) shared: SharedData,
    pub(crate) queues: Queues,
    pub(crate) metrics: Metrics,
    pub(crate) rng: u64,
    pub(crate) vm_id: String,
    /// `None`: every cluster exists. `Some`: only these do; others get `BadArgument`.
    pub(crate) clusters: Option<BTreeSet<String>>,
    /// Clusters whose dispatch fails with the given status (e.g. `InternalFailure`).
    pub(crate) refused: BTreeMap<String, Status>,
    pub(crate) fuel: Option<u64>,
    pub(crate) echo_logs: bool,
    pub(crate) vm_count: usize,
}

impl HostState {
    pub(crate) fn log(&mut self, vm: usize, level: LogLevel, source: LogSource, message: String) {
        if level < self.log_level {
            return;
        }
        let entry = LogEntry {
            vm,
            level,
            source,
            message,
        };
        // Written through the test harness's capture, so a failing test shows the filter's
        // log next to the assertion.
        if self.echo_logs {
            eprintln!("{entry}");
        }
        self.logs.push(entry);
    }

    /// splitmix64: tiny, seedable, and good enough for nonces in tests.
    pub(crate) fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Whether a callout to `upstream` may be dispatched, as Envoy decides before sending.
    pub(crate) fn dispatch_status(&self, upstream: &str) -> Status {
        if let Some(status) = self.refused.get(upstream) {
            return *status;
        }
        match &self.clusters {
            Some(known) if !known.contains(upstream) => Status::BadArgument,
            _ => Status::Ok,
        }
    }
}

/// One Envoy process: clock, shared data, queues, metrics, logs and randomness shared by
/// all the VMs started on it. Cheap to clone; clones share the same state.
#[derive(Clone)]
pub struct Host {
    state: Arc<Mutex<HostState>>,
    engine: Engine,
    modules: Arc<Mutex<Vec<Compiled>>>,
}

/// A module compiled from these bytes.
type Compiled = (Vec<u8>, Module);

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Host {
    /// A host at 2024-01-01T00:00:00Z, log level trace, random seed 0, every cluster known.
    pub fn new() -> Host {
        let mut config = Config::default();
        config.consume_fuel(true);
        let state = HostState {
            now_ns: DEFAULT_TIME_NS,
            log_level: LogLevel::Trace,
            logs: Vec::new(),
            shared: SharedData::default(),
            queues: Queues::default(),
            metrics: Metrics::default(),
            rng: 0,
            vm_id: String::new(),
            clusters: None,
            refused: BTreeMap::new(),
            fuel: Some(DEFAULT_FUEL),
            echo_logs: true,
            vm_count: 0,
        };
        Host {
            state: Arc::new(Mutex::new(state)),
            engine: Engine::new(&config),
            modules: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts one worker's VM with this plugin configuration (see [`Host::start_vm_with`]).
    pub fn start_vm(&self, wasm: &[u8], plugin_config: &str) -> Result<Vm, Error> {
        self.start_vm_with(wasm, VmOptions::new().plugin_config(plugin_config))
    }

    /// Starts one worker's VM as Envoy does: instantiate, `_initialize`, create the root
    /// context, `proxy_on_vm_start`, `proxy_on_configure`. A false from either of the last
    /// two is an [`Error::Rejected`] carrying the VM's log.
    pub fn start_vm_with(&self, wasm: &[u8], options: VmOptions) -> Result<Vm, Error> {
        let module = self.compile(wasm)?;
        Vm::start(self.clone(), &module, options)
    }

    /// Compiles the module and checks it against the ABI and the host's imports without
    /// running any of it: every missing import is named.
    pub fn check_module(&self, wasm: &[u8]) -> Result<(), Error> {
        let module = self.compile(wasm)?;
        crate::vm::check_module(self, &module).map(|_| ())
    }

    // Clock.

    /// Current time in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.lock().now_ns
    }

    /// Sets the clock (nanoseconds since the Unix epoch). It may go backwards if a test
    /// wants to see how the filter copes.
    pub fn set_time(&self, nanos_since_epoch: u64) {
        self.lock().now_ns = nanos_since_epoch;
    }

    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let mut state = self.lock();
        state.now_ns = state.now_ns.saturating_add(nanos);
    }

    // Shared data.

    /// The value and cas token of a key, as `proxy_get_shared_data` would return them.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().shared.get(key.as_bytes())
    }

    /// Sets a key unconditionally (cas 0), as another worker could.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        self.lock().shared.set(key.as_bytes(), value, 0);
    }

    // Shared queues (addressed by name under the host's VM id).

    pub fn queue_id(&self, name: &str) -> Option<u32> {
        let state = self.lock();
        state.queues.resolve(&state.vm_id, name)
    }

    /// Items waiting in a queue, oldest first, without removing them.
    pub fn queue_items(&self, name: &str) -> Vec<Vec<u8>> {
        let state = self.lock();
        match state.queues.resolve(&state.vm_id, name) {
            Some(token) => state.queues.items(token),
            None => Vec::new(),
        }
    }

    /// Pushes an item as another worker would; the registrar is notified.
    pub fn enqueue(&self, name: &str, value: &[u8]) -> Result<(), Error> {
        let mut state = self.lock();
        let token = state
            .queues
            .resolve(&state.vm_id, name)
            .ok_or_else(|| Error::Usage(format!("no shared queue named {name:?}")))?;
        state.queues.enqueue(token, value);
        Ok(())
    }

    /// Pops the oldest item, as another worker would.
    pub fn dequeue(&self, name: &str) -> Option<Vec<u8>> {
        let mut state = self.lock();
        let token = state.queues.resolve(&state.vm_id, name)?;
        state.queues.dequeue(token).ok()
    }

    /// The VM id queues are registered under (Envoy's `vm_config.vm_id`; empty by default).
    pub fn set_vm_id(&self, vm_id: &str) {
        vm_id.clone_into(&mut self.lock().vm_id);
    }

    // Metrics.

    /// Value of a counter or gauge by the name the guest defined it with.
    pub fn metric(&self, name: &str) -> Option<u64> {
        match self.lock().metrics.value_by_name(name) {
            Some((MetricType::Counter | MetricType::Gauge, value)) => Some(value),
            _ => None,
        }
    }

    /// Samples recorded into a histogram, oldest first.
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.lock().metrics.samples_by_name(name)
    }

    /// Every metric the guests defined.
    pub fn metric_names(&self) -> Vec<(String, MetricType)> {
        self.lock().metrics.names()
    }

    // Logs.

    /// Everything logged so far by every VM (at or above the log level).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.lock().logs.clone()
    }

    /// Log lines whose message contains `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<LogEntry> {
        self.lock()
            .logs
            .iter()
            .filter(|entry| entry.message.contains(needle))
            .cloned()
            .collect()
    }

    pub fn clear_logs(&self) {
        self.lock().logs.clear();
    }

    /// The level `proxy_get_log_level` reports; lines below it are dropped, as Envoy does.
    pub fn set_log_level(&self, level: LogLevel) {
        self.lock().log_level = level;
    }

    /// Whether log lines are also written to stderr as they arrive (default on; the test
    /// harness captures them and shows them only for a failing test).
    pub fn set_echo_logs(&self, echo: bool) {
        self.lock().echo_logs = echo;
    }

    // Randomness, callouts, limits.

    /// Restarts WASI `random_get` from a seed.
    pub fn set_random_seed(&self, seed: u64) {
        self.lock().rng = seed;
    }

    /// Declares the clusters that exist; a callout to any other fails with `BadArgument`,
    /// as Envoy answers for an unknown cluster.
    pub fn set_clusters(&self, names: &[&str]) {
        let known = names.iter().map(|name| (*name).to_owned()).collect();
        self.lock().clusters = Some(known);
    }

    /// Makes every callout to `upstream` fail to dispatch with `status`.
    pub fn refuse_calls_to(&self, upstream: &str, status: Status) {
        self.lock().refused.insert(upstream.to_owned(), status);
    }

    pub fn accept_calls_to(&self, upstream: &str) {
        self.lock().refused.remove(upstream);
    }

    /// Instruction budget per callback (`None`: unlimited). Running out is a trap, so an
    /// endless loop fails the test instead of hanging it.
    pub fn set_fuel_per_callback(&self, fuel: Option<u64>) {
        self.lock().fuel = fuel;
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles once per distinct module; tests start many VMs from the same bytes.
    fn compile(&self, wasm: &[u8]) -> Result<Module, Error> {
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, module)) = modules.iter().find(|(bytes, _)| bytes.as_slice() == wasm) {
            return Ok(module.clone());
        }
        let module =
            Module::new(&self.engine, wasm).map_err(|err| Error::Compile(err.to_string()))?;
        modules.push((wasm.to_vec(), module.clone()));
        Ok(module)
    }
}

//! The tenant registry on the host: the syncer's calls and answers, its metrics, and each
//! worker following the published snapshot (`crate::registry` holds the logic).
//!
//! Every worker, on every tick, reads the small `current` value; when it names a version
//! the worker does not have, it reads the table once and swaps its directory. Requests
//! already running keep the directory they started with.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

use super::root::limits_key;
use super::{header, now_ns, random_u64, Env, Worker};
use crate::config::Config;
use crate::limits::BucketState;
use crate::registry::directory::Directory;
use crate::registry::snapshot::Snapshot;
use crate::registry::sync::{Answer, Event, Settings, SyncHost, Syncer};
use crate::registry::{self, published, published_snapshot};
use crate::shared::{self, HostError, SharedData, Write};

/// The longest tick with a registry: workers notice a new snapshot within it.
const MAX_TICK_MS: u64 = 1000;

/// The root context's part: the syncer and the registry's metrics.
pub struct Registry {
    syncer: Syncer,
    metrics: RegistryMetrics,
}

/// `inference_gate.registry.*`: Envoy keeps one per name for the process, so the syncer
/// (whichever worker holds the lease) sets the gauges for all.
struct RegistryMetrics {
    version: Option<u32>,
    tenants: Option<u32>,
    stale_seconds: Option<u32>,
    updates: Option<u32>,
    unchanged: Option<u32>,
    failures: Option<u32>,
}

impl RegistryMetrics {
    fn define() -> RegistryMetrics {
        let define = |kind, name: &str| match hostcalls::define_metric(kind, name) {
            Ok(id) => Some(id),
            Err(e) => {
                log::warn!("metric {name} not defined: {e:?}");
                None
            }
        };
        RegistryMetrics {
            version: define(MetricType::Gauge, "inference_gate.registry.version"),
            tenants: define(MetricType::Gauge, "inference_gate.registry.tenants"),
            stale_seconds: define(MetricType::Gauge, "inference_gate.registry.stale_seconds"),
            updates: define(MetricType::Counter, "inference_gate.registry.updates"),
            unchanged: define(MetricType::Counter, "inference_gate.registry.unchanged"),
            failures: define(MetricType::Counter, "inference_gate.registry.failures"),
        }
    }

    fn record(&self, event: Event) {
        let set = |id: Option<u32>, value: u64| {
            if let Some(id) = id {
                let _ = hostcalls::record_metric(id, value);
            }
        };
        let add = |id: Option<u32>| {
            if let Some(id) = id {
                let _ = hostcalls::increment_metric(id, 1);
            }
        };
        match event {
            Event::Published { version, tenants } => {
                set(self.version, version);
                set(self.tenants, tenants);
                add(self.updates);
            }
            Event::Unchanged => add(self.unchanged),
            Event::Failed => add(self.failures),
            Event::Staleness { seconds } => set(self.stale_seconds, seconds),
        }
    }
}

/// The host as the syncer sees it.
struct SyncEnv<'a> {
    env: Env<'a>,
    metrics: &'a RegistryMetrics,
}

impl SharedData for SyncEnv<'_> {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.env.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<Write, HostError> {
        self.env.set(key, value, cas)
    }
}

impl SyncHost for SyncEnv<'_> {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn fetch(&self, etag: Option<&str>) -> Result<u32, HostError> {
        let config = &self.env.worker.config;
        let (Some(r), c) = (&config.registry, &config.collector) else {
            return Err(HostError(0));
        };
        let auth = format!("Bearer {}", c.ingest_token);
        let mut headers = vec![
            (":method", "GET"),
            (":path", r.path.as_str()),
            (":authority", r.authority.as_str()),
            ("authorization", auth.as_str()),
        ];
        if let Some(etag) = etag {
            headers.push(("if-none-match", etag));
        }
        hostcalls::dispatch_http_call(
            &r.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(r.timeout_ms),
        )
        .map_err(|s| HostError(s as u32))
    }

    fn ensure_tenant(&self, id: &str) -> Result<(), HostError> {
        shared::ensure(&self.env, &limits_key(id), &BucketState::default().encode()).map(|_| ())
    }

    fn report(&self, event: Event) {
        self.metrics.record(event);
    }
}

impl Registry {
    /// The syncer of a configuration with a `registry` section.
    pub fn configure(config: &Config, tick_ms: u64) -> Option<Registry> {
        let r = config.registry.as_ref()?;
        Some(Registry {
            syncer: Syncer::new(
                random_u64(),
                Settings {
                    interval_ms: r.interval_ms,
                    timeout_ms: r.timeout_ms,
                    lease_ms: 3 * tick_ms,
                },
            ),
            metrics: RegistryMetrics::define(),
        })
    }

    pub fn on_tick(&mut self, worker: &Worker) {
        let env = SyncEnv {
            env: Env { worker },
            metrics: &self.metrics,
        };
        self.syncer.on_tick(&env);
        follow(worker);
    }

    /// A callout answer: `false` if it is not the syncer's.
    pub fn on_response(
        &mut self,
        worker: &Worker,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> bool {
        if !self.syncer.holds_call(token) {
            return false;
        }
        // No headers at all: the call failed before a response (reset, timeout). There is no
        // header map then, and the SDK panics on reading one that is missing: read none.
        let (status, etag) = if num_headers == 0 {
            (None, None)
        } else {
            (
                header(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.parse().ok()),
                header(MapType::HttpCallResponseHeaders, "etag"),
            )
        };
        let body = if status == Some(200) {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let env = SyncEnv {
            env: Env { worker },
            metrics: &self.metrics,
        };
        let started = now_ns();
        let answer = Answer {
            status,
            etag: etag.as_deref(),
            body: &body,
        };
        if let Some((snapshot, problems)) = self.syncer.on_response(&env, token, answer) {
            for p in &problems {
                log::error!(
                    "registry snapshot version {}: {p}; left out",
                    snapshot.version
                );
            }
            let parsed = now_ns();
            install(worker, &snapshot);
            log::info!(
                "tenant registry version {} in force: {} tenants, {} bytes, read in {} ms, applied in {} ms",
                snapshot.version,
                snapshot.tenants.len(),
                body.len(),
                parsed.saturating_sub(started) / 1_000_000,
                now_ns().saturating_sub(parsed) / 1_000_000
            );
        }
        true
    }
}

/// The tick period with a registry: often enough for both the flusher and the workers to
/// follow a new snapshot.
pub fn tick_ms(config: &Config) -> u64 {
    let flush = config.collector.flush_interval_ms;
    match &config.registry {
        Some(r) => flush.min(r.interval_ms).min(MAX_TICK_MS),
        None => flush,
    }
}

/// Takes the published snapshot if it is newer than this worker's directory.
pub fn follow(worker: &Worker) {
    if worker.config.registry.is_none() {
        return;
    }
    let env = Env { worker };
    let Some(current) = published(&env) else {
        return;
    };
    if current.version == worker.directory().version {
        return;
    }
    let started = now_ns();
    match published_snapshot(&env) {
        Some(snapshot) if snapshot.version != worker.directory().version => {
            let read = now_ns();
            install(worker, &snapshot);
            // What following a snapshot costs each worker (BENCHMARKS.md, registry-scale).
            log::debug!(
                "registry version {} followed: {} registry tenants, read from shared data in {} ms, built in {} ms",
                snapshot.version,
                snapshot.tenants.len(),
                read.saturating_sub(started) / 1_000_000,
                now_ns().saturating_sub(read) / 1_000_000
            );
        }
        Some(_) => {}
        None => log::warn!(
            "registry snapshot version {} not readable from shared data; keeping version {}",
            current.version,
            worker.directory().version
        ),
    }
}

/// Builds this worker's directory from `snapshot` and puts it in force.
fn install(worker: &Worker, snapshot: &Snapshot) {
    let (directory, notes) = Directory::build(&worker.config, snapshot);
    for note in notes {
        log::warn!("registry version {}: {note}", snapshot.version);
    }
    if !directory.healthy && worker.directory().healthy {
        log::warn!("draining: the registry says unhealthy; /healthz and inference answer 503");
    } else if directory.healthy && !worker.directory().healthy {
        log::info!("drain lifted: serving again");
    }
    worker.set_directory(Rc::new(directory));
}

/// The directory a worker starts with: static tenants, and the published snapshot if this
/// Envoy already has one (a configuration reload keeps shared data).
pub fn initial(worker: &Worker) {
    follow(worker);
    if worker.config.registry.is_some() {
        let version = registry::published(&Env { worker }).map_or(0, |p| p.version);
        log::info!("tenant registry enabled; snapshot version {version} in force at start");
    }
}

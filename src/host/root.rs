//! The root context: one per worker. It compiles the configuration, prepares shared state,
//! and runs the record shipper from the tick.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::http::HttpFilter;
use super::metrics::Metrics;
use super::registry::{self, Registry};
use super::{buffer, header, random_u64, ratelimit, Env, Worker, QUEUE_NAME};
use crate::config::Config;
use crate::limits::BucketState;
use crate::ratelimit::Answer;
use crate::records::IdGen;
use crate::registry::directory::Directory;
use crate::saml;
use crate::shared;
use crate::shipper::{Settings, Shipper};

pub struct Root {
    worker: Option<Rc<Worker>>,
    shipper: Option<Shipper>,
    registry: Option<Registry>,
}

impl Root {
    pub fn new() -> Self {
        Root {
            worker: None,
            shipper: None,
            registry: None,
        }
    }
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared-data key of a tenant's limit counters.
pub fn limits_key(tenant_id: &str) -> String {
    format!("inference-gate/limits/{tenant_id}")
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let (Some(worker), Some(registry)) = (&self.worker, &mut self.registry) {
            if registry.on_response(worker, token, num_headers, body_size) {
                return;
            }
        }
        let (Some(worker), Some(shipper)) = (&self.worker, &mut self.shipper) else {
            return;
        };
        if !shipper.holds_call(token) {
            return;
        }
        // No headers at all means the call failed before a response (reset, timeout).
        let status = if num_headers == 0 {
            None
        } else {
            header(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.parse().ok())
        };
        // The answer's body is read only for a refusal, which names the record at fault.
        let body = if matches!(status, Some(400..=499)) {
            super::buffer(BufferType::HttpCallResponseBody, body_size.min(64 * 1024))
        } else {
            Vec::new()
        };
        shipper.on_response(&Env { worker }, token, status, &body);
    }

    /// The answer to a report of excess tokens (global mode): only a failure matters.
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let Some(worker) = &self.worker else {
            return;
        };
        if let Answer::Failed(why) = ratelimit::answer(worker, status_code, response_size) {
            log::warn!(
                "excess tokens not reported to the rate-limit service (call {token}: {why})"
            );
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        sync_log_level();
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        sync_log_level();
        let bytes = buffer(BufferType::PluginConfiguration, plugin_configuration_size);
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // The message names the field; it never echoes values, which may be secrets.
                log::error!("invalid plugin configuration: {e}");
                return false;
            }
        };
        if config.tenants.is_empty() && config.registry.is_none() {
            log::warn!("no tenants configured; every request will get 401");
        }
        if config.unused_service {
            log::warn!(
                "limits.service is set but limits.mode is not \"global\": limits hold per Envoy \
                 and the rate-limit service is not called"
            );
        }

        let queue = match hostcalls::register_shared_queue(QUEUE_NAME) {
            Ok(q) => Some(q),
            Err(e) => {
                log::error!("record queue unavailable ({e:?}); refusing to start");
                return false;
            }
        };

        let directory = Rc::new(Directory::from_config(&config));
        let worker = Rc::new(Worker {
            config: Rc::new(config),
            queue,
            metrics: Metrics::define(),
            ids: IdGen::new(random_u64()),
            drops: std::cell::Cell::new((0, "", 0)),
            excess: Default::default(),
            directory: std::cell::RefCell::new(directory),
        });

        // Create every tenant's counters before traffic can reach them: Envoy stores a
        // write to a missing key without checking its version, so creating one on the
        // request path could overwrite another worker's first update.
        let env = Env { worker: &worker };
        let empty = BucketState::default().encode();
        for t in &worker.config.tenants {
            if let Err(e) = shared::ensure(&env, &limits_key(&t.id), &empty) {
                log::error!("tenant={} limit state not created: {e}", t.id);
                return false;
            }
        }
        if let Some(sso) = &worker.config.sso {
            // The SAML replay store, for the same reason.
            for key in saml::replay::bucket_keys() {
                if let Err(e) = shared::ensure(&env, &key, &saml::replay::empty_bucket()) {
                    log::error!("saml replay store not created: {e}");
                    return false;
                }
            }
            for s in &sso.idps {
                let tenant = worker
                    .config
                    .tenant(s.tenant)
                    .map_or("-", |t| t.id.as_str());
                let pins: Vec<&str> = s
                    .idp
                    .keys
                    .iter()
                    .map(|k| k.certificate_sha256.as_str())
                    .collect();
                log::info!(
                    "tenant={tenant} saml idp={} pinned_certificates_sha256={}",
                    s.idp.entity_id,
                    pins.join(",")
                );
            }
        }

        let c = &worker.config.collector;
        self.shipper = Some(Shipper::new(
            random_u64(),
            Settings {
                batch_size: c.batch_size,
                max_batch_bytes: c.max_batch_bytes,
                flush_interval_ms: c.flush_interval_ms,
                timeout_ms: c.timeout_ms,
                max_backoff_ms: c.max_backoff_ms,
            },
        ));
        let tick_ms = registry::tick_ms(&worker.config);
        self.registry = Registry::configure(&worker.config, tick_ms);
        registry::initial(&worker);
        if let Err(e) = hostcalls::set_tick_period(Duration::from_millis(tick_ms)) {
            log::error!("tick not set ({e:?}); records would never be sent");
            return false;
        }
        log::info!(
            "configured tenants={} keys={} collector_cluster={} limits={}",
            worker.config.tenants.len(),
            worker.config.keys.len(),
            c.cluster,
            worker
                .config
                .global
                .as_ref()
                .map_or("local".to_string(), |g| format!(
                    "global cluster={} domain={} timeout_ms={} failure_mode={:?}",
                    g.cluster, g.domain, g.timeout_ms, g.failure_mode
                ))
        );
        self.worker = Some(worker);
        true
    }

    fn on_tick(&mut self) {
        if let (Some(worker), Some(shipper)) = (&self.worker, &mut self.shipper) {
            shipper.on_tick(&Env { worker });
            worker.report_drops();
            ratelimit::report_excess(worker);
        }
        if let (Some(worker), Some(registry)) = (&self.worker, &mut self.registry) {
            registry.on_tick(worker);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(HttpFilter::new(worker, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Follows Envoy's log level for Wasm, so disabled levels cost no formatting.
fn sync_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

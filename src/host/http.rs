//! One HTTP request through the gateway.
//!
//! Request headers: answer `/healthz`; find the tenant from the key (or answer `401`); strip
//! the credentials and set `x-tenant-id`; refuse at once a tenant with no request or token
//! left. Request body: held until it is whole, then admission reserves the request and an
//! estimate of its tokens, or refuses with `429` (limits) or `503` (the record buffer is
//! full); the model server gets the body only once the reservation is made. Response: add
//! the rate-limit headers and read usage as the body streams past. Log phase: settle the
//! reservation against the real usage and queue the billing and audit records.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::root::limits_key;
use super::{buffer, header, now_ns, property, property_u64, Env, Worker};
use crate::auth::{self, Credential};
use crate::config::{BufferFullPolicy, Tenant};
use crate::limits::{self, BucketState, Decision, LimitView, Limits};
use crate::metering::{self, Api, RequestEstimate, ResponseMeter, Usage};
use crate::records::{self, Audit, AuditResult, Billing, Record, UsageSource};
use crate::reply::{self, LocalReply};
use crate::shared::{self, UpdateError};
use crate::shipper::ShipperHost;

/// Headers that carry credentials or identity and must not reach the model server as sent.
/// The underscore spellings too: servers behind CGI-style gateways read `x_tenant_id` as
/// `x-tenant-id`.
const STRIPPED: [&str; 5] = [
    "authorization",
    "x-api-key",
    "x-tenant-id",
    "x_api_key",
    "x_tenant_id",
];

struct Reservation {
    limits: Limits,
    tokens: u64,
    requests: LimitView,
    token_view: LimitView,
}

pub struct HttpFilter {
    worker: Rc<Worker>,
    context_id: u32,
    started_ns: u64,
    method: String,
    path: String,
    request_id: Option<String>,
    /// `/healthz` and other requests that produce no records.
    unrecorded: bool,
    tenant: Option<usize>,
    api: Api,
    estimate: RequestEstimate,
    reservation: Option<Reservation>,
    /// Status of a reply this filter sent itself.
    local_status: Option<u32>,
    upstream_status: Option<u32>,
    meter: Option<ResponseMeter>,
    /// The record buffer was full under the `drop` policy: this request's records are lost.
    drop_records: bool,
}

impl HttpFilter {
    pub fn new(worker: Rc<Worker>, context_id: u32) -> Self {
        HttpFilter {
            worker,
            context_id,
            started_ns: 0,
            method: String::new(),
            path: String::new(),
            request_id: None,
            unrecorded: false,
            tenant: None,
            api: Api::Other,
            estimate: RequestEstimate::default(),
            reservation: None,
            local_status: None,
            upstream_status: None,
            meter: None,
            drop_records: false,
        }
    }

    fn tenant(&self) -> Option<&Tenant> {
        self.worker.config.tenant(self.tenant?)
    }

    /// A prefix for log lines: the request id, never anything secret.
    fn who(&self) -> String {
        format!(
            "request_id={} tenant={}",
            self.request_id.as_deref().unwrap_or("-"),
            self.tenant().map_or("-", |t| t.id.as_str())
        )
    }

    fn reply(&mut self, r: LocalReply) -> Action {
        self.local_status = Some(r.status);
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Err(e) = hostcalls::send_http_response(r.status, headers, Some(&r.body)) {
            log::error!("{} local reply {} failed: {e:?}", self.who(), r.status);
        }
        Action::Pause
    }

    fn authenticate(&mut self) -> Result<(), LocalReply> {
        let authorization = header(MapType::HttpRequestHeaders, "authorization");
        let x_api_key = header(MapType::HttpRequestHeaders, "x-api-key");
        let key = match auth::extract(authorization.as_deref(), x_api_key.as_deref()) {
            Credential::Key(k) => k,
            Credential::Missing => {
                return Err(reply::unauthorized(
                    "missing_api_key",
                    "No API key provided. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                ))
            }
            Credential::Malformed(why) => return Err(reply::unauthorized("invalid_api_key", why)),
        };
        match self.worker.config.keys.lookup(key) {
            Some(t) => {
                self.tenant = Some(t);
                Ok(())
            }
            None => Err(reply::unauthorized(
                "invalid_api_key",
                "Incorrect API key provided.",
            )),
        }
    }

    /// Rewrites the request for the model server: no credentials, the tenant we vouch for,
    /// and no compression, so that usage in the response can be read.
    fn rewrite_request(&self) {
        for name in STRIPPED {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
        }
        if let Some(t) = self.tenant() {
            let _ =
                hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-tenant-id", Some(&t.id));
        }
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "accept-encoding");
    }

    /// Reserves the request and its estimated tokens, or answers why not.
    fn admit(&mut self, body: &[u8]) -> Action {
        let config = Rc::clone(&self.worker.config);
        self.estimate =
            metering::estimate_request(self.api, body, config.metering.default_max_tokens);

        let c = &config.collector;
        if self.worker.metrics.buffered() >= c.max_buffered_records {
            match c.on_buffer_full {
                BufferFullPolicy::Reject => {
                    log::warn!("{} refused: record buffer full", self.who());
                    return self.reply(reply::error(
                        503,
                        "server_error",
                        "usage_recording_unavailable",
                        "The gateway cannot record usage right now. Retry later.",
                    ));
                }
                BufferFullPolicy::Drop => self.drop_records = true,
            }
        }

        let Some(tenant) = self.tenant().cloned() else {
            return self.reply(reply::unauthorized(
                "invalid_api_key",
                "Incorrect API key provided.",
            ));
        };
        let limits = Limits {
            requests: tenant.rate_limit,
            tokens: tenant.token_budget,
        };
        let cost = self.estimate.total();
        let now = now_ns();
        let env = Env {
            worker: &self.worker,
        };
        let decision = shared::update(&env, &limits_key(&tenant.id), |current| {
            let state = current.and_then(BucketState::decode).unwrap_or_default();
            match limits::admit(state, limits, now, cost) {
                d @ Decision::Admit { state, .. } => (Some(state.encode()), d),
                d => (None, d),
            }
        });

        match decision {
            Ok(Decision::Admit {
                requests, tokens, ..
            }) => {
                self.reservation = Some(Reservation {
                    limits,
                    tokens: cost,
                    requests,
                    token_view: tokens,
                });
                Action::Continue
            }
            Ok(Decision::Refuse {
                refusal,
                retry_after_ns,
                requests,
                tokens,
            }) => {
                log::debug!("{} rate limited: {refusal:?}", self.who());
                self.reply(reply::rate_limited(
                    refusal,
                    retry_after_ns,
                    &requests,
                    &tokens,
                    Some(cost),
                ))
            }
            Err(e) => {
                self.worker.metrics.limiter_contended();
                log::warn!("{} limit state not updated ({e}); refused", self.who());
                let message = match e {
                    UpdateError::Contended => "The gateway is busy. Retry shortly.",
                    UpdateError::Host(_) => "The gateway could not check limits. Retry shortly.",
                };
                self.reply(reply::error(
                    503,
                    "server_error",
                    "limiter_unavailable",
                    message,
                ))
            }
        }
    }

    /// A read-only look at the tenant's buckets: a refusal if not even one request with one
    /// token could pass now.
    fn precheck(&self) -> Option<LocalReply> {
        let tenant = self.tenant()?;
        let limits = Limits {
            requests: tenant.rate_limit,
            tokens: tenant.token_budget,
        };
        let env = Env {
            worker: &self.worker,
        };
        let (stored, _) = shared::SharedData::get(&env, &limits_key(&tenant.id)).ok()?;
        let state = stored
            .as_deref()
            .and_then(BucketState::decode)
            .unwrap_or_default();
        match limits::admit(state, limits, now_ns(), 1) {
            Decision::Refuse {
                refusal,
                retry_after_ns,
                requests,
                tokens,
            } => {
                log::debug!("{} rate limited before the body: {refusal:?}", self.who());
                Some(reply::rate_limited(
                    refusal,
                    retry_after_ns,
                    &requests,
                    &tokens,
                    None,
                ))
            }
            Decision::Admit { .. } => None,
        }
    }

    /// The usage to bill and to settle the reservation with.
    fn final_usage(&mut self) -> Option<(Usage, UsageSource, Option<String>)> {
        let outcome = self
            .meter
            .take()
            .map(ResponseMeter::finish)
            .unwrap_or_default();
        let model = self.estimate.model.clone().or(outcome.model.clone());
        if let Some(u) = outcome.usage {
            return Some((u, UsageSource::Reported, model));
        }
        // The model ran (a success response) but reported nothing, or the client left
        // mid-stream or before any response: the request reached the model server, so bill
        // an estimate rather than nothing.
        let served = matches!(self.upstream_status, Some(200..=299));
        let abandoned = self.upstream_status.is_none() && self.local_status.is_none();
        if !(served || abandoned) || !self.api.is_inference() {
            return None;
        }
        if let Some(why) = outcome.unreadable {
            log::warn!(
                "{} usage not readable ({why}); billing an estimate",
                self.who()
            );
        }
        self.worker.metrics.usage_estimated();
        let usage = Usage {
            input_tokens: self.estimate.input_tokens,
            output_tokens: outcome.output_estimate.min(self.estimate.output_tokens),
            ..Usage::default()
        };
        Some((usage, UsageSource::Estimated, model))
    }

    fn settle(&self, actual: u64) {
        let (Some(tenant), Some(r)) = (self.tenant(), &self.reservation) else {
            return;
        };
        let now = now_ns();
        let env = Env {
            worker: &self.worker,
        };
        let result = shared::update(&env, &limits_key(&tenant.id), |current| {
            let state = current.and_then(BucketState::decode).unwrap_or_default();
            let next = limits::settle(state, r.limits, now, r.tokens, actual);
            (next.map(|s| s.encode()), ())
        });
        if let Err(e) = result {
            self.worker.metrics.limiter_contended();
            log::warn!(
                "{} settlement not stored ({e}); the reservation stands",
                self.who()
            );
        }
    }

    fn emit(&self, records: Vec<Record>) {
        let worker = &self.worker;
        // Records of a request that was served are always kept: under the reject policy a
        // full buffer refuses new requests instead. Audit entries of requests refused here
        // (bad keys, limits) may fill only half of the buffer, so that a flood of bad keys
        // during a collector outage cannot lock paying tenants out.
        let served = self.reservation.is_some();
        let bound = worker.config.collector.max_buffered_records;
        let drop_all = self.drop_records || (!served && worker.metrics.buffered() >= bound / 2);
        let env = Env { worker };
        let mut queued = 0;
        let mut dropped = 0;
        for r in records {
            let json = if drop_all { None } else { r.to_json() };
            match json.map(|j| env.enqueue(&j)) {
                Some(Ok(())) => queued += 1,
                Some(Err(e)) => {
                    log::error!("{} record not queued: {e}", self.who());
                    dropped += 1;
                }
                None => dropped += 1,
            }
        }
        if dropped > 0 {
            worker.records_dropped(dropped, "record buffer full");
        }
        worker.metrics.queued(queued);
    }
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.started_ns = now_ns();
        self.method = header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        self.path = header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        self.request_id = header(MapType::HttpRequestHeaders, "x-request-id");

        let bare_path = self.path.split('?').next().unwrap_or("");
        if bare_path == "/healthz" && (self.method == "GET" || self.method == "HEAD") {
            self.unrecorded = true;
            return self.reply(reply::healthy());
        }

        if let Err(r) = self.authenticate() {
            log::debug!("{} unauthorized", self.who());
            return self.reply(r);
        }
        self.rewrite_request();
        self.api = Api::from_path(&self.path);

        if end_of_stream {
            return self.admit(&[]);
        }
        // A tenant already out of requests or tokens is refused before anything goes
        // upstream. Otherwise the headers go on now and the body is held until it is whole:
        // the token reservation needs the prompt. (Envoy's Wasm host does not deliver the
        // body to a filter that pauses its headers, so the headers cannot wait for it.)
        match self.precheck() {
            Some(r) => self.reply(r),
            None => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.local_status.is_some() || self.reservation.is_some() {
            return Action::Continue;
        }
        let max = self.worker.config.metering.max_request_body_bytes;
        if body_size > max {
            return self.reply(reply::error(
                413,
                "invalid_request_error",
                "request_too_large",
                &format!("The request body is larger than {max} bytes."),
            ));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = buffer(BufferType::HttpRequestBody, body_size);
        self.admit(&body)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.local_status.is_some() || self.reservation.is_some() {
            return Action::Continue;
        }
        // A request that ends with trailers has delivered its whole body by now.
        let body = buffer(
            BufferType::HttpRequestBody,
            self.worker.config.metering.max_request_body_bytes,
        );
        self.admit(&body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.local_status.is_some() {
            return Action::Continue;
        }
        self.upstream_status =
            header(MapType::HttpResponseHeaders, ":status").and_then(|s| s.parse().ok());
        if let Some(r) = &self.reservation {
            for (name, value) in reply::limit_headers(&r.requests, &r.token_view) {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
            }
            self.meter = Some(ResponseMeter::new(
                header(MapType::HttpResponseHeaders, "content-type").as_deref(),
                header(MapType::HttpResponseHeaders, "content-encoding").as_deref(),
                self.worker.config.metering.max_response_body_bytes,
            ));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(meter) = &mut self.meter {
            if body_size > 0 {
                meter.feed(&buffer(BufferType::HttpResponseBody, body_size));
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.unrecorded {
            return;
        }
        if self.started_ns == 0 {
            // Envoy answered this request itself (a malformed request, say) before the
            // filter saw its headers.
            self.started_ns = now_ns();
            self.method = property(&["request", "method"]).unwrap_or_default();
            self.path = property(&["request", "path"]).unwrap_or_default();
        }
        let answered = self
            .local_status
            .or(self.upstream_status)
            .or_else(|| property_u64(&["response", "code"]).and_then(|c| u32::try_from(c).ok()))
            .filter(|&c| c != 0);
        let (status, result) = match answered {
            // A status no HTTP client can mean (an upstream sent 999): recorded as a bad
            // gateway rather than as a number the collector would refuse.
            Some(c) if !(100..=599).contains(&c) => (502, AuditResult::Error),
            Some(c) => (c, AuditResult::from_status(c)),
            // The client left before any response: nginx's "client closed request".
            None => (499, AuditResult::Error),
        };
        self.worker.metrics.request(result);

        let usage = if self.reservation.is_some() {
            self.final_usage()
        } else {
            None
        };
        self.settle(usage.as_ref().map_or(0, |(u, _, _)| u.total()));

        let timestamp = records::timestamp(self.started_ns);
        let tenant_id = self.tenant().map(|t| t.id.clone());
        let ids = &self.worker.ids;
        let mut out = Vec::with_capacity(2);
        let mut resource = self.estimate.model.as_deref().map(|m| clip(m, 256));
        if let (Some((u, source, model)), Some(tenant_id)) = (usage, &tenant_id) {
            resource = model.as_deref().map(|m| clip(m, 256));
            out.push(Record::Billing(Billing {
                id: ids.next_id(),
                tenant_id: tenant_id.clone(),
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cached_input_tokens: u.cached_input_tokens,
                reasoning_tokens: u.reasoning_tokens,
                timestamp: timestamp.clone(),
                model: model.as_deref().map(|m| clip(m, 256)),
                request_id: self.request_id.as_deref().map(|r| clip(r, 256)),
                api: self.api.as_str(),
                usage_source: source,
            }));
        }
        out.push(Record::Audit(Audit {
            id: ids.next_id(),
            timestamp,
            tenant_id,
            action: "inference",
            result,
            resource,
            status_code: status,
            method: if self.method.is_empty() {
                "-".to_string()
            } else {
                clip(&self.method, 16)
            },
            // The query string is left out: some clients put keys there.
            path: clip(self.path.split('?').next().unwrap_or(""), 2048),
            remote_addr: property(&["source", "address"]).map(|a| clip(&a, 128)),
            request_id: self.request_id.as_deref().map(|r| clip(r, 256)),
        }));
        self.emit(out);
        log::trace!(
            "{} done status={status} context={}",
            self.who(),
            self.context_id
        );
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("").to_string()
}

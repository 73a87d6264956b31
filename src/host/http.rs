//! One HTTP request through the gateway.
//!
//! Request headers: answer `/healthz`; find the tenant from the key (or answer `401`); strip
//! the credentials and set `x-tenant-id`; refuse at once a tenant with no request or token
//! left. Request body: held until it is whole, then admission reserves the request and an
//! estimate of its tokens, or refuses with `429` (limits) or `503` (the record buffer is
//! full); the model server gets the body only once the reservation is made. An OpenAI stream
//! that does not ask for usage is made to (`metering::include_usage`). Response: add the
//! rate-limit headers and read usage as the body streams past, taking out of a stream what
//! asking for usage added. Log phase: settle the reservation against the real usage and queue
//! the billing and audit records.
//!
//! In global mode (`global`), a request this Envoy admits also waits for the fleet-wide
//! rate-limit service before it goes on, and the tokens it used beyond its reservation are
//! reported to the service.

mod global;

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::root::limits_key;
use super::{buffer, header, now_ns, property, property_u64, Env, Worker};
use crate::auth::{self, Credential};
use crate::config::{BufferFullPolicy, Tenant};
use crate::limits::{self, BucketState, Decision, LimitView, Limits};
use crate::metering::include_usage::{self, UsageStripper};
use crate::metering::{self, Api, RequestEstimate, ResponseMeter, Usage, MAX_EVENT_BYTES};
use crate::ratelimit::Pending;
use crate::records::{self, Audit, AuditResult, Billing, Record, UsageSource};
use crate::registry::directory::Directory;
use crate::reply::{self, LocalReply};
use crate::saml::token::{self, TokenError};
use crate::saml::{acs, Check};
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

/// The most of a response chunk read into the VM at once (`meter_in_slices`).
const READ_SLICE_BYTES: usize = 64 * 1024;

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
    /// The filter added `stream_options.include_usage` to the request body.
    usage_added: bool,
    /// Takes the usage the client did not ask for out of the response stream.
    stripper: Option<UsageStripper>,
    /// The record buffer was full under the `drop` policy: this request's records are lost.
    drop_records: bool,
    /// `POST /sso/saml/acs`: answered here, audited as `auth`.
    acs: Option<Acs>,
    /// Global mode: the rate-limit service's calls this request is waiting for.
    global: Option<Pending>,
    /// The tenants in force when the request started; a registry update mid-request does
    /// not change who it belongs to.
    directory: Rc<Directory>,
}

/// What the ACS needs from the request headers, and what came of it.
struct Acs {
    content_type: Option<String>,
    check: Option<Check>,
}

impl HttpFilter {
    pub fn new(worker: Rc<Worker>, context_id: u32) -> Self {
        HttpFilter {
            directory: worker.directory(),
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
            usage_added: false,
            stripper: None,
            drop_records: false,
            acs: None,
            global: None,
        }
    }

    fn tenant(&self) -> Option<&Tenant> {
        self.directory.tenant(self.tenant?)
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
        if let Some(t) = self.directory.lookup(key) {
            self.tenant = Some(t);
            return Ok(());
        }
        if token::looks_like_token(key) {
            return self.authenticate_session(key);
        }
        Err(reply::unauthorized(
            "invalid_api_key",
            "Incorrect API key provided.",
        ))
    }

    /// A session token from a SAML sign-on: its tenant, if the token holds and the tenant
    /// still signs in over SAML.
    fn authenticate_session(&mut self, session_token: &str) -> Result<(), LocalReply> {
        let config = Rc::clone(&self.worker.config);
        let invalid = || reply::unauthorized("invalid_api_key", "Incorrect API key provided.");
        let Some(sso) = &config.sso else {
            return Err(invalid());
        };
        match token::verify(&sso.keys, session_token, now_ns() / 1_000_000_000) {
            Ok(claims) => {
                self.tenant = Some(
                    sso.token_tenant(&config, &claims.tenant)
                        .ok_or_else(invalid)?,
                );
                Ok(())
            }
            Err(TokenError::Expired) => Err(reply::unauthorized(
                "session_expired",
                "The session token has expired. Sign in again through your identity provider.",
            )),
            Err(TokenError::Invalid) => Err(invalid()),
        }
    }

    /// `POST /sso/saml/acs`, from its headers: the filter answers it once the form is whole.
    /// The headers go on (Envoy delivers the body only then); the body is held here, so with
    /// the buffer filter after this one nothing reaches the model server.
    fn begin_acs(&mut self, end_of_stream: bool) -> Action {
        self.acs = Some(Acs {
            content_type: header(MapType::HttpRequestHeaders, "content-type"),
            check: None,
        });
        if self.method != "POST" {
            let mut r = reply::error(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "Post the SAML response to this endpoint as an HTML form.",
            );
            r.headers.push(("allow", "POST".to_string()));
            return self.reply(r);
        }
        for name in STRIPPED {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
        }
        if end_of_stream {
            return self.answer_acs(&[]);
        }
        Action::Continue
    }

    /// A chunk of the ACS form post.
    fn acs_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.local_status.is_some() {
            return Action::Continue;
        }
        if body_size > acs::MAX_BODY_BYTES {
            return self.reply(reply::error(
                413,
                "invalid_request_error",
                "request_too_large",
                &format!(
                    "The form post is larger than {} bytes.",
                    acs::MAX_BODY_BYTES
                ),
            ));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = buffer(BufferType::HttpRequestBody, body_size);
        self.answer_acs(&body)
    }

    fn answer_acs(&mut self, body: &[u8]) -> Action {
        let config = Rc::clone(&self.worker.config);
        let env = Env {
            worker: &self.worker,
        };
        let content_type = self.acs.as_ref().and_then(|a| a.content_type.clone());
        let outcome = acs::handle(&config, &env, now_ns(), content_type.as_deref(), body);
        self.tenant = outcome.tenant;
        if let Some(a) = &mut self.acs {
            a.check = outcome.check;
        }
        match outcome.check {
            Some(c) => log::info!("{} saml sign-on refused: {}", self.who(), c.code()),
            None if outcome.reply.status == 200 => log::info!("{} saml sign-on", self.who()),
            None => log::warn!(
                "{} saml sign-on answered {}",
                self.who(),
                outcome.reply.status
            ),
        }
        self.reply(outcome.reply)
    }

    /// What the registry says about an authenticated request before it goes anywhere: the
    /// fleet is draining, or the tenant is suspended.
    fn refuse_by_registry(&self) -> Option<LocalReply> {
        if !self.directory.healthy {
            log::debug!("{} refused: draining", self.who());
            return Some(reply::error(
                503,
                "server_error",
                "service_draining",
                "This gateway is draining and takes no new requests. Retry on another.",
            ));
        }
        let entry = self.directory.entry(self.tenant?)?;
        if entry.suspended {
            log::info!("{} refused: tenant suspended", self.who());
            return Some(reply::error(
                403,
                "permission_error",
                "tenant_suspended",
                "This account is suspended. Contact the service operator.",
            ));
        }
        None
    }

    /// A tenant with a model allow-list may use only those models; on an inference route a
    /// request that names none is refused too, since the server would pick one itself.
    fn refuse_model(&self) -> Option<LocalReply> {
        let entry = self.directory.entry(self.tenant?)?;
        entry.allowed_models.as_ref()?;
        let model = self.estimate.model.as_deref();
        match model {
            Some(m) if entry.allows(m) => return None,
            // Other routes (model lists, health) name no model; only a named one is checked.
            None if self.api == Api::Other => return None,
            _ => {}
        }
        log::info!("{} refused: model not allowed for the tenant", self.who());
        let message = match model {
            Some(m) => format!(
                "The model '{}' is not available to this account.",
                clip(m, 128)
            ),
            None => "Name a model: this account may use only some models.".to_string(),
        };
        Some(reply::error(
            403,
            "permission_error",
            "model_not_allowed",
            &message,
        ))
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
        let d = config.metering.default_max_tokens;
        self.estimate = match metering::estimate_request(self.api, &self.method, body, d) {
            Ok(estimate) => estimate,
            Err(bad) => {
                log::debug!("{} refused: {bad}", self.who());
                let r = reply::error(400, "invalid_request_error", bad.code(), &bad.message());
                return self.reply(r);
            }
        };
        if let Some(r) = self.refuse_model() {
            return self.reply(r);
        }

        let c = &config.collector;
        if self.worker.buffer_full() {
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
                self.ask_for_stream_usage(body);
                if config.global.is_some() {
                    return self.ask_service(cost);
                }
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

    /// Makes an OpenAI stream that does not ask for usage ask for it, so that it is billed
    /// exactly; the response path then hides the answer from the client. The body is whole
    /// here and not yet forwarded, so it can be replaced; its `content-length` was removed
    /// with the headers (see `on_http_request_headers`).
    fn ask_for_stream_usage(&mut self, body: &[u8]) {
        if !self.api.usage_on_request() || !self.worker.config.metering.inject_include_usage {
            return;
        }
        let Some(asking) = include_usage::add_to_request(body) else {
            return;
        };
        match hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body.len(), &asking) {
            Ok(()) => {
                log::trace!("{} stream_options.include_usage added", self.who());
                self.usage_added = true;
            }
            Err(e) => log::warn!(
                "{} request body not rewritten ({e:?}); the stream will be billed an estimate",
                self.who()
            ),
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
        // The model ran (a success response) but reported nothing, or the client left
        // mid-stream or before any response: the request reached the model server, so an
        // estimate is billed rather than nothing.
        let served = matches!(self.upstream_status, Some(200..=299));
        let abandoned = self.upstream_status.is_none() && self.local_status.is_none();
        let bill = metering::bill(self.api, &self.estimate, &outcome, served || abandoned)?;
        if bill.reported {
            return Some((bill.usage, UsageSource::Reported, bill.model));
        }
        if let Some(why) = outcome.unreadable {
            log::warn!(
                "{} usage not readable ({why}); billing an estimate",
                self.who()
            );
        }
        self.worker.metrics.usage_estimated();
        Some((bill.usage, UsageSource::Estimated, bill.model))
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

    /// Feeds the response chunk to the meter a slice at a time. From a fast upstream Envoy
    /// hands over several MB at once, past its buffer limits (BENCHMARKS.md, streaming); read
    /// whole, each such chunk would grow the VM's memory, which never shrinks. Read in slices,
    /// the memory a stream needs stays bounded whatever the chunks or the stream's length.
    fn meter_in_slices(&mut self, body_size: usize) {
        let Some(meter) = &mut self.meter else {
            return;
        };
        if body_size == 0 {
            meter.feed(&[]);
            return;
        }
        let mut at = 0;
        while at < body_size {
            let want = (body_size - at).min(READ_SLICE_BYTES);
            let slice = hostcalls::get_buffer(BufferType::HttpResponseBody, at, want)
                .ok()
                .flatten()
                .unwrap_or_default();
            if slice.is_empty() {
                break;
            }
            meter.feed(&slice);
            at += slice.len();
        }
    }

    /// Queues a request's records for the collector. Every record that is not queued is
    /// counted in `inference_gate.records.dropped` and reported in the log, with the reason.
    fn emit(&self, records: Vec<Record>) {
        let worker = &self.worker;
        // Records of a request that was served are always kept: under the reject policy a
        // full buffer refuses new requests instead. Audit entries of requests refused here
        // (bad keys, limits) may fill only half of the buffer (in records or in bytes), so
        // that a flood of bad keys during a collector outage cannot lock paying tenants out.
        let served = self.reservation.is_some();
        let drop_all = self.drop_records || (!served && worker.buffer_half_full());
        if drop_all {
            worker.records_dropped(records.len() as u64, "record buffer full");
            return;
        }

        let env = Env { worker };
        let (mut queued, mut bytes) = (0, 0);
        for r in records {
            let Some(json) = r.to_json() else {
                worker.records_dropped(1, "record not serialisable");
                continue;
            };
            match env.enqueue(&json) {
                Ok(()) => {
                    queued += 1;
                    bytes += json.len() as u64;
                }
                Err(e) => {
                    log::error!("{} record not queued: {e}", self.who());
                    worker.records_dropped(1, "shared queue refused the record");
                }
            }
        }
        worker.metrics.queued(queued, bytes);
    }
}

impl Context for HttpFilter {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.on_service_answer(token_id, status_code, response_size);
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.started_ns = now_ns();
        self.method = header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        self.path = header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        self.request_id = header(MapType::HttpRequestHeaders, "x-request-id");

        let bare_path = self.path.split('?').next().unwrap_or("");
        if bare_path == "/healthz" && (self.method == "GET" || self.method == "HEAD") {
            self.unrecorded = true;
            if !self.directory.healthy {
                return self.reply(reply::degraded());
            }
            return self.reply(reply::healthy());
        }
        if bare_path == acs::PATH {
            return self.begin_acs(end_of_stream);
        }

        if let Err(r) = self.authenticate() {
            log::debug!("{} unauthorized", self.who());
            return self.reply(r);
        }
        if let Some(r) = self.refuse_by_registry() {
            return self.reply(r);
        }
        self.rewrite_request();
        self.api = (self.worker.config.metering.routes).api_for(&self.method, &self.path);
        if self.api.usage_on_request() && self.worker.config.metering.inject_include_usage {
            // Admission may lengthen the body (`ask_for_stream_usage`) after these headers
            // have gone on; without a length the buffer filter after this one sets the right
            // one, or the body goes up chunked.
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "content-length");
        }

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
        if self.acs.is_some() {
            return self.acs_body(body_size, end_of_stream);
        }
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
        if self.acs.is_some() {
            return self.acs_body(acs::MAX_BODY_BYTES, true);
        }
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
            let meter = ResponseMeter::new(
                self.api,
                header(MapType::HttpResponseHeaders, "content-type").as_deref(),
                header(MapType::HttpResponseHeaders, "content-encoding").as_deref(),
                self.worker.config.metering.max_response_body_bytes,
            );
            if self.usage_added && meter.is_event_stream() {
                // The stream will be shorter than the server says.
                let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
                self.stripper = Some(UsageStripper::new(MAX_EVENT_BYTES));
            } else if self.usage_added {
                log::debug!(
                    "{} asked for stream usage but the answer is not a readable event stream",
                    self.who()
                );
            }
            self.meter = Some(meter);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.meter.is_none() {
            return Action::Continue;
        }
        if self.stripper.is_none() {
            self.meter_in_slices(body_size);
            return Action::Continue;
        }
        let chunk = if body_size > 0 {
            buffer(BufferType::HttpResponseBody, body_size)
        } else {
            Vec::new()
        };
        if let Some(meter) = &mut self.meter {
            meter.feed(&chunk);
        }
        let Some(stripper) = &mut self.stripper else {
            return Action::Continue;
        };
        let mut out = Vec::with_capacity(chunk.len());
        stripper.push(&chunk, &mut out);
        if end_of_stream {
            stripper.finish(&mut out);
        }
        let removed = stripper.removed;
        if out != chunk {
            if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out)
            {
                // Nothing of this chunk was changed: it goes on as the server sent it.
                log::warn!(
                    "{} response body not rewritten ({e:?}); the client may see the usage chunk",
                    self.who()
                );
                self.stripper = None;
            }
        }
        if end_of_stream {
            log::trace!(
                "{} usage chunks hidden from the client: {removed}",
                self.who()
            );
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
        self.abandon_service_wait();

        let usage = if self.reservation.is_some() {
            self.final_usage()
        } else {
            None
        };
        let actual = usage.as_ref().map_or(0, |(u, _, _)| u.total());
        self.settle(actual);
        self.queue_excess(actual);

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
                cache_write_input_tokens: u.cache_write_input_tokens,
                reasoning_tokens: u.reasoning_tokens,
                timestamp: timestamp.clone(),
                model: model.as_deref().map(|m| clip(m, 256)),
                request_id: self.request_id.as_deref().map(|r| clip(r, 256)),
                api: self.api.as_str(),
                usage_source: source,
            }));
        }
        if let Some(a) = &self.acs {
            // A sign-on: what was checked, and which check refused it.
            resource = Some(
                a.check
                    .map_or("saml".to_string(), |c| format!("saml:{}", c.code())),
            );
        }
        out.push(Record::Audit(Audit {
            id: ids.next_id(),
            timestamp,
            tenant_id,
            action: if self.acs.is_some() {
                "auth"
            } else {
                "inference"
            },
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
/// At most `max` bytes of `s`, cut on a character boundary, with control characters (a
/// client's `\u0000` in a model name among them) replaced by U+FFFD: records carry only text
/// every store can hold.
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end)
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod clip_tests {
    use super::clip;

    #[test]
    fn clipped_text_has_no_control_characters_and_keeps_whole_characters() {
        assert_eq!(clip("demo-model", 256), "demo-model");
        assert_eq!(clip("a\u{0}b\nc", 256), "a\u{fffd}b\u{fffd}c");
        // 'é' is two bytes: a cut inside it drops it whole.
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("", 0), "");
    }
}

//! One line per request on stdout and, if asked, one JSON line per request in a file.
//!
//! Integration tests read the file to compare the gateway's metering with what this server
//! reported, and to check which headers reached it. Neither output ever holds a header
//! value other than the tenant and request ids, nor a body.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

use crate::plan::Plan;

/// What a generation handler reported, attached to its response for the log to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl From<&Plan> for Metered {
    fn from(plan: &Plan) -> Self {
        Self {
            model: plan.model.clone(),
            stream: plan.stream,
            include_usage: plan.include_usage,
            prompt_tokens: plan.prompt_tokens,
            completion_tokens: plan.completion_tokens(),
        }
    }
}

/// Where request lines go besides stdout.
#[derive(Debug, Default)]
pub struct RequestLog {
    file: Option<Mutex<File>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    method: &'a str,
    path: &'a str,
    status: u16,
    request_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    model: Option<&'a str>,
    stream: bool,
    include_usage: bool,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    header_names: Vec<&'a str>,
}

impl RequestLog {
    /// Appends to `path`, creating it if needed.
    pub fn to_file(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Some(Mutex::new(file)),
        })
    }

    fn write(&self, entry: &Entry) {
        let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        println!(
            concat!(
                "{} {} tenant={} request_id={} model={} stream={} ",
                "prompt_tokens={} completion_tokens={} status={}"
            ),
            entry.method,
            entry.path,
            dash(entry.tenant_id),
            dash(entry.request_id),
            dash(entry.model),
            entry.stream,
            num(entry.prompt_tokens),
            num(entry.completion_tokens),
            entry.status,
        );

        let Some(file) = &self.file else {
            return;
        };
        let line = match serde_json::to_string(entry) {
            Ok(json) => json + "\n",
            Err(err) => {
                tracing::warn!(error = %err, "cannot encode the request log entry");
                return;
            }
        };

        // One write per line on an unbuffered file: a reader never sees half a line
        // of a finished request. A poisoned lock only means another writer panicked.
        let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(err) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %err, "cannot append to the request log file");
        }
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Middleware: logs each request once its response head is ready, so the line is written
/// before the client can read the answer.
pub async fn record(State(log): State<Arc<RequestLog>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();

    let response = next.run(request).await;

    let metered = response.extensions().get::<Metered>();
    let mut header_names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
    header_names.sort_unstable();
    log.write(&Entry {
        method: method.as_str(),
        path: &path,
        status: response.status().as_u16(),
        request_id: header_text(&headers, "x-request-id"),
        tenant_id: header_text(&headers, "x-tenant-id"),
        model: metered.map(|m| m.model.as_str()),
        stream: metered.is_some_and(|m| m.stream),
        include_usage: metered.is_some_and(|m| m.include_usage),
        prompt_tokens: metered.map(|m| m.prompt_tokens),
        completion_tokens: metered.map(|m| m.completion_tokens),
        header_names,
    });
    response
}

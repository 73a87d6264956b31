//! `demo-model`: a small OpenAI-compatible model server that stands in for vLLM, TGI or
//! llama.cpp, so the gateway can be tried with one command and tested against a known
//! upstream.
//!
//! It serves `POST /v1/chat/completions`, `POST /v1/completions` (plain or streamed as
//! server-sent events, with `stream_options.include_usage`) and `GET /v1/models`. Anything
//! else is a 404, and a body it cannot use a 400, both with OpenAI's error shape.
//!
//! # Usage figures
//!
//! Nothing is learned: the answer is a function of the request, so every request gets
//! different but reproducible figures, and a test can compare the gateway's metering with
//! what this server reported (stdout, or the `--log-file` JSON lines).
//!
//! - The toy tokenizer counts a text as its whitespace-separated words plus its ASCII
//!   punctuation characters: `"Hello, world!"` is 2 + 2 = 4 tokens.
//! - `prompt_tokens` of a chat request: the tokens of every text part of every message
//!   (a string content is one part; parts of other types such as images count nothing),
//!   plus 3 per message, plus 1. Of a completions request: per prompt string, its tokens
//!   plus 1, summed over the prompts.
//! - Each choice `i` (0-based, numbered across prompts for a list of prompts) is
//!   `5 + (T * 7 + C + 11 * i) % 40` words long, where `T` and `C` are the prompt's tokens
//!   and characters (for a list of prompts, those of the choice's own prompt). A
//!   `max_tokens` or `max_completion_tokens` below that cuts it, and its `finish_reason`
//!   is then `length` instead of `stop`. The completions API caps at 16 by default.
//! - The reply is exactly that many words without punctuation, so the toy tokenizer
//!   counts it as its length. `completion_tokens` sums the choices, and `total_tokens` is
//!   `prompt_tokens + completion_tokens`.
//!
//! A request with header `x-demo-status: 500` (any 5xx) gets that status and an error
//! body that still carries the `usage` the request would have had, to test billing when
//! a server fails. It is a plain JSON body even for `stream: true`, as from a server that
//! fails before streaming; any other value of the header is a 400.
//!
//! # Request log
//!
//! Every request prints one line on stdout (diagnostics go to stderr):
//!
//! ```text
//! POST /v1/chat/completions tenant=acme request_id=r-1 model=demo-model stream=true prompt_tokens=12 completion_tokens=20 status=200
//! ```
//!
//! `tenant` and `request_id` come from `x-tenant-id` and `x-request-id` (`-` if absent);
//! the model and figures are `-` for requests that generate nothing. With `--log-file`
//! the same goes, one JSON object per line, to that file: `method`, `path`, `status`,
//! `request_id`, `tenant_id`, `model`, `stream`, `include_usage`, `prompt_tokens`,
//! `completion_tokens` (null where the line shows `-`) and `header_names`, the sorted
//! names of the request headers. No other header value and no body is ever written. The
//! line is written before the response is sent, so a client that has its answer can
//! read it.
//!
//! # Modules
//!
//! - [`tokenize`]: the toy tokenizer and the reply length.
//! - [`request`]: request bodies, their checks, and the [`plan::Plan`] they turn into.
//! - [`plan`]: the answer worked out before anything is sent.
//! - [`response`]: renders a plan as a plain body or as stream events.
//! - [`handlers`]: the endpoints; [`error`]: the OpenAI-shaped error type.
//! - [`request_log`]: the per-request stdout line and JSON log line.

pub mod error;
pub mod handlers;
pub mod plan;
pub mod request;
pub mod request_log;
pub mod response;
pub mod tokenize;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{middleware, Router};

use crate::request_log::RequestLog;

/// What every handler shares.
#[derive(Debug, Clone, Default)]
pub struct AppState {
    /// Pause between two events of a stream.
    pub chunk_delay: Duration,
    pub log: Arc<RequestLog>,
}

/// The whole server, in one router that tests call in-process.
pub fn app(state: AppState) -> Router {
    let log = state.log.clone();
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::not_found)
        .with_state(state)
        // Long prompts and inline images: as much as the gateway's default Envoy
        // configuration lets through (axum's own default is 2 MB).
        .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
        .layer(middleware::from_fn_with_state(log, request_log::record))
}

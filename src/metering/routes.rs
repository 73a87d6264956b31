//! Which API shape a request speaks, decided by its path.
//!
//! The operator's routes (`metering.routes`) are tried first, in their order, then the
//! defaults below; the first that matches decides. A route names either an exact `path` or a
//! `prefix`, which matches that path and everything below it (`/ollama` matches
//! `/ollama/api/chat`, not `/ollamax`). Paths are compared without their query string and
//! trailing slashes. Only `POST` creates anything, so other methods are never metered as a
//! shape (a `GET /v1/responses/{id}` reads a stored response; billing it again would be
//! wrong).
//!
//! The defaults are exact paths, because the APIs keep other resources below them:
//! `/v1/messages/count_tokens` and `/v1/messages/batches`, `/v1/responses/{id}/cancel`.
//! Besides the shapes, they name the well-known model servers' own routes (llama.cpp's
//! `/completion`, TGI's and SGLang's `/generate`, vLLM's `/invocations`), the embedding routes
//! that report no usage of their own, and the token-counting routes, which cost nothing.

use super::Api;

/// The paths each shape is served on when the configuration says nothing else.
const DEFAULTS: [(&str, Api); 21] = [
    ("/v1/chat/completions", Api::OpenAiChat),
    ("/chat/completions", Api::OpenAiChat),
    ("/v1/completions", Api::OpenAiCompletions),
    ("/completions", Api::OpenAiCompletions),
    ("/v1/embeddings", Api::OpenAiEmbeddings),
    ("/embeddings", Api::OpenAiEmbeddings),
    // llama.cpp's own embedding route, and Ollama's (new and old): input only.
    ("/embedding", Api::OpenAiEmbeddings),
    ("/api/embed", Api::OpenAiEmbeddings),
    ("/api/embeddings", Api::OpenAiEmbeddings),
    ("/v1/responses", Api::OpenAiResponses),
    ("/responses", Api::OpenAiResponses),
    ("/invocations", Api::OpenAiInvocations),
    ("/v1/messages", Api::AnthropicMessages),
    ("/api/chat", Api::OllamaChat),
    ("/api/generate", Api::OllamaGenerate),
    ("/completion", Api::LlamaCppCompletion),
    ("/infill", Api::LlamaCppCompletion),
    ("/generate", Api::Generate),
    ("/generate_stream", Api::Generate),
    ("/v1/messages/count_tokens", Api::Unmetered),
    ("/v1/responses/input_tokens", Api::Unmetered),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Path(String),
    Prefix(String),
}

/// One configured route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    matcher: Matcher,
    api: Api,
}

impl Route {
    /// A route for exactly `path`. The path is checked with [`check_path`] first.
    pub fn path(path: &str, api: Api) -> Route {
        Route {
            matcher: Matcher::Path(normalize(path).to_string()),
            api,
        }
    }

    /// A route for `prefix` and every path below it.
    pub fn prefix(prefix: &str, api: Api) -> Route {
        Route {
            matcher: Matcher::Prefix(normalize(prefix).to_string()),
            api,
        }
    }

    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Path(p) => path == p,
            Matcher::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// Why a configured path or prefix is refused, if it is.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with '/'");
    }
    if path.len() > 1024 {
        return Err("must be at most 1024 characters");
    }
    if path
        .bytes()
        .any(|b| matches!(b, b'?' | b'#') || !b.is_ascii_graphic())
    {
        return Err("must be a path without query string, spaces or control characters");
    }
    Ok(())
}

/// The routes of one configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    configured: Vec<Route>,
}

impl Routes {
    pub fn new(configured: Vec<Route>) -> Routes {
        Routes { configured }
    }

    /// Adds a route after the others, unless one of them has the same path or prefix (the
    /// new one would never match): then `false`.
    pub fn push(&mut self, route: Route) -> bool {
        if self.configured.iter().any(|r| r.matcher == route.matcher) {
            return false;
        }
        self.configured.push(route);
        true
    }

    /// The shape of a request.
    pub fn api_for(&self, method: &str, path: &str) -> Api {
        if method != "POST" {
            return Api::Other;
        }
        let path = normalize(path);
        if let Some(r) = self.configured.iter().find(|r| r.matches(path)) {
            return r.api;
        }
        DEFAULTS
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(Api::Other, |(_, api)| *api)
    }
}

/// The path without query string, fragment and trailing slashes.
fn normalize(path: &str) -> &str {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_end_matches('/')
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn defaults() {
        let r = Routes::default();
        for (path, api) in [
            ("/v1/chat/completions", Api::OpenAiChat),
            ("/v1/chat/completions?x=1", Api::OpenAiChat),
            ("/v1/chat/completions/", Api::OpenAiChat),
            ("/v1/completions", Api::OpenAiCompletions),
            ("/v1/embeddings", Api::OpenAiEmbeddings),
            ("/v1/responses", Api::OpenAiResponses),
            ("/v1/messages", Api::AnthropicMessages),
            ("/api/chat", Api::OllamaChat),
            ("/api/generate", Api::OllamaGenerate),
            ("/completion", Api::LlamaCppCompletion),
            ("/infill", Api::LlamaCppCompletion),
            ("/generate", Api::Generate),
            ("/generate_stream", Api::Generate),
            ("/invocations", Api::OpenAiInvocations),
            ("/api/embed", Api::OpenAiEmbeddings),
            ("/embedding", Api::OpenAiEmbeddings),
            ("/v1/messages/count_tokens", Api::Unmetered),
            ("/v1/messages/batches", Api::Other),
            ("/v1/responses/resp_1/cancel", Api::Other),
            ("/v1/models", Api::Other),
            ("", Api::Other),
        ] {
            assert_eq!(r.api_for("POST", path), api, "{path}");
        }
        assert_eq!(r.api_for("GET", "/v1/responses"), Api::Other);
        assert_eq!(r.api_for("post", "/v1/responses"), Api::Other);
    }

    #[test]
    fn configured_routes_come_first_in_order() {
        let r = Routes::new(vec![
            Route::prefix("/ollama/", Api::OllamaChat),
            Route::path("/ollama/api/generate", Api::OllamaGenerate),
            Route::path("/v1/chat/completions", Api::Other),
            Route::prefix("/claude", Api::AnthropicMessages),
        ]);
        assert_eq!(r.api_for("POST", "/ollama/api/chat"), Api::OllamaChat);
        assert_eq!(r.api_for("POST", "/ollama"), Api::OllamaChat);
        // Shadowed by the prefix before it.
        assert_eq!(r.api_for("POST", "/ollama/api/generate"), Api::OllamaChat);
        assert_eq!(r.api_for("POST", "/v1/chat/completions"), Api::Other);
        assert_eq!(
            r.api_for("POST", "/claude/v1/messages"),
            Api::AnthropicMessages
        );
        assert_eq!(r.api_for("POST", "/claudex"), Api::Other);
        assert_eq!(r.api_for("POST", "/v1/messages"), Api::AnthropicMessages);
        let mut r = r;
        assert!(!r.push(Route::prefix("/ollama", Api::OpenAiChat)));
        assert!(r.push(Route::path("/ollama", Api::OpenAiChat)));
        let all = Routes::new(vec![Route::prefix("/", Api::OpenAiChat)]);
        assert_eq!(all.api_for("POST", "/anything/at/all"), Api::OpenAiChat);
    }

    #[test]
    fn paths_are_checked() {
        assert!(check_path("/v1/x").is_ok());
        for bad in ["", "v1/x", "/v1/x?y", "/v1 x", "/v1/\u{7f}", "/ü"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}

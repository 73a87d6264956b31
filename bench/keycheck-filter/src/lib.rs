//! The Proxy-Wasm floor for `make bench`: the bearer key looked up in a table, the key removed
//! and `x-tenant-id` set, or a `401`. The same work as the benchmark's Lua variant, written
//! against the same SDK as inference-gate, so that the difference between the two is what
//! inference-gate does beyond the key check, and the difference between this and bare Envoy is
//! what running any Proxy-Wasm filter costs.
//!
//! Plugin configuration: one `<key> <tenant>` per line. For the host-calls section's
//! calibration, a line `@reads <n> <header>` makes every admitted request read that request
//! header `n` more times: the cost of one host call, measured in Envoy.

use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root { keys: Rc::default(), reads: Rc::default() }));
}}

/// Extra reads of one request header per request (`@reads`), for the calibration.
#[derive(Default)]
struct Reads {
    count: usize,
    header: String,
}

struct Root {
    keys: Rc<HashMap<String, String>>,
    reads: Rc<Reads>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        let calibration = text.lines().find_map(|line| line.strip_prefix("@reads "));
        if let Some((count, header)) = calibration.and_then(|rest| rest.split_once(' ')) {
            self.reads = Rc::new(Reads {
                count: count.parse().unwrap_or(0),
                header: header.trim().to_string(),
            });
        }
        self.keys = Rc::new(
            text.lines()
                .filter(|line| !line.starts_with('@'))
                .filter_map(|line| line.split_once(' '))
                .map(|(key, tenant)| (key.to_string(), tenant.trim().to_string()))
                .collect(),
        );
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(KeyCheck {
            keys: Rc::clone(&self.keys),
            reads: Rc::clone(&self.reads),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct KeyCheck {
    keys: Rc<HashMap<String, String>>,
    reads: Rc<Reads>,
}

impl Context for KeyCheck {}

impl HttpContext for KeyCheck {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let value = self.get_http_request_header("authorization");
        let tenant = value
            .as_deref()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, key)| self.keys.get(key.trim()));
        match tenant {
            Some(tenant) => {
                let tenant = tenant.clone();
                for _ in 0..self.reads.count {
                    let _ = self.get_http_request_header(&self.reads.header);
                }
                self.set_http_request_header("authorization", None);
                self.set_http_request_header("x-tenant-id", Some(&tenant));
                Action::Continue
            }
            None => {
                self.send_http_response(
                    401,
                    vec![("content-type", "application/json")],
                    Some(br#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#),
                );
                Action::Pause
            }
        }
    }
}

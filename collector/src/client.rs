//! The operators' command line front to the registry: `collector tenant ...` and
//! `collector health ...` call the collector's API over plain HTTP/1.1 with an admin token,
//! and print its JSON answer. See `main.rs` for the commands.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// How long one call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is and the token to present.
pub struct Client {
    base: String,
    host: String,
    port: u16,
    token: String,
}

/// A call's answer: the status and the JSON body (`null` when there is none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// `url` is `http://host:port`; `https` needs a TLS-terminating proxy in front, which
    /// this client does not speak to.
    pub fn new(url: &str, token: String) -> Result<Client, String> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|err| format!("--url {url}: not a URL ({err})"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--url {url}: only http:// is supported (use a port-forward or a proxy for TLS)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("--url {url}: no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        // `http://host:99999` parses, without a port; it must not become port 80.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let names_port = authority
            .rsplit(']')
            .next()
            .is_some_and(|t| t.contains(':'));
        if names_port && uri.port_u16().is_none() {
            return Err(format!(
                "--url {url}: the port must be a number from 1 to 65535"
            ));
        }
        if token.is_empty() {
            return Err("no admin token: set COLLECTOR_ADMIN_TOKEN or give --admin-token".into());
        }
        Ok(Client {
            port: uri.port_u16().unwrap_or(80),
            host,
            base,
            token,
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(method.clone(), path, body))
            .await
            .map_err(|_| format!("{method} {path}: no answer within {CALL_TIMEOUT:?}"))?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let failed =
            |what: &str, err: &dyn std::fmt::Display| format!("{method} {url}: {what}: {err}");
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|err| failed("cannot connect", &err))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| failed("handshake", &err))?;
        tokio::spawn(connection);

        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|err| failed("bad request", &err))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| failed("no answer", &err))?;
        let status = response.status().as_u16();
        let data = response
            .into_body()
            .collect()
            .await
            .map_err(|err| failed("answer cut short", &err))?
            .to_bytes();
        let body = if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&data).map_err(|err| failed("answer is not JSON", &err))?
        };
        Ok(Answer { status, body })
    }
}

impl Answer {
    /// The body of a `2xx`, or the API's error as one line: `404 tenant_not_found: ...`.
    pub fn into_result(self) -> Result<Value, String> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let error = &self.body["error"];
        let code = error["code"].as_str().unwrap_or("error");
        let message = error["message"].as_str().unwrap_or("no message");
        Err(format!("{} {code}: {message}", self.status))
    }
}

/// `/v1/tenants/{id}`, the id percent-encoded where it must be (it is checked by the API).
pub fn tenant_path(id: &str) -> String {
    format!("/v1/tenants/{}", segment(id))
}

/// Text for one path segment or query value: percent-encoded but for `A-Z a-z 0-9 - _ .`.
/// `.` and `..` are encoded whole, or a proxy on the way would resolve them: a revoke of key
/// `..` of `acme` would delete the tenant.
pub fn segment(text: &str) -> String {
    if text == "." || text == ".." {
        return "%2E".repeat(text.len());
    }
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_token() {
        let c = Client::new("http://127.0.0.1:9000/", "t".repeat(8)).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.base.as_str()),
            ("127.0.0.1", 9000, "http://127.0.0.1:9000")
        );
        assert_eq!(
            Client::new("http://collector", "x".into()).unwrap().port,
            80
        );
        assert!(Client::new("https://collector:9000", "x".into()).is_err());
        assert!(Client::new("collector:9000", "x".into()).is_err());
        assert!(Client::new("http://collector:9000", String::new()).is_err());
        for bad in [
            "http://127.0.0.1:99999",
            "http://[::1]:70000",
            "http://collector:",
        ] {
            assert!(Client::new(bad, "x".into()).is_err(), "{bad}");
        }
        assert_eq!(
            Client::new("http://[::1]:9000", "x".into()).unwrap().port,
            9000
        );
        assert_eq!(Client::new("http://[::1]", "x".into()).unwrap().port, 80);
    }

    #[test]
    fn errors_read_as_one_line() {
        let answer = Answer {
            status: 404,
            body: serde_json::json!({"error": {"code": "tenant_not_found", "message": "no tenant"}}),
        };
        assert_eq!(
            answer.into_result().unwrap_err(),
            "404 tenant_not_found: no tenant"
        );
        assert_eq!(tenant_path("a b/c"), "/v1/tenants/a%20b%2Fc");
        assert_eq!(segment("key_1.x-y"), "key_1.x-y");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("."), "%2E");
        assert_eq!(segment("..."), "...");
        assert_eq!(
            format!("{}/keys/{}", tenant_path("acme"), segment("..")),
            "/v1/tenants/acme/keys/%2E%2E"
        );
    }
}

//! The real binary on a loopback socket: startup, a batch over the wire, a read-back, and a
//! clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-binary-test";
const INGEST: &str = "ingest-token-for-binary-test";

fn collector() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_collector"));
    command
        .env("RUST_LOG", "info")
        .env_remove("COLLECTOR_ADMIN_TOKEN")
        .env_remove("COLLECTOR_INGEST_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Reads log lines until the startup line and returns the address it names.
fn listening_address(stderr: &mut BufReader<ChildStderr>, log: &mut String) -> String {
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap();
        assert!(read > 0, "collector exited before listening:\n{log}");
        log.push_str(&line);
        if line.contains("collector listening") {
            let start = line.find("listen=").unwrap() + "listen=".len();
            return line[start..].split_whitespace().next().unwrap().to_owned();
        }
    }
}

/// One HTTP/1.1 exchange on a fresh connection; returns the status and the JSON body.
fn exchange(address: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();

    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A running collector on a loopback port, with its log so far.
struct Server {
    child: Child,
    stderr: BufReader<ChildStderr>,
    log: String,
    address: String,
}

impl Server {
    fn start(database: &Path) -> Server {
        let mut child = collector()
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(database)
            .env("COLLECTOR_ADMIN_TOKEN", ADMIN)
            .env("COLLECTOR_INGEST_TOKEN", INGEST)
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        let address = listening_address(&mut stderr, &mut log);
        Server {
            child,
            stderr,
            log,
            address,
        }
    }

    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
    }

    /// Waits for the exit (killing the process if it takes longer than `limit`) and returns
    /// its exit code and whole log.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let exit = wait_for_exit(&mut self.child, limit);
        if exit.is_none() {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }
        self.stderr.read_to_string(&mut self.log).unwrap();
        (exit.and_then(|status| status.code()), self.log)
    }
}

#[test]
fn serves_a_batch_over_a_socket_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("new-dir/collector.db");
    let server = Server::start(&database);
    let address = server.address.clone();
    assert!(
        database.exists(),
        "the database and its directory were not created"
    );

    let batch = json!({ "records": [{
        "kind": "billing", "id": "b1", "tenant_id": "acme", "input_tokens": 12,
        "output_tokens": 34, "timestamp": "2026-12-03T18:07:14.123Z", "api": "openai_chat",
        "usage_source": "reported"
    }]});
    let (status, body) = exchange(&address, "POST", "/v1/records", INGEST, &batch.to_string());
    assert_eq!(
        (status, body),
        (200, json!({ "accepted": 1, "duplicates": 0 }))
    );

    let (status, body) = exchange(&address, "GET", "/v1/billing?tenant_id=acme", ADMIN, "");
    assert_eq!(status, 200);
    assert_eq!(body["records"][0]["id"], "b1");
    assert_eq!(body["records"][0]["timestamp"], "2026-12-03T18:07:14.123Z");

    let (status, _) = exchange(&address, "GET", "/v1/billing?tenant_id=acme", INGEST, "");
    assert_eq!(status, 401);

    server.sigterm();
    let (exit, log) = server.finish(Duration::from_secs(10));
    assert_eq!(exit, Some(0), "log:\n{log}");

    assert!(log.contains("signal=\"SIGTERM\""), "{log}");
    assert!(log.contains("collector stopped"), "{log}");
    assert!(
        !log.contains(ADMIN) && !log.contains(INGEST),
        "a token reached the log:\n{log}"
    );
    assert!(
        !dir.path().join("new-dir/collector.db-wal").exists(),
        "closing the database should fold the WAL back in"
    );
}

/// Opens a request whose body is still on its way: the headers and the first half.
fn start_slow_request(address: &str, body: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {INGEST}\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(first.as_bytes()).unwrap();
    (stream, rest.to_owned())
}

fn one_record_batch() -> String {
    json!({ "records": [{
        "kind": "audit", "id": "slow-1", "timestamp": "2026-12-03T18:07:14Z",
        "tenant_id": null, "action": "auth", "result": "unauthorized", "status_code": 401,
        "method": "POST", "path": "/v1/chat/completions"
    }]})
    .to_string()
}

#[test]
fn a_request_in_flight_at_sigterm_is_finished_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("collector.db");
    let server = Server::start(&database);
    let (mut stream, rest) = start_slow_request(&server.address, &one_record_batch());
    // Let the server read the head, so the request is truly in flight.
    std::thread::sleep(Duration::from_millis(300));

    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(rest.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(r#"{"accepted":1,"duplicates":0}"#),
        "{response}"
    );

    let (exit, log) = server.finish(Duration::from_secs(10));
    assert_eq!(exit, Some(0), "log:\n{log}");

    // The record is in the file the next collector opens.
    let server = Server::start(&database);
    let (status, body) = exchange(&server.address, "GET", "/v1/audit", ADMIN, "");
    assert_eq!((status, &body["entries"][0]["id"]), (200, &json!("slow-1")));
    server.sigterm();
    assert_eq!(server.finish(Duration::from_secs(10)).0, Some(0));
}

#[test]
fn a_second_signal_stops_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("collector.db"));
    let (_stream, _rest) = start_slow_request(&server.address, &one_record_batch());
    std::thread::sleep(Duration::from_millis(300));

    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    server.sigterm();
    let started = Instant::now();
    let (exit, log) = server.finish(Duration::from_secs(10));
    assert_eq!(exit, Some(0), "log:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the grace period"
    );
    assert!(log.contains("second signal"), "{log}");
}

#[test]
fn refuses_to_start_without_good_tokens() {
    let cases = [
        (
            None,
            Some(INGEST),
            "COLLECTOR_ADMIN_TOKEN is not set or empty",
        ),
        (
            Some(ADMIN),
            Some(""),
            "COLLECTOR_INGEST_TOKEN is not set or empty",
        ),
        (
            Some("short"),
            Some(INGEST),
            "COLLECTOR_ADMIN_TOKEN is shorter than 8 characters",
        ),
        (Some(ADMIN), Some(ADMIN), "must differ"),
    ];
    for (admin, ingest, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut command = collector();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(dir.path().join("c.db"));
        if let Some(admin) = admin {
            command.env("COLLECTOR_ADMIN_TOKEN", admin);
        }
        if let Some(ingest) = ingest {
            command.env("COLLECTOR_INGEST_TOKEN", ingest);
        }

        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "started with {admin:?} / {ingest:?}"
        );
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            !dir.path().join("c.db").exists(),
            "touched the database before refusing"
        );
    }
}

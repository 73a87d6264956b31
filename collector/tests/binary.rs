//! The real binary on a loopback socket: startup, a batch over the wire, a read-back, a clean
//! exit on SIGTERM, nothing acknowledged lost to a SIGKILL, and several collectors sharing one
//! PostgreSQL.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-binary-test";
const INGEST: &str = "ingest-token-for-binary-test";

fn collector() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_collector"));
    command
        .env("RUST_LOG", "info")
        .env_remove("COLLECTOR_ADMIN_TOKEN")
        .env_remove("COLLECTOR_ADMIN_TOKENS")
        .env_remove("COLLECTOR_ADMIN_TOKENS_FILE")
        .env_remove("COLLECTOR_URL")
        .env_remove("COLLECTOR_INGEST_TOKEN")
        .env_remove("COLLECTOR_DATABASE")
        .env_remove("COLLECTOR_BILLING_RETENTION")
        .env_remove("COLLECTOR_AUDIT_RETENTION")
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
    try_exchange(address, method, path, token, body)
        .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
}

/// The same, with any failure (refused, reset, cut short, not JSON) as an error.
fn try_exchange(
    address: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;

    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no complete head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let body = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok((status, body))
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
    /// `database` is a SQLite path or a PostgreSQL URL.
    fn start(database: impl AsRef<OsStr>) -> Server {
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

    /// SIGKILL: no chance to finish anything.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
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
    let server = Server::start(dir.path().join("collector.db"));
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
            "no admin token: set COLLECTOR_ADMIN_TOKEN",
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

/// Billing records `{tenant}-{first}` .. `{tenant}-{first + count - 1}` as a batch body.
fn billing_batch(tenant: &str, ids: impl Iterator<Item = String>) -> String {
    let records: Vec<Value> = ids
        .map(|id| {
            json!({
                "kind": "billing", "id": id, "tenant_id": tenant, "input_tokens": 3,
                "output_tokens": 4, "timestamp": "2026-12-03T18:07:14.123Z",
                "api": "openai_chat", "usage_source": "reported"
            })
        })
        .collect();
    json!({ "records": records }).to_string()
}

/// Every billing record id of `tenant`, read page by page through the admin API.
fn stored_ids(address: &str, tenant: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/v1/billing?tenant_id={tenant}&limit=10000");
        if let Some(from) = &from {
            path.push_str(&format!("&from={from}"));
        }
        let (status, body) = exchange(address, "GET", &path, ADMIN, "");
        assert_eq!(status, 200, "{body}");
        let records = body["records"].as_array().unwrap();
        let before = ids.len();
        ids.extend(records.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        // Every record here has the same timestamp: one page must hold them all.
        if records.len() < 10_000 || ids.len() == before {
            return ids;
        }
        from = records
            .last()
            .map(|r| r["timestamp"].as_str().unwrap().to_owned());
    }
}

/// Senders post batches as fast as they can; the collector is killed with SIGKILL in the
/// middle; every record of every batch that was answered `200` must be there after a restart.
fn nothing_acknowledged_is_lost_to_a_sigkill(database: &str) {
    let server = Server::start(database);
    let address = server.address.clone();
    let acknowledged = Arc::new(Mutex::new(HashMap::<String, Vec<String>>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (address, acknowledged, stop) =
                (address.clone(), acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                let tenant = format!("killed-{sender}");
                let mut next = 0;
                // Bounded, so that one page of the billing query holds them all.
                while !stop.load(Ordering::Relaxed) && next < 9_000 {
                    let ids: Vec<String> =
                        (next..next + 40).map(|n| format!("{tenant}-{n}")).collect();
                    next += 40;
                    let body = billing_batch(&tenant, ids.iter().cloned());
                    match try_exchange(&address, "POST", "/v1/records", INGEST, &body) {
                        Ok((200, _)) => acknowledged
                            .lock()
                            .unwrap()
                            .entry(tenant.clone())
                            .or_default()
                            .extend(ids),
                        // Refused or cut off by the kill: not acknowledged, not counted.
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();

    // Kill once some batches are through, while the senders are still sending.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged
        .lock()
        .unwrap()
        .values()
        .map(Vec::len)
        .sum::<usize>()
        < 400
    {
        assert!(Instant::now() < deadline, "no batch was acknowledged");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(150));
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }

    let server = Server::start(database);
    let acknowledged = acknowledged.lock().unwrap();
    eprintln!(
        "acknowledged before the kill: {} records",
        acknowledged.values().map(Vec::len).sum::<usize>()
    );
    for (tenant, ids) in acknowledged.iter() {
        let stored = stored_ids(&server.address, tenant);
        let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged records of {tenant} are missing, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(5)]
        );
    }
    server.sigterm();
    assert_eq!(server.finish(Duration::from_secs(10)).0, Some(0));
}

#[test]
fn nothing_acknowledged_is_lost_to_a_sigkill_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("collector.db");
    nothing_acknowledged_is_lost_to_a_sigkill(database.to_str().unwrap());
}

#[test]
fn nothing_acknowledged_is_lost_to_a_sigkill_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(location) = runtime.block_on(common::postgres_location()) else {
        return;
    };
    nothing_acknowledged_is_lost_to_a_sigkill(&location);
}

#[test]
fn several_collectors_share_one_postgres_without_duplicates() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(location) = runtime.block_on(common::postgres_location()) else {
        return;
    };
    let servers: Vec<Server> = (0..3).map(|_| Server::start(&location)).collect();
    let addresses: Vec<String> = servers.iter().map(|s| s.address.clone()).collect();

    // Eight senders, each sending 20 batches of 100 to the collectors in turn; the windows
    // overlap, so most ids reach several collectors at about the same time.
    let senders: Vec<_> = (0..8u64)
        .map(|sender| {
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                let (mut accepted, mut duplicates) = (0, 0);
                for batch in 0..20u64 {
                    let start = (sender * 130 + batch * 50) % 2_000;
                    let ids = (start..start + 100).map(|n| format!("shared-{:04}", n % 2_000));
                    let address = &addresses[((sender + batch) % 3) as usize];
                    let body = billing_batch("shared", ids);
                    let (status, answer) = exchange(address, "POST", "/v1/records", INGEST, &body);
                    assert_eq!(status, 200, "{answer}");
                    accepted += answer["accepted"].as_u64().unwrap();
                    duplicates += answer["duplicates"].as_u64().unwrap();
                }
                (accepted, duplicates)
            })
        })
        .collect();
    let (mut accepted, mut duplicates) = (0, 0);
    for sender in senders {
        let (a, d) = sender.join().unwrap();
        accepted += a;
        duplicates += d;
    }

    assert_eq!(accepted + duplicates, 8 * 20 * 100);
    let stored = stored_ids(&addresses[0], "shared");
    assert_eq!(
        accepted,
        stored.len() as u64,
        "an id was counted as new twice"
    );
    for address in &addresses {
        let (_, usage) = exchange(address, "GET", "/v1/usage?tenant_id=shared", ADMIN, "");
        assert_eq!(usage["requests"], stored.len(), "{usage}");
    }
    for server in servers {
        server.sigterm();
        let (exit, log) = server.finish(Duration::from_secs(10));
        assert_eq!(exit, Some(0), "log:\n{log}");
    }
}

#[test]
fn refuses_retention_periods_that_would_empty_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let output = collector()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--billing-retention",
            "30s",
            "--database",
        ])
        .arg(dir.path().join("c.db"))
        .env("COLLECTOR_ADMIN_TOKEN", ADMIN)
        .env("COLLECTOR_INGEST_TOKEN", INGEST)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("must be at least 1h"), "{stderr}");
}

/// `collector tenant ...` / `collector health ...` against a running collector: what it
/// prints (JSON), and what it says on a refusal.
fn cli(address: &str, args: &[&str], token: &str) -> (bool, Value, String) {
    let output = collector()
        .args(args)
        .env("COLLECTOR_URL", format!("http://{address}"))
        .env("COLLECTOR_ADMIN_TOKEN", token)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (output.status.success(), json, stderr)
}

#[test]
fn the_tenant_and_health_commands_drive_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("c.db"));
    let address = server.address.clone();
    let run = |args: &[&str]| cli(&address, args, ADMIN);

    let (ok, created, stderr) = run(&[
        "tenant",
        "create",
        "acme",
        "--rate-limit",
        "60",
        "--token-budget",
        "20000",
        "--allowed-model",
        "demo-model",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("shown this once"), "{stderr}");
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ig-"));
    assert_eq!(created["tenant"]["allowed_models"], json!(["demo-model"]));

    let (ok, added, _) = run(&["tenant", "add-key", "acme"]);
    assert!(ok);
    let old_key_id = created["key_id"].as_str().unwrap();
    let (ok, revoked, stderr) = run(&["tenant", "revoke-key", "acme", old_key_id]);
    assert!(ok, "{stderr}");
    assert!(revoked["revoked_at"].is_string());

    let (ok, updated, _) = run(&[
        "tenant",
        "update",
        "acme",
        "--rate-limit",
        "120",
        "--suspend",
        "--all-models",
    ]);
    assert!(ok);
    assert_eq!(updated["rate_limit"], 120);
    assert_eq!(updated["suspended"], true);
    assert_eq!(updated["allowed_models"], Value::Null);

    let (ok, shown, _) = run(&["tenant", "get", "acme"]);
    assert!(ok);
    assert_eq!(shown["keys"][1]["key_id"], added["key_id"]);
    assert!(!shown.to_string().contains(&key));
    let (ok, listed, _) = run(&["tenant", "list", "--limit", "10"]);
    assert!(ok);
    assert_eq!(listed["tenants"][0]["id"], "acme");

    let (ok, health, _) = run(&["health", "set", "--healthy", "false"]);
    assert!(ok);
    assert_eq!(health["healthy"], false);
    let (ok, health, _) = run(&["health", "show"]);
    assert!(ok);
    assert_eq!(health["healthy"], false);

    // Refusals: the API's error on one line, a failing exit, nothing on stdout.
    let (ok, out, stderr) = run(&["tenant", "get", "nobody"]);
    assert!(!ok);
    assert_eq!(out, Value::Null);
    assert!(stderr.contains("404 tenant_not_found"), "{stderr}");
    let (ok, _, stderr) = cli(&address, &["tenant", "list"], "wrong-token-value");
    assert!(!ok);
    assert!(stderr.contains("401 invalid_token"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "tenant",
        "create",
        "bad id",
        "--rate-limit",
        "1",
        "--token-budget",
        "1",
    ]);
    assert!(!ok);
    assert!(stderr.contains("400 invalid_request: id:"), "{stderr}");
    // A key pasted for its key id is not sent (so not in the trail: still 12 entries below).
    let (ok, _, stderr) = run(&["tenant", "revoke-key", "acme", &key]);
    assert!(!ok);
    assert!(stderr.contains("is an API key, not an id"), "{stderr}");
    assert!(!stderr.contains(&key), "{stderr}");

    let (ok, deleted, _) = run(&["tenant", "delete", "acme"]);
    assert!(ok);
    assert_eq!(deleted["deleted"], true);

    // Every call above is in the audit trail, as the operator named `admin`, with the
    // connection's address.
    let (status, trail) = exchange(&address, "GET", "/v1/audit", ADMIN, "");
    assert_eq!(status, 200);
    let entries = trail["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 12, "{trail}");
    assert!(entries.iter().all(|e| e["remote_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:"))));
    assert_eq!(entries[0]["actor"], "admin");

    let (ok, _, stderr) = cli("127.0.0.1:1", &["health", "show"], ADMIN);
    assert!(!ok);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    server.kill();
}

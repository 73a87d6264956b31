//! Load generator for `make bench` (bench/run.py): the same rows, in the same batches, with the
//! same number of concurrent senders, either
//!
//! - `http`: posted to a running collector (`POST /v1/records`, keep-alive connections), which
//!   answers each batch only after committing it: durable ingest through the whole service; or
//! - `store`: handed straight to the collector's store in this process, without HTTP, JSON or
//!   validation: the ceiling the service can approach on that database.
//!
//! It runs for `--seconds` and prints one JSON line: records stored, seconds, records/s and
//! the database's version.
//!
//! ```sh
//! cargo run --release -p collector --example ingest_bench -- \
//!     store --database ./bench.db --batch 100 --senders 4 --seconds 3
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::records::{Action, AuditEntry, AuditResult, BillingRecord, Record, UsageSource};
use collector::store::{Location, Store};
use collector::timestamp::Timestamp;
use serde_json::json;

struct Args {
    mode: String,
    database: String,
    address: String,
    token: String,
    batch: u64,
    senders: u64,
    seconds: f64,
}

fn args() -> Args {
    let mut args = Args {
        mode: String::new(),
        database: String::new(),
        address: String::new(),
        token: String::new(),
        batch: 100,
        senders: 4,
        seconds: 3.0,
    };
    let mut it = std::env::args().skip(1);
    args.mode = it.next().unwrap_or_default();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--database" => args.database = value,
            "--address" => args.address = value,
            "--token" => args.token = value,
            "--batch" => args.batch = value.parse().expect("--batch: a number"),
            "--senders" => args.senders = value.parse().expect("--senders: a number"),
            "--seconds" => args.seconds = value.parse().expect("--seconds: a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        matches!(args.mode.as_str(), "http" | "store"),
        "usage: ingest_bench http|store --database ... [--address host:port --token ...] \
         [--batch N] [--senders N] [--seconds S]"
    );
    args
}

/// Record number `n`: billing and audit entries in turn, shaped like the filter's.
fn record(n: u64) -> Record {
    let timestamp = Timestamp::parse("2026-12-03T18:07:14.123Z").expect("a valid timestamp");
    let id = format!("bench-{n:012}");
    if n % 2 == 0 {
        Record::Billing(BillingRecord {
            id,
            tenant_id: format!("tenant-{}", n % 50),
            input_tokens: 120 + n % 1000,
            output_tokens: 340 + n % 500,
            timestamp,
            model: Some("demo-model".into()),
            request_id: Some(format!("3f0f1d1e-0000-4000-8000-{n:012}")),
            api: "openai_chat".into(),
            usage_source: UsageSource::Reported,
            cached_input_tokens: Some(0),
            cache_write_input_tokens: None,
            reasoning_tokens: None,
        })
    } else {
        Record::Audit(AuditEntry {
            id,
            timestamp,
            tenant_id: Some(format!("tenant-{}", n % 50)),
            action: Action::Inference,
            result: AuditResult::Success,
            resource: Some("demo-model".into()),
            status_code: 200,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            remote_addr: Some("10.0.0.1:51234".into()),
            request_id: Some(format!("3f0f1d1e-0000-4000-8000-{n:012}")),
            actor: None,
        })
    }
}

/// The wire form of `record`, as in docs/records.md.
fn wire(record: &Record) -> serde_json::Value {
    match record {
        Record::Billing(r) => {
            let mut v = serde_json::to_value(r).expect("serialisable");
            v["kind"] = json!("billing");
            v
        }
        Record::Audit(e) => {
            let mut v = serde_json::to_value(e).expect("serialisable");
            v["kind"] = json!("audit");
            v
        }
    }
}

fn main() {
    let args = args();
    let stored = Arc::new(AtomicU64::new(0));
    let next_batch = Arc::new(AtomicU64::new(0));
    // Each returns the database's version and how long its senders ran: the clock starts once
    // the database is open and its schema made, so neither is counted.
    let (version, seconds) = match args.mode.as_str() {
        "store" => run_store(&args, &stored, &next_batch),
        _ => run_http(&args, &stored, &next_batch),
    };
    let records = stored.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": args.mode, "batch": args.batch, "senders": args.senders,
            "records": records, "seconds": seconds,
            "records_per_second": records as f64 / seconds, "database_version": version,
        })
    );
}

/// Batch number `b` (numbered across senders, so no two senders send the same rows).
fn batch_records(b: u64, size: u64) -> Vec<Record> {
    (b * size..(b + 1) * size).map(record).collect()
}

fn run_store(args: &Args, stored: &Arc<AtomicU64>, next_batch: &Arc<AtomicU64>) -> (String, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let location = Location::parse(&args.database).expect("a database location");
        let store = Store::open(&location, args.senders as usize + 1)
            .await
            .expect("the database opens");
        let version = database_version(&location).await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(args.seconds);
        let mut tasks = Vec::new();
        for _ in 0..args.senders {
            let (store, stored, next_batch) = (store.clone(), stored.clone(), next_batch.clone());
            let size = args.batch;
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let b = next_batch.fetch_add(1, Ordering::Relaxed);
                    let inserted = store
                        .insert_batch(batch_records(b, size))
                        .await
                        .expect("a batch is stored");
                    stored.fetch_add(inserted.accepted(), Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.expect("a sender finished");
        }
        let seconds = started.elapsed().as_secs_f64();
        store.close().await.expect("the database closes");
        (version, seconds)
    })
}

async fn database_version(location: &Location) -> String {
    match location {
        Location::Sqlite(_) => format!("SQLite {}", rusqlite::version()),
        Location::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("a connection");
            tokio::spawn(connection);
            let row = client
                .query_one("SHOW server_version", &[])
                .await
                .expect("a version");
            format!("PostgreSQL {}", row.get::<_, String>(0))
        }
    }
}

fn run_http(args: &Args, stored: &Arc<AtomicU64>, next_batch: &Arc<AtomicU64>) -> (String, f64) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let senders: Vec<_> = (0..args.senders)
        .map(|_| {
            let (stored, next_batch) = (stored.clone(), next_batch.clone());
            let (address, token, size) = (args.address.clone(), args.token.clone(), args.batch);
            std::thread::spawn(move || {
                let mut connection = Connection::open(&address);
                while Instant::now() < deadline {
                    let b = next_batch.fetch_add(1, Ordering::Relaxed);
                    let records: Vec<_> = batch_records(b, size).iter().map(wire).collect();
                    let body = json!({ "records": records }).to_string();
                    let answer = connection.post(&address, "/v1/records", &token, &body);
                    let accepted = answer["accepted"].as_u64().expect("a stored batch");
                    stored.fetch_add(accepted, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a sender finished");
    }
    (String::new(), started.elapsed().as_secs_f64())
}

/// One keep-alive HTTP/1.1 connection; just enough client for a benchmark.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(address: &str) -> Connection {
        let stream = TcpStream::connect(address).expect("the collector answers");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Connection {
            reader: BufReader::new(stream),
        }
    }

    fn post(&mut self, host: &str, path: &str, token: &str, body: &str) -> serde_json::Value {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).expect("request sent");
        stream.write_all(body.as_bytes()).expect("request sent");

        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("a status line");
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("a header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("a length");
                }
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer).expect("the body");
        assert!(
            status_line.contains(" 200 "),
            "{status_line}: {}",
            String::from_utf8_lossy(&answer)
        );
        serde_json::from_slice(&answer).expect("a JSON answer")
    }
}

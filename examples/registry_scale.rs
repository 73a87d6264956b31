//! What a large registry snapshot costs the filter, natively (run it as a release build): the
//! syncing worker reading the collector's JSON and writing the binary form it publishes in
//! shared data; every other worker reading that form back; each worker building its directory;
//! and a key lookup, in that directory and in one of ten tenants (the same cost: O(1)).
//!
//! `make bench` (bench/registry_scale.py) runs it on the snapshot of 100,000 tenants that the
//! collector served, beside the same steps timed inside Envoy's V8 (the filter's log lines).
//!
//! ```sh
//! cargo run --release --example registry_scale -- SNAPSHOT.json KEY...
//! ```
//!
//! It prints one JSON line; each time is the median of `ROUNDS` runs.

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use inference_gate::config::Config;
use inference_gate::registry::directory::Directory;
use inference_gate::registry::snapshot::{self, Snapshot};

const ROUNDS: usize = 5;
const LOOKUPS: u32 = 200_000;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: registry_scale SNAPSHOT.json KEY...")?;
    let keys: Vec<String> = args.collect();
    let body = std::fs::read(&path)?;
    let config = Config::parse(
        br#"{"tenants": [], "collector": {"cluster": "collector", "ingest_token": "bench-ingest"}}"#,
    )
    .map_err(|e| e.to_string())?;

    let (parse_ms, (snapshot, problems)) = median_ms(|| snapshot::parse(&body))?;
    if !problems.is_empty() {
        return Err(format!(
            "{} tenants left out, first: {:?}",
            problems.len(),
            problems.first()
        )
        .into());
    }
    let (encode_ms, binary) = median_ms(|| Ok::<_, String>(snapshot.encode()))?;
    let (decode_ms, decoded) =
        median_ms(|| Snapshot::decode(&binary).ok_or("the binary form does not read back"))?;
    let (build_ms, (directory, notes)) =
        median_ms(|| Ok::<_, String>(Directory::build(&config, &decoded)))?;
    if !notes.is_empty() {
        return Err(format!("the merge left things out: {:?}", notes.first()).into());
    }

    // The same keys in a directory of the first ten tenants and of them all.
    let small = Snapshot {
        tenants: snapshot.tenants.iter().take(10).cloned().collect(),
        ..snapshot.clone()
    };
    let (small_directory, _) = Directory::build(&config, &small);
    let found = keys
        .iter()
        .filter(|k| directory.lookup(k).is_some())
        .count();
    let first = keys
        .first()
        .ok_or("name at least one key of the snapshot")?;
    let lookup_ns = lookup_ns(&directory, &keys);
    let lookup_small_ns = lookup_ns_one(&small_directory, first);
    let lookup_first_ns = lookup_ns_one(&directory, first);

    println!(
        "{}",
        serde_json::json!({
            "tenants": snapshot.tenants.len(),
            "json_bytes": body.len(),
            "binary_bytes": binary.len(),
            "parse_ms": parse_ms,
            "encode_ms": encode_ms,
            "decode_ms": decode_ms,
            "build_ms": build_ms,
            "keys_found": found,
            "keys_given": keys.len(),
            "lookup_ns": lookup_ns,
            "lookup_first_key_ns": lookup_first_ns,
            "lookup_first_key_in_10_tenants_ns": lookup_small_ns,
        })
    );
    Ok(())
}

/// The median time of `ROUNDS` runs of `step`, in milliseconds, and the last run's result.
fn median_ms<T, E: Into<Box<dyn Error>>>(
    mut step: impl FnMut() -> Result<T, E>,
) -> Result<(f64, T), Box<dyn Error>> {
    let mut times = Vec::with_capacity(ROUNDS);
    let mut last = None;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let value = step().map_err(Into::into)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        last = Some(black_box(value));
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(ROUNDS / 2).copied().unwrap_or_default();
    Ok((median, last.ok_or("no rounds")?))
}

/// Nanoseconds per lookup, the keys taken in turn.
fn lookup_ns(directory: &Directory, keys: &[String]) -> f64 {
    let started = Instant::now();
    for round in 0..LOOKUPS {
        let key = keys.get(round as usize % keys.len().max(1));
        black_box(key.and_then(|k| directory.lookup(black_box(k))));
    }
    started.elapsed().as_secs_f64() * 1e9 / f64::from(LOOKUPS)
}

fn lookup_ns_one(directory: &Directory, key: &str) -> f64 {
    lookup_ns(directory, &[key.to_string()])
}

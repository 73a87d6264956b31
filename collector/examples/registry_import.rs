//! Fills a collector database with a large tenant registry, for `make bench`
//! (bench/registry_scale.py): `--tenants N` tenants `tenant-000000`, ... with one key each,
//! stored in one transaction at one registry version (`Store::import_tenants`, which writes
//! no audit entries). The key of tenant `i` is `bench-registry-key-<i>`: a benchmark's
//! throwaway, never a real key. Prints one JSON line: tenants, seconds, version.
//!
//! ```sh
//! cargo run --release -p collector --example registry_import -- \
//!     --database ./bench.db --tenants 100000
//! ```

use std::time::Instant;

use collector::registry::keys::sha256_hex;
use collector::registry::NewTenant;
use collector::store::registry::NewKey;
use collector::store::{Location, Store};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut database, mut count) = (String::new(), 100_000_usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--database" => database = value,
            "--tenants" => count = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if database.is_empty() {
        return Err("--database is required".into());
    }

    let store = Store::open(&Location::parse(&database)?, 4).await?;
    let tenants = (0..count)
        .map(|i| {
            let tenant = NewTenant {
                id: format!("tenant-{i:06}"),
                rate_limit: 600,
                token_budget: 200_000,
                suspended: false,
                allowed_models: None,
            };
            let key = NewKey {
                key_id: format!("key_{i:012x}"),
                sha256: sha256_hex(&format!("bench-registry-key-{i}")),
            };
            (tenant, vec![key])
        })
        .collect();
    let started = Instant::now();
    let state = store.import_tenants(tenants).await?;
    let seconds = started.elapsed().as_secs_f64();
    store.close().await?;
    println!(
        "{}",
        json!({"tenants": count, "seconds": seconds, "version": state.version})
    );
    Ok(())
}

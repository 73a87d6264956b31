//! `collector`: the command line, startup and graceful shutdown. Everything else lives in
//! the library (see its crate docs for the module map).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use collector::app::{app, AppState};
use collector::auth::{
    Tokens, ADMIN_TOKENS_ENV, ADMIN_TOKENS_FILE_ENV, ADMIN_TOKEN_ENV, INGEST_TOKEN_ENV,
};
use collector::client::{self, Client};
use collector::retention::{self, Retention};
use collector::store::{Location, Store};
use hyper::Method;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How long in-flight requests may run after a shutdown signal before the collector closes
/// the database and exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    version,
    about = "Stores inference-gate billing and audit records and answers queries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Manage the tenant registry of a running collector (over its API).
    Tenant(TenantArgs),
    /// Drain the gateway fleet, or bring it back (over the API).
    Health(HealthArgs),
}

/// Where the API is, and the admin token to present.
#[derive(Args)]
struct Connection {
    /// The collector's URL (plain HTTP).
    #[arg(
        long,
        env = "COLLECTOR_URL",
        default_value = "http://127.0.0.1:9000",
        global = true
    )]
    url: String,

    /// An admin token. Set it in the environment: a command line is visible to every user.
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true, global = true)]
    admin_token: Option<String>,
}

#[derive(Args)]
struct TenantArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints its first API key, which is shown this once.
    Create {
        id: String,
        /// Requests per minute.
        #[arg(long)]
        rate_limit: u64,
        /// Tokens per minute.
        #[arg(long)]
        token_budget: u64,
        /// A model the tenant may use (repeat it; every model when not given).
        #[arg(long = "allowed-model", value_name = "MODEL")]
        allowed_models: Vec<String>,
        /// Create it suspended.
        #[arg(long)]
        suspended: bool,
    },
    /// List tenants in id order (a page at a time: --after the last id shown).
    List {
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one tenant and its keys (ids and digest prefixes, never the keys).
    Get { id: String },
    /// Change a tenant's limits, suspension or models.
    Update {
        id: String,
        #[arg(long)]
        rate_limit: Option<u64>,
        #[arg(long)]
        token_budget: Option<u64>,
        /// Suspend it: its requests get 403.
        #[arg(long, conflicts_with = "unsuspend")]
        suspend: bool,
        #[arg(long)]
        unsuspend: bool,
        /// Allow only these models (repeat it); replaces the list.
        #[arg(
            long = "allowed-model",
            value_name = "MODEL",
            conflicts_with = "all_models"
        )]
        allowed_models: Vec<String>,
        /// Allow every model again.
        #[arg(long)]
        all_models: bool,
    },
    /// Delete a tenant: its keys stop working; its billing and audit history stays.
    Delete { id: String },
    /// Add a key to a tenant (rotation: add, switch the client, revoke the old one).
    AddKey { id: String },
    /// Revoke one key of a tenant.
    RevokeKey { id: String, key_id: String },
}

#[derive(Args)]
struct HealthArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: HealthCommand,
}

#[derive(Subcommand)]
enum HealthCommand {
    /// Show the drain flag and the registry version.
    Show,
    /// `--healthy false` drains every gateway (/healthz and inference answer 503);
    /// `--healthy true` restores them.
    Set {
        #[arg(long, action = clap::ArgAction::Set)]
        healthy: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,

    /// Where records are stored: a SQLite file (created with its directory if missing), or a
    /// PostgreSQL URL `postgres://user:password@host:port/database` that several collectors
    /// may share. A URL with a password belongs in the environment, not the command line.
    #[arg(
        long,
        env = "COLLECTOR_DATABASE",
        hide_env_values = true,
        default_value = "./data/collector.db"
    )]
    database: String,

    /// Most connections to PostgreSQL this collector opens (SQLite always uses two).
    #[arg(long, env = "COLLECTOR_MAX_CONNECTIONS", default_value_t = 16)]
    max_connections: usize,

    /// How long billing records are kept, by record timestamp (e.g. `400d`, `13months`).
    /// Kept forever when not set.
    #[arg(long, env = "COLLECTOR_BILLING_RETENTION", value_parser = retention_period)]
    billing_retention: Option<Duration>,

    /// How long audit entries are kept, by record timestamp (e.g. `365d`). Kept forever when
    /// not set.
    #[arg(long, env = "COLLECTOR_AUDIT_RETENTION", value_parser = retention_period)]
    audit_retention: Option<Duration>,

    /// How often the retention job runs (it also runs once at startup).
    #[arg(
        long,
        env = "COLLECTOR_RETENTION_INTERVAL",
        default_value = "1h",
        value_parser = interval
    )]
    retention_interval: Duration,

    /// Token operators present for queries and the registry (its name in the audit trail is
    /// `admin`). Set it in the environment: a command line is visible to every user of the
    /// machine.
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    admin_token: Option<String>,

    /// More admin tokens, each with the name the audit trail gives its operator:
    /// `alice=<token>,bob=<token>`. Set it in the environment.
    #[arg(long, env = ADMIN_TOKENS_ENV, hide_env_values = true)]
    admin_tokens: Option<String>,

    /// A file of named admin tokens, one `name=token` a line (`#` starts a comment).
    #[arg(long, env = ADMIN_TOKENS_FILE_ENV)]
    admin_tokens_file: Option<PathBuf>,

    /// Token the filter presents to send records. Set it in the environment too.
    #[arg(long, env = INGEST_TOKEN_ENV, hide_env_values = true)]
    ingest_token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();

    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Tenant(args) => tenant(args).await,
        Command::Health(args) => health(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Printed rather than logged: RUST_LOG may hide the log, and this is why we stop.
            eprintln!("collector: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let tokens = Tokens::named(
        args.admin_token,
        args.admin_tokens,
        args.admin_tokens_file.as_deref(),
        args.ingest_token,
    )
    .map_err(|err| err.to_string())?;
    let admins = tokens.admin_names().join(",");

    // Installed before anything else starts, so a signal is never missed or fatal.
    let terminate = signal(SignalKind::terminate())
        .map_err(|err| format!("cannot install the SIGTERM handler: {err}"))?;
    let interrupt = signal(SignalKind::interrupt())
        .map_err(|err| format!("cannot install the SIGINT handler: {err}"))?;

    let location = Location::parse(&args.database).map_err(|err| err.to_string())?;
    let database = location.to_string();
    let store = Store::open(&location, args.max_connections)
        .await
        .map_err(|err| format!("cannot open the database {database}: {err}"))?;
    let retention = Retention {
        billing: args.billing_retention,
        audit: args.audit_retention,
        interval: args.retention_interval,
    };

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", args.listen))?;
    let listen = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;
    tracing::info!(%listen, %database, %admins, "collector listening");

    let state = AppState::new(store.clone(), tokens);
    let retention_job = retention.is_enabled().then(|| {
        tracing::info!(
            billing = %describe(retention.billing),
            audit = %describe(retention.audit),
            every = %humantime::format_duration(retention.interval),
            "retention job enabled"
        );
        tokio::spawn(retention::run(
            store.clone(),
            state.metrics.clone(),
            retention,
        ))
    });

    // Graceful shutdown: on the first signal the server stops accepting, lets the requests
    // in flight finish, and returns. The grace period or a second signal cuts the wait short.
    let (count_tx, signals) = watch::channel(0);
    tokio::spawn(count_signals(terminate, interrupt, count_tx));
    // With the peer's address, for the registry's audit entries.
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    let server =
        axum::serve(listener, service).with_graceful_shutdown(nth_signal(signals.clone(), 1));
    let cut_short = async {
        nth_signal(signals.clone(), 1).await;
        tokio::select! {
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still running; closing anyway");
            }
            () = nth_signal(signals, 2) => {}
        }
    };

    let served = tokio::select! {
        served = server => served.map_err(|err| format!("the server failed: {err}")),
        () = cut_short => Ok(()),
    };

    if let Some(job) = retention_job {
        job.abort();
    }
    // Closing waits for database work already started, then checkpoints the WAL.
    if let Err(err) = store.close().await {
        tracing::error!(error = %err, "closing the database failed");
    }
    served?;
    tracing::info!("collector stopped");
    Ok(())
}

async fn tenant(args: TenantArgs) -> Result<(), String> {
    let api = connect(args.connection)?;
    let (method, path, body, shows_key) = match args.command {
        TenantCommand::Create {
            id,
            rate_limit,
            token_budget,
            allowed_models,
            suspended,
        } => {
            let mut body =
                json!({"id": id, "rate_limit": rate_limit, "token_budget": token_budget});
            if suspended {
                body["suspended"] = true.into();
            }
            if !allowed_models.is_empty() {
                body["allowed_models"] = allowed_models.into();
            }
            (Method::POST, "/v1/tenants".to_owned(), Some(body), true)
        }
        TenantCommand::List { after, limit } => {
            let mut query = Vec::new();
            if let Some(after) = after {
                query.push(format!("after={}", client::segment(&after)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let path = if query.is_empty() {
                "/v1/tenants".to_owned()
            } else {
                format!("/v1/tenants?{}", query.join("&"))
            };
            (Method::GET, path, None, false)
        }
        TenantCommand::Get { id } => {
            not_a_key("the tenant id", &id)?;
            (Method::GET, client::tenant_path(&id), None, false)
        }
        TenantCommand::Update {
            id,
            rate_limit,
            token_budget,
            suspend,
            unsuspend,
            allowed_models,
            all_models,
        } => {
            let mut body = json!({});
            if let Some(v) = rate_limit {
                body["rate_limit"] = v.into();
            }
            if let Some(v) = token_budget {
                body["token_budget"] = v.into();
            }
            if suspend || unsuspend {
                body["suspended"] = suspend.into();
            }
            if all_models {
                body["allowed_models"] = Value::Null;
            } else if !allowed_models.is_empty() {
                body["allowed_models"] = allowed_models.into();
            }
            (Method::PATCH, client::tenant_path(&id), Some(body), false)
        }
        TenantCommand::Delete { id } => (Method::DELETE, client::tenant_path(&id), None, false),
        TenantCommand::AddKey { id } => {
            let path = format!("{}/keys", client::tenant_path(&id));
            (Method::POST, path, None, true)
        }
        TenantCommand::RevokeKey { id, key_id } => {
            not_a_key("the tenant id", &id)?;
            not_a_key("the key id", &key_id)?;
            let path = format!(
                "{}/keys/{}",
                client::tenant_path(&id),
                client::segment(&key_id)
            );
            (Method::DELETE, path, None, false)
        }
    };
    let answer = api
        .call(method, &path, body.as_ref())
        .await?
        .into_result()?;
    print_json(&answer);
    if shows_key {
        eprintln!("collector: the api_key above is shown this once; hand it to the tenant now");
    }
    Ok(())
}

async fn health(args: HealthArgs) -> Result<(), String> {
    let api = connect(args.connection)?;
    let answer = match args.command {
        HealthCommand::Show => api.call(Method::GET, "/v1/health", None).await?,
        HealthCommand::Set { healthy } => {
            let body = json!({ "healthy": healthy });
            api.call(Method::PUT, "/v1/health", Some(&body)).await?
        }
    };
    print_json(&answer.into_result()?);
    Ok(())
}

/// Refuses an API key given where an id belongs, rather than send it (it would be echoed
/// in the answer and sit in the collector's access path).
fn not_a_key(what: &str, text: &str) -> Result<(), String> {
    if collector::registry::keys::looks_like_key(text) {
        return Err(format!(
            "{what} given is an API key, not an id (`collector tenant get` shows the key ids, \
             key_...); it was not sent"
        ));
    }
    Ok(())
}

fn connect(connection: Connection) -> Result<Client, String> {
    Client::new(&connection.url, connection.admin_token.unwrap_or_default())
}

fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{value}"),
    }
}

fn describe(period: Option<Duration>) -> String {
    period.map_or_else(
        || "forever".to_owned(),
        |period| humantime::format_duration(period).to_string(),
    )
}

fn retention_period(text: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if period < retention::MIN_PERIOD {
        return Err(format!(
            "must be at least {} (leave it out to keep records forever)",
            humantime::format_duration(retention::MIN_PERIOD)
        ));
    }
    Ok(period)
}

fn interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if interval < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(interval)
}

/// Counts SIGTERM and SIGINT for as long as the process runs. The handlers replace the
/// default action for good, so a second signal must be seen here to mean "stop now".
async fn count_signals(mut terminate: Signal, mut interrupt: Signal, count: watch::Sender<u32>) {
    loop {
        let name = tokio::select! {
            Some(()) = terminate.recv() => "SIGTERM",
            Some(()) = interrupt.recv() => "SIGINT",
            else => return,
        };
        let seen = *count.borrow() + 1;
        if seen == 1 {
            tracing::info!(signal = name, "shutting down: finishing requests in flight");
        } else {
            tracing::warn!(
                signal = name,
                "second signal: not waiting for requests in flight"
            );
        }
        count.send_replace(seen);
    }
}

/// Resolves once `n` signals have arrived.
async fn nth_signal(mut count: watch::Receiver<u32>, n: u32) {
    if count.wait_for(|seen| *seen >= n).await.is_err() {
        // The counter is gone only while the runtime shuts down: no signal will come.
        std::future::pending::<()>().await;
    }
}

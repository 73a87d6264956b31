//! `collector`: the command line, startup and graceful shutdown. Everything else lives in
//! the library (see its crate docs for the module map).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use collector::app::{app, AppState};
use collector::auth::{Tokens, ADMIN_TOKEN_ENV, INGEST_TOKEN_ENV};
use collector::retention::{self, Retention};
use collector::store::{Location, Store};
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

    /// Token operators present for queries. Set it in the environment: a command line is
    /// visible to every user of the machine.
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    admin_token: Option<String>,

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
    let tokens = Tokens::new(args.admin_token, args.ingest_token).map_err(|err| err.to_string())?;

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
    tracing::info!(%listen, %database, "collector listening");

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
    let server =
        axum::serve(listener, app(state)).with_graceful_shutdown(nth_signal(signals.clone(), 1));
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

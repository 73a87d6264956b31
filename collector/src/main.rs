//! `collector`: the command line, startup and graceful shutdown. Everything else lives in
//! the library (see its crate docs for the module map).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use collector::app::{app, AppState};
use collector::auth::{Tokens, ADMIN_TOKEN_ENV, INGEST_TOKEN_ENV};
use collector::store::{SqliteStore, Store};
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

    /// SQLite database file; it and its directory are created if missing.
    #[arg(long, default_value = "./data/collector.db")]
    database: PathBuf,

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

    let database = args.database.display().to_string();
    let store = SqliteStore::open(&args.database)
        .await
        .map_err(|err| format!("cannot open the database {database}: {err}"))?;
    let store = Store::Sqlite(store);

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", args.listen))?;
    let listen = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;
    tracing::info!(%listen, %database, "collector listening");

    // Graceful shutdown: on the first signal the server stops accepting, lets the requests
    // in flight finish, and returns. The grace period or a second signal cuts the wait short.
    let (count_tx, signals) = watch::channel(0);
    tokio::spawn(count_signals(terminate, interrupt, count_tx));
    let server = axum::serve(listener, app(AppState::new(store.clone(), tokens)))
        .with_graceful_shutdown(nth_signal(signals.clone(), 1));
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

    // Closing waits for database work already started, then checkpoints the WAL.
    if let Err(err) = store.close().await {
        tracing::error!(error = %err, "closing the database failed");
    }
    served?;
    tracing::info!("collector stopped");
    Ok(())
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

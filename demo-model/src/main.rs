//! Command line of `demo-model`; the server itself is in the library (see its crate doc).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use demo_model::request_log::RequestLog;
use demo_model::{app, AppState};
use tracing_subscriber::EnvFilter;

/// A small OpenAI-compatible model server with deterministic token usage.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the log names it).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,

    /// Pause between two events of a streamed answer, in milliseconds (0: none).
    #[arg(long, default_value_t = 15)]
    chunk_delay_ms: u64,

    /// Also append one JSON line per request to this file.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Diagnostics go to stderr: stdout holds only the one line per request.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    let args = Args::parse();

    let log = match &args.log_file {
        Some(path) => match RequestLog::to_file(path) {
            Ok(log) => log,
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "cannot open the log file");
                return ExitCode::FAILURE;
            }
        },
        None => RequestLog::default(),
    };
    let state = AppState {
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        log: Arc::new(log),
    };

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(addr = %args.listen, error = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%addr, chunk_delay_ms = args.chunk_delay_ms, "demo-model listening");

    // Streams in flight finish before the process exits; each is at most a few seconds.
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    match served {
        Ok(()) => {
            tracing::info!("demo-model stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot wait for SIGINT");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot wait for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

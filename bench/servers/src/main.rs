//! Servers for `make bench` (bench/run.py), made to cost as little as possible so that what
//! the benchmark measures is Envoy and the filter in front of them:
//!
//! - `upstream`: an OpenAI-shaped model server with no model. `POST` anything and get a small
//!   chat completion with `usage`; send `x-bench-events: N` to get a server-sent event stream
//!   of `N` chunks instead, each written on its own, then the usage chunk and `[DONE]`.
//! - `authz`: an `ext_authz` HTTP service. It finds the key of `Authorization: Bearer <key>`
//!   in a table and answers `200` with `x-tenant-id`, or `401`.
//!
//! ```sh
//! bench-servers upstream --listen 127.0.0.1:8100
//! bench-servers authz --listen 127.0.0.1:8101 --keys keys.txt   # "<key> <tenant>" per line
//! ```
//!
//! Each runs on one thread (a current-thread Tokio runtime): `make bench` pins it to a core.

mod authz;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, flags)) = args.split_first() else {
        eprintln!("usage: bench-servers upstream|authz --listen ADDR [--keys FILE]");
        return ExitCode::from(2);
    };
    let flags: HashMap<&str, &str> = flags
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => Some((name.as_str(), value.as_str())),
            _ => None,
        })
        .collect();
    let Some(listen) = flags
        .get("--listen")
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        eprintln!("bench-servers: --listen ADDR (host:port) is required");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-servers: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = match command.as_str() {
        "upstream" => runtime.block_on(serve(listen, upstream::handle)),
        "authz" => {
            let keys = match flags.get("--keys").map(|p| authz::Keys::load(p)) {
                Some(Ok(keys)) => keys,
                Some(Err(e)) => {
                    eprintln!("bench-servers: --keys: {e}");
                    return ExitCode::from(2);
                }
                None => {
                    eprintln!("bench-servers: authz needs --keys FILE");
                    return ExitCode::from(2);
                }
            };
            let keys: &'static authz::Keys = Box::leak(Box::new(keys));
            runtime.block_on(serve(listen, move |r| authz::handle(keys, r)))
        }
        other => {
            eprintln!("bench-servers: unknown command {other:?}");
            return ExitCode::from(2);
        }
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-servers: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts connections for ever, each served as keep-alive HTTP/1.1 on this thread.
async fn serve<F, Fut, B>(listen: SocketAddr, handler: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Copy + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(listen).await?;
    // The launcher waits for this line before it sends anything.
    println!("listening on {}", listener.local_addr()?);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(handler))
                        .await;
                });
            }
        })
        .await
}

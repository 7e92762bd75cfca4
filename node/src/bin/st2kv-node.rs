//! `st2kv-node`: parse flags, start tracing, run the node until SIGTERM or Ctrl-C.

use clap::Parser;
use st2kv_node::{init_tracing, run, Config};

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    init_tracing(&config.log_format);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(config, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("st2kv-node: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

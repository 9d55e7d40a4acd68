//! `custos serve`: starts the enabled parts and stops them on SIGTERM / SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use custos_proxy::{PassThrough, Proxy};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    init_tracing();
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let Some(proxy_config) = cfg.proxy else {
        anyhow::bail!("{}: nothing to serve: no [[listener]] configured", cfg.file.display());
    };
    let proxy = Proxy::bind(proxy_config).await?;
    for addr in proxy.local_addrs() {
        // A line scripts and tests can wait for.
        info!(%addr, "proxy listening");
    }
    proxy.run(Arc::new(PassThrough), shutdown).await;
    Ok(())
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CUSTOS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

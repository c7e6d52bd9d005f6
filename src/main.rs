use std::sync::Arc;

use clap::Parser;
use tend::config::{Cli, Command, RunArgs};
use tend::health::Readiness;
use tend::http::{self, HttpState};
use tend::metrics::Metrics;
use tracing::{error, info};

/// jemalloc keeps the resident set close to what is in use: with glibc's
/// per-thread arenas, the memory a sweep's answers held, freed when it ends,
/// stayed resident (about a fifth more at 10,000 Workspaces).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", tend::crd_yaml()),
        Command::Version => println!("tend {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => run(*args).await?,
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tend::telemetry::init(args.log_format);
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}")
    })?;
    let ec2 = tend::ec2_config(&args).await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(Readiness::default());
    let state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let addr = args.metrics_addr;
    let listener = http::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--metrics-addr): {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = http::serve(listener, state).await {
            error!("HTTP port {addr}: {e}");
        }
    });
    info!(cluster = %args.cluster_name, namespace = ?args.namespace, "tend starting");
    tend::run_controller(&args, client, ec2, metrics, ready, shutdown_signal()).await;
    info!("tend stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

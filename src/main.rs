use std::sync::Arc;

use clap::Parser;
use tend::config::{Cli, Command, RunArgs};
use tend::health::Readiness;
use tend::http::{self, HttpState};
use tend::metrics::Metrics;
use tokio_util::sync::CancellationToken;
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
    let config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}")
    })?;
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client: {e}"))?;
    let election = match tend::lease_settings(&args, &client) {
        Some(lease) => {
            let lease_client = lease
                .client(config)
                .map_err(|e| anyhow::anyhow!("cannot build the Lease client: {e}"))?;
            Some((lease_client, lease))
        }
        None => None,
    };
    let aws = tend::aws_config(&args).await?;
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
    match &election {
        Some((_, lease)) => info!(
            cluster = %args.cluster_name,
            namespace = ?args.namespace,
            label_selector = ?args.label_selector,
            lease = %lease.name,
            lease_namespace = %lease.namespace,
            identity = %lease.identity,
            "tend starting; campaigning for the Lease"
        ),
        None => info!(
            cluster = %args.cluster_name,
            namespace = ?args.namespace,
            label_selector = ?args.label_selector,
            "tend starting"
        ),
    }
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            info!("shutting down: no new work; reconciles in flight may finish");
            shutdown.cancel();
        }
    });
    tend::run_replica(&args, client, election, aws, metrics, ready, shutdown).await;
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

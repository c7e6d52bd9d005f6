//! The operational HTTP port: metrics, liveness and readiness.

mod support;

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::fake_kube::{Failure, FakeApiServer};
use support::moto::Moto;
use support::rig::WAIT;
use tend::config::RunArgs;
use tend::health::{Readiness, Verdict};
use tend::http::{self, HttpState};
use tend::metrics::Metrics;
use tend::sweep::SweepSettings;

async fn get(base: &str, path: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let res = client
        .get(format!("{base}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn serves_metrics_health_and_readiness() {
    let metrics = Arc::new(Metrics::default());
    metrics.transition(tend::api::Phase::Online);
    let ready = Arc::new(Readiness::default());
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState {
        metrics,
        ready: ready.clone(),
    };
    let server = tokio::spawn(http::serve(listener, state));

    assert_eq!(get(&base, "/healthz").await.0, 200);
    assert_eq!(
        get(&base, "/readyz").await.0,
        503,
        "not ready before the controller runs"
    );
    ready.started();
    assert_eq!(get(&base, "/readyz").await.0, 200);
    let (status, body) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("tend_phase_transitions_total{phase=\"Online\"} 1"),
        "{body}"
    );
    server.abort();
}

/// Serves the HTTP port on an ephemeral port; returns its base URL.
async fn serve(metrics: Arc<Metrics>, ready: Arc<Readiness>) -> String {
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, HttpState { metrics, ready }));
    base
}

fn metric(metrics: &Metrics, name: &str) -> Option<f64> {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn readiness_fails_while_no_sweep_completes_and_returns_when_one_does() {
    let kube = FakeApiServer::start().await;
    // Listing Workspaces fails for a while: the cache stays empty, the sweeper
    // waits for it, and no sweep completes.
    kube.inject_failure(Failure::new(
        "GET",
        "/apis/tend.dev/v1alpha1/namespaces/default/workspaces",
        500,
        "InternalError",
        2,
    ));
    let args = RunArgs::from_flags([
        "--namespace",
        "default",
        "--region",
        "us-east-1",
        "--sweep-interval",
        "200ms",
        "--probe-timeout",
        "200ms",
    ])
    .unwrap();
    let overdue_after = tend::health::overdue_after(&SweepSettings::from_args(&args));
    assert_eq!(overdue_after, std::time::Duration::from_millis(600));
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(Readiness::default());
    let base = serve(metrics.clone(), ready.clone()).await;
    // No Workspace exists, so EC2 is never called.
    let ec2 = Moto::ec2_config_for("http://127.0.0.1:9").build();
    let started = Instant::now();
    let controller = tokio::spawn({
        let (client, metrics, ready) = (kube.client(), metrics.clone(), ready.clone());
        async move {
            tend::run_controller(&args, client, ec2, metrics, ready, std::future::pending()).await
        }
    });

    kube.wait_for(WAIT, "readiness to fail", |_| {
        ready.verdict() == Verdict::SweepsOverdue
    })
    .await;
    assert!(
        started.elapsed() >= overdue_after,
        "failed after {:?}, before 3 sweep periods",
        started.elapsed()
    );
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("sweep"), "{body}");
    assert_eq!(metric(&metrics, "tend_sweep_overdue"), Some(1.0));
    assert_eq!(
        metric(&metrics, "tend_last_sweep_completed_timestamp_seconds"),
        Some(0.0)
    );

    // The list goes through once the injected failures are spent.
    kube.wait_for(WAIT, "readiness to return", |_| {
        ready.verdict() == Verdict::Ready
    })
    .await;
    assert_eq!(get(&base, "/readyz").await, (200, "ok".to_owned()));
    assert_eq!(metric(&metrics, "tend_sweep_overdue"), Some(0.0));
    assert!(metric(&metrics, "tend_last_sweep_completed_timestamp_seconds").unwrap() > 0.0);
    assert!(metric(&metrics, "tend_sweep_duration_seconds_count").unwrap() >= 1.0);
    controller.abort();
}

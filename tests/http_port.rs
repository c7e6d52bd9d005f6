//! The operational HTTP port: metrics, liveness and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tend::http::{self, HttpState};
use tend::metrics::Metrics;

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
    let ready = Arc::new(AtomicBool::new(false));
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
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(&base, "/readyz").await.0, 200);
    let (status, body) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("tend_phase_transitions_total{phase=\"Online\"} 1"),
        "{body}"
    );
    server.abort();
}

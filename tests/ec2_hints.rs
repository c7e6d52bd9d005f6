//! EC2 event hints from an SQS queue (moto's): a hint makes tend describe at once and
//! heal long before the next sweep, a spot interruption warning shows on the
//! Workspace, and nothing else in the queue makes tend do anything.

mod support;

use std::time::Duration;

use serde_json::json;
use support::checks::{has_condition, instance_of, published};
use support::rig::{Rig, WAIT};
use tend::api::Phase;

/// A rig whose sweeps are a minute apart, reading hints from a fresh queue, with
/// the ec2 Workspace `dev` Online: the rig, the queue's URL and the instance.
async fn rig() -> (Rig, String, String) {
    let mut rig = Rig::new().await;
    let queue = rig.moto.queue("tend-events").await;
    rig.args.sqs_queue_url = Some(queue.clone());
    rig.args.sweep_interval = Duration::from_secs(60);
    rig.args.resync_interval = Duration::from_secs(600);
    rig.start_controller().await;
    rig.create(&rig.ec2_workspace("dev")).await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let instance = instance_of(&online);
    (rig, queue, instance)
}

fn event(id: &str, detail_type: &str, detail: serde_json::Value) -> String {
    json!({
        "version": "0",
        "id": id,
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-12-02T10:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    })
    .to_string()
}

fn state_change(id: &str, instance: &str, state: &str) -> String {
    event(
        id,
        "EC2 Instance State-change Notification",
        json!({"instance-id": instance, "state": state}),
    )
}

async fn send(rig: &Rig, queue: &str, body: &str) {
    rig.moto
        .sqs()
        .send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .expect("moto queues the message");
}

/// Waits until the controller has read this many messages with this outcome.
async fn wait_hints(rig: &Rig, outcome: &str, n: u64) {
    let series = format!("tend_ec2_hints_total{{outcome=\"{outcome}\"}}");
    rig.kube
        .wait_for(WAIT, &format!("{n} {outcome} hint(s)"), |_| {
            rig.metric(&series) >= n
        })
        .await;
}

/// Waits until every message has been deleted (each is deleted after it is counted).
async fn wait_drained(rig: &Rig, queue: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while rig.moto.queued(queue).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages are still queued after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_termination_hint_heals_the_workspace_before_the_next_sweep() {
    let (rig, queue, first) = rig().await;
    rig.wait_sweeps(1).await;
    let sweeps_before = rig.sweeps();
    rig.proxy.clear_log();

    rig.moto.terminate(&first).await;
    let hint = state_change("e-1", &first, "terminated");
    send(&rig, &queue, &hint).await;
    // EventBridge delivers at least once: the same event again is dropped.
    send(&rig, &queue, &hint).await;

    let healed = rig
        .wait_ws("dev", "healed on a new instance", |w| {
            w.status.as_ref().is_some_and(|s| {
                s.phase == Some(Phase::Online) && s.instance_id.as_deref() != Some(&first)
            })
        })
        .await;
    assert!(
        rig.proxy.calls("DescribeInstances") > 0,
        "the hint led to a describe"
    );
    assert!(rig.sweeps() > sweeps_before, "an early sweep looked");
    assert!(
        healed.status.unwrap().restarts >= 1,
        "the Workspace was restarted, not just relabelled"
    );
    wait_hints(&rig, "handled", 1).await;
    wait_hints(&rig, "duplicate", 1).await;
    assert_eq!(rig.metric("tend_ec2_hints_total{outcome=\"handled\"}"), 1);
    wait_drained(&rig, &queue).await;
}

#[tokio::test]
async fn a_spot_interruption_warning_is_published_on_the_workspace() {
    let (rig, queue, instance) = rig().await;

    send(
        &rig,
        &queue,
        &event(
            "e-spot",
            "EC2 Spot Instance Interruption Warning",
            json!({"instance-id": instance, "instance-action": "terminate"}),
        ),
    )
    .await;
    rig.kube
        .wait_for(WAIT, "the warning on the Workspace", |_| {
            published(&rig, "dev", "SpotInterruptionWarning") == 1
        })
        .await;
    wait_hints(&rig, "handled", 1).await;
    // A warning decides nothing: the instance still runs.
    let ws = rig.get("dev").unwrap();
    assert_eq!(
        ws.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Online)
    );
    assert!(
        has_condition(&ws, "Ready", "True", "Online"),
        "{:?}",
        ws.status
    );
    assert_eq!(instance_of(&ws), instance);
}

/// A hint that changes nothing (the instance is still running): its early sweep marks
/// a point in time, and gives the sweeper an answer, so that no reconcile needs a
/// look of its own.
async fn sentinel(rig: &Rig, queue: &str, instance: &str, n: u64) {
    let sweeps = rig.sweeps();
    send(
        rig,
        queue,
        &state_change(&format!("sentinel-{n}"), instance, "stopping"),
    )
    .await;
    wait_hints(rig, "handled", n).await;
    rig.kube
        .wait_for(WAIT, "the sentinel's early sweep", |_| {
            rig.sweeps() > sweeps
        })
        .await;
}

#[tokio::test]
async fn garbage_foreign_and_repeated_messages_cause_no_action() {
    let (rig, queue, instance) = rig().await;
    sentinel(&rig, &queue, &instance, 1).await;
    let sweeps_before = rig.sweeps();
    rig.proxy.clear_log();
    rig.kube.clear_requests();

    for body in [
        "not json at all".to_string(),
        json!({"source": "aws.s3", "detail-type": "Object Created"}).to_string(),
        state_change("e-foreign", "i-0123456789abcdef0", "terminated"),
        state_change("e-running", &instance, "running"),
        state_change("e-running", &instance, "running"),
    ] {
        send(&rig, &queue, &body).await;
    }
    wait_hints(&rig, "garbage", 2).await;
    wait_hints(&rig, "foreign", 1).await;
    wait_hints(&rig, "ignored", 1).await;
    wait_hints(&rig, "duplicate", 1).await;
    // Early sweeps are at least a second apart: had any of these asked for one
    // (further ahead of the sentinel than the sweeper's 100 ms of quiet, in which
    // requests merge), the sentinel's would be a second sweep with its own describe.
    sentinel(&rig, &queue, &instance, 2).await;

    assert_eq!(
        rig.sweeps(),
        sweeps_before + 1,
        "only the sentinel's early sweep"
    );
    assert_eq!(
        rig.proxy.calls("DescribeInstances"),
        1,
        "only the sentinel's describe"
    );
    assert_eq!(
        rig.kube.count_requests("PATCH", "/status"),
        0,
        "no status write"
    );
    wait_drained(&rig, &queue).await;
    let ws = rig.get("dev").unwrap();
    assert_eq!(
        ws.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Online)
    );
}

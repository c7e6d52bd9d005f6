//! An external Workspace against the fake API server: it awaits its agent's
//! first heartbeat, is Online while the heartbeat is fresh, Offline when it
//! lapses (and tend restarts nothing), Online again on renewal; a Lease that
//! cannot be read changes nothing. The tests play the agent.

mod support;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use support::checks::{condition, has_condition};
use support::fake_kube::Failure;
use support::rig::Rig;
use tend::api::Phase;

/// The shortest heartbeat timeout the CRD allows.
const TIMEOUT: i64 = 10;

fn ago(secs: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(secs)
}

/// How often the controller has read `laptop`'s Lease.
fn lease_reads(rig: &Rig) -> usize {
    rig.kube.count_requests("GET", "/leases/laptop")
}

/// Waits until the controller has read `laptop`'s Lease `n` more times.
async fn looks(rig: &Rig, n: usize) {
    let from = lease_reads(rig);
    rig.kube
        .wait_for(support::rig::WAIT, &format!("{n} more looks"), |k| {
            k.count_requests("GET", "/leases/laptop") >= from + n
        })
        .await;
}

/// Creates `laptop`, sends its first heartbeat and waits until it is Online.
async fn online(rig: &Rig) {
    rig.create(&rig.external_workspace("laptop", TIMEOUT)).await;
    rig.agent("laptop").beat().await;
    rig.wait_phase("laptop", Phase::Online).await;
}

#[tokio::test]
async fn an_external_workspace_awaits_its_agent_goes_offline_when_the_heartbeat_lapses_and_comes_back()
 {
    let rig = Rig::start().await;
    rig.create(&rig.external_workspace("laptop", TIMEOUT)).await;
    let awaiting = rig.wait_phase("laptop", Phase::AwaitingAgent).await;
    let (_, reason, message) = condition(&awaiting, "Ready").unwrap();
    assert_eq!(reason, "AwaitingAgent");
    assert!(message.contains("first heartbeat"), "{message}");

    let agent = rig.agent("laptop");
    agent.beat().await;
    let ws = rig.wait_phase("laptop", Phase::Online).await;
    assert!(has_condition(&ws, "BackendRunning", "True", "Running"));
    assert_eq!(
        ws.status.as_ref().unwrap().backend.as_deref(),
        Some("laptop")
    );
    rig.wait_event("laptop", "Launched").await;

    // The last renewal is 2 s from lapsing, and no other comes: tend looks
    // again when it runs out, not only at a resync.
    agent.beat_at(ago(TIMEOUT - 2)).await;
    let offline = rig.wait_phase("laptop", Phase::Offline).await;
    let (_, reason, message) = condition(&offline, "Ready").unwrap();
    assert_eq!(reason, "HeartbeatLost");
    assert!(message.contains("someone must"), "{message}");
    rig.wait_event("laptop", "HeartbeatLost").await;
    let (kind, _, note) = rig
        .events("laptop")
        .into_iter()
        .find(|(_, r, _)| r == "HeartbeatLost")
        .expect("an Offline event");
    assert_eq!(kind, "Warning");
    assert!(note.contains("someone must"), "{note}");
    assert!(has_condition(&offline, "Healing", "False", "NotHealing"));

    // No restart: it stays Offline through further looks, nothing counted.
    looks(&rig, 3).await;
    let still = rig.get("laptop").unwrap();
    assert_eq!(still.status.as_ref().unwrap().phase, Some(Phase::Offline));
    assert_eq!(still.status.as_ref().unwrap().restarts, 0);

    agent.beat().await;
    let back = rig.wait_phase("laptop", Phase::Online).await;
    assert_eq!(back.status.unwrap().restarts, 0);
}

#[tokio::test]
async fn heartbeats_are_seen_through_the_watch_and_a_lapse_when_it_runs_out() {
    let mut rig = Rig::new().await;
    rig.args.resync_interval = Duration::from_secs(3600);
    rig.start_controller().await;
    rig.create(&rig.external_workspace("laptop", TIMEOUT)).await;
    rig.wait_phase("laptop", Phase::AwaitingAgent).await;
    // The first heartbeat and a renewal are seen through the watch; a lapse
    // when the last renewal runs out, 2 s after it is seen.
    let agent = rig.agent("laptop");
    agent.beat().await;
    rig.wait_phase("laptop", Phase::Online).await;
    agent.beat_at(ago(TIMEOUT - 2)).await;
    rig.wait_phase("laptop", Phase::Offline).await;
    agent.beat().await;
    rig.wait_phase("laptop", Phase::Online).await;
}

#[tokio::test]
async fn a_lease_that_cannot_be_read_changes_nothing() {
    let rig = Rig::start().await;
    online(&rig).await;
    // The next five reads fail, and meanwhile the heartbeat lapses: no
    // clean answer either way.
    rig.kube.inject_failure(Failure {
        method: Some("GET".into()),
        path_contains: "/leases/laptop".into(),
        status: 500,
        reason: "InternalError".into(),
        times: 5,
        body_contains: None,
    });
    let reads = lease_reads(&rig);
    rig.agent("laptop").beat_at(ago(TIMEOUT + 60)).await;
    let unknown = rig
        .wait_ws("laptop", "BackendRunning=Unknown", |w| {
            has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
        })
        .await;
    assert_eq!(unknown.status.as_ref().unwrap().phase, Some(Phase::Online));
    rig.kube
        .wait_for(support::rig::WAIT, "four failed reads", |k| {
            k.count_requests("GET", "/leases/laptop") >= reads + 4
        })
        .await;
    assert_eq!(rig.phase("laptop"), Some(Phase::Online));
    // Once it can be read, the lapse is believed.
    let offline = rig.wait_phase("laptop", Phase::Offline).await;
    assert!(has_condition(&offline, "Ready", "False", "HeartbeatLost"));
}

#[tokio::test]
async fn a_lease_deleted_by_its_agent_is_a_lost_heartbeat() {
    let rig = Rig::start().await;
    online(&rig).await;
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(rig.kube.client(), support::rig::NS);
    leases.delete("laptop", &Default::default()).await.unwrap();
    let offline = rig.wait_phase("laptop", Phase::Offline).await;
    let (_, reason, message) = condition(&offline, "Ready").unwrap();
    assert_eq!(reason, "HeartbeatLost");
    assert!(message.contains("is gone"), "{message}");
}

#[tokio::test]
async fn stopping_is_refused_and_deletion_leaves_the_lease_to_its_agent() {
    let rig = Rig::start().await;
    let mut ws = rig.external_workspace("laptop", TIMEOUT);
    ws.spec.desired_state = tend::api::DesiredState::Stopped;
    let refused = rig
        .workspaces()
        .create(&Default::default(), &ws)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("external"), "{refused}");
    let mut short = rig.external_workspace("laptop", 1);
    short.metadata.name = Some("laptop".into());
    let refused = rig
        .workspaces()
        .create(&Default::default(), &short)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("heartbeatTimeoutSeconds"),
        "{refused}"
    );

    online(&rig).await;
    rig.delete("laptop").await;
    rig.wait_gone("laptop").await;
    rig.wait_event("laptop", "Released").await;
    let lease = rig
        .kube
        .get_object("/apis/coordination.k8s.io/v1/namespaces/default/leases/laptop");
    assert!(lease.is_some(), "the agent's Lease is not tend's to delete");
}

//! Proof of absence: an instance left out of a filtered answer is asked
//! about by id, and only EC2 naming it as not found counts; a mass absence
//! waits for a human; answers and deaths are judged against what status
//! already knows.

mod support;

use std::time::Duration;

use support::checks::{annotate, condition, has_condition, instance_of, online, published};
use support::faults::FaultRule;
use support::rig::Rig;
use tend::api::{Phase, Workspace};

/// DescribeInstances calls that named `id` in `InstanceIds`, as a proof of
/// absence does (a filtered describe names it in a filter value instead).
fn asked_by_id(rig: &Rig, id: &str) -> usize {
    rig.proxy
        .call_log()
        .iter()
        .filter(|c| {
            c.action == "DescribeInstances"
                && c.params
                    .iter()
                    .any(|(k, v)| k.starts_with("InstanceId.") && v == id)
        })
        .count()
}

/// Rewrites every filtered DescribeInstances answer so that `id` is not
/// listed: what eventual consistency, a wrong endpoint or a broken proxy
/// look like. Describes by id are left alone.
fn leave_out_of_filtered_answers(rig: &Rig, id: &str) {
    rig.proxy.inject(
        FaultRule::on("DescribeInstances")
            .mentioning("instance-id")
            .rewrite(id, "i-0ffffffffffffffff"),
    );
}

#[tokio::test]
async fn an_instance_left_out_of_a_filtered_answer_is_asked_about_by_id_and_stays_online() {
    let rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let id = instance_of(&ws);
    leave_out_of_filtered_answers(&rig, &id);
    let swept = rig.sweeps();
    // Past the not-found grace (3s), an omission would have been believed.
    rig.wait_sweeps(swept + 8).await;
    assert!(
        asked_by_id(&rig, &id) >= 1,
        "the omission was checked by id"
    );
    let ws = rig.get("dev").unwrap();
    assert_eq!(ws.status.as_ref().unwrap().phase, Some(Phase::Online));
    assert!(has_condition(&ws, "BackendRunning", "True", "Running"));
    assert_eq!(rig.proxy.calls("RunInstances"), 1, "nothing was replaced");
    assert_eq!(published(&rig, "dev", "InstanceNotFound"), 0);
}

#[tokio::test]
async fn an_omission_whose_confirmation_fails_is_unknown() {
    let rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let id = instance_of(&ws);
    // The filtered answer leaves it out, and asking by id is throttled: no
    // clean answer either way, even though the instance is really dead. The
    // faults come first, so that no sweep sees the death in between.
    leave_out_of_filtered_answers(&rig, &id);
    rig.proxy.inject(
        FaultRule::on("DescribeInstances")
            .mentioning(&id)
            .throttle(),
    );
    rig.moto.terminate(&id).await;
    let unknown = rig
        .wait_ws("dev", "BackendRunning=Unknown", |w| {
            has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
        })
        .await;
    assert_eq!(unknown.status.as_ref().unwrap().phase, Some(Phase::Online));
    let swept = rig.sweeps();
    rig.wait_sweeps(swept + 6).await;
    assert_eq!(rig.phase("dev"), Some(Phase::Online));
    assert!(asked_by_id(&rig, &id) >= 1);
    assert_eq!(rig.proxy.calls("RunInstances"), 1);
}

fn ready_reason(ws: &Workspace) -> String {
    condition(ws, "Ready")
        .map(|(_, r, _)| r)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_mass_absence_is_held_until_a_retry_annotation() {
    let rig = Rig::start().await;
    let names: Vec<String> = (0..10).map(|i| format!("ws{i}")).collect();
    for name in &names {
        rig.create(&rig.ec2_workspace(name)).await;
    }
    for name in &names {
        rig.wait_phase(name, Phase::Online).await;
    }
    // A sweep that began while some were still provisioning would judge a
    // group too small to trip; the fleet is judged whole from here on.
    rig.wait_swept(10).await;
    // Every instance vanishes at once, as when tend is pointed at the wrong
    // account or endpoint: not found by id, no terminated state listed.
    rig.moto.reset().await;
    // moto names one unknown id per describe by id, so on a slow machine the
    // absences may be proven over more than one sweep; the first two (20%,
    // not more) may then pass before the group trips. Every other one is held.
    let settled = |w: &Workspace| {
        has_condition(w, "Ready", "Unknown", "SuspectedProviderOutage")
            || w.status.as_ref().and_then(|s| s.phase) != Some(Phase::Online)
    };
    for name in &names {
        rig.wait_ws(name, "held or acted upon", settled).await;
    }
    let held: Vec<&String> = names
        .iter()
        .filter(|n| ready_reason(&rig.get(n).unwrap()) == "SuspectedProviderOutage")
        .collect();
    assert!(held.len() >= 8, "{held:?}");
    for name in &held {
        let (_, _, message) = condition(&rig.get(name).unwrap(), "Ready").unwrap();
        assert!(message.contains("tend.dev/retry"), "{message}");
    }
    // Well past the three sweeps that release an ordinary held death.
    let swept = rig.sweeps();
    rig.wait_sweeps(swept + 6).await;
    for name in &held {
        let ws = rig.get(name).unwrap();
        assert_eq!(
            ws.status.as_ref().unwrap().phase,
            Some(Phase::Online),
            "{name}"
        );
        assert_eq!(ready_reason(&ws), "SuspectedProviderOutage", "{name}");
    }
    // A human looks and says: act on the first held one.
    let (first, rest) = held.split_first().unwrap();
    annotate(&rig, first, "tend.dev/retry", "1").await;
    rig.wait_ws(first, "acted upon", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.phase != Some(Phase::Online))
    })
    .await;
    rig.wait_event(first, "InstanceNotFound").await;
    for name in rest {
        let ws = rig.get(name).unwrap();
        assert_eq!(
            ws.status.as_ref().unwrap().phase,
            Some(Phase::Online),
            "{name}"
        );
    }
}

#[tokio::test]
async fn workspaces_already_offline_are_no_new_deaths_after_a_controller_restart() {
    let mut rig = Rig::start().await;
    for i in 0..10 {
        let mut ws = rig.ec2_workspace(&format!("ws{i}"));
        ws.spec.restart_policy = tend::api::RestartPolicy::Never;
        rig.create(&ws).await;
    }
    let mut fleet = Vec::new();
    for i in 0..10 {
        fleet.push(rig.wait_phase(&format!("ws{i}"), Phase::Online).await);
    }
    // Three die far enough apart that the breaker's window never holds more
    // than one of them, and stay Offline under restartPolicy Never.
    for ws in &fleet[..3] {
        let name = ws.metadata.name.clone().unwrap();
        rig.moto.terminate(&instance_of(ws)).await;
        rig.wait_phase(&name, Phase::Offline).await;
        rig.wait_sweeps(rig.sweeps() + 6).await;
    }
    rig.crash_controller().await;
    rig.start_controller().await;
    rig.wait_sweeps(3).await;
    let trips = rig
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("tend_circuit_breaker_trips_total"))
        .map(|l| l.to_owned())
        .collect::<Vec<_>>();
    assert!(
        trips.is_empty() || trips.iter().all(|l| l.ends_with(" 0")),
        "{trips:?}"
    );
    for ws in &fleet[..3] {
        let ws = rig.get(ws.metadata.name.as_deref().unwrap()).unwrap();
        assert_eq!(ws.status.as_ref().unwrap().phase, Some(Phase::Offline));
        assert_eq!(ready_reason(&ws), "InstanceTerminated");
    }
}

#[tokio::test]
async fn a_throttled_start_neither_advances_the_phase_nor_counts_a_restart() {
    let rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let id = instance_of(&ws);
    let throttled = rig.proxy.inject(FaultRule::on("StartInstances").throttle());
    rig.moto.stop(&id).await;
    rig.wait_phase("dev", Phase::Offline).await;
    // The SDK makes up to 3 attempts per call: a fourth request means tend
    // has come back for a second try, after writing what the first left.
    rig.proxy.wait_for_calls("StartInstances", 4).await;
    let ws = rig.get("dev").unwrap();
    let status = ws.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Offline), "no Restarting yet");
    assert_eq!(status.restarts, 0, "nothing was restarted");
    assert_eq!(published(&rig, "dev", "Restarting"), 0);

    throttled.remove();
    let back = rig
        .wait_ws("dev", "Online after one restart", |w| {
            w.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(Phase::Online) && s.restarts == 1)
        })
        .await;
    assert_eq!(instance_of(&back), id, "started in place");
    assert_eq!(published(&rig, "dev", "Restarting"), 1);
}

#[tokio::test]
async fn the_staleness_clock_survives_a_controller_restart() {
    let mut rig = Rig::new().await;
    rig.args.stale_after = Duration::from_secs(4);
    rig.start_controller().await;
    online(&rig, "dev").await;
    rig.proxy
        .inject(FaultRule::on("DescribeInstances").throttle());
    let unknown = rig
        .wait_ws("dev", "uncertainSince recorded", |w| {
            w.status
                .as_ref()
                .is_some_and(|s| s.uncertain_since.is_some())
        })
        .await;
    let since = unknown.status.unwrap().uncertain_since.unwrap().0;
    assert_ne!(ready_reason(&rig.get("dev").unwrap()), "ObservationStale");
    // Three of the four seconds pass before the controller restarts.
    let restart_at = since + jiff::SignedDuration::from_secs(3);
    let wait = restart_at.duration_since(jiff::Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    rig.crash_controller().await;
    assert_ne!(ready_reason(&rig.get("dev").unwrap()), "ObservationStale");
    rig.start_controller().await;
    let stale = rig
        .wait_ws("dev", "ObservationStale", |w| {
            has_condition(w, "Ready", "Unknown", "ObservationStale")
        })
        .await;
    let (_, _, _) = condition(&stale, "Ready").unwrap();
    let turned = stale
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .last_transition_time
        .0;
    // Not before the threshold, and on the persisted clock: a clock started
    // afresh at the restart would have waited until restart + 4s.
    assert!(
        turned >= since + jiff::SignedDuration::from_secs(4),
        "{turned} vs {since}"
    );
    assert!(
        turned < restart_at + jiff::SignedDuration::from_secs(3),
        "{turned} vs restart at {restart_at}"
    );
}

#[tokio::test]
async fn staleness_covers_every_phase_tend_looks_at() {
    // A stopped Workspace is not swept, but tend still looks at it: when
    // those looks fail for longer than --stale-after, Ready says so too.
    let rig = Rig::start().await;
    online(&rig, "dev").await;
    rig.patch_spec("dev", serde_json::json!({ "desiredState": "Stopped" }))
        .await;
    rig.wait_phase("dev", Phase::Stopped).await;
    rig.proxy
        .inject(FaultRule::on("DescribeInstances").throttle());
    let stale = rig
        .wait_ws("dev", "ObservationStale while Stopped", |w| {
            has_condition(w, "Ready", "Unknown", "ObservationStale")
        })
        .await;
    assert_eq!(stale.status.as_ref().unwrap().phase, Some(Phase::Stopped));
    assert!(stale.status.unwrap().uncertain_since.is_some());
}

//! Liveness: the sweeper's answers, the safety rule (only a clean NotRunning
//! takes a Workspace offline), healing on the same volume, backoff, crash loops,
//! the circuit breaker and the refresh annotation.

mod support;

use std::time::Duration;

use aws_sdk_ec2::types::VolumeState;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::checks::{annotate, condition, has_condition, instance_of, online, wait_online_after};
use support::faults::FaultRule;
use support::rig::{NS, Rig};
use tend::api::Phase;

#[tokio::test]
async fn dead_instance_goes_offline_and_is_restarted_on_the_same_volume() {
    let rig = Rig::start().await;
    let first = online(&rig, "dev").await;
    let old_instance = instance_of(&first);
    let volume = first.status.as_ref().unwrap().volume_id.clone().unwrap();

    rig.moto.terminate(&old_instance).await;
    rig.wait_event("dev", "InstanceTerminated").await;
    let healed = rig
        .wait_ws("dev", "back online on a new instance", |w| {
            w.status.as_ref().is_some_and(|s| {
                s.phase == Some(Phase::Online) && s.instance_id.as_deref() != Some(&old_instance)
            })
        })
        .await;
    let status = healed.status.clone().unwrap();
    assert_eq!(status.restarts, 1);
    assert_eq!(
        status.volume_id.as_deref(),
        Some(volume.as_str()),
        "same data volume"
    );
    assert_eq!(status.launch_number, Some(2));
    assert_eq!(
        status.last_restart.as_ref().map(|r| r.reason.as_str()),
        Some("InstanceTerminated")
    );
    let new_instance = status.instance_id.unwrap();
    let vol = rig.moto.volume(&volume).await.unwrap();
    assert_eq!(vol.state(), Some(&VolumeState::InUse));
    assert_eq!(
        vol.attachments().first().and_then(|a| a.instance_id()),
        Some(new_instance.as_str())
    );
    let reasons = rig.event_reasons("dev");
    let pos = |r: &str| {
        reasons
            .iter()
            .rposition(|x| x == r)
            .unwrap_or_else(|| panic!("no {r} in {reasons:?}"))
    };
    assert!(
        pos("InstanceTerminated") < pos("Restarting") && pos("Restarting") < pos("Online"),
        "{reasons:?}"
    );
}

async fn faulty_describes_leave_it_online(fault: FaultRule) {
    let rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let id = instance_of(&ws);
    rig.proxy.inject(fault);

    let unknown = rig
        .wait_ws("dev", "BackendRunning=Unknown", |w| {
            has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
        })
        .await;
    assert_eq!(unknown.status.as_ref().unwrap().phase, Some(Phase::Online));
    let (ready, ..) = condition(&unknown, "Ready").unwrap();
    assert_eq!(
        ready, "True",
        "an Unknown answer alone does not touch Ready"
    );

    let stale = rig
        .wait_ws("dev", "Ready=Unknown/ObservationStale", |w| {
            has_condition(w, "Ready", "Unknown", "ObservationStale")
        })
        .await;
    assert_eq!(
        stale.status.as_ref().unwrap().phase,
        Some(Phase::Online),
        "never Offline on Unknown"
    );
    assert_eq!(instance_of(&stale), id);
    let conds = &stale.status.as_ref().unwrap().conditions;
    let since = |t: &str| {
        conds
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .last_transition_time
            .0
    };
    // Staleness follows the first Unknown, and only once --stale-after (2s)
    // has passed since the last clean answer, on the clock status records.
    assert!(since("Ready") >= since("BackendRunning"));
    let clean_until = stale
        .status
        .as_ref()
        .unwrap()
        .uncertain_since
        .clone()
        .unwrap()
        .0;
    assert!(clean_until <= since("BackendRunning"));
    assert!(
        since("Ready") >= clean_until + jiff::SignedDuration::from_secs(2),
        "stale at {} after a clean answer at {clean_until}",
        since("Ready")
    );
    assert_eq!(
        rig.proxy.calls("TerminateInstances") + rig.proxy.calls("RunInstances"),
        1
    );
    rig.wait_event("dev", "ObservationStale").await;
}

#[tokio::test]
async fn throttled_describes_leave_the_workspace_online_until_stale() {
    faulty_describes_leave_it_online(FaultRule::on("DescribeInstances").throttle()).await;
}

#[tokio::test]
async fn server_errors_leave_the_workspace_online_until_stale() {
    faulty_describes_leave_it_online(FaultRule::on("DescribeInstances").server_error(500)).await;
}

#[tokio::test]
async fn timed_out_describes_leave_the_workspace_online_until_stale() {
    faulty_describes_leave_it_online(FaultRule::on("DescribeInstances").hang()).await;
}

#[tokio::test]
async fn reset_connections_leave_the_workspace_online_until_stale() {
    faulty_describes_leave_it_online(FaultRule::on("DescribeInstances").reset()).await;
}

#[tokio::test]
async fn malformed_answers_leave_the_workspace_online() {
    let rig = Rig::start().await;
    online(&rig, "dev").await;
    rig.proxy
        .inject(FaultRule::on("DescribeInstances").malformed());
    let ws = rig
        .wait_ws("dev", "BackendRunning=Unknown", |w| {
            has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
        })
        .await;
    assert_eq!(ws.status.unwrap().phase, Some(Phase::Online));
}

#[tokio::test]
async fn mixed_batch_heals_only_the_dead() {
    let rig = Rig::start().await;
    let alive = online(&rig, "alive").await;
    let dead = online(&rig, "dead").await;
    let erroring = online(&rig, "erroring").await;
    let erroring_id = instance_of(&erroring);
    // Every call naming this id fails, so the batch naming all three fails and
    // must be bisected down to it.
    rig.proxy.inject(
        FaultRule::on("DescribeInstances")
            .mentioning(&erroring_id)
            .server_error(500),
    );
    rig.moto.terminate(&instance_of(&dead)).await;

    wait_online_after(&rig, "dead", 1).await;
    let erroring = rig
        .wait_ws("erroring", "Unknown", |w| {
            has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
        })
        .await;
    assert_eq!(erroring.status.as_ref().unwrap().phase, Some(Phase::Online));
    assert_eq!(erroring.status.unwrap().restarts, 0);
    let alive_now = rig.get("alive").unwrap();
    assert_eq!(
        alive_now.status.as_ref().unwrap().phase,
        Some(Phase::Online)
    );
    assert_eq!(instance_of(&alive_now), instance_of(&alive));
    assert!(has_condition(
        &alive_now,
        "BackendRunning",
        "True",
        "Running"
    ));
    // The bisection answered the others: a call naming the alive id without the
    // erroring one succeeded.
    let alive_id = instance_of(&alive);
    assert!(rig.proxy.call_log().iter().any(|c| {
        c.action == "DescribeInstances"
            && c.instance_ids.contains(&alive_id)
            && !c.instance_ids.contains(&erroring_id)
            && matches!(
                c.outcome,
                support::faults::Outcome::Upstream { status: 200 }
            )
    }));
}

#[tokio::test]
async fn not_found_inside_the_grace_period_is_unknown_and_after_it_is_healed() {
    let rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let real = instance_of(&ws);
    // The recorded instance vanishes: status names an id EC2 does not know,
    // launched just now, and the real one is gone.
    let now = jiff::Timestamp::now().to_string();
    rig.workspaces()
        .patch_status(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "status": { "instanceId": "i-0123456789abcdef0", "launchedAt": now } }),
            ),
        )
        .await
        .unwrap();
    rig.moto.terminate(&real).await;

    let waiting = rig
        .wait_ws("dev", "Unknown within the grace period", |w| {
            condition(w, "BackendRunning")
                .is_some_and(|(s, _, m)| s == "Unknown" && m.contains("grace period"))
        })
        .await;
    assert_eq!(waiting.status.unwrap().phase, Some(Phase::Online));
    rig.wait_event("dev", "InstanceNotFound").await;
    let healed = wait_online_after(&rig, "dev", 1).await;
    assert_ne!(instance_of(&healed), "i-0123456789abcdef0");
    assert_ne!(instance_of(&healed), real);
}

#[tokio::test]
async fn spot_termination_is_healed_with_reason_spot_interrupted() {
    let rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let id = instance_of(&ws);
    // moto cannot reclaim spot capacity; rewrite its answer for this instance.
    rig.proxy
        .inject(FaultRule::on("DescribeInstances").mentioning(&id).rewrite(
            "Client.UserInitiatedShutdown",
            "Server.SpotInstanceTermination",
        ));
    rig.moto.terminate(&id).await;
    rig.wait_event("dev", "SpotInterrupted").await;
    let healed = wait_online_after(&rig, "dev", 1).await;
    assert_eq!(
        healed.status.unwrap().last_restart.map(|r| r.reason),
        Some("SpotInterrupted".to_owned())
    );
}

#[tokio::test]
async fn external_stop_is_healed_by_starting_in_place() {
    let rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let id = instance_of(&ws);
    rig.moto.stop(&id).await;
    rig.wait_event("dev", "InstanceStoppedExternally").await;
    let healed = wait_online_after(&rig, "dev", 1).await;
    assert_eq!(instance_of(&healed), id, "started in place, not replaced");
    assert_eq!(rig.proxy.calls("RunInstances"), 1);
    assert!(rig.proxy.calls("StartInstances") >= 1);
}

#[tokio::test]
async fn restart_policy_never_stays_offline() {
    let rig = Rig::start().await;
    let mut ws = rig.ec2_workspace("dev");
    ws.spec.restart_policy = tend::api::RestartPolicy::Never;
    rig.create(&ws).await;
    let ws = rig.wait_phase("dev", Phase::Online).await;
    rig.moto.terminate(&instance_of(&ws)).await;
    let offline = rig.wait_phase("dev", Phase::Offline).await;
    assert!(has_condition(&offline, "Healing", "False", "NotHealing"));
    // Several more sweeps pass; still nothing is launched.
    let looks = rig.proxy.calls("DescribeInstances");
    rig.proxy
        .wait_for_calls("DescribeInstances", looks + 4)
        .await;
    assert_eq!(rig.phase("dev"), Some(Phase::Offline));
    assert_eq!(rig.proxy.calls("RunInstances"), 1);
    assert_eq!(rig.get("dev").unwrap().status.unwrap().restarts, 0);
}

#[tokio::test]
async fn crash_loop_fails_and_retry_annotation_starts_over() {
    let rig = Rig::start().await;
    let mut ws = online(&rig, "dev").await;
    for restarts in 1..=5 {
        rig.moto.terminate(&instance_of(&ws)).await;
        ws = wait_online_after(&rig, "dev", restarts).await;
    }
    rig.moto.terminate(&instance_of(&ws)).await;
    let failed = rig.wait_phase("dev", Phase::Failed).await;
    let (_, reason, message) = condition(&failed, "Ready").unwrap();
    assert_eq!(reason, "CrashLoop");
    assert!(message.contains("tend.dev/retry"), "{message}");
    rig.wait_event("dev", "CrashLoop").await;
    let launches = rig.proxy.calls("RunInstances");
    let looks = rig.proxy.calls("DescribeInstances");
    rig.proxy
        .wait_for_calls("DescribeInstances", looks + 4)
        .await;
    assert_eq!(
        rig.proxy.calls("RunInstances"),
        launches,
        "no restart while crash-looping"
    );
    assert_eq!(rig.phase("dev"), Some(Phase::Failed));

    annotate(&rig, "dev", "tend.dev/retry", "1").await;
    let back = wait_online_after(&rig, "dev", 6).await;
    assert_eq!(back.status.unwrap().handled_retry.as_deref(), Some("1"));
}

#[tokio::test]
async fn circuit_breaker_holds_a_mass_death_then_heals_in_waves() {
    let mut rig = Rig::new().await;
    rig.args.max_restarts_per_sweep = 2;
    // Long enough that every sweep of the hold can be watched.
    rig.args.sweep_interval = Duration::from_secs(1);
    rig.start_controller().await;
    let mut fleet = Vec::new();
    for i in 0..10 {
        rig.create(&rig.ec2_workspace(&format!("ws{i}"))).await;
    }
    for i in 0..10 {
        fleet.push(rig.wait_phase(&format!("ws{i}"), Phase::Online).await);
    }
    let instances: usize = {
        let mut n = 0;
        for ws in &fleet {
            n += rig.instances_of(ws).await.len();
        }
        n
    };
    assert_eq!(instances, 10);
    // No sweep that began while some were still provisioning may judge the
    // deaths below in a group too small to trip.
    rig.wait_swept(10).await;
    let launches = rig.proxy.calls("RunInstances");
    // Half the fleet dies at once (one call, so no sweep sees only part of
    // it): far above --max-offline-fraction 0.2.
    rig.moto
        .ec2()
        .terminate_instances()
        .set_instance_ids(Some(fleet[..5].iter().map(instance_of).collect()))
        .send()
        .await
        .unwrap();
    for i in 0..5 {
        let name = format!("ws{i}");
        rig.wait_ws(&name, "SuspectedProviderOutage", |w| {
            has_condition(w, "Ready", "Unknown", "SuspectedProviderOutage")
        })
        .await;
        rig.wait_event(&name, "SuspectedProviderOutage").await;
    }
    // The first sweep that saw the deaths held them; so does the next one.
    // After each, all five are still Online and nothing was launched.
    let held_from = rig.sweeps();
    for sweep in [held_from, held_from + 1] {
        rig.wait_sweeps(sweep).await;
        for i in 0..5 {
            let ws = rig.get(&format!("ws{i}")).unwrap();
            assert_eq!(
                ws.status.as_ref().unwrap().phase,
                Some(Phase::Online),
                "ws{i} held after sweep {sweep}"
            );
        }
        assert_eq!(
            rig.proxy.calls("RunInstances"),
            launches,
            "no restart during the hold"
        );
    }

    for i in 0..5 {
        wait_online_after(&rig, &format!("ws{i}"), 1).await;
    }
    // Waves of at most 2 per sweep: the restarts fall into groups one sweep
    // (a second) apart, none bigger than 2. Status times are whole seconds,
    // so a wave can straddle one; the Restarting events carry microseconds.
    let events = rig
        .kube
        .list_objects(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"));
    let mut restarted: Vec<jiff::Timestamp> = (0..5)
        .map(|i| {
            let name = format!("ws{i}");
            let event = events
                .iter()
                .find(|e| e["regarding"]["name"] == name && e["reason"] == "Restarting")
                .unwrap_or_else(|| panic!("{name} announced its restart"));
            event["eventTime"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("an event time")
        })
        .collect();
    restarted.sort();
    let mut waves = vec![1];
    for pair in restarted.windows(2) {
        if pair[1].duration_since(pair[0]) > jiff::SignedDuration::from_millis(500) {
            waves.push(1);
        } else {
            *waves.last_mut().unwrap() += 1;
        }
    }
    assert!(
        waves.iter().all(|w| *w <= 2),
        "{waves:?} from {restarted:?}"
    );
    assert!(waves.len() >= 3, "{waves:?} from {restarted:?}");
    for i in 5..10 {
        assert_eq!(
            rig.get(&format!("ws{i}")).unwrap().status.unwrap().restarts,
            0
        );
    }
}

#[tokio::test]
async fn refresh_annotation_forces_an_immediate_look() {
    let mut rig = Rig::start().await;
    let ws = online(&rig, "dev").await;
    let id = instance_of(&ws);
    // Restart the controller with sweeps and resyncs so rare that, after the
    // first sweep at start-up, only a refresh can notice a death.
    rig.crash_controller().await;
    rig.args.sweep_interval = Duration::from_secs(3600);
    rig.args.resync_interval = Duration::from_secs(3600);
    let mentioning = |rig: &Rig| {
        rig.proxy
            .call_log()
            .iter()
            .filter(|c| c.action == "DescribeInstances" && c.instance_ids.contains(&id))
            .count()
    };
    rig.start_controller().await;
    rig.wait_sweeps(1).await;
    rig.moto.terminate(&id).await;

    // Any other change reconciles on the (fresh) sweep answer: still Running.
    annotate(&rig, "dev", "team", "platform").await;
    rig.wait_ws("dev", "annotation seen", |w| {
        w.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("team"))
    })
    .await;
    let looks = mentioning(&rig);
    annotate(&rig, "dev", "note", "unrelated").await;
    rig.wait_ws("dev", "second annotation seen", |w| {
        w.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("note"))
    })
    .await;
    assert_eq!(rig.phase("dev"), Some(Phase::Online));

    annotate(&rig, "dev", "tend.dev/refresh", "now").await;
    // The look it asked for: answered, and remembered in status.
    rig.wait_ws("dev", "the refresh answered", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.handled_refresh.as_deref() == Some("now"))
    })
    .await;
    assert!(
        mentioning(&rig) > looks,
        "the refresh made an uncached look"
    );
    rig.wait_event("dev", "InstanceTerminated").await;
}

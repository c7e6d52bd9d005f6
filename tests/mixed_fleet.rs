//! One controller over a fleet of all three runtimes: only what is truly
//! dead goes Offline. An EC2 instance terminated, a Pod failed and a
//! heartbeat lapsed are believed; a failing describe and a Pod whose
//! status is Unknown change nothing, and neither does anything about the
//! healthy rest.

mod support;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use support::checks::{has_condition, instance_of};
use support::faults::FaultRule;
use support::rig::Rig;
use tend::api::{Phase, Workspace};

const NODE: &str = "node-a";

fn backend_of(ws: &Workspace) -> String {
    ws.status.as_ref().unwrap().backend.clone().unwrap()
}

#[tokio::test]
async fn a_mixed_fleet_loses_only_what_is_truly_dead() {
    let rig = Rig::start().await;
    let kubelet = rig.kubelet();
    kubelet.node(NODE, "True").await;
    for name in ["e0", "e1", "e2"] {
        rig.create(&rig.ec2_workspace(name)).await;
    }
    for name in ["c0", "c1", "c2"] {
        rig.create(&rig.container_workspace(name)).await;
    }
    for name in ["x0", "x1"] {
        rig.create(&rig.external_workspace(name, 60)).await;
        rig.agent(name).beat().await;
    }
    for name in ["c0", "c1", "c2"] {
        let pod = format!("{name}-1");
        rig.wait_pod(&pod).await;
        kubelet.run(&pod, NODE).await;
    }
    let mut before = Vec::new();
    for name in ["e0", "e1", "e2", "c0", "c1", "c2", "x0", "x1"] {
        before.push(rig.wait_phase(name, Phase::Online).await);
    }

    // Truly dead: one of each runtime.
    rig.moto.terminate(&instance_of(&before[0])).await;
    kubelet.fail("c0-1", 1, "Error").await;
    rig.agent("x0")
        .beat_at(Timestamp::now() - SignedDuration::from_secs(120))
        .await;
    // No clean answer: describes naming one instance fail (its batch is
    // split until only it is left), a Pod whose kubelet went quiet.
    rig.proxy.inject(
        FaultRule::on("DescribeInstances")
            .mentioning(&instance_of(&before[1]))
            .server_error(503),
    );
    kubelet
        .report("c1-1", "Unknown", json!({"running": {}}))
        .await;

    let offline = [
        ("e0", "InstanceTerminated"),
        ("c0", "PodFailed"),
        ("x0", "HeartbeatLost"),
    ];
    for (name, reason) in offline {
        rig.wait_event(name, reason).await;
    }
    for name in ["e1", "c1"] {
        rig.wait_ws(name, "BackendRunning=Unknown", |w| {
            has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
        })
        .await;
    }
    // Several sweeps later, the rest is as it was.
    rig.wait_sweeps(rig.sweeps() + 4).await;
    for old in &before[..] {
        let name = old.metadata.name.as_deref().unwrap();
        if offline.iter().any(|(dead, _)| *dead == name) {
            continue;
        }
        let now = rig.get(name).unwrap();
        let status = now.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(Phase::Online), "{name}");
        assert_eq!(backend_of(&now), backend_of(old), "{name} kept its backend");
        assert_eq!(status.restarts, 0, "{name}");
        // No death announced; those without a clean answer may turn stale
        // (the rig's --stale-after is 2 s), which is the truth.
        assert!(
            rig.events(name)
                .iter()
                .all(|(kind, reason, _)| kind != "Warning" || reason == "ObservationStale"),
            "{name}: {:?}",
            rig.events(name)
        );
    }
    assert_eq!(
        rig.proxy.calls("RunInstances"),
        4,
        "three launches and one replacement"
    );
}

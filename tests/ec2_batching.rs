//! What the fleet costs: one batcher for every EC2 read, calm restarts, and
//! nothing done on a timer for a Workspace whose inputs did not change.
//! Calls are counted at the fault proxy, writes at the fake API server.

mod support;

use std::time::Duration;

use serde_json::json;
use support::checks::instance_of;
use support::faults::{Call, FaultRule};
use support::rig::{Rig, WAIT};
use tend::api::Phase;
use tend::backend::ec2::TAG_UID;

const N: usize = 12;
/// Ids per describe in the restart test.
const BATCH: usize = 4;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i}")).collect()
}

/// Creates the fleet at once and waits until every Workspace is Online.
async fn fleet(rig: &Rig) -> Vec<String> {
    fleet_of(rig, N).await
}

async fn fleet_of(rig: &Rig, n: usize) -> Vec<String> {
    let names = names(n);
    let specs: Vec<_> = names.iter().map(|n| rig.ec2_workspace(n)).collect();
    futures::future::join_all(specs.iter().map(|ws| rig.create(ws))).await;
    let mut ids = Vec::new();
    for name in &names {
        ids.push(instance_of(&rig.wait_phase(name, Phase::Online).await));
    }
    ids
}

fn describes(rig: &Rig) -> Vec<Call> {
    calls_of(rig, "DescribeInstances")
}

fn calls_of(rig: &Rig, action: &str) -> Vec<Call> {
    rig.proxy
        .call_log()
        .into_iter()
        .filter(|c| c.action == action)
        .collect()
}

/// Whether a describe asked about more than one thing, by filter values or
/// by naming ids.
fn asked_about_several(call: &Call) -> bool {
    call.params
        .keys()
        .any(|k| k.ends_with(".Value.2") || k.ends_with("Id.2"))
}

/// Requests that change something about Workspaces, or announce it.
fn writes(rig: &Rig) -> Vec<String> {
    rig.kube
        .requests()
        .into_iter()
        .filter(|r| !r.method.eq_ignore_ascii_case("GET"))
        .filter(|r| r.path.contains("/workspaces") || r.path.contains("/events"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// Reconciles that stopped at once because nothing had changed.
fn unchanged(rig: &Rig) -> u64 {
    rig.metric("tend_reconciles_total{result=\"unchanged\"}")
}

#[tokio::test]
async fn a_burst_of_creations_costs_at_most_one_describe_per_workspace() {
    let mut rig = Rig::new().await;
    // No sweep in the way: what is counted is the creations' own reads.
    rig.args.sweep_interval = Duration::from_secs(3600);
    // And no client-side pacing of the launches, which would spread the
    // burst out into one Workspace at a time.
    rig.args.ec2_mutate_rate = 1000.0;
    rig.args.ec2_mutate_burst = 1000;
    rig.args.concurrency = 32;
    rig.start_controller().await;
    const BURST: usize = 12;
    fleet_of(&rig, BURST).await;
    let calls = describes(&rig);
    assert!(
        calls.len() <= BURST,
        "{} DescribeInstances for {BURST} creations: {:#?}",
        calls.len(),
        calls.iter().map(|c| &c.instance_ids).collect::<Vec<_>>()
    );
    // They went out together, not one Workspace at a time.
    assert!(
        calls.iter().any(asked_about_several),
        "no describe asked about more than one Workspace"
    );
    // The data volumes' reads (the search for an earlier attempt's volume,
    // the checks before launch and attach) go through the same batcher.
    let volumes = calls_of(&rig, "DescribeVolumes");
    assert!(
        volumes.len() <= BURST,
        "{} DescribeVolumes for {BURST} creations",
        volumes.len()
    );
    assert!(
        volumes.iter().any(asked_about_several),
        "no DescribeVolumes asked about more than one Workspace"
    );
    // Every Workspace names the same subnet, whose zone never changes.
    let subnets = calls_of(&rig, "DescribeSubnets");
    assert_eq!(subnets.len(), 1, "{subnets:#?}");
    // This controller wrote each reservation its creates followed, and sent
    // nothing before them: there was no earlier attempt to search for.
    let owner_filter = format!("tag:{TAG_UID}");
    let searches: Vec<Call> = rig
        .proxy
        .call_log()
        .into_iter()
        .filter(|c| c.params.values().any(|v| *v == owner_filter))
        .collect();
    assert!(searches.is_empty(), "searched by owner: {searches:#?}");
}

#[tokio::test]
async fn a_restart_over_a_settled_fleet_costs_one_sweep_and_writes_nothing() {
    let mut rig = Rig::new().await;
    rig.args.sweep_interval = Duration::from_secs(2);
    // Batches smaller than the fleet, as at scale: the sweep's question
    // fills its windows by itself, so a look that came along later would
    // go out on its own. And one reconcile at a time, so such looks could
    // not even share a window among themselves.
    rig.args.batch_size = BATCH as u32;
    rig.args.concurrency = 1;
    rig.start_controller().await;
    let ids = fleet(&rig).await;
    // Settled: sweeps have come and gone with nothing new.
    rig.wait_sweeps(rig.sweeps() + 2).await;

    rig.crash_controller().await;
    rig.proxy.clear_log();
    rig.kube.clear_requests();
    // A slow EC2: the first sweep's describe is still out when the
    // Workspaces are first reconciled, so a look of their own could not
    // ride along with it.
    rig.proxy
        .inject(FaultRule::on("DescribeInstances").delay(Duration::from_millis(800)));
    rig.start_controller().await;
    rig.wait_sweeps(2).await;
    let swept = rig.sweeps();
    let calls = describes(&rig);
    // Every describe is one of a sweep's full batches: no Workspace looked
    // on its own while it waited for the first sweep's answer.
    for call in &calls {
        assert_eq!(
            call.instance_ids.len(),
            BATCH,
            "a describe that is not a sweep's: {call:?}"
        );
        assert!(call.instance_ids.iter().all(|id| ids.contains(id)));
    }
    let per_sweep = N.div_ceil(BATCH) as u64;
    assert!(
        calls.len() as u64 <= per_sweep * (swept + 1),
        "{} describes in {swept} sweeps",
        calls.len()
    );
    assert_eq!(
        writes(&rig),
        Vec::<String>::new(),
        "writes after the restart"
    );
    for name in names(N) {
        let ws = rig.get(&name).unwrap();
        assert_eq!(ws.status.unwrap().phase, Some(Phase::Online));
    }
}

#[tokio::test]
async fn a_settled_workspace_costs_nothing_on_its_resync() {
    let mut rig = Rig::new().await;
    // A fleet larger than a sweep: each sweep answers one Workspace, so
    // every answer ages past two intervals before the next.
    rig.args.max_per_sweep = 1;
    rig.start_controller().await;
    fleet_of(&rig, 3).await;
    let before = unchanged(&rig);
    rig.kube
        .wait_for(WAIT, "a quiet resync of each", |_| {
            unchanged(&rig) >= before + 3
        })
        .await;

    rig.proxy.clear_log();
    rig.kube.clear_requests();
    let (before, swept) = (unchanged(&rig), rig.sweeps());
    // With a 1 s resync, two more of each.
    rig.kube
        .wait_for(WAIT, "six more quiet resyncs", |_| {
            unchanged(&rig) >= before + 6
        })
        .await;
    let calls = describes(&rig).len() as u64;
    let sweeps = rig.sweeps() - swept;
    // One describe per sweep (and one for a sweep under way): none of a
    // resync's own.
    assert!(calls <= sweeps + 1, "{calls} describes in {sweeps} sweeps");
    assert_eq!(writes(&rig), Vec::<String>::new(), "writes on resync");
}

#[tokio::test]
async fn a_stopped_workspace_is_still_looked_at_through_the_batcher() {
    let mut rig = Rig::new().await;
    rig.args.sweep_interval = Duration::from_secs(3600);
    rig.start_controller().await;
    fleet_of(&rig, 4).await;
    for i in 0..4 {
        rig.patch_spec(&format!("dev-{i}"), json!({ "desiredState": "Stopped" }))
            .await;
    }
    for i in 0..4 {
        rig.wait_phase(&format!("dev-{i}"), Phase::Stopped).await;
    }
    // The sweep does not cover Stopped Workspaces: their resyncs look,
    // and looks that come together go out together.
    rig.proxy.clear_log();
    rig.proxy.wait_for_calls("DescribeInstances", 3).await;
    assert!(
        describes(&rig)
            .iter()
            .any(|c| c.params.keys().any(|k| k.ends_with(".Value.2"))),
        "no describe asked about more than one Workspace: {:#?}",
        describes(&rig)
    );
}

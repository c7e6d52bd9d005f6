//! Several replicas on one Lease: exactly one reconciles and sweeps, another takes over
//! when it dies or stops, and one that cannot renew stops acting before its Lease could
//! pass to another. Each replica is the real controller, with its own client (its
//! requests are recorded under its own user), against the fake API server, whose
//! server-side apply refuses a second holder.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::fake_kube::Failure;
use support::rig::{NS, Replica, Rig};
use tend::api::Phase;
use tend::health::Role;

const LEASE: &str = "tend";
const DURATION: Duration = Duration::from_secs(3);

async fn rig() -> Rig {
    let mut rig = Rig::new().await;
    rig.args.leader_election = true;
    rig.args.lease_namespace = Some(NS.into());
    rig.args.lease_duration = DURATION;
    rig
}

fn leases(rig: &Rig) -> Api<Lease> {
    Api::namespaced(rig.kube.client(), NS)
}

async fn holder(rig: &Rig) -> Option<String> {
    holder_of(rig, LEASE).await
}

async fn holder_of(rig: &Rig, lease: &str) -> Option<String> {
    leases(rig)
        .get_opt(lease)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

/// Starts the replica `tend-a` alone and waits until it leads.
async fn lone_leader(rig: &Rig) -> Replica {
    let a = rig.replica("tend-a");
    rig.kube
        .wait_for(Duration::from_secs(10), "a to lead", |_| a.leads())
        .await;
    a
}

/// Every renewal (any patch of the Lease) from now on is answered so.
fn fail_renewals(rig: &Rig, status: u16, reason: &str) {
    rig.kube.inject_failure(Failure::new(
        "PATCH",
        &format!("/leases/{LEASE}"),
        status,
        reason,
        usize::MAX,
    ));
}

/// Users that wrote to Workspaces (their status, their finalizers) or to EC2-bound
/// Events since the requests were last cleared.
fn workspace_writers(rig: &Rig) -> Vec<String> {
    let mut users: Vec<String> = rig
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" || r.method == "POST")
        .filter(|r| {
            r.resource
                .as_ref()
                .is_some_and(|t| t.resource == "workspaces" || t.resource == "events")
        })
        .filter_map(|r| r.user)
        .collect();
    users.sort();
    users.dedup();
    users
}

/// Sweeps a replica has finished.
fn sweeps(replica: &Replica) -> u64 {
    replica.metric("tend_sweep_duration_seconds_count")
}

/// Waits until exactly one of the replicas leads, and returns which.
async fn one_leads<'a>(rig: &Rig, replicas: [&'a Replica; 2], within: Duration) -> &'a Replica {
    rig.kube
        .wait_for(within, "exactly one leader", |_| {
            replicas.iter().filter(|r| r.leads()).count() == 1
        })
        .await;
    replicas.into_iter().find(|r| r.leads()).expect("a leader")
}

#[tokio::test]
async fn exactly_one_replica_acts_and_another_takes_over_when_it_is_killed() {
    let rig = rig().await;
    let a = rig.replica("tend-a");
    let b = rig.replica("tend-b");
    let leader = one_leads(&rig, [&a, &b], Duration::from_secs(10)).await;
    let standby = if std::ptr::eq(leader, &a) { &b } else { &a };
    assert_eq!(standby.ready.role(), Role::Standby);
    assert_eq!(holder(&rig).await.as_deref(), Some(leader.user.as_str()));

    rig.create(&rig.ec2_workspace("first")).await;
    rig.wait_phase("first", Phase::Online).await;
    assert_eq!(workspace_writers(&rig), vec![leader.user.clone()]);
    let metrics = leader.metrics.encode();
    assert!(
        metrics.contains("tend_leader{lease=\"tend\"} 1"),
        "{metrics}"
    );
    assert!(
        standby
            .metrics
            .encode()
            .contains("tend_leader{lease=\"tend\"} 0"),
        "the standby shows it does not lead"
    );
    assert_eq!(sweeps(standby), 0, "the standby does not sweep");
    assert!(sweeps(leader) > 0);

    let (leader_user, standby_user) = (leader.user.clone(), standby.user.clone());
    let (a_leads, b) = (a.leads(), b);
    let (killed, survivor) = if a_leads { (a, b) } else { (b, a) };
    let killed_at = tokio::time::Instant::now();
    killed.kill().await;
    rig.kube
        .wait_for(2 * DURATION, "the standby to take over", |_| {
            survivor.leads()
        })
        .await;
    let took = killed_at.elapsed();
    assert!(took < 2 * DURATION, "took over after {took:?}");
    assert_eq!(holder(&rig).await.as_deref(), Some(standby_user.as_str()));

    rig.kube.clear_requests();
    rig.create(&rig.ec2_workspace("second")).await;
    rig.wait_phase("second", Phase::Online).await;
    let writers = workspace_writers(&rig);
    assert_eq!(
        writers,
        vec![standby_user.clone()],
        "the old leader ({leader_user}) is gone"
    );
}

#[tokio::test]
async fn a_stopped_leader_gives_up_the_lease() {
    let rig = rig().await;
    let a = lone_leader(&rig).await;
    let b = rig.replica("tend-b");
    rig.kube
        .wait_for(Duration::from_secs(10), "b to stand by", |_| {
            b.ready.role() == Role::Standby
        })
        .await;
    rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_phase("dev", Phase::Online).await;

    let stopped_at = tokio::time::Instant::now();
    a.stop().await;
    assert!(
        stopped_at.elapsed() < rig.args.shutdown_timeout,
        "stopping waited out the shutdown timeout"
    );
    let after_stop = holder(&rig).await;
    assert!(
        after_stop.as_deref() != Some("tend-a"),
        "a stopped replica still holds the Lease: {after_stop:?}"
    );
    rig.kube
        .wait_for(2 * DURATION, "b to take over", |_| b.leads())
        .await;
    assert!(stopped_at.elapsed() < 2 * DURATION);
}

/// A leader whose renewals fail cannot know whether it still holds the Lease: it stops
/// acting at once, long before the Lease it may still hold could expire.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_acting_within_the_lease_duration() {
    let rig = rig().await;
    let a = lone_leader(&rig).await;
    fail_renewals(&rig, 500, "InternalError");
    rig.kube
        .wait_for(DURATION, "a to stop leading", |_| !a.leads())
        .await;
    assert_eq!(a.ready.role(), Role::LeaseUnreachable);
    assert!(a.metrics.encode().contains("tend_leader{lease=\"tend\"} 0"));
    let (ready, why) = a.ready.answer();
    assert!(!ready, "{why}");
}

/// Two shards with disjoint selectors, each under its own Lease: each reconciles and
/// sweeps only the Workspaces labelled for it, and neither touches the other's.
#[tokio::test]
async fn two_shards_each_handle_only_their_own_workspaces() {
    let mut rig = rig().await;
    let shard = |rig: &mut Rig, name: &str| {
        rig.args.label_selector = Some(format!("tend.dev/shard={name}"));
        rig.args.lease_name = format!("tend-shard-{name}");
        rig.replica(&format!("tend-{name}"))
    };
    let a = shard(&mut rig, "a");
    let b = shard(&mut rig, "b");
    rig.kube
        .wait_for(Duration::from_secs(10), "both shards to lead", |_| {
            a.leads() && b.leads()
        })
        .await;
    for (name, label) in [("a-one", "a"), ("a-two", "a"), ("b-one", "b")] {
        let mut ws = rig.ec2_workspace(name);
        ws.metadata.labels = Some([("tend.dev/shard".to_string(), label.to_string())].into());
        rig.create(&ws).await;
    }
    for name in ["a-one", "a-two", "b-one"] {
        rig.wait_phase(name, Phase::Online).await;
    }
    for r in rig.kube.requests() {
        let Some(target) = r.resource.as_ref().filter(|t| t.resource == "workspaces") else {
            continue;
        };
        let Some(name) = &target.name else { continue };
        if r.method == "PATCH" {
            let owner = format!("tend-{}", &name[..1]);
            assert_eq!(
                r.user.as_deref(),
                Some(owner.as_str()),
                "{} {}",
                r.method,
                r.path
            );
        }
    }
    // Each shard's sweep covers its own Workspaces only.
    let in_scope = |r: &Replica| r.metric("tend_sweep_objects_in_scope");
    rig.kube
        .wait_for(
            Duration::from_secs(10),
            "each shard's sweep to see its own",
            |_| in_scope(&a) == 2 && in_scope(&b) == 1,
        )
        .await;
    for (lease, holder) in [("tend-shard-a", "tend-a"), ("tend-shard-b", "tend-b")] {
        assert_eq!(holder_of(&rig, lease).await.as_deref(), Some(holder));
    }
}

/// SIGTERM while a sweep waits on EC2: the process takes no new work, gives up the
/// Lease and exits 0 within its shutdown timeout.
#[tokio::test]
async fn sigterm_mid_sweep_exits_cleanly_and_gives_up_the_lease() {
    let rig = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, rig.kube.kubeconfig_yaml()).unwrap();
    let shutdown_timeout = Duration::from_secs(5);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tend"))
        .args([
            "run",
            "--region",
            "us-east-1",
            "--cluster-name",
            support::rig::CLUSTER,
        ])
        .args(["--namespace", NS, "--ec2-endpoint", rig.proxy.url()])
        .args(["--metrics-addr", "127.0.0.1:0", "--sweep-interval", "500ms"])
        .args(["--progress-interval", "200ms", "--probe-timeout", "30s"])
        .args([
            "--leader-election",
            "--lease-namespace",
            NS,
            "--lease-duration",
            "3s",
        ])
        .args(["--lease-identity", "tend-child", "--shutdown-timeout", "5s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tend");
    rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_phase("dev", Phase::Online).await;
    assert_eq!(holder(&rig).await.as_deref(), Some("tend-child"));

    // Every describe from now on hangs: the next sweep stays in flight.
    rig.proxy
        .inject(support::faults::FaultRule::on("DescribeInstances").hang());
    rig.proxy.clear_log();
    rig.proxy.wait_for_calls("DescribeInstances", 1).await;

    let pid = child.id().expect("tend runs").to_string();
    let signalled = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(signalled.success());
    let sent_at = tokio::time::Instant::now();
    let status = tokio::time::timeout(shutdown_timeout + DURATION, child.wait())
        .await
        .expect("tend exits within its shutdown timeout")
        .unwrap();
    assert!(status.success(), "tend exited with {status}");
    assert!(sent_at.elapsed() < shutdown_timeout + DURATION);
    assert_eq!(holder(&rig).await, None, "the Lease was given up");
}

/// Renewals answered 409 `Conflict`, as a real server answers a write that lost a race:
/// the Lease manager retries them quietly, and the Lease runs out meanwhile. The leader
/// watches its own Lease and stops acting before it could pass to another replica.
#[tokio::test]
async fn a_leader_whose_renewals_keep_conflicting_stops_before_its_lease_runs_out() {
    let rig = rig().await;
    let a = lone_leader(&rig).await;
    fail_renewals(&rig, 409, "Conflict");
    let last = leases(&rig).get(LEASE).await.unwrap().spec.unwrap();
    let expires = last.renew_time.unwrap().0
        + jiff::SignedDuration::from_secs(i64::from(last.lease_duration_seconds.unwrap()));
    rig.kube
        .wait_for(DURATION, "a to stop leading", |_| !a.leads())
        .await;
    assert!(
        jiff::Timestamp::now() < expires,
        "a still acted when its Lease ran out at {expires}"
    );
}

/// The Lease deleted under a running leader (by hand, or with its namespace's
/// cleanup): the leader stops acting, the Lease is created again, and a replica leads.
#[tokio::test]
async fn a_deleted_lease_is_created_again_and_held() {
    let rig = rig().await;
    let a = lone_leader(&rig).await;
    leases(&rig)
        .delete(LEASE, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    rig.kube
        .wait_for(DURATION, "a to stop leading", |_| !a.leads())
        .await;
    rig.kube
        .wait_for(4 * DURATION, "a to lead again", |_| a.leads())
        .await;
    assert_eq!(holder(&rig).await.as_deref(), Some("tend-a"));
}

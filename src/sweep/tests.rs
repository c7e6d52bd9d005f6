use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::*;
use crate::backend::{Backend, BackendError, Observed, Step};
use crate::core::Halt;

/// A backend that gives every probe the same answer, and records what it
/// was asked.
struct Fixed {
    answer: Observation,
    hang: bool,
    asked: Mutex<Vec<Vec<String>>>,
    called: Notify,
}

impl Fixed {
    fn new(answer: Observation) -> Self {
        Fixed {
            answer,
            hang: false,
            asked: Mutex::new(Vec::new()),
            called: Notify::new(),
        }
    }

    fn registered(self) -> (Arc<Fixed>, Backends) {
        let fixed = Arc::new(self);
        let mut backends = Backends::default();
        backends.register(fixed.clone());
        (fixed, backends)
    }
}

#[async_trait]
impl Backend for Fixed {
    fn runtime(&self) -> Runtime {
        Runtime::Ec2
    }
    fn source(&self) -> &'static str {
        "test"
    }
    fn object_kind(&self) -> &'static str {
        "Test"
    }
    fn probe(&self, ws: &Workspace) -> Option<Probe> {
        let status = ws.status.as_ref()?;
        Some(Probe {
            id: status.instance_id.clone()?,
            location: "us-east-1".into(),
            volume_id: status.volume_id.clone(),
            launched_at: None,
            silence: None,
        })
    }
    async fn observe(&self, probes: &[Probe], _deadline: Instant) -> Observed {
        self.asked
            .lock()
            .unwrap()
            .push(probes.iter().map(|p| p.id.clone()).collect());
        self.called.notify_one();
        if self.hang {
            std::future::pending::<()>().await;
        }
        let now = Timestamp::now();
        Observed {
            sightings: probes
                .iter()
                .map(|_| Sighting {
                    observation: self.answer.clone(),
                    asked_at: now,
                    zone: Some("us-east-1a".into()),
                    absent: false,
                    holds_for: None,
                })
                .collect(),
            calls: CallStats::default(),
        }
    }
    async fn provision(&self, _ws: &Workspace) -> Result<Step, BackendError> {
        Err(BackendError::Invalid("not in this test".into()))
    }
    async fn start(&self, _ws: &Workspace) -> Result<(), BackendError> {
        Err(BackendError::Invalid("not in this test".into()))
    }
    async fn stop(&self, _ws: &Workspace, _hibernate: bool) -> Result<(), BackendError> {
        Err(BackendError::Invalid("not in this test".into()))
    }
    async fn teardown(
        &self,
        _ws: &Workspace,
        _skipped: &mut Vec<String>,
    ) -> Result<Step, BackendError> {
        Err(BackendError::Invalid("not in this test".into()))
    }
    fn released(&self, _ws: &Workspace) -> String {
        String::new()
    }
}

fn backends() -> Backends {
    Fixed::new(Observation::Running).registered().1
}

fn workspace(name: &str, phase: &str, runtime: &str, deleting: bool) -> Workspace {
    let mut ws: Workspace = serde_json::from_value(json!({
        "apiVersion": "tend.dev/v1alpha1",
        "kind": "Workspace",
        "metadata": { "name": name, "namespace": "default", "uid": format!("uid-{name}") },
        "spec": { "runtime": runtime, "ec2": { "instanceType": "t3.micro", "imageId": "ami-1", "subnetId": "subnet-1" } },
        "status": { "phase": phase, "instanceId": format!("i-{name}"), "volumeId": format!("vol-i-{name}") }
    }))
    .unwrap();
    if deleting {
        ws.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    }
    ws
}

fn in_scope(ws: &Workspace) -> bool {
    target(ws, &backends()).is_some()
}

#[test]
fn scope_is_what_should_be_running() {
    for phase in ["Online", "Offline", "Restarting"] {
        assert!(in_scope(&workspace("a", phase, "ec2", false)), "{phase}");
    }
    for phase in [
        "Stopped",
        "Hibernated",
        "Provisioning",
        "Failed",
        "Stopping",
        "Pending",
        "Deleting",
    ] {
        assert!(!in_scope(&workspace("a", phase, "ec2", false)), "{phase}");
    }
    // No backend registered for the runtime.
    assert!(!in_scope(&workspace("a", "Online", "external", false)));
    assert!(
        !in_scope(&workspace("a", "Online", "ec2", true)),
        "being deleted"
    );
}

/// `n` Online ec2 Workspaces as the sweeper sees them, named `w0`, `w1`, ...
fn online_targets(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| {
            target(
                &workspace(&format!("w{i}"), "Online", "ec2", false),
                &backends(),
            )
            .unwrap()
        })
        .collect()
}

/// A sweep of every target with the defaults of `tend run`.
fn full_sweep(
    previous: &Snapshot,
    targets: &[Target],
    answers: &HashMap<String, Sighting>,
    now: Timestamp,
) -> (Snapshot, Vec<ObjectRef<Workspace>>, Vec<Trip>) {
    assemble(
        previous,
        targets,
        targets,
        answers,
        now,
        &Scope::All,
        &settings(),
    )
}

/// The same clean answer about each target, asked at `at`.
fn answered_alike(
    targets: &[Target],
    observation: &Observation,
    at: Timestamp,
) -> HashMap<String, Sighting> {
    targets
        .iter()
        .map(|t| {
            let seen = Sighting {
                observation: observation.clone(),
                asked_at: at,
                zone: None,
                absent: false,
                holds_for: None,
            };
            (t.uid.clone(), seen)
        })
        .collect()
}

/// The defaults of `tend run`.
fn settings() -> SweepSettings {
    let args = crate::config::RunArgs::from_flags(["--region", "us-east-1"]).unwrap();
    SweepSettings::from_args(&args)
}

#[test]
fn least_recently_observed_go_first_and_the_cap_holds() {
    let targets: Vec<Target> = online_targets(5);
    let mut previous = Snapshot::default();
    for (i, t) in targets.iter().enumerate() {
        if i != 3 {
            previous.entries.insert(
                t.uid.clone(),
                Entry {
                    backend_id: t.probe.id.clone(),
                    observation: Observation::Running,
                    observed_at: Timestamp::from_second(5000).unwrap(),
                    last_clean_at: Timestamp::from_second(1000 + i as i64).unwrap(),
                    stale: false,
                    zone: None,
                    hold: Hold::None,
                    absent: false,
                    held_retry: None,
                },
            );
        }
    }
    let mut order = targets.clone();
    fair_order(&mut order, &previous, 3);
    let names: Vec<&str> = order.iter().map(|t| t.object.name.as_str()).collect();
    assert_eq!(names, vec!["w3", "w0", "w1"]);
}

#[tokio::test]
async fn a_steady_sweep_wakes_nothing() {
    let backends = backends();
    let targets: Vec<Target> = online_targets(50);
    let far = Instant::now() + Duration::from_secs(60);
    let (answers, _) = observe_all(&backends, &to_ask(&targets, &Snapshot::default()), far).await;
    assert_eq!(answers.len(), 50);
    let now = Timestamp::now();
    let (first, woken, _) = full_sweep(&Snapshot::default(), &targets, &answers, now);
    assert_eq!(woken.len(), 50, "first answers wake everyone once");
    let (_, woken, _) = full_sweep(&first, &targets, &answers, now);
    assert!(woken.is_empty(), "{woken:?}");
}

#[test]
fn an_answer_status_does_not_say_yet_wakes_its_workspace_again() {
    // The reconciler could not use the first "stopped" (it was asked before
    // a restart in place); the same answer, still true, must wake it again.
    let mut targets: Vec<Target> = online_targets(2);
    targets[0].recorded = Some(("Running".into(), None));
    let stopped = Observation::not_running(Halt::Stopped, "InstanceStoppedExternally", "stopped");
    targets[1].recorded = Some((
        "NotRunning".into(),
        Some("InstanceStoppedExternally".into()),
    ));
    let now = Timestamp::now();
    let answers = answered_alike(&targets, &stopped, now);
    let (first, _, _) = full_sweep(&Snapshot::default(), &targets, &answers, now);
    let (_, woken, _) = full_sweep(&first, &targets, &answers, now);
    let names: Vec<&str> = woken.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["w0"],
        "only the one whose status says otherwise"
    );
}

#[tokio::test]
async fn cancelling_stops_a_sweep_in_progress() {
    let (store, mut writer) = kube::runtime::reflector::store::<Workspace>();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(workspace(
        "w", "Online", "ec2", false,
    )));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let (fixed, backends) = Fixed {
        hang: true,
        ..Fixed::new(Observation::Running)
    }
    .registered();
    let (published, _snapshot) = watch::channel(Arc::new(Snapshot::default()));
    let (wake, _woken) = futures::channel::mpsc::unbounded();
    let sweeper = Sweeper::new(
        backends,
        settings(),
        store,
        published,
        wake,
        Arc::new(Metrics::default()),
    );
    let cancel = CancellationToken::new();
    let running = tokio::spawn(sweeper.run(cancel.clone()));
    fixed.called.notified().await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the sweeper stops promptly")
        .unwrap();
}

#[test]
fn unknown_answers_turn_stale_only_after_stale_after() {
    let t = target(&workspace("w", "Online", "ec2", false), &backends()).unwrap();
    let now = Timestamp::from_second(100_000).unwrap();
    let failed = HashMap::from([(t.uid.clone(), Sighting::unknown("throttled", now))]);
    let stale_after = settings().stale_after.as_secs() as i64;
    for (clean_ago, stale) in [(stale_after - 1, false), (stale_after + 1, true)] {
        let mut previous = Snapshot::default();
        previous.entries.insert(
            t.uid.clone(),
            Entry {
                backend_id: t.probe.id.clone(),
                observation: Observation::Running,
                observed_at: now,
                last_clean_at: Timestamp::from_second(100_000 - clean_ago).unwrap(),
                stale: false,
                zone: None,
                hold: Hold::None,
                absent: false,
                held_retry: None,
            },
        );
        let targets = vec![t.clone()];
        let (next, _, _) = full_sweep(&previous, &targets, &failed, now);
        let entry = next.get(&t.uid).unwrap();
        assert!(matches!(entry.observation, Observation::Unknown { .. }));
        assert_eq!(entry.stale, stale, "clean answer {clean_ago}s ago");
        assert_eq!(entry.last_clean_at.as_second(), 100_000 - clean_ago);
    }
}

#[tokio::test]
async fn a_proven_absence_is_settled_and_not_asked_about_again() {
    let (fixed, backends) = Fixed::new(Observation::Running).registered();
    let gone = target(&workspace("gone", "Offline", "ec2", false), &backends).unwrap();
    let targets = vec![gone.clone()];
    let settings = settings();
    // First sweep: asked about, and the backend proved it absent by id.
    assert_eq!(to_ask(&targets, &Snapshot::default()).len(), 1);
    let now = Timestamp::now();
    let absent = HashMap::from([(
        gone.uid.clone(),
        Sighting {
            observation: Observation::not_running(Halt::Gone, "InstanceNotFound", "not found"),
            asked_at: now,
            zone: None,
            absent: true,
            holds_for: None,
        },
    )]);
    let (first, _, _) = assemble(
        &Snapshot::default(),
        &targets,
        &targets,
        &absent,
        now,
        &Scope::All,
        &settings,
    );
    let entry = first.get(&gone.uid).unwrap();
    assert!(entry.absent);
    assert!(matches!(entry.observation, Observation::NotRunning(_)));
    // Next sweep: nothing to ask, and the answer stands, stamped anew.
    let ask = to_ask(&targets, &first);
    assert!(ask.is_empty());
    let far = Instant::now() + Duration::from_secs(60);
    let (answers, _) = observe_all(&backends, &ask, far).await;
    assert!(answers.is_empty());
    assert!(
        fixed.asked.lock().unwrap().is_empty(),
        "the backend was not asked"
    );
    let later = now + jiff::SignedDuration::from_secs(60);
    let (second, woken, _) = assemble(
        &first,
        &targets,
        &targets,
        &answers,
        later,
        &Scope::All,
        &settings,
    );
    let entry = second.get(&gone.uid).unwrap();
    assert!(entry.absent);
    assert_eq!(entry.observed_at, later);
    assert!(woken.is_empty(), "nothing changed");
}

#[test]
fn an_early_sweep_covers_only_where_things_changed_and_keeps_the_sweep_number() {
    let mut targets: Vec<Target> = online_targets(4);
    targets[0].probe.location = "eu-west-1".into();
    let scope = Scope::Changed(HashMap::from([(
        Runtime::Ec2,
        BTreeSet::from(["eu-west-1".to_owned()]),
    )]));
    let covered: Vec<&str> = targets
        .iter()
        .filter(|t| scope.covers(t))
        .map(|t| t.object.name.as_str())
        .collect();
    assert_eq!(covered, vec!["w0"]);
    let other_runtime = Scope::Changed(HashMap::from([(
        Runtime::Container,
        BTreeSet::from(["eu-west-1".to_owned()]),
    )]));
    assert!(!other_runtime.covers(&targets[0]));

    let now = Timestamp::now();
    let running = |ts: &[Target]| answered_alike(ts, &Observation::Running, now);
    let (first, _, _) = full_sweep(&Snapshot::default(), &targets, &running(&targets), now);
    assert_eq!(first.sweep, 1);
    let dead = Observation::not_running(Halt::Gone, "InstanceTerminated", "gone");
    let mut answers = running(&targets[..1]);
    answers.get_mut(&targets[0].uid).unwrap().observation = dead.clone();
    let (early, woken, _) = assemble(
        &first,
        &targets,
        &targets[..1],
        &answers,
        now,
        &scope,
        &settings(),
    );
    assert_eq!(early.sweep, 1, "an early sweep is no sweep of the interval");
    assert_eq!(woken.len(), 1);
    assert_eq!(early.get(&targets[0].uid).unwrap().observation, dead);
    for t in &targets[1..] {
        assert_eq!(early.get(&t.uid), first.get(&t.uid), "kept as it was");
    }
    assert_eq!(early.deaths.len(), 1);
    assert_eq!(early.deaths[0].sweep, 1);
}

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_ec2::types::{
    EbsInstanceBlockDevice, Instance, InstanceBlockDeviceMapping, InstanceState, InstanceStateName,
    Placement,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::Notify;

use super::*;
use crate::backend::ec2::{AwsError, AwsErrorKind, TokenBucket};

/// A describer that answers from a script.
struct Scripted {
    bucket: Arc<TokenBucket>,
    /// A call naming this id fails.
    poison: Option<String>,
    kind: AwsErrorKind,
    hang: bool,
    /// Left out of filtered answers although they exist.
    omit: Vec<String>,
    /// Not-found errors name only the first unknown id, as moto's do.
    name_first_only: bool,
    calls: AtomicUsize,
    sizes: Mutex<Vec<usize>>,
    /// The ids of each describe by id.
    named: Mutex<Vec<Vec<String>>>,
    called: Notify,
}

impl Scripted {
    fn new() -> Self {
        Scripted {
            bucket: Arc::new(TokenBucket::new(1e6, 1_000_000)),
            poison: None,
            kind: AwsErrorKind::Transient,
            hang: false,
            omit: Vec::new(),
            name_first_only: false,
            calls: AtomicUsize::new(0),
            sizes: Mutex::new(Vec::new()),
            named: Mutex::new(Vec::new()),
            called: Notify::new(),
        }
    }
}

fn running(id: &str) -> Instance {
    Instance::builder()
        .instance_id(id)
        .state(
            InstanceState::builder()
                .name(InstanceStateName::Running)
                .build(),
        )
        .placement(Placement::builder().availability_zone("us-east-1a").build())
        .block_device_mappings(
            InstanceBlockDeviceMapping::builder()
                .ebs(
                    EbsInstanceBlockDevice::builder()
                        .volume_id(format!("vol-{id}"))
                        .build(),
                )
                .build(),
        )
        .build()
}

impl Describer for Scripted {
    fn read_bucket(&self, _region: &str) -> Arc<TokenBucket> {
        self.bucket.clone()
    }

    async fn describe(&self, region: &str, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
        self.sizes.lock().unwrap().push(ids.len());
        let mut listed = self.answer(region, ids).await?;
        // A listing that leaves out what exists, as a broken proxy or a
        // wrong endpoint might.
        listed.retain(|i| {
            !self
                .omit
                .iter()
                .any(|o| Some(o.as_str()) == i.instance_id())
        });
        Ok(listed)
    }

    async fn describe_named(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<Instance>, AwsError> {
        self.named.lock().unwrap().push(ids.to_vec());
        let listed = self.answer(region, ids).await?;
        let mut unknown: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !listed.iter().any(|i| i.instance_id() == Some(*id)))
            .collect();
        if unknown.is_empty() {
            return Ok(listed);
        }
        // EC2 names every unknown id; moto only the first.
        if self.name_first_only {
            unknown.truncate(1);
        }
        Err(AwsError::instances_not_found(&unknown))
    }
}

impl Scripted {
    async fn answer(&self, _region: &str, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.called.notify_one();
        if self.hang {
            std::future::pending::<()>().await;
        }
        if let Some(bad) = &self.poison
            && ids.contains(bad)
        {
            return Err(AwsError {
                operation: "DescribeInstances",
                kind: self.kind,
                code: Some("InternalError".into()),
                message: "boom".into(),
            });
        }
        // Odd-numbered ids (i-00001 ...) do not exist.
        Ok(ids
            .iter()
            .filter(|id| !(id.starts_with("i-0") && id.ends_with(['1', '3', '5', '7', '9'])))
            .map(|id| running(id))
            .collect())
    }
}

fn ids(n: usize) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "us-east-1".to_owned(),
        (0..n).map(|i| format!("i-{i:05}")).collect(),
    )])
}

fn batch() -> BatchSettings {
    settings().batch
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

fn reply(answers: &HashMap<String, Answer>, id: &str) -> Reply {
    answers[id].reply.clone()
}

#[tokio::test]
async fn one_call_per_batch_and_the_absent_confirmed_in_batches_of_their_own() {
    let d = Scripted::new();
    let (answers, stats) = describe_all(&d, &ids(1000), batch(), far()).await;
    // Five filtered batches; the 500 ids they left out are asked about by id
    // in full batches, not one call per filtered batch.
    assert_eq!(d.sizes.lock().unwrap().len(), 5);
    let mut named: Vec<usize> = d.named.lock().unwrap().iter().map(Vec::len).collect();
    named.sort();
    assert_eq!(named, vec![100, 200, 200]);
    assert_eq!(stats.confirmations, 3);
    assert_eq!(answers.len(), 1000);
    assert!(matches!(reply(&answers, "i-00002"), Reply::Found(_)));
    assert!(matches!(reply(&answers, "i-00003"), Reply::NotFound));
}

#[tokio::test]
async fn an_omission_that_naming_the_id_contradicts_is_found() {
    // The filtered answer leaves out an instance that exists: proof of
    // nothing. Asked by id, it is there.
    let d = Scripted {
        omit: vec!["i-00002".into()],
        ..Scripted::new()
    };
    let (answers, _) = describe_all(&d, &ids(4), batch(), far()).await;
    assert!(matches!(reply(&answers, "i-00002"), Reply::Found(_)));
    assert!(matches!(reply(&answers, "i-00001"), Reply::NotFound));
    assert!(matches!(reply(&answers, "i-00003"), Reply::NotFound));
}

#[tokio::test]
async fn a_not_found_naming_one_id_at_a_time_is_asked_again_for_the_rest() {
    let d = Scripted {
        name_first_only: true,
        ..Scripted::new()
    };
    let (answers, _) = describe_all(&d, &ids(8), batch(), far()).await;
    let absent = ["i-00001", "i-00003", "i-00005", "i-00007"];
    for id in absent {
        assert!(matches!(reply(&answers, id), Reply::NotFound), "{id}");
    }
    // Each by-id call drops the one id it was told about.
    let named = d.named.lock().unwrap().clone();
    let sizes: Vec<usize> = named.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![4, 3, 2, 1]);
}

#[tokio::test]
async fn a_failed_confirmation_is_unknown_not_absent() {
    // The absent id's confirmation is throttled: no proof either way.
    let d = Scripted {
        poison: Some("i-00001".into()),
        kind: AwsErrorKind::Throttled,
        omit: vec![],
        ..Scripted::new()
    };
    let mut by_region = HashMap::new();
    by_region.insert("us-east-1".to_owned(), vec!["i-00001".to_owned()]);
    let (answers, _) = describe_all(&d, &by_region, batch(), far()).await;
    assert!(matches!(reply(&answers, "i-00001"), Reply::Failed(_)));
}

#[tokio::test]
async fn answers_carry_the_time_their_call_was_sent() {
    let d = Scripted::new();
    let before = Timestamp::now();
    let (answers, _) = describe_all(&d, &ids(4), batch(), far()).await;
    let after = Timestamp::now();
    for answer in answers.values() {
        assert!(before <= answer.asked_at && answer.asked_at <= after);
    }
}

#[tokio::test]
async fn a_failing_batch_is_bisected_until_only_the_bad_id_is_unknown() {
    let d = Scripted {
        poison: Some("i-00136".into()),
        ..Scripted::new()
    };
    let (answers, _) = describe_all(&d, &ids(200), batch(), far()).await;
    let failed: Vec<&String> = answers
        .iter()
        .filter(|(_, a)| matches!(a.reply, Reply::Failed(_)))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(failed, vec!["i-00136"]);
    assert_eq!(answers.len(), 200);
    // 1 + 2 per halving level: bounded by 2 log2(200) + 1.
    let filtered = d.sizes.lock().unwrap().clone();
    assert!(filtered.len() <= 17, "{filtered:?}");
}

#[tokio::test]
async fn throttling_is_not_bisected() {
    let d = Scripted {
        poison: Some("i-00136".into()),
        kind: AwsErrorKind::Throttled,
        ..Scripted::new()
    };
    let (answers, stats) = describe_all(&d, &ids(200), batch(), far()).await;
    assert_eq!(d.calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.throttled, 1);
    assert!(
        answers
            .values()
            .all(|a| matches!(a.reply, Reply::Failed(_)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_call_times_out_and_the_deadline_bounds_the_sweep() {
    let d = Scripted {
        hang: true,
        ..Scripted::new()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (answers, stats) = describe_all(&d, &ids(400), batch(), deadline).await;
    assert!(tokio::time::Instant::now() <= deadline);
    assert!(stats.timed_out >= 1);
    assert_eq!(answers.len(), 400);
    assert!(
        answers
            .values()
            .all(|a| matches!(a.reply, Reply::Failed(_)))
    );
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
    assert!(!in_scope(&workspace("a", "Online", "external", false)));
    assert!(
        !in_scope(&workspace("a", "Online", "ec2", true)),
        "being deleted"
    );
}

/// The defaults of `tend run`.
fn settings() -> SweepSettings {
    let args = crate::config::RunArgs::from_flags(["--region", "us-east-1"]).unwrap();
    SweepSettings::from_args(&args, "us-east-1")
}

#[test]
fn least_recently_observed_go_first_and_the_cap_holds() {
    let targets: Vec<Target> = (0..5)
        .map(|i| {
            target(
                &workspace(&format!("w{i}"), "Online", "ec2", false),
                "us-east-1",
            )
            .unwrap()
        })
        .collect();
    let mut previous = Snapshot::default();
    for (i, t) in targets.iter().enumerate() {
        if i != 3 {
            previous.entries.insert(
                t.uid.clone(),
                Entry {
                    instance_id: t.instance_id.clone(),
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

#[tokio::test(start_paused = true)]
async fn a_drained_bucket_waits_instead_of_spinning() {
    let b = TokenBucket::new(15.0, 75);
    b.drain();
    for _ in 0..20 {
        b.acquire().await;
    }
    assert!(b.available() < 1.0);
}

#[tokio::test]
async fn a_steady_sweep_wakes_nothing() {
    let targets: Vec<Target> = (0..50)
        .map(|i| {
            target(
                &workspace(&format!("w{i:02}"), "Online", "ec2", false),
                "us-east-1",
            )
            .unwrap()
        })
        .collect();
    let mut by_region: HashMap<String, Vec<String>> = HashMap::new();
    for t in &targets {
        by_region
            .entry(t.region.clone())
            .or_default()
            .push(t.instance_id.clone());
    }
    let d = Scripted::new();
    let (answers, _) = describe_all(&d, &by_region, batch(), far()).await;
    let now = Timestamp::now();
    let (first, woken, _) = assemble(
        &Snapshot::default(),
        &targets,
        &targets,
        &answers,
        now,
        &settings(),
    );
    assert_eq!(woken.len(), 50, "first answers wake everyone once");
    let (_, woken, _) = assemble(&first, &targets, &targets, &answers, now, &settings());
    assert!(woken.is_empty(), "{woken:?}");
}

#[tokio::test]
async fn cancelling_stops_a_sweep_in_progress() {
    let (store, mut writer) = kube::runtime::reflector::store::<Workspace>();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(workspace(
        "w", "Online", "ec2", false,
    )));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let describer = Arc::new(Scripted {
        hang: true,
        ..Scripted::new()
    });
    let (published, _snapshot) = watch::channel(Arc::new(Snapshot::default()));
    let (wake, _woken) = futures::channel::mpsc::unbounded();
    let sweeper = Sweeper::new(
        describer.clone(),
        settings(),
        store,
        published,
        wake,
        Arc::new(Metrics::default()),
    );
    let cancel = CancellationToken::new();
    let running = tokio::spawn(sweeper.run(cancel.clone()));
    describer.called.notified().await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the sweeper stops promptly")
        .unwrap();
}

#[test]
fn unknown_answers_turn_stale_only_after_stale_after() {
    let t = target(&workspace("w", "Online", "ec2", false), "us-east-1").unwrap();
    let now = Timestamp::from_second(100_000).unwrap();
    let failed = HashMap::from([(
        t.instance_id.clone(),
        Answer {
            asked_at: now,
            reply: Reply::Failed("throttled".into()),
        },
    )]);
    let stale_after = settings().stale_after.as_secs() as i64;
    for (clean_ago, stale) in [(stale_after - 1, false), (stale_after + 1, true)] {
        let mut previous = Snapshot::default();
        previous.entries.insert(
            t.uid.clone(),
            Entry {
                instance_id: t.instance_id.clone(),
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
        let (next, _, _) = assemble(&previous, &targets, &targets, &failed, now, &settings());
        let entry = next.get(&t.uid).unwrap();
        assert!(matches!(entry.observation, Observation::Unknown { .. }));
        assert_eq!(entry.stale, stale, "clean answer {clean_ago}s ago");
        assert_eq!(entry.last_clean_at.as_second(), 100_000 - clean_ago);
    }
}

#[tokio::test]
async fn a_proven_absence_is_settled_and_not_asked_about_again() {
    let gone = target(&workspace("gone", "Offline", "ec2", false), "us-east-1").unwrap();
    let d = Scripted {
        omit: vec![gone.instance_id.clone()],
        ..Scripted::new()
    };
    let targets = vec![gone.clone()];
    let settings = settings();
    // First sweep: asked about, and EC2 named it as not found.
    let ids = ids_to_describe(&targets, &Snapshot::default());
    assert_eq!(ids["us-east-1"], vec![gone.instance_id.clone()]);
    let now = Timestamp::now();
    let absent = HashMap::from([(
        gone.instance_id.clone(),
        Answer {
            asked_at: now,
            reply: Reply::NotFound,
        },
    )]);
    let (first, _, _) = assemble(
        &Snapshot::default(),
        &targets,
        &targets,
        &absent,
        now,
        &settings,
    );
    let entry = first.get(&gone.uid).unwrap();
    assert!(entry.absent);
    assert!(matches!(entry.observation, Observation::NotRunning(_)));
    // Next sweep: nothing to ask, and the answer stands, stamped anew.
    assert!(ids_to_describe(&targets, &first).is_empty());
    let (answers, _) = describe_all(&d, &ids_to_describe(&targets, &first), batch(), far()).await;
    assert!(answers.is_empty());
    assert_eq!(d.calls.load(Ordering::SeqCst), 0);
    let later = now + jiff::SignedDuration::from_secs(60);
    let (second, woken, _) = assemble(&first, &targets, &targets, &answers, later, &settings);
    let entry = second.get(&gone.uid).unwrap();
    assert!(entry.absent);
    assert_eq!(entry.observed_at, later);
    assert!(woken.is_empty(), "nothing changed");
}

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use aws_sdk_ec2::types::{
    EbsInstanceBlockDevice, Instance, InstanceBlockDeviceMapping, InstanceState, InstanceStateName,
    Placement,
};

/// A describer that answers from a script.
struct Scripted {
    bucket: Arc<TokenBucket>,
    /// A call naming this id fails.
    poison: Option<String>,
    kind: ErrorKind,
    hang: bool,
    /// Left out of filtered answers although they exist.
    omit: Vec<String>,
    /// Not-found errors name only the first unknown id, as moto's do.
    name_first_only: bool,
    calls: AtomicUsize,
    sizes: Mutex<Vec<usize>>,
    /// The ids of each describe by id.
    named: Mutex<Vec<Vec<String>>>,
}

impl Scripted {
    fn new() -> Self {
        Scripted {
            bucket: Arc::new(TokenBucket::new(1e6, 1_000_000)),
            poison: None,
            kind: ErrorKind::Transient,
            hang: false,
            omit: Vec::new(),
            name_first_only: false,
            calls: AtomicUsize::new(0),
            sizes: Mutex::new(Vec::new()),
            named: Mutex::new(Vec::new()),
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

impl Paced for Scripted {
    fn read_bucket(&self, _region: &str) -> Arc<TokenBucket> {
        self.bucket.clone()
    }
}

impl Describer for Scripted {
    async fn describe(&self, region: &str, ids: &[String]) -> Result<Vec<Seen>, CallError> {
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
        Ok(listed.iter().map(Seen::of).collect())
    }

    async fn describe_named(&self, region: &str, ids: &[String]) -> Result<Vec<Seen>, CallError> {
        self.named.lock().unwrap().push(ids.to_vec());
        let listed = self.answer(region, ids).await?;
        let mut unknown: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !listed.iter().any(|i| i.instance_id() == Some(*id)))
            .collect();
        if unknown.is_empty() {
            return Ok(listed.iter().map(Seen::of).collect());
        }
        // EC2 names every unknown id; moto only the first.
        if self.name_first_only {
            unknown.truncate(1);
        }
        Err(CallError::instances_not_found(&unknown))
    }
}

impl Scripted {
    async fn answer(&self, _region: &str, ids: &[String]) -> Result<Vec<Instance>, CallError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        if let Some(bad) = &self.poison
            && ids.contains(bad)
        {
            return Err(CallError {
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
    BatchSettings {
        batch_size: 200,
        probe_timeout: Duration::from_secs(10),
        max_in_flight: 8,
    }
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
        kind: ErrorKind::Throttled,
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
        kind: ErrorKind::Throttled,
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

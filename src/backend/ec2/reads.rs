//! The one batcher of EC2 reads. The sweep's describes, a reconcile's look,
//! a launch's check on its instance, a teardown's search for what a
//! Workspace owns: each is a question to [`Reads`], and questions that come
//! close together go out as one describe per region and batch, with the
//! same timeouts, rate limits, bisection and proof of absence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::join_all;
use jiff::Timestamp;
use tokio::time::Instant;

use super::batch::{paced, unanswered};
use super::{Answer, BatchSettings, Regions, Reply, describe_all};
use crate::backend::batcher::{Batcher, Window};
use crate::backend::{CallStats, ErrorKind};

/// One thing to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Read {
    /// An instance, by its id.
    Instance { region: String, id: String },
    /// The instances tagged with a Workspace's uid (in tend's cluster).
    Owned { region: String, uid: String },
}

pub type Reads = Batcher<Read, Answer, CallStats>;

/// How long a window of reads stays open. A lone look waits at most
/// `MAX_WAIT` for company; that is far below any interval tend acts on.
const IDLE: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// The batcher of every EC2 read; a window closes at once when it holds a
/// full batch.
pub fn reads(regions: Arc<Regions>, batch: BatchSettings, cluster: String) -> Reads {
    let window = Window {
        idle: IDLE,
        max_wait: MAX_WAIT,
        max_items: batch.batch_size.max(1),
    };
    Batcher::new(
        window,
        Arc::new(move |items, deadline| {
            let regions = regions.clone();
            let cluster = cluster.clone();
            async move { read_all(&regions, items, batch, &cluster, deadline).await }.boxed()
        }),
    )
}

/// One round: the instances asked about by id through [`describe_all`],
/// the owners' instances by their uid tags, side by side.
async fn read_all(
    regions: &Regions,
    items: Vec<Read>,
    batch: BatchSettings,
    cluster: &str,
    deadline: Instant,
) -> (HashMap<Read, Answer>, CallStats) {
    let mut ids: HashMap<String, Vec<String>> = HashMap::new();
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    for item in items {
        match item {
            Read::Instance { region, id } => ids.entry(region).or_default().push(id),
            Read::Owned { region, uid } => owners.entry(region).or_default().push(uid),
        }
    }
    let by_id = async {
        if ids.is_empty() {
            return (HashMap::new(), CallStats::default());
        }
        describe_all(regions, &ids, batch, deadline).await
    };
    let ((found, mut stats), (owned, owned_stats)) =
        futures::join!(by_id, owned_all(regions, &owners, batch, cluster, deadline));
    stats.add(&owned_stats);
    let mut answers = HashMap::with_capacity(found.len() + owned.len());
    for (region, ids) in ids {
        for id in ids {
            if let Some(answer) = found.get(&id) {
                answers.insert(
                    Read::Instance {
                        region: region.clone(),
                        id,
                    },
                    answer.clone(),
                );
            }
        }
    }
    answers.extend(owned);
    (answers, stats)
}

/// The instances of each owner, in batches of uids per region; a batch
/// that fails leaves its owners without a clean answer.
async fn owned_all(
    regions: &Regions,
    owners: &HashMap<String, Vec<String>>,
    batch: BatchSettings,
    cluster: &str,
    deadline: Instant,
) -> (HashMap<Read, Answer>, CallStats) {
    let rounds = owners.iter().flat_map(|(region, uids)| {
        uids.chunks(batch.batch_size.max(1))
            .map(move |chunk| owned_batch(regions, region, chunk, batch, cluster))
    });
    let done = tokio::time::timeout_at(deadline, join_all(rounds)).await;
    let mut answers = HashMap::new();
    let mut stats = CallStats::default();
    let Ok(done) = done else {
        stats.timed_out += 1;
        return (answers, stats);
    };
    for (region, uids, asked_at, result) in done {
        let reply = |uid: &String| match &result {
            Ok(seen) => Reply::Owned(
                seen.iter()
                    .filter(|s| s.uid.as_ref() == Some(uid))
                    .cloned()
                    .collect(),
            ),
            Err(e) => Reply::Failed(e.clone()),
        };
        match &result {
            Ok(_) => stats.ok += 1,
            Err(e) if e.kind == ErrorKind::Throttled => stats.throttled += 1,
            Err(_) => stats.failed += 1,
        }
        for uid in uids {
            let answer = Answer {
                asked_at,
                reply: reply(&uid),
            };
            answers.insert(
                Read::Owned {
                    region: region.to_owned(),
                    uid,
                },
                answer,
            );
        }
    }
    (answers, stats)
}

async fn owned_batch<'a>(
    regions: &Regions,
    region: &'a str,
    uids: &[String],
    batch: BatchSettings,
    cluster: &str,
) -> (
    &'a str,
    Vec<String>,
    Timestamp,
    Result<Vec<super::Seen>, crate::backend::CallError>,
) {
    let call = regions.describe_owned(region, uids, cluster);
    let (asked_at, _, result) = paced(regions, region, batch.probe_timeout, call).await;
    let result = match result {
        Ok(result) => result,
        Err(_) => Err(unanswered(format!(
            "timed out after {:?}",
            batch.probe_timeout
        ))),
    };
    (region, uids.to_vec(), asked_at, result)
}

/// Instances a look just described. A reconcile looks, then its launch
/// step checks the same instance (is it running, is it tend's, is the
/// volume attached); an answer this young serves that check instead of a
/// second describe. Looks and sweeps never read it: their answers must be
/// their own. A sweep's answers are not kept: they are many, and rarely
/// followed by a launch step.
#[derive(Default)]
pub struct Recent {
    kept: Mutex<HashMap<String, (Timestamp, super::Seen)>>,
}

impl Recent {
    /// How long after its call was sent an answer serves.
    const FOR: Duration = MAX_WAIT;
    /// At most this many are kept.
    const AT_MOST: usize = 1024;

    pub fn keep<'a>(&self, answers: impl Iterator<Item = &'a Answer>) {
        let mut kept = self.kept.lock().expect("recent lock");
        let now = Timestamp::now();
        kept.retain(|_, (asked_at, _)| young(*asked_at, now));
        for answer in answers {
            if kept.len() >= Self::AT_MOST {
                break;
            }
            if let Reply::Found(seen) = &answer.reply
                && young(answer.asked_at, now)
            {
                kept.insert(seen.id.clone(), (answer.asked_at, seen.clone()));
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<super::Seen> {
        let kept = self.kept.lock().expect("recent lock");
        kept.get(id)
            .filter(|(asked_at, _)| young(*asked_at, Timestamp::now()))
            .map(|(_, seen)| seen.clone())
    }
}

fn young(asked_at: Timestamp, now: Timestamp) -> bool {
    crate::core::elapsed(asked_at, now).is_some_and(|age| age < Recent::FOR)
}

//! The one batcher of EC2 reads. The sweep's describes, a reconcile's look,
//! a launch's check on its instance and its data volume, a teardown's search
//! for what a Workspace owns: each is a question to [`Reads`], and questions
//! that come close together go out as one describe per region and batch,
//! with the same timeouts, rate limits, bisection and proof of absence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::join_all;
use jiff::Timestamp;
use tokio::time::Instant;

use super::batch::{Listed, paced, unanswered_in};
use super::{Answer, BatchSettings, Regions, Reply, Seen, VolumeSeen, describe_all};
use crate::backend::batcher::{Batcher, Window};
use crate::backend::{CallError, CallStats, ErrorKind};

/// One thing to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Read {
    /// An instance, by its id.
    Instance { region: String, id: String },
    /// A volume, by its id.
    Volume { region: String, id: String },
    /// The instances tagged with a Workspace's uid (in tend's cluster).
    Owned { region: String, uid: String },
    /// The volumes tagged with a Workspace's uid (in tend's cluster).
    OwnedVolumes { region: String, uid: String },
}

impl Read {
    /// The describe that answers it.
    pub fn operation(&self) -> &'static str {
        match self {
            Read::Instance { .. } | Read::Owned { .. } => Seen::OPERATION,
            Read::Volume { .. } | Read::OwnedVolumes { .. } => VolumeSeen::OPERATION,
        }
    }
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

/// The items of one round, sorted by what is asked and the region.
#[derive(Default)]
struct Sorted {
    instances: HashMap<String, Vec<String>>,
    volumes: HashMap<String, Vec<String>>,
    instance_owners: HashMap<String, Vec<String>>,
    volume_owners: HashMap<String, Vec<String>>,
}

/// One round: instances and volumes asked about by id through
/// [`describe_all`], owners' instances and volumes by their uid tags, all
/// side by side.
async fn read_all(
    regions: &Regions,
    items: Vec<Read>,
    batch: BatchSettings,
    cluster: &str,
    deadline: Instant,
) -> (HashMap<Read, Answer>, CallStats) {
    let mut sorted = Sorted::default();
    for item in items {
        let (map, region, key) = match item {
            Read::Instance { region, id } => (&mut sorted.instances, region, id),
            Read::Volume { region, id } => (&mut sorted.volumes, region, id),
            Read::Owned { region, uid } => (&mut sorted.instance_owners, region, uid),
            Read::OwnedVolumes { region, uid } => (&mut sorted.volume_owners, region, uid),
        };
        map.entry(region).or_default().push(key);
    }
    let (instances, volumes, instance_owners, volume_owners) = futures::join!(
        by_id::<Seen>(regions, sorted.instances, batch, deadline),
        by_id::<VolumeSeen>(regions, sorted.volumes, batch, deadline),
        owned_all::<Seen>(regions, &sorted.instance_owners, batch, cluster, deadline),
        owned_all::<VolumeSeen>(regions, &sorted.volume_owners, batch, cluster, deadline),
    );
    let mut answers = HashMap::new();
    let mut stats = CallStats::default();
    for (part, part_stats) in [instances, volumes, instance_owners, volume_owners] {
        answers.extend(part);
        stats.add(&part_stats);
    }
    (answers, stats)
}

/// What [`Read`]s can ask about by id, and by owner.
trait Readable: Listed {
    fn by_id(region: String, id: String) -> Read;
    fn by_owner(region: String, uid: String) -> Read;
    /// The reply to a question by owner.
    fn owned(all: Vec<Self>) -> Reply;
    /// The `tend.dev/workspace-uid` tag.
    fn uid(&self) -> Option<&str>;
    fn describe_owned(
        regions: &Regions,
        region: &str,
        uids: &[String],
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<Self>, CallError>> + Send;
}

impl Readable for Seen {
    fn by_id(region: String, id: String) -> Read {
        Read::Instance { region, id }
    }
    fn by_owner(region: String, uid: String) -> Read {
        Read::Owned { region, uid }
    }
    fn owned(all: Vec<Self>) -> Reply {
        Reply::Owned(all)
    }
    fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }
    fn describe_owned(
        regions: &Regions,
        region: &str,
        uids: &[String],
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<Self>, CallError>> + Send {
        regions.describe_owned(region, uids, cluster)
    }
}

impl Readable for VolumeSeen {
    fn by_id(region: String, id: String) -> Read {
        Read::Volume { region, id }
    }
    fn by_owner(region: String, uid: String) -> Read {
        Read::OwnedVolumes { region, uid }
    }
    fn owned(all: Vec<Self>) -> Reply {
        Reply::OwnedVolumes(all)
    }
    fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }
    fn describe_owned(
        regions: &Regions,
        region: &str,
        uids: &[String],
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<Self>, CallError>> + Send {
        regions.describe_owned_volumes(region, uids, cluster)
    }
}

/// Instances or volumes by id, each answer under the question that asked.
async fn by_id<T: Readable>(
    regions: &Regions,
    ids: HashMap<String, Vec<String>>,
    batch: BatchSettings,
    deadline: Instant,
) -> (HashMap<Read, Answer>, CallStats)
where
    Regions: super::Describer<T>,
{
    if ids.is_empty() {
        return (HashMap::new(), CallStats::default());
    }
    let (mut found, stats) = describe_all::<T, _>(regions, &ids, batch, deadline).await;
    let mut answers = HashMap::with_capacity(found.len());
    for (region, ids) in ids {
        for id in ids {
            if let Some(answer) = found.remove(&id) {
                answers.insert(T::by_id(region.clone(), id), answer);
            }
        }
    }
    (answers, stats)
}

/// What each owner has, in batches of uids per region; a batch that fails
/// leaves its owners without a clean answer.
async fn owned_all<T: Readable>(
    regions: &Regions,
    owners: &HashMap<String, Vec<String>>,
    batch: BatchSettings,
    cluster: &str,
    deadline: Instant,
) -> (HashMap<Read, Answer>, CallStats) {
    let rounds = owners.iter().flat_map(|(region, uids)| {
        uids.chunks(batch.batch_size.max(1))
            .map(move |chunk| owned_batch::<T>(regions, region, chunk, batch, cluster))
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
            Ok(seen) => T::owned(
                seen.iter()
                    .filter(|s| s.uid() == Some(uid.as_str()))
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
            answers.insert(T::by_owner(region.to_owned(), uid), answer);
        }
    }
    (answers, stats)
}

async fn owned_batch<'a, T: Readable>(
    regions: &Regions,
    region: &'a str,
    uids: &[String],
    batch: BatchSettings,
    cluster: &str,
) -> (&'a str, Vec<String>, Timestamp, Result<Vec<T>, CallError>) {
    let call = T::describe_owned(regions, region, uids, cluster);
    let (asked_at, _, result) = paced(regions, region, batch.probe_timeout, call).await;
    let result = match result {
        Ok(result) => result,
        Err(_) => Err(unanswered_in(
            T::OPERATION,
            format!("timed out after {:?}", batch.probe_timeout),
        )),
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
    kept: Mutex<HashMap<String, (Timestamp, Seen)>>,
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

    pub fn get(&self, id: &str) -> Option<Seen> {
        let kept = self.kept.lock().expect("recent lock");
        kept.get(id)
            .filter(|(asked_at, _)| young(*asked_at, Timestamp::now()))
            .map(|(_, seen)| seen.clone())
    }
}

fn young(asked_at: Timestamp, now: Timestamp) -> bool {
    crate::core::elapsed(asked_at, now).is_some_and(|age| age < Recent::FOR)
}

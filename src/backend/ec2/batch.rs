//! Batched, bisecting, bounded describes of instances and volumes.
//!
//! One call per batch of ids; a batch that fails is split in halves until the
//! failing ids are isolated, so one bad id never poisons the rest. Throttling
//! and timeouts are never bisected (that would multiply the calls AWS just
//! refused, or the slow ones); the whole batch is Unknown. Ids a successful
//! describe leaves out are asked about by id, in batches, before anything
//! counts as absent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jiff::Timestamp;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Seen, TokenBucket, VolumeSeen};
use crate::backend::{CallError, CallStats, ErrorKind};

/// What a batched describe lists: an instance ([`Seen`]) or a volume
/// ([`VolumeSeen`]).
pub trait Listed: Clone + Send + Sync + 'static {
    /// The describe that lists it.
    const OPERATION: &'static str;
    /// Its id; empty if the answer named none.
    fn id(&self) -> &str;
    /// The reply for one a describe listed.
    fn found(self) -> Reply;
    /// The ids that a failed describe naming ids says do not exist, or `None`
    /// if the failure is not that.
    fn absent_named(error: &CallError) -> Option<Vec<String>>;
}

/// How describes are paced: a region's describe-family rate limit, and the
/// bound on calls in flight.
pub trait Paced: Send + Sync + 'static {
    /// The describe-family rate limit of a region, shared with other callers.
    fn read_bucket(&self, region: &str) -> Arc<TokenBucket>;
    /// The bound on describes in flight, where several rounds share one.
    fn slots(&self) -> Option<&Semaphore> {
        None
    }
}

/// Something that can describe instances (or volumes) in batches: EC2, or a
/// simulation.
pub trait Describer<T: Listed = Seen>: Paced {
    /// One batch describe with the id filter (`instance-id`, `volume-id`): it
    /// lists what exists and silently leaves out the rest. The caller has
    /// already taken a token.
    fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<T>, CallError>> + Send;
    /// One describe naming the ids: it fails as a whole with a not-found
    /// error naming unknown ids, if any is unknown. The caller has already
    /// taken a token.
    fn describe_named(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<T>, CallError>> + Send;
}

impl Paced for super::Regions {
    fn read_bucket(&self, region: &str) -> Arc<TokenBucket> {
        super::Regions::read_bucket(self, region)
    }

    fn slots(&self) -> Option<&Semaphore> {
        Some(&self.slots)
    }
}

impl Describer<Seen> for super::Regions {
    fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Seen>, CallError>> + Send {
        self.describe_batch(region, ids)
    }

    fn describe_named(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Seen>, CallError>> + Send {
        self.describe_by_ids(region, ids)
    }
}

impl Describer<VolumeSeen> for super::Regions {
    fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<VolumeSeen>, CallError>> + Send {
        self.describe_volumes_batch(region, ids)
    }

    fn describe_named(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<VolumeSeen>, CallError>> + Send {
        self.describe_volumes_by_ids(region, ids)
    }
}

/// How one id fared, stamped with the time the call that answered it was
/// sent: an answer to a question asked before a restart must not undo it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub asked_at: Timestamp,
    pub reply: Reply,
}

#[derive(Debug, Clone)]
pub enum Reply {
    /// A describe listed the instance.
    Found(Seen),
    /// Asked about by id, EC2 answered that the instance does not exist.
    NotFound,
    /// Asked about by owner: the instances tagged with that Workspace's uid.
    Owned(Vec<Seen>),
    /// A describe listed the volume.
    Volume(VolumeSeen),
    /// Asked about by owner: the volumes tagged with that Workspace's uid.
    OwnedVolumes(Vec<VolumeSeen>),
    /// No clean answer: the call failed, timed out, or an omission could not
    /// be confirmed by id.
    Failed(CallError),
}

impl Answer {
    pub fn failed(asked_at: Timestamp, error: CallError) -> Self {
        Answer {
            asked_at,
            reply: Reply::Failed(error),
        }
    }
}

/// A describe that gave no answer for a reason of tend's own.
pub fn unanswered_in(operation: &'static str, why: impl Into<String>) -> CallError {
    CallError {
        operation,
        kind: ErrorKind::Transient,
        code: None,
        message: why.into(),
    }
}

/// How describes are batched and bounded.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Instance ids per DescribeInstances.
    pub batch_size: usize,
    /// The timeout of each call.
    pub probe_timeout: Duration,
    /// Calls in flight at once.
    pub max_in_flight: usize,
}

/// How a batch asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// The `instance-id` filter: one unknown id cannot fail the call.
    Filter,
    /// By id, to prove that ids the filter left out do not exist.
    ById,
}

struct Job {
    region: String,
    ids: Vec<String>,
    ask: Ask,
}

/// Describes every `(region, id)`, bounded by `deadline`: whatever has no
/// answer by then is `Failed`. An id that a filtered describe leaves out is
/// asked about by id; only EC2 naming it as not found is `NotFound`.
pub async fn describe_all<T: Listed, D: Describer<T>>(
    describer: &D,
    ids_by_region: &HashMap<String, Vec<String>>,
    settings: BatchSettings,
    deadline: Instant,
) -> (HashMap<String, Answer>, CallStats) {
    let mut pending: VecDeque<Job> = ids_by_region
        .iter()
        .flat_map(|(region, ids)| {
            ids.chunks(settings.batch_size.max(1))
                .map(move |chunk| Job {
                    region: region.clone(),
                    ids: chunk.to_vec(),
                    ask: Ask::Filter,
                })
        })
        .collect();
    let started = Timestamp::now();
    let batch_size = settings.batch_size.max(1);
    let mut answers = HashMap::new();
    let mut stats = CallStats::default();
    let mut in_flight = FuturesUnordered::new();
    // Ids that filtered describes left out, per region, waiting to be asked
    // about by id in batches of their own once that region's filtered
    // describes are done.
    let mut unconfirmed: HashMap<String, Vec<String>> = HashMap::new();
    let mut filters_in_flight: HashMap<String, usize> = HashMap::new();
    loop {
        unconfirmed.retain(|region, ids| {
            let filtering = filters_in_flight.get(region).is_some_and(|n| *n > 0)
                || pending
                    .iter()
                    .any(|j| j.ask == Ask::Filter && j.region == *region);
            if filtering && ids.len() < batch_size {
                return true;
            }
            for chunk in ids.chunks(batch_size) {
                pending.push_back(Job {
                    region: region.clone(),
                    ids: chunk.to_vec(),
                    ask: Ask::ById,
                });
            }
            false
        });
        while in_flight.len() < settings.max_in_flight.max(1)
            && let Some(job) = pending.pop_front()
        {
            if job.ask == Ask::Filter {
                *filters_in_flight.entry(job.region.clone()).or_default() += 1;
            }
            in_flight.push(async move {
                let call = async {
                    match job.ask {
                        Ask::Filter => describer.describe(&job.region, &job.ids).await,
                        Ask::ById => describer.describe_named(&job.region, &job.ids).await,
                    }
                };
                let (asked_at, waited, result) =
                    paced(describer, &job.region, settings.probe_timeout, call).await;
                (job, asked_at, waited, result)
            });
        }
        let next = match tokio::time::timeout_at(deadline, in_flight.next()).await {
            Ok(Some(done)) => done,
            Ok(None) => break,
            Err(_) => {
                // Out of time: nothing unanswered may stall the sweep.
                drop(in_flight);
                for id in ids_by_region.values().flatten() {
                    answers.entry(id.clone()).or_insert_with(|| {
                        Answer::failed(
                            started,
                            unanswered_in(T::OPERATION, "no answer within the deadline"),
                        )
                    });
                }
                stats.timed_out += 1;
                return (answers, stats);
            }
        };
        let (job, asked_at, waited, result) = next;
        stats.limiter_wait += waited;
        match job.ask {
            Ask::ById => stats.confirmations += 1,
            Ask::Filter => {
                if let Some(n) = filters_in_flight.get_mut(&job.region) {
                    *n -= 1;
                }
            }
        }
        match result {
            Ok(Ok(listed)) => {
                stats.ok += 1;
                let mut by_id: HashMap<String, T> =
                    listed.into_iter().map(|i| (i.id().to_owned(), i)).collect();
                let mut left_out = Vec::new();
                for id in job.ids {
                    let Some(found) = by_id.remove(id.as_str()) else {
                        left_out.push(id);
                        continue;
                    };
                    let reply = found.found();
                    answers.insert(id, Answer { asked_at, reply });
                }
                match job.ask {
                    // An omission proves nothing: ask about those ids by name.
                    Ask::Filter => unconfirmed.entry(job.region).or_default().extend(left_out),
                    _ => fail(
                        &mut answers,
                        &left_out,
                        asked_at,
                        &unanswered_in(T::OPERATION, "left out of an answer that named it"),
                    ),
                }
            }
            Ok(Err(e)) => {
                if job.ask == Ask::ById
                    && let Some(named) = T::absent_named(&e)
                {
                    stats.ok += 1;
                    confirmed_absent(&mut pending, &mut answers, job, asked_at, &named, &e);
                    continue;
                }
                let whole_batch = matches!(e.kind, ErrorKind::Throttled | ErrorKind::Auth);
                if e.kind == ErrorKind::Throttled {
                    stats.throttled += 1;
                } else {
                    stats.failed += 1;
                }
                split_or_fail(&mut pending, &mut answers, job, asked_at, whole_batch, &e);
            }
            Err(_) => {
                stats.timed_out += 1;
                let why = unanswered_in(
                    T::OPERATION,
                    format!("timed out after {:?}", settings.probe_timeout),
                );
                split_or_fail(&mut pending, &mut answers, job, asked_at, true, &why);
            }
        }
    }
    (answers, stats)
}

/// One describe as every describe is made: a slot among the calls in
/// flight (shared with every other round of reads, where there is one),
/// a token of the region's bucket, then the call under its own timeout.
/// Returns when the call was sent and how long the bucket made it wait.
pub(super) async fn paced<D: Paced + ?Sized, T>(
    describer: &D,
    region: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, CallError>>,
) -> (
    Timestamp,
    Duration,
    Result<Result<T, CallError>, tokio::time::error::Elapsed>,
) {
    let _slot = match describer.slots() {
        Some(slots) => slots.acquire().await.ok(),
        None => None,
    };
    let waited = describer.read_bucket(region).acquire().await;
    let asked_at = Timestamp::now();
    (asked_at, waited, tokio::time::timeout(timeout, call).await)
}

/// A describe by id failed with not-found: the ids it names are proven
/// absent. EC2 names every unknown id, moto only the first, so the rest are
/// asked about again. A not-found that names none of them proves nothing.
fn confirmed_absent(
    pending: &mut VecDeque<Job>,
    answers: &mut HashMap<String, Answer>,
    job: Job,
    asked_at: Timestamp,
    named: &[String],
    error: &CallError,
) {
    let (absent, rest): (Vec<String>, Vec<String>) =
        job.ids.into_iter().partition(|id| named.contains(id));
    if absent.is_empty() {
        fail(answers, &rest, asked_at, error);
        return;
    }
    for id in absent {
        let reply = Reply::NotFound;
        answers.insert(id, Answer { asked_at, reply });
    }
    if !rest.is_empty() {
        pending.push_back(Job {
            region: job.region,
            ids: rest,
            ask: Ask::ById,
        });
    }
}

fn split_or_fail(
    pending: &mut VecDeque<Job>,
    answers: &mut HashMap<String, Answer>,
    mut job: Job,
    asked_at: Timestamp,
    whole_batch: bool,
    why: &CallError,
) {
    if whole_batch || job.ids.len() < 2 {
        fail(answers, &job.ids, asked_at, why);
        return;
    }
    let second = job.ids.split_off(job.ids.len() / 2);
    pending.push_back(Job {
        region: job.region.clone(),
        ids: second,
        ask: job.ask,
    });
    pending.push_back(job);
}

fn fail(
    answers: &mut HashMap<String, Answer>,
    ids: &[String],
    asked_at: Timestamp,
    why: &CallError,
) {
    for id in ids {
        answers.insert(id.clone(), Answer::failed(asked_at, why.clone()));
    }
}

#[cfg(test)]
mod tests;

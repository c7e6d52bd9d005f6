//! Batched, bisecting, bounded DescribeInstances.
//!
//! One call per batch of ids; a batch that fails is split in halves until the
//! failing ids are isolated, so one bad id never poisons the rest. Throttling
//! and timeouts are never bisected (that would multiply the calls AWS just
//! refused, or the slow ones); the whole batch is Unknown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Instance;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::backend::ec2::{AwsError, AwsErrorKind, TokenBucket};

/// Something that can describe instances in batches: EC2, or a simulation.
pub trait Describer: Send + Sync + 'static {
    /// The describe-family rate limit of a region, shared with other callers.
    fn read_bucket(&self, region: &str) -> Arc<TokenBucket>;
    /// One batch describe. The caller has already taken a token.
    fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Instance>, AwsError>> + Send;
}

impl Describer for crate::backend::ec2::Ec2Backend {
    fn read_bucket(&self, region: &str) -> Arc<TokenBucket> {
        crate::backend::ec2::Ec2Backend::read_bucket(self, region)
    }

    fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Instance>, AwsError>> + Send {
        self.describe_batch(region, ids)
    }
}

/// How one id fared.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The describe succeeded and listed the instance.
    Found(Box<Instance>),
    /// The describe succeeded and did not list it.
    Missing,
    /// No successful describe covered it.
    Failed(String),
}

/// Counters of one round of describes, for metrics and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    pub ok: usize,
    pub throttled: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub limiter_wait: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub batch_size: usize,
    pub probe_timeout: Duration,
    pub max_in_flight: usize,
}

/// Describes every `(region, id)`, bounded by `deadline`: whatever has no
/// answer by then is `Failed`.
pub async fn describe_all<D: Describer>(
    describer: &D,
    ids_by_region: &HashMap<String, Vec<String>>,
    settings: BatchSettings,
    deadline: Instant,
) -> (HashMap<String, Answer>, CallStats) {
    let mut pending: VecDeque<(String, Vec<String>)> = ids_by_region
        .iter()
        .flat_map(|(region, ids)| {
            ids.chunks(settings.batch_size.max(1))
                .map(move |chunk| (region.clone(), chunk.to_vec()))
        })
        .collect();
    let mut answers = HashMap::new();
    let mut stats = CallStats::default();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < settings.max_in_flight.max(1)
            && let Some((region, ids)) = pending.pop_front()
        {
            in_flight.push(async move {
                let waited = describer.read_bucket(&region).acquire().await;
                let result =
                    tokio::time::timeout(settings.probe_timeout, describer.describe(&region, &ids))
                        .await;
                (region, ids, waited, result)
            });
        }
        let next = match tokio::time::timeout_at(deadline, in_flight.next()).await {
            Ok(Some(done)) => done,
            Ok(None) => break,
            Err(_) => {
                // Out of time: nothing unanswered may stall the sweep.
                drop(in_flight);
                for (_, ids) in pending {
                    fail(&mut answers, &ids, "no answer within the sweep deadline");
                }
                for id in ids_by_region.values().flatten() {
                    answers.entry(id.clone()).or_insert_with(|| {
                        Answer::Failed("no answer within the sweep deadline".into())
                    });
                }
                stats.timed_out += 1;
                return (answers, stats);
            }
        };
        let (region, ids, waited, result) = next;
        stats.limiter_wait += waited;
        match result {
            Ok(Ok(instances)) => {
                stats.ok += 1;
                let mut by_id: HashMap<&str, &Instance> = instances
                    .iter()
                    .filter_map(|i| Some((i.instance_id()?, i)))
                    .collect();
                for id in &ids {
                    let answer = match by_id.remove(id.as_str()) {
                        Some(i) => Answer::Found(Box::new(i.clone())),
                        None => Answer::Missing,
                    };
                    answers.insert(id.clone(), answer);
                }
            }
            Ok(Err(e)) => {
                let whole_batch = matches!(e.kind, AwsErrorKind::Throttled | AwsErrorKind::Auth);
                if e.kind == AwsErrorKind::Throttled {
                    stats.throttled += 1;
                } else {
                    stats.failed += 1;
                }
                split_or_fail(
                    &mut pending,
                    &mut answers,
                    region,
                    ids,
                    whole_batch,
                    &e.to_string(),
                );
            }
            Err(_) => {
                stats.timed_out += 1;
                let why = format!(
                    "DescribeInstances timed out after {:?}",
                    settings.probe_timeout
                );
                split_or_fail(&mut pending, &mut answers, region, ids, false, &why);
            }
        }
    }
    (answers, stats)
}

fn split_or_fail(
    pending: &mut VecDeque<(String, Vec<String>)>,
    answers: &mut HashMap<String, Answer>,
    region: String,
    mut ids: Vec<String>,
    whole_batch: bool,
    why: &str,
) {
    if whole_batch || ids.len() < 2 {
        fail(answers, &ids, why);
        return;
    }
    let second = ids.split_off(ids.len() / 2);
    pending.push_back((region.clone(), ids));
    pending.push_back((region, second));
}

fn fail(answers: &mut HashMap<String, Answer>, ids: &[String], why: &str) {
    for id in ids {
        answers.insert(id.clone(), Answer::Failed(why.to_owned()));
    }
}

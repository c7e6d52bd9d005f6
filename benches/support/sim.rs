//! A simulated EC2 for the sweeper, and one sweep case run against it.
//!
//! Everything here runs on tokio's paused clock: latencies, rate limits and the
//! sweep deadline pass in simulated time, so a 100,000-instance fleet takes
//! seconds of real time however many simulated minutes it covers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{
    EbsInstanceBlockDevice, Instance, InstanceBlockDeviceMapping, InstanceState, InstanceStateName,
    Placement, StateReason,
};
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use serde::{Deserialize, Serialize};
use tend::api::Runtime;
use tend::api::Workspace;
use tend::backend::ec2::{BatchSettings, Describer, Paced, Seen, TokenBucket, observe_instances};
use tend::backend::{CallError, CallStats, ErrorKind, Probe, Sighting};
use tend::config::RunArgs;
use tend::core::Observation;
use tend::sweep::{Scope, Snapshot, SweepSettings, Target, assemble, fair_order, to_ask};
use tokio::time::Instant;

pub const REGION: &str = "us-east-1";
pub const ZONES: [&str; 6] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "us-east-1d",
    "us-east-1e",
    "us-east-1f",
];
/// AWS's describe-family bucket per account and region.
pub const AWS_BURST: f64 = 100.0;
pub const AWS_REFILL_PER_SEC: f64 = 20.0;
/// tend's client-side bucket: --ec2-read-rate / --ec2-read-burst (their defaults).
pub const TEND_READ_RATE: f64 = 15.0;
pub const TEND_READ_BURST: u32 = 75;
/// The sweep: --batch-size, --max-in-flight, --probe-timeout, --sweep-interval
/// (their defaults); the deadline of a sweep is one interval.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_IN_FLIGHT: usize = 8;
pub const BATCH_SIZE: usize = 200;

/// What the simulated EC2 says about one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// running, data volume attached
    Running,
    /// stopped by someone outside tend
    Stopped,
    /// terminated long ago: no longer listed at all
    Gone,
}

/// Fleet composition: 98% running, 1% stopped out of band, 1% gone.
fn fate(index: usize) -> Fate {
    match index % 100 {
        0 => Fate::Stopped,
        1 => Fate::Gone,
        _ => Fate::Running,
    }
}

/// How many of the first `n` instances the simulation has gone for good.
pub fn gone(n: usize) -> usize {
    (0..n).filter(|i| fate(*i) == Fate::Gone).count()
}

pub fn instance_id(index: usize) -> String {
    format!("i-{index:017x}")
}

fn volume_id(index: usize) -> String {
    format!("vol-{index:017x}")
}

fn index_of(id: &str) -> Option<usize> {
    usize::from_str_radix(id.strip_prefix("i-")?, 16).ok()
}

/// AWS's server-side token bucket. Other clients of the same account and
/// region are modelled by lowering `refill` by the calls per second they spend.
struct ServerBucket {
    tokens: f64,
    at: Instant,
    refill: f64,
}

impl ServerBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.refill).min(AWS_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The simulated EC2: a fleet of `n` instances in one region.
pub struct SimEc2 {
    n: usize,
    latency: Duration,
    error_rate: f64,
    server: Mutex<ServerBucket>,
    client_buckets: Mutex<HashMap<String, Arc<TokenBucket>>>,
    read_rate: f64,
    read_burst: u32,
    rng: AtomicU64,
    pub calls: AtomicUsize,
    pub throttled: AtomicUsize,
    pub errors: AtomicUsize,
}

impl SimEc2 {
    /// Must be created inside the (paused) runtime: buckets read its clock.
    pub fn new(n: usize, latency: Duration, error_rate: f64, neighbour_rps: f64) -> Self {
        let args = tend_args();
        SimEc2 {
            n,
            latency,
            error_rate,
            server: Mutex::new(ServerBucket {
                tokens: AWS_BURST,
                at: Instant::now(),
                refill: (AWS_REFILL_PER_SEC - neighbour_rps).max(0.0),
            }),
            client_buckets: Mutex::new(HashMap::new()),
            read_rate: args.ec2_read_rate,
            read_burst: args.ec2_read_burst,
            rng: AtomicU64::new(0x5eed),
            calls: AtomicUsize::new(0),
            throttled: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
        }
    }

    /// A deterministic uniform draw in [0, 1) (splitmix64 over a counter; the
    /// paused current-thread runtime makes the call order deterministic too).
    fn draw(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn instance(&self, index: usize) -> Option<Instance> {
        if index >= self.n {
            return None;
        }
        let (state, reason) = match fate(index) {
            Fate::Gone => return None,
            Fate::Running => (InstanceStateName::Running, None),
            Fate::Stopped => (
                InstanceStateName::Stopped,
                Some("Client.UserInitiatedShutdown"),
            ),
        };
        let mut b = Instance::builder()
            .instance_id(instance_id(index))
            .state(InstanceState::builder().name(state).build())
            .placement(
                Placement::builder()
                    .availability_zone(ZONES[index % ZONES.len()])
                    .build(),
            )
            .block_device_mappings(
                InstanceBlockDeviceMapping::builder()
                    .device_name("/dev/sdf")
                    .ebs(
                        EbsInstanceBlockDevice::builder()
                            .volume_id(volume_id(index))
                            .build(),
                    )
                    .build(),
            );
        if let Some(code) = reason {
            b = b.state_reason(StateReason::builder().code(code).build());
        }
        Some(b.build())
    }

    async fn answer(&self, region: &str, ids: &[String]) -> Result<Vec<Instance>, CallError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let admitted = self.server.lock().expect("server bucket").take();
        let failed = admitted && self.error_rate > 0.0 && self.draw() < self.error_rate;
        let sent = tokio::time::Instant::now();
        tokio::time::sleep(self.latency).await;
        if !admitted {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            // What the real backend does on a throttled answer.
            self.read_bucket(region).drain(sent);
            return Err(CallError {
                operation: "DescribeInstances",
                kind: ErrorKind::Throttled,
                code: Some("RequestLimitExceeded".into()),
                message: "Request limit exceeded.".into(),
            });
        }
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(CallError {
                operation: "DescribeInstances",
                kind: ErrorKind::Transient,
                code: Some("InternalError".into()),
                message: "An internal error has occurred".into(),
            });
        }
        Ok(ids
            .iter()
            .filter_map(|id| self.instance(index_of(id)?))
            .collect())
    }
}

impl Paced for SimEc2 {
    fn read_bucket(&self, region: &str) -> Arc<TokenBucket> {
        self.client_buckets
            .lock()
            .expect("client buckets")
            .entry(region.to_owned())
            .or_insert_with(|| Arc::new(TokenBucket::new(self.read_rate, self.read_burst)))
            .clone()
    }
}

impl Describer for SimEc2 {
    /// As tend's client does: each answer read into what tend keeps of it.
    async fn describe(&self, region: &str, ids: &[String]) -> Result<Vec<Seen>, CallError> {
        Ok(self
            .answer(region, ids)
            .await?
            .iter()
            .map(Seen::of)
            .collect())
    }

    /// As EC2 does: the whole call fails naming every unknown id.
    async fn describe_named(&self, region: &str, ids: &[String]) -> Result<Vec<Seen>, CallError> {
        let listed = self.answer(region, ids).await?;
        let unknown: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !listed.iter().any(|i| i.instance_id() == Some(*id)))
            .collect();
        if unknown.is_empty() {
            return Ok(listed.iter().map(Seen::of).collect());
        }
        Err(CallError::instances_not_found(&unknown))
    }
}

/// Which way the fleet is described.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// tend's sweep: batches of 200.
    Batched,
    /// One describe per Workspace.
    PerObject,
}

impl Strategy {
    pub fn batch_size(self) -> usize {
        match self {
            Strategy::Batched => BATCH_SIZE,
            Strategy::PerObject => 1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Strategy::Batched => "batched (200)",
            Strategy::PerObject => "per-object",
        }
    }

    pub fn arg(self) -> &'static str {
        match self {
            Strategy::Batched => "batched",
            Strategy::PerObject => "per-object",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "batched" => Some(Strategy::Batched),
            "per-object" => Some(Strategy::PerObject),
            _ => None,
        }
    }
}

/// One case, run in its own process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub strategy: Strategy,
    pub n: usize,
    pub latency_ms: u64,
    pub error_rate: f64,
    /// Describe calls per second other clients of the account spend.
    pub neighbour_rps: f64,
    /// Consecutive sweeps, one sweep interval apart, through `fair_order`.
    pub sweeps: usize,
}

impl Case {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--case".into(),
            self.strategy.arg().into(),
            self.n.to_string(),
            self.latency_ms.to_string(),
            self.error_rate.to_string(),
            self.neighbour_rps.to_string(),
            self.sweeps.to_string(),
        ]
    }

    pub fn from_args(args: &[String]) -> Option<Case> {
        let [strategy, n, latency, error, neighbour, sweeps] = args else {
            return None;
        };
        Some(Case {
            strategy: Strategy::parse(strategy)?,
            n: n.parse().ok()?,
            latency_ms: latency.parse().ok()?,
            error_rate: error.parse().ok()?,
            neighbour_rps: neighbour.parse().ok()?,
            sweeps: sweeps.parse().ok()?,
        })
    }
}

/// What one case measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: Case,
    /// Describe calls that reached the simulated EC2 in the first sweep.
    pub calls: usize,
    /// Of those, describes by id proving that left-out ids are gone.
    pub confirmations: usize,
    /// Describe calls in the second sweep, once gone instances are settled.
    pub steady_calls: Option<usize>,
    pub ok: usize,
    pub throttled: usize,
    pub failed: usize,
    /// Whether the sweep deadline cut the first sweep short.
    pub hit_deadline: bool,
    /// Simulated seconds from the start of the first sweep to its answers.
    pub sweep_secs: f64,
    /// Simulated seconds describe calls waited for tend's client-side bucket.
    pub limiter_wait_secs: f64,
    /// Ids with a clean answer (found, or cleanly absent) in the first sweep.
    pub answered: usize,
    /// Objects the reconciler would be woken for on a steady sweep.
    pub steady_changed: usize,
    /// Objects woken by the very first sweep (no previous snapshot).
    pub first_changed: usize,
    /// Distinct ids with a clean answer after `sweeps` sweeps.
    pub answered_over_sweeps: usize,
    pub rss_start_kib: u64,
    /// Peak RSS once the in-scope list is built, just before the first sweep.
    pub rss_before_sweep_kib: u64,
    pub peak_rss_kib: u64,
    /// Real (host) milliseconds the first sweep plus both assembles took.
    pub host_ms: f64,
}

/// `VmHWM` (peak resident set) of this process, in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// tend's flags for the simulated sweeps: the values the benchmark is about,
/// which are also `tend run`'s defaults.
pub fn tend_args() -> RunArgs {
    let batch = BATCH_SIZE.to_string();
    let in_flight = MAX_IN_FLIGHT.to_string();
    let timeout = format!("{}s", PROBE_TIMEOUT.as_secs());
    let interval = format!("{}s", SWEEP_INTERVAL.as_secs());
    let rate = TEND_READ_RATE.to_string();
    let burst = TEND_READ_BURST.to_string();
    RunArgs::from_flags([
        "--batch-size",
        &batch,
        "--max-in-flight",
        &in_flight,
        "--probe-timeout",
        &timeout,
        "--sweep-interval",
        &interval,
        "--ec2-read-rate",
        &rate,
        "--ec2-read-burst",
        &burst,
    ])
    .expect("benchmark flags parse")
}

/// The sweep settings `tend run` builds from [`tend_args`].
pub fn sweep_settings() -> SweepSettings {
    SweepSettings::from_args(&tend_args())
}

/// The batching `tend run` builds from [`tend_args`], with this batch size.
fn batch_settings(batch_size: usize) -> BatchSettings {
    let args = tend_args();
    BatchSettings {
        batch_size,
        probe_timeout: args.probe_timeout,
        max_in_flight: args.max_in_flight,
    }
}

/// What the sweeper does with the EC2 backend's observe: the targets' probes
/// through the same batched describes, the answers keyed by uid.
async fn observe(
    sim: &SimEc2,
    targets: &[&Target],
    batch: BatchSettings,
    deadline: Instant,
) -> (HashMap<String, Sighting>, CallStats) {
    let probes: Vec<Probe> = targets.iter().map(|t| t.probe.clone()).collect();
    let grace = tend_args().not_found_grace;
    let observed = observe_instances(sim, &probes, batch, grace, deadline).await;
    let answers = targets
        .iter()
        .zip(observed.sightings)
        .map(|(t, seen)| (t.uid.clone(), seen))
        .collect();
    (answers, observed.calls)
}

/// The in-scope Workspaces: all Online, launched a day before the sweep.
fn targets(n: usize, launched_at: Timestamp) -> Vec<Target> {
    (0..n)
        .map(|i| Target {
            uid: format!("00000000-0000-4000-8000-{i:012x}"),
            object: ObjectRef::<Workspace>::new(&format!("ws-{i}")).within("bench"),
            runtime: Runtime::Ec2,
            probe: Probe {
                id: instance_id(i),
                location: REGION.into(),
                volume_id: Some(volume_id(i)),
                launched_at: Some(launched_at),
                silence: None,
            },
            known_dead: false,
            uncertain_since: None,
            retry: None,
            // Status says what the first sweep found: a steady sweep
            // tells the reconciler nothing new.
            recorded: Some(match fate(i) {
                Fate::Running => ("Running".into(), None),
                Fate::Stopped => (
                    "NotRunning".into(),
                    Some("InstanceStoppedExternally".into()),
                ),
                Fate::Gone => ("NotRunning".into(), Some("InstanceNotFound".into())),
            }),
        })
        .collect()
}

fn clean(answer: &Sighting) -> bool {
    !matches!(answer.observation, Observation::Unknown { .. })
}

/// Runs one case on a paused current-thread runtime.
pub fn run_case(case: Case) -> CaseResult {
    let rss_start_kib = peak_rss_kib();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    runtime.block_on(drive(async move {
        let sim = SimEc2::new(
            case.n,
            Duration::from_millis(case.latency_ms),
            case.error_rate,
            case.neighbour_rps,
        );
        let settings = sweep_settings();
        let batch = batch_settings(case.strategy.batch_size());
        // A fixed wall-clock origin for the snapshots; the simulated clock
        // provides the elapsed time.
        let origin = Timestamp::from_second(1_750_000_000).expect("timestamp");
        let wall = |at: Instant, start: Instant| {
            origin + jiff::SignedDuration::try_from(at.duration_since(start)).expect("duration")
        };
        let in_scope = targets(case.n, origin - jiff::SignedDuration::from_hours(24));
        let rss_before_sweep_kib = peak_rss_kib();
        let sim_start = Instant::now();
        let host_start = std::time::Instant::now();

        // The first full sweep: what the sweeper does, minus the store.
        let started = Instant::now();
        let deadline = started + settings.period();
        let (answers, stats) = observe(
            &sim,
            &to_ask(&in_scope, &Snapshot::default()),
            batch,
            deadline,
        )
        .await;
        let sweep_secs = started.elapsed().as_secs_f64();
        let hit_deadline = Instant::now() >= deadline;
        let calls = sim.calls.load(Ordering::Relaxed);
        let answered = answers.values().filter(|a| clean(a)).count();
        let now = wall(Instant::now(), sim_start);
        let (first, first_changed, _) = assemble(
            &Snapshot::default(),
            &in_scope,
            &in_scope,
            &answers,
            now,
            &Scope::All,
            &settings,
        );
        // A steady sweep: the same answers one interval later.
        let (_, steady_changed, _) = assemble(
            &first,
            &in_scope,
            &in_scope,
            &answers,
            now + jiff::SignedDuration::try_from(settings.interval).expect("duration"),
            &Scope::All,
            &settings,
        );
        let host_ms = host_start.elapsed().as_secs_f64() * 1e3;

        // Further sweeps, each one interval after the previous one started
        // (or right after it, if it overran), least recently answered first.
        let mut ever: HashSet<String> = answers
            .iter()
            .filter(|(_, a)| clean(a))
            .map(|(id, _)| id.clone())
            .collect();
        let mut previous = first;
        let mut last_start = started;
        // The calls of the second sweep, once the first has settled which
        // instances are gone.
        let mut steady_calls = None;
        drop(answers);
        for _ in 1..case.sweeps {
            tokio::time::sleep_until(last_start + settings.interval).await;
            last_start = Instant::now();
            let mut swept = in_scope.clone();
            fair_order(&mut swept, &previous, usize::MAX);
            let deadline = last_start + settings.period();
            let calls_before = sim.calls.load(Ordering::Relaxed);
            let (answers, _) = observe(&sim, &to_ask(&swept, &previous), batch, deadline).await;
            steady_calls.get_or_insert(sim.calls.load(Ordering::Relaxed) - calls_before);
            ever.extend(
                answers
                    .iter()
                    .filter(|(_, a)| clean(a))
                    .map(|(id, _)| id.clone()),
            );
            let now = wall(Instant::now(), sim_start);
            previous = assemble(
                &previous,
                &in_scope,
                &swept,
                &answers,
                now,
                &Scope::All,
                &settings,
            )
            .0;
        }

        CaseResult {
            case: case.clone(),
            calls,
            steady_calls,
            confirmations: stats.confirmations,
            ok: stats.ok,
            throttled: stats.throttled,
            failed: stats.failed,
            hit_deadline,
            sweep_secs,
            limiter_wait_secs: stats.limiter_wait.as_secs_f64(),
            answered,
            steady_changed: steady_changed.len(),
            first_changed: first_changed.len(),
            answered_over_sweeps: ever.len(),
            rss_start_kib,
            rss_before_sweep_kib,
            peak_rss_kib: peak_rss_kib(),
            host_ms,
        }
    }))
}

/// The simulated clock's step.
pub const STEP: Duration = Duration::from_millis(1);

/// Runs `work` on the paused clock, moving the clock on by [`STEP`] whenever
/// the runtime gets a turn, instead of relying on tokio's auto-advance (which
/// only jumps when every task is idle). `TokenBucket::acquire` can sleep for a
/// zero duration when floating-point rounding leaves a bucket at a hair under
/// one token; such a task never goes idle, so auto-advance alone would never
/// move the clock again. Timers have millisecond resolution anyway.
async fn drive<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    let task = tokio::spawn(work);
    while !task.is_finished() {
        tokio::time::advance(STEP).await;
    }
    task.await.expect("the simulated case panicked")
}

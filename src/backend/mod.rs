//! Backends: the only code that talks to the outside world about workspaces.
//!
//! A runtime is one module behind [`Backend`]: observe many at once, provision,
//! start, stop, tear down, each refusing to touch what the Workspace does not
//! own. The decision core, the sweep and the reconciler know a runtime only
//! through this interface and its registration in [`Backends`].

pub mod batcher;
mod error;
mod kubernetes;
mod owner;

pub mod container;
pub mod ec2;
pub mod external;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

pub use error::{BackendError, CallError, ErrorKind};
pub use kubernetes::call_error;
pub use owner::{LABEL_WORKSPACE, Owner};

use crate::api::{Runtime, Workspace};
use crate::core::Observation;

/// What to ask a backend about one Workspace: the backend status records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Probe {
    /// The backend's own id, e.g. an EC2 instance id.
    pub id: String,
    /// Where it lives, e.g. an EC2 region; the circuit breaker groups by it.
    pub location: String,
    /// The data volume that must be attached for it to count as running.
    pub volume_id: Option<String>,
    /// When it was launched: right after a launch a not-found proves nothing.
    pub launched_at: Option<Timestamp>,
    /// How long the backend may stay silent before its silence is the answer
    /// (a heartbeat's timeout), for a backend that reports by itself.
    pub silence: Option<Duration>,
}

/// What one answer says about one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub observation: Observation,
    /// When the call that answered was sent (when the look began, if nothing
    /// answered): an answer asked before a restart must not undo it.
    pub asked_at: Timestamp,
    /// The failure domain it runs in (an availability zone), if the answer says.
    pub zone: Option<String>,
    /// A proven absence: asked about by its id, the backend said it does not
    /// exist. Ids are never reused, so this answer is settled.
    pub absent: bool,
    /// A Running answer that turns by itself unless news comes (a heartbeat
    /// holds only until its timeout): look again after this long.
    pub holds_for: Option<Duration>,
}

impl Sighting {
    /// No clean answer.
    pub fn unknown(error: impl Into<String>, asked_at: Timestamp) -> Self {
        Sighting {
            observation: Observation::Unknown {
                error: error.into(),
            },
            asked_at,
            zone: None,
            absent: false,
            holds_for: None,
        }
    }
}

/// A change a backend's watch saw: a reason to look, never an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Something of the backend's changed in this location (a namespace, a
    /// region): the sweeper looks at that location's Workspaces early.
    At(String),
    /// The backend of this Workspace changed: the reconciler looks at it
    /// now (for a runtime the sweeper does not cover).
    Of(ObjectRef<Workspace>),
}

/// Counters of one round of calls, for metrics and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    pub ok: usize,
    pub throttled: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// Calls naming ids that a listing left out, to prove them absent.
    pub confirmations: usize,
    pub limiter_wait: Duration,
}

impl CallStats {
    pub fn add(&mut self, other: &CallStats) {
        self.ok += other.ok;
        self.throttled += other.throttled;
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        self.confirmations += other.confirmations;
        self.limiter_wait += other.limiter_wait;
    }
}

/// The answers of one `observe`: one sighting per probe, in the probes' order.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub sightings: Vec<Sighting>,
    pub calls: CallStats,
}

impl Observed {
    /// A look at `probes` that ran out of time as a whole: Unknown for each.
    pub fn out_of_time(probes: &[Probe], started: Timestamp) -> Self {
        Observed {
            sightings: probes
                .iter()
                .map(|_| Sighting::unknown("no answer within the deadline", started))
                .collect(),
            calls: CallStats {
                timed_out: 1,
                ..CallStats::default()
            },
        }
    }
}

/// Where a launch or teardown stands after one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Persist this in status before anything else happens.
    Record(Record),
    /// Something is under way; look again shortly.
    Wait(String),
    /// Nothing left to do.
    Done,
}

/// Facts that must reach status before the next mutating call.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The data volume exists: its id, and where it lives (an EC2 region
    /// and availability zone), where that binds every later launch.
    Volume {
        id: String,
        region: Option<String>,
        zone: Option<String>,
    },
    /// Provisioning begins: nothing exists yet, and the first create follows
    /// once status says so (a backend may need to know, later, whether one
    /// may have been sent).
    Begun,
    /// Launch number `n` is about to be attempted; it retires the previous
    /// backend and keys the launch's idempotency token.
    LaunchReserved(u32),
    /// The backend of the reserved launch exists.
    Launched { id: String, at: Timestamp },
}

/// One runtime. Every method reads what it needs from the Workspace and its
/// status as the reconciler last read them.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The runtime this backend serves.
    fn runtime(&self) -> Runtime;

    /// Where its answers come from, as `status.observation.source` records it.
    fn source(&self) -> &'static str;

    /// The kind of the backend object, named in events as their related object.
    fn object_kind(&self) -> &'static str;

    /// The `Ready` reason when the backend refuses tend's credentials.
    fn auth_reason(&self) -> &'static str {
        "BackendAuthFailed"
    }

    /// Whether the sweeper covers this runtime. One driven by its own
    /// heartbeats is not swept.
    fn swept(&self) -> bool {
        true
    }

    /// Whether tend brings the backend up, and back after it dies. One that
    /// comes up by itself (a machine with an agent) is awaited
    /// (`AwaitingAgent`) and never restarted.
    fn launches(&self) -> bool {
        true
    }

    /// The note of the event that announces a recorded launch.
    fn launched(&self, id: &str) -> String {
        format!("launched {id}")
    }

    /// What to ask about the backend that status records, if any.
    fn probe(&self, ws: &Workspace) -> Option<Probe>;

    /// This backend's objects' changes, as a watch sees them. `None`:
    /// nothing to watch.
    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        None
    }

    /// Looks at many backends at once, batched, every call with its own
    /// timeout and the whole bounded by `deadline`. Never fails as a whole:
    /// whatever has no clean answer is `Unknown`.
    async fn observe(&self, probes: &[Probe], deadline: Instant) -> Observed;

    /// One idempotent step towards a running backend.
    async fn provision(&self, ws: &Workspace) -> Result<Step, BackendError>;

    /// Starts the stopped backend in place.
    async fn start(&self, ws: &Workspace) -> Result<(), BackendError>;

    /// Stops the backend, keeping its data; `hibernate` keeps its memory too.
    async fn stop(&self, ws: &Workspace, hibernate: bool) -> Result<(), BackendError>;

    /// One step of releasing everything the Workspace owns, keeping or
    /// deleting its data as `reclaimPolicy` says. Foreign resources are left
    /// alone and reported in `skipped`.
    async fn teardown(
        &self,
        ws: &Workspace,
        skipped: &mut Vec<String>,
    ) -> Result<Step, BackendError>;

    /// The note that announces a finished teardown.
    fn released(&self, ws: &Workspace) -> String;

    /// Drops whatever the backend keeps in memory about a Workspace that
    /// is gone.
    fn forget(&self, _ws: &Workspace) {}
}

/// The registered runtimes. Adding one is one `register` call.
#[derive(Clone, Default)]
pub struct Backends {
    all: Vec<Arc<dyn Backend>>,
}

impl Backends {
    pub fn register(&mut self, backend: Arc<dyn Backend>) -> &mut Self {
        self.all.retain(|b| b.runtime() != backend.runtime());
        self.all.push(backend);
        self
    }

    /// The backend of a runtime, if one is registered.
    pub fn of(&self, runtime: Runtime) -> Option<&Arc<dyn Backend>> {
        self.all.iter().find(|b| b.runtime() == runtime)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.all.iter()
    }
}

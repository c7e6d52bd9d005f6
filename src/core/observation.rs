/// One look at a backend. Exactly one of these, never a guess in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The backend says it runs and is ready for use (for EC2: running, with the
    /// data volume attached).
    Running,
    /// On its way: launching, starting, or running but not yet wired up.
    Pending { detail: String },
    /// A clean, authoritative answer that it does not run.
    NotRunning(NotRunning),
    /// Anything uncertain: throttling, timeouts, 5xx, malformed answers, a
    /// not-found inside the grace period. Never changes the phase.
    Unknown { error: String },
}

/// A clean "not running" answer, with what it means for recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRunning {
    pub halt: Halt,
    /// CamelCase condition reason, e.g. `SpotInterrupted`.
    pub reason: String,
    /// What the backend said, for humans.
    pub message: String,
}

/// How a backend that does not run can come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Halt {
    /// Still stopping; it can be started once stopped.
    Stopping,
    /// Stopped in place; it can be started again.
    Stopped,
    /// Still shutting down for good; a replacement waits until it is gone.
    Terminating,
    /// Gone for good (terminated or vanished); only a replacement helps.
    Gone,
}

impl Observation {
    pub fn not_running(halt: Halt, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Observation::NotRunning(NotRunning {
            halt,
            reason: reason.into(),
            message: message.into(),
        })
    }

    /// The word recorded in `status.observation.state`; `None` for Unknown,
    /// which is never recorded as an answer.
    pub fn state_name(&self) -> Option<&'static str> {
        match self {
            Observation::Running => Some("Running"),
            Observation::Pending { .. } => Some("Pending"),
            Observation::NotRunning(_) => Some("NotRunning"),
            Observation::Unknown { .. } => None,
        }
    }
}

//! How a backend call fails, classified once, so callers never parse strings.

/// What kind of failure a backend call had, which decides what tend does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// What the call names does not exist (or is not visible yet).
    NotFound,
    /// Rate limited; back off, never conclude anything.
    Throttled,
    /// No capacity (or quota) for the request right now.
    InsufficientCapacity,
    /// Credentials missing, expired or not allowed to do this.
    Auth,
    /// The request itself is wrong (bad image, bad subnet): retrying as-is won't help.
    InvalidParameter,
    /// Timeouts, 5xx, connection errors, malformed answers, spent retry budget.
    Transient,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Throttled => "throttled",
            ErrorKind::InsufficientCapacity => "insufficient_capacity",
            ErrorKind::Auth => "auth",
            ErrorKind::InvalidParameter => "invalid_parameter",
            ErrorKind::Transient => "transient",
        }
    }
}

/// A classified error of one backend call, with the call it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct CallError {
    pub operation: &'static str,
    pub kind: ErrorKind,
    /// The backend's own error code, e.g. `RequestLimitExceeded`.
    pub code: Option<String>,
    pub message: String,
}

impl CallError {
    /// An answer that parsed but lacks what the backend always sends.
    pub fn malformed(operation: &'static str, what: &str) -> Self {
        CallError {
            operation,
            kind: ErrorKind::Transient,
            code: None,
            message: format!("malformed answer: {what}"),
        }
    }
}

/// Why a backend action did not happen or did not work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// The resource lacks tend's ownership marks for this Workspace.
    #[error("{resource} is not owned by this Workspace: {detail}")]
    NotOwned { resource: String, detail: String },
    /// The request cannot be built from the spec (e.g. no subnet in the volume's zone).
    #[error("{0}")]
    Invalid(String),
    /// An input the spec names (a Secret, a key of it) does not exist yet.
    /// Nothing was sent; the action waits in its phase and is retried.
    /// `reason` is the condition reason, e.g. `UserDataNotFound`.
    #[error("{message}")]
    InputMissing {
        reason: &'static str,
        message: String,
    },
    /// An input the spec names could not be read (API error, timeout).
    /// Nothing was sent; the action is retried with backoff.
    #[error("{0}")]
    InputUnreadable(String),
    /// The data volume named in status is proven gone: deleted outside tend.
    #[error("data volume {volume} no longer exists: {detail}")]
    VolumeLost { volume: String, detail: String },
    /// The data volume is attached to something that is neither the recorded
    /// backend nor marked as this Workspace's.
    #[error(
        "data volume {volume} is attached to instance {instance}, which this Workspace does not own"
    )]
    VolumeInUse { volume: String, instance: String },
}

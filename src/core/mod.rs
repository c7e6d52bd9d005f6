//! The decision core: pure functions, no I/O.
//!
//! Given what the user wants, what tend last recorded and what the backend just
//! answered, it says which phase comes next and what to do. This is where the
//! safety rule lives: only a clean `NotRunning` answer can take a Workspace
//! offline.

mod decide;
mod observation;
pub mod restart;
mod transition;
mod trust;

pub use decide::{Action, Facts, Plan, decide};
pub use observation::{Halt, NotRunning, Observation};
pub use restart::RestartGate;
pub use transition::{IllegalTransition, can_transition, transition};
pub use trust::{DirectLook, Hold, SweepAnswer, judge_direct_look, trust_sweep, uncertain_since};

/// Time from `since` to `now`; `None` when `since` is later (a clock step back).
pub fn elapsed(since: jiff::Timestamp, now: jiff::Timestamp) -> Option<std::time::Duration> {
    std::time::Duration::try_from(now.duration_since(since)).ok()
}

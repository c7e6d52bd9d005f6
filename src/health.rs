//! Readiness: the controller runs and its sweeps keep completing. A sweeper
//! that stalls or stops leaves every Workspace unwatched while everything else
//! looks healthy, so either makes `/readyz` fail, says why in the log once,
//! and shows in `tend_sweep_overdue`.

use std::any::Any;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::sweep::SweepSettings;

/// How many sweep periods may pass without a completed sweep.
pub const OVERDUE_AFTER_PERIODS: u32 = 3;

/// How long without a completed sweep (or, before the first, since the
/// start) before readiness fails. A sweep may run until its deadline, the
/// longer of the interval and the probe timeout, so that is one period.
pub fn overdue_after(settings: &SweepSettings) -> Duration {
    settings.period() * OVERDUE_AFTER_PERIODS
}

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    Starting = 0,
    Ready = 1,
    SweepsOverdue = 2,
    /// For good: a sweeper is never restarted.
    SweeperStopped = 3,
}

impl Verdict {
    /// The plain-text answer of `/readyz`.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Starting => "starting",
            Verdict::Ready => "ok",
            Verdict::SweepsOverdue => "no sweep completed within 3 sweep periods",
            Verdict::SweeperStopped => "the sweeper stopped",
        }
    }

    fn from_u8(n: u8) -> Verdict {
        match n {
            0 => Verdict::Starting,
            1 => Verdict::Ready,
            2 => Verdict::SweepsOverdue,
            _ => Verdict::SweeperStopped,
        }
    }
}

/// What this replica does under leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// No leader election: the only replica, always acting.
    Alone = 0,
    /// Holds the Lease: reconciles and sweeps.
    Leader = 1,
    /// Another replica holds the Lease; this one waits to take over.
    Standby = 2,
    /// The last Lease call failed: not acting, and not able to take over.
    LeaseUnreachable = 3,
}

impl Role {
    fn from_u8(n: u8) -> Role {
        match n {
            0 => Role::Alone,
            1 => Role::Leader,
            2 => Role::Standby,
            _ => Role::LeaseUnreachable,
        }
    }
}

/// Readiness shared by the controller and the leader election, which set it,
/// and the HTTP port, which reports it.
#[derive(Debug, Default)]
pub struct Readiness {
    verdict: AtomicU8,
    role: AtomicU8,
}

impl Readiness {
    pub fn verdict(&self) -> Verdict {
        Verdict::from_u8(self.verdict.load(Ordering::Relaxed))
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
    }

    /// What `/readyz` answers: ready or not, and why. A standby is ready: it
    /// can take over. A leader is ready while its sweeps keep completing.
    pub fn answer(&self) -> (bool, String) {
        let verdict = self.verdict();
        let sweeping = (verdict == Verdict::Ready, verdict.reason());
        let (ready, why) = match self.role() {
            _ if verdict == Verdict::SweeperStopped => (false, verdict.reason().to_string()),
            Role::Alone => (sweeping.0, sweeping.1.to_string()),
            Role::Leader => (sweeping.0, format!("leader: {}", sweeping.1)),
            Role::Standby => (true, "standby: another replica holds the Lease".into()),
            Role::LeaseUnreachable => (false, "the Lease cannot be read or renewed".into()),
        };
        (ready, why)
    }

    /// The controller runs; its sweeps have until [`overdue_after`] to show.
    pub fn started(&self) {
        self.set(Verdict::Ready);
    }

    fn set(&self, verdict: Verdict) {
        let _ = self
            .verdict
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (Verdict::from_u8(now) != Verdict::SweeperStopped).then_some(verdict as u8)
            });
    }
}

/// Runs the sweeper until `cancel`, watching its sweeps complete: `sweeps`
/// changes once per completed sweep. A sweeper that ends before `cancel`,
/// by returning or by panicking, is an error: logged, and readiness fails for
/// good.
pub async fn supervise_sweeper<T>(
    sweeper: impl Future<Output = ()>,
    sweeps: watch::Receiver<T>,
    overdue_after: Duration,
    cancel: &CancellationToken,
    readiness: &Readiness,
    metrics: &Metrics,
) {
    let ended = tokio::select! {
        ended = AssertUnwindSafe(sweeper).catch_unwind() => ended,
        never = watch_sweeps(sweeps, overdue_after, readiness, metrics) => match never {},
    };
    if cancel.is_cancelled() {
        return;
    }
    match ended {
        Ok(()) => error!(
            "the sweeper stopped while the controller runs; Workspaces are no longer watched and /readyz fails"
        ),
        Err(panic) => error!(
            "the sweeper panicked: {}; Workspaces are no longer watched and /readyz fails",
            panic_text(panic.as_ref())
        ),
    }
    readiness.set(Verdict::SweeperStopped);
    metrics.sweep_overdue(true);
}

/// Fails readiness while no sweep has completed for `overdue_after`, counted
/// from the last completion or, before the first, from the start. One log
/// line when that begins and one when it ends, however often `/readyz` is
/// asked.
async fn watch_sweeps<T>(
    mut sweeps: watch::Receiver<T>,
    overdue_after: Duration,
    readiness: &Readiness,
    metrics: &Metrics,
) -> Infallible {
    let mut deadline = Instant::now() + overdue_after;
    let mut overdue = false;
    loop {
        tokio::select! {
            changed = sweeps.changed() => {
                if changed.is_err() {
                    // The sweeper is gone; its supervisor reports that.
                    return std::future::pending().await;
                }
                if overdue {
                    info!("a sweep completed again; ready");
                    overdue = false;
                }
                readiness.set(Verdict::Ready);
                metrics.sweep_overdue(false);
                deadline = Instant::now() + overdue_after;
            }
            () = tokio::time::sleep_until(deadline), if !overdue => {
                error!(
                    overdue_after = ?overdue_after,
                    "no sweep completed for {} sweep periods; Workspaces are not being watched, /readyz fails until a sweep completes",
                    OVERDUE_AFTER_PERIODS
                );
                overdue = true;
                readiness.set(Verdict::SweepsOverdue);
                metrics.sweep_overdue(true);
            }
        }
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const PERIOD: Duration = Duration::from_secs(60);

    struct Watched {
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn supervise(
        sweeper: impl Future<Output = ()> + Send + 'static,
        sweeps: watch::Receiver<u64>,
    ) -> Watched {
        let readiness = Arc::new(Readiness::default());
        readiness.started();
        let metrics = Arc::new(Metrics::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (readiness, metrics, cancel) = (readiness.clone(), metrics.clone(), cancel.clone());
            async move {
                supervise_sweeper(sweeper, sweeps, PERIOD * 3, &cancel, &readiness, &metrics).await
            }
        });
        Watched {
            readiness,
            metrics,
            cancel,
            task,
        }
    }

    /// Lets virtual time pass; with the clock paused, every other task has
    /// run as far as it can before this returns.
    async fn pass(d: Duration) {
        tokio::time::sleep(d).await;
    }

    fn overdue_metric(m: &Metrics) -> bool {
        m.encode().lines().any(|l| l == "tend_sweep_overdue 1")
    }

    #[tokio::test(start_paused = true)]
    async fn three_periods_without_a_sweep_fail_readiness_until_one_completes() {
        let (tx, rx) = watch::channel(0u64);
        let w = supervise(std::future::pending(), rx);
        // Before the first sweep, three periods from the start.
        pass(PERIOD * 3 - Duration::from_millis(1)).await;
        assert_eq!(w.readiness.verdict(), Verdict::Ready);
        pass(Duration::from_millis(2)).await;
        assert_eq!(w.readiness.verdict(), Verdict::SweepsOverdue);
        assert!(overdue_metric(&w.metrics));

        tx.send_replace(1);
        pass(Duration::from_millis(1)).await;
        assert_eq!(w.readiness.verdict(), Verdict::Ready);
        assert!(!overdue_metric(&w.metrics));

        // Then three periods from the last completed sweep.
        pass(PERIOD * 2).await;
        tx.send_replace(2);
        pass(PERIOD * 3 - Duration::from_millis(1)).await;
        assert_eq!(w.readiness.verdict(), Verdict::Ready);
        pass(Duration::from_millis(2)).await;
        assert_eq!(w.readiness.verdict(), Verdict::SweepsOverdue);
        w.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweeper_that_returns_while_the_controller_runs_fails_readiness_for_good() {
        let (_tx, rx) = watch::channel(0u64);
        let w = supervise(async {}, rx);
        w.task.await.unwrap();
        assert_eq!(w.readiness.verdict(), Verdict::SweeperStopped);
        assert!(overdue_metric(&w.metrics));
        w.readiness.started();
        assert_eq!(w.readiness.verdict(), Verdict::SweeperStopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweeper_that_panics_fails_readiness() {
        let (_tx, rx) = watch::channel(0u64);
        let w = supervise(async { panic!("a bug in the sweeper") }, rx);
        w.task.await.unwrap();
        assert_eq!(w.readiness.verdict(), Verdict::SweeperStopped);
        assert!(overdue_metric(&w.metrics));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweeper_stopped_by_shutdown_is_no_failure() {
        let (_tx, rx) = watch::channel(0u64);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let w = supervise(
            async move {
                let _ = stopped.await;
            },
            rx,
        );
        w.cancel.cancel();
        let _ = stop.send(());
        w.task.await.unwrap();
        assert_eq!(w.readiness.verdict(), Verdict::Ready);
        assert!(!overdue_metric(&w.metrics));
    }
}

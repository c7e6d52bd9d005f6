//! When a dead backend may be restarted: exponential backoff between restarts,
//! and a crash loop (too many restarts too fast) stops healing until a human
//! asks for a retry.

use std::time::Duration;

use jiff::Timestamp;

/// More than this many restarts within `CRASH_LOOP_WINDOW` is a crash loop.
pub const CRASH_LOOP_RESTARTS: usize = 5;
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(30 * 60);
/// How long after a StartInstances a `stopped` answer may still be EC2
/// catching up rather than a new death.
pub const SETTLE: Duration = Duration::from_secs(30);
/// The backoff doubles from the base up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Whether a restart may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartGate {
    Open,
    /// Back off for this much longer.
    Wait(Duration),
    /// Too many restarts too fast: stop healing.
    CrashLoop,
}

/// Restarts within the crash-loop window, oldest first.
pub fn recent(history: &[Timestamp], now: Timestamp) -> Vec<Timestamp> {
    let mut recent: Vec<Timestamp> = history
        .iter()
        .copied()
        .filter(|t| age(*t, now) < CRASH_LOOP_WINDOW)
        .collect();
    recent.sort();
    recent
}

fn age(t: Timestamp, now: Timestamp) -> Duration {
    super::elapsed(t, now).unwrap_or_default()
}

/// The backoff before the next restart after `n` recent ones: none for the
/// first, then base, 2×base, 4×base ... capped at ten minutes.
pub fn backoff(n: usize, base: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (n - 1).min(16);
    (base * factor).min(MAX_BACKOFF)
}

/// The gate for the next restart, given past restarts.
pub fn gate(history: &[Timestamp], now: Timestamp, base: Duration) -> RestartGate {
    let recent = recent(history, now);
    if recent.len() >= CRASH_LOOP_RESTARTS {
        // This would be restart number six within the window.
        return RestartGate::CrashLoop;
    }
    let Some(last) = recent.last() else {
        return RestartGate::Open;
    };
    let wait = backoff(recent.len(), base);
    let since = age(*last, now);
    if since >= wait {
        RestartGate::Open
    } else {
        RestartGate::Wait(wait - since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(10);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + secs).unwrap()
    }

    #[test]
    fn first_restart_is_immediate() {
        assert_eq!(gate(&[], at(0), BASE), RestartGate::Open);
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_ten_minutes() {
        let delays: Vec<u64> = (0..10).map(|n| backoff(n, BASE).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }

    #[test]
    fn a_restart_waits_out_the_backoff() {
        let history = [at(0), at(15)];
        assert_eq!(
            gate(&history, at(20), BASE),
            RestartGate::Wait(Duration::from_secs(15))
        );
        assert_eq!(gate(&history, at(35), BASE), RestartGate::Open);
    }

    #[test]
    fn more_than_five_restarts_in_thirty_minutes_is_a_crash_loop() {
        let history: Vec<Timestamp> = (0..5).map(|i| at(i * 60)).collect();
        assert_eq!(gate(&history, at(400), BASE), RestartGate::CrashLoop);
        // Once the oldest ages out of the window, healing may go on.
        assert_ne!(
            gate(&history, at(30 * 60 + 1), BASE),
            RestartGate::CrashLoop
        );
    }
}

//! The one place that says which phase may follow which.

use crate::api::Phase;

/// A phase change the state machine does not allow. Refusing it (and logging it)
/// is safer than writing a status that lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal phase transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: Phase,
    pub to: Phase,
}

/// Whether `from -> to` is a legal phase change. Staying put is always legal.
pub fn can_transition(from: Phase, to: Phase) -> bool {
    use Phase::*;
    if from == to || to == Deleting {
        return true;
    }
    match from {
        Pending => matches!(
            to,
            Provisioning | Stopping | Stopped | Failed | AwaitingAgent
        ),
        Provisioning => matches!(to, Online | Offline | Stopping | Stopped | Failed),
        Online => matches!(to, Offline | Stopping | Stopped),
        Offline => matches!(to, Restarting | Online | Stopping | Stopped | Failed),
        Restarting => matches!(to, Online | Offline | Stopping | Stopped | Failed),
        // A user's stop never passes through Offline or Failed.
        Stopping => matches!(to, Stopped | Hibernated | Provisioning),
        Stopped => matches!(to, Provisioning | Stopping | Hibernated),
        Hibernated => matches!(to, Provisioning | Stopping | Stopped),
        AwaitingAgent => matches!(to, Online | Offline | Failed),
        Failed => matches!(to, Provisioning | Restarting | Online | Stopping | Stopped),
        Deleting => false,
    }
}

/// Validates a phase change.
pub fn transition(from: Phase, to: Phase) -> Result<Phase, IllegalTransition> {
    if can_transition(from, to) {
        Ok(to)
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    #[test]
    fn staying_put_and_deleting_are_always_legal() {
        for p in Phase::ALL {
            assert!(can_transition(p, p));
            assert!(can_transition(p, Deleting));
        }
    }

    #[test]
    fn nothing_leaves_deleting() {
        for p in Phase::ALL.into_iter().filter(|p| *p != Deleting) {
            assert!(!can_transition(Deleting, p), "Deleting -> {p}");
        }
    }

    #[test]
    fn a_user_stop_never_goes_offline_or_failed() {
        assert!(!can_transition(Stopping, Offline));
        assert!(!can_transition(Stopping, Failed));
        assert!(!can_transition(Stopped, Offline));
        assert!(!can_transition(Stopped, Failed));
        assert!(!can_transition(Hibernated, Offline));
    }

    #[test]
    fn table_of_lifecycle_paths() {
        let legal = [
            (Pending, Provisioning),
            (Provisioning, Online),
            (Online, Offline),
            (Offline, Restarting),
            (Restarting, Online),
            (Online, Stopping),
            (Stopping, Stopped),
            (Stopping, Hibernated),
            (Stopped, Provisioning),
            (Hibernated, Provisioning),
            (Provisioning, Failed),
            (Failed, Provisioning),
        ];
        for (from, to) in legal {
            assert_eq!(transition(from, to), Ok(to), "{from} -> {to}");
        }
        let illegal = [
            (Pending, Online),
            (Online, Restarting),
            (Online, Failed),
            (Stopped, Online),
            (Offline, Provisioning),
            (Pending, Offline),
        ];
        for (from, to) in illegal {
            assert_eq!(
                transition(from, to),
                Err(IllegalTransition { from, to }),
                "{from} -> {to}"
            );
        }
    }
}

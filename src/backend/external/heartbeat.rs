//! What a heartbeat Lease says about its machine. Pure: the clock comes in.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;

use crate::core::{Halt, Observation};

/// The reason a lapsed or vanished heartbeat gives.
pub const HEARTBEAT_LOST: &str = "HeartbeatLost";

/// Who renews the Lease, as it says itself.
pub fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The last heartbeat: the renewal, else the acquisition, else the Lease's
/// creation.
pub fn last_beat(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref();
    spec.and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| t.0)
        .or_else(|| lease.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// A heartbeat's answer, and for a fresh one how long it still holds. The
/// agent's clock writes the renewal and tend's reads it, so skew between
/// the two eats into (or adds to) the timeout; a renewal from the future
/// counts as just now.
pub fn judge(lease: &Lease, timeout: Duration, now: Timestamp) -> (Observation, Option<Duration>) {
    let name = lease.metadata.name.as_deref().unwrap_or_default();
    let Some(beat) = last_beat(lease) else {
        return (
            Observation::Unknown {
                error: format!("Lease {name} carries no time at all"),
            },
            None,
        );
    };
    let age = Duration::try_from(now.duration_since(beat)).unwrap_or_default();
    if age <= timeout {
        return (Observation::Running, Some(timeout - age));
    }
    let who = holder(lease).map_or_else(String::new, |h| format!(" from {h}"));
    (
        lost(format!(
            "no heartbeat{who} for {}s (Lease {name}, timeout {}s)",
            age.as_secs(),
            timeout.as_secs()
        )),
        None,
    )
}

/// The Lease was read and is not there.
pub fn vanished(name: &str) -> Observation {
    lost(format!("the heartbeat Lease {name} is gone"))
}

fn lost(what: String) -> Observation {
    Observation::not_running(
        Halt::Gone,
        HEARTBEAT_LOST,
        format!(
            "{what}; tend cannot restart an external machine: someone must bring it or its \
             agent back"
        ),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + secs).unwrap()
    }

    fn lease(renewed: Option<i64>) -> Lease {
        let mut lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "laptop", "creationTimestamp": at(0).to_string()},
            "spec": {"holderIdentity": "laptop-7"},
        }))
        .unwrap();
        lease.spec.as_mut().unwrap().renew_time = renewed.map(|s| MicroTime(at(s)));
        lease
    }

    const TIMEOUT: Duration = Duration::from_secs(90);

    #[test]
    fn a_fresh_heartbeat_runs_for_what_is_left_of_its_timeout() {
        let (obs, holds) = judge(&lease(Some(100)), TIMEOUT, at(130));
        assert_eq!(obs, Observation::Running);
        assert_eq!(holds, Some(Duration::from_secs(60)));
        let (obs, _) = judge(&lease(Some(100)), TIMEOUT, at(190));
        assert_eq!(obs, Observation::Running, "exactly at the timeout");
    }

    #[test]
    fn a_lapsed_heartbeat_is_lost_and_says_someone_must_act() {
        let (obs, holds) = judge(&lease(Some(100)), TIMEOUT, at(191));
        let Observation::NotRunning(nr) = obs else {
            panic!("{obs:?}")
        };
        assert_eq!(nr.reason, HEARTBEAT_LOST);
        assert_eq!(nr.halt, Halt::Gone);
        assert!(nr.message.contains("laptop-7"), "{}", nr.message);
        assert!(nr.message.contains("someone must"), "{}", nr.message);
        assert_eq!(holds, None);
    }

    #[test]
    fn a_renewal_from_the_future_counts_as_now() {
        let (obs, holds) = judge(&lease(Some(500)), TIMEOUT, at(130));
        assert_eq!(obs, Observation::Running);
        assert_eq!(holds, Some(TIMEOUT));
    }

    #[test]
    fn a_lease_never_renewed_beats_at_its_creation() {
        assert_eq!(last_beat(&lease(None)), Some(at(0)));
        let (obs, _) = judge(&lease(None), TIMEOUT, at(100));
        assert!(matches!(obs, Observation::NotRunning(_)), "{obs:?}");
    }
}

//! Leader election on a `coordination.k8s.io` Lease, so that of several
//! replicas exactly one reconciles and sweeps.
//!
//! The Lease is held with `kube-lease-manager`. tend adds the part a
//! controller must get right on top of it: a replica that cannot tell whether
//! it still holds the Lease stops acting. Any failed Lease call ends
//! leadership at once (and the Lease is given up as soon as the API server
//! answers again), and the Lease client's requests time out well inside the
//! renewal margin, so a replica that renews against a hung API server has
//! stopped before its Lease can expire and another replica take over.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::{Readiness, Role};
use crate::metrics::Metrics;

/// What to campaign for.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's name in the Lease's `holderIdentity`.
    pub identity: String,
    /// How long a Lease stays held after its last renewal.
    pub duration: Duration,
}

impl LeaseSettings {
    /// The holder renews this long before its Lease would expire: a third of
    /// the duration in whole seconds (the Lease counts whole seconds), at
    /// least one.
    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs((self.duration.as_secs() / 3).max(1))
    }

    /// The timeout of each Lease request. One renewal makes up to three
    /// requests, all inside the renew margin.
    pub fn request_timeout(&self) -> Duration {
        (self.renew_margin() / 4).max(Duration::from_millis(250))
    }

    /// A Kubernetes client for the Lease alone, with its short timeouts.
    pub fn client(&self, mut config: kube::Config) -> kube::Result<Client> {
        let timeout = self.request_timeout();
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        Client::try_from(config)
    }
}

/// The default identity: the host's name (a Pod's name in a cluster) and this
/// process's id, so that two processes on one machine never share one.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tend".into());
    format!("{host}-{}", std::process::id())
}

/// Campaigns for the Lease until `stop`, publishing on `leading` whether this
/// replica may act. On `stop` it gives the Lease up, so that a standby may
/// take it at its next look.
pub async fn campaign(
    client: Client,
    lease: LeaseSettings,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
) {
    let mut retry = Backoff::new(lease.renew_margin());
    let Some(mut manager) = connect(&client, &lease, &stop, &ready, &mut retry).await else {
        return;
    };
    step(&leading, false, &lease, &ready, &metrics);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    loop {
        let leads = *leading.borrow();
        let (failed, release) = tokio::select! {
            _ = stop.cancelled() => break,
            changed = manager.changed() => match changed {
                Ok(now) => {
                    retry.reset();
                    if now {
                        info!(lease = %lease.name, identity = %lease.identity, "leading: this replica reconciles and sweeps");
                    } else if leads {
                        warn!(lease = %lease.name, "lost the Lease to another replica; stopped acting");
                    }
                    step(&leading, now, &lease, &ready, &metrics);
                    continue;
                }
                Err(e) if leads => (format!("cannot renew the Lease: {e}"), true),
                Err(e) => (format!("cannot read the Lease: {e}"), true),
            },
            lapsed = lapse(&leases, &lease), if leads => match lapsed {
                // Another replica holds it: giving it up would take it from them.
                Lapse::Lost(why) => (why, false),
                Lapse::Unsure(why) => (why, true),
            },
        };
        warn!(lease = %lease.name, "{failed}; not acting until the Lease is held again");
        step(&leading, false, &lease, &ready, &metrics);
        ready.set_role(Role::LeaseUnreachable);
        // Not knowing whether it still holds the Lease, this replica gives it
        // up before it competes again.
        if release {
            loop {
                match give_up(&manager).await {
                    Ok(()) => break,
                    Err(Released::Gone) => {
                        // Deleted under it: a new manager creates it again.
                        warn!(lease = %lease.name, "the Lease is gone; creating it again");
                        let Some(fresh) = connect(&client, &lease, &stop, &ready, &mut retry).await
                        else {
                            return;
                        };
                        manager = fresh;
                        break;
                    }
                    Err(Released::Failed(e)) => {
                        warn!(lease = %lease.name, "cannot give up the Lease yet: {e}");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = retry.wait() => {}
                        }
                    }
                }
            }
        }
        ready.set_role(Role::Standby);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = retry.wait() => {}
        }
    }
    step(&leading, false, &lease, &ready, &metrics);
    match give_up(&manager).await {
        Ok(()) => info!(lease = %lease.name, "gave up the Lease"),
        Err(Released::Gone) => {}
        Err(Released::Failed(e)) => {
            warn!(lease = %lease.name, "could not give up the Lease; it expires on its own: {e}")
        }
    }
}

/// Why the Lease could not be given up.
enum Released {
    /// It does not exist (any more).
    Gone,
    Failed(String),
}

/// Gives the Lease up if this replica holds it. The Lease manager panics on
/// a conflict answered to its release; that is a failed attempt here.
async fn give_up(manager: &LeaseManager) -> Result<(), Released> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(manager.release())
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(LeaseManagerError::NonexistentLease(_))) => Err(Released::Gone),
        Ok(Err(e)) => Err(Released::Failed(e.to_string())),
        Err(_) => Err(Released::Failed("the release met a conflict".into())),
    }
}

/// Why a leader stopped trusting its Lease.
enum Lapse {
    /// Another replica holds it.
    Lost(String),
    /// It may still be held by this replica, or by no one.
    Unsure(String),
}

/// Watches the leader's own Lease, independently of the renewals, and
/// resolves, saying why, once the Lease names another holder, cannot be
/// read, or has gone unrenewed until less than half the renew margin is
/// left. The last renewal read sets a deadline on the local clock, so a read
/// that hangs cannot keep a leader acting past it. Renewals that keep failing
/// without an error (conflicts retried inside the Lease manager) would
/// otherwise let a leader act on past its Lease.
async fn lapse(leases: &Api<Lease>, lease: &LeaseSettings) -> Lapse {
    let margin = lease.renew_margin();
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut first = true;
    loop {
        let read = async {
            if !first {
                tokio::time::sleep(margin / 8).await;
            }
            tokio::time::timeout(margin / 8, leases.get(&lease.name)).await
        };
        let read = tokio::select! {
            () = sleep_until(deadline) => {
                return Lapse::Unsure("the Lease went unrenewed".into());
            }
            read = read => read,
        };
        first = false;
        let read = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return Lapse::Unsure(format!("cannot read the Lease: {e}")),
            Err(_) => return Lapse::Unsure("reading the Lease timed out".into()),
        };
        let spec = read.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(lease.identity.as_str()) {
            return Lapse::Lost(format!(
                "the Lease names {} as its holder",
                spec.holder_identity.as_deref().unwrap_or("no one")
            ));
        }
        let (Some(renewed), Some(held_for)) = (spec.renew_time, spec.lease_duration_seconds) else {
            return Lapse::Unsure("the Lease has no renewal time or duration".into());
        };
        let expires = renewed.0 + jiff::SignedDuration::from_secs(i64::from(held_for));
        let left = expires.duration_since(jiff::Timestamp::now())
            - jiff::SignedDuration::try_from(margin / 2).unwrap_or_default();
        match std::time::Duration::try_from(left) {
            Ok(left) if !left.is_zero() => deadline = Some(tokio::time::Instant::now() + left),
            _ => return Lapse::Unsure("the Lease went unrenewed".into()),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn step(
    leading: &watch::Sender<bool>,
    now: bool,
    lease: &LeaseSettings,
    ready: &Readiness,
    metrics: &Metrics,
) {
    leading.send_replace(now);
    ready.set_role(if now { Role::Leader } else { Role::Standby });
    metrics.leading(&lease.name, now);
}

/// Makes sure the Lease exists, retrying until it does or `stop`.
async fn connect(
    client: &Client,
    lease: &LeaseSettings,
    stop: &CancellationToken,
    ready: &Readiness,
    retry: &mut Backoff,
) -> Option<LeaseManager> {
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &lease.name)
            .with_namespace(&lease.namespace)
            .with_identity(&lease.identity)
            .with_duration(lease.duration.as_secs())
            .with_grace(lease.renew_margin().as_secs())
            .build();
        let failed = tokio::select! {
            _ = stop.cancelled() => return None,
            built = built => match built {
                Ok(manager) => return Some(manager),
                Err(e) => e,
            },
        };
        ready.set_role(Role::LeaseUnreachable);
        warn!(lease = %lease.name, namespace = %lease.namespace, error = %failed, "cannot reach the Lease");
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = retry.wait() => {}
        }
    }
}

/// Doubling waits between failed Lease calls, from a quarter second up to `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);

    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(secs: u64) -> LeaseSettings {
        LeaseSettings {
            name: "tend".into(),
            namespace: "tend-system".into(),
            identity: "a".into(),
            duration: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_renewal_times_out_inside_its_margin() {
        for secs in [3, 4, 5, 10, 15, 60] {
            let l = lease(secs);
            assert!(
                l.request_timeout() * 3 < l.renew_margin(),
                "{secs}s: three requests of {:?} must fit in {:?}",
                l.request_timeout(),
                l.renew_margin()
            );
            assert!(l.renew_margin() < l.duration, "{secs}s");
        }
        assert_eq!(lease(15).renew_margin(), Duration::from_secs(5));
    }

    #[test]
    fn identities_differ_between_processes_on_one_host() {
        let id = default_identity();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
    }
}

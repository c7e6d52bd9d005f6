//! Which answer to trust: the sweep's snapshot or a direct look.

use super::*;

/// One answer about the recorded instance, and what the sweeper adds to it.
pub(super) struct Look {
    pub observation: Observation,
    pub hold: Hold,
    pub stale: bool,
    /// A death seen outside the sweep: wait for the sweep to confirm it.
    pub await_sweep: bool,
}

/// The sweeper's answer if it is fresh (younger than two sweep intervals),
/// about the same instance, and the Workspace is settled (Online or Offline);
/// otherwise, or when `tend.dev/refresh` has a new value, one direct look.
/// While tend itself is changing the backend (launching, starting, stopping,
/// restarting) an answer from before that change would mislead.
pub(super) async fn look(
    ws: &Workspace,
    ctx: &Context,
    spec: &api::Ec2Spec,
    old: &WorkspaceStatus,
    now: Timestamp,
) -> Look {
    let uid = ws.uid().unwrap_or_default();
    let refresh = ws.annotations().get(REFRESH_ANNOTATION);
    let forced =
        refresh.is_some_and(|v| ctx.refreshes.lock().expect("refresh lock").get(&uid) != Some(v));
    let settled = matches!(old.phase, Some(Phase::Online | Phase::Offline));
    let snapshot = ctx.snapshot.borrow().clone();
    let entry = snapshot
        .get(&uid)
        .filter(|e| old.instance_id.as_deref() == Some(e.instance_id.as_str()));
    // Nothing tend recorded since may be newer than the sweep's answer: not
    // the last answer written to status, and not the last restart.
    let newest_known = [
        old.observation.as_ref().map(|o| o.observed_at.0),
        old.last_restart.as_ref().map(|r| r.at.0),
    ]
    .into_iter()
    .flatten()
    .max();
    if !forced
        && settled
        && let Some(entry) = entry
        && elapsed(entry.observed_at, now).unwrap_or(Duration::MAX)
            < ctx.settings.sweep_interval * 2
        && newest_known.is_none_or(|t| entry.observed_at >= t)
    {
        debug!(workspace = %ws.name_any(), sweep = snapshot.sweep, "using the sweep's answer");
        return Look {
            observation: entry.observation.clone(),
            hold: entry.hold,
            stale: entry.stale,
            await_sweep: false,
        };
    }
    if let Some(value) = refresh {
        ctx.refreshes
            .lock()
            .expect("refresh lock")
            .insert(uid, value.clone());
    }
    let observation = ctx.ec2.observe(spec, old, now).await;
    debug!(workspace = %ws.name_any(), forced, ?observation, "looked directly");
    ctx.metrics.observed(&observation);
    let dead = matches!(observation, Observation::NotRunning(_));
    // A direct look that agrees with a held sweep answer stays held.
    let hold = match entry {
        Some(e) if dead && matches!(e.hold, Hold::Suspected { .. }) => e.hold,
        _ => Hold::None,
    };
    Look {
        observation,
        hold,
        stale: false,
        // Only the sweep sees the whole fleet, so only the sweep (and its
        // circuit breaker) may take a running Workspace offline; a user's
        // refresh is the one exception.
        await_sweep: dead && !forced && old.phase == Some(Phase::Online),
    }
}

/// `Ready=Unknown` when the answer cannot be trusted yet, or is too old.
pub(super) fn uncertainty(look: Option<&Look>) -> Option<Problem> {
    let look = look?;
    match (&look.observation, look.hold) {
        (Observation::NotRunning(nr), Hold::Suspected { .. }) => Some(Problem::uncertain(
            "SuspectedProviderOutage",
            format!(
                "{} ({}), but too many Workspaces of its region or zone stopped at once; \
                 acting only if the answer persists",
                nr.message, nr.reason
            ),
        )),
        // No error text: it varies from look to look, and each change would
        // be another write and event for every stale Workspace.
        (Observation::Unknown { .. }, _) if look.stale => Some(Problem::uncertain(
            "ObservationStale",
            "no clean answer from the backend for longer than --stale-after; see BackendRunning"
                .to_owned(),
        )),
        _ => None,
    }
}

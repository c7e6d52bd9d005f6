//! Writing the new status, and only then announcing it with events.

use super::*;

/// Applies a backend record to status.
pub(super) fn apply_record(status: &mut WorkspaceStatus, runtime: api::Runtime, record: &Record) {
    match record {
        // The phase, written with it, is the record.
        Record::Begun => {}
        Record::Volume { id, region, zone } => {
            status.volume_id = Some(id.clone());
            status.region = region.clone();
            status.availability_zone = zone.clone();
        }
        Record::LaunchReserved(n) => {
            // A new launch number retires the previous instance, if any.
            status.launch_number = Some(*n);
            status.set_backend_id(runtime, None);
            status.launched_at = None;
        }
        Record::Launched { id, at } => {
            status.set_backend_id(runtime, Some(id.clone()));
            status.launched_at = Some(Time(*at));
        }
    }
}

/// Computes the new status, writes it if anything changed, and only after a
/// successful write emits the events that describe it.
pub(super) async fn commit(
    ws: &Workspace,
    ctx: &Context,
    api: &Api<Workspace>,
    old: &WorkspaceStatus,
    outcome: Outcome,
) -> Result<bool, Error> {
    let now = Timestamp::now();
    let from = old.phase.unwrap_or(Phase::Pending);
    let mut new = old.clone();
    new.phase = Some(outcome.phase);
    new.observed_generation = ws.metadata.generation;
    if let Some(r) = &outcome.record {
        apply_record(&mut new, ws.spec.runtime, r);
        new.runtime = Some(ws.spec.runtime);
    }
    // The Instance column, also for status written before it existed.
    new.backend = new.backend_id().map(str::to_owned);
    if let Some(retry) = &outcome.retry_handled {
        new.handled_retry = Some(retry.clone());
        new.recent_restarts.clear();
    }
    if outcome.phase == Phase::Restarting && from != Phase::Restarting {
        new.restarts += 1;
        new.last_restart = Some(RestartRecord {
            at: Time(now),
            reason: ready_reason(old).unwrap_or("Offline").to_owned(),
        });
        let mut history: Vec<Timestamp> = new.recent_restarts.iter().map(|t| t.0).collect();
        history.push(now);
        new.recent_restarts = restart::recent(&history, now)
            .into_iter()
            .map(Time)
            .collect();
    }
    if let Some(refresh) = &outcome.refresh_handled {
        new.handled_refresh = Some(refresh.clone());
    }
    let backend = ctx.backend(ws);
    if let Some(obs) = &outcome.observation {
        let source = backend.map_or("unknown", |b| b.source());
        record_observation(&mut new, obs, outcome.asked_at, source);
        new.uncertain_since = outcome.uncertain_since.map(Time);
    }
    let wanted = conditions::wanted_conditions(&conditions::Inputs {
        phase: outcome.phase,
        observation: outcome.observation.as_ref(),
        problem: outcome.problem.as_ref(),
        heals: backend.is_some_and(|b| restart_policy(ws, b) == RestartPolicy::Always),
        detail: outcome.detail.as_deref(),
        old: &old.conditions,
    });
    new.conditions = conditions::settle(wanted, &old.conditions, ws.metadata.generation, now);
    if &new == old {
        return Ok(false);
    }
    status::write(api, ws, old, &new).await?;

    // The recorder folds repeats of the same reason and action into one event
    // series; naming the backend as the related object keeps a new
    // backend's events apart from the old one's.
    let related = new
        .backend_id()
        .zip(backend)
        .map(|(id, b)| ObjectReference {
            kind: Some(b.object_kind().into()),
            name: Some(id.to_owned()),
            ..Default::default()
        });
    for mut event in events_for(old, &new, &outcome, backend) {
        event.secondary = related.clone();
        publish(ctx, ws, event).await;
    }
    // What the reconcile's log lines from here on say of the Workspace.
    let span = tracing::Span::current();
    span.record("phase", outcome.phase.as_str());
    if let Some(backend) = &new.backend {
        span.record("instance", backend.as_str());
    }
    if from != outcome.phase {
        ctx.metrics.transition(outcome.phase);
        match outcome.phase {
            Phase::Offline => ctx
                .metrics
                .went_offline(ready_reason(&new).unwrap_or("Unknown")),
            Phase::Restarting => ctx.metrics.restarted(),
            _ => {}
        }
        info!(from = %from, to = %outcome.phase, "phase changed");
    }
    Ok(true)
}

/// `status.observation` holds the last clean answer; its time (when the call
/// that gave it was sent) moves only when the answer changes.
pub(super) fn record_observation(
    status: &mut WorkspaceStatus,
    obs: &Observation,
    asked_at: Timestamp,
    source: &str,
) {
    let Some(state) = obs.state_name() else {
        return;
    };
    let reason = match obs {
        Observation::NotRunning(nr) => Some(nr.reason.clone()),
        _ => None,
    };
    let same = status
        .observation
        .as_ref()
        .is_some_and(|o| o.state == state && o.reason == reason);
    if !same {
        status.observation = Some(ObservationRecord {
            state: state.to_owned(),
            reason,
            observed_at: Time(asked_at),
            source: source.to_owned(),
        });
    }
}

/// The events a persisted change deserves.
pub(super) fn events_for(
    old: &WorkspaceStatus,
    new: &WorkspaceStatus,
    outcome: &Outcome,
    backend: Option<&dyn Backend>,
) -> Vec<Event> {
    let mut events = Vec::new();
    let ready = new.conditions.iter().find(|c| c.type_ == condition::READY);
    let note = ready.map(|c| c.message.clone()).filter(|m| !m.is_empty());
    let from = old.phase.unwrap_or(Phase::Pending);
    if from != outcome.phase {
        let warning = matches!(outcome.phase, Phase::Offline | Phase::Failed);
        let reason = if warning {
            ready
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| outcome.phase.to_string())
        } else {
            outcome.phase.to_string()
        };
        events.push(Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason,
            // No "from" phase in the note: the recorder folds repeats of an
            // event into a series that keeps the first note, so the note must
            // be as true the second time as the first.
            note: Some(match note {
                Some(n) => format!("now {}: {n}", outcome.phase),
                None => format!("now {}", outcome.phase),
            }),
            action: outcome.action.to_owned(),
            secondary: None,
        });
    } else if let Some(problem) = &outcome.problem {
        let old_reason = old
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .map(|c| (&c.reason, &c.message));
        if old_reason != Some((&problem.reason.to_owned(), &problem.message)) {
            events.push(Event {
                type_: EventType::Warning,
                reason: problem.reason.to_owned(),
                note: Some(problem.message.clone()),
                action: outcome.action.to_owned(),
                secondary: None,
            });
        }
    }
    match &outcome.record {
        Some(Record::Volume { id, zone, .. }) => events.push(normal(
            "VolumeCreated",
            match zone {
                Some(zone) => format!("data volume {id} in {zone}"),
                None => format!("data volume {id}"),
            },
            outcome.action,
        )),
        Some(Record::Launched { id, .. }) => events.push(normal(
            "Launched",
            backend.map_or_else(|| format!("launched {id}"), |b| b.launched(id)),
            outcome.action,
        )),
        _ => {}
    }
    events
}

/// The longest Event note the API server accepts, in bytes; a longer one is
/// refused (422) and the event lost.
const NOTE_LIMIT: usize = 1024;

/// Publishes an event about `ws`, its note cut to what the API server accepts.
/// The only way tend publishes events. A failure is logged and otherwise
/// ignored: what the event announces is already persisted.
pub(super) async fn publish(ctx: &Context, ws: &Workspace, mut event: Event) {
    if let Some(note) = event.note.as_mut() {
        fit_note(note);
    }
    if let Err(e) = ctx.recorder.publish(&event, &ws.object_ref(&())).await {
        warn!("could not publish event {}: {e}", event.reason);
    }
}

/// Cuts a note longer than [`NOTE_LIMIT`] at a character boundary and marks
/// the cut with an ellipsis.
fn fit_note(note: &mut String) {
    const CUT: char = '…';
    if note.len() > NOTE_LIMIT {
        let end = note.floor_char_boundary(NOTE_LIMIT - CUT.len_utf8());
        note.truncate(end);
        note.push(CUT);
    }
}

pub(super) fn normal(reason: &str, note: String, action: &str) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_note_is_left_alone() {
        let mut note = "é".repeat(NOTE_LIMIT / 2);
        assert_eq!(note.len(), NOTE_LIMIT);
        let before = note.clone();
        fit_note(&mut note);
        assert_eq!(note, before);
    }

    #[test]
    fn a_long_note_is_cut_at_a_character_boundary() {
        // Every offset of a multi-byte character against the limit: 2, 3 and
        // 4 bytes, after 0..4 bytes of ASCII.
        for wide in ["é", "€", "𝄞"] {
            for lead in 0..4 {
                let mut note = "a".repeat(lead) + &wide.repeat(NOTE_LIMIT);
                fit_note(&mut note);
                assert!(
                    note.len() <= NOTE_LIMIT,
                    "{wide} after {lead}: {}",
                    note.len()
                );
                assert!(
                    note.len() > NOTE_LIMIT - wide.len(),
                    "{wide} after {lead}: cut too short ({})",
                    note.len()
                );
                assert!(note.ends_with('…'));
                let kept = note.trim_end_matches('…');
                assert!(
                    kept.strip_prefix(&"a".repeat(lead))
                        .unwrap()
                        .chars()
                        .all(|c| c.to_string() == wide)
                );
            }
        }
    }

    #[test]
    fn one_byte_over_is_cut() {
        let mut note = "x".repeat(NOTE_LIMIT + 1);
        fit_note(&mut note);
        assert_eq!(note.len(), NOTE_LIMIT);
        assert!(note.ends_with('…'));
    }
}

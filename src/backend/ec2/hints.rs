//! EC2 event hints: EventBridge's "EC2 Instance State-change Notification" and
//! "EC2 Spot Instance Interruption Warning" events, delivered to an SQS queue
//! (`--sqs-queue-url`).
//!
//! A hint is a reason to look, never an answer. A hint about one of tend's
//! instances makes the sweeper look at that instance's region at once (an
//! early sweep: the authoritative describe, with the circuit breaker seeing
//! the region's Workspaces whole); only what EC2 answers then changes a
//! phase. A spot interruption warning is also published as an Event on the
//! Workspace, so `kubectl describe` shows it while the instance still runs.
//!
//! A message is deleted once handled. A message that is not such an event
//! (unparseable, another source or kind), one about an instance no
//! Workspace records, one tend has already handled (EventBridge delivers at
//! least once), and a state change that cannot mean death (`pending`,
//! `running`) are counted and deleted without any action.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{Runtime, Workspace};
use crate::backend::Change;
use crate::metrics::Metrics;

const STATE_CHANGE: &str = "EC2 Instance State-change Notification";
const SPOT_WARNING: &str = "EC2 Spot Instance Interruption Warning";

/// How long one receive waits for messages (SQS allows at most 20 s).
const LONG_POLL: Duration = Duration::from_secs(20);
/// Event ids remembered, to drop redeliveries.
const REMEMBERED: usize = 10_000;

/// What one message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Not an EC2 event tend reads: not JSON, another source or kind, or
    /// fields missing. Why, for the log.
    Garbage(String),
    /// An event about one instance.
    Hint(Hint),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// EventBridge's event id: the same for every delivery of one event.
    pub id: String,
    pub instance: String,
    pub region: String,
    pub kind: HintKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintKind {
    /// The instance's new state, as EC2 names it (`stopping`, `terminated`, ...).
    StateChange(String),
    /// EC2 will reclaim the spot instance in about two minutes, doing this
    /// (`terminate`, `stop` or `hibernate`).
    SpotInterruption(String),
}

impl Hint {
    /// Whether this could mean the instance is no longer running.
    fn worth_a_look(&self) -> bool {
        match &self.kind {
            HintKind::StateChange(state) => {
                matches!(
                    state.as_str(),
                    "stopping" | "stopped" | "shutting-down" | "terminated"
                )
            }
            HintKind::SpotInterruption(_) => true,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    source: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    region: String,
    detail: Detail,
}

#[derive(Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    state: Option<String>,
    #[serde(rename = "instance-action")]
    instance_action: Option<String>,
}

/// Reads one message body as EventBridge delivers it to SQS.
pub fn parse(body: &str) -> Message {
    let envelope: Envelope = match serde_json::from_str(body) {
        Ok(e) => e,
        Err(e) => return Message::Garbage(format!("not an EventBridge event: {e}")),
    };
    let Envelope {
        id,
        source,
        detail_type,
        region,
        detail:
            Detail {
                instance_id,
                state,
                instance_action,
            },
    } = envelope;
    if source != "aws.ec2" {
        return Message::Garbage(format!("an event from {source}"));
    }
    let kind = match (detail_type.as_str(), state, instance_action) {
        (STATE_CHANGE, Some(state), _) => HintKind::StateChange(state),
        (SPOT_WARNING, _, Some(action)) => HintKind::SpotInterruption(action),
        (other, ..) => return Message::Garbage(format!("a {other:?} event")),
    };
    if !instance_id.starts_with("i-") {
        return Message::Garbage(format!("{instance_id:?} is not an instance id"));
    }
    Message::Hint(Hint {
        id,
        instance: instance_id,
        region,
        kind,
    })
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An early sweep was asked for (and a warning published).
    Handled,
    /// A state change that cannot mean death.
    Ignored,
    Garbage,
    /// About an instance no Workspace records.
    Foreign,
    Duplicate,
    /// The early sweep was asked for but the warning could not be
    /// published: kept in the queue, to come back.
    Retry,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Ignored => "ignored",
            Outcome::Garbage => "garbage",
            Outcome::Foreign => "foreign",
            Outcome::Duplicate => "duplicate",
            Outcome::Retry => "retry",
        }
    }
}

/// Reads the queue and turns hints into early sweeps.
pub struct Hints {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// The Workspaces, to find the one an instance belongs to.
    pub store: Store<Workspace>,
    /// Where a region to look at goes: the EC2 backend's change stream.
    pub changes: UnboundedSender<Change>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Timeout of each receive beyond its long poll, and of each delete.
    pub call_timeout: Duration,
    /// The region of Workspaces that name none.
    pub default_region: String,
}

impl Hints {
    /// Polls until `stop`. A failed receive is logged (once until one
    /// succeeds again) and retried with a growing pause.
    pub async fn run(self, stop: CancellationToken) {
        let mut seen = Remembered::default();
        let mut failing = false;
        let mut pause = Duration::from_secs(1);
        // A message read before the Workspaces are known would be taken for
        // a foreign one and dropped.
        tokio::select! {
            _ = stop.cancelled() => return,
            ready = self.store.wait_until_ready() => if ready.is_err() {
                warn!("the Workspace cache was dropped before it was ready; not reading EC2 event hints");
                return;
            },
        }
        info!(queue = %self.queue_url, "reading EC2 event hints");
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(LONG_POLL + self.call_timeout, self.receive()) => r,
            };
            let messages = match received {
                Ok(Ok(messages)) => {
                    if failing {
                        info!(queue = %self.queue_url, "the hint queue answers again");
                        failing = false;
                    }
                    pause = Duration::from_secs(1);
                    messages
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
                        _ => "timed out".into(),
                    };
                    self.metrics.hint_receive_failed();
                    if !failing {
                        warn!(queue = %self.queue_url, "cannot read EC2 event hints (the sweep still runs): {why}");
                        failing = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            for message in messages {
                let outcome = self
                    .handle(message.body().unwrap_or_default(), &mut seen)
                    .await;
                self.metrics.hint(outcome.label());
                if outcome != Outcome::Retry
                    && let Some(receipt) = message.receipt_handle()
                {
                    self.delete(receipt).await;
                }
            }
        }
    }

    async fn receive(
        &self,
    ) -> Result<
        Vec<aws_sdk_sqs::types::Message>,
        aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::receive_message::ReceiveMessageError>,
    > {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(LONG_POLL.as_secs() as i32)
            .send()
            .await?;
        Ok(out.messages.unwrap_or_default())
    }

    /// A message not deleted comes back after the queue's visibility timeout.
    async fn delete(&self, receipt: &str) {
        let sent = self
            .sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send();
        match tokio::time::timeout(self.call_timeout, sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(
                "could not delete a handled hint (it comes back, and is dropped as a duplicate): {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            ),
            Err(_) => warn!(
                "deleting a handled hint timed out (it comes back, and is dropped as a duplicate)"
            ),
        }
    }

    async fn handle(&self, body: &str, seen: &mut Remembered) -> Outcome {
        let hint = match parse(body) {
            Message::Garbage(why) => {
                debug!("dropped a hint message: {why}");
                return Outcome::Garbage;
            }
            Message::Hint(hint) => hint,
        };
        if seen.contains(&hint.id) {
            return Outcome::Duplicate;
        }
        if !hint.worth_a_look() {
            seen.insert(hint.id);
            return Outcome::Ignored;
        }
        let Some(ws) = self.owner(&hint) else {
            seen.insert(hint.id);
            return Outcome::Foreign;
        };
        info!(instance = %hint.instance, region = %hint.region, hint = ?hint.kind, "EC2 event hint: looking at the region now");
        let _ = self.changes.unbounded_send(Change::At(hint.region.clone()));
        if let HintKind::SpotInterruption(action) = &hint.kind {
            let reference: ObjectReference = ws.object_ref(&());
            let event = Event {
                type_: EventType::Warning,
                reason: "SpotInterruptionWarning".into(),
                note: Some(format!(
                    "EC2 will reclaim spot instance {} in about two minutes ({action}); tend heals the Workspace once EC2 reports it gone",
                    hint.instance
                )),
                action: "Observe".into(),
                secondary: None,
            };
            let published =
                tokio::time::timeout(self.call_timeout, self.recorder.publish(&event, &reference))
                    .await;
            let failed = match published {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".into()),
            };
            if let Some(why) = failed {
                warn!(instance = %hint.instance, "could not record a spot interruption warning (the message comes back): {why}");
                return Outcome::Retry;
            }
        }
        seen.insert(hint.id);
        Outcome::Handled
    }

    /// The EC2 Workspace whose status records this instance, in this region.
    fn owner(&self, hint: &Hint) -> Option<Arc<Workspace>> {
        self.store.state().into_iter().find(|ws| {
            let Some(status) = &ws.status else {
                return false;
            };
            let region = status.region.as_deref().unwrap_or(&self.default_region);
            ws.spec.runtime == Runtime::Ec2
                && status.instance_id.as_deref() == Some(hint.instance.as_str())
                && region == hint.region
        })
    }
}

/// The ids of the last [`REMEMBERED`] events handled.
#[derive(Default)]
struct Remembered {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Remembered {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail_type: &str, detail: serde_json::Value) -> String {
        serde_json::json!({
            "version": "0",
            "id": "7bf73129-1428-4cd3-a780-95db273d1602",
            "detail-type": detail_type,
            "source": "aws.ec2",
            "account": "123456789012",
            "time": "2026-12-02T10:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0abc"],
            "detail": detail,
        })
        .to_string()
    }

    #[test]
    fn state_changes_and_spot_warnings_are_hints() {
        let changed = parse(&event(
            STATE_CHANGE,
            serde_json::json!({"instance-id": "i-0abc", "state": "terminated"}),
        ));
        assert_eq!(
            changed,
            Message::Hint(Hint {
                id: "7bf73129-1428-4cd3-a780-95db273d1602".into(),
                instance: "i-0abc".into(),
                region: "us-east-1".into(),
                kind: HintKind::StateChange("terminated".into()),
            })
        );
        let warned = parse(&event(
            SPOT_WARNING,
            serde_json::json!({"instance-id": "i-0abc", "instance-action": "stop"}),
        ));
        let Message::Hint(hint) = warned else {
            panic!("{warned:?}")
        };
        assert_eq!(hint.kind, HintKind::SpotInterruption("stop".into()));
        assert!(hint.worth_a_look());
    }

    #[test]
    fn only_states_that_can_mean_death_are_worth_a_look() {
        for (state, look) in [
            ("pending", false),
            ("running", false),
            ("stopping", true),
            ("stopped", true),
            ("shutting-down", true),
            ("terminated", true),
        ] {
            let Message::Hint(hint) = parse(&event(
                STATE_CHANGE,
                serde_json::json!({"instance-id": "i-0abc", "state": state}),
            )) else {
                panic!("{state}")
            };
            assert_eq!(hint.worth_a_look(), look, "{state}");
        }
    }

    #[test]
    fn anything_else_is_garbage() {
        let foreign_source =
            event(STATE_CHANGE, serde_json::json!({})).replace("\"aws.ec2\"", "\"aws.s3\"");
        for body in [
            "".to_string(),
            "not json".into(),
            "{}".into(),
            "[1,2]".into(),
            foreign_source,
            event(
                "EC2 AMI State Change",
                serde_json::json!({"instance-id": "i-0abc"}),
            ),
            event(STATE_CHANGE, serde_json::json!({"instance-id": "i-0abc"})),
            event(SPOT_WARNING, serde_json::json!({"instance-id": "i-0abc"})),
            event(
                STATE_CHANGE,
                serde_json::json!({"instance-id": "vol-1", "state": "terminated"}),
            ),
        ] {
            assert!(
                matches!(parse(&body), Message::Garbage(_)),
                "{body:?} is no hint"
            );
        }
    }

    #[test]
    fn remembered_ids_are_bounded() {
        let mut seen = Remembered::default();
        for n in 0..REMEMBERED + 5 {
            seen.insert(n.to_string());
        }
        assert!(!seen.contains("4"), "the oldest are forgotten");
        assert!(seen.contains("5"));
        assert_eq!(seen.ids.len(), REMEMBERED);
    }
}

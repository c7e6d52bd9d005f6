//! Watch streams: history replay, live fan-out, bookmarks, expiry and timeouts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::{Instant, Interval};

use super::resource::{ApiError, Filter, Query, Target, TypeInfo, TypeKey};
use super::store::{Change, ChangeType, Msg, Shared, State};

/// Watches that do not ask for a timeout end after this, like the server's request timeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// One open watch: events queued for the client plus the live subscription.
pub(crate) struct WatchStream {
    shared: Arc<Shared>,
    target: Target,
    key: TypeKey,
    info: TypeInfo,
    filter: Filter,
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Msg>,
    deadline: Instant,
    bookmarks: Option<Interval>,
    /// Set once the stream must end after `pending` drains (after an ERROR event).
    finished: bool,
    /// Highest resourceVersion this stream has passed, for bookmarks.
    last_rv: u64,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(Value::Object(m)) = obj.get_mut("metadata") {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

impl WatchStream {
    /// Opens a watch; must run under the state lock so no change falls between replay and subscription.
    pub(crate) fn start(
        shared: Arc<Shared>,
        st: &State,
        t: &Target,
        q: &Query,
        filter: Filter,
    ) -> Result<WatchStream, ApiError> {
        let key = t.key();
        let info = st.info(t)?;
        st.check_scope(t, &info)?;
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WATCH_TIMEOUT);
        let allow_bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
        let requested = q.get("resourceVersion").map(String::as_str).unwrap_or("");
        let bookmarks = allow_bookmarks.then(|| {
            let period = st.config.bookmark_interval.max(Duration::from_millis(10));
            tokio::time::interval_at(Instant::now() + period, period)
        });
        let mut stream = WatchStream {
            shared,
            target: t.clone(),
            key: key.clone(),
            info,
            filter,
            pending: VecDeque::new(),
            rx: st.tx.subscribe(),
            deadline: Instant::now() + timeout,
            bookmarks,
            finished: false,
            last_rv: st.rv,
        };
        if requested.is_empty() || requested == "0" || send_initial {
            for obj in st.collection(t) {
                if stream.filter.matches(obj) {
                    let rendered = stream.render(obj);
                    stream.pending.push_back(line("ADDED", &rendered));
                }
            }
            if send_initial && allow_bookmarks {
                let bookmark = stream.bookmark(st.rv, true);
                stream.pending.push_back(bookmark);
            }
            return Ok(stream);
        }
        let from: u64 = requested.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid resource version: {requested:?}"))
        })?;
        let ts = st.types.get(&key);
        let compacted = st
            .compacted_through
            .max(ts.map_or(0, |ts| ts.compacted_through));
        if from < compacted {
            let status = ApiError::expired(format!(
                "too old resource version: {from} ({})",
                compacted + 1
            ))
            .to_status();
            stream.pending.push_back(line("ERROR", &status));
            stream.finished = true;
            return Ok(stream);
        }
        if let Some(ts) = ts {
            for change in ts.history.iter().filter(|c| c.rv > from) {
                if let Some(event) = stream.event_for(change) {
                    stream.pending.push_back(event);
                }
            }
        }
        Ok(stream)
    }

    /// The object as this watch's API version and selectors show it.
    fn render(&self, obj: &Value) -> Value {
        self.filter
            .render(&State::present(&self.target, &self.info, obj))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (api_version, kind) = if self.filter.partial {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadata".to_string(),
            )
        } else {
            (self.target.api_version(), self.info.kind.clone())
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}),
        )
    }

    /// Translates a change into this watch's event, turning selector transitions into
    /// ADDED/DELETED the way the API server's watch cache does.
    fn event_for(&self, change: &Change) -> Option<Bytes> {
        if change.key != self.key
            || self
                .target
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != change.namespace)
        {
            return None;
        }
        let now = self.filter.matches(&change.object);
        match change.change {
            ChangeType::Added if now => Some(line("ADDED", &self.render(&change.object))),
            ChangeType::Deleted if now => Some(line("DELETED", &self.render(&change.object))),
            ChangeType::Modified => {
                let before = change
                    .previous
                    .as_ref()
                    .is_some_and(|p| self.filter.matches(p));
                match (now, before) {
                    (true, true) => Some(line("MODIFIED", &self.render(&change.object))),
                    (true, false) => Some(line("ADDED", &self.render(&change.object))),
                    (false, true) => {
                        let mut gone = change.previous.clone().unwrap_or(Value::Null);
                        set_rv(&mut gone, change.rv);
                        Some(line("DELETED", &self.render(&gone)))
                    }
                    (false, false) => None,
                }
            }
            _ => None,
        }
    }

    /// Handles one message from the fan-out; `false` means the stream must end.
    fn absorb(&mut self, msg: Result<Msg, broadcast::error::RecvError>) -> bool {
        match msg {
            Ok(Msg::Change(change)) => {
                self.last_rv = self.last_rv.max(change.rv);
                if let Some(event) = self.event_for(&change) {
                    self.pending.push_back(event);
                }
                true
            }
            Ok(Msg::CloseWatches) | Err(broadcast::error::RecvError::Closed) => false,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // A client too slow for the fan-out has lost events: make it relist.
                let status =
                    ApiError::expired("watch fell behind; too old resource version").to_status();
                self.pending.push_back(line("ERROR", &status));
                self.finished = true;
                true
            }
        }
    }

    /// The next newline-terminated event, or `None` when the stream ends.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.finished {
                return None;
            }
            let (bookmarks, rx, deadline) = (&mut self.bookmarks, &mut self.rx, self.deadline);
            let tick = async {
                match bookmarks.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                msg = rx.recv() => Some(msg),
                _ = tick => None,
            };
            match msg {
                Some(msg) => {
                    if !self.absorb(msg) {
                        return None;
                    }
                }
                None => {
                    // Bookmark: every change up to the current revision must be delivered first.
                    let current = self.shared.lock().rv;
                    loop {
                        match self.rx.try_recv() {
                            Ok(msg) => {
                                if !self.absorb(Ok(msg)) {
                                    self.finished = true;
                                    break;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Closed) => {
                                self.finished = true;
                                break;
                            }
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                self.absorb(Err(broadcast::error::RecvError::Lagged(n)));
                                break;
                            }
                        }
                    }
                    if !self.finished {
                        let rv = current.max(self.last_rv);
                        self.last_rv = rv;
                        let bookmark = self.bookmark(rv, false);
                        self.pending.push_back(bookmark);
                    }
                }
            }
        }
    }
}

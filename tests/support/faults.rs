//! A fault-injecting HTTP proxy for the EC2 query protocol.
//!
//! [`FaultProxy`] listens on a free 127.0.0.1 port and forwards every request
//! (method, path and query, headers except `Host`, body) to an upstream such
//! as moto, returning upstream's answer, unless a [`FaultRule`] matches the
//! request. Rules are tried in the order they were injected; the first one
//! that matches and is not used up decides what happens to the request.
//!
//! The EC2 SDK POSTs `application/x-www-form-urlencoded` bodies such as
//! `Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=instance-id&Filter.1.Value.1=i-abc`;
//! the proxy decodes them to learn the `Action` and the ids a request
//! mentions.
//!
//! How the SDK (with a single attempt) sees each [`Fault`]:
//!
//! | fault | `SdkError` variant | details |
//! | --- | --- | --- |
//! | `Throttle` | `ServiceError` | code `RequestLimitExceeded`, HTTP 503 |
//! | `ServerError(500)` / `ServerError(503)` | `ServiceError` | code `InternalError` / `Unavailable` |
//! | `ErrorCode { .. }` | `ServiceError` | the given code and message |
//! | `Malformed` | `ServiceError` | no code: an unhandled (unparsable) response, HTTP 200 |
//! | `Truncated` | `ResponseError` | the body ended early |
//! | `Reset`, `ForwardThenReset` | `DispatchFailure` | an I/O error; the connection was closed |
//! | `Hang` | `TimeoutError` | once the client's operation or attempt timeout expires |
//! | `Delay(d)` | success, after `d` | or `TimeoutError` when `d` exceeds the client's timeout; the request still reaches upstream after `d` |
//!
//! Dropping the [`FaultProxy`] stops it and closes every connection it holds,
//! hanging ones included.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long [`FaultProxy::wait_for_calls`] waits before panicking.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// What to do with a request that a rule matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then forward the request as usual. The request is
    /// forwarded even if the client gives up during the delay, like a request
    /// that reached EC2 and is carried out late.
    Delay(Duration),
    /// HTTP 503 with an EC2 error body, code `RequestLimitExceeded`.
    Throttle,
    /// An EC2 server error with this HTTP status: 503 answers code
    /// `Unavailable`, any other status code `InternalError`.
    ServerError(u16),
    /// Never answer; the connection is held open until the client gives up
    /// or the proxy is dropped. The request is not forwarded.
    Hang,
    /// Close the connection without an answer. The request is not forwarded.
    Reset,
    /// Forward the request, so that its effect really happens upstream, wait
    /// for upstream's answer, then close the connection without passing the
    /// answer on: a crash or lost answer after the side effect.
    ForwardThenReset,
    /// HTTP 200 whose body is not EC2 XML. The request is not forwarded.
    Malformed,
    /// Forward, then replace every `find` in upstream's answer with `replace`:
    /// for answers moto cannot give, such as a spot reclaim's StateReason.
    Rewrite { find: String, replace: String },
    /// HTTP 200 announcing a longer body than is sent, then the connection is
    /// closed mid-body. The request is not forwarded.
    Truncated,
    /// An arbitrary EC2 error. The request is not forwarded.
    ErrorCode {
        status: u16,
        code: String,
        message: String,
    },
}

/// Which requests to fault, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// Match only requests with this `Action`; `None` matches every action.
    pub action: Option<String>,
    /// Match only requests whose decoded parameters mention this string,
    /// either as a whole value or as a token of a value (split on characters
    /// other than ASCII letters, digits, `-` and `_`): e.g. an instance id
    /// in `InstanceId.1` or in `Filter.1.Value.1`, or a tag value.
    pub mentions: Option<String>,
    pub fault: Fault,
    /// Apply to at most this many matching requests; `None` means forever.
    pub times: Option<usize>,
}

/// Builds a [`FaultRule`] until the fault is chosen.
#[derive(Clone, Debug, Default)]
pub struct RuleBuilder {
    action: Option<String>,
    mentions: Option<String>,
    times: Option<usize>,
}

impl FaultRule {
    /// A rule for requests with this `Action`.
    pub fn on(action: &str) -> RuleBuilder {
        RuleBuilder {
            action: Some(action.to_string()),
            ..RuleBuilder::default()
        }
    }

    /// A rule for requests with any `Action`.
    pub fn any() -> RuleBuilder {
        RuleBuilder::default()
    }

    /// Only requests mentioning `id`; see [`FaultRule::mentions`].
    pub fn mentioning(mut self, id: &str) -> FaultRule {
        self.mentions = Some(id.to_string());
        self
    }

    /// Apply to the first `n` matching requests only.
    pub fn times(mut self, n: usize) -> FaultRule {
        self.times = Some(n);
        self
    }

    fn matches(&self, request: &ParsedRequest) -> bool {
        if let Some(action) = &self.action
            && request.action != *action
        {
            return false;
        }
        if let Some(needle) = &self.mentions
            && !request.mentions(needle)
        {
            return false;
        }
        true
    }
}

impl RuleBuilder {
    /// Only requests mentioning `id`; see [`FaultRule::mentions`].
    pub fn mentioning(mut self, id: &str) -> RuleBuilder {
        self.mentions = Some(id.to_string());
        self
    }

    /// Apply to the first `n` matching requests only.
    pub fn times(mut self, n: usize) -> RuleBuilder {
        self.times = Some(n);
        self
    }

    pub fn fault(self, fault: Fault) -> FaultRule {
        FaultRule {
            action: self.action,
            mentions: self.mentions,
            fault,
            times: self.times,
        }
    }

    pub fn delay(self, delay: Duration) -> FaultRule {
        self.fault(Fault::Delay(delay))
    }

    pub fn throttle(self) -> FaultRule {
        self.fault(Fault::Throttle)
    }

    pub fn server_error(self, status: u16) -> FaultRule {
        self.fault(Fault::ServerError(status))
    }

    pub fn hang(self) -> FaultRule {
        self.fault(Fault::Hang)
    }

    pub fn reset(self) -> FaultRule {
        self.fault(Fault::Reset)
    }

    pub fn forward_then_reset(self) -> FaultRule {
        self.fault(Fault::ForwardThenReset)
    }

    pub fn rewrite(self, find: &str, replace: &str) -> FaultRule {
        self.fault(Fault::Rewrite {
            find: find.to_owned(),
            replace: replace.to_owned(),
        })
    }

    pub fn malformed(self) -> FaultRule {
        self.fault(Fault::Malformed)
    }

    pub fn truncated(self) -> FaultRule {
        self.fault(Fault::Truncated)
    }

    pub fn error_code(self, status: u16, code: &str, message: &str) -> FaultRule {
        self.fault(Fault::ErrorCode {
            status,
            code: code.to_string(),
            message: message.to_string(),
        })
    }
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet: in flight, delayed, or hanging.
    Pending,
    /// Upstream answered with this status, and the answer was passed on
    /// (unless the client had given up by then).
    Upstream { status: u16 },
    /// The proxy answered by itself with this status (an injected error,
    /// `Malformed` or `Truncated`).
    Injected { status: u16 },
    /// The connection was closed without an answer. `upstream_status` is
    /// upstream's status when the request had been forwarded first
    /// (`ForwardThenReset`).
    Dropped { upstream_status: Option<u16> },
    /// Upstream could not be reached; the client got HTTP 502.
    UpstreamFailed(String),
}

/// One request the proxy has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The `Action` parameter, or an empty string if there was none.
    pub action: String,
    /// Every parameter value that looks like an instance id (`i-` followed by
    /// ASCII letters and digits), in order of appearance, without repeats.
    pub instance_ids: Vec<String>,
    /// Every decoded request parameter (query string and form body), e.g.
    /// `"InstanceId.1" => "i-…"` or `"Hibernate" => "true"`.
    pub params: BTreeMap<String, String>,
    /// The fault of the rule that matched, if any.
    pub fault: Option<Fault>,
    pub outcome: Outcome,
    /// When the proxy received the request.
    pub received: Instant,
    /// From receipt until the outcome was known; `None` while pending.
    pub took: Option<Duration>,
}

/// A handle on an injected rule.
#[derive(Clone, Debug)]
pub struct RuleHandle {
    entry: Arc<RuleEntry>,
}

impl RuleHandle {
    /// How many requests this rule has matched so far.
    pub fn hits(&self) -> usize {
        self.entry.hits.load(Ordering::SeqCst)
    }

    /// Whether the rule has matched as many requests as its `times`.
    pub fn is_used_up(&self) -> bool {
        self.entry.is_used_up()
    }

    /// Stops the rule from matching further requests.
    pub fn remove(&self) {
        self.entry.removed.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct RuleEntry {
    rule: FaultRule,
    hits: AtomicUsize,
    removed: AtomicBool,
}

impl RuleEntry {
    fn is_used_up(&self) -> bool {
        self.rule
            .times
            .is_some_and(|times| self.hits.load(Ordering::SeqCst) >= times)
    }
}

struct LoggedCall {
    seq: u64,
    call: Call,
}

struct State {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    rules: Mutex<Vec<Arc<RuleEntry>>>,
    log: Mutex<Vec<LoggedCall>>,
    next_seq: AtomicU64,
    /// Bumped whenever the call log changes.
    changed: watch::Sender<u64>,
}

/// The fault-injecting proxy. Dropping it stops it.
pub struct FaultProxy {
    url: String,
    state: Arc<State>,
    /// Dropped with the proxy, which tells every task to stop.
    _shutdown: watch::Sender<()>,
}

pub type ProxyBody = BoxBody<Bytes, std::io::Error>;

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug)]
struct Abort;

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by fault injection")
    }
}

impl std::error::Error for Abort {}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `upstream_url`
    /// (e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream_url: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault proxy address");
        let (shutdown, shutdown_rx) = watch::channel(());
        let state = Arc::new(State {
            upstream: upstream_url.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            next_seq: AtomicU64::new(0),
            changed: watch::Sender::new(0),
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&state), shutdown_rx));
        FaultProxy {
            url: format!("http://{addr}"),
            state,
            _shutdown: shutdown,
        }
    }

    /// The proxy's base URL, to use as the EC2 endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The upstream base URL requests are forwarded to.
    pub fn upstream(&self) -> &str {
        &self.state.upstream
    }

    /// Adds a rule after the existing ones.
    pub fn inject(&self, rule: FaultRule) -> RuleHandle {
        let entry = Arc::new(RuleEntry {
            rule,
            hits: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
        });
        lock(&self.state.rules).push(Arc::clone(&entry));
        RuleHandle { entry }
    }

    /// Removes every rule; later requests are forwarded untouched. The call
    /// log is kept.
    pub fn clear(&self) {
        for entry in lock(&self.state.rules).drain(..) {
            entry.removed.store(true, Ordering::SeqCst);
        }
    }

    /// How many requests with this `Action` the proxy has seen, faulted or
    /// not.
    pub fn calls(&self, action: &str) -> usize {
        lock(&self.state.log)
            .iter()
            .filter(|c| c.call.action == action)
            .count()
    }

    /// Every request seen so far, oldest first.
    pub fn call_log(&self) -> Vec<Call> {
        lock(&self.state.log)
            .iter()
            .map(|c| c.call.clone())
            .collect()
    }

    /// Empties the call log (and so resets [`FaultProxy::calls`]).
    pub fn clear_log(&self) {
        lock(&self.state.log).clear();
    }

    /// Waits until at least `n` requests with this `Action` have been seen;
    /// panics after 20 s.
    pub async fn wait_for_calls(&self, action: &str, n: usize) {
        self.wait_for(&format!("{n} {action} call(s)"), |log| {
            log.iter().filter(|c| c.action == action).count() >= n
        })
        .await;
    }

    /// Waits until `condition` holds for the call log, and returns that log;
    /// panics after 20 s, naming `what` was awaited.
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let mut changed = self.state.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            changed.borrow_and_update();
            let log = self.call_log();
            if condition(&log) {
                return log;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => unreachable!("the proxy state owns the sender"),
                Err(_) => panic!(
                    "waited {WAIT_TIMEOUT:?} for {what} through the fault proxy; calls seen: \
                     {log:#?}"
                ),
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let state = Arc::clone(&state);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service_shutdown = shutdown.clone();
            let service = hyper::service::service_fn(move |request| {
                handle(Arc::clone(&state), service_shutdown.clone(), request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    shutdown: watch::Receiver<()>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Abort> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Abort),
    };
    let parsed = ParsedRequest::parse(parts.uri.query(), &body);

    let fault = {
        let rules = lock(&state.rules);
        rules
            .iter()
            .find(|entry| {
                !entry.removed.load(Ordering::SeqCst)
                    && !entry.is_used_up()
                    && entry.rule.matches(&parsed)
            })
            .map(|entry| {
                entry.hits.fetch_add(1, Ordering::SeqCst);
                entry.rule.fault.clone()
            })
    };

    let seq = state.next_seq.fetch_add(1, Ordering::SeqCst);
    lock(&state.log).push(LoggedCall {
        seq,
        call: Call {
            action: parsed.action.clone(),
            instance_ids: parsed.instance_ids(),
            params: parsed.params.iter().cloned().collect(),
            fault: fault.clone(),
            outcome: Outcome::Pending,
            received: Instant::now(),
            took: None,
        },
    });
    state.changed.send_modify(|n| *n += 1);

    let settle = |outcome: Outcome| settle(&state, seq, outcome);

    match fault {
        None => forward_detached(&state, shutdown, parts, body, seq, Duration::ZERO, false).await,
        Some(Fault::Delay(delay)) => {
            forward_detached(&state, shutdown, parts, body, seq, delay, false).await
        }
        Some(Fault::ForwardThenReset) => {
            forward_detached(&state, shutdown, parts, body, seq, Duration::ZERO, true).await
        }
        Some(Fault::Throttle) => {
            settle(Outcome::Injected { status: 503 });
            Ok(error_response(
                503,
                "RequestLimitExceeded",
                "Request limit exceeded.",
                seq,
            ))
        }
        Some(Fault::ServerError(status)) => {
            settle(Outcome::Injected { status });
            Ok(if status == 503 {
                error_response(
                    503,
                    "Unavailable",
                    "The server is overloaded and can't handle the request.",
                    seq,
                )
            } else {
                error_response(
                    status,
                    "InternalError",
                    "An internal error has occurred. Retry your request, but if the problem \
                     persists, contact us with details by posting a message on the AWS forums.",
                    seq,
                )
            })
        }
        Some(Fault::ErrorCode {
            status,
            code,
            message,
        }) => {
            settle(Outcome::Injected { status });
            Ok(error_response(status, &code, &message, seq))
        }
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Reset) => {
            settle(Outcome::Dropped {
                upstream_status: None,
            });
            Err(Abort)
        }
        Some(Fault::Rewrite { find, replace }) => {
            let (response, outcome) = forward(&state, &parts, body).await;
            settle(outcome);
            let (mut head, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).replace(&find, &replace);
            head.headers.remove(header::CONTENT_LENGTH);
            Ok(Response::from_parts(head, full(Bytes::from(text))))
        }
        Some(Fault::Malformed) => {
            settle(Outcome::Injected { status: 200 });
            let mut response = Response::new(full(Bytes::from_static(
                b"this is not EC2 XML <DescribeInstancesResponse><reservationSet><item>",
            )));
            set_headers(&mut response, seq);
            Ok(response)
        }
        Some(Fault::Truncated) => {
            settle(Outcome::Injected { status: 200 });
            let partial = Bytes::from_static(
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><reservationSet>",
            );
            let announced = partial.len() + 4096;
            let mut response =
                Response::new(BoxBody::new(StreamBody::new(truncated_body(partial))));
            set_headers(&mut response, seq);
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
            Ok(response)
        }
    }
}

/// Records the outcome of call `seq`.
fn settle(state: &State, seq: u64, outcome: Outcome) {
    if let Some(logged) = lock(&state.log).iter_mut().rev().find(|c| c.seq == seq) {
        logged.call.outcome = outcome;
        logged.call.took = Some(logged.call.received.elapsed());
    }
    state.changed.send_modify(|n| *n += 1);
}

/// Waits `delay`, forwards the request and logs the outcome, in a task of its
/// own, so that a request that is forwarded reaches upstream even when the
/// client gives up meanwhile (as a request that reached EC2 is carried out).
/// Answers with upstream's answer, or, with `reset`, closes the connection
/// instead. The task is abandoned when the proxy is dropped.
async fn forward_detached(
    state: &Arc<State>,
    mut shutdown: watch::Receiver<()>,
    parts: hyper::http::request::Parts,
    body: Bytes,
    seq: u64,
    delay: Duration,
    reset: bool,
) -> Result<Response<ProxyBody>, Abort> {
    let state = Arc::clone(state);
    let job = tokio::spawn(async move {
        let work = async {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let (response, outcome) = forward(&state, &parts, body).await;
            let outcome = match outcome {
                Outcome::Upstream { status } if reset => Outcome::Dropped {
                    upstream_status: Some(status),
                },
                other => other,
            };
            settle(&state, seq, outcome);
            response
        };
        tokio::select! {
            response = work => Some(response),
            _ = shutdown.changed() => None,
        }
    });
    match job.await {
        Ok(Some(response)) if !reset => Ok(response),
        _ => Err(Abort),
    }
}

/// Forwards the request upstream; returns the answer for the client and the
/// outcome to log.
async fn forward(
    state: &State,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> (Response<ProxyBody>, Outcome) {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{}", state.upstream, path));
    for (name, value) in &parts.headers {
        if name != header::HOST && !is_hop_by_hop(name) {
            builder = builder.header(name, value);
        }
    }
    let request = match builder.body(Full::new(body)) {
        Ok(request) => request,
        Err(e) => return upstream_failed(format!("build upstream request: {e}")),
    };
    let response = match state.client.request(request).await {
        Ok(response) => response,
        Err(e) => return upstream_failed(format!("{}: {e}", state.upstream)),
    };
    let (upstream_parts, upstream_body) = response.into_parts();
    let upstream_body = match upstream_body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return upstream_failed(format!("read upstream answer: {e}")),
    };
    let status = upstream_parts.status.as_u16();
    let mut answer = Response::new(full(upstream_body));
    *answer.status_mut() = upstream_parts.status;
    for (name, value) in &upstream_parts.headers {
        if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    (answer, Outcome::Upstream { status })
}

/// A body stream that yields `partial`, then, after hyper has had the chance
/// to flush it (one `Pending` with an immediate wake-up), fails, which makes
/// hyper close the connection mid-body.
fn truncated_body(
    partial: Bytes,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync {
    let mut step = 0u8;
    let mut partial = Some(partial);
    futures::stream::poll_fn(move |cx| {
        step = step.saturating_add(1);
        match step {
            1 => std::task::Poll::Ready(partial.take().map(|p| Ok(Frame::data(p)))),
            2 => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            3 => std::task::Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "truncated by fault injection",
            )))),
            _ => std::task::Poll::Ready(None),
        }
    })
}

fn upstream_failed(reason: String) -> (Response<ProxyBody>, Outcome) {
    let response = error_response(502, "InternalError", &format!("fault proxy: {reason}"), 0);
    (response, Outcome::UpstreamFailed(reason))
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .contains(&name.as_str())
}

pub fn full(bytes: Bytes) -> ProxyBody {
    BoxBody::new(Full::new(bytes).map_err(|never: Infallible| match never {}))
}

fn request_id(seq: u64) -> String {
    format!("7a62c49f-347e-4fc4-9331-{seq:012x}")
}

pub fn set_headers(response: &mut Response<ProxyBody>, seq: u64) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    if let Ok(id) = HeaderValue::from_str(&request_id(seq)) {
        headers.insert("x-amzn-requestid", id);
    }
}

/// An EC2 query-protocol error answer.
pub fn error_response(status: u16, code: &str, message: &str, seq: u64) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
         <Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        xml_escape(code),
        xml_escape(message),
        request_id(seq)
    );
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set_headers(&mut response, seq);
    response
}

pub fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The decoded parameters of a query-protocol request.
pub struct ParsedRequest {
    pub action: String,
    pub params: Vec<(String, String)>,
}

impl ParsedRequest {
    pub fn parse(query: Option<&str>, body: &[u8]) -> ParsedRequest {
        let mut params = Vec::new();
        if let Some(query) = query {
            params.extend(parse_form(query.as_bytes()));
        }
        params.extend(parse_form(body));
        let action = params
            .iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        ParsedRequest { action, params }
    }

    fn mentions(&self, needle: &str) -> bool {
        self.params.iter().any(|(_, value)| {
            value == needle
                || value
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .any(|token| token == needle)
        })
    }

    fn instance_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for (_, value) in &self.params {
            let looks_like_id = value.strip_prefix("i-").is_some_and(|rest| {
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric())
            });
            if looks_like_id && !ids.contains(value) {
                ids.push(value.clone());
            }
        }
        ids
    }
}

/// Splits and decodes an `application/x-www-form-urlencoded` string.
fn parse_form(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Decodes `+` as a space and `%XX` escapes; malformed escapes are kept as
/// they are.
fn percent_decode(input: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi << 4) | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

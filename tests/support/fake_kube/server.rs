//! HTTP/1.1 front end: routing, failure injection, request recording and responses.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::RecordedRequest;
use super::resource::{ApiError, Filter, Query, Target, partial_metadata};
use super::store::{Shared, State};
use super::watch::WatchStream;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Accepts connections until the task is aborted; aborting drops every connection with it.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    // A client hanging up mid-request is routine for watches.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What a request turned into.
enum Outcome {
    Json(u16, Value),
    Text(u16, &'static str),
    Watch(Box<WatchStream>),
}

impl Outcome {
    fn code(&self) -> u16 {
        match self {
            Outcome::Json(code, _) | Outcome::Text(code, _) => *code,
            Outcome::Watch(_) => 200,
        }
    }
}

impl From<Result<(u16, Value), ApiError>> for Outcome {
    fn from(reply: Result<(u16, Value), ApiError>) -> Self {
        match reply {
            Ok((code, body)) => Outcome::Json(code, body),
            Err(e) => Outcome::Json(e.code, e.to_status()),
        }
    }
}

/// The parts of a request that routing needs.
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a Query,
    content_type: &'a str,
    accept: &'a str,
    body: &'a [u8],
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (content_type, accept) = (header(CONTENT_TYPE), header(ACCEPT));
    let agent = header(USER_AGENT);
    // The bearer token names the user; the server authenticates but never authorizes.
    let user = header(AUTHORIZATION)
        .strip_prefix("Bearer ")
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut query = parse_query(&raw_query);
    // A write that names no field manager is recorded under its client's name, as the
    // server does (the User-Agent up to its first '/'). An apply must name one.
    let writes = matches!(method.as_str(), "POST" | "PUT" | "PATCH");
    if writes
        && !content_type.starts_with("application/apply-patch")
        && !query.contains_key("fieldManager")
    {
        let name = agent.split('/').next().filter(|n| !n.is_empty());
        query.insert("fieldManager".into(), name.unwrap_or("unknown").to_string());
    }
    let incoming = Req {
        method: &method,
        path: &path,
        query: &query,
        content_type: &content_type,
        accept: &accept,
        body: &body,
    };
    let outcome = {
        let mut st = shared.lock();
        let outcome = route(&shared, &mut st, &incoming);
        st.requests.push(RecordedRequest::new(
            &method,
            &path,
            &raw_query,
            (!content_type.is_empty()).then(|| content_type.clone()),
            user,
            outcome.code(),
            String::from_utf8_lossy(&body).into_owned(),
        ));
        outcome
    };
    shared.changed.notify_waiters();
    Ok(match outcome {
        Outcome::Json(code, value) => {
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            respond(code, Full::new(Bytes::from(bytes)).boxed_unsync())
        }
        Outcome::Text(code, text) => respond(
            code,
            Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync(),
        ),
        Outcome::Watch(watch) => {
            let frames = futures::stream::unfold(watch, |mut watch| async move {
                let chunk = watch.next_chunk().await?;
                Some((Ok::<_, Infallible>(Frame::data(chunk)), watch))
            });
            respond(200, StreamBody::new(frames).boxed_unsync())
        }
    })
}

fn respond(code: u16, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn version_info(minor: u32) -> Value {
    json!({
        "major": "1",
        "minor": minor.to_string(),
        "emulationMajor": "1",
        "emulationMinor": minor.to_string(),
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": minor.saturating_sub(1).to_string(),
        "gitVersion": format!("v1.{minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Takes one use of the first injected failure matching this request, if any.
fn injected(st: &mut State, method: &str, path: &str, body: &[u8]) -> Option<Outcome> {
    let index = st.failures.iter().position(|f| {
        f.times > 0
            && f.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && path.contains(&f.path_contains)
            && f.body_contains
                .as_deref()
                .is_none_or(|text| std::str::from_utf8(body).is_ok_and(|body| body.contains(text)))
    })?;
    let failure = &mut st.failures[index];
    failure.times -= 1;
    let error = ApiError::new(
        failure.status,
        &failure.reason,
        format!("injected failure for {method} {path}"),
    );
    if failure.times == 0 {
        st.failures.remove(index);
    }
    Some(Outcome::Json(error.code, error.to_status()))
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Serves one request in-process through the same routing as over HTTP,
/// unrecorded: for loading many objects quickly.
pub(crate) fn serve_in_process(
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Value, (u16, Value)> {
    let query = Query::new();
    let req = Req {
        method,
        path,
        query: &query,
        content_type,
        accept: "application/json",
        body,
    };
    let outcome = route(shared, &mut shared.lock(), &req);
    shared.changed.notify_waiters();
    match outcome {
        Outcome::Json(code, value) if code < 300 => Ok(value),
        Outcome::Json(code, value) => Err((code, value)),
        Outcome::Text(code, text) => Err((code, Value::String(text.to_owned()))),
        Outcome::Watch(_) => Err((
            400,
            Value::String("a watch cannot be served in-process".into()),
        )),
    }
}

fn route(shared: &Arc<Shared>, st: &mut State, req: &Req<'_>) -> Outcome {
    if let Some(failure) = injected(st, req.method, req.path, req.body) {
        return failure;
    }
    match (req.method, req.path) {
        ("GET", "/version") => return Outcome::Json(200, version_info(st.config.minor)),
        ("GET", "/healthz" | "/livez" | "/readyz") => return Outcome::Text(200, "ok"),
        _ => {}
    }
    let Some(target) = Target::parse(req.path) else {
        return Err::<(u16, Value), _>(ApiError::no_route()).into();
    };
    let q = req.query;
    let result = match (req.method, target.name.is_some()) {
        ("GET", _) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let mut q = q.clone();
            if let Some(name) = &target.name {
                // Watching one object is a watch of its collection narrowed to its name.
                let narrowed = match q.get("fieldSelector").filter(|f| !f.is_empty()) {
                    Some(f) => format!("{f},metadata.name={name}"),
                    None => format!("metadata.name={name}"),
                };
                q.insert("fieldSelector".into(), narrowed);
            }
            let collection = Target {
                name: None,
                subresource: None,
                ..target.clone()
            };
            return match Filter::from_query(&q, req.accept)
                .and_then(|filter| WatchStream::start(shared.clone(), st, &collection, &q, filter))
            {
                Ok(watch) => Outcome::Watch(Box::new(watch)),
                Err(e) => Outcome::Json(e.code, e.to_status()),
            };
        }
        ("GET", true) => st.get(&target).map(|(code, obj)| {
            if req.accept.contains("as=PartialObjectMetadata") {
                (code, partial_metadata(&obj))
            } else {
                (code, obj)
            }
        }),
        ("GET", false) => {
            Filter::from_query(q, req.accept).and_then(|filter| st.list(&target, q, &filter))
        }
        ("POST", false) => parse_body(req.body).and_then(|body| st.create(&target, q, body)),
        ("PUT", true) => parse_body(req.body).and_then(|body| st.replace(&target, q, body)),
        ("PATCH", true) => st.patch(&target, q, req.body, req.content_type),
        ("DELETE", true) => st.delete(&target, q, req.body),
        ("DELETE", false) => Filter::from_query(q, "")
            .and_then(|filter| st.delete_collection(&target, q, req.body, &filter)),
        (method, _) => Err(ApiError::method_not_allowed(method)),
    };
    result.into()
}

/// Decodes `application/x-www-form-urlencoded` query strings.
pub(crate) fn parse_query(raw: &str) -> Query {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

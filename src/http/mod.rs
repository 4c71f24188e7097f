//! Read access over HTTP/JSON (`--http-listen`), for shell scripts and SIEM agents that
//! poll HTTP: `GET /v1/audit/since` answers Confluence's own `AuditRecordArray` JSON,
//! `GET /v1/audit/stream` and `GET /v1/audit/follow` answer NDJSON. Each route builds the
//! gRPC request its query describes, with the HTTP headers as its metadata, and calls the
//! gRPC service in process: authentication, validation, caps, fair sharing, metrics and
//! errors are the gRPC edge's own; only the encoding differs (docs/http.md).

mod params;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prost::Message;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::StatusExt;

use crate::{
    grpc::{AuditGrpc, code_name},
    pb::{self, EncodedMessage, audit_service_server::AuditService, convert::ToJson},
    shutdown::Shutdown,
};

use params::BadParam;

/// A response body: whole, or lines as they come.
type Body = BoxBody<Bytes, Infallible>;

/// Lines a streaming answer holds before it waits for its client: a slow client slows
/// its stream down, as over gRPC.
const LINES_AHEAD: usize = 64;

/// Serves the routes on `listener` until the gateway starts stopping; open streams and
/// followers end then as their gRPC calls do (an error line, UNAVAILABLE).
pub(crate) async fn serve(listener: TcpListener, service: AuditGrpc, mut stopping: Shutdown) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping.stopping() => return,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let service = service.clone();
            async move { Ok::<_, Infallible>(route(&service, req).await) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Answers one request.
async fn route(service: &AuditGrpc, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "UNIMPLEMENTED", "only GET");
    }
    let query = req.uri().query().map(str::to_owned);
    let metadata = MetadataMap::from_headers(req.headers().clone());
    let query = query.as_deref();
    match req.uri().path() {
        "/v1/audit/since" => match params::get_since(query) {
            Ok(r) => since(service, grpc(r, metadata)).await,
            Err(bad) => bad_param(&bad),
        },
        "/v1/audit/stream" => match params::stream_since(query) {
            Ok(r) => match service.stream_since(grpc(r, metadata)).await {
                Ok(answer) => lines(answer, Kind::Stream),
                Err(status) => status_response(&status),
            },
            Err(bad) => bad_param(&bad),
        },
        "/v1/audit/follow" => match params::follow(query) {
            Ok(r) => match service.follow(grpc(r, metadata)).await {
                Ok(answer) => lines(answer, Kind::Follow),
                Err(status) => status_response(&status),
            },
            Err(bad) => bad_param(&bad),
        },
        _ => error_response(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "routes: /v1/audit/since, /v1/audit/stream, /v1/audit/follow",
        ),
    }
}

/// `message` as a gRPC request carrying the HTTP request's headers as metadata.
fn grpc<T>(message: T, metadata: MetadataMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata;
    request
}

/// One page, as Confluence's JSON.
async fn since(service: &AuditGrpc, req: tonic::Request<pb::GetSinceRequest>) -> Response<Body> {
    match service.get_since(req).await {
        Ok(answer) => match pb::GetSinceResponse::decode(answer.into_inner().0) {
            Ok(page) => json_response(StatusCode::OK, &page.to_json()),
            Err(e) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                &format!("the page could not be read back: {e}"),
            ),
        },
        Err(status) => status_response(&status),
    }
}

/// Which streaming call an answer is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `StreamSince`: its position is a resume token.
    Stream,
    /// `Follow`: its position is a checkpoint, on a line after each message.
    Follow,
}

/// A `StreamSince` message: its records, one per line; the token is kept for the last
/// line.
fn stream_lines(message: Bytes, token: &mut String) -> Result<Vec<u8>, prost::DecodeError> {
    let m = pb::StreamSinceResponse::decode(message)?;
    *token = m.resume_token;
    Ok(record_lines(&m.records))
}

/// A `Follow` message: its records, one per line, then its checkpoint on a line of its
/// own (a heartbeat is that line alone).
fn follow_lines(message: Bytes, checkpoint: &mut String) -> Result<Vec<u8>, prost::DecodeError> {
    let m = pb::FollowResponse::decode(message)?;
    let mut out = record_lines(&m.records);
    push_line(&mut out, &json!({ "checkpoint": m.checkpoint }));
    *checkpoint = m.checkpoint;
    Ok(out)
}

fn record_lines(records: &[pb::AuditRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        push_line(&mut out, &r.to_json());
    }
    out
}

fn push_line(out: &mut Vec<u8>, v: &Value) {
    // A `Value` always serializes.
    let _ = serde_json::to_writer(&mut *out, v);
    out.push(b'\n');
}

/// A streaming call's answer as NDJSON, written by a task that stops (and drops the call)
/// when the client goes away. A stream ends with `{"resumeToken": …}` after its last
/// record; a failure ends either with `{"error": …}` and, for a stream, the token to
/// resume from.
fn lines<S>(answer: tonic::Response<S>, kind: Kind) -> Response<Body>
where
    S: Stream<Item = Result<EncodedMessage, Status>> + Send + Unpin + 'static,
{
    let warning = answer.metadata().get("retention-warning").cloned();
    let mut messages = answer.into_inner();
    let (tx, rx) = mpsc::channel::<Bytes>(LINES_AHEAD);
    let streams = kind == Kind::Stream;
    let to_lines = match kind {
        Kind::Stream => stream_lines,
        Kind::Follow => follow_lines,
    };
    tokio::spawn(async move {
        let mut position = String::new();
        loop {
            // A client that hung up ends the call now, not at its next message (a
            // follower may send one an hour apart).
            let item = tokio::select! {
                item = messages.next() => item,
                () = tx.closed() => return,
            };
            let Some(item) = item else { break };
            let chunk = match item.map(|m| to_lines(m.0, &mut position)) {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => {
                    let status = Status::internal(format!("a message could not be read: {e}"));
                    let _ = tx.send(error_line(&status, streams, &position)).await;
                    return;
                }
                Err(status) => {
                    let _ = tx.send(error_line(&status, streams, &position)).await;
                    return;
                }
            };
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
        if streams {
            let mut last = Vec::new();
            push_line(&mut last, &json!({ "resumeToken": position }));
            let _ = tx.send(Bytes::from(last)).await;
        }
    });
    let frames = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut response = Response::new(StreamBody::new(frames).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Some(w) = warning.and_then(|w| HeaderValue::from_bytes(w.as_encoded_bytes()).ok()) {
        response.headers_mut().insert("retention-warning", w);
    }
    response
}

/// The line a failed stream ends with.
fn error_line(status: &Status, streams: bool, position: &str) -> Bytes {
    let mut v = error_json(status);
    if streams && let Value::Object(m) = &mut v {
        m.insert("resumeToken".to_owned(), Value::from(position));
    }
    let mut out = Vec::new();
    push_line(&mut out, &v);
    Bytes::from(out)
}

/// A refused parameter: 400, naming it.
fn bad_param(bad: &BadParam) -> Response<Body> {
    let body = json!({ "error": {
        "code": "INVALID_ARGUMENT",
        "message": format!("{}: {}", bad.name, bad.why),
        "field": bad.name,
    }});
    json_response(StatusCode::BAD_REQUEST, &body)
}

/// A gRPC status as JSON: its code's name, message, and the details a client acts on.
fn error_json(status: &Status) -> Value {
    let mut error = serde_json::Map::new();
    error.insert("code".to_owned(), Value::from(code_name(status.code())));
    error.insert("message".to_owned(), Value::from(status.message()));
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        error.insert("reason".to_owned(), Value::from(info.reason.as_str()));
    }
    if let Some(field) = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
    {
        error.insert("field".to_owned(), Value::from(field.field.as_str()));
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        error.insert(
            "retryAfterSeconds".to_owned(),
            Value::from(delay.as_secs_f64()),
        );
    }
    json!({ "error": error })
}

/// A gRPC status as an HTTP answer (the mapping gRPC-HTTP gateways use), with
/// `Retry-After` when the status says when to come back.
fn status_response(status: &Status) -> Response<Body> {
    let mut response = json_response(http_status(status.code()), &error_json(status));
    if let Some(delay) = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
    {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The HTTP status of a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

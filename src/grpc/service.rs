//! `confluence.audit.v1.AuditService`: each call validated, resolved to a credential and
//! a deadline, answered by the application layer (`src/app/`).

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{
    metadata,
    observe::{self, Observed},
    status::fail,
    validate,
};
use crate::{
    app::retention,
    app::{
        PageRequest, PageService,
        caps::CallerCaps,
        follow::{self, LateChecks},
        lookahead::LookAhead,
        stream::{self, WindowEnds},
    },
    audit::{
        Dialect,
        follow::Listing,
        resume::TokenKey,
        retention::{self as periods, Retention},
    },
    callers::{Caller, CallerTokens},
    credential::{Credential, CredentialMode},
    error::GatewayError,
    metrics::{FollowPositions, METRICS},
    pb::{self, EncodedMessage, audit_service_server::AuditService, convert},
    shutdown::{Shutdown, Stopper},
    upstream::{
        clock::{ClockOffset, now_ms},
        fair::Urgency,
    },
};

/// The gRPC service.
#[derive(Clone)]
pub(crate) struct AuditGrpc {
    pages: PageService,
    credentials: CredentialMode,
    stream_prefetch: usize,
    tokens: Arc<TokenKey>,
    callers: Option<Arc<CallerTokens>>,
    /// One permit per open `StreamSince` call (`--max-streams`).
    streams: Arc<Semaphore>,
    max_streams: usize,
    stream_idle_timeout: Duration,
    /// One late-record check per range for every follower.
    late: Arc<LateChecks>,
    /// Where each window ends, as its streams learn it.
    ends: Arc<WindowEnds>,
    /// The bytes streams and followers may hold in pages read ahead.
    lookahead: Arc<LookAhead>,
    /// Set when the gateway shuts down: followers end with UNAVAILABLE.
    stopping: Shutdown,
    /// This replica's place in each follow tick (`src/app/follow.rs`).
    tick_spread: f64,
    /// What followers learned of the range listing's cap and bounds.
    listing: Arc<std::sync::Mutex<Listing>>,
    /// Where this gateway's followers stand (`/metrics`).
    positions: Arc<FollowPositions>,
    /// How far Confluence's clock is from the gateway's.
    offset: Arc<ClockOffset>,
    /// Each caller's own caps (streams here, misses in `pages`).
    caps: Arc<CallerCaps>,
    /// The header a mesh names callers in (`--caller-header`).
    caller_header: Option<Arc<str>>,
}

impl AuditGrpc {
    /// A service answering from `pages` with credentials chosen by `credentials`;
    /// streams fetch up to `stream_prefetch` pages ahead and sign resume tokens with
    /// `tokens`; with `callers`, only callers with a token of theirs get in; at most
    /// `max_streams` streams are open at once, and one left unread for
    /// `stream_idle_timeout` ends.
    pub(crate) fn new(
        pages: PageService,
        credentials: CredentialMode,
        stream_prefetch: usize,
        tokens: TokenKey,
        callers: Option<Arc<CallerTokens>>,
        max_streams: usize,
        stream_idle_timeout: Duration,
    ) -> Self {
        Self {
            pages,
            credentials,
            stream_prefetch,
            tokens: Arc::new(tokens),
            callers,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            stream_idle_timeout,
            late: Arc::default(),
            ends: Arc::default(),
            lookahead: Arc::new(LookAhead::new(u64::MAX)),
            stopping: Stopper::new().shutdown(),
            tick_spread: fastrand::f64() / 2.0,
            listing: Arc::default(),
            positions: Arc::default(),
            offset: Arc::default(),
            caps: Arc::new(CallerCaps::new(max_streams, 0)),
            caller_header: None,
        }
    }

    /// Holds each caller to `caps` (the page service holds it to the same), and names
    /// callers a mesh authenticated by `caller_header`.
    pub(crate) fn sharing(mut self, caps: Arc<CallerCaps>, caller_header: Option<String>) -> Self {
        self.caps = caps;
        self.caller_header = caller_header.map(Into::into);
        self
    }

    /// Streams and followers together hold at most `bytes` in pages read ahead, past the
    /// first two of each.
    pub(crate) fn reading_ahead(mut self, bytes: u64) -> Self {
        self.lookahead = Arc::new(LookAhead::new(bytes));
        self
    }

    /// Followers settle ranges by Confluence's clock as `offset` estimates it.
    pub(crate) fn following_confluence_clock(mut self, offset: Arc<ClockOffset>) -> Self {
        self.offset = offset;
        self
    }

    /// Streams and followers end after their last complete message (UNAVAILABLE, so
    /// they resume on another replica) when `shutdown` begins stopping.
    pub(crate) fn stopping_with(mut self, shutdown: Shutdown) -> Self {
        self.stopping = shutdown;
        self
    }

    /// Who calls, checked before any other work: the caller token's name (UNAUTHENTICATED
    /// for a missing or unknown token); else the client certificate's first URI or DNS
    /// name (mTLS); else, with passthrough, the credential's keyed fingerprint; else the
    /// mesh's `--caller-header`; else the one anonymous caller.
    fn identify<T>(&self, request: &Request<T>) -> Result<Caller, GatewayError> {
        let caller = self.caller_of(request)?;
        // The call's span (`observe::call_span`) says whose call it is.
        tracing::Span::current().record("caller", &*caller.id);
        Ok(caller)
    }

    fn caller_of<T>(&self, request: &Request<T>) -> Result<Caller, GatewayError> {
        let md = request.metadata();
        if let Some(callers) = &self.callers {
            let caller = metadata::bearer_token(md)
                .and_then(|t| callers.caller(t))
                .ok_or(GatewayError::UnknownCaller)?;
            METRICS.caller_call(&caller.label);
            return Ok(caller);
        }
        if let Some(name) = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(certificate_name))
        {
            return Ok(Caller::other(format!("cert:{name}").into(), "other"));
        }
        if matches!(self.credentials, CredentialMode::Passthrough)
            && let Ok(credential) = metadata::caller_credential(md)
        {
            let fingerprint = self.pages.fingerprint(&credential);
            return Ok(Caller::other(
                format!("credential:{fingerprint}").into(),
                "other",
            ));
        }
        if let Some(name) = self
            .caller_header
            .as_deref()
            .and_then(|h| metadata::caller_header(md, h))
        {
            return Ok(Caller::other(format!("header:{name}").into(), "other"));
        }
        Ok(Caller::anonymous())
    }

    fn open_stream(
        &self,
        request: &Request<pb::StreamSinceRequest>,
        caller: &Caller,
    ) -> Result<stream::StreamRequest, GatewayError> {
        let received = Instant::now();
        let md = request.metadata();
        let p = validate::stream_params(request.get_ref(), &self.tokens)?;
        self.dialect_limits(p.window.search_string.as_deref())?;
        Ok(stream::StreamRequest {
            window: p.window,
            page_size: p.page_size,
            max_records: p.max_records,
            cursor: p.cursor,
            credential: self.credential(md)?,
            caller: caller.clone(),
            refresh: metadata::wants_fresh(md),
            deadline: metadata::deadline(md, received),
            idle_timeout: self.stream_idle_timeout,
            stopping: self.stopping.clone(),
        })
    }

    /// Where this gateway's followers stand, for `/metrics`.
    pub(crate) fn follow_positions(&self) -> Arc<FollowPositions> {
        self.positions.clone()
    }

    /// What the site's dialect refuses that Cloud takes, refused here with the field.
    fn dialect_limits(&self, search: Option<&str>) -> Result<(), GatewayError> {
        match self.pages.dialect() {
            Dialect::DataCenter => validate::data_center_search(search),
            Dialect::Cloud => Ok(()),
        }
    }

    fn credential(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<Option<Credential>, GatewayError> {
        match &self.credentials {
            CredentialMode::Configured(c) => Ok(c.clone()),
            CredentialMode::Passthrough => metadata::caller_credential(md).map(Some),
        }
    }

    fn open_follow(
        &self,
        request: &Request<pb::FollowRequest>,
        caller: &Caller,
    ) -> Result<follow::FollowRequest, GatewayError> {
        let received = Instant::now();
        let received_ms = now_ms();
        let md = request.metadata();
        let p = validate::follow_params(request.get_ref(), &self.tokens, received_ms)?;
        self.dialect_limits(p.search_string.as_deref())?;
        Ok(follow::FollowRequest {
            search_string: p.search_string,
            checkpoint: p.checkpoint,
            poll: p.poll,
            lag: p.lag,
            max_records: p.max_records,
            until: p.until,
            credential: self.credential(md)?,
            caller: caller.clone(),
            deadline: metadata::deadline(md, received),
            idle_timeout: self.stream_idle_timeout,
        })
    }

    /// A slot for a long call of `caller`, or RESOURCE_EXHAUSTED at once: never queued,
    /// as a waiting call would hold its connection and its caller's deadline for a slot
    /// that may not free up for minutes. The caller's own cap is checked first: a caller
    /// at its cap is told so even when the gateway is full too.
    fn slot(&self, caller: &Caller) -> Result<impl Send + 'static + use<>, GatewayError> {
        let own = self.caps.open_stream(caller)?;
        let gateway =
            self.streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| GatewayError::TooManyStreams {
                    limit: self.max_streams,
                })?;
        Ok((gateway, own))
    }

    async fn answer_retention(
        &self,
        request: Request<pb::GetRetentionRequest>,
    ) -> Result<pb::GetRetentionResponse, Status> {
        let caller = self
            .identify(&request)
            .map_err(|e| fail("GetRetention", None, &e))?;
        let md = request.metadata();
        let deadline = metadata::deadline(md, Instant::now());
        let answer = match self.credential(md) {
            Ok(credential) => {
                self.pages
                    .retention(credential.as_ref(), &caller, deadline)
                    .await
            }
            Err(e) => Err(e),
        };
        answer
            .map(|r| convert::retention_to_proto(&r))
            .map_err(|e| fail("GetRetention", Some(&caller.id), &e))
    }

    /// Warns a read that starts at `start_ms` before the oldest record Confluence keeps:
    /// a log line, and the response header `retention-warning` when the period is known
    /// already (else it is read in the background, for the log line and later calls).
    fn retention_warning(
        &self,
        credential: Option<&Credential>,
        caller: &Caller,
        start_ms: i64,
    ) -> Warning {
        let now = now_ms();
        let warn = move |r: &Retention| {
            let w = retention::warning(r, start_ms, now)?;
            tracing::warn!(start_ms, "{w}");
            Some(w)
        };
        if let Some(known) = self.pages.known_retention(credential) {
            return warn(&known).and_then(|w| w.parse().ok());
        }
        let (pages, credential, caller) = (self.pages.clone(), credential.cloned(), caller.clone());
        tokio::spawn(async move {
            if let Ok(r) = pages.retention(credential.as_ref(), &caller, None).await {
                let _ = warn(&r);
            }
        });
        None
    }

    async fn get_page(
        &self,
        request: Request<pb::GetSinceRequest>,
        caller: Caller,
    ) -> Result<EncodedMessage, GatewayError> {
        let received = Instant::now();
        let md = request.metadata();
        let query = validate::page_query(request.get_ref())?;
        self.dialect_limits(query.search_string.as_deref())?;
        let req = PageRequest {
            credential: self.credential(md)?,
            refresh: metadata::wants_fresh(md),
            unsettled: false,
            deadline: metadata::deadline(md, received),
            query,
            persistent: false,
            caller,
            urgency: Urgency::now(),
            metered: true,
            ahead: None,
        };
        let page = self.pages.page(req).await?;
        Ok(EncodedMessage(page))
    }
}

impl AuditGrpc {
    async fn answer_page(
        &self,
        request: Request<pb::GetSinceRequest>,
    ) -> Result<EncodedMessage, Status> {
        let caller = self
            .identify(&request)
            .map_err(|e| fail("GetSince", None, &e))?;
        let id = caller.id.clone();
        self.get_page(request, caller)
            .await
            .map_err(|e| fail("GetSince", Some(&id), &e))
    }

    fn start_stream(
        &self,
        request: Request<pb::StreamSinceRequest>,
    ) -> Result<
        (
            impl Stream<Item = Result<EncodedMessage, Status>> + Unpin + use<>,
            Warning,
        ),
        Status,
    > {
        let caller = self
            .identify(&request)
            .map_err(|e| fail("StreamSince", None, &e))?;
        let req = self
            .open_stream(&request, &caller)
            .map_err(|e| fail("StreamSince", Some(&caller.id), &e))?;
        let slot = self
            .slot(&caller)
            .map_err(|e| fail("StreamSince", Some(&caller.id), &e))?;
        // The slot goes with the producer, which is what a stream costs (its fetches and
        // pages): it returns when the window is done, the caller cancels or leaves the
        // stream idle (src/app/stream.rs), and the slot is free again.
        let start = periods::window_start_ms(req.window.number, req.window.units, now_ms());
        let warning = self.retention_warning(req.credential.as_ref(), &caller, start);
        let messages = stream::start(
            self.pages.clone(),
            req,
            (self.stream_prefetch, &self.ends, &self.lookahead),
            self.tokens.clone(),
            slot,
        );
        let messages = messages.map(move |item| {
            item.map(EncodedMessage)
                .map_err(|e| fail("StreamSince", Some(&caller.id), &e))
        });
        Ok((messages, warning))
    }

    fn start_follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<
        (
            impl Stream<Item = Result<EncodedMessage, Status>> + Unpin + use<>,
            Warning,
        ),
        Status,
    > {
        let caller = self
            .identify(&request)
            .map_err(|e| fail("Follow", None, &e))?;
        let req = self
            .open_follow(&request, &caller)
            .map_err(|e| fail("Follow", Some(&caller.id), &e))?;
        // Followers and streams share `--max-streams`: both hold pages and fetches.
        let slot = self
            .slot(&caller)
            .map_err(|e| fail("Follow", Some(&caller.id), &e))?;
        let shared = follow::Shared {
            tokens: self.tokens.clone(),
            late: self.late.clone(),
            stopping: self.stopping.clone(),
            prefetch: self.stream_prefetch,
            lookahead: self.lookahead.clone(),
            tick_spread: self.tick_spread,
            listing: self.listing.clone(),
            clock: follow::system_clock(),
            offset: self.offset.clone(),
            positions: self.positions.clone(),
        };
        let warning = self.retention_warning(req.credential.as_ref(), &caller, req.checkpoint.next);
        let messages = follow::start(self.pages.clone(), req, shared, slot);
        let messages = messages.map(move |item| {
            item.map(EncodedMessage)
                .map_err(|e| fail("Follow", Some(&caller.id), &e))
        });
        Ok((messages, warning))
    }
}

/// The name a client certificate gives its holder: its first URI SAN (a SPIFFE ID in
/// a mesh), else its first DNS SAN. The chain was verified by the TLS acceptor.
fn certificate_name(der: &tokio_rustls::rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    cert.valid_uri_names()
        .next()
        .or_else(|| cert.valid_dns_names().next())
        .map(str::to_owned)
}

/// The `retention-warning` header a streaming call's response carries, if any.
type Warning = Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>;

/// `response` with its `retention-warning` header.
fn warned<T>(mut response: Response<T>, warning: Warning) -> Response<T> {
    if let Some(w) = warning {
        response.metadata_mut().insert("retention-warning", w);
    }
    response
}

/// A streaming call's answer, boxed as tonic wants it.
type Answer = Pin<Box<dyn Stream<Item = Result<EncodedMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AuditService for AuditGrpc {
    async fn get_since(
        &self,
        request: Request<pb::GetSinceRequest>,
    ) -> Result<Response<EncodedMessage>, Status> {
        let started = Instant::now();
        let span = observe::call_span("GetSince", request.metadata());
        let answer = self.answer_page(request).instrument(span).await;
        observe::record("GetSince", started, answer).map(Response::new)
    }

    type StreamSinceStream = Answer;

    async fn stream_since(
        &self,
        request: Request<pb::StreamSinceRequest>,
    ) -> Result<Response<Answer>, Status> {
        let started = Instant::now();
        // The producer and its fetches are spawned under this span (src/app/stream.rs).
        let span = observe::call_span("StreamSince", request.metadata());
        let _in_span = span.enter();
        match self.start_stream(request) {
            Ok((s, warning)) => Ok(warned(
                Response::new(Box::pin(Observed::new(s, "StreamSince", started))),
                warning,
            )),
            Err(status) => observe::record("StreamSince", started, Err(status)),
        }
    }

    async fn get_retention(
        &self,
        request: Request<pb::GetRetentionRequest>,
    ) -> Result<Response<pb::GetRetentionResponse>, Status> {
        let started = Instant::now();
        let span = observe::call_span("GetRetention", request.metadata());
        let answer = self.answer_retention(request).instrument(span).await;
        observe::record("GetRetention", started, answer).map(Response::new)
    }

    type FollowStream = Answer;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Answer>, Status> {
        let started = Instant::now();
        let span = observe::call_span("Follow", request.metadata());
        let _in_span = span.enter();
        match self.start_follow(request) {
            Ok((s, warning)) => Ok(warned(
                Response::new(Box::pin(Observed::new(s, "Follow", started))),
                warning,
            )),
            Err(status) => observe::record("Follow", started, Err(status)),
        }
    }
}

//! `confluence.audit.v1.AuditService`: each call validated, resolved to a credential and
//! a deadline, answered by the application layer (`src/app/`).

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
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
    app::{
        PageRequest, PageService,
        follow::{self, LateChecks},
        stream,
    },
    audit::{follow::Listing, resume::TokenKey},
    callers::CallerTokens,
    config::CredentialMode,
    credential::Credential,
    error::GatewayError,
    metrics::METRICS,
    pb::{self, EncodedMessage, audit_service_server::AuditService},
    upstream::clock::ClockOffset,
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
    /// Set when the gateway shuts down: followers end with UNAVAILABLE.
    stopping: Arc<watch::Sender<bool>>,
    /// This replica's place in each follow tick (`src/app/follow.rs`).
    tick_spread: f64,
    /// What followers learned of the range listing's cap and bounds.
    listing: Arc<std::sync::Mutex<Listing>>,
    /// How far Confluence's clock is from the gateway's.
    offset: Arc<ClockOffset>,
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
            stopping: Arc::new(watch::Sender::new(false)),
            tick_spread: fastrand::f64() / 2.0,
            listing: Arc::default(),
            offset: Arc::default(),
        }
    }

    /// Followers settle ranges by Confluence's clock as `offset` estimates it.
    pub(crate) fn following_confluence_clock(mut self, offset: Arc<ClockOffset>) -> Self {
        self.offset = offset;
        self
    }

    /// Ends every follower after its last complete message (UNAVAILABLE, so it resumes
    /// on another replica): called when the gateway shuts down.
    pub(crate) fn stopper(&self) -> Arc<watch::Sender<bool>> {
        self.stopping.clone()
    }

    /// The caller's name, checked before any other work: `None` when the gateway does not
    /// authenticate callers; UNAUTHENTICATED for a missing or unknown token.
    fn authenticate(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<Option<Arc<str>>, GatewayError> {
        let Some(callers) = &self.callers else {
            return Ok(None);
        };
        let name = metadata::bearer_token(md)
            .and_then(|t| callers.caller(t))
            .ok_or(GatewayError::UnknownCaller)?;
        METRICS.caller_call(&name);
        Ok(Some(name))
    }

    fn open_stream(
        &self,
        request: &Request<pb::StreamSinceRequest>,
    ) -> Result<stream::StreamRequest, GatewayError> {
        let received = Instant::now();
        let md = request.metadata();
        let p = validate::stream_params(request.get_ref(), &self.tokens)?;
        Ok(stream::StreamRequest {
            window: p.window,
            page_size: p.page_size,
            max_records: p.max_records,
            cursor: p.cursor,
            credential: self.credential(md)?,
            refresh: metadata::wants_fresh(md),
            deadline: metadata::deadline(md, received),
            idle_timeout: self.stream_idle_timeout,
            stopping: self.stopping.subscribe(),
        })
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
    ) -> Result<follow::FollowRequest, GatewayError> {
        let received = Instant::now();
        let received_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let md = request.metadata();
        let p = validate::follow_params(request.get_ref(), &self.tokens, received_ms)?;
        Ok(follow::FollowRequest {
            search_string: p.search_string,
            checkpoint: p.checkpoint,
            poll: p.poll,
            lag: p.lag,
            max_records: p.max_records,
            credential: self.credential(md)?,
            deadline: metadata::deadline(md, received),
            idle_timeout: self.stream_idle_timeout,
        })
    }

    /// A slot for a long call, or RESOURCE_EXHAUSTED at once: never queued, as a waiting
    /// call would hold its connection and its caller's deadline for a slot that may not
    /// free up for minutes.
    fn slot(&self) -> Result<OwnedSemaphorePermit, GatewayError> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::TooManyStreams {
                limit: self.max_streams,
            })
    }

    async fn get_page(
        &self,
        request: Request<pb::GetSinceRequest>,
    ) -> Result<EncodedMessage, GatewayError> {
        let received = Instant::now();
        let md = request.metadata();
        let query = validate::page_query(request.get_ref())?;
        let req = PageRequest {
            credential: self.credential(md)?,
            refresh: metadata::wants_fresh(md),
            deadline: metadata::deadline(md, received),
            query,
            persistent: false,
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
            .authenticate(request.metadata())
            .map_err(|e| fail("GetSince", None, &e))?;
        self.get_page(request)
            .await
            .map_err(|e| fail("GetSince", caller.as_deref(), &e))
    }

    fn start_stream(
        &self,
        request: Request<pb::StreamSinceRequest>,
    ) -> Result<impl Stream<Item = Result<EncodedMessage, Status>> + Unpin + use<>, Status> {
        let caller = self
            .authenticate(request.metadata())
            .map_err(|e| fail("StreamSince", None, &e))?;
        let req = self
            .open_stream(&request)
            .map_err(|e| fail("StreamSince", caller.as_deref(), &e))?;
        let slot = self
            .slot()
            .map_err(|e| fail("StreamSince", caller.as_deref(), &e))?;
        // The slot goes with the producer, which is what a stream costs (its fetches and
        // pages): it returns when the window is done, the caller cancels or leaves the
        // stream idle (src/app/stream.rs), and the slot is free again.
        let messages = stream::start(
            self.pages.clone(),
            req,
            self.stream_prefetch,
            self.tokens.clone(),
            slot,
        );
        Ok(messages.map(move |item| {
            item.map(EncodedMessage)
                .map_err(|e| fail("StreamSince", caller.as_deref(), &e))
        }))
    }

    fn start_follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<impl Stream<Item = Result<EncodedMessage, Status>> + Unpin + use<>, Status> {
        let caller = self
            .authenticate(request.metadata())
            .map_err(|e| fail("Follow", None, &e))?;
        let req = self
            .open_follow(&request)
            .map_err(|e| fail("Follow", caller.as_deref(), &e))?;
        // Followers and streams share `--max-streams`: both hold pages and fetches.
        let slot = self
            .slot()
            .map_err(|e| fail("Follow", caller.as_deref(), &e))?;
        let shared = follow::Shared {
            tokens: self.tokens.clone(),
            late: self.late.clone(),
            stopping: self.stopping.subscribe(),
            prefetch: self.stream_prefetch,
            tick_spread: self.tick_spread,
            listing: self.listing.clone(),
            clock: follow::system_clock(),
            offset: self.offset.clone(),
        };
        let messages = follow::start(self.pages.clone(), req, shared, slot);
        Ok(messages.map(move |item| {
            item.map(EncodedMessage)
                .map_err(|e| fail("Follow", caller.as_deref(), &e))
        }))
    }
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
            Ok(s) => Ok(Response::new(Box::pin(Observed::new(
                s,
                "StreamSince",
                started,
            )))),
            Err(status) => observe::record("StreamSince", started, Err(status)),
        }
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
            Ok(s) => Ok(Response::new(Box::pin(Observed::new(s, "Follow", started)))),
            Err(status) => observe::record("Follow", started, Err(status)),
        }
    }
}

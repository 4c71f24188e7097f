//! `confluence.audit.v1.AuditService`: each call validated, resolved to a credential and
//! a deadline, answered from the page service.

use std::{pin::Pin, time::Instant};

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{encoded::EncodedMessage, metadata, status::to_status, validate};
use crate::{
    credential::Credential,
    error::GatewayError,
    pages::{PageRequest, PageService},
    pb::{self, audit_service_server::AuditService},
    stream,
};

/// Whose credential calls Confluence.
#[derive(Clone, Debug)]
pub enum CredentialMode {
    /// The gateway's own configured credential (or none).
    Configured(Option<Credential>),
    /// Each caller's `authorization` metadata, forwarded.
    Passthrough,
}

/// The gRPC service.
#[derive(Clone)]
pub struct AuditGrpc {
    pages: PageService,
    credentials: CredentialMode,
    stream_prefetch: usize,
}

impl AuditGrpc {
    /// A service answering from `pages` with credentials chosen by `credentials`;
    /// streams fetch up to `stream_prefetch` pages ahead.
    pub fn new(pages: PageService, credentials: CredentialMode, stream_prefetch: usize) -> Self {
        Self {
            pages,
            credentials,
            stream_prefetch,
        }
    }

    fn open_stream(
        &self,
        request: &Request<pb::StreamSinceRequest>,
    ) -> Result<stream::StreamRequest, GatewayError> {
        let received = Instant::now();
        let md = request.metadata();
        let p = validate::stream_params(request.get_ref())?;
        Ok(stream::StreamRequest {
            window: p.window,
            page_size: p.page_size,
            max_records: p.max_records,
            cursor: p.cursor,
            credential: self.credential(md)?,
            refresh: metadata::wants_fresh(md),
            deadline: metadata::deadline(md, received),
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
        };
        let page = self.pages.page(req).await?;
        Ok(EncodedMessage(page))
    }
}

#[tonic::async_trait]
impl AuditService for AuditGrpc {
    async fn get_since(
        &self,
        request: Request<pb::GetSinceRequest>,
    ) -> Result<Response<EncodedMessage>, Status> {
        match self.get_page(request).await {
            Ok(page) => Ok(Response::new(page)),
            Err(err) => {
                tracing::info!(reason = err.reason(), error = %err, "GetSince failed");
                Err(to_status(&err))
            }
        }
    }

    type StreamSinceStream =
        Pin<Box<dyn Stream<Item = Result<EncodedMessage, Status>> + Send + 'static>>;

    async fn stream_since(
        &self,
        request: Request<pb::StreamSinceRequest>,
    ) -> Result<Response<Self::StreamSinceStream>, Status> {
        let req = self.open_stream(&request).map_err(|err| {
            tracing::info!(reason = err.reason(), error = %err, "StreamSince refused");
            to_status(&err)
        })?;
        let rx = stream::start(self.pages.clone(), req, self.stream_prefetch);
        let messages =
            ReceiverStream::new(rx).map(|item| item.map(EncodedMessage).map_err(|e| to_status(&e)));
        Ok(Response::new(Box::pin(messages)))
    }
}

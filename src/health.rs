//! grpc.health.v1 with watches that end at shutdown. A `Watch` call lasts as long as its
//! client keeps it (gRPC clients doing client-side health checks keep one per
//! connection), so without this every graceful stop would wait `--shutdown-timeout`.

use crate::shutdown::Shutdown;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{HealthCheckRequest, HealthCheckResponse, health_server::Health},
    server::{HealthReporter, HealthService},
};

/// The health service; `Watch` streams end once stopping begins.
pub(crate) struct DrainingHealth {
    inner: HealthService,
    stopping: Shutdown,
}

impl DrainingHealth {
    /// Health as `reporter` reports it, watches ending when `stopping` begins.
    pub(crate) fn new(reporter: HealthReporter, stopping: Shutdown) -> Self {
        Self {
            inner: HealthService::from_health_reporter(reporter),
            stopping,
        }
    }
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut updates = self.inner.watch(request).await?.into_inner();
        let mut stopping = self.stopping.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let stopped = async move { stopping.stopping().await };
            tokio::pin!(stopped);
            loop {
                let update = tokio::select! {
                    // Updates first: NOT_SERVING reaches the watcher before the stream ends.
                    biased;
                    update = updates.next() => update,
                    _ = &mut stopped => None,
                    _ = tx.closed() => None,
                };
                let Some(u) = update else { return };
                if tx.send(u).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

//! `grpc.health.v1.Health`, whose `Watch` streams end at shutdown: tonic's
//! graceful shutdown waits for every open stream, and a health watch never
//! ends by itself, so one watcher would hold every shutdown for the whole
//! drain timeout.

use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

pub(super) struct StoppableHealth {
    inner: HealthService,
    stopping: CancellationToken,
}

/// The reporter and the service; statuses set before `stopping` is
/// cancelled still reach watchers, then their streams end.
pub(super) fn service(
    stopping: CancellationToken,
) -> (HealthReporter, HealthServer<StoppableHealth>) {
    let reporter = HealthReporter::new();
    let inner = HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        HealthServer::new(StoppableHealth { inner, stopping }),
    )
}

/// Marks the daemon (the overall service `""`) and `service` not serving.
pub(super) async fn not_serving<S: tonic::server::NamedService>(reporter: &HealthReporter) {
    reporter.set_not_serving::<S>().await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

#[tonic::async_trait]
impl Health for StoppableHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = futures::stream::BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let stopping = self.stopping.clone();
        let stream = futures::stream::unfold(
            (statuses, stopping, false),
            |(mut statuses, stopping, ended)| async move {
                if ended {
                    return None;
                }
                tokio::select! {
                    biased;
                    status = statuses.next() => status.map(|s| (s, (statuses, stopping, false))),
                    () = stopping.cancelled() => {
                        // The status set just before stopping goes out last.
                        match statuses.next().now_or_never() {
                            Some(Some(status)) => Some((status, (statuses, stopping, true))),
                            _ => None,
                        }
                    }
                }
            },
        );
        Ok(Response::new(stream.boxed()))
    }
}

//! `WatchMcpServers`: the organization's events, streamed from a task that
//! ends when the caller goes away or the daemon stops (so a graceful
//! shutdown never waits on an open watch).

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{auth, convert, status::to_status};
use crate::{manager::Manager, proto};

/// Events buffered towards a slow watcher before reading waits for it.
const BUFFER: usize = 64;

pub(super) type Outbound =
    futures::stream::BoxStream<'static, Result<proto::WatchMcpServersResponse, Status>>;

pub(super) async fn watch(
    manager: &Manager,
    stopping: &CancellationToken,
    request: Request<proto::WatchMcpServersRequest>,
) -> Result<Response<Outbound>, Status> {
    let org = auth::caller(&request)?;
    let after = request.into_inner().after;
    let (events, events_rx) = mpsc::channel(BUFFER);
    let (end, end_rx) = oneshot::channel::<Status>();
    let manager = manager.clone();
    let stopping = stopping.clone();
    tokio::spawn(
        async move {
            // Ends when the caller drops the stream (the receiver goes), when
            // the daemon stops, or on an error.
            let outcome = manager
                .watch(&org, after, &events, &stopping)
                .await
                .map_err(to_status);
            if let Err(status) = outcome {
                let _ = end.send(status);
            }
        }
        // Its reads of the event log belong to the call.
        .in_current_span(),
    );
    // The events sent, then the status the watch ended with, if any.
    let events = futures::stream::unfold(events_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok(convert::watched(event)), rx))
    });
    let end = futures::stream::once(end_rx).filter_map(|ended| async move { ended.ok().map(Err) });
    Ok(Response::new(events.chain(end).boxed()))
}

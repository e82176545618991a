//! `WatchMcpServers`: an organization's events after a cursor, then each as
//! it is committed, by this replica or another. Between reads the watcher
//! holds no pooled connection; it waits for the store's signal.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Manager, ManagerError};
use crate::model::ServerEvent;

/// Events read per round trip; a watcher far behind catches up in pages.
const PAGE: i64 = 256;

/// What a watcher is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// Where the watch starts when the caller gave no cursor.
    Bookmark(u64),
    Event(Box<ServerEvent>),
}

impl Manager {
    /// Sends `org`'s events after `after` (none: from now, after a
    /// bookmark) to `out` until the receiver goes away (`Ok`), the daemon
    /// stops (UNAVAILABLE: watch again from the last cursor), or a read
    /// fails (a cursor older than the events kept is FAILED_PRECONDITION).
    pub async fn watch(
        &self,
        org: &str,
        after: Option<u64>,
        out: &mpsc::Sender<Watched>,
        stopping: &CancellationToken,
    ) -> Result<(), ManagerError> {
        // Subscribed before the first read: nothing committed after it is
        // missed.
        let mut signal = self.store.subscribe_events();
        let mut cursor = match after {
            Some(after) => after,
            None => {
                let head = self.store.event_head(org).await?;
                if out.send(Watched::Bookmark(head)).await.is_err() {
                    return Ok(());
                }
                head
            }
        };
        loop {
            let page = self.store.events_after(org, cursor, PAGE).await?;
            let full = page.events.len() >= PAGE as usize;
            for event in page.events {
                if out.send(Watched::Event(Box::new(event))).await.is_err() {
                    return Ok(());
                }
            }
            cursor = page.through;
            if full {
                continue;
            }
            tokio::select! {
                () = signal.changed(org) => {}
                () = out.closed() => return Ok(()),
                () = stopping.cancelled() => {
                    return Err(ManagerError::Unavailable(format!(
                        "mcpd is shutting down; watch again with after={cursor}"
                    )));
                }
            }
        }
    }

    /// Hears the events other replicas commit (PostgreSQL) until `stopping`.
    pub async fn run_event_listener(self, stopping: CancellationToken) {
        self.store.listen_for_events(stopping).await;
    }

    /// Drops events older than the retention.
    pub async fn sweep_events(&self) -> Result<usize, ManagerError> {
        Ok(self.store.sweep_events().await?)
    }
}

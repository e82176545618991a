//! Automatic sync: when a live session hears `notifications/tools/list_changed`
//! from its server, mcpd syncs that server's tools — after a quiet moment (a
//! burst of announcements makes one sync), one sync at a time per server (an
//! announcement during a sync makes one more after it).
//!
//! One at a time holds across the daemons sharing the database too: each
//! daemon that hears an announcement requests a sync in the store, and only
//! the holder of the server's sync lease lists its tools (see
//! `store::sync_lease`). The others leave their request to the holder, which
//! lists again after its listing when requests came meanwhile; they look
//! again only when the lease expires (the holder died: they take over) or
//! when they hear another announcement.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Manager;
use crate::{
    mcp::McpConnector,
    store::{LeaseAttempt, LeaseRelease, StoreError},
};

/// (organization, server id).
type ServerKey = (String, String);

/// What a lease adds to the longest listing: a token renewal before it,
/// the write of its difference after it.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// This daemon's terms for the sync lease.
#[derive(Clone)]
pub(super) struct LeaseTerms {
    /// Who holds a lease: one random id per daemon, so a restarted daemon
    /// is somebody else than the one that died holding a lease.
    holder: Arc<str>,
    /// How long a lease lasts unless released: longer than a listing may
    /// take, so that a live holder never loses it.
    ttl: Duration,
}

impl LeaseTerms {
    pub(super) fn new(mcp: &McpConnector) -> Self {
        LeaseTerms {
            holder: uuid::Uuid::now_v7().to_string().into(),
            ttl: mcp.listing_limit() + LEASE_MARGIN,
        }
    }
}

/// A server with a sync due or running on this daemon.
struct Pending {
    /// Announced again since the round in progress started.
    again: bool,
    /// Wakes a round that waits for another daemon's lease.
    heard: Arc<Notify>,
}

/// Servers with a sync due or running here, and whether another was
/// announced since it started.
#[derive(Default, Clone)]
struct Due(Arc<Mutex<HashMap<ServerKey, Pending>>>);

impl Due {
    /// Whether a sync must be started (none is due or running yet); a
    /// round waiting for the lease is woken.
    fn announce(&self, server: &ServerKey) -> bool {
        let Ok(mut due) = self.0.lock() else {
            return false;
        };
        match due.get_mut(server) {
            Some(pending) => {
                pending.again = true;
                pending.heard.notify_one();
                false
            }
            None => {
                due.insert(
                    server.clone(),
                    Pending {
                        again: false,
                        heard: Arc::default(),
                    },
                );
                true
            }
        }
    }

    /// What wakes the server's rounds when it announces again.
    fn heard(&self, server: &ServerKey) -> Arc<Notify> {
        self.0
            .lock()
            .ok()
            .and_then(|due| due.get(server).map(|p| p.heard.clone()))
            .unwrap_or_default()
    }

    /// A round starts: what is announced from now on its request may not
    /// cover. Answers whether anything was announced since the last start.
    fn starting(&self, server: &ServerKey) -> bool {
        let Ok(mut due) = self.0.lock() else {
            return false;
        };
        due.get_mut(server)
            .is_some_and(|pending| std::mem::take(&mut pending.again))
    }

    /// Whether the server announced again since the round started.
    fn announced_again(&self, server: &ServerKey) -> bool {
        self.0
            .lock()
            .ok()
            .is_some_and(|due| due.get(server).is_some_and(|p| p.again))
    }

    /// A round ended: whether another must run (else the server is done).
    fn again(&self, server: &ServerKey) -> bool {
        let Ok(mut due) = self.0.lock() else {
            return false;
        };
        if due.get(server).is_some_and(|p| p.again) {
            return true;
        }
        due.remove(server);
        false
    }
}

impl Manager {
    /// Syncs servers whose live sessions announce tool changes, until
    /// `stopping`. Does nothing if another task took the announcements.
    pub async fn run_auto_sync(self, stopping: CancellationToken) {
        let Some(mut changes) = self.mcp.take_tool_changes() else {
            return;
        };
        tracing::debug!(holder = %self.sync_lease.holder, "automatic syncs: sync lease holder id");
        let due = Due::default();
        loop {
            let server = tokio::select! {
                () = stopping.cancelled() => return,
                server = changes.recv() => match server {
                    Some(server) => server,
                    None => return,
                },
            };
            if !due.announce(&server) {
                continue;
            }
            tokio::spawn(
                self.clone()
                    .sync_when_quiet(server, due.clone(), stopping.clone()),
            );
        }
    }

    /// Rounds of one server's automatic sync, until no announcement is
    /// left: each requests a sync in the store, waits a quiet moment, and
    /// sees it done under the lease.
    async fn sync_when_quiet(self, server: ServerKey, due: Due, stopping: CancellationToken) {
        let heard = due.heard(&server);
        loop {
            due.starting(&server);
            // Requested at once: another daemon's listing that starts after
            // this covers it, even while this one waits for quiet.
            let mut request = self.request_sync(&server).await;
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(self.limits.sync_debounce) => {}
            }
            // Announced during the quiet moment: a request after it (and
            // a second try for a request that failed).
            if due.starting(&server) || request.is_none() {
                request = self.request_sync(&server).await;
            }
            if let Some(generation) = request {
                self.leased_sync(&server, generation, &due, &heard, &stopping)
                    .await;
            }
            if stopping.is_cancelled() || !due.again(&server) {
                return;
            }
        }
    }

    /// Asks for a sync; `None` when it cannot be (the server is gone, or
    /// the database failed: logged).
    async fn request_sync(&self, (org, server_id): &ServerKey) -> Option<i64> {
        match self.store.request_sync(server_id).await {
            Ok(generation) => Some(generation),
            Err(err) => {
                lease_failed(org, server_id, "requesting", &err);
                None
            }
        }
    }

    /// Sees request `generation` done: syncs under the lease, or leaves it
    /// to the daemon that holds the lease, taking over if that one lets it
    /// expire. Returns early when the server announces again here (a new
    /// round, with a later request, follows) or the daemon stops.
    async fn leased_sync(
        &self,
        server: &ServerKey,
        generation: i64,
        due: &Due,
        heard: &Notify,
        stopping: &CancellationToken,
    ) {
        let (org, server_id) = server;
        let LeaseTerms { holder, ttl } = &self.sync_lease;
        let mut generation = loop {
            match self
                .store
                .acquire_sync_lease(server_id, holder, generation, *ttl)
                .await
            {
                Ok(LeaseAttempt::Acquired { generation }) => break generation,
                Ok(LeaseAttempt::Done) => return,
                Ok(LeaseAttempt::Held { until }) => {
                    let until = tokio::time::Instant::now()
                        + until
                            .duration_since(std::time::SystemTime::now())
                            .unwrap_or_default();
                    let expired = tokio::time::sleep_until(until);
                    tokio::pin!(expired);
                    loop {
                        tokio::select! {
                            () = stopping.cancelled() => return,
                            () = &mut expired => break,
                            () = heard.notified() => {
                                if due.announced_again(server) {
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(err) => {
                    lease_failed(org, server_id, "taking", &err);
                    return;
                }
            }
        };
        loop {
            self.auto_sync(org, server_id).await;
            match self
                .store
                .release_sync_lease(server_id, holder, generation, *ttl)
                .await
            {
                Ok(LeaseRelease::Again { generation: next }) => generation = next,
                Ok(LeaseRelease::Released | LeaseRelease::Lost) => return,
                Err(err) => {
                    // It expires; a daemon with a request not done then
                    // takes it over.
                    lease_failed(org, server_id, "releasing", &err);
                    return;
                }
            }
        }
    }

    async fn auto_sync(&self, org: &str, server_id: &str) {
        // A sync that changes something logs it; failures only here.
        // Its own trace: no call asked for it.
        let span = tracing::info_span!(
            parent: None,
            "auto_sync",
            mcpd.organization = org,
            mcpd.server.id = server_id,
        );
        if let (Err(err), _) = self
            .sync_server_tools(org, server_id)
            .instrument(span)
            .await
        {
            tracing::warn!(%org, server = %server_id, error = %err, "automatic tool sync failed");
        }
    }
}

/// A closed server needs no sync; anything else is worth a warning.
fn lease_failed(org: &str, server_id: &str, doing: &str, err: &StoreError) {
    if matches!(err, StoreError::ServerNotFound(_)) {
        tracing::debug!(%org, server = %server_id, "automatic tool sync: the server is gone");
    } else {
        tracing::warn!(%org, server = %server_id, error = %err, "automatic tool sync: {doing} the sync lease failed");
    }
}

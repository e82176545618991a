//! The organization's event log that `WatchMcpServers` streams: written in
//! the transaction of the change it reports, read back by cursor, pruned to
//! a bounded size, and announced to the watchers of every replica
//! (PostgreSQL: NOTIFY on commit, heard on one dedicated LISTEN connection;
//! SQLite, whose writers are all in this process: an in-process signal).

use std::{sync::Arc, time::Duration};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{
    Access, Backend, DatabaseUrl, Store, StoreError,
    models::{ServerRow, from_ms, to_ms},
    reuse::Reuse,
    schema::{event_cursors, server_events},
    with_conn,
};
use crate::model::{ServerEvent, ServerEventKind, ToolChanges};

/// The PostgreSQL channel whose payload is the organization that has new
/// events.
pub(super) const CHANNEL: &str = "mcpd_server_events";

/// How many events the log keeps; older ones are pruned, and a watcher
/// resuming from before them is told to list again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    /// The newest this many events of each organization.
    pub max_events: u64,
    /// Events older than this go at the next sweep.
    pub max_age: Duration,
}

impl Default for EventRetention {
    fn default() -> Self {
        EventRetention {
            max_events: 10_000,
            max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// An event about to be written with the change it reports.
pub(super) struct EventDraft {
    kind: &'static str,
    server_id: String,
    payload: String,
}

/// What an event row's `payload` holds.
#[derive(Serialize, Deserialize)]
struct Payload {
    server: ServerRow,
    #[serde(default)]
    tools: ToolChanges,
}

impl EventDraft {
    pub(super) fn new(kind: ServerEventKind, server: &ServerRow, tools: ToolChanges) -> EventDraft {
        let payload = Payload {
            server: server.clone(),
            tools,
        };
        EventDraft {
            kind: kind_column(kind),
            server_id: server.id.clone(),
            // A row of strings and integers always serializes.
            payload: serde_json::to_string(&payload).unwrap_or_default(),
        }
    }
}

/// An event as a watcher reads it back (of its own organization).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = server_events)]
struct EventRow {
    seq: i64,
    kind: String,
    server_id: String,
    payload: String,
    created_at: i64,
}

fn kind_column(kind: ServerEventKind) -> &'static str {
    match kind {
        ServerEventKind::Created => "created",
        ServerEventKind::Updated => "updated",
        ServerEventKind::ToolsChanged => "tools_changed",
        ServerEventKind::StatusChanged => "status_changed",
        ServerEventKind::Closed => "closed",
    }
}

fn event_kind(column: &str) -> Option<ServerEventKind> {
    Some(match column {
        "created" => ServerEventKind::Created,
        "updated" => ServerEventKind::Updated,
        "tools_changed" => ServerEventKind::ToolsChanged,
        "status_changed" => ServerEventKind::StatusChanged,
        "closed" => ServerEventKind::Closed,
        _ => return None,
    })
}

impl EventRow {
    /// The domain view; `None` for a row this build cannot read (a newer
    /// daemon's kind), which a watcher skips.
    fn into_event(self) -> Option<ServerEvent> {
        let kind = event_kind(&self.kind)?;
        let payload: Payload = serde_json::from_str(&self.payload).ok()?;
        Some(ServerEvent {
            cursor: u64::try_from(self.seq).unwrap_or_default(),
            kind,
            server_id: self.server_id,
            server: payload.server.into_server(None),
            tools: payload.tools,
            occurred_at: from_ms(self.created_at),
        })
    }
}

/// Appends an event to the organization's log inside a transaction the
/// caller opened, as its last statements. Moving the organization's cursor
/// on locks its `event_cursors` row until commit, so commit order is cursor
/// order.
pub(super) trait AppendEvent {
    async fn append_event(
        &mut self,
        retention: &EventRetention,
        org: &str,
        event: &EventDraft,
    ) -> Result<(), StoreError>;
}

/// PostgreSQL: the cursor moved on, the event written at it and announced,
/// in one statement (one round trip where three were). The notification is
/// delivered at commit, and only then, to every replica's listener; a
/// notification repeated in one transaction is delivered once.
const APPEND_EVENT_PG: &str = "WITH cursor AS (\
        INSERT INTO event_cursors (organization_id, last_seq) VALUES ($1, 1) \
        ON CONFLICT (organization_id) DO UPDATE SET last_seq = event_cursors.last_seq + 1 \
        RETURNING last_seq) \
    INSERT INTO server_events (organization_id, seq, kind, server_id, payload, created_at) \
    SELECT $1, cursor.last_seq, $2, $3, $4, $5 FROM cursor, (SELECT pg_notify($6, $1)) AS announced \
    RETURNING seq";

#[derive(QueryableByName)]
struct Appended {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

/// Prunes the organization's log to its newest `max_events` once the event
/// at `seq` is written (a macro: instantiated for each backend's
/// connection).
macro_rules! prune_to_retention {
    ($conn:expr, $retention:expr, $org:expr, $seq:expr) => {{
        let keep = i64::try_from($retention.max_events).unwrap_or(i64::MAX);
        let seq: i64 = $seq;
        if seq > keep {
            diesel::delete(
                server_events::table
                    .filter(server_events::organization_id.eq($org))
                    .filter(server_events::seq.le(seq - keep)),
            )
            .execute($conn)
            .await?;
        }
        Ok(())
    }};
}
pub(super) use prune_to_retention;

/// The event's statement on `conn`, to be awaited alone or pipelined with
/// others; its sequence number once written. The caller prunes.
pub(super) fn append_event_pg<'a>(
    conn: &'a AsyncPgConnection,
    org: &str,
    event: &EventDraft,
) -> futures::future::BoxFuture<'a, QueryResult<i64>> {
    use diesel::sql_types::{BigInt, Text};
    let mut conn = conn;
    diesel::sql_query(APPEND_EVENT_PG)
        .bind::<Text, _>(org)
        .bind::<Text, _>(event.kind)
        .bind::<Text, _>(&event.server_id)
        .bind::<Text, _>(&event.payload)
        .bind::<BigInt, _>(to_ms(std::time::SystemTime::now()))
        .bind::<Text, _>(CHANNEL)
        .reused()
        .get_result::<Appended>(&mut conn)
        .map(|appended| appended.map(|Appended { seq }| seq))
        .boxed()
}

impl AppendEvent for AsyncPgConnection {
    async fn append_event(
        &mut self,
        retention: &EventRetention,
        org: &str,
        event: &EventDraft,
    ) -> Result<(), StoreError> {
        let seq = append_event_pg(self, org, event).await?;
        prune_to_retention!(self, retention, org, seq)
    }
}

impl AppendEvent for super::SqliteConn {
    async fn append_event(
        &mut self,
        retention: &EventRetention,
        org: &str,
        event: &EventDraft,
    ) -> Result<(), StoreError> {
        // SQLite's writers are all in this process: the watchers are woken
        // in-process once the transaction has committed.
        let seq: i64 = diesel::insert_into(event_cursors::table)
            .values((
                event_cursors::organization_id.eq(org),
                event_cursors::last_seq.eq(1),
            ))
            .on_conflict(event_cursors::organization_id)
            .do_update()
            .set(event_cursors::last_seq.eq(event_cursors::last_seq + 1))
            .returning(event_cursors::last_seq)
            .reused()
            .get_result(self)
            .await?;
        diesel::insert_into(server_events::table)
            .values((
                server_events::organization_id.eq(org),
                server_events::seq.eq(seq),
                server_events::kind.eq(event.kind),
                server_events::server_id.eq(&event.server_id),
                server_events::payload.eq(&event.payload),
                server_events::created_at.eq(to_ms(std::time::SystemTime::now())),
            ))
            .reused()
            .execute(self)
            .await?;
        prune_to_retention!(self, retention, org, seq)
    }
}

/// Which watchers should read the log again.
#[derive(Debug, Clone)]
pub(super) enum Wake {
    Organization(Arc<str>),
    /// The listener (re)connected: what was announced meanwhile is unknown.
    Everyone,
}

/// Wakes this replica's watchers; cheap to clone.
pub(super) type EventBus = broadcast::Sender<Wake>;

pub(super) fn event_bus() -> EventBus {
    // Watchers that fall this far behind read the log again anyway.
    broadcast::channel(1024).0
}

/// A watcher's end of the signal that its organization may have new events.
pub struct EventSignal {
    receiver: broadcast::Receiver<Wake>,
}

impl EventSignal {
    /// Returns once `org` may have events the watcher has not read. Taken
    /// before the first read, so nothing committed after it is missed.
    pub async fn changed(&mut self, org: &str) {
        loop {
            match self.receiver.recv().await {
                Ok(Wake::Everyone) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Ok(Wake::Organization(woken)) if *woken == *org => return,
                Ok(Wake::Organization(_)) => {}
                // The store is gone: nothing more will be announced.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

/// What [`EventSignal::next`] woke for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Woken {
    /// This organization may have new events.
    Organization(String),
    /// Any organization may have: the listener reconnected, or the signal
    /// fell behind.
    Everyone,
}

impl EventSignal {
    /// The next wake-up, of any organization; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Woken> {
        match self.receiver.recv().await {
            Ok(Wake::Organization(org)) => Some(Woken::Organization(org.to_string())),
            Ok(Wake::Everyone) | Err(broadcast::error::RecvError::Lagged(_)) => {
                Some(Woken::Everyone)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Events after a cursor, and the cursor to read on from.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<ServerEvent>,
    /// The last cursor read (also of rows this build cannot show).
    pub through: u64,
}

impl Store {
    pub fn subscribe_events(&self) -> EventSignal {
        EventSignal {
            receiver: self.inner.events.subscribe(),
        }
    }

    /// After a commit that appended events of `org`: wakes this process's
    /// watchers on SQLite. PostgreSQL's NOTIFY reaches every replica's
    /// listener, this one's too.
    pub(super) fn events_committed(&self, org: &str) {
        if matches!(self.inner.backend, Backend::Sqlite { .. }) {
            let _ = self.inner.events.send(Wake::Organization(org.into()));
        }
    }

    /// The organization's newest cursor (0 before its first event).
    pub async fn event_head(&self, org: &str) -> Result<u64, StoreError> {
        let head: Option<i64> = with_conn!(self, Access::Read, "event_head", |conn| {
            Ok(event_cursors::table
                .find(org)
                .select(event_cursors::last_seq)
                .first(conn)
                .await
                .optional()?)
        })?;
        Ok(head.map_or(0, |h| u64::try_from(h).unwrap_or_default()))
    }

    /// Up to `limit` events of `org` after cursor `after`, oldest first. A
    /// cursor whose successors were pruned is [`StoreError::CursorExpired`];
    /// one beyond the newest event is [`StoreError::CursorAhead`].
    pub async fn events_after(
        &self,
        org: &str,
        after: u64,
        limit: i64,
    ) -> Result<EventPage, StoreError> {
        let from = i64::try_from(after).map_err(|_| StoreError::CursorAhead { after, head: 0 })?;
        // The head first: every event up to it was committed by then, so
        // finding one of them missing afterwards means it was pruned.
        let (head, rows): (Option<i64>, Vec<EventRow>) =
            with_conn!(self, Access::Read, "events_after", |conn| {
                let head = event_cursors::table
                    .find(org)
                    .select(event_cursors::last_seq)
                    .first(conn)
                    .await
                    .optional()?;
                let rows = server_events::table
                    .filter(server_events::organization_id.eq(org))
                    .filter(server_events::seq.gt(from))
                    .order(server_events::seq.asc())
                    .limit(limit)
                    .select(EventRow::as_select())
                    .load(conn)
                    .await?;
                Ok((head, rows))
            })?;
        let head = head.unwrap_or(0);
        if from > head {
            return Err(StoreError::CursorAhead {
                after,
                head: u64::try_from(head).unwrap_or_default(),
            });
        }
        let mut through = from;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            if row.seq != through + 1 {
                if through == from {
                    return Err(StoreError::CursorExpired {
                        after,
                        oldest: u64::try_from(row.seq).unwrap_or_default(),
                    });
                }
                // A gap further on: deliver up to it; the next read fails.
                break;
            }
            through = row.seq;
            events.extend(row.into_event());
        }
        if through == from && from < head {
            // Everything after the cursor is gone (pruned by age).
            return Err(StoreError::CursorExpired {
                after,
                oldest: u64::try_from(head).unwrap_or_default() + 1,
            });
        }
        Ok(EventPage {
            events,
            through: u64::try_from(through).unwrap_or_default(),
        })
    }

    /// Removes events older than the retention's age, of every
    /// organization; answers how many.
    pub async fn sweep_events(&self) -> Result<usize, StoreError> {
        let max_age = self.inner.settings.event_retention.max_age;
        let cutoff = to_ms(
            std::time::SystemTime::now()
                .checked_sub(max_age)
                .unwrap_or(std::time::UNIX_EPOCH),
        );
        with_conn!(self, Access::Write, "sweep_events", |conn| {
            Ok(
                diesel::delete(server_events::table.filter(server_events::created_at.lt(cutoff)))
                    .execute(conn)
                    .await?,
            )
        })
    }

    /// On PostgreSQL, hears the events every replica commits (NOTIFY) on one
    /// connection of its own, outside the pool, and wakes this replica's
    /// watchers, until `stopping`. Reconnects when the connection is lost;
    /// watchers read the log again then, so nothing announced meanwhile is
    /// missed. On SQLite there is nothing to hear.
    pub async fn listen_for_events(&self, stopping: CancellationToken) {
        let DatabaseUrl::Postgres(url) = &self.inner.settings.url else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        let mut lost = false;
        loop {
            let heard = async {
                let mut conn = AsyncPgConnection::establish(url)
                    .await
                    .map_err(|e| e.to_string())?;
                diesel::sql_query(format!("LISTEN {CHANNEL}"))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if lost {
                    tracing::info!("listening for server events again");
                }
                lost = false;
                backoff = Duration::from_millis(100);
                let _ = self.inner.events.send(Wake::Everyone);
                let mut notifications = std::pin::pin!(conn.notifications_stream());
                while let Some(notification) = notifications.next().await {
                    let notification = notification.map_err(|e| e.to_string())?;
                    let _ = self
                        .inner
                        .events
                        .send(Wake::Organization(notification.payload.into()));
                }
                Ok::<(), String>(())
            };
            let error = tokio::select! {
                () = stopping.cancelled() => return,
                heard = heard => heard.err().unwrap_or_else(|| "the connection closed".into()),
            };
            if !lost {
                tracing::warn!(%error, "lost the database connection that hears server events; reconnecting");
                lost = true;
            } else {
                tracing::debug!(%error, "reconnecting to hear server events failed");
            }
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

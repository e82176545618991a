//! Live sessions for tool calls: one per registered server, opened on the
//! first call, shared by concurrent calls (JSON-RPC multiplexes them over one
//! stdio child or one HTTP session), closed when idle or when the least
//! recently used must make room. A dead session is replaced on the next call.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::{McpConnector, McpError, Session, Stage, live::ServerKey, session::CallFailure};
use crate::model::{ToolCallResult, Transport};

#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// A session no call used for this long is closed.
    pub idle_timeout: Duration,
    /// Most live sessions; the least recently used idle one makes room.
    pub max_sessions: usize,
    /// Most calls in flight on one server; beyond it calls are refused.
    pub max_calls_per_server: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            idle_timeout: Duration::from_secs(300),
            max_sessions: 256,
            max_calls_per_server: 32,
        }
    }
}

/// What the pool is doing, for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub live_sessions: usize,
    pub calls_in_flight: usize,
    pub session_opens: u64,
    pub session_reuses: u64,
}

#[derive(Clone)]
pub(super) struct SessionPool {
    inner: Arc<Inner>,
}

struct Inner {
    limits: PoolLimits,
    servers: Mutex<HashMap<ServerKey, Arc<Entry>>>,
    calls_in_flight: AtomicUsize,
    opens: AtomicU64,
    reuses: AtomicU64,
    janitor: OnceLock<()>,
}

/// One server's place in the pool. It outlives the sessions it holds, so
/// the per-server limit holds across a session's replacement.
struct Entry {
    /// Locked while a session is opened: concurrent first calls wait for one
    /// session instead of opening many.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    calls: Arc<Semaphore>,
    last_used: Mutex<Instant>,
    /// The [`reach`] of the transport the session was opened with: another
    /// replica may replace the transport, and each call brings the stored
    /// one.
    opened_with: Mutex<Option<u64>>,
}

impl Entry {
    fn touch(&self) {
        if let Ok(mut last) = self.last_used.lock() {
            *last = Instant::now();
        }
    }

    fn idle_since(&self) -> Instant {
        self.last_used
            .lock()
            .map(|last| *last)
            .unwrap_or_else(|_| Instant::now())
    }

    fn busy(&self, limits: &PoolLimits) -> bool {
        self.calls.available_permits() < limits.max_calls_per_server
    }
}

/// Counts a call while it runs.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SessionPool {
    pub(super) fn new(limits: PoolLimits) -> Self {
        SessionPool {
            inner: Arc::new(Inner {
                limits: PoolLimits {
                    max_sessions: limits.max_sessions.max(1),
                    max_calls_per_server: limits.max_calls_per_server.max(1),
                    ..limits
                },
                servers: Mutex::default(),
                calls_in_flight: AtomicUsize::new(0),
                opens: AtomicU64::new(0),
                reuses: AtomicU64::new(0),
                janitor: OnceLock::new(),
            }),
        }
    }

    /// Calls `tool` on the server's live session, opening one if there is
    /// none (or the last one died). A request that provably never left is
    /// retried once on a fresh session; nothing else is retried.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn call(
        &self,
        connector: &McpConnector,
        key: ServerKey,
        transport: &Transport,
        tool: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        timeout: Duration,
    ) -> Result<ToolCallResult, McpError> {
        self.start_janitor();
        let deadline = Instant::now() + timeout;
        let entry = self.entry(&key)?;
        let _permit: OwnedSemaphorePermit =
            entry.calls.clone().try_acquire_owned().map_err(|_| {
                McpError::Busy(format!(
                    "{} calls are already in flight on this MCP server (--max-calls-per-server); retry later",
                    self.inner.limits.max_calls_per_server
                ))
            })?;
        let _in_flight = InFlight::new(&self.inner.calls_in_flight);
        entry.touch();
        let result = async {
            let session = self
                .session(&entry, connector, &key, transport, deadline)
                .await?;
            // Past this match the call is retried once, on a fresh session.
            match session
                .call_tool(tool, arguments.clone(), remaining(deadline))
                .await
            {
                Ok(result) => return Ok(result),
                Err(CallFailure::NotDelivered(err)) => {
                    tracing::debug!(error = %err, "live MCP session was gone; retrying on a fresh one");
                }
                // The server refused the session's OAuth token (expired or
                // revoked) and so did not run the call: retry once on a
                // fresh session, which gets a new token.
                Err(CallFailure::Failed(err @ McpError::Unauthorized { .. }))
                    if matches!(transport, Transport::StreamableHttp { oauth: Some(_), .. }) =>
                {
                    tracing::debug!(server = %key.1, error = %err, "OAuth token refused; retrying with a new one");
                    connector.forget_token(&key);
                }
                Err(CallFailure::Failed(err)) => {
                    if !session.is_open() {
                        forget(&entry, &session).await;
                    }
                    return Err(err);
                }
            }
            forget(&entry, &session).await;
            let fresh = self
                .session(&entry, connector, &key, transport, deadline)
                .await?;
            fresh
                .call_tool(tool, arguments, remaining(deadline))
                .await
                .map_err(|(CallFailure::NotDelivered(err) | CallFailure::Failed(err))| err)
        }
        .await;
        entry.touch();
        result
    }

    /// The entry of a server, made if needed; a full pool first closes its
    /// least recently used idle session.
    fn entry(&self, key: &ServerKey) -> Result<Arc<Entry>, McpError> {
        let limits = &self.inner.limits;
        let mut servers = self
            .inner
            .servers
            .lock()
            .map_err(|_| McpError::Busy("the session pool is unusable".into()))?;
        if let Some(entry) = servers.get(key) {
            return Ok(entry.clone());
        }
        if servers.len() >= limits.max_sessions {
            let victim = servers
                .iter()
                .filter(|(_, entry)| !entry.busy(limits))
                .min_by_key(|(_, entry)| entry.idle_since())
                .map(|(key, _)| key.clone());
            let Some(victim) = victim else {
                return Err(McpError::Busy(format!(
                    "all {} live MCP sessions are in use (--max-live-sessions); retry later",
                    limits.max_sessions
                )));
            };
            if let Some(entry) = servers.remove(&victim) {
                tracing::debug!(server = %victim.1, "closing the least recently used live MCP session");
                close_entry(entry);
            }
        }
        let entry = Arc::new(Entry {
            session: tokio::sync::Mutex::new(None),
            calls: Arc::new(Semaphore::new(limits.max_calls_per_server)),
            last_used: Mutex::new(Instant::now()),
            opened_with: Mutex::new(None),
        });
        servers.insert(key.clone(), entry.clone());
        Ok(entry)
    }

    /// The entry's open session, or a new one.
    async fn session(
        &self,
        entry: &Entry,
        connector: &McpConnector,
        key: &ServerKey,
        transport: &Transport,
        deadline: Instant,
    ) -> Result<Arc<Session>, McpError> {
        let timed_out = || McpError::Timeout {
            stage: Stage::Connect,
            after: connector.settings().connect_timeout,
        };
        let mut slot = tokio::time::timeout_at(deadline, entry.session.lock())
            .await
            .map_err(|_| timed_out())?;
        let wanted = reach(transport);
        let opened_with = entry.opened_with.lock().ok().and_then(|w| *w);
        if let Some(session) = slot.as_ref() {
            if opened_with != Some(wanted) {
                tracing::debug!(server = %key.1, "the server's transport changed; opening a new live MCP session");
            } else if session.is_open() {
                self.inner.reuses.fetch_add(1, Ordering::Relaxed);
                return Ok(session.clone());
            } else {
                tracing::debug!(server = %key.1, "live MCP session died; opening a new one");
            }
        }
        if let Some(dead) = slot.take() {
            tokio::spawn(async move { dead.shut_down().await });
        }
        let session = tokio::time::timeout_at(
            deadline,
            connector.open_for_calls(
                &key.0,
                &key.1,
                transport,
                super::client::watching(connector.tool_changes_to(key)),
            ),
        )
        .await
        .map_err(|_| timed_out())??;
        self.inner.opens.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(server = %key.1, "opened a live MCP session");
        session.listen_for_tool_changes();
        let session = Arc::new(session);
        *slot = Some(session.clone());
        if let Ok(mut opened_with) = entry.opened_with.lock() {
            *opened_with = Some(wanted);
        }
        Ok(session)
    }

    /// The server's open live session, if it has one; never opens one.
    pub(super) fn live(&self, key: &ServerKey) -> Option<Arc<Session>> {
        let entry = self.inner.servers.lock().ok()?.get(key)?.clone();
        let slot = entry.session.try_lock().ok()?;
        slot.as_ref().filter(|session| session.is_open()).cloned()
    }

    /// The servers the pool holds a place for (a live session, or one being
    /// opened).
    pub(super) fn servers(&self) -> Vec<ServerKey> {
        self.inner
            .servers
            .lock()
            .map(|servers| servers.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Closes the server's live session, if any. Calls on it end with an error.
    pub(super) fn remove(&self, key: &ServerKey) {
        let entry = self
            .inner
            .servers
            .lock()
            .ok()
            .and_then(|mut s| s.remove(key));
        if let Some(entry) = entry {
            close_entry(entry);
        }
    }

    /// Closes every live session (shutdown).
    pub(super) fn clear(&self) {
        let entries: Vec<Arc<Entry>> = self
            .inner
            .servers
            .lock()
            .map(|mut s| s.drain().map(|(_, e)| e).collect())
            .unwrap_or_default();
        entries.into_iter().for_each(close_entry);
    }

    pub(super) fn stats(&self) -> PoolStats {
        let live_sessions = self
            .inner
            .servers
            .lock()
            .map(|servers| {
                servers
                    .values()
                    .filter(|e| e.session.try_lock().map_or(true, |s| s.is_some()))
                    .count()
            })
            .unwrap_or(0);
        PoolStats {
            live_sessions,
            calls_in_flight: self.inner.calls_in_flight.load(Ordering::Relaxed),
            session_opens: self.inner.opens.load(Ordering::Relaxed),
            session_reuses: self.inner.reuses.load(Ordering::Relaxed),
        }
    }

    /// Closes sessions idle for longer than the idle timeout, from a task
    /// that ends with the pool.
    fn start_janitor(&self) {
        self.inner.janitor.get_or_init(|| {
            let pool = Arc::downgrade(&self.inner);
            let every = (self.inner.limits.idle_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(30));
            tokio::spawn(sweep_idle(pool, every));
        });
    }
}

async fn sweep_idle(pool: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = pool.upgrade() else { return };
        let idle: Vec<Arc<Entry>> = match inner.servers.lock() {
            Ok(mut servers) => {
                let expired: Vec<ServerKey> = servers
                    .iter()
                    .filter(|(_, e)| {
                        !e.busy(&inner.limits)
                            && e.idle_since().elapsed() >= inner.limits.idle_timeout
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                expired
                    .iter()
                    .filter_map(|key| servers.remove(key))
                    .collect()
            }
            Err(_) => return,
        };
        if !idle.is_empty() {
            tracing::debug!(sessions = idle.len(), "closing idle live MCP sessions");
        }
        idle.into_iter().for_each(close_entry);
    }
}

/// Tears down the entry's session in the background (best-effort).
fn close_entry(entry: Arc<Entry>) {
    tokio::spawn(async move {
        let session = entry.session.lock().await.take();
        if let Some(session) = session {
            session.shut_down().await;
        }
    });
}

/// Drops the entry's session if it is still `dead` (another call may
/// already have replaced it), and tears it down.
async fn forget(entry: &Entry, dead: &Arc<Session>) {
    let mut slot = entry.session.lock().await;
    if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, dead)) {
        *slot = None;
    }
    drop(slot);
    let dead = dead.clone();
    tokio::spawn(async move { dead.shut_down().await });
}

/// What says how a session reaches its server: the transport without its
/// OAuth grant, which is renewed in place (a session whose token is refused
/// is replaced anyway).
fn reach(transport: &Transport) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut transport = transport.clone();
    if let Transport::StreamableHttp {
        oauth: Some(oauth), ..
    } = &mut transport
    {
        oauth.grant = None;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_string(&transport)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

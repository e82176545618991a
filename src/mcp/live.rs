//! The sessions the daemon holds right now, by server, so Close and shutdown
//! can tear down what is still open.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rmcp::{
    RoleClient,
    service::{DynService, RunningService},
};

use super::{child::ChildProcess, stdio::Malformed};

/// What a live session owns: the rmcp service and, for stdio, the process.
pub(super) struct Live {
    pub(super) service: RunningService<RoleClient, Box<dyn DynService<RoleClient>>>,
    pub(super) child: Option<ChildProcess>,
    /// Stdio only: set when the server's output was not JSON-RPC.
    pub(super) malformed: Option<Malformed>,
}

impl Live {
    /// Whether the session started with the legacy `initialize` handshake
    /// (a revision before 2026-07-28).
    pub(super) fn negotiated_initialize(&self) -> bool {
        self.service
            .peer()
            .peer_info()
            .is_some_and(|info| info.protocol_version.has_initialize())
    }

    /// False once the session's task has ended or its stdio child exited.
    pub(super) fn is_running(&mut self) -> bool {
        !self.service.is_closed()
            && self
                .child
                .as_mut()
                .is_none_or(|child| child.exit_status().is_none())
    }
}

/// Shared between a [`super::Session`] and the registry; whoever takes the
/// `Live` out first tears it down.
pub(super) type Slot = Arc<Mutex<Option<Live>>>;

/// (organization, server id): ids are only meaningful inside an organization.
pub(super) type ServerKey = (String, String);

#[derive(Default, Clone)]
pub(super) struct LiveSessions {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    slots: Mutex<HashMap<ServerKey, HashMap<u64, Slot>>>,
}

impl LiveSessions {
    pub(super) fn register(&self, key: ServerKey, slot: Slot) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slots) = self.inner.slots.lock() {
            slots.entry(key).or_default().insert(id, slot);
        }
        id
    }

    pub(super) fn deregister(&self, key: &ServerKey, id: u64) {
        if let Ok(mut slots) = self.inner.slots.lock()
            && let Some(sessions) = slots.get_mut(key)
        {
            sessions.remove(&id);
            if sessions.is_empty() {
                slots.remove(key);
            }
        }
    }

    /// Takes out what the sessions of one server (or of all servers) hold.
    pub(super) fn take(&self, key: Option<&ServerKey>) -> Vec<Live> {
        let slots: Vec<Slot> = match self.inner.slots.lock() {
            Ok(mut slots) => match key {
                Some(key) => slots
                    .remove(key)
                    .map(|m| m.into_values().collect())
                    .unwrap_or_default(),
                None => slots.drain().flat_map(|(_, m)| m.into_values()).collect(),
            },
            Err(_) => Vec::new(),
        };
        slots
            .into_iter()
            .filter_map(|slot| slot.lock().ok().and_then(|mut live| live.take()))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.inner
            .slots
            .lock()
            .map(|slots| slots.values().map(HashMap::len).sum())
            .unwrap_or(0)
    }
}

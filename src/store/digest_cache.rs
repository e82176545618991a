//! The stored tools of recently synced servers (name → id and digest), kept
//! in memory so that a sync of a large server does not read every stored
//! tool again to find the few that changed.
//!
//! An entry is only as good as the `tools_version` it was taken at: every
//! commit that changes a server's tool set moves that column on (whichever
//! daemon sharing the database made it), each under the server's tools lock
//! (`sync::TOOLS_LOCK`), and a sync uses an entry only when the row it reads
//! under that lock still carries the entry's version. Anything else reads
//! the tools from the database, as a sync without a cache would.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

/// A server's stored tools by name: `(id, digest)`.
pub(super) type StoredTools = HashMap<String, (String, String)>;

/// Tools held across all entries. At a few hundred bytes a tool this caps
/// the cache at some megabytes; the least recently synced servers go first.
const CAPACITY_TOOLS: usize = 50_000;

#[derive(Default)]
pub(super) struct DigestCache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    servers: HashMap<String, Entry>,
    /// Tools held, summed over `servers`.
    tools: usize,
    /// Bumped on every put: the entry with the lowest is the least recent.
    clock: u64,
}

struct Entry {
    version: i64,
    tools: StoredTools,
    used: u64,
}

impl DigestCache {
    /// The server's tools as stored at `version`, if held; the entry leaves
    /// the cache (the sync owns and edits it, and puts it back once it has
    /// committed).
    pub(super) fn take(&self, server_id: &str, version: i64) -> Option<StoredTools> {
        let mut state = self.lock();
        let entry = state.servers.remove(server_id)?;
        state.tools -= entry.tools.len();
        (entry.version == version).then_some(entry.tools)
    }

    /// Holds `tools` as the server's tools at `version` (committed).
    pub(super) fn put(&self, server_id: &str, version: i64, tools: StoredTools) {
        if tools.len() > CAPACITY_TOOLS {
            return;
        }
        let mut state = self.lock();
        state.clock += 1;
        let used = state.clock;
        if let Some(old) = state.servers.remove(server_id) {
            state.tools -= old.tools.len();
            if old.version > version {
                // A later sync of this daemon committed and put its entry
                // first; this one is older.
                state.tools += old.tools.len();
                state.servers.insert(server_id.to_owned(), old);
                return;
            }
        }
        while state.tools + tools.len() > CAPACITY_TOOLS {
            let Some(oldest) = state
                .servers
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some(evicted) = state.servers.remove(&oldest) {
                state.tools -= evicted.tools.len();
            }
        }
        state.tools += tools.len();
        state.servers.insert(
            server_id.to_owned(),
            Entry {
                version,
                tools,
                used,
            },
        );
    }

    /// The server is gone.
    pub(super) fn forget(&self, server_id: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.servers.remove(server_id) {
            state.tools -= entry.tools.len();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can
        // panic, so a poisoned lock's state is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(n: usize) -> StoredTools {
        (0..n)
            .map(|i| (format!("t{i}"), (format!("id{i}"), format!("d{i}"))))
            .collect()
    }

    #[test]
    fn an_entry_serves_only_its_version_and_only_once() {
        let cache = DigestCache::default();
        cache.put("s", 3, tools(2));
        assert!(cache.take("s", 4).is_none(), "another version is a miss");
        assert!(cache.take("s", 3).is_none(), "a miss drops the entry");
        cache.put("s", 3, tools(2));
        assert_eq!(cache.take("s", 3).map(|t| t.len()), Some(2));
        assert!(
            cache.take("s", 3).is_none(),
            "taken entries leave the cache"
        );
    }

    #[test]
    fn an_older_put_does_not_replace_a_newer_entry() {
        let cache = DigestCache::default();
        cache.put("s", 5, tools(1));
        cache.put("s", 4, tools(3));
        assert_eq!(cache.take("s", 5).map(|t| t.len()), Some(1));
    }

    #[test]
    fn the_least_recently_put_server_is_evicted_at_capacity() {
        let cache = DigestCache::default();
        let half = CAPACITY_TOOLS / 2;
        cache.put("a", 1, tools(half));
        cache.put("b", 1, tools(half));
        cache.put("c", 1, tools(10));
        assert!(cache.take("a", 1).is_none(), "a was the oldest");
        assert!(cache.take("b", 1).is_some());
        assert!(cache.take("c", 1).is_some());
        assert_eq!(cache.lock().tools, 0, "the count follows the entries");
        cache.put("huge", 1, tools(CAPACITY_TOOLS + 1));
        assert!(cache.take("huge", 1).is_none(), "too large to hold at all");
    }

    #[test]
    fn forget_drops_the_entry() {
        let cache = DigestCache::default();
        cache.put("s", 1, tools(4));
        cache.forget("s");
        assert!(cache.take("s", 1).is_none());
        assert_eq!(cache.lock().tools, 0);
    }
}

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
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
};

use super::models::Digest;

/// A server's stored tools: each name's id and digest (`None` for a row
/// from before digests), and the set of those digests.
#[derive(Debug, Clone, Default)]
pub(super) struct StoredTools {
    by_name: HashMap<String, (String, Option<Digest>)>,
    /// A digest covers the tool's name, so a listed tool whose digest is
    /// here is stored, unchanged, under that name. Most of a sync is that
    /// one probe per listed tool, in a few dozen compact kilobytes; looking
    /// each name up instead reads keys scattered over the heap, long out of
    /// the CPU's caches, and was most of a 5,000-tool sync's difference.
    digests: HashSet<Digest>,
}

impl StoredTools {
    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether a tool with exactly this content (and name) is stored.
    pub(super) fn holds(&self, digest: &Digest) -> bool {
        self.digests.contains(digest)
    }

    /// The id and digest of the tool stored under `name`.
    pub(super) fn get(&self, name: &str) -> Option<&(String, Option<Digest>)> {
        self.by_name.get(name)
    }

    pub(super) fn insert(&mut self, name: String, id: String, digest: Option<Digest>) {
        if let Some((_, Some(old))) = self.by_name.insert(name, (id, digest)) {
            self.digests.remove(&old);
        }
        if let Some(digest) = digest {
            self.digests.insert(digest);
        }
    }

    pub(super) fn remove(&mut self, name: &str) {
        if let Some((_, Some(old))) = self.by_name.remove(name) {
            self.digests.remove(&old);
        }
    }

    /// Names with their ids and digests.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &(String, Option<Digest>))> {
        self.by_name.iter()
    }
}

impl FromIterator<(String, String, Option<Digest>)> for StoredTools {
    fn from_iter<I: IntoIterator<Item = (String, String, Option<Digest>)>>(rows: I) -> Self {
        let mut stored = StoredTools::default();
        for (name, id, digest) in rows {
            stored.insert(name, id, digest);
        }
        stored
    }
}

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
    /// The server's tools as stored at the version returned with them, if
    /// held; the entry leaves the cache (the sync owns and edits it, uses it
    /// only if the server row it locks still carries that version, and puts
    /// it back once it has committed).
    pub(super) fn take(&self, server_id: &str) -> Option<(i64, StoredTools)> {
        let mut state = self.lock();
        let entry = state.servers.remove(server_id)?;
        state.tools -= entry.tools.len();
        Some((entry.version, entry.tools))
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

    fn digest(i: usize) -> Digest {
        let mut d = Digest::default();
        d[..8].copy_from_slice(&(i as u64).to_le_bytes());
        d
    }

    fn tools(n: usize) -> StoredTools {
        (0..n)
            .map(|i| (format!("t{i}"), format!("id{i}"), Some(digest(i))))
            .collect()
    }

    fn held(cache: &DigestCache, server: &str) -> Option<(i64, usize)> {
        cache
            .take(server)
            .map(|(version, tools)| (version, tools.len()))
    }

    #[test]
    fn an_entry_is_served_once_with_its_version() {
        let cache = DigestCache::default();
        cache.put("s", 3, tools(2));
        assert_eq!(held(&cache, "s"), Some((3, 2)));
        assert_eq!(held(&cache, "s"), None, "taken entries leave the cache");
    }

    #[test]
    fn stored_digests_follow_every_change_of_a_name() {
        let mut stored = tools(3);
        assert!(stored.holds(&digest(1)));
        stored.insert("t1".into(), "id1".into(), Some(digest(7)));
        assert!(!stored.holds(&digest(1)), "the old content is gone");
        assert!(stored.holds(&digest(7)));
        stored.insert("t2".into(), "id2".into(), None);
        assert!(!stored.holds(&digest(2)), "a row without a digest");
        stored.remove("t0");
        assert!(!stored.holds(&digest(0)));
        assert_eq!(stored.len(), 2);
        assert_eq!(stored.digests.len(), 1, "only t1's new digest is left");
        assert_eq!(stored.get("t1"), Some(&("id1".to_owned(), Some(digest(7)))));
    }

    #[test]
    fn an_older_put_does_not_replace_a_newer_entry() {
        let cache = DigestCache::default();
        cache.put("s", 5, tools(1));
        cache.put("s", 4, tools(3));
        assert_eq!(held(&cache, "s"), Some((5, 1)));
    }

    #[test]
    fn the_least_recently_put_server_is_evicted_at_capacity() {
        let cache = DigestCache::default();
        let half = CAPACITY_TOOLS / 2;
        cache.put("a", 1, tools(half));
        cache.put("b", 1, tools(half));
        cache.put("c", 1, tools(10));
        assert_eq!(held(&cache, "a"), None, "a was the oldest");
        assert!(held(&cache, "b").is_some());
        assert!(held(&cache, "c").is_some());
        assert_eq!(cache.lock().tools, 0, "the count follows the entries");
        cache.put("huge", 1, tools(CAPACITY_TOOLS + 1));
        assert_eq!(held(&cache, "huge"), None, "too large to hold at all");
    }

    #[test]
    fn forget_drops_the_entry() {
        let cache = DigestCache::default();
        cache.put("s", 1, tools(4));
        cache.forget("s");
        assert_eq!(held(&cache, "s"), None);
        assert_eq!(cache.lock().tools, 0);
    }
}

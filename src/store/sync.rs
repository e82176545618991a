//! Tool sync: a server's stored tools made equal to what it lists now, by
//! writing only the difference, in one transaction.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Access, Store, StoreError,
    digest_cache::{DigestCache, StoredTools},
    events::{AppendEvent, EventDraft},
    models::{
        Digest, ServerRow, ToolRow, digest_of_column, listed_digest, to_ms, transport_kind_column,
    },
    queries::one_server,
    schema::{mcp_servers, server_tools, tools},
    sync_statements::{Announce, SyncStatements, SyncWrite},
    with_conn,
};
use crate::model::{
    NewTool, Server, ServerEventKind, ServerIdentity, Tool, ToolChanges, Transport,
};

/// What [`Store::sync_tools`] changed. Nothing changed: nothing was written.
#[derive(Debug, Clone)]
pub struct SyncedTools {
    pub server: Server,
    pub added: Vec<Tool>,
    pub updated: Vec<Tool>,
    /// Names of the tools removed, with their mappings.
    pub removed: Vec<String>,
}

impl SyncedTools {
    /// The names of what changed, as an event reports them.
    fn changes(&self) -> ToolChanges {
        ToolChanges {
            added: self.added.iter().map(|t| t.name.clone()).collect(),
            updated: self.updated.iter().map(|t| t.name.clone()).collect(),
            removed: self.removed.clone(),
        }
    }
}

/// Taken (on PostgreSQL) by every transaction that writes an existing
/// server's tools, before it reads the server row: writers of one server's
/// tools never interleave, also across replicas, so the `tools_version` a
/// writer reads under it is that of the tools it is about to change (which
/// the held digests rely on). SQLite has one writer.
pub(super) const TOOLS_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))";

/// Rows per multi-row statement (bind-parameter limits).
pub(super) const BATCH_ROWS: usize = 500;

/// A sync's work that needs no connection, done before it takes one: the
/// listed tools' digests and, when this daemon holds the server's stored
/// digests, the difference from them. The transaction uses that difference
/// only if the server row it locks still carries the held version, and
/// finds it again from the database otherwise.
pub struct PreparedSync<'a> {
    listed: Listed<'a>,
    held: Option<Held>,
}

/// The server's stored tools as this daemon held them, and the plan
/// against them.
struct Held {
    version: i64,
    stored: StoredTools,
    plan: Plan,
}

impl Store {
    /// Digests `listed` and, if this daemon holds the server's stored tools,
    /// finds the difference: CPU only, no connection taken. The listing
    /// stays the caller's: freeing thousands of tools is no part of the
    /// transaction.
    pub fn prepare_sync<'a>(&self, server_id: &str, listed: &'a [NewTool]) -> PreparedSync<'a> {
        let listed = Listed::new(listed);
        let held = self.inner.digests.take(server_id).map(|(version, stored)| {
            let plan = Plan::of(&stored, &listed);
            Held {
                version,
                stored,
                plan,
            }
        });
        PreparedSync { listed, held }
    }

    /// Makes the server's stored tools equal to the prepared listing: new
    /// names are added, tools whose description, schemas, title or
    /// annotations changed are updated in place (same id), the others
    /// removed with their mappings. One transaction; syncs of one server
    /// never interleave (on PostgreSQL a transaction-scoped advisory lock per
    /// server, also across replicas; SQLite has one writer).
    pub async fn sync_tools(
        &self,
        org: &str,
        server_id: &str,
        prepared: PreparedSync<'_>,
        identity: Option<&ServerIdentity>,
    ) -> Result<SyncedTools, StoreError> {
        let identity = super::queries::identity_column(identity);
        let identity = &identity;
        let now = to_ms(std::time::SystemTime::now());
        let retention = &self.inner.settings.event_retention;
        let digests = &self.inner.digests;
        let (synced, announced, stored) = with_conn!(self, Access::Write, "sync_tools", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                Ok(sync_in_transaction!(
                    &mut *conn,
                    org,
                    server_id,
                    prepared,
                    identity.clone(),
                    now,
                    retention,
                    // Only what a watcher would see change is announced.
                    |changes: &ToolChanges, reached_again: bool| {
                        if !changes.is_empty() {
                            Some(ServerEventKind::ToolsChanged)
                        } else if reached_again {
                            Some(ServerEventKind::StatusChanged)
                        } else {
                            None
                        }
                    }
                ))
            })
            .await
        })?;
        stored.keep(digests, server_id);
        if announced {
            self.events_committed(org);
        }
        Ok(synced)
    }
}

/// The body of a sync of a [`PreparedSync`], inside a transaction the
/// caller opened on `$conn` (a macro: it is instantiated for each backend's
/// connection). `$announce` decides, from the changes and whether the
/// server was unreachable before, which event the sync writes itself (the
/// event goes out with the writes, in one round trip on PostgreSQL).
/// Evaluates to the [`SyncedTools`], whether an event was written, and the
/// tools as now stored (to [`StoredAfter::keep`] once committed); returns
/// early with a [`StoreError`].
macro_rules! sync_in_transaction {
    ($conn:expr, $org:expr, $server_id:expr, $prepared:expr, $identity:expr, $now:expr, $retention:expr, $announce:expr) => {{
        let conn = $conn;
        let org: &str = $org;
        let server_id: &str = $server_id;
        let (server, version): (ServerRow, i64) = conn
            .lock_and_read(org, server_id)
            .await?
            .ok_or_else(|| StoreError::ServerNotFound(server_id.to_owned()))?;
        let reached_again = server.unreachable_since.is_some();
        let PreparedSync { listed, held } = $prepared;
        let (mut stored, plan) = match held {
            Some(held) if held.version == version => (held.stored, held.plan),
            // Not held, or another sync (of any replica) committed since.
            _ => {
                // Digests, not whole tools: what a sync reads grows with the
                // server's size by a few dozen bytes a tool.
                let stored: StoredTools = server_tools::table
                    .inner_join(tools::table)
                    .filter(server_tools::server_id.eq(server_id))
                    .select((tools::name, tools::id, tools::content_hash))
                    .load::<(String, String, String)>(conn)
                    .await?
                    .into_iter()
                    .map(|(name, id, hash)| (name, id, digest_of_column(&hash)))
                    .collect();
                let plan = Plan::of(&stored, &listed);
                (stored, plan)
            }
        };
        // Changed rows from before digests are compared in full, once.
        let undigested: Vec<&String> = plan.undigested().collect();
        let mut legacy: Vec<ToolRow> = Vec::new();
        for batch in undigested.chunks(BATCH_ROWS) {
            legacy.extend(
                tools::table
                    .filter(tools::id.eq_any(batch))
                    .select(ToolRow::as_select())
                    .load::<ToolRow>(conn)
                    .await?,
            );
        }
        let diff = Diff::of(plan, &server, legacy, &listed, $now);

        let mut server = server;
        let identity: Option<String> = $identity;
        if identity.is_some() {
            server.server_info = identity;
        }
        if diff.changes_anything() {
            server.tool_count = i32::try_from(listed.tools.len()).unwrap_or(i32::MAX);
        }
        let version = if diff.writes_tools() {
            diff.apply_to(&mut stored);
            version + 1
        } else {
            version
        };
        // The server was reached and listed just now: one write of its row
        // says so (with its identity and tool count). Its tools and mappings
        // are untouched when nothing changed.
        let now: i64 = $now;
        server.last_connected_at = Some(now);
        server.last_synced_at = Some(now);
        server.unreachable_since = None;
        server.last_error = String::new();
        let changes = diff.changes();
        let event = ($announce)(&changes, reached_again)
            .map(|kind: ServerEventKind| EventDraft::new(kind, &server, changes));
        conn.write_sync(SyncWrite {
            server_id,
            added: &diff.added,
            updated: [&diff.updated, &diff.digested],
            removed: diff.removed.iter().map(|(id, _)| id).collect(),
            server: &server,
            tools_version: version,
            event: event.as_ref().map(|event| Announce {
                retention: $retention,
                org,
                event,
            }),
        })
        .await?;
        let synced = SyncedTools {
            server: server.into_server(None),
            added: diff
                .added
                .into_iter()
                .map(|t| t.into_tool(server_id))
                .collect(),
            updated: diff
                .updated
                .into_iter()
                .map(|t| t.into_tool(server_id))
                .collect(),
            removed: diff.removed.into_iter().map(|(_, name)| name).collect(),
        };
        (synced, event.is_some(), StoredAfter { version, stored })
    }};
}
pub(super) use sync_in_transaction;

/// A server's tools as a sync left them, to be held once it has committed.
pub(super) struct StoredAfter {
    version: i64,
    stored: StoredTools,
}

impl StoredAfter {
    pub(super) fn keep(self, digests: &DigestCache, server_id: &str) {
        digests.put(server_id, self.version, self.stored);
    }
}

/// The tools a server listed, with their digests, computed before the sync
/// takes its connection and lock: a server of thousands of tools otherwise
/// spends most of its transaction hashing.
struct Listed<'a> {
    tools: &'a [NewTool],
    digests: Vec<Digest>,
}

impl Listed<'_> {
    fn new(tools: &[NewTool]) -> Listed<'_> {
        // The manager refuses a listing that repeats a name; the plan
        // relies on it.
        debug_assert!(
            tools.iter().map(|t| &t.name).collect::<HashSet<_>>().len() == tools.len(),
            "a listing with a repeated tool name reached the store"
        );
        let digests = tools.iter().map(listed_digest).collect();
        Listed { tools, digests }
    }
}

/// What differs between the stored tools and a listing, found from digests
/// alone.
struct Plan {
    /// Listed tools whose name no stored tool has (indices into the listing).
    added: Vec<usize>,
    /// Listed tools stored under their name with other content: the index,
    /// the stored id, and whether that row is from before digests.
    changed: Vec<(usize, String, bool)>,
    /// Stored tools no longer listed: ids and names.
    removed: Vec<(String, String)>,
}

impl Plan {
    fn of(stored: &StoredTools, listed: &Listed<'_>) -> Plan {
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let mut kept = 0;
        for (index, (tool, digest)) in listed.tools.iter().zip(&listed.digests).enumerate() {
            if stored.holds(digest) {
                kept += 1;
                continue;
            }
            match stored.get(&tool.name) {
                None => added.push(index),
                Some((id, stored_digest)) => {
                    kept += 1;
                    changed.push((index, id.clone(), stored_digest.is_none()));
                }
            }
        }
        // Listed names are unique (see `Listed::new`), so when every stored
        // name was listed nothing was removed, and the common sync skips a
        // second pass over thousands.
        let mut removed: Vec<(String, String)> = Vec::new();
        if kept < stored.len() {
            let names: HashSet<&str> = listed.tools.iter().map(|t| t.name.as_str()).collect();
            removed = stored
                .iter()
                .filter(|(name, _)| !names.contains(name.as_str()))
                .map(|(name, (id, _))| (id.clone(), name.clone()))
                .collect();
        }
        removed.sort_by(|a, b| a.1.cmp(&b.1));
        Plan {
            added,
            changed,
            removed,
        }
    }

    /// Ids of the changed tools whose stored rows are from before digests.
    fn undigested(&self) -> impl Iterator<Item = &String> {
        self.changed
            .iter()
            .filter(|(_, _, undigested)| *undigested)
            .map(|(_, id, _)| id)
    }
}

/// The rows to write to go from what is stored to what is listed.
struct Diff {
    added: Vec<ToolRow>,
    /// The stored rows with their new content.
    updated: Vec<ToolRow>,
    /// Unchanged rows from before digests, given theirs (not a change).
    digested: Vec<ToolRow>,
    /// Ids and names.
    removed: Vec<(String, String)>,
}

impl Diff {
    /// The rows that carry out `plan`. `legacy`: the stored rows of
    /// [`Plan::undigested`], in full.
    fn of(
        plan: Plan,
        server: &ServerRow,
        legacy: Vec<ToolRow>,
        listed: &Listed<'_>,
        now: i64,
    ) -> Diff {
        let mut legacy: HashMap<String, ToolRow> =
            legacy.into_iter().map(|t| (t.id.clone(), t)).collect();
        // A stored tool keeps its id: it changes in place, and its
        // created_at is not rewritten. Its digest is the listing's.
        let row = |id: Option<String>, index: usize| {
            let (org, prefix) = (&server.organization_id, &server.tool_prefix);
            let tool = listed.tools[index].clone();
            ToolRow::of_listed(id, org, prefix, tool, &listed.digests[index], now)
        };
        let mut added: Vec<ToolRow> = plan.added.into_iter().map(|i| row(None, i)).collect();
        let mut updated = Vec::new();
        let mut digested = Vec::new();
        for (index, id, undigested) in plan.changed {
            let old = undigested.then(|| legacy.remove(&id)).flatten();
            let row = row(Some(id), index);
            let unchanged_legacy = old.is_some_and(|old| old.computed_hash() == row.content_hash);
            if unchanged_legacy {
                digested.push(row);
            } else {
                updated.push(row);
            }
        }
        added.sort_by(|a, b| a.name.cmp(&b.name));
        updated.sort_by(|a, b| a.name.cmp(&b.name));
        Diff {
            added,
            updated,
            digested,
            removed: plan.removed,
        }
    }

    pub(super) fn changes_anything(&self) -> bool {
        !(self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }

    /// Whether any tool row is written: a change, or digests filled in.
    fn writes_tools(&self) -> bool {
        self.changes_anything() || !self.digested.is_empty()
    }

    /// `stored` as it is once this difference is written.
    /// The names of what changes, as an event reports them.
    fn changes(&self) -> ToolChanges {
        let names = |rows: &[ToolRow]| rows.iter().map(|t| t.name.clone()).collect();
        ToolChanges {
            added: names(&self.added),
            updated: names(&self.updated),
            removed: self.removed.iter().map(|(_, name)| name.clone()).collect(),
        }
    }

    fn apply_to(&self, stored: &mut StoredTools) {
        for (_, name) in &self.removed {
            stored.remove(name);
        }
        for row in self.added.iter().chain(&self.updated).chain(&self.digested) {
            stored.insert(
                row.name.clone(),
                row.id.clone(),
                digest_of_column(&row.content_hash),
            );
        }
    }
}

/// What [`Store::update_server`] changes; `None` leaves a field as it is.
#[derive(Default)]
pub struct ServerUpdate {
    pub name: Option<String>,
    pub tool_prefix: Option<String>,
    /// A new transport, with the tools listed over it (synced in the same
    /// transaction).
    pub transport: Option<(Transport, Vec<NewTool>)>,
    /// What the server said about itself over the new transport.
    pub identity: Option<ServerIdentity>,
}

impl Store {
    /// Applies `update` to the server in one transaction: a name the
    /// organization uses already is [`StoreError::ServerNameTaken`] and
    /// changes nothing; a new prefix renames every tool's qualified name; a
    /// new transport replaces the sealed one (old secrets gone) and its tools
    /// are synced. Answers the server as stored, and the sync when there was
    /// one.
    pub async fn update_server(
        &self,
        org: &str,
        server_id: &str,
        update: ServerUpdate,
    ) -> Result<(Server, Option<SyncedTools>), StoreError> {
        let now = to_ms(std::time::SystemTime::now());
        let sealed = match &update.transport {
            Some((transport, _)) => Some((
                self.seal_transport(server_id, transport)?,
                serde_json::to_string(&transport.secret_names()).unwrap_or_else(|_| "[]".into()),
                transport_kind_column(transport.kind()),
                transport.endpoint(),
            )),
            None => None,
        };
        let identity = super::queries::identity_column(update.identity.as_ref());
        let identity = &identity;
        let prepared = update
            .transport
            .as_ref()
            .map(|(_, tools)| self.prepare_sync(server_id, tools));
        let update = &update;
        let sealed = &sealed;
        let retention = &self.inner.settings.event_retention;
        let digests = &self.inner.digests;
        let (row, synced) = with_conn!(self, Access::Write, "update_server", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let target = one_server(org, server_id);
                let found = diesel::select(diesel::dsl::exists(target))
                    .get_result::<bool>(conn)
                    .await?;
                if !found {
                    return Err(StoreError::ServerNotFound(server_id.to_owned()));
                }
                if let Some(name) = &update.name {
                    diesel::update(target)
                        .set(mcp_servers::name.eq(name))
                        .execute(conn)
                        .await
                        .map_err(|err| {
                            if super::error::is_unique_violation(&err) {
                                StoreError::ServerNameTaken(name.clone())
                            } else {
                                StoreError::from(err)
                            }
                        })?;
                }
                if let Some(prefix) = &update.tool_prefix {
                    diesel::update(target)
                        .set(mcp_servers::tool_prefix.eq(prefix))
                        .execute(conn)
                        .await?;
                    let own = server_tools::table
                        .filter(server_tools::server_id.eq(server_id))
                        .select(server_tools::tool_id);
                    diesel::update(tools::table.filter(tools::id.eq_any(own)))
                        .set(
                            tools::qualified_name.eq(prefix
                                .clone()
                                .into_sql::<diesel::sql_types::Text>()
                                .concat(tools::name)),
                        )
                        .execute(conn)
                        .await?;
                }
                let mut synced = None;
                if let (Some((config, names, kind, endpoint)), Some(prepared)) = (sealed, prepared)
                {
                    diesel::update(target)
                        .set((
                            mcp_servers::transport_config.eq(config),
                            mcp_servers::secret_names.eq(names),
                            mcp_servers::transport.eq(*kind),
                            mcp_servers::endpoint.eq(endpoint),
                        ))
                        .execute(conn)
                        .await?;
                    // The update's own event (below) announces the sync.
                    let (tools, _, stored) = sync_in_transaction!(
                        &mut *conn,
                        org,
                        server_id,
                        prepared,
                        identity.clone(),
                        now,
                        retention,
                        |_: &ToolChanges, _: bool| None
                    );
                    synced = Some((tools, stored));
                }
                let row: ServerRow = target.select(ServerRow::as_select()).first(conn).await?;
                let changes = synced
                    .as_ref()
                    .map(|(tools, _)| tools.changes())
                    .unwrap_or_default();
                let event = EventDraft::new(ServerEventKind::Updated, &row, changes);
                conn.append_event(retention, org, &event).await?;
                Ok((row, synced))
            })
            .await
        })?;
        let synced = synced.map(|(tools, stored)| {
            stored.keep(digests, server_id);
            tools
        });
        self.events_committed(org);
        Ok((self.server_of(row)?, synced))
    }
}

#[cfg(test)]
mod tests {
    use super::{Listed, Plan, StoredTools};
    use crate::model::NewTool;

    fn tool(name: &str, description: &str) -> NewTool {
        NewTool {
            name: name.into(),
            title: String::new(),
            description: description.into(),
            input_schema_json: r#"{"type":"object"}"#.into(),
            annotations: None,
            output_schema_json: None,
        }
    }

    /// Stored as `listing` would be, each tool's id being `id-` and its name.
    fn stored(listing: &Listed) -> StoredTools {
        listing
            .tools
            .iter()
            .zip(&listing.digests)
            .map(|(t, d)| (t.name.clone(), format!("id-{}", t.name), Some(*d)))
            .collect()
    }

    #[test]
    fn a_plan_finds_what_was_added_changed_and_removed() {
        let before = [tool("a", "1"), tool("b", "1"), tool("c", "1")];
        let before = Listed::new(&before);
        let mut stored = stored(&before);
        // A row from before digests: compared in full in the transaction.
        stored.insert("d".into(), "id-d".into(), None);
        let now = [
            tool("a", "1"),
            tool("b", "2"),
            tool("d", "1"),
            tool("e", "1"),
        ];
        let plan = Plan::of(&stored, &Listed::new(&now));
        assert_eq!(plan.added, vec![3], "e");
        assert_eq!(
            plan.changed,
            vec![(1, "id-b".to_owned(), false), (2, "id-d".to_owned(), true)]
        );
        assert_eq!(plan.removed, vec![("id-c".to_owned(), "c".to_owned())]);
        assert_eq!(plan.undigested().collect::<Vec<_>>(), vec!["id-d"]);
    }

    #[test]
    fn a_listing_equal_to_what_is_stored_plans_nothing() {
        let tools: Vec<NewTool> = (0..100).map(|i| tool(&format!("t{i}"), "x")).collect();
        let listing = Listed::new(&tools);
        let plan = Plan::of(&stored(&listing), &listing);
        assert!(plan.added.is_empty() && plan.changed.is_empty() && plan.removed.is_empty());
    }

    /// A digest covers the name: the same content under a new name is not
    /// taken for the stored tool.
    #[test]
    fn a_renamed_tool_is_added_and_the_old_name_removed() {
        let stored = stored(&Listed::new(&[tool("old", "same")]));
        let plan = Plan::of(&stored, &Listed::new(&[tool("new", "same")]));
        assert_eq!(plan.added, vec![0]);
        assert!(plan.changed.is_empty());
        assert_eq!(plan.removed, vec![("id-old".to_owned(), "old".to_owned())]);
    }
}

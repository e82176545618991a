//! The registry's queries. Each public method takes exactly one connection
//! and holds it only for its own statements.

use diesel::{dsl::exists, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    Access, Backend, Sealer, Store, StoreError,
    batch::WriteTools,
    error::is_unique_violation,
    events::{AppendEvent, EventDraft},
    models::{ServerRow, ToolRow, server_state, state_column, to_ms, transport_kind_column},
    reuse::Reuse,
    schema::{mcp_servers, oauth_authorizations, server_tools, tools},
    with_conn,
};
use crate::model::{
    CallTarget, NewServer, NewTool, Server, ServerEventKind, ServerFilter, ServerIdentity,
    ServerState, Tool, ToolChanges, Transport,
};

/// SQL LIKE pattern of a sealed value, whatever its format version.
fn sealed_pattern() -> String {
    format!("{}%", super::sealer::FAMILY_PREFIX)
}

/// Inserts a server row; a name the organization already uses is
/// [`StoreError::ServerNameTaken`]. A macro: its body is instantiated for
/// each backend's connection, like the bodies of `with_conn!`.
macro_rules! insert_server {
    ($conn:expr, $row:expr) => {
        diesel::insert_into(mcp_servers::table)
            .values($row)
            .reused()
            .execute($conn)
            .await
            .map_err(|err| {
                if is_unique_violation(&err) {
                    StoreError::ServerNameTaken($row.name.clone())
                } else {
                    StoreError::from(err)
                }
            })?;
    };
}

/// The server `id` of organization `org`, and only of it: every read or
/// write of one server starts here, so none can leave the organization out.
#[diesel::dsl::auto_type]
pub(super) fn one_server<'a>(org: &'a str, id: &'a str) -> _ {
    mcp_servers::table
        .filter(mcp_servers::organization_id.eq(org))
        .filter(mcp_servers::id.eq(id))
}

/// What [`Store::create_server`] wrote.
#[derive(Debug, Clone)]
pub struct CreatedServer {
    pub server: Server,
    pub tools: Vec<Tool>,
}

/// What [`Store::delete_server`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedServer {
    pub removed_tools: u32,
    pub removed_mappings: u32,
}

impl Store {
    pub async fn server_name_taken(&self, org: &str, name: &str) -> Result<bool, StoreError> {
        with_conn!(self, Access::Read, "server_name_taken", |conn| {
            let taken = diesel::select(exists(
                mcp_servers::table
                    .filter(mcp_servers::organization_id.eq(org))
                    .filter(mcp_servers::name.eq(name)),
            ))
            .get_result::<bool>(conn)
            .await?;
            Ok(taken)
        })
    }

    /// Which of these servers of `org` are registered (the others were
    /// closed, possibly by another replica).
    pub async fn registered_servers(
        &self,
        org: &str,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let found: Vec<String> = with_conn!(self, Access::Read, "registered_servers", |conn| {
            Ok(mcp_servers::table
                .filter(mcp_servers::organization_id.eq(org))
                .filter(mcp_servers::id.eq_any(ids))
                .select(mcp_servers::id)
                .load(conn)
                .await?)
        })?;
        Ok(found.into_iter().collect())
    }

    /// Writes the server, then its tools and their mappings, in one
    /// transaction on one connection, in multi-row batches.
    pub async fn create_server(
        &self,
        server: NewServer,
        new_tools: Vec<NewTool>,
    ) -> Result<CreatedServer, StoreError> {
        let row = self.server_row(server, ServerState::Ready, None)?;
        self.persist(ServerWrite::Insert(Box::new(row)), new_tools)
            .await
    }

    /// Stores a server that waits for a person to authorize mcpd, with no
    /// tools yet, and the authorization the callback will take back, in one
    /// transaction.
    pub async fn create_pending_server(
        &self,
        server: NewServer,
        authorization_url: &str,
        state: &str,
        flow: &[u8],
        ttl: std::time::Duration,
    ) -> Result<Server, StoreError> {
        let sealed_url = self
            .sealer()?
            .seal(authorization_url.as_bytes(), server.id.as_bytes());
        let row = self.server_row(server, ServerState::AuthorizationPending, Some(sealed_url))?;
        let authorization =
            self.authorization_row(&row.organization_id, &row.id, state, flow, ttl)?;
        let row = &row;
        let authorization = &authorization;
        let retention = &self.inner.settings.event_retention;
        let event = EventDraft::new(ServerEventKind::Created, row, ToolChanges::default());
        with_conn!(self, Access::Write, "create_pending_server", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                insert_server!(conn, row);
                diesel::insert_into(oauth_authorizations::table)
                    .values(authorization)
                    .execute(conn)
                    .await?;
                conn.append_event(retention, &row.organization_id, &event)
                    .await
            })
            .await
        })?;
        self.events_committed(&row.organization_id);
        Ok(row.clone().into_server(Some(authorization_url.to_owned())))
    }

    /// Finishes a pending server: the transport (now holding its grant)
    /// replaces the stored one, its tools and mappings are written, and it
    /// becomes ready, in one transaction. A server no longer pending (closed,
    /// or finished by another callback) is not found.
    pub async fn complete_authorization(
        &self,
        org: &str,
        server_id: &str,
        tool_prefix: &str,
        transport: &Transport,
        identity: Option<&ServerIdentity>,
        new_tools: Vec<NewTool>,
    ) -> Result<CreatedServer, StoreError> {
        let write = ServerWrite::Authorized {
            id: server_id.to_owned(),
            organization_id: org.to_owned(),
            tool_prefix: tool_prefix.to_owned(),
            server_info: identity_column(identity),
            transport_config: self.seal_transport(server_id, transport)?,
            secret_names: secret_names_column(transport),
        };
        self.persist(write, new_tools).await
    }

    /// Puts a stored server back to waiting for authorization (it needs
    /// more scope) with a new URL and the authorization its callback will
    /// take back, in one transaction.
    pub async fn reopen_authorization(
        &self,
        org: &str,
        server_id: &str,
        authorization_url: &str,
        state: &str,
        flow: &[u8],
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let sealed_url = self
            .sealer()?
            .seal(authorization_url.as_bytes(), server_id.as_bytes());
        let authorization = self.authorization_row(org, server_id, state, flow, ttl)?;
        let authorization = &authorization;
        let sealed_url = &sealed_url;
        let retention = &self.inner.settings.event_retention;
        with_conn!(self, Access::Write, "reopen_authorization", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let row: ServerRow = diesel::update(one_server(org, server_id))
                    .set((
                        mcp_servers::state.eq(state_column(ServerState::AuthorizationPending)),
                        mcp_servers::state_reason.eq(""),
                        mcp_servers::authorization_url.eq(sealed_url),
                    ))
                    .returning(ServerRow::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
                    .ok_or_else(|| StoreError::ServerNotFound(server_id.to_owned()))?;
                // One authorization in flight per server: the newest.
                diesel::delete(
                    oauth_authorizations::table
                        .filter(oauth_authorizations::server_id.eq(server_id)),
                )
                .execute(conn)
                .await?;
                diesel::insert_into(oauth_authorizations::table)
                    .values(authorization)
                    .execute(conn)
                    .await?;
                let event =
                    EventDraft::new(ServerEventKind::StatusChanged, &row, ToolChanges::default());
                conn.append_event(retention, org, &event).await
            })
            .await
        })?;
        self.events_committed(org);
        Ok(())
    }

    /// A server whose tools are stored is authorized again: its transport
    /// (with the new grant) replaces the stored one and it is ready.
    pub async fn reauthorized(
        &self,
        org: &str,
        server_id: &str,
        transport: &Transport,
    ) -> Result<Server, StoreError> {
        let sealed = self.seal_transport(server_id, transport)?;
        let names = secret_names_column(transport);
        let retention = &self.inner.settings.event_retention;
        let row: ServerRow = with_conn!(self, Access::Write, "reauthorized", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let row: ServerRow = diesel::update(one_server(org, server_id).filter(
                    mcp_servers::state.eq(state_column(ServerState::AuthorizationPending)),
                ))
                .set((
                    mcp_servers::transport_config.eq(&sealed),
                    mcp_servers::secret_names.eq(&names),
                    mcp_servers::state.eq(state_column(ServerState::Ready)),
                    mcp_servers::state_reason.eq(""),
                    mcp_servers::authorization_url.eq(None::<String>),
                ))
                .returning(ServerRow::as_returning())
                .get_result(conn)
                .await
                .optional()?
                .ok_or_else(|| StoreError::ServerNotFound(server_id.to_owned()))?;
                let event =
                    EventDraft::new(ServerEventKind::StatusChanged, &row, ToolChanges::default());
                conn.append_event(retention, org, &event).await?;
                Ok(row)
            })
            .await
        })?;
        self.events_committed(org);
        Ok(row.into_server(None))
    }

    /// Replaces a server's transport (renewed OAuth tokens), sealed.
    pub async fn update_transport(
        &self,
        org: &str,
        server_id: &str,
        transport: &Transport,
    ) -> Result<(), StoreError> {
        let sealed = self.seal_transport(server_id, transport)?;
        let names = secret_names_column(transport);
        let updated = with_conn!(self, Access::Write, "update_transport", |conn| {
            Ok(diesel::update(one_server(org, server_id))
                .set((
                    mcp_servers::transport_config.eq(&sealed),
                    mcp_servers::secret_names.eq(&names),
                ))
                .execute(conn)
                .await?)
        })?;
        if updated == 0 {
            return Err(StoreError::ServerNotFound(server_id.to_owned()));
        }
        Ok(())
    }

    /// Puts the server in [`ServerState::Error`] with `reason`; any
    /// authorization still in flight for it is dropped.
    pub async fn fail_server(
        &self,
        org: &str,
        server_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let retention = &self.inner.settings.event_retention;
        let failed = with_conn!(self, Access::Write, "fail_server", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let row: Option<ServerRow> = diesel::update(one_server(org, server_id))
                    .set((
                        mcp_servers::state.eq(state_column(ServerState::Error)),
                        mcp_servers::state_reason.eq(reason),
                        mcp_servers::authorization_url.eq(None::<String>),
                    ))
                    .returning(ServerRow::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?;
                diesel::delete(
                    oauth_authorizations::table
                        .filter(oauth_authorizations::server_id.eq(server_id)),
                )
                .execute(conn)
                .await?;
                if let Some(row) = &row {
                    let event = EventDraft::new(
                        ServerEventKind::StatusChanged,
                        row,
                        ToolChanges::default(),
                    );
                    conn.append_event(retention, org, &event).await?;
                }
                Ok(row.is_some())
            })
            .await
        })?;
        if failed {
            self.events_committed(org);
        }
        Ok(())
    }

    /// A server's transport (unsealed) and state.
    pub async fn server_transport(
        &self,
        org: &str,
        server_id: &str,
    ) -> Result<(Transport, ServerState), StoreError> {
        let found: Option<(String, String)> =
            with_conn!(self, Access::Read, "server_transport", |conn| {
                Ok(one_server(org, server_id)
                    .select((mcp_servers::transport_config, mcp_servers::state))
                    .first(conn)
                    .await
                    .optional()?)
            })?;
        let (sealed, state) =
            found.ok_or_else(|| StoreError::ServerNotFound(server_id.to_owned()))?;
        Ok((
            self.unseal_transport(server_id, &sealed)?,
            server_state(&state),
        ))
    }

    fn server_row(
        &self,
        server: NewServer,
        state: ServerState,
        authorization_url: Option<String>,
    ) -> Result<ServerRow, StoreError> {
        let now = to_ms(std::time::SystemTime::now());
        // A ready server was just reached and listed; a pending one not yet.
        let listed_at = (state == ServerState::Ready).then_some(now);
        Ok(ServerRow {
            transport: transport_kind_column(server.transport.kind()).to_owned(),
            endpoint: server.transport.endpoint(),
            secret_names: secret_names_column(&server.transport),
            transport_config: self.seal_transport(&server.id, &server.transport)?,
            tool_count: 0,
            created_at: now,
            last_error: String::new(),
            unreachable_since: None,
            last_connected_at: listed_at,
            last_synced_at: listed_at,
            id: server.id,
            organization_id: server.organization_id,
            name: server.name,
            state: state_column(state).to_owned(),
            state_reason: String::new(),
            authorization_url,
            tool_prefix: server.tool_prefix,
            server_info: identity_column(server.identity.as_ref()),
        })
    }

    pub(super) fn seal_transport(
        &self,
        server_id: &str,
        transport: &Transport,
    ) -> Result<String, StoreError> {
        let config = serde_json::to_string(transport)
            .map_err(|e| StoreError::Sealing(format!("encoding the transport: {e}")))?;
        // Bound to the row: a sealed config copied to another server does
        // not open.
        Ok(self.sealer()?.seal(config.as_bytes(), server_id.as_bytes()))
    }

    /// The server row, then its tools and mappings, in one transaction.
    async fn persist(
        &self,
        mut write: ServerWrite,
        new_tools: Vec<NewTool>,
    ) -> Result<CreatedServer, StoreError> {
        let tool_count = i32::try_from(new_tools.len()).unwrap_or(i32::MAX);
        // A new row carries its count from the start: one statement fewer.
        if let ServerWrite::Insert(row) = &mut write {
            row.tool_count = tool_count;
        }
        let (server_id, org, prefix) = match &write {
            ServerWrite::Insert(row) => (&row.id, &row.organization_id, &row.tool_prefix),
            ServerWrite::Authorized {
                id,
                organization_id,
                tool_prefix,
                ..
            } => (id, organization_id, tool_prefix),
        };
        let now = to_ms(std::time::SystemTime::now());
        let mut new_tools: Vec<ToolRow> = new_tools
            .into_iter()
            .map(|tool| ToolRow::new(org, prefix, tool, now))
            .collect();
        new_tools.sort_by(|a, b| a.name.cmp(&b.name));
        let rows = &new_tools;
        let write = &write;
        let retention = &self.inner.settings.event_retention;
        let postgres = matches!(self.inner.backend, Backend::Postgres(_));
        let row = with_conn!(self, Access::Write, "persist", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                match write {
                    ServerWrite::Insert(row) => {
                        insert_server!(conn, &**row);
                    }
                    ServerWrite::Authorized {
                        id,
                        organization_id,
                        transport_config,
                        secret_names,
                        server_info,
                        ..
                    } => {
                        if postgres {
                            diesel::sql_query(super::sync::TOOLS_LOCK)
                                .bind::<diesel::sql_types::Text, _>(id)
                                .reused()
                                .execute(conn)
                                .await?;
                        }
                        let updated = diesel::update(one_server(organization_id, id).filter(
                            mcp_servers::state.eq(state_column(ServerState::AuthorizationPending)),
                        ))
                        .set((
                            mcp_servers::transport_config.eq(transport_config),
                            mcp_servers::secret_names.eq(secret_names),
                            mcp_servers::server_info.eq(server_info),
                            mcp_servers::state.eq(state_column(ServerState::Ready)),
                            mcp_servers::state_reason.eq(""),
                            mcp_servers::authorization_url.eq(None::<String>),
                            mcp_servers::last_connected_at.eq(now),
                            mcp_servers::last_synced_at.eq(now),
                            // Its tools are written next (see migration 000012).
                            mcp_servers::tools_version.eq(mcp_servers::tools_version + 1),
                        ))
                        .execute(conn)
                        .await?;
                        if updated == 0 {
                            return Err(StoreError::ServerNotFound(id.clone()));
                        }
                    }
                }

                conn.insert_tools(server_id, rows).await?;

                let row = match write {
                    ServerWrite::Insert(row) => (**row).clone(),
                    ServerWrite::Authorized { .. } => {
                        diesel::update(mcp_servers::table.find(server_id))
                            .set(mcp_servers::tool_count.eq(tool_count))
                            .returning(ServerRow::as_returning())
                            .get_result(conn)
                            .await?
                    }
                };
                let kind = match write {
                    ServerWrite::Insert(_) => ServerEventKind::Created,
                    ServerWrite::Authorized { .. } => ServerEventKind::StatusChanged,
                };
                let added = ToolChanges {
                    added: rows.iter().map(|t| t.name.clone()).collect(),
                    ..ToolChanges::default()
                };
                let event = EventDraft::new(kind, &row, added);
                conn.append_event(retention, org, &event).await?;
                Ok(row)
            })
            .await
        })?;
        self.events_committed(org);
        Ok(CreatedServer {
            server: row.into_server(None),
            tools: new_tools
                .into_iter()
                .map(|t| t.into_tool(server_id))
                .collect(),
        })
    }

    /// Whether any server's transport config is sealed (then the key that
    /// sealed it is needed).
    pub async fn has_sealed_configs(&self) -> Result<bool, StoreError> {
        with_conn!(self, Access::Read, "has_sealed_configs", |conn| {
            Ok(diesel::select(exists(
                mcp_servers::table.filter(mcp_servers::transport_config.like(sealed_pattern())),
            ))
            .get_result::<bool>(conn)
            .await?)
        })
    }

    /// Opens one stored config with `sealer`: a wrong key fails here, at
    /// start-up, not on some later call.
    pub async fn verify_sealer(&self, sealer: &Sealer) -> Result<(), StoreError> {
        let sample: Option<(String, String)> =
            with_conn!(self, Access::Read, "verify_sealer", |conn| {
                Ok(mcp_servers::table
                    .filter(mcp_servers::transport_config.like(sealed_pattern()))
                    .select((mcp_servers::id, mcp_servers::transport_config))
                    .first(conn)
                    .await
                    .optional()?)
            })?;
        if let Some((id, sealed)) = sample {
            sealer.open(&sealed, id.as_bytes()).map_err(|e| {
                StoreError::Sealing(format!(
                    "the secret key (fingerprint {}) does not open the stored secrets: {e}; start with the key file they were sealed with",
                    sealer.fingerprint()
                ))
            })?;
        }
        Ok(())
    }

    pub async fn get_server(&self, org: &str, id: &str) -> Result<Server, StoreError> {
        let row: ServerRow = with_conn!(self, Access::Read, "get_server", |conn| {
            one_server(org, id)
                .select(ServerRow::as_select())
                .first(conn)
                .await
                .optional()?
                .ok_or_else(|| StoreError::ServerNotFound(id.to_owned()))
        })?;
        self.server_of(row)
    }

    /// The domain view of a row, its authorization URL unsealed.
    pub(super) fn server_of(&self, row: ServerRow) -> Result<Server, StoreError> {
        let url = match &row.authorization_url {
            Some(sealed) => {
                let plain = self
                    .sealer()?
                    .open(sealed, row.id.as_bytes())
                    .map_err(|e| {
                        StoreError::Sealing(format!(
                            "opening the authorization URL of {}: {e}",
                            row.id
                        ))
                    })?;
                Some(String::from_utf8_lossy(&plain).into_owned())
            }
            None => None,
        };
        Ok(row.into_server(url))
    }

    /// What a call of `tool` on the server needs, in one short checkout: the
    /// server's transport, unsealed, and the tool's input schema.
    pub async fn call_target(
        &self,
        org: &str,
        server_id: &str,
        tool: &str,
    ) -> Result<CallTarget, StoreError> {
        type Found = (String, String, Option<i64>, String);
        let found: Option<Found> = with_conn!(self, Access::Read, "call_target", |conn| {
            let found = mcp_servers::table
                .inner_join(server_tools::table.inner_join(tools::table))
                .filter(mcp_servers::organization_id.eq(org))
                .filter(mcp_servers::id.eq(server_id))
                .filter(tools::name.eq(tool))
                .select((
                    mcp_servers::transport_config,
                    mcp_servers::state,
                    mcp_servers::unreachable_since,
                    tools::input_schema,
                ))
                .first(conn)
                .await
                .optional()?;
            if found.is_none() {
                // Which of the two is missing decides the message; a server
                // waiting for authorization has no tools yet.
                let state: Option<(String, String)> = one_server(org, server_id)
                    .select((mcp_servers::state, mcp_servers::state_reason))
                    .first(conn)
                    .await
                    .optional()?;
                match state {
                    None => return Err(StoreError::ServerNotFound(server_id.to_owned())),
                    Some((state, reason)) if server_state(&state) != ServerState::Ready => {
                        return Err(StoreError::ServerNotReady {
                            server_id: server_id.to_owned(),
                            state: server_state(&state),
                            reason,
                        });
                    }
                    Some(_) => {}
                }
            }
            Ok(found)
        })?;
        let (sealed, state, unreachable_since, input_schema_json) =
            found.ok_or_else(|| StoreError::ToolNotFound {
                server_id: server_id.to_owned(),
                tool: tool.to_owned(),
            })?;
        if server_state(&state) != ServerState::Ready {
            // Its reason is read again only on this rare path.
            let reason = self.get_server(org, server_id).await?.state_reason;
            return Err(StoreError::ServerNotReady {
                server_id: server_id.to_owned(),
                state: server_state(&state),
                reason,
            });
        }
        Ok(CallTarget {
            transport: self.unseal_transport(server_id, &sealed)?,
            unreachable: unreachable_since.is_some(),
            input_schema_json,
        })
    }

    pub(super) fn sealer(&self) -> Result<&Sealer, StoreError> {
        self.inner.settings.sealer.as_ref().ok_or_else(|| {
            StoreError::Sealing("no secret key is configured (--secret-key-file)".into())
        })
    }

    fn unseal_transport(&self, server_id: &str, sealed: &str) -> Result<Transport, StoreError> {
        let sealer = self.sealer()?;
        let plain = sealer.open(sealed, server_id.as_bytes()).map_err(|e| {
            StoreError::Sealing(format!("opening the transport of {server_id}: {e}"))
        })?;
        serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Sealing(format!("decoding the transport of {server_id}: {e}")))
    }

    /// Servers of `org` that pass `filter`, in creation order (ids are
    /// UUIDv7), after `after_id`.
    pub async fn list_servers(
        &self,
        org: &str,
        filter: &ServerFilter,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Server>, StoreError> {
        let prefix_chars = i32::try_from(filter.name_prefix.chars().count()).unwrap_or(i32::MAX);
        let rows: Vec<ServerRow> = with_conn!(self, Access::Read, "list_servers", |conn| {
            let mut query = mcp_servers::table
                .filter(mcp_servers::organization_id.eq(org))
                .select(ServerRow::as_select())
                .order(mcp_servers::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = after_id {
                query = query.filter(mcp_servers::id.gt(after));
            }
            if let Some(state) = filter.state {
                query = query.filter(mcp_servers::state.eq(state_column(state)));
                query = match state {
                    ServerState::Ready => query.filter(mcp_servers::unreachable_since.is_null()),
                    ServerState::Unreachable => {
                        query.filter(mcp_servers::unreachable_since.is_not_null())
                    }
                    _ => query,
                };
            }
            if !filter.name_prefix.is_empty() {
                // Not LIKE: SQLite's is case-insensitive and both treat `_`
                // as a wildcard; names are ASCII, so characters are bytes.
                query = query.filter(
                    diesel::dsl::sql::<diesel::sql_types::Bool>("substr(name, 1, ")
                        .bind::<diesel::sql_types::Integer, _>(prefix_chars)
                        .sql(") = ")
                        .bind::<diesel::sql_types::Text, _>(&filter.name_prefix),
                );
            }
            Ok(query.load(conn).await?)
        })?;
        rows.into_iter().map(|row| self.server_of(row)).collect()
    }

    /// Tools of one server by name, after `after_name`.
    pub async fn list_server_tools(
        &self,
        org: &str,
        server_id: &str,
        after_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Tool>, StoreError> {
        let rows: Vec<ToolRow> = with_conn!(self, Access::Read, "list_server_tools", |conn| {
            let found = diesel::select(exists(one_server(org, server_id)))
                .get_result::<bool>(conn)
                .await?;
            if !found {
                return Err(StoreError::ServerNotFound(server_id.to_owned()));
            }
            let mut query = server_tools::table
                .inner_join(tools::table)
                .filter(server_tools::server_id.eq(server_id))
                .select(ToolRow::as_select())
                .order(tools::name.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = after_name {
                query = query.filter(tools::name.gt(after));
            }
            Ok(query.load(conn).await?)
        })?;
        Ok(rows.into_iter().map(|t| t.into_tool(server_id)).collect())
    }

    /// Removes the server, its mappings and the tools no other server
    /// provides, in one transaction.
    pub async fn delete_server(&self, org: &str, id: &str) -> Result<DeletedServer, StoreError> {
        let retention = &self.inner.settings.event_retention;
        let deleted = with_conn!(self, Access::Write, "delete_server", |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let server: ServerRow = one_server(org, id)
                    .select(ServerRow::as_select())
                    .first(conn)
                    .await
                    .optional()?
                    .ok_or_else(|| StoreError::ServerNotFound(id.to_owned()))?;
                let own = server_tools::table
                    .filter(server_tools::server_id.eq(id))
                    .select(server_tools::tool_id);
                let removed_mappings: i64 = server_tools::table
                    .filter(server_tools::server_id.eq(id))
                    .count()
                    .get_result(conn)
                    .await?;
                // A tool is its server's alone (migration 000006), so its
                // tools go with it, found through its mappings (which go with
                // them, ON DELETE CASCADE). One statement driven by the
                // server's id: a list of tool ids bound as an array made
                // PostgreSQL's cached plan scan every tool once per id when
                // its statistics were stale (seconds for 5,000 tools).
                let removed_tools = diesel::delete(tools::table.filter(tools::id.eq_any(own)))
                    .execute(conn)
                    .await?;
                diesel::delete(mcp_servers::table.find(id))
                    .execute(conn)
                    .await?;
                let event =
                    EventDraft::new(ServerEventKind::Closed, &server, ToolChanges::default());
                conn.append_event(retention, org, &event).await?;
                Ok(DeletedServer {
                    removed_tools: u32::try_from(removed_tools).unwrap_or(u32::MAX),
                    removed_mappings: u32::try_from(removed_mappings).unwrap_or(u32::MAX),
                })
            })
            .await
        })?;
        self.inner.digests.forget(id);
        self.events_committed(org);
        Ok(deleted)
    }
}

/// How [`Store::persist`] writes the server row.
enum ServerWrite {
    /// A new server.
    Insert(Box<ServerRow>),
    /// A server whose authorization just completed: its row exists, pending.
    Authorized {
        id: String,
        organization_id: String,
        tool_prefix: String,
        server_info: Option<String>,
        transport_config: String,
        secret_names: String,
    },
}

pub(super) fn identity_column(identity: Option<&ServerIdentity>) -> Option<String> {
    identity.and_then(|i| serde_json::to_string(i).ok())
}

fn secret_names_column(transport: &Transport) -> String {
    serde_json::to_string(&transport.secret_names()).unwrap_or_else(|_| "[]".into())
}

/// One entry of an organization's tool catalogue.
#[derive(QueryableByName)]
struct CatalogueRow {
    #[diesel(embed)]
    tool: ToolRow,
    #[diesel(sql_type = diesel::sql_types::Text)]
    server_id: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    shared: bool,
}

impl Store {
    /// Every tool of the organization by qualified name (then id), after
    /// `after` (a qualified name and id), each with whether another tool of
    /// the organization has the same qualified name.
    pub async fn list_catalogue(
        &self,
        org: &str,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<(Tool, bool)>, StoreError> {
        let (after_name, after_id) = after.unwrap_or(("", ""));
        let rows: Vec<CatalogueRow> = with_conn!(self, Access::Read, "list_catalogue", |conn| {
            Ok(diesel::sql_query(
                "SELECT t.id, t.organization_id, t.name, t.qualified_name, t.description, \
                 t.input_schema, t.created_at, t.title, t.annotations, t.output_schema, \
                 t.content_hash, st.server_id, \
                 EXISTS (SELECT 1 FROM tools o WHERE o.organization_id = t.organization_id \
                   AND o.qualified_name = t.qualified_name AND o.id <> t.id) AS shared \
                 FROM tools t JOIN server_tools st ON st.tool_id = t.id \
                 WHERE t.organization_id = $1 \
                   AND (t.qualified_name > $2 OR (t.qualified_name = $2 AND t.id > $3)) \
                 ORDER BY t.qualified_name, t.id LIMIT $4",
            )
            .bind::<diesel::sql_types::Text, _>(org)
            .bind::<diesel::sql_types::Text, _>(after_name)
            .bind::<diesel::sql_types::Text, _>(after_id)
            .bind::<diesel::sql_types::BigInt, _>(limit)
            .load(conn)
            .await?)
        })?;
        Ok(rows
            .into_iter()
            .map(|row| (row.tool.into_tool(&row.server_id), row.shared))
            .collect())
    }
}

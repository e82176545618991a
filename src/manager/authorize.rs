//! The authorize use cases (OAuth authorization code flow): a server that
//! answers 401 is stored waiting for a person, the browser's return to the
//! callback finishes its registration, and later calls renew its tokens.
//! Like every use case: one pooled connection at a time, none held across
//! a request to the MCP server or the authorization server.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::{CallStats, Created, FailedTool, Manager, ManagerError};
use crate::{
    mcp::{McpError, TokenError},
    model::{AuthorizationFlow, NewServer, OAuthGrant, Server, ServerState, Transport},
};

/// A grant this close to its expiry is renewed before a call uses it.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

/// What the authorization server sent the browser back with (the query of
/// `GET /oauth/callback`).
#[derive(Clone, Default)]
pub struct Callback {
    pub state: String,
    pub code: Option<String>,
    /// RFC 9207: who sent the browser back.
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// How a callback ended for the server it named.
#[derive(Debug, Clone)]
pub enum Authorized {
    /// The server is registered: tools listed and stored, state READY.
    Ready {
        server: Server,
        failed_tools: Vec<FailedTool>,
    },
    /// The authorization failed; the server is in state ERROR for this reason.
    Failed { server_name: String, reason: String },
}

/// Per-server locks that keep one process from renewing a grant twice at
/// once (a rotated refresh token works only once).
#[derive(Default)]
pub(super) struct Renewals(Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>);

impl Manager {
    /// The server answered 401 with `challenge` during its registration:
    /// make the authorization URL (network only), then store the server
    /// waiting for authorization with the flow its callback needs (one
    /// transaction).
    pub(super) async fn await_authorization(
        &self,
        org: &str,
        server_id: &str,
        name: String,
        mut spec: Transport,
        challenge: &str,
    ) -> Result<Created, ManagerError> {
        let start = self.mcp.begin_authorization(&spec, challenge, &[]).await?;
        if let Transport::StreamableHttp { oauth, .. } = &mut spec {
            oauth.get_or_insert_default();
        }
        let flow = encode_flow(&start.flow)?;
        let server = self
            .store
            .create_pending_server(
                NewServer {
                    id: server_id.to_owned(),
                    organization_id: org.to_owned(),
                    name,
                    transport: spec,
                },
                &start.url,
                &start.state,
                &flow,
                self.limits.authorization_ttl,
            )
            .await?;
        tracing::info!(server = %server_id, "MCP server waits for authorization");
        Ok(Created {
            server,
            tools: Vec::new(),
            failed_tools: Vec::new(),
        })
    }

    /// A browser came back to the callback. Unknown, reused or expired
    /// state is NOT_FOUND and changes nothing. Otherwise the flow is taken
    /// (once, whichever replica gets it), and the server ends READY or in
    /// ERROR with the reason.
    pub async fn complete_authorization(
        &self,
        callback: Callback,
    ) -> Result<Authorized, ManagerError> {
        if callback.state.is_empty() || callback.state.len() > 512 {
            return Err(ManagerError::InvalidArgument(
                "the callback carries no usable state parameter".into(),
            ));
        }
        let Some(pending) = self.store.take_authorization(&callback.state).await? else {
            return Err(ManagerError::NotFound(
                "this authorization is unknown, was completed already, or expired; start over by creating the server again".into(),
            ));
        };
        let (org, server_id) = (&pending.organization_id, &pending.server_id);
        let flow: AuthorizationFlow = serde_json::from_slice(&pending.payload).map_err(|e| {
            ManagerError::Internal(format!("an authorization in flight is unreadable: {e}"))
        })?;
        let server = self.store.get_server(org, server_id).await?;
        let fail = async |reason: String| -> Result<Authorized, ManagerError> {
            tracing::info!(server = %server_id, %reason, "MCP server authorization failed");
            self.store.fail_server(org, server_id, &reason).await?;
            Ok(Authorized::Failed {
                server_name: server.name.clone(),
                reason,
            })
        };
        if let Some(error) = &callback.error {
            let detail = callback
                .error_description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return fail(format!(
                "the authorization server refused the authorization ({error}{detail})"
            ))
            .await;
        }
        // RFC 9207: an `iss` is compared whenever present, and required
        // where the authorization server promised one; a mismatch means the
        // response may come from another server (mix-up attack).
        match (&callback.iss, &flow.endpoint.issuer) {
            (Some(iss), expected) if Some(iss) != expected.as_ref() => {
                return fail(format!(
                    "the authorization response names issuer {iss:?}, not {:?}: it was not used",
                    expected.as_deref().unwrap_or("(none advertised)")
                ))
                .await;
            }
            (None, _) if flow.require_issuer => {
                return fail(
                    "the authorization response carries no iss although the authorization server promises one: it was not used".into(),
                )
                .await;
            }
            _ => {}
        }
        let Some(code) = callback.code.as_deref().filter(|c| !c.is_empty()) else {
            return fail("the authorization response carries no code".into()).await;
        };
        let grant = match self.mcp.exchange_code(&flow, code).await {
            Ok(grant) => grant,
            Err(err) => return fail(err.to_string()).await,
        };
        let (mut transport, state) = self.store.server_transport(org, server_id).await?;
        if state != ServerState::AuthorizationPending {
            return Err(ManagerError::FailedPrecondition(format!(
                "MCP server {server_id:?} no longer waits for authorization"
            )));
        }
        set_grant(&mut transport, grant);
        let mut stats = CallStats::default();
        let listed = match self.connect_and_list(org, server_id, &transport, &mut stats).await {
            Ok(listed) => listed,
            Err(err) => return fail(ManagerError::from(err).to_string()).await,
        };
        let persisted = self
            .store
            .complete_authorization(org, server_id, &transport, listed.tools)
            .await;
        listed.teardown.await;
        let created = persisted?;
        let mut failed_tools = listed.failed;
        failed_tools.extend(super::conflicts(created.name_conflicts));
        tracing::info!(server = %server_id, tools = created.tools.len(), "MCP server authorized");
        Ok(Authorized::Ready {
            server: created.server,
            failed_tools,
        })
    }

    /// The transport to call with: its grant renewed first when it is about
    /// to expire.
    pub(super) async fn fresh_transport(
        &self,
        org: &str,
        server_id: &str,
        transport: Transport,
    ) -> Result<Transport, ManagerError> {
        match grant_of(&transport) {
            Some(grant) if expiring(grant) => {
                let stale = grant.access_token.clone();
                self.renew_grant(org, server_id, &stale).await
            }
            _ => Ok(transport),
        }
    }

    /// Renews the server's grant unless another call (or replica) already
    /// replaced the access token `stale`. A refresh the authorization server
    /// refuses for good puts the server in ERROR.
    pub(super) async fn renew_grant(
        &self,
        org: &str,
        server_id: &str,
        stale: &str,
    ) -> Result<Transport, ManagerError> {
        let lock = self.renewals.lock_for(org, server_id);
        let _renewing = lock.lock().await;
        let (mut transport, _) = self.store.server_transport(org, server_id).await?;
        let Some(grant) = grant_of(&transport).cloned() else {
            return Ok(transport);
        };
        if grant.access_token != stale {
            return Ok(transport);
        }
        match self.mcp.refresh_grant(&grant).await {
            Ok(renewed) => {
                set_grant(&mut transport, renewed);
                self.store
                    .update_transport(org, server_id, &transport)
                    .await?;
                tracing::debug!(server = %server_id, "OAuth access token renewed");
                Ok(transport)
            }
            Err(TokenError::Refused { .. }) if self.renewed_elsewhere(org, server_id, &grant).await => {
                Ok(self.store.server_transport(org, server_id).await?.0)
            }
            Err(err @ TokenError::Refused { .. }) => {
                let reason = format!(
                    "mcpd's access to the server ended: its access token could not be renewed ({err}); a person must authorize mcpd again"
                );
                self.store.fail_server(org, server_id, &reason).await?;
                Err(ManagerError::FailedPrecondition(reason))
            }
            Err(err @ TokenError::Failed(_)) => Err(ManagerError::Unavailable(format!(
                "the access token for MCP server {server_id:?} has expired and renewing it failed: {err}"
            ))),
        }
    }

    /// Whether another replica rotated the refresh token in the meantime
    /// (then ours was refused because it was spent, not revoked).
    async fn renewed_elsewhere(&self, org: &str, server_id: &str, used: &OAuthGrant) -> bool {
        match self.store.server_transport(org, server_id).await {
            Ok((transport, _)) => {
                grant_of(&transport).is_some_and(|g| g.refresh_token != used.refresh_token)
            }
            Err(_) => false,
        }
    }
}

/// Whether a failed call may go through with a renewed grant: the server
/// refused the grant's token.
pub(super) fn refused_grant<'t>(transport: &'t Transport, err: &McpError) -> Option<&'t str> {
    match err {
        McpError::Unauthorized { .. } => grant_of(transport).map(|g| g.access_token.as_str()),
        _ => None,
    }
}

fn grant_of(transport: &Transport) -> Option<&OAuthGrant> {
    match transport {
        Transport::StreamableHttp {
            oauth: Some(oauth), ..
        } => oauth.grant.as_ref(),
        _ => None,
    }
}

fn set_grant(transport: &mut Transport, grant: OAuthGrant) {
    if let Transport::StreamableHttp { oauth, .. } = transport {
        oauth.get_or_insert_default().grant = Some(grant);
    }
}

fn expiring(grant: &OAuthGrant) -> bool {
    grant
        .expires_at
        .is_some_and(|at| at <= SystemTime::now() + RENEW_MARGIN)
}

fn encode_flow(flow: &AuthorizationFlow) -> Result<Vec<u8>, ManagerError> {
    serde_json::to_vec(flow)
        .map_err(|e| ManagerError::Internal(format!("encoding an authorization: {e}")))
}

impl Renewals {
    fn lock_for(&self, org: &str, server_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Locks nobody holds or waits for are dropped as others are made.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks
            .entry((org.to_owned(), server_id.to_owned()))
            .or_default()
            .clone()
    }
}

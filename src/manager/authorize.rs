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

use super::{CallStats, Created, FailedTool, Listing, Manager, ManagerError};
use crate::{
    mcp::{McpError, TokenError, insufficient_scope},
    model::{
        AuthorizationFlow, NewServer, OAuthGrant, RegisteredClient, Server, ServerState, Transport,
    },
};

/// A grant this close to its expiry is renewed before a call uses it.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
/// Most authorizations for more scope after the first.
const MAX_STEP_UPS: u32 = 2;

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
        server: Box<Server>,
        failed_tools: Vec<FailedTool>,
    },
    /// The server is not ready, for this reason: in state ERROR, or
    /// waiting for a person to grant more scope.
    Failed { server_name: String, reason: String },
}

/// Per-server locks that keep one process from renewing a grant twice at
/// once (a rotated refresh token works only once).
#[derive(Default)]
pub(super) struct Renewals(Mutex<HashMap<ServerKey, Arc<tokio::sync::Mutex<()>>>>);

/// (organization, server id).
type ServerKey = (String, String);

impl Manager {
    /// The server answered 401 with `challenge` during its registration:
    /// make the authorization URL (network only), then store the server
    /// waiting for authorization with the flow its callback needs (one
    /// transaction).
    pub(super) async fn await_authorization(
        &self,
        mut server: NewServer,
        challenge: &str,
    ) -> Result<Created, ManagerError> {
        let start = self
            .mcp
            .begin_authorization(&server.transport, challenge, &[])
            .await?;
        if let Transport::StreamableHttp { oauth, .. } = &mut server.transport {
            oauth.get_or_insert_default();
        }
        let flow = encode_flow(&start.flow)?;
        let server_id = server.id.clone();
        let server = self
            .store
            .create_pending_server(
                server,
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
        if flow.reauthorize {
            let server = self.store.reauthorized(org, server_id, &transport).await?;
            tracing::info!(server = %server_id, "MCP server authorized again");
            return Ok(Authorized::Ready {
                server: Box::new(server),
                failed_tools: Vec::new(),
            });
        }
        let mut stats = CallStats::default();
        let listed = match self
            .connect_and_list(org, server_id, &transport, &mut stats)
            .await
        {
            Ok(listed) => listed,
            // Authorized, and yet not allowed to list: more scope, once.
            Err(Listing::Refused { challenge, .. }) => {
                return match self
                    .reauthorize(org, server_id, &transport, &challenge, true)
                    .await
                {
                    ManagerError::FailedPrecondition(reason) => Ok(Authorized::Failed {
                        server_name: server.name.clone(),
                        reason,
                    }),
                    other => Err(other),
                };
            }
            Err(err) => return fail(ManagerError::from(err).to_string()).await,
        };
        let persisted = self
            .store
            .complete_authorization(
                org,
                server_id,
                &server.tool_prefix,
                &transport,
                listed.identity.as_ref(),
                listed.tools,
            )
            .await;
        listed.teardown.await;
        let created = persisted?;
        let failed_tools = listed.failed;
        tracing::info!(server = %server_id, tools = created.tools.len(), "MCP server authorized");
        Ok(Authorized::Ready {
            server: Box::new(created.server),
            failed_tools,
        })
    }

    /// Authorizations nobody finished in time are dropped, and their
    /// servers go to ERROR saying so. Run now and then by the daemon.
    pub async fn sweep_authorizations(&self) -> Result<usize, ManagerError> {
        let expired = self.store.sweep_authorizations().await?;
        if expired > 0 {
            tracing::info!(expired, "authorizations expired unfinished");
        }
        Ok(expired)
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
            Err(TokenError::Refused { .. })
                if self.renewed_elsewhere(org, server_id, &grant).await =>
            {
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

    /// The server refused the grant's token in a way only a person can
    /// mend (`challenge` says how): for lack of scope (a step-up, asking for
    /// everything granted so far and the scope challenged, SEP-2350), or
    /// outright with no refresh token to renew it (authorize again from the
    /// server's new challenge). The server waits for authorization again; one
    /// that refuses a scope it was granted, or keeps asking, ends in ERROR
    /// instead of sending people round in circles. `relist`: the server's
    /// tools are not stored yet. Answers what the caller is told.
    pub(super) async fn reauthorize(
        &self,
        org: &str,
        server_id: &str,
        transport: &Transport,
        challenge: &str,
        relist: bool,
    ) -> ManagerError {
        match self
            .try_reauthorize(org, server_id, transport, challenge, relist)
            .await
        {
            Ok(reason) | Err(ManagerError::FailedPrecondition(reason)) => {
                ManagerError::FailedPrecondition(reason)
            }
            Err(other) => other,
        }
    }

    async fn try_reauthorize(
        &self,
        org: &str,
        server_id: &str,
        transport: &Transport,
        challenge: &str,
        relist: bool,
    ) -> Result<String, ManagerError> {
        let Some(grant) = grant_of(transport) else {
            return Err(ManagerError::FailedPrecondition(
                "the MCP server refused mcpd's credentials for lack of scope".into(),
            ));
        };
        // A token refused outright (not for scope) right after it was
        // granted, with no refresh token: the server may have moved to
        // another authorization server (SEP-2352). Start over from its
        // challenge, without the client registered at the old one.
        let wanted = insufficient_scope(challenge);
        let new: Vec<&String> = wanted
            .iter()
            .flatten()
            .filter(|s| !grant.scopes.contains(s))
            .collect();
        let refusal = match &wanted {
            Some(wanted) if new.is_empty() => Some(format!(
                "the MCP server refuses mcpd for lack of scope {:?} although it was granted {:?}",
                wanted.join(" "),
                grant.scopes.join(" ")
            )),
            _ if grant.step_ups >= MAX_STEP_UPS => Some(format!(
                "the MCP server asked mcpd to authorize again {} times; the last time: {}",
                grant.step_ups + 1,
                challenge.chars().take(200).collect::<String>()
            )),
            _ => None,
        };
        if let Some(reason) = refusal {
            tracing::info!(server = %server_id, %reason, "MCP server authorization failed");
            self.store.fail_server(org, server_id, &reason).await?;
            return Err(ManagerError::FailedPrecondition(reason));
        }
        // For more scope, the client mcpd is already known as goes on asking.
        let mut asking = transport.clone();
        if let Transport::StreamableHttp {
            oauth: Some(oauth), ..
        } = &mut asking
        {
            oauth.grant = None;
            if wanted.is_some() && oauth.client.is_none() {
                oauth.client = Some(RegisteredClient {
                    client_id: grant.endpoint.client_id.clone(),
                    client_secret: grant.endpoint.client_secret.clone(),
                });
            }
        }
        let mut start = self
            .mcp
            .begin_authorization(&asking, challenge, &grant.scopes)
            .await?;
        start.flow.reauthorize = !relist;
        start.flow.step_ups = grant.step_ups + 1;
        self.store
            .reopen_authorization(
                org,
                server_id,
                &start.url,
                &start.state,
                &encode_flow(&start.flow)?,
                self.limits.authorization_ttl,
            )
            .await?;
        tracing::info!(server = %server_id, scope = %start.flow.scopes.join(" "), "MCP server waits for more authorization");
        Ok(if wanted.is_some() {
            format!(
                "the MCP server needs more permission (scope {:?}): a person must open the server's authorization_url (GetMcpServer) and grant it, then call again",
                new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            )
        } else {
            "the MCP server no longer accepts mcpd's authorization: a person must open the server's authorization_url (GetMcpServer) and authorize mcpd again, then call again".to_owned()
        })
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

/// What a failed call on a server with a grant calls for.
pub(super) enum Refusal<'t> {
    /// The token was refused (expired or revoked): renew this one.
    Renew(&'t str),
    /// A person must authorize again (more scope, or the token is refused
    /// and cannot be renewed): this challenge says why.
    Reauthorize(&'t str),
}

pub(super) fn refusal<'t>(transport: &'t Transport, err: &'t McpError) -> Option<Refusal<'t>> {
    let McpError::Unauthorized { challenge, .. } = err else {
        return None;
    };
    let grant = grant_of(transport)?;
    match challenge.as_deref() {
        Some(challenge) if insufficient_scope(challenge).is_some() => {
            Some(Refusal::Reauthorize(challenge))
        }
        Some(challenge) if grant.refresh_token.is_none() => Some(Refusal::Reauthorize(challenge)),
        _ => Some(Refusal::Renew(&grant.access_token)),
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

//! Opens MCP sessions over the three transports and keeps track of them.

use std::{collections::HashMap, future::Future, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::{
    sync::mpsc,
    time::{Instant, timeout_at},
};

use crate::model::{
    AuthorizationFlow, AuthorizationStart, CallEvent, ClientAnswer, OAuthGrant, ToolCallResult,
    Transport,
};
use rmcp::{
    ClientServiceExt,
    service::ClientInitializeError,
    transport::{
        StreamableHttpClientTransport, sink_stream::SinkStreamTransport,
        streamable_http_client::StreamableHttpClientTransportConfig,
    },
};

use super::{
    McpError, McpSettings, Session, Stage,
    child::ChildProcess,
    client::{self, Handler},
    describe,
    lifecycle::{self, LegacyTargets, Start},
    live::{Live, LiveSessions, ServerKey},
    metrics::{self, McpMetrics, Operation},
    oauth::{OAuthClient, PolicedHttp, TokenError},
    orphans::GroupRecord,
    pool::{PoolStats, SessionPool},
    session::{CallFailure, SessionTerms, teardown},
    sse::SseClientTransport,
    stdio::{self, Malformed},
    tap::Tapped,
};

/// A metric's name, help and how it reads the live-session pool's figures.
type PooledFigure<T> = crate::telemetry::metrics::Figure<PoolStats, T>;

/// The MCP client side of the daemon. Cheap to clone.
#[derive(Clone)]
pub struct McpConnector {
    http: reqwest::Client,
    settings: McpSettings,
    live: LiveSessions,
    pool: SessionPool,
    legacy: std::sync::Arc<LegacyTargets>,
    oauth: OAuthClient,
    /// Servers whose live session said their tools changed.
    tool_changes: mpsc::Sender<ServerKey>,
    tool_changes_rx: std::sync::Arc<std::sync::Mutex<Option<mpsc::Receiver<ServerKey>>>>,
    metrics: std::sync::Arc<McpMetrics>,
    /// The process groups of this daemon's stdio children, on disk.
    groups: std::sync::Arc<GroupRecord>,
}

/// Tool list changes queued for the syncing side; more are dropped (the
/// queue holds each busy server at most a few times over).
const TOOL_CHANGES_QUEUE: usize = 1024;

impl McpConnector {
    /// With a run directory in `settings`, first kills what a daemon killed
    /// outright left there (see [`GroupRecord`]).
    pub fn new(settings: McpSettings) -> Result<Self, McpError> {
        let metrics = McpMetrics::new();
        let groups = match &settings.run_dir {
            Some(dir) => GroupRecord::open(dir, &metrics)?,
            None => GroupRecord::off(),
        };
        // The policy's resolver checks every address at connect time (DNS
        // rebinding), its redirect policy checks redirect targets, and no
        // proxy from the environment is used (it would hide the target).
        let http = settings
            .outbound
            .apply(reqwest::Client::builder().connect_timeout(settings.connect_timeout))
            .build()
            .map_err(|e| McpError::Settings(format!("HTTP client: {e}")))?;
        let oauth = OAuthClient::new(
            PolicedHttp::new(settings.outbound.clone(), settings.connect_timeout)
                .map_err(|e| McpError::Settings(format!("OAuth HTTP client: {e}")))?,
        );
        let (tool_changes, tool_changes_rx) = mpsc::channel(TOOL_CHANGES_QUEUE);
        Ok(McpConnector {
            http,
            pool: SessionPool::new(settings.pool),
            settings,
            live: LiveSessions::default(),
            legacy: Default::default(),
            oauth,
            tool_changes,
            tool_changes_rx: std::sync::Arc::new(std::sync::Mutex::new(Some(tool_changes_rx))),
            metrics,
            groups,
        })
    }

    /// Connects (as a client able to serve streamed calls, for listing) and
    /// completes the MCP initialize handshake within the connect timeout.
    /// The session is registered under (org, server id) until it is closed
    /// or dropped.
    pub async fn connect(
        &self,
        organization_id: &str,
        server_id: &str,
        spec: &Transport,
    ) -> Result<Session, McpError> {
        self.connect_with(organization_id, server_id, spec, client::listing())
            .await
    }

    /// A session for tool calls. On streamable HTTP it lists the tools
    /// first: at 2026-07-28 rmcp sends a tool's `x-mcp-header` arguments as
    /// `Mcp-Param-*` headers (SEP-2243) only for tools it saw listed on the
    /// same transport; in the stateful lifecycle the round trip gives the
    /// session's standalone SSE stream, which rmcp opens in the background,
    /// time to be up before the first call (a server that finds it open
    /// sends its requests and resumed results there). A failed listing is
    /// only logged: the call still goes out.
    pub(super) async fn open_for_calls(
        &self,
        organization_id: &str,
        server_id: &str,
        spec: &Transport,
        handler: Handler,
    ) -> Result<Session, McpError> {
        let session = self
            .connect_with(organization_id, server_id, spec, handler)
            .await?;
        if matches!(spec, Transport::StreamableHttp { .. })
            && let Err(err) = session.list_tools().await
        {
            tracing::debug!(server = %server_id, error = %err, "could not list tools for Mcp-Param headers");
        }
        Ok(session)
    }

    /// [`Self::connect`] with the client `handler` shows the server.
    #[tracing::instrument(
        name = "mcp.connect",
        skip_all,
        fields(
            otel.kind = "client",
            mcp.operation = "connect",
            mcp.transport = metrics::transport_label(spec),
            mcpd.server.id = server_id,
        )
    )]
    pub(super) async fn connect_with(
        &self,
        organization_id: &str,
        server_id: &str,
        spec: &Transport,
        handler: Handler,
    ) -> Result<Session, McpError> {
        let transport = metrics::transport_label(spec);
        let _timer = self.metrics.time(Operation::Connect, transport);
        self.check_policy(spec).await?;
        let deadline = Instant::now() + self.settings.connect_timeout;
        let key: ServerKey = (organization_id.to_owned(), server_id.to_owned());
        let target = match spec {
            Transport::Stdio { command, .. } => command.clone(),
            Transport::StreamableHttp { url, .. } | Transport::Sse { url, .. } => {
                describe::target_of(url)
            }
        };
        // A grant from the authorization code flow is used as it is (the
        // manager renews it); client credentials are obtained here.
        let (granted, credentials) = match spec {
            Transport::StreamableHttp {
                url,
                oauth: Some(oauth),
                ..
            } => (
                oauth.grant.as_ref().map(|g| g.access_token.clone()),
                oauth.client_credentials.as_ref().map(|_| (url, oauth)),
            ),
            _ => (None, None),
        };
        let mut token = granted.or_else(|| {
            credentials
                .and_then(|_| self.oauth.token(&key))
                .map(|t| t.access)
        });
        let mut renewed = false;
        let live = loop {
            match self.start(spec, &handler, deadline, token.as_deref()).await {
                Ok(live) => break live,
                // The server wants a (new) token: get one, once, and retry.
                Err(Failure::Refused(error)) => {
                    let (Some((url, settings)), false) = (credentials, renewed) else {
                        return Err(error);
                    };
                    renewed = true;
                    let challenge = match &error {
                        McpError::Unauthorized { challenge, .. } => challenge.as_deref(),
                        _ => None,
                    };
                    let renewal = self.oauth.renew(&key, url, challenge, settings);
                    match timeout_at(deadline, renewal).await {
                        Ok(Ok(fresh)) => token = Some(fresh.access),
                        Ok(Err(why)) => {
                            return Err(McpError::Unauthorized {
                                stage: Stage::Connect,
                                detail: format!(
                                    "{target} requires an OAuth access token and {why}"
                                ),
                                challenge: None,
                            });
                        }
                        Err(_) => {
                            return Err(McpError::Timeout {
                                stage: Stage::Connect,
                                after: self.settings.connect_timeout,
                            });
                        }
                    }
                }
                Err(failure) => return Err(failure.into_error()),
            }
        };
        Ok(Session::new(
            live,
            target,
            key,
            handler,
            self.live.clone(),
            SessionTerms {
                list_timeout: self.settings.list_timeout,
                grace: self.settings.teardown_grace,
                metrics: self.metrics.clone(),
                transport,
            },
        ))
    }

    /// Starts a session: discover first, then `initialize` on a fresh
    /// transport when the server seems to predate `server/discover`.
    async fn start(
        &self,
        spec: &Transport,
        handler: &Handler,
        deadline: Instant,
        bearer: Option<&str>,
    ) -> Result<Live, Failure> {
        let memory_key = lifecycle_key(spec);
        // The HTTP+SSE transport was retired before 2026-07-28 existed.
        let start = match spec {
            Transport::Sse { .. } => Start::Legacy,
            _ => self.legacy.start_for(&memory_key),
        };
        let live = match self.open(spec, handler, start, deadline, bearer).await {
            Ok(live) => live,
            Err(Failure::MaybeLegacy(err)) if start == Start::Discover => {
                tracing::debug!(error = %err, "server/discover failed; starting over with initialize");
                let live = self
                    .open(spec, handler, Start::Legacy, deadline, bearer)
                    .await?;
                self.legacy.remember(&memory_key);
                live
            }
            Err(failure) => return Err(failure),
        };
        // rmcp fell back to `initialize` in place: next time, skip the probe.
        if start == Start::Discover && live.negotiated_initialize() {
            self.legacy.remember(&memory_key);
        }
        Ok(live)
    }

    /// One attempt to open a session on a fresh transport, by the deadline.
    async fn open(
        &self,
        spec: &Transport,
        handler: &Handler,
        start: Start,
        deadline: Instant,
        bearer: Option<&str>,
    ) -> Result<Live, Failure> {
        let timeout = self.settings.connect_timeout;
        let timed_out = || {
            Failure::Final(McpError::Timeout {
                stage: Stage::Connect,
                after: timeout,
            })
        };
        let service = handler.service(start == Start::Legacy);
        match spec {
            Transport::Stdio { command, args, env } => {
                let (mut child, stdout, stdin) = ChildProcess::spawn(
                    command,
                    args,
                    env,
                    &self.settings.stdio_env_passthrough,
                    &self.metrics,
                    &self.groups,
                )
                .map_err(Failure::Final)?;
                tracing::debug!(program = %command, pid = ?child.pid(), "spawned stdio MCP server");
                let malformed = Malformed::default();
                let (sink, stream) = stdio::transport(stdout, stdin, malformed.clone());
                let transport =
                    Tapped::new(SinkStreamTransport::new(sink, stream), handler.events());
                match timeout_at(
                    deadline,
                    outside_spans(service.serve_with_lifecycle(transport, start.mode())),
                )
                .await
                {
                    Ok(Ok(service)) => Ok(Live {
                        service,
                        child: Some(child),
                        malformed: Some(malformed),
                    }),
                    Ok(Err(err)) => {
                        // Give the child a moment to finish its last words on
                        // stderr: they usually say why it failed.
                        let grace = self.settings.teardown_grace.min(Duration::from_millis(200));
                        tokio::time::sleep(grace).await;
                        let stderr = child.stderr_tail();
                        let exited = child.exit_status();
                        child.reap(self.settings.teardown_grace).await;
                        let mut detail = malformed.reason().unwrap_or_else(|| match exited {
                            // The pipe error rmcp saw says less than the exit.
                            Some(status) => format!(
                                "{command} exited ({status}) before completing the MCP initialize handshake"
                            ),
                            None => describe::initialize_failure(&err, command),
                        });
                        if !stderr.is_empty() {
                            detail = format!("{detail}; its stderr ends with: {stderr}");
                        }
                        Err(Failure::of(
                            start,
                            &err,
                            McpError::failed(Stage::Connect, detail),
                        ))
                    }
                    Err(_) => {
                        child.reap(self.settings.teardown_grace).await;
                        Err(timed_out())
                    }
                }
            }
            Transport::StreamableHttp { url, headers, .. } => {
                let mut headers = header_map(headers).map_err(Failure::Final)?;
                if let Some(token) = bearer {
                    let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                        Failure::Final(McpError::Unauthorized {
                            stage: Stage::Connect,
                            detail: "the authorization server granted a token that is not a valid header value".into(),
                            challenge: None,
                        })
                    })?;
                    value.set_sensitive(true);
                    headers.insert(http::header::AUTHORIZATION, value);
                }
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(headers.into_iter().collect());
                let transport = Tapped::new(
                    StreamableHttpClientTransport::with_client(self.http.clone(), config),
                    handler.events(),
                );
                remote(deadline, timeout, url, start, service, transport).await
            }
            Transport::Sse { url, headers } => {
                let headers: HeaderMap = header_map(headers)
                    .map_err(Failure::Final)?
                    .into_iter()
                    .collect();
                let transport = timeout_at(
                    deadline,
                    SseClientTransport::connect(self.http.clone(), url.clone(), headers),
                )
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| {
                    Failure::Final(McpError::remote(
                        Stage::Connect,
                        describe::transport(&e, &describe::target_of(url)),
                        describe::refuses_credentials(&e),
                        None,
                    ))
                })?;
                let transport = Tapped::new(transport, handler.events());
                remote(deadline, timeout, url, start, service, transport).await
            }
        }
    }

    /// Stdio commands must be allowlisted; remote hosts must pass the
    /// outbound policy for every address they resolve to.
    async fn check_policy(&self, spec: &Transport) -> Result<(), McpError> {
        match spec {
            Transport::Stdio { command, .. } => {
                let allowed = self
                    .settings
                    .stdio_allow
                    .iter()
                    .any(|entry| entry == command);
                if allowed {
                    Ok(())
                } else {
                    Err(McpError::Refused(format!(
                        "stdio command {command:?} is not allowed: the operator must start mcpd with --stdio-allow {command} (exact paths or program names)"
                    )))
                }
            }
            Transport::StreamableHttp { url, .. } | Transport::Sse { url, .. } => {
                let timeout = self.settings.connect_timeout;
                match tokio::time::timeout(timeout, self.settings.outbound.check_url(url)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(refusal)) if refusal.overridable() => Err(McpError::Refused(format!(
                        "{refusal}; the operator sets --outbound-allow / --outbound-deny"
                    ))),
                    Ok(Err(refusal)) => Err(McpError::Refused(format!(
                        "{refusal}; no setting overrides this rule"
                    ))),
                    Err(_) => Err(McpError::Timeout {
                        stage: Stage::Connect,
                        after: timeout,
                    }),
                }
            }
        }
    }

    /// Starts the authorization code flow for a streamable HTTP server that
    /// answered 401 with `challenge`: discovery, a client identity, and the
    /// URL a person opens. `also_scopes` are asked for on top of the usual
    /// selection (a step-up).
    pub async fn begin_authorization(
        &self,
        spec: &Transport,
        challenge: &str,
        also_scopes: &[String],
    ) -> Result<AuthorizationStart, McpError> {
        let refused = |detail: String| McpError::Unauthorized {
            stage: Stage::Connect,
            detail,
            challenge: None,
        };
        let Transport::StreamableHttp { url, oauth, .. } = spec else {
            return Err(refused(
                "only streamable HTTP servers can be authorized with OAuth".into(),
            ));
        };
        let target = describe::target_of(url);
        let Some(settings) = &self.settings.oauth else {
            return Err(refused(format!(
                "{target} requires OAuth authorization, and mcpd has no callback for it: the operator starts mcpd with --http-listen"
            )));
        };
        let oauth = oauth.clone().unwrap_or_default();
        let begun = self
            .oauth
            .begin(url, challenge, &oauth, also_scopes, settings);
        match tokio::time::timeout(self.settings.connect_timeout, begun).await {
            Ok(Ok(start)) => Ok(start),
            Ok(Err(why)) => Err(refused(format!(
                "{target} refused mcpd without credentials (HTTP 401) and asks for OAuth authorization; {why}"
            ))),
            Err(_) => Err(McpError::Timeout {
                stage: Stage::Connect,
                after: self.settings.connect_timeout,
            }),
        }
    }

    /// Exchanges the code a browser brought back for tokens.
    pub async fn exchange_code(
        &self,
        flow: &AuthorizationFlow,
        code: &str,
    ) -> Result<OAuthGrant, TokenError> {
        self.timed_token_request(self.oauth.exchange(flow, code))
            .await
    }

    /// Renews a grant with its refresh token.
    pub async fn refresh_grant(&self, grant: &OAuthGrant) -> Result<OAuthGrant, TokenError> {
        self.timed_token_request(self.oauth.refresh(grant)).await
    }

    async fn timed_token_request(
        &self,
        request: impl Future<Output = Result<OAuthGrant, TokenError>>,
    ) -> Result<OAuthGrant, TokenError> {
        let limit = self.settings.connect_timeout;
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| {
                Err(TokenError::Failed(format!(
                    "the authorization server did not answer within {limit:?}"
                )))
            })
    }

    /// Drops what the daemon holds in memory for a server that was never
    /// stored (a failed registration): its access token.
    pub fn forget(&self, organization_id: &str, server_id: &str) {
        self.oauth
            .forget(&(organization_id.to_owned(), server_id.to_owned()));
    }

    /// Drops the server's access token: the server refused it.
    pub(super) fn forget_token(&self, key: &ServerKey) {
        self.oauth.forget(key);
    }

    pub(super) fn settings(&self) -> &McpSettings {
        &self.settings
    }

    /// The longest a listing may take: reaching the server and its
    /// initialize (`connect_timeout`), then every page (`list_timeout`).
    pub fn listing_limit(&self) -> Duration {
        self.settings.connect_timeout + self.settings.list_timeout
    }

    /// The caller's deadline, or `--mcp-call-timeout`, whichever is shorter.
    fn call_timeout(&self, deadline: Option<Duration>) -> Duration {
        deadline.map_or(self.settings.call_timeout, |d| {
            d.min(self.settings.call_timeout)
        })
    }

    /// (organization, server id) of each server whose live session announced
    /// that its tools changed (`notifications/tools/list_changed`). One
    /// receiver per connector: the first caller gets it.
    pub fn take_tool_changes(&self) -> Option<mpsc::Receiver<(String, String)>> {
        self.tool_changes_rx.lock().ok()?.take()
    }

    pub(super) fn tool_changes_to(&self, server: &ServerKey) -> super::client::ToolChanges {
        super::client::ToolChanges {
            server: server.clone(),
            to: self.tool_changes.clone(),
        }
    }

    /// Whether the server answers: a `ping` on its live session when it has
    /// one (a pooled stdio server is not started a second time), else on a
    /// session opened for the check and closed after.
    pub async fn check(
        &self,
        organization_id: &str,
        server_id: &str,
        transport: &Transport,
    ) -> Result<(), McpError> {
        let key = (organization_id.to_owned(), server_id.to_owned());
        let timeout = self.settings.connect_timeout;
        if let Some(live) = self.pool.live(&key) {
            return live.ping(timeout).await;
        }
        let session = self.connect(organization_id, server_id, transport).await?;
        let answered = session.ping(timeout).await;
        session.close().await;
        answered
    }

    /// Calls a tool on the server's live session (opened if needed). The
    /// caller's deadline bounds it, `--mcp-call-timeout` when it sets none.
    pub async fn call_tool(
        &self,
        organization_id: &str,
        server_id: &str,
        transport: &Transport,
        tool: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        deadline: Option<Duration>,
    ) -> Result<ToolCallResult, McpError> {
        let timeout = self.call_timeout(deadline);
        self.pool
            .call(
                self,
                (organization_id.to_owned(), server_id.to_owned()),
                transport,
                tool,
                arguments,
                timeout,
            )
            .await
    }

    /// A tool call whose caller follows it: a session of its own that offers
    /// sampling, elicitation and roots, relays the server's requests and
    /// notifications as `events` and takes the caller's `answers`. When the
    /// caller stops listening to `events`, the call is cancelled.
    #[allow(clippy::too_many_arguments)]
    pub async fn stream_tool_call(
        &self,
        organization_id: &str,
        server_id: &str,
        transport: &Transport,
        tool: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        deadline: Option<Duration>,
        events: tokio::sync::mpsc::Sender<CallEvent>,
        answers: tokio::sync::mpsc::Receiver<ClientAnswer>,
    ) -> Result<ToolCallResult, McpError> {
        let timeout = self.call_timeout(deadline);
        let until = tokio::time::Instant::now() + timeout;
        let caller = events.clone();
        let (handler, router) = client::Relay::start(events, answers);
        let session = tokio::select! {
            connected = tokio::time::timeout_at(
                until,
                self.open_for_calls(organization_id, server_id, transport, handler),
            ) => connected.map_err(|_| McpError::Timeout { stage: Stage::Connect, after: timeout })??,
            () = caller.closed() => return Err(McpError::Cancelled),
        };
        let result = session
            .call_tool_until(
                tool,
                arguments,
                until.saturating_duration_since(tokio::time::Instant::now()),
                caller.closed(),
            )
            .await
            .map_err(|(CallFailure::NotDelivered(err) | CallFailure::Failed(err))| err);
        router.abort();
        // The session served this call only.
        tokio::spawn(session.close());
        result
    }

    /// Live sessions and calls, for operators.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// (organization, server id) of every server with a live session for
    /// calls.
    pub fn live_servers(&self) -> Vec<(String, String)> {
        self.pool.servers()
    }

    /// Tears down every session still open for one server. Best-effort.
    pub async fn close_server(&self, organization_id: &str, server_id: &str) {
        let key = (organization_id.to_owned(), server_id.to_owned());
        self.pool.remove(&key);
        self.oauth.forget(&key);
        let grace = self.settings.teardown_grace;
        futures::future::join_all(
            self.live
                .take(Some(&key))
                .into_iter()
                .map(|live| teardown(live, grace, &self.metrics)),
        )
        .await;
    }

    /// Tears down every session the daemon holds (shutdown).
    pub async fn close_all(&self) {
        self.pool.clear();
        let grace = self.settings.teardown_grace;
        futures::future::join_all(
            self.live
                .take(None)
                .into_iter()
                .map(|live| teardown(live, grace, &self.metrics)),
        )
        .await;
    }

    /// Sessions open right now.
    pub fn open_sessions(&self) -> usize {
        self.live.len()
    }

    /// The client side's figures: its own instruments, and the sessions
    /// and live-session pool read when scraped.
    pub fn register_metrics(&self, registry: &crate::telemetry::metrics::Registry) {
        use crate::telemetry::metrics::{pulled_counters, pulled_gauge, pulled_gauges};
        self.metrics.register(registry);
        let live = self.live.clone();
        pulled_gauge(
            registry,
            "mcpd_mcp_sessions_open",
            "MCP sessions open now: live sessions kept for calls, and sessions of creates, syncs and health checks in progress.",
            move || live.len() as f64,
        );
        let gauges: [PooledFigure<f64>; 2] = [
            (
                "mcpd_mcp_live_sessions",
                "Live sessions kept open for tool calls (at most --max-live-sessions).",
                |p| p.live_sessions as f64,
            ),
            (
                "mcpd_mcp_calls_in_flight",
                "Tool calls waiting on an MCP server now.",
                |p| p.calls_in_flight as f64,
            ),
        ];
        let pool = self.pool.clone();
        let stats = move || pool.stats();
        pulled_gauges(registry, gauges, stats.clone());
        let counters: [PooledFigure<u64>; 2] = [
            (
                "mcpd_mcp_live_session_opens_total",
                "Live sessions opened for tool calls.",
                |p| p.session_opens,
            ),
            (
                "mcpd_mcp_live_session_reuses_total",
                "Tool calls that reused a live session.",
                |p| p.session_reuses,
            ),
        ];
        pulled_counters(registry, counters, stats);
    }
}

/// Why an attempt to open a session failed.
enum Failure {
    /// Nothing another attempt would change.
    Final(McpError),
    /// The server refused the credentials (HTTP 401/403): a new token may
    /// help. The error carries the server's challenge, if any.
    Refused(McpError),
    /// A discover-first start failed the way a server that only knows
    /// `initialize` can: worth one legacy start on a fresh transport.
    MaybeLegacy(McpError),
}

impl Failure {
    fn of(start: Start, cause: &ClientInitializeError, err: McpError) -> Failure {
        // Credentials refused for the probe are refused for `initialize` too.
        if matches!(err, McpError::Unauthorized { .. }) {
            return Failure::Refused(err);
        }
        if start == Start::Discover && lifecycle::may_be_legacy(cause) {
            Failure::MaybeLegacy(err)
        } else {
            Failure::Final(err)
        }
    }

    fn into_error(self) -> McpError {
        match self {
            Failure::Final(err) | Failure::MaybeLegacy(err) | Failure::Refused(err) => err,
        }
    }
}

/// A session with a remote server over `transport`, started by the deadline.
async fn remote<T, E, A: 'static>(
    deadline: Instant,
    timeout: Duration,
    url: &url::Url,
    start: Start,
    service: Box<dyn rmcp::service::DynService<rmcp::RoleClient>>,
    transport: T,
) -> Result<Live, Failure>
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let service = initialize(
        deadline,
        timeout,
        url,
        start,
        outside_spans(service.serve_with_lifecycle(transport, start.mode())),
    )
    .await?;
    Ok(Live {
        service,
        child: None,
        malformed: None,
    })
}

/// Starts a session on a task of its own, where no span is current. rmcp
/// runs a session's loop, for the session's whole life, in the span current
/// when the session started: started in a call, a live session would keep
/// that call's span (and trace) open, and unexported, until it closed.
/// Dropping the returned future stops the start, as dropping it did inline.
async fn outside_spans<F>(start: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(start));
    match (&mut task.0).await {
        Ok(output) => output,
        // Only a panic: the task is aborted when this future is dropped,
        // and then nobody awaits it.
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// The session start with a remote server, by the deadline.
async fn initialize<T>(
    deadline: Instant,
    timeout: Duration,
    url: &url::Url,
    start: Start,
    fut: impl Future<Output = Result<T, ClientInitializeError>>,
) -> Result<T, Failure> {
    match timeout_at(deadline, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            let error = McpError::remote(
                Stage::Connect,
                describe::initialize_failure(&err, &describe::target_of(url)),
                describe::initialize_refuses_credentials(&err),
                err.auth_challenge(),
            );
            Err(Failure::of(start, &err, error))
        }
        Err(_) => Err(Failure::Final(McpError::Timeout {
            stage: Stage::Connect,
            after: timeout,
        })),
    }
}

/// What the daemon remembers a server's lifecycle by: the program, or the
/// URL without its query (which may carry credentials).
fn lifecycle_key(spec: &Transport) -> String {
    match spec {
        Transport::Stdio { command, args, .. } => format!("stdio {command} {}", args.join(" ")),
        Transport::StreamableHttp { url, .. } | Transport::Sse { url, .. } => {
            let mut url = url.clone();
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
    }
}

/// Header values are secrets: a bad one is reported by name only.
fn header_map(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<HashMap<HeaderName, HeaderValue>, McpError> {
    headers
        .iter()
        .map(|(name, value)| {
            let header_name = HeaderName::try_from(name.as_str())
                .map_err(|_| McpError::Settings(format!("invalid header name {name:?}")))?;
            let mut header_value = HeaderValue::try_from(value.as_str())
                .map_err(|_| McpError::Settings(format!("invalid value for header {name:?}")))?;
            header_value.set_sensitive(true);
            Ok((header_name, header_value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_memory_keeps_no_query_and_tells_commands_apart() {
        let http = |url: &str| Transport::StreamableHttp {
            url: url::Url::parse(url).unwrap(),
            headers: Default::default(),
            oauth: None,
        };
        // A query may carry credentials: it is not kept, nor does it matter.
        assert_eq!(
            lifecycle_key(&http("https://mcp.example.com/mcp?token=s3cret#x")),
            lifecycle_key(&http("https://mcp.example.com/mcp")),
        );
        assert!(
            !lifecycle_key(&http("https://mcp.example.com/mcp?token=s3cret")).contains("s3cret")
        );
        let stdio = |args: &[&str]| Transport::Stdio {
            command: "server".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Default::default(),
        };
        assert_ne!(
            lifecycle_key(&stdio(&["--legacy"])),
            lifecycle_key(&stdio(&[]))
        );
    }
}

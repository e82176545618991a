//! The MCP server itself: a hand-written `ServerHandler` over a [`Catalog`]
//! or a [`ToolsFile`].

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering},
};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, DiscoverResult,
        ElicitRequest, ElicitRequestParams, ErrorCode, Implementation, InitializeRequestParams,
        InitializeResult, InputRequest, InputRequests, InputRequiredResult, ListToolsResult,
        PaginatedRequestParams, ServerCapabilities, ServerConfig, SubscriptionFilter, Tool,
    },
    service::{NotificationContext, RequestContext, SubscriptionContext},
};
use serde_json::{Value, json};

use crate::{
    catalog::Catalog,
    tools_file::{ListChanged, ToolsFile},
};

/// Exit code of `--crash-on-shutdown`.
pub const CRASH_EXIT_CODE: i32 = 3;

/// Exit code of `--crash-during-list`.
pub const CRASH_DURING_LIST_EXIT_CODE: i32 = 4;

/// How `tools/call` (and `tools/list`) behave.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    /// Answer only after this long (`--call-delay-ms`).
    pub delay: std::time::Duration,
    /// Where delayed calls are logged as `started <id>` and, when the client
    /// cancels them, `cancelled <id>` (`--cancel-log`).
    pub cancel_log: Option<std::path::PathBuf>,
    /// Where `server/discover`, `initialize` and `subscriptions/listen` are
    /// logged, one method name per line (`--lifecycle-log`).
    pub lifecycle_log: Option<std::path::PathBuf>,
    /// Answer each `tools/list` only after this long (`--list-delay-ms`).
    pub list_delay: std::time::Duration,
    /// Where each `tools/list` is logged as `list <n>`, n the listings in
    /// flight with it included (`--list-log`).
    pub list_log: Option<std::path::PathBuf>,
}

/// `tools/list` requests being answered now, over every session.
static LISTING: AtomicU64 = AtomicU64::new(0);

/// Counts a `tools/list` in flight while it lives.
struct Listing;

impl Listing {
    /// Counts one more, and answers how many are in flight now.
    fn start() -> (Listing, u64) {
        (Listing, LISTING.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        LISTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where the offered tools come from.
#[derive(Clone)]
pub enum Tools {
    Generated(Arc<Catalog>),
    File(Arc<ToolsFile>),
}

impl Tools {
    /// The file's tools as they are now; an error naming the file if it
    /// cannot be read.
    fn load(file: &ToolsFile) -> Result<Vec<Tool>, McpError> {
        file.load()
            .map_err(|message| McpError::internal_error(message, None))
    }
}

pub struct TestServer {
    tools: Tools,
    /// `--notify-list-changed`, shared by all sessions.
    list_changed: Option<Arc<ListChanged>>,
    calls: Calls,
    /// `--hang list`: never answer `tools/list`.
    hang_list: bool,
    /// `--crash-during-list`: exit with [`CRASH_DURING_LIST_EXIT_CODE`] instead
    /// of answering `tools/list`.
    crash_during_list: bool,
    /// `--crash-on-shutdown` over HTTP: crash when this session's handler is
    /// dropped (see [`CrashOnDrop`]).
    crash_on_session_close: bool,
    /// Armed by `initialize`; empty for handlers that never serve a session.
    crash_guard: OnceLock<CrashOnDrop>,
    /// `--unique-per-session`: every session's tool names get their own
    /// prefix, so one server can back thousands of registrations in one
    /// organization (tool names are unique per organization in mcpd).
    unique_per_session: bool,
    session_prefix: OnceLock<String>,
    /// `--legacy`: refuse `server/discover` like a server written before
    /// 2026-07-28, so clients fall back to `initialize` and a session.
    legacy: bool,
}

/// Numbers sessions for `--unique-per-session`.
static SESSIONS: AtomicU64 = AtomicU64::new(0);

impl TestServer {
    pub fn new(tools: Tools, hang_list: bool, crash_on_session_close: bool) -> Self {
        Self {
            tools,
            list_changed: None,
            calls: Calls::default(),
            hang_list,
            crash_during_list: false,
            crash_on_session_close,
            crash_guard: OnceLock::new(),
            unique_per_session: false,
            session_prefix: OnceLock::new(),
            legacy: false,
        }
    }

    pub fn legacy(mut self, on: bool) -> Self {
        self.legacy = on;
        self
    }

    pub fn list_changed(mut self, list_changed: Option<Arc<ListChanged>>) -> Self {
        self.list_changed = list_changed;
        self
    }

    pub fn calls(mut self, calls: Calls) -> Self {
        self.calls = calls;
        self
    }

    pub fn unique_per_session(mut self, on: bool) -> Self {
        self.unique_per_session = on;
        self
    }

    /// `--crash-during-list` over stdio: `list_tools` exits the process.
    pub fn crash_during_list(mut self, on: bool) -> Self {
        self.crash_during_list = on;
        self
    }

    fn session_prefix(&self) -> &str {
        self.session_prefix.get().map_or("", String::as_str)
    }

    /// A fresh handler sharing this one's configuration, with its own
    /// (unarmed) crash guard. The HTTP service factory calls this once per
    /// handler it needs, so guards are never shared between sessions.
    pub fn fresh(&self) -> Self {
        Self::new(
            self.tools.clone(),
            self.hang_list,
            self.crash_on_session_close,
        )
        .unique_per_session(self.unique_per_session)
        .legacy(self.legacy)
        .crash_during_list(self.crash_during_list)
        .calls(self.calls.clone())
        .list_changed(self.list_changed.clone())
    }
}

/// Exits the process with [`CRASH_EXIT_CODE`] when dropped.
///
/// rmcp's streamable HTTP server owns one handler per session (created by the
/// service factory, moved into the session's serve task) and drops it once the
/// session is over, whether the client closed it with `DELETE` or it ended
/// otherwise. rmcp has no session-closed hook, so that drop is our signal.
/// The factory is also called for short-lived handlers that never see
/// `initialize` (e.g. to look up tool schemas), which is why the guard is only
/// armed in `initialize`. If requests are still running when the session
/// closes, rmcp gives them up to 5 seconds before the handler goes, so the
/// crash can lag the `DELETE` by that much (e.g. with `--hang list`).
struct CrashOnDrop;

impl Drop for CrashOnDrop {
    fn drop(&mut self) {
        eprintln!("mcp-test-server: session closed, crashing with exit code {CRASH_EXIT_CODE}");
        std::process::exit(CRASH_EXIT_CODE);
    }
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder().enable_tools();
        let capabilities = if self.list_changed.is_some() {
            capabilities.enable_tool_list_changed().build()
        } else {
            capabilities.build()
        };
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("Test server for mcpd: tools that echo their name and arguments.")
    }

    async fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, McpError> {
        if let (true, Some(log)) = (self.legacy, &self.calls.lifecycle_log) {
            append(log, "server/discover (refused)");
        }
        if self.legacy {
            // What a server that predates the method answers.
            return Err(McpError::new(
                ErrorCode::METHOD_NOT_FOUND,
                "Method not found: server/discover",
                None,
            ));
        }
        let _ = context;
        if let Some(log) = &self.calls.lifecycle_log {
            append(log, "server/discover");
        }
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        ))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        if let Some(log) = &self.calls.lifecycle_log {
            append(log, "initialize");
        }
        if self.crash_on_session_close {
            let _ = self.crash_guard.set(CrashOnDrop);
        }
        if self.unique_per_session {
            let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
            let _ = self.session_prefix.set(format!("s{n:07}_"));
        }
        // What the default `initialize` does.
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if let Some(list_changed) = &self.list_changed {
            list_changed.add_peer(context.peer);
        }
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let _ = requested;
        self.list_changed.as_ref().map(|_| ListChanged::filter())
    }

    async fn listen(&self, subscription: SubscriptionContext) -> Result<(), McpError> {
        if let Some(log) = &self.calls.lifecycle_log {
            append(log, "subscriptions/listen");
        }
        match &self.list_changed {
            Some(list_changed) => list_changed.listen(subscription).await,
            None => subscription.cancelled().await,
        }
        Ok(())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        if self.crash_during_list {
            // No answer, no cleanup: the process is gone while the request is
            // in flight. (Only used over stdio; see `http::intercept_list`.)
            eprintln!(
                "mcp-test-server: --crash-during-list, crashing with exit code \
                 {CRASH_DURING_LIST_EXIT_CODE}"
            );
            std::process::exit(CRASH_DURING_LIST_EXIT_CODE);
        }
        if self.hang_list {
            eprintln!("mcp-test-server: --hang list, never answering tools/list");
            // Wait until rmcp cancels the request: the client sent
            // `notifications/cancelled`, or the session is over. rmcp drops
            // responses to cancelled requests, so the error below never reaches
            // the client. Pending forever instead would leak this handler: rmcp
            // does not abort request tasks, and each holds the handler.
            context.ct.cancelled().await;
            return Err(McpError::internal_error(
                "tools/list abandoned (--hang list)",
                None,
            ));
        }
        let (_listing, in_flight) = Listing::start();
        if let Some(log) = &self.calls.list_log {
            append(log, &format!("list {in_flight}"));
        }
        if !self.calls.list_delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.calls.list_delay) => {}
                () = context.ct.cancelled() => {
                    return Err(McpError::internal_error("cancelled by the client", None));
                }
            }
        }
        let cursor = request.as_ref().and_then(|params| params.cursor.as_deref());
        let (tools, next_cursor) = match (&self.tools, cursor) {
            (Tools::Generated(catalog), _) => catalog
                .page(cursor)
                .map_err(|message| McpError::invalid_params(message, None))?,
            // One page holds the whole file, so no cursor was ever handed out.
            (Tools::File(_), Some(cursor)) => {
                return Err(McpError::invalid_params(
                    format!("invalid cursor {cursor:?}"),
                    None,
                ));
            }
            (Tools::File(file), None) => (Tools::load(file)?, None),
        };
        let prefix = self.session_prefix();
        let tools = if prefix.is_empty() {
            tools
        } else {
            tools
                .into_iter()
                .map(|mut tool| {
                    tool.name = format!("{prefix}{}", tool.name).into();
                    tool
                })
                .collect()
        };
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = next_cursor;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.as_ref();
        let listed = name.strip_prefix(self.session_prefix()).unwrap_or(name);
        let known = match &self.tools {
            Tools::Generated(catalog) => catalog.contains(listed),
            Tools::File(file) => Tools::load(file)?.iter().any(|tool| tool.name == listed),
        };
        if !known {
            // The MCP spec reports unknown tools as invalid params (-32602).
            return Err(McpError::invalid_params(
                format!("unknown tool {name:?}"),
                None,
            ));
        }
        if !self.calls.delay.is_zero() {
            if let Some(log) = &self.calls.cancel_log {
                record(log, "started", &context.id);
            }
            tokio::select! {
                () = tokio::time::sleep(self.calls.delay) => {}
                () = context.ct.cancelled() => {
                    if let Some(log) = &self.calls.cancel_log {
                        record(log, "cancelled", &context.id);
                    }
                    return Err(McpError::internal_error("cancelled by the client", None));
                }
            }
        }
        let arguments = request.arguments.clone().map_or(Value::Null, Value::Object);
        // `{"ask": "<question>"}` needs an answer from the client's user
        // first: a multi round-trip request (SEP-2322, 2026-07-28).
        if let Some(question) = arguments.get("ask").and_then(Value::as_str) {
            match (&request.input_responses, &request.request_state) {
                (Some(responses), Some(state)) => {
                    let echo =
                        json!({ "tool": name, "answer": responses.get("answer"), "state": state });
                    return Ok(
                        CallToolResult::success(vec![ContentBlock::text(echo.to_string())]).into(),
                    );
                }
                _ => return Ok(ask(question).into()),
            }
        }
        let echo = json!({ "tool": name, "arguments": arguments });
        let content = vec![ContentBlock::text(echo.to_string())];
        // `{"fail": true}` asks for a tool-level failure (`isError`).
        if arguments.get("fail") == Some(&Value::Bool(true)) {
            return Ok(CallToolResult::error(content).into());
        }
        Ok(CallToolResult::success(content).into())
    }
}

/// An `input_required` result asking the client for `{"name": string}`,
/// with state the retry must echo.
fn ask(question: &str) -> InputRequiredResult {
    let requested_schema = serde_json::from_value(json!({
        "type": "object",
        "properties": { "name": { "type": "string" } },
        "required": ["name"]
    }))
    .expect("a valid elicitation schema");
    let request = InputRequest::Elicitation(ElicitRequest::new(
        ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: question.to_owned(),
            requested_schema,
        },
    ));
    let mut requests = InputRequests::new();
    requests.insert("answer".to_owned(), request);
    InputRequiredResult::new(Some(requests), Some(format!("asked:{question}")))
}

/// Appends a line to a log file.
pub fn append(log: &std::path::Path, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        // One write per line: `writeln!` writes the line and its newline
        // separately, and two calls logging at once interleave them.
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
    if let Err(err) = written {
        eprintln!("mcp-test-server: writing {}: {err}", log.display());
    }
}

/// Appends `<what> <request id>` to the `--cancel-log` file.
fn record(log: &std::path::Path, what: &str, id: &rmcp::model::RequestId) {
    append(log, &format!("{what} {id}"));
}

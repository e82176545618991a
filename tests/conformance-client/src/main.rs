//! `mcpd-conformance-client`: the client command of the official MCP
//! conformance suite (`conformance client --command …`), played by mcpd.
//!
//! The suite starts a scenario server and runs this binary with the server's
//! URL as its last argument, the scenario's name in `MCP_CONFORMANCE_SCENARIO`
//! and, for some scenarios, data in `MCP_CONFORMANCE_CONTEXT` (JSON). This
//! binary speaks no MCP itself: it registers the URL with a running mcpd
//! (`MCPD_ADDRESS`, and `MCPD_API_KEY` or an organization of its own, see
//! [`api_key`]) through `CreateMcpServer`, does what the
//! suite's reference client (`examples/clients/typescript/everything-client.ts`)
//! does for the scenario through `CallMcpTool` or `StreamMcpToolCall`,
//! answering the server's requests on the stream as the reference client
//! does, and closes the server again with `CloseMcpServer`. Every MCP byte
//! the scenario server sees comes from mcpd, so the scenario judges mcpd.
//!
//! It exits 0 when every step worked, and 1 with a message on stderr naming
//! each step that did not.

use std::{collections::BTreeMap, future::Future, process::ExitCode, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use mcpd::proto::{
    CallMcpToolRequest, CallMcpToolResponse, CloseMcpServerRequest, Content,
    CreateMcpServerRequest, FailedTool, GetMcpServerRequest, ListMcpServerToolsRequest, McpError,
    McpServer, McpServerState, ServerRequest, ServerRequestAnswer, StreamMcpToolCallRequest,
    StreamableHttpTransport, Tool, content, create_mcp_server_request,
    mcp_server_service_client::McpServerServiceClient, server_request_answer,
    stream_mcp_tool_call_request, stream_mcp_tool_call_response,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Request, Status, Streaming,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// The suite kills a client after 30 s; every step fits well inside that.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CREATE_TIMEOUT: Duration = Duration::from_secs(20);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The tools of `http-invalid-tool-headers` whose `x-mcp-header` annotations
/// are invalid, each with arguments its schema accepts, so that only mcpd's
/// refusal of the tool itself can keep the call from reaching the server.
const INVALID_HEADER_TOOLS: &[(&str, &str)] = &[
    ("invalid_empty_header", r#"{"value":"x"}"#),
    ("invalid_object_header", r#"{"data":{}}"#),
    ("invalid_array_header", r#"{"items":["x"]}"#),
    ("invalid_null_header", r#"{"nil":null}"#),
    (
        "invalid_duplicate_same_case",
        r#"{"field1":"x","field2":"y"}"#,
    ),
    (
        "invalid_duplicate_diff_case",
        r#"{"field1":"x","field2":"y"}"#,
    ),
    ("invalid_space_in_name", r#"{"value":"x"}"#),
    ("invalid_colon_in_name", r#"{"value":"x"}"#),
    ("invalid_non_ascii_name", r#"{"value":"x"}"#),
    ("invalid_control_char_name", r#"{"value":"x"}"#),
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mcpd-conformance-client: FAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let server_url = std::env::args()
        .skip(1)
        .last()
        .context("usage: mcpd-conformance-client <mcp-server-url> (the suite appends the URL)")?;
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO")
        .context("MCP_CONFORMANCE_SCENARIO is not set (the conformance suite sets it)")?;
    let context = match std::env::var("MCP_CONFORMANCE_CONTEXT") {
        Ok(raw) => {
            serde_json::from_str::<Value>(&raw).context("MCP_CONFORMANCE_CONTEXT is not JSON")?
        }
        Err(_) => Value::Null,
    };
    let plan = Plan::for_scenario(&scenario)?;

    let address = std::env::var("MCPD_ADDRESS")
        .context("MCPD_ADDRESS is not set (e.g. http://127.0.0.1:50051)")?;
    let api_key = api_key(&scenario)?;
    let client = connect(&address, &api_key).await?;

    log(
        &scenario,
        format!("registering {server_url} with mcpd at {address}"),
    );
    let mut session = Session::create(client, &scenario, &server_url, &context).await?;
    let outcome = plan.run(&mut session, &context).await;
    let closed = session.close().await;
    match (outcome, closed) {
        (Ok(()), Ok(())) => {
            log(&scenario, "done");
            Ok(())
        }
        (Err(err), Ok(())) => Err(err),
        (Ok(()), Err(err)) => Err(err),
        (Err(err), Err(close)) => Err(err.context(format!("and then: {close:#}"))),
    }
}

/// The API key to act with: `MCPD_API_KEY`, or, when `MCPD_KEYS_COMMAND`
/// names mcpd's binary (with `MCPD_DATABASE_URL`), a key of an organization
/// of this run's own. The suite runs scenarios at once, and several register
/// servers with the same tool names; separate organizations keep them apart,
/// as separate tenants would be.
fn api_key(scenario: &str) -> anyhow::Result<String> {
    let (Ok(mcpd), Ok(database)) = (
        std::env::var("MCPD_KEYS_COMMAND"),
        std::env::var("MCPD_DATABASE_URL"),
    ) else {
        return std::env::var("MCPD_API_KEY").context("MCPD_API_KEY is not set");
    };
    let org = server_name(scenario);
    let output = std::process::Command::new(&mcpd)
        .args(["keys", "create", "--org", &org, "--database-url", &database])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {mcpd} keys create"))?;
    if !output.status.success() {
        bail!("{mcpd} keys create --org {org} failed ({})", output.status);
    }
    Ok(String::from_utf8(output.stdout)
        .context("the key is not text")?
        .trim()
        .to_owned())
}

fn log(scenario: &str, message: impl std::fmt::Display) {
    eprintln!("[{scenario}] {message}");
}

/// Adds the API key to every call.
#[derive(Clone)]
struct ApiKey(MetadataValue<Ascii>);

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = McpServerServiceClient<InterceptedService<Channel, ApiKey>>;

async fn connect(address: &str, api_key: &str) -> anyhow::Result<Client> {
    let channel = Endpoint::from_shared(address.to_owned())
        .with_context(|| format!("MCPD_ADDRESS {address:?} is not a URI"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot reach mcpd at {address}"))?;
    let bearer = MetadataValue::try_from(format!("Bearer {api_key}"))
        .map_err(|_| anyhow!("MCPD_API_KEY holds characters a header cannot carry"))?;
    Ok(McpServerServiceClient::with_interceptor(
        channel,
        ApiKey(bearer),
    ))
}

/// A gRPC failure in words: which call, which code, what mcpd said.
fn rpc_error(what: &str, status: &Status) -> anyhow::Error {
    anyhow!(
        "{what}: mcpd answered {:?}: {}",
        status.code(),
        status.message()
    )
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The text items of a tool result, for messages.
fn text_of(content: &[Content]) -> String {
    let texts: Vec<&str> = content
        .iter()
        .filter_map(|item| match &item.kind {
            Some(content::Kind::Text(text)) => Some(text.text.as_str()),
            _ => None,
        })
        .collect();
    if texts.is_empty() {
        format!("{} content item(s), none of them text", content.len())
    } else {
        texts.join(" | ")
    }
}

/// The MCP server as registered with mcpd for this run.
struct Session {
    client: Client,
    scenario: String,
    server_id: String,
    /// The tools mcpd stored and could not store, as CreateMcpServer said.
    failed_tools: Vec<FailedTool>,
}

impl Session {
    async fn create(
        mut client: Client,
        scenario: &str,
        url: &str,
        context: &Value,
    ) -> anyhow::Result<Self> {
        let request = CreateMcpServerRequest {
            server_name: server_name(scenario),
            transport: Some(create_mcp_server_request::Transport::StreamableHttp(
                StreamableHttpTransport {
                    url: url.to_owned(),
                    headers: context_headers(context)?,
                    // Machine-to-machine scenarios get client credentials;
                    // a pre-registered client goes with the browser flow.
                    oauth: if scenario.starts_with("auth/client-credentials") {
                        context_oauth(context)?
                    } else {
                        context_client(context)
                    },
                },
            )),
            tool_prefix: String::new(),
        };
        let created = client
            .create_mcp_server(with_timeout(request, CREATE_TIMEOUT))
            .await
            .map_err(|s| rpc_error("CreateMcpServer", &s))?
            .into_inner();
        let mut server = created
            .server
            .context("CreateMcpServer answered without a server")?;
        let mut failed_tools = created.failed_tools;
        if server.state() == McpServerState::AuthorizationPending {
            log(scenario, "waits for authorization");
            server = authorize(&mut client, scenario, server).await?;
            failed_tools.clear();
        }
        log(
            scenario,
            format!(
                "registered as {} with {} tool(s) stored{}",
                server.id,
                server.tool_count,
                if failed_tools.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} refused: {}",
                        failed_tools.len(),
                        failed_tools
                            .iter()
                            .map(|f| format!("{} ({})", f.name, f.reason))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            ),
        );
        Ok(Session {
            client,
            scenario: scenario.to_owned(),
            server_id: server.id,
            failed_tools,
        })
    }

    fn log(&self, message: impl std::fmt::Display) {
        log(&self.scenario, message);
    }

    async fn server(&mut self) -> anyhow::Result<McpServer> {
        self.client
            .get_mcp_server(with_timeout(
                GetMcpServerRequest {
                    server_id: self.server_id.clone(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(|s| rpc_error("GetMcpServer", &s))?
            .into_inner()
            .server
            .context("GetMcpServer answered without a server")
    }

    async fn waits_for_authorization(&mut self) -> anyhow::Result<bool> {
        Ok(self.server().await?.state() == McpServerState::AuthorizationPending)
    }

    async fn authorize_again(&mut self) -> anyhow::Result<()> {
        let server = self.server().await?;
        authorize(&mut self.client, &self.scenario, server).await?;
        Ok(())
    }

    /// Every stored tool of the server, read back from mcpd's registry
    /// (ListMcpServerTools, all pages): what a caller of mcpd sees.
    async fn tools(&mut self) -> anyhow::Result<Vec<Tool>> {
        let mut tools = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client
                .list_mcp_server_tools(with_timeout(
                    ListMcpServerToolsRequest {
                        server_id: self.server_id.clone(),
                        page_size: 1000,
                        page_token: page_token.clone(),
                    },
                    CALL_TIMEOUT,
                ))
                .await
                .map_err(|s| rpc_error("ListMcpServerTools", &s))?
                .into_inner();
            tools.extend(page.tools);
            if page.next_page_token.is_empty() {
                return Ok(tools);
            }
            page_token = page.next_page_token;
        }
    }

    async fn tool(&mut self, name: &str) -> anyhow::Result<Tool> {
        let tools = self.tools().await?;
        let names: Vec<String> = tools.iter().map(|t| t.name.clone()).collect();
        tools
            .into_iter()
            .find(|t| t.name == name)
            .with_context(|| format!("mcpd stored no tool {name:?} (it stored {names:?})"))
    }

    /// CallMcpTool, unary, on the server's live session. `Err(Status)` when
    /// mcpd refused or failed the call.
    async fn call_status(
        &mut self,
        tool: &str,
        arguments_json: String,
    ) -> Result<CallMcpToolResponse, Status> {
        self.log(format!("CallMcpTool {tool} {arguments_json}"));
        self.client
            .call_mcp_tool(with_timeout(
                CallMcpToolRequest {
                    server_id: self.server_id.clone(),
                    tool_name: tool.to_owned(),
                    arguments_json,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// CallMcpTool that must succeed with a result that is not an error.
    async fn call(
        &mut self,
        tool: &str,
        arguments_json: String,
    ) -> anyhow::Result<CallMcpToolResponse> {
        let result = self
            .call_status(tool, arguments_json)
            .await
            .map_err(|s| rpc_error(&format!("CallMcpTool {tool}"), &s))?;
        expect_success(tool, result, |m| self.log(m))
    }

    /// Opens StreamMcpToolCall for one call.
    async fn stream(&mut self, tool: &str, arguments: &Value) -> anyhow::Result<ToolStream> {
        self.log(format!("StreamMcpToolCall {tool} {arguments}"));
        let (tx, rx) = mpsc::channel(8);
        tx.send(StreamMcpToolCallRequest {
            message: Some(stream_mcp_tool_call_request::Message::Call(
                CallMcpToolRequest {
                    server_id: self.server_id.clone(),
                    tool_name: tool.to_owned(),
                    arguments_json: arguments.to_string(),
                },
            )),
        })
        .await
        .map_err(|_| anyhow!("StreamMcpToolCall {tool}: the request stream closed early"))?;
        let responses = self
            .client
            .clone()
            .stream_mcp_tool_call(with_timeout(ReceiverStream::new(rx), CALL_TIMEOUT))
            .await
            .map_err(|s| rpc_error(&format!("StreamMcpToolCall {tool}"), &s))?
            .into_inner();
        Ok(ToolStream {
            tool: tool.to_owned(),
            scenario: self.scenario.clone(),
            tx,
            responses,
        })
    }

    async fn close(mut self) -> anyhow::Result<()> {
        let closed = self
            .client
            .close_mcp_server(with_timeout(
                CloseMcpServerRequest {
                    server_id: self.server_id.clone(),
                },
                CLOSE_TIMEOUT,
            ))
            .await
            .map_err(|s| rpc_error("CloseMcpServer", &s))?
            .into_inner();
        self.log(format!(
            "closed {} ({} tool(s) removed)",
            closed.server_id, closed.removed_tools
        ));
        Ok(())
    }
}

fn expect_success(
    tool: &str,
    result: CallMcpToolResponse,
    log: impl FnOnce(String),
) -> anyhow::Result<CallMcpToolResponse> {
    if result.is_error {
        bail!(
            "tool {tool} reported an error: {}",
            text_of(&result.content)
        );
    }
    log(format!("{tool} answered: {}", text_of(&result.content)));
    Ok(result)
}

/// A server name mcpd accepts (letters, digits, '.', '_', '-') that is unique
/// per run, so concurrent scenarios never collide.
fn server_name(scenario: &str) -> String {
    let slug: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("conformance-{slug}-{}", std::process::id())
}

/// Client credentials the scenario gives (auth/client-credentials-*): a
/// client id with a secret, or with a private key to sign JWTs with.
fn context_oauth(context: &Value) -> anyhow::Result<Option<mcpd::proto::OAuth>> {
    use mcpd::proto::{ClientCredentials, OAuth, PrivateKeyJwt, client_credentials::Credential};
    let Some(client_id) = context.get("client_id").and_then(Value::as_str) else {
        return Ok(None);
    };
    let text = |key: &str| context.get(key).and_then(Value::as_str).map(str::to_owned);
    let credential = if let Some(secret) = text("client_secret") {
        Credential::ClientSecret(secret)
    } else if let Some(pem) = text("private_key_pem") {
        Credential::PrivateKeyJwt(PrivateKeyJwt {
            private_key_pem: pem,
            algorithm: text("signing_algorithm").unwrap_or_else(|| "ES256".to_owned()),
        })
    } else {
        bail!("MCP_CONFORMANCE_CONTEXT has a client_id but no client_secret or private_key_pem");
    };
    Ok(Some(OAuth {
        client_credentials: Some(ClientCredentials {
            client_id: client_id.to_owned(),
            credential: Some(credential),
        }),
        scopes: Vec::new(),
        ..Default::default()
    }))
}

/// A client registered ahead of time (auth/pre-registration): for the
/// authorization code flow.
fn context_client(context: &Value) -> Option<mcpd::proto::OAuth> {
    let text = |key: &str| context.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(mcpd::proto::OAuth {
        client_id: text("client_id")?,
        client_secret: text("client_secret").unwrap_or_default(),
        ..Default::default()
    })
}

/// Most authorization URLs one run follows (a step-up asks again).
const MAX_AUTHORIZATIONS: usize = 4;
/// How long mcpd gets to finish an authorization after the browser is back.
const AUTHORIZATION_TIMEOUT: Duration = Duration::from_secs(15);

/// What a person does with a server waiting for authorization: open its
/// authorization URL in a browser. The suite's authorization servers
/// approve at once and redirect to mcpd's callback, so following every
/// redirect with a plain HTTP client lands there; then GetMcpServer shows
/// how it ended. Returns the server once READY.
async fn authorize(
    client: &mut Client,
    scenario: &str,
    mut server: McpServer,
) -> anyhow::Result<McpServer> {
    let browser = reqwest::Client::builder()
        .timeout(AUTHORIZATION_TIMEOUT)
        .build()
        .context("an HTTP client")?;
    for _ in 0..MAX_AUTHORIZATIONS {
        match server.state() {
            McpServerState::Ready => return Ok(server),
            McpServerState::Error => bail!(
                "mcpd could not authorize the server: {}",
                server.state_reason
            ),
            _ => {}
        }
        let url = server.authorization_url.clone();
        if url.is_empty() {
            bail!("the server waits for authorization but mcpd gave no authorization URL");
        }
        log(scenario, "opening the authorization URL");
        match browser.get(&url).send().await {
            Ok(page) => log(
                scenario,
                format!(
                    "the browser landed on {} (HTTP {})",
                    page.url(),
                    page.status()
                ),
            ),
            Err(err) => log(scenario, format!("the browser failed: {err}")),
        }
        let deadline = tokio::time::Instant::now() + AUTHORIZATION_TIMEOUT;
        loop {
            server = client
                .get_mcp_server(with_timeout(
                    GetMcpServerRequest {
                        server_id: server.id.clone(),
                    },
                    CALL_TIMEOUT,
                ))
                .await
                .map_err(|s| rpc_error("GetMcpServer", &s))?
                .into_inner()
                .server
                .context("GetMcpServer answered without a server")?;
            let moved = server.state() != McpServerState::AuthorizationPending
                || server.authorization_url != url;
            if moved {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the server still waits for authorization {AUTHORIZATION_TIMEOUT:?} after the browser came back"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    bail!("mcpd asked for authorization more than {MAX_AUTHORIZATIONS} times")
}

/// Request headers a scenario asks the client to send, from the context's
/// `headers` object, if it has one.
fn context_headers(context: &Value) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let Some(headers) = context.get("headers") else {
        return Ok(Default::default());
    };
    let headers = headers
        .as_object()
        .context("MCP_CONFORMANCE_CONTEXT.headers is not an object")?;
    headers
        .iter()
        .map(|(name, value)| match value {
            Value::String(v) => Ok((name.clone(), v.clone())),
            other => Err(anyhow!(
                "header {name} in the context is not a string: {other}"
            )),
        })
        .collect()
}

/// One StreamMcpToolCall in progress.
struct ToolStream {
    tool: String,
    scenario: String,
    tx: mpsc::Sender<StreamMcpToolCallRequest>,
    responses: Streaming<mcpd::proto::StreamMcpToolCallResponse>,
}

/// What a stream brought that the caller must act on.
enum Event {
    Request(ServerRequest),
    Result(CallMcpToolResponse),
}

impl ToolStream {
    /// The next request of the server or the result; progress and log
    /// messages are printed and skipped.
    async fn next(&mut self) -> anyhow::Result<Event> {
        use stream_mcp_tool_call_response::Message;
        loop {
            let message = self
                .responses
                .message()
                .await
                .map_err(|s| rpc_error(&format!("StreamMcpToolCall {}", self.tool), &s))?
                .with_context(|| {
                    format!(
                        "StreamMcpToolCall {}: mcpd ended the stream without a result",
                        self.tool
                    )
                })?;
            match message.message {
                Some(Message::Progress(p)) => log(
                    &self.scenario,
                    format!(
                        "{}: progress {} of {:?} {}",
                        self.tool, p.progress, p.total, p.message
                    ),
                ),
                Some(Message::Log(l)) => log(
                    &self.scenario,
                    format!(
                        "{}: log {} {} {}",
                        self.tool, l.level, l.logger, l.data_json
                    ),
                ),
                Some(Message::Request(request)) => {
                    log(
                        &self.scenario,
                        format!(
                            "{}: the server asks {} {}",
                            self.tool, request.method, request.params_json
                        ),
                    );
                    return Ok(Event::Request(request));
                }
                Some(Message::Result(result)) => return Ok(Event::Result(result)),
                None => bail!(
                    "StreamMcpToolCall {}: mcpd sent an empty message",
                    self.tool
                ),
            }
        }
    }

    async fn answer(
        &self,
        request: &ServerRequest,
        outcome: server_request_answer::Outcome,
    ) -> anyhow::Result<()> {
        log(
            &self.scenario,
            format!(
                "{}: answering {} with {outcome:?}",
                self.tool, request.method
            ),
        );
        self.tx
            .send(StreamMcpToolCallRequest {
                message: Some(stream_mcp_tool_call_request::Message::Answer(
                    ServerRequestAnswer {
                        request_id: request.request_id.clone(),
                        outcome: Some(outcome),
                    },
                )),
            })
            .await
            .map_err(|_| {
                anyhow!(
                    "StreamMcpToolCall {}: mcpd stopped reading the stream before the answer",
                    self.tool
                )
            })
    }

    /// Answers every request of the server with `answer` until the result
    /// arrives; the result must not be an error. Returns it with the number
    /// of requests answered.
    async fn finish(
        mut self,
        answer: impl Fn(&ServerRequest) -> server_request_answer::Outcome,
    ) -> anyhow::Result<(CallMcpToolResponse, usize)> {
        let mut answered = 0;
        loop {
            match self.next().await? {
                Event::Request(request) => {
                    self.answer(&request, answer(&request)).await?;
                    answered += 1;
                }
                Event::Result(result) => {
                    let tool = self.tool.clone();
                    let scenario = self.scenario.clone();
                    let result = expect_success(&tool, result, |m| log(&scenario, m))?;
                    return Ok((result, answered));
                }
            }
        }
    }

    /// Like `finish`, for a call whose server must ask for input first.
    async fn finish_after_input(
        self,
        answer: impl Fn(&ServerRequest) -> server_request_answer::Outcome,
    ) -> anyhow::Result<CallMcpToolResponse> {
        let tool = self.tool.clone();
        let (result, answered) = self.finish(answer).await?;
        if answered == 0 {
            bail!(
                "{tool}: mcpd returned the result without relaying the server's request for input: {}",
                text_of(&result.content)
            );
        }
        Ok(result)
    }
}

/// The answer the reference client gives an elicitation: accept with this
/// content. Requests the reference client would not answer are refused.
fn accept_elicitation(content: Value) -> impl Fn(&ServerRequest) -> server_request_answer::Outcome {
    move |request| {
        if request.method == "elicitation/create" {
            server_request_answer::Outcome::ResultJson(
                json!({"action": "accept", "content": content}).to_string(),
            )
        } else {
            server_request_answer::Outcome::Error(McpError {
                code: -32601,
                message: format!("the conformance client does not answer {}", request.method),
            })
        }
    }
}

/// Runs the steps of a scenario one after another and reports every step
/// that failed, not only the first, so one run shows all that is missing.
#[derive(Default)]
struct Steps {
    failures: Vec<String>,
}

impl Steps {
    async fn run<T>(
        &mut self,
        name: &str,
        step: impl Future<Output = anyhow::Result<T>>,
    ) -> Option<T> {
        match step.await {
            Ok(value) => Some(value),
            Err(err) => {
                self.failures.push(format!("{name}: {err:#}"));
                None
            }
        }
    }

    fn fail(&mut self, name: &str, why: impl std::fmt::Display) {
        self.failures.push(format!("{name}: {why}"));
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "{} step(s) failed:\n  - {}",
                self.failures.len(),
                self.failures.join("\n  - ")
            ))
        }
    }
}

/// What the reference client does for each scenario it knows.
enum Plan {
    /// initialize, tools_call: list the tools, call the first one with
    /// `{a: 2, b: 3}` if there is one.
    Basic,
    /// json-schema-ref-no-deref: list the tools (and probe mcpd's argument
    /// check once); mcpd must not fetch the network `$ref` in `lookup_user`'s
    /// schema.
    ListOnly,
    /// json-schema-2020-12-preservation: echo the stored schema of
    /// `json_schema_2020_12_tool` through `json_schema_echo`.
    SchemaEcho,
    /// request-metadata: discovery and tools/list, both done by
    /// CreateMcpServer.
    Discover,
    /// sse-retry: call `test_reconnection`, whose result arrives only after
    /// mcpd resumes the closed SSE stream.
    SseRetry,
    /// elicitation-sep1034-client-defaults: call
    /// `test_client_elicitation_defaults` on the stream, accept the
    /// elicitation with empty content (mcpd fills in the defaults).
    ElicitationDefaults,
    /// sep-2322-client-request-state: the MRTR round trips.
    Mrtr,
    /// http-standard-headers: call every tool.
    StandardHeaders,
    /// http-custom-headers: the calls the context lists.
    CustomHeaders,
    /// http-invalid-tool-headers: call `valid_tool`; mcpd must not call the
    /// tools with invalid `x-mcp-header` annotations.
    InvalidToolHeaders,
    /// auth/*: list the tools and call `test-tool`.
    Auth,
}

impl Plan {
    fn for_scenario(scenario: &str) -> anyhow::Result<Plan> {
        Ok(match scenario {
            "initialize" | "tools_call" | "tools-call" => Plan::Basic,
            "json-schema-ref-no-deref" => Plan::ListOnly,
            "json-schema-2020-12-preservation" => Plan::SchemaEcho,
            "request-metadata" => Plan::Discover,
            "sse-retry" => Plan::SseRetry,
            "elicitation-sep1034-client-defaults" | "elicitation-defaults" => {
                Plan::ElicitationDefaults
            }
            "sep-2322-client-request-state" => Plan::Mrtr,
            "http-standard-headers" => Plan::StandardHeaders,
            "http-custom-headers" => Plan::CustomHeaders,
            "http-invalid-tool-headers" => Plan::InvalidToolHeaders,
            auth if auth.starts_with("auth/") => Plan::Auth,
            other => bail!("unknown scenario {other:?}: this client has no plan for it"),
        })
    }

    async fn run(&self, s: &mut Session, context: &Value) -> anyhow::Result<()> {
        match self {
            Plan::Basic => {
                let tools = s.tools().await?;
                match tools.first() {
                    Some(tool) => {
                        let name = tool.name.clone();
                        s.call(&name, json!({"a": 2, "b": 3}).to_string()).await?;
                    }
                    None => s.log("the server has no tools; nothing to call"),
                }
                Ok(())
            }
            Plan::ListOnly => {
                let tool = s.tool("lookup_user").await?;
                if !tool
                    .input_schema_json
                    .contains("/canary/profile-schema.json")
                {
                    bail!(
                        "the stored schema of lookup_user lost its network $ref: {}",
                        tool.input_schema_json
                    );
                }
                // The reference client stops after listing. mcpd also checks
                // arguments against the stored schema before it calls, and
                // compiling that schema is where a network $ref could be
                // fetched; so this client calls once more. The scenario's
                // server answers nothing but tools/list, so any answer but a
                // refusal of these (valid) arguments will do.
                match s
                    .call_status("lookup_user", r#"{"id":"user-1"}"#.to_owned())
                    .await
                {
                    Err(status) if status.code() == Code::InvalidArgument => Err(rpc_error(
                        "CallMcpTool lookup_user with arguments its schema accepts",
                        &status,
                    )),
                    Err(status) => {
                        s.log(format!(
                            "lookup_user: {:?} (expected: the server serves only tools/list): {}",
                            status.code(),
                            status.message()
                        ));
                        Ok(())
                    }
                    Ok(result) => {
                        s.log(format!(
                            "lookup_user answered: {}",
                            text_of(&result.content)
                        ));
                        Ok(())
                    }
                }
            }
            Plan::SchemaEcho => {
                let focal = s.tool("json_schema_2020_12_tool").await?;
                // The schema goes back as mcpd stored it, byte for byte.
                let arguments = format!(r#"{{"schema":{}}}"#, focal.input_schema_json);
                s.call("json_schema_echo", arguments).await?;
                Ok(())
            }
            Plan::Discover => {
                let tools = s.tools().await?;
                s.log(format!("{} tool(s) listed", tools.len()));
                Ok(())
            }
            Plan::SseRetry => {
                s.call("test_reconnection", "{}".to_owned()).await?;
                Ok(())
            }
            Plan::ElicitationDefaults => {
                s.tool("test_client_elicitation_defaults").await?;
                let stream = s
                    .stream("test_client_elicitation_defaults", &json!({}))
                    .await?;
                stream
                    .finish_after_input(accept_elicitation(json!({})))
                    .await?;
                Ok(())
            }
            Plan::Mrtr => mrtr(s).await,
            Plan::StandardHeaders => {
                let mut steps = Steps::default();
                let tools = s.tools().await?;
                if tools.is_empty() {
                    bail!("mcpd stored no tools");
                }
                for tool in tools {
                    steps
                        .run(&tool.name, s.call(&tool.name, "{}".to_owned()))
                        .await;
                }
                steps.finish()
            }
            Plan::CustomHeaders => custom_headers(s, context).await,
            Plan::InvalidToolHeaders => invalid_tool_headers(s).await,
            Plan::Auth => {
                s.tools().await?;
                match s.call("test-tool", "{}".to_owned()).await {
                    Ok(_) => Ok(()),
                    // The server wants more scope: mcpd waits for a person
                    // to grant it, then the call goes again.
                    Err(err) if s.waits_for_authorization().await? => {
                        s.log(format!("{err:#}"));
                        s.authorize_again().await?;
                        s.call("test-tool", "{}".to_owned()).await.map(|_| ())
                    }
                    Err(err) => Err(err),
                }
            }
        }
    }
}

/// sep-2322-client-request-state, as the reference client runs it: each
/// MRTR tool asks for input (an elicitation, which mcpd relays on the
/// stream); between the request and the answer of the first one an unrelated
/// call must go out clean; a result without `resultType` is complete.
async fn mrtr(s: &mut Session) -> anyhow::Result<()> {
    let mut steps = Steps::default();
    let confirm = || accept_elicitation(json!({"confirmed": true}));

    // 1. test_mrtr_echo_state: requestState must come back unchanged.
    let echo = async {
        let mut stream = s.stream("test_mrtr_echo_state", &json!({})).await?;
        match stream.next().await? {
            Event::Request(request) => {
                // An unrelated call while the first waits for its input: it
                // must carry neither inputResponses nor requestState.
                let unrelated = s.call("test_mrtr_unrelated", "{}".to_owned()).await;
                stream.answer(&request, confirm()(&request)).await?;
                stream.finish(confirm()).await?;
                unrelated.map(|_| ()).context("test_mrtr_unrelated")
            }
            Event::Result(result) => bail!(
                "mcpd returned a result without relaying the server's input request: {}",
                text_of(&result.content)
            ),
        }
    };
    steps.run("test_mrtr_echo_state", echo).await;

    // 2. test_mrtr_no_state: no requestState sent, none may come back.
    let no_state = async {
        let stream = s.stream("test_mrtr_no_state", &json!({})).await?;
        stream.finish_after_input(confirm()).await
    };
    steps.run("test_mrtr_no_state", no_state).await;

    // 3. test_mrtr_no_result_type: complete, nothing to retry.
    if let Some(result) = steps
        .run(
            "test_mrtr_no_result_type",
            s.call("test_mrtr_no_result_type", "{}".to_owned()),
        )
        .await
        && !text_of(&result.content).contains("no-result-type-test-ok")
    {
        steps.fail(
            "test_mrtr_no_result_type",
            format!("unexpected result: {}", text_of(&result.content)),
        );
    }
    steps.finish()
}

/// http-custom-headers: the calls the context lists (`toolCalls`), in order.
///
/// An argument whose value is JSON null is left out: mcpd checks arguments
/// against the tool's input schema before it calls (issue 8) and `null` is
/// not a `boolean`, so a caller that means "no value" omits the key. SEP-2243
/// treats an absent and a null value alike (the header is omitted), which is
/// what `test_custom_headers_null` checks.
async fn custom_headers(s: &mut Session, context: &Value) -> anyhow::Result<()> {
    let calls = context
        .get("toolCalls")
        .and_then(Value::as_array)
        .context("MCP_CONFORMANCE_CONTEXT has no toolCalls list")?;
    let mut steps = Steps::default();
    for call in calls {
        let name = call
            .get("name")
            .and_then(Value::as_str)
            .context("a toolCalls entry has no name")?;
        let arguments: BTreeMap<&String, &Value> = call
            .get("arguments")
            .and_then(Value::as_object)
            .map(|args| args.iter().filter(|(_, v)| !v.is_null()).collect())
            .unwrap_or_default();
        let arguments = serde_json::to_string(&arguments)?;
        steps.run(name, s.call(name, arguments)).await;
    }
    steps.finish()
}

/// http-invalid-tool-headers: `valid_tool` must work; every tool whose
/// `x-mcp-header` annotation is invalid must be refused by mcpd (not stored,
/// so NOT_FOUND), and a call to it must never reach the server.
async fn invalid_tool_headers(s: &mut Session) -> anyhow::Result<()> {
    let mut steps = Steps::default();
    let stored: Vec<String> = s.tools().await?.into_iter().map(|t| t.name).collect();
    steps
        .run(
            "valid_tool",
            s.call("valid_tool", r#"{"region":"us-west1"}"#.to_owned()),
        )
        .await;
    let refused: Vec<String> = s.failed_tools.iter().map(|f| f.name.clone()).collect();
    s.log(format!(
        "stored {stored:?}; reported as refused {refused:?} (rmcp drops invalid tools from tools/list before mcpd sees them)"
    ));
    for (name, arguments) in INVALID_HEADER_TOOLS {
        if stored.iter().any(|n| n == name) {
            steps.fail(
                name,
                "mcpd stored this tool although its x-mcp-header is invalid",
            );
        }
        match s.call_status(name, (*arguments).to_owned()).await {
            Ok(result) => steps.fail(
                name,
                format!(
                    "mcpd called this tool although its x-mcp-header is invalid (it answered: {})",
                    text_of(&result.content)
                ),
            ),
            Err(status) if status.code() == Code::NotFound => {
                s.log(format!("{name}: refused, NOT_FOUND"))
            }
            Err(status) => s.log(format!(
                "{name}: refused, {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }
    steps.finish()
}

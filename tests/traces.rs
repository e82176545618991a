//! Traces from the `mcpd` binary, as operators run it with `--otlp-endpoint`,
//! to a real OTLP/gRPC trace receiver in the test: a span per RPC, its MCP
//! and database work as children, the caller's `traceparent` honoured, no
//! secret in any exported byte, the last spans flushed at SIGTERM, nothing
//! sent without the flag.
//!
//! The binary, not an in-process daemon: the trace layer belongs to the
//! process-wide subscriber, which a test process can set only once (and the
//! other tests set without traces), and the flush at SIGTERM is `main`'s.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use prost::Message;
use tonic::{Code, transport::server::TcpIncoming};

backend_tests!(every_call_is_a_span_with_its_mcp_and_database_work_under_it);

const ENV_SECRET: &str = "env-secret-4f1c9a";
const HEADER_SECRET: &str = "header-secret-77b2e0";
const ARGUMENT_SECRET: &str = "argument-secret-c3d5e8";

/// What the daemon exported, as received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC trace receiver on a port of its own.
struct Receiver {
    addr: SocketAddr,
    received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let service = TraceServiceServer::new(received.clone());
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .expect("the receiver serves");
        });
        Receiver {
            addr,
            received,
            server,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.received.0.lock().unwrap().clone()
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut spans = Vec::new();
        for request in self.requests() {
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| string_attr(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        spans.push((service.clone(), span));
                    }
                }
            }
        }
        spans
    }

    /// Every byte received, as the daemon encoded it.
    fn bytes(&self) -> Vec<u8> {
        self.requests()
            .iter()
            .flat_map(Message::encode_to_vec)
            .collect()
    }

    /// Waits for the span named `name` whose attribute `key` is `value`.
    async fn span(&self, name: &str, key: &str, value: &str) -> Span {
        wait_for(
            &format!("an exported span {name} with {key}={value}"),
            Duration::from_secs(20),
            async || {
                self.spans().into_iter().find_map(|(_, span)| {
                    (span.name == name
                        && string_attr(&span.attributes, key).as_deref() == Some(value))
                    .then_some(span)
                })
            },
        )
        .await
    }

    /// Waits for a span named `name` under `parent`.
    async fn child(&self, parent: &Span, name: &str) -> Span {
        wait_for(
            &format!("a span {name} under {}", parent.name),
            Duration::from_secs(20),
            async || self.children(parent).into_iter().find(|s| s.name == name),
        )
        .await
    }

    /// The spans whose parent is `parent`.
    fn children(&self, parent: &Span) -> Vec<Span> {
        self.spans()
            .into_iter()
            .map(|(_, span)| span)
            .filter(|span| {
                span.trace_id == parent.trace_id && span.parent_span_id == parent.span_id
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn status_code(span: &Span) -> StatusCode {
    span.status
        .as_ref()
        .and_then(|s| StatusCode::try_from(s.code).ok())
        .unwrap_or(StatusCode::Unset)
}

const SERVICE: &str = "mcpd.v1.McpServerService";

fn rpc_name(method: &str) -> String {
    format!("{SERVICE}/{method}")
}

/// `mcpd keys create`: the key is the one line on stdout.
async fn create_key(db: &TestDb, org: &str) -> String {
    let output = mcpd_command()
        .args([
            "keys",
            "create",
            "--org",
            org,
            "--database-url",
            &db.cli_url(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `mcpd serve` on `db`, exporting to `otlp` if given, logging at
/// `rust_log` (which must let `mcpd::api` announce the address at info),
/// with `env` set; spans go out in batches every `batch_delay`.
async fn serve(
    db: &TestDb,
    otlp: Option<&Receiver>,
    rust_log: &str,
    batch_delay: Duration,
    env: &[(&str, String)],
) -> McpdProcess {
    let mut command = serve_command(db, rust_log);
    command.env(
        "OTEL_BSP_SCHEDULE_DELAY",
        batch_delay.as_millis().to_string(),
    );
    for (name, value) in env {
        command.env(name, value);
    }
    if let Some(receiver) = otlp {
        command.args(["--otlp-endpoint", &receiver.endpoint()]);
    }
    start_mcpd(command).await
}

/// SIGTERM; the daemon must exit cleanly. Returns its log.
async fn stop(daemon: McpdProcess) -> String {
    let (status, log) = stop_mcpd(daemon).await;
    assert!(status.success(), "{status:?}\n{log}");
    log
}

const QUICK: Duration = Duration::from_millis(50);

async fn every_call_is_a_span_with_its_mcp_and_database_work_under_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = create_key(&db, "acme").await;
    let receiver = Receiver::start().await;
    let daemon = serve(&db, Some(&receiver), "info", QUICK, &[]).await;
    let acme = OrgClient::connect(daemon.addr, &key).await;

    // A stdio server with a secret in its environment, an HTTP one with a
    // secret header, a call with a secret argument, and a miss.
    let stdio_id = acme
        .create(
            "local",
            stdio(["--tools", "2"]).with("MCPD_TEST_TOKEN", ENV_SECRET),
        )
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    let http = HttpTestServer::start(["--tools", "1"]).await;
    let http_id = acme
        .create(
            "remote",
            streamable_http(&http.url).with("authorization", format!("Bearer {HEADER_SECRET}")),
        )
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    acme.call_tool(call(
        &stdio_id,
        "tool_0001",
        serde_json::json!({"x": 7, "note": ARGUMENT_SECRET}),
    ))
    .await
    .unwrap();
    // A refusal whose message quotes the argument (the caller's own input).
    let refused = acme
        .call_tool(call(
            &stdio_id,
            "tool_0001",
            serde_json::json!({"x": ARGUMENT_SECRET}),
        ))
        .await
        .unwrap_err();
    assert!(refused.message().contains(ARGUMENT_SECRET), "{refused:?}");
    let missing = uuid::Uuid::now_v7().to_string();
    assert_eq!(acme.get(&missing).await.unwrap_err().code(), Code::NotFound);
    // A server fault: the MCP server dies while listing.
    let crashed = acme
        .create("crashing", stdio(["--tools", "2", "--crash-during-list"]))
        .await
        .unwrap_err();
    assert_eq!(crashed.code(), Code::Unavailable, "{crashed:?}");

    let db_system = match backend {
        Backend::Postgres => "postgresql",
        Backend::Sqlite => "sqlite",
    };

    // The creates: server spans, OK, with the organization; the connect,
    // the listing and the write under them.
    let creates: Vec<Span> = wait_for("both creates' spans", Duration::from_secs(20), async || {
        let creates: Vec<Span> = receiver
            .spans()
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| {
                s.name == rpc_name("CreateMcpServer")
                    && int_attr(&s.attributes, "rpc.grpc.status_code") == Some(0)
            })
            .collect();
        (creates.len() == 2).then_some(creates)
    })
    .await;
    for create in &creates {
        assert_eq!(create.kind, SpanKind::Server as i32);
        assert!(create.parent_span_id.is_empty(), "a root span");
        assert_eq!(
            string_attr(&create.attributes, "rpc.system").as_deref(),
            Some("grpc")
        );
        assert_eq!(
            string_attr(&create.attributes, "rpc.service").as_deref(),
            Some(SERVICE)
        );
        assert_eq!(
            string_attr(&create.attributes, "rpc.method").as_deref(),
            Some("CreateMcpServer")
        );
        assert_eq!(
            int_attr(&create.attributes, "rpc.grpc.status_code"),
            Some(0)
        );
        assert_eq!(
            string_attr(&create.attributes, "mcpd.organization").as_deref(),
            Some("acme")
        );
        assert_ne!(status_code(create), StatusCode::Error);
    }
    for (server_id, transport) in [(&stdio_id, "stdio"), (&http_id, "streamable_http")] {
        let connect = receiver
            .span("mcp.connect", "mcpd.server.id", server_id)
            .await;
        let create = creates
            .iter()
            .find(|c| c.span_id == connect.parent_span_id)
            .expect("the connect is a child of a create's span");
        assert_eq!(connect.trace_id, create.trace_id);
        assert_eq!(connect.kind, SpanKind::Client as i32);
        assert_eq!(
            string_attr(&connect.attributes, "mcp.transport").as_deref(),
            Some(transport)
        );
        let list = receiver.child(create, "mcp.list_tools").await;
        assert_eq!(
            string_attr(&list.attributes, "mcpd.server.id").as_deref(),
            Some(server_id.as_str())
        );
        let writes: Vec<Span> = receiver
            .children(create)
            .into_iter()
            .filter(|s| s.name == "db.transaction")
            .collect();
        assert!(
            writes.iter().any(|w| {
                string_attr(&w.attributes, "db.operation.name").as_deref() == Some("persist")
            }),
            "the create's write: {writes:#?}"
        );
        for write in &writes {
            assert_eq!(
                string_attr(&write.attributes, "db.system").as_deref(),
                Some(db_system)
            );
            // The wait for a connection, inside the transaction's span.
            receiver.child(write, "db.acquire").await;
        }
    }

    // The call: the tool call under it, by tool name; its read of the target.
    // Both end although the first opened a live session that outlives it.
    let calls: Vec<Span> = wait_for("both calls' spans", Duration::from_secs(20), async || {
        let calls: Vec<Span> = receiver
            .spans()
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.name == rpc_name("CallMcpTool"))
            .collect();
        (calls.len() == 2).then_some(calls)
    })
    .await;
    let (call_span, refused_span) = match int_attr(&calls[0].attributes, "rpc.grpc.status_code") {
        Some(0) => (&calls[0], &calls[1]),
        _ => (&calls[1], &calls[0]),
    };
    assert_eq!(
        int_attr(&refused_span.attributes, "rpc.grpc.status_code"),
        Some(Code::InvalidArgument as i64)
    );
    let tool_call = receiver.child(call_span, "mcp.call_tool").await;
    assert_eq!(
        string_attr(&tool_call.attributes, "mcp.tool.name").as_deref(),
        Some("tool_0001")
    );
    assert_eq!(
        string_attr(&tool_call.attributes, "mcpd.server.id").as_deref(),
        Some(stdio_id.as_str())
    );
    let read = receiver.child(call_span, "db.transaction").await;
    assert_eq!(read.trace_id, call_span.trace_id);

    // The miss: NOT_FOUND, the caller's mistake, not the server's: the
    // code is on the span, its status is not an error (semantic conventions
    // for gRPC server spans); so is the refused call's.
    let get = receiver
        .span(&rpc_name("GetMcpServer"), "rpc.method", "GetMcpServer")
        .await;
    assert_eq!(
        int_attr(&get.attributes, "rpc.grpc.status_code"),
        Some(Code::NotFound as i64)
    );
    assert_eq!(status_code(&get), StatusCode::Unset);
    assert_eq!(status_code(refused_span), StatusCode::Unset);
    // UNAVAILABLE is the server's failure: an error span, its code's name
    // as the description.
    let crashed = wait_for(
        "the crashed create's span",
        Duration::from_secs(20),
        async || {
            receiver.spans().into_iter().find_map(|(_, s)| {
                (s.name == rpc_name("CreateMcpServer")
                    && int_attr(&s.attributes, "rpc.grpc.status_code")
                        == Some(Code::Unavailable as i64))
                .then_some(s)
            })
        },
    )
    .await;
    assert_eq!(status_code(&crashed), StatusCode::Error);
    assert_eq!(crashed.status.as_ref().unwrap().message, "UNAVAILABLE");

    // The resource names the service.
    assert!(
        receiver
            .spans()
            .iter()
            .all(|(service, _)| service == "mcpd")
    );

    // No secret, argument or URL anywhere in what was exported.
    let bytes = receiver.bytes();
    for needle in [
        ENV_SECRET,
        HEADER_SECRET,
        ARGUMENT_SECRET,
        http.url.as_str(),
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} was exported"
        );
    }
    stop(daemon).await;
    http.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callers_traceparent_makes_the_rpc_span_its_child() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let receiver = Receiver::start().await;
    let daemon = serve(&db, Some(&receiver), "info", QUICK, &[]).await;
    let acme = OrgClient::connect(daemon.addr, &key).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = acme.req(mcpd::proto::ListMcpServersRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    acme.raw().list_mcp_servers(request).await.unwrap();

    let list = receiver
        .span(&rpc_name("ListMcpServers"), "rpc.method", "ListMcpServers")
        .await;
    assert_eq!(hex::encode(&list.trace_id), trace_id);
    assert_eq!(hex::encode(&list.parent_span_id), caller_span);
    assert_eq!(list.trace_state, "vendor=opaque");
    // Its database read joins the caller's trace too.
    let read = receiver.child(&list, "db.transaction").await;
    assert_eq!(hex::encode(&read.trace_id), trace_id);
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_spans_go_out_at_sigterm_whatever_the_log_level() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let receiver = Receiver::start().await;
    // Batches far apart: only the flush at shutdown can send these spans.
    // Warnings only in the log, the listening line aside.
    let daemon = serve(
        &db,
        Some(&receiver),
        "warn,mcpd::api=info,mcpd::api::observe=warn",
        Duration::from_secs(600),
        &[],
    )
    .await;
    let acme = OrgClient::connect(daemon.addr, &key).await;
    let id = acme
        .create("local", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id;
    assert!(receiver.requests().is_empty(), "exported before the flush");

    let log = stop(daemon).await;
    // Exported before the process exited: no waiting needed.
    let spans: Vec<Span> = receiver.spans().into_iter().map(|(_, s)| s).collect();
    let create = spans
        .iter()
        .find(|s| s.name == rpc_name("CreateMcpServer"))
        .unwrap_or_else(|| panic!("the create's span was flushed: {spans:#?}\n{log}"));
    let connect = spans
        .iter()
        .find(|s| s.name == "mcp.connect")
        .expect("the connect's span, at warn");
    assert_eq!(connect.parent_span_id, create.span_id);
    assert_eq!(
        string_attr(&connect.attributes, "mcpd.server.id").as_deref(),
        Some(id.as_str())
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "db.transaction" && s.parent_span_id == create.span_id),
        "the create's write, at warn"
    );
    // The log stayed at its level: no info line but the listening one.
    assert!(!log.contains(" rpc "), "{log}");
}

/// A collector that is not there (a port that hangs up on every connection):
/// the daemon serves as before, and its log says, once, that spans are being
/// dropped, however many exports fail (the SDK's own diagnostics are off, so
/// without this an operator would see nothing at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_that_is_not_there_is_named_once_in_the_log() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let hang_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hang_up.local_addr().unwrap());
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = attempts.clone();
    let collector = tokio::spawn(async move {
        while let Ok((socket, _)) = hang_up.accept().await {
            counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(socket);
        }
    });
    let daemon = serve(
        &db,
        None,
        "info",
        QUICK,
        &[("MCPD_OTLP_ENDPOINT", endpoint)],
    )
    .await;
    let acme = OrgClient::connect(daemon.addr, &key).await;
    // Several failed exports: each create's spans, until three connections
    // were hung up on.
    let mut created = 0;
    wait_until(
        "three failed exports",
        Duration::from_secs(20),
        async || {
            created += 1;
            acme.create(&format!("server-{created}"), stdio(["--tools", "1"]))
                .await
                .unwrap();
            attempts.load(std::sync::atomic::Ordering::Relaxed) >= 3
        },
    )
    .await;
    let log = stop(daemon).await;
    collector.abort();
    assert_eq!(
        log.matches("the OTLP collector did not take spans").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_flag_nothing_is_exported() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let receiver = Receiver::start().await;
    // The SDK's own variables alone do not turn traces on.
    let daemon = serve(
        &db,
        None,
        "info",
        QUICK,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())],
    )
    .await;
    let acme = OrgClient::connect(daemon.addr, &key).await;
    acme.create("local", stdio(["--tools", "1"])).await.unwrap();
    // With the flag the spans would be out once the daemon has stopped (the
    // SIGTERM test): after a clean stop, nothing came.
    stop(daemon).await;
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn an_endpoint_that_is_not_plain_http_is_refused() {
    for endpoint in [
        "https://collector:4317",
        "collector:4317",
        "http://user:pw@collector:4317",
    ] {
        let output = mcpd_command()
            .args(["serve", "--otlp-endpoint", endpoint])
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{endpoint}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--otlp-endpoint"), "{stderr}");
        assert!(
            !stderr.contains("pw@"),
            "the credentials are not repeated: {stderr}"
        );
    }
}

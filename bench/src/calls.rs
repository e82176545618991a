//! Tool calls, for a stdio and a streamable HTTP test server, measured in
//! one run so the figures compare as ratios on a noisy machine:
//!
//! - (a) the floor: a direct rmcp client calling on one open session;
//! - (b) `CallMcpTool` through the daemon, on its live session;
//! - (c) connect-per-call, the old platform's pattern: open (spawn or HTTP
//!   handshake), initialize, call, close, done directly with rmcp.
//!
//! Then 100 concurrent callers, a probe that stalls the MCP server to see
//! what the daemon holds while calls wait on MCP I/O, and the daemon's RSS
//! with many live sessions.

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use mcpd::{
    api::{MCP_US_HEADER, PEAK_CONNECTIONS_HEADER},
    proto::{
        self, GetStatsRequest, GetStatsResponse, content, create_mcp_server_request::Transport,
        mcp_server_service_client::McpServerServiceClient,
    },
};
use rmcp::{
    RoleClient, ServiceExt,
    model::CallToolRequestParams,
    service::RunningService,
    transport::{
        StreamableHttpClientTransport, TokioChildProcess,
        streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::{
    env::{Daemon, Proc, start_http_server},
    stats::{round, summarize},
};

/// The organization the call scenario acts for.
pub const ORG: &str = "call";

/// Concurrent callers of the throughput run.
pub const CALLERS: usize = 100;

/// The daemon's `--max-calls-per-server` for this scenario: the 100 callers
/// all call one server, so the default of 32 would refuse most of them.
pub const MAX_CALLS_PER_SERVER: usize = 128;

/// Calls held on a stopped MCP server by the stall probe.
const STALLED_CALLS: usize = 20;

/// Registrations and first calls run this many at a time.
const SETUP_CONCURRENCY: usize = 16;

pub struct CallPlan {
    /// Sequential (a) and (b) calls, interleaved.
    pub runs: usize,
    /// Connect-per-call samples (c), spread over the same loop.
    pub fresh_runs: usize,
    /// Calls per concurrent caller.
    pub calls_per_caller: usize,
    /// Servers registered and called once for the memory figure.
    pub sessions: usize,
    /// How long the stall probe keeps the MCP server stopped.
    pub stall: Duration,
}

impl CallPlan {
    pub fn new(quick: bool) -> CallPlan {
        if quick {
            CallPlan {
                runs: 100,
                fresh_runs: 10,
                calls_per_caller: 2,
                sessions: 10,
                stall: Duration::from_millis(200),
            }
        } else {
            CallPlan {
                runs: 2_000,
                fresh_runs: 100,
                calls_per_caller: 50,
                sessions: 200,
                stall: Duration::from_millis(300),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stdio,
    Http,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stdio => "stdio",
            Kind::Http => "streamable_http",
        }
    }
}

/// An MCP server offering one tool, `<prefix>0000`.
struct Target {
    kind: Kind,
    /// The test server binary (an absolute path: the daemon's stdio allowlist
    /// matches it exactly).
    bin: String,
    /// `--tool-prefix`.
    prefix: String,
    /// For HTTP: the server process, kept alive, and its URL.
    http: Option<(Proc, String)>,
}

impl Target {
    async fn start(kind: Kind, bin: &str, prefix: String) -> anyhow::Result<Target> {
        let http = match kind {
            Kind::Stdio => None,
            Kind::Http => {
                Some(start_http_server(bin, &["--tools", "1", "--tool-prefix", &prefix]).await?)
            }
        };
        Ok(Target {
            kind,
            bin: bin.to_owned(),
            prefix,
            http,
        })
    }

    fn tool(&self) -> String {
        format!("{}0000", self.prefix)
    }

    fn stdio_args(&self) -> Vec<String> {
        ["--tools", "1", "--tool-prefix", &self.prefix]
            .map(str::to_owned)
            .to_vec()
    }

    fn url(&self) -> &str {
        self.http.as_ref().map_or("", |(_, url)| url.as_str())
    }

    fn create_request(&self, name: &str) -> proto::CreateMcpServerRequest {
        let transport = match self.kind {
            Kind::Stdio => Transport::Stdio(proto::StdioTransport {
                command: self.bin.clone(),
                args: self.stdio_args(),
                env: Default::default(),
            }),
            Kind::Http => Transport::StreamableHttp(proto::StreamableHttpTransport {
                url: self.url().to_owned(),
                headers: Default::default(),
                oauth: None,
            }),
        };
        proto::CreateMcpServerRequest {
            server_name: name.to_owned(),
            transport: Some(transport),
            tool_prefix: String::new(),
        }
    }

    /// A direct rmcp client session, initialized. For HTTP, `http` is the
    /// client it runs on (a fresh one means fresh TCP connections).
    async fn open(&self, http: reqwest::Client) -> anyhow::Result<Direct> {
        match self.kind {
            Kind::Stdio => {
                let mut command = tokio::process::Command::new(&self.bin);
                command.args(self.stdio_args());
                let (transport, _) = TokioChildProcess::builder(command)
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("spawning {}", self.bin))?;
                Ok(().serve(transport).await?)
            }
            Kind::Http => {
                let config = StreamableHttpClientTransportConfig::with_uri(self.url());
                let transport = StreamableHttpClientTransport::with_client(http, config);
                Ok(().serve(transport).await?)
            }
        }
    }
}

type Direct = RunningService<RoleClient, ()>;

fn arguments() -> serde_json::Map<String, Value> {
    let mut arguments = serde_json::Map::new();
    arguments.insert("x".into(), json!(1));
    arguments
}

/// One direct call; the answer must be the test server's echo.
async fn direct_call(peer: &rmcp::Peer<RoleClient>, tool: &str) -> anyhow::Result<()> {
    let result = peer
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments()))
        .await?;
    let echoed = result
        .content
        .iter()
        .any(|c| c.as_text().is_some_and(|t| t.text.contains(tool)));
    if result.is_error == Some(true) || !echoed {
        bail!("unexpected answer to {tool}: {result:?}");
    }
    Ok(())
}

/// (c): open, initialize, call, close.
async fn fresh_call(target: &Target, http: reqwest::Client) -> anyhow::Result<()> {
    let tool = target.tool();
    let direct = target.open(http).await?;
    let called = direct_call(direct.peer(), &tool).await;
    direct.cancel().await?;
    called
}

/// A fresh HTTP client: no pooled connection carried over from another
/// session. Built before the clock starts.
fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().build()?)
}

struct CallSample {
    total_ms: f64,
    mcp_ms: f64,
    peak: u64,
}

/// (b): one CallMcpTool; the answer must be the test server's echo.
async fn daemon_call(
    daemon: &Daemon,
    client: &mut McpServerServiceClient<Channel>,
    server_id: &str,
    tool: &str,
    deadline: Option<Duration>,
) -> Result<CallSample, tonic::Status> {
    let mut request = daemon.req(
        ORG,
        proto::CallMcpToolRequest {
            server_id: server_id.to_owned(),
            tool_name: tool.to_owned(),
            arguments_json: r#"{"x":1}"#.to_owned(),
        },
    );
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let started = Instant::now();
    let response = client.call_mcp_tool(request).await?;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let header = |name: &str| {
        response
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (mcp_us, peak) = (header(MCP_US_HEADER), header(PEAK_CONNECTIONS_HEADER));
    let body = response.into_inner();
    let echoed = body.content.iter().any(|c| match &c.kind {
        Some(content::Kind::Text(text)) => text.text.contains(tool),
        _ => false,
    });
    if body.is_error || !echoed {
        return Err(tonic::Status::internal(format!(
            "unexpected answer to {tool}: {body:?}"
        )));
    }
    Ok(CallSample {
        total_ms,
        mcp_ms: mcp_us as f64 / 1000.0,
        peak,
    })
}

async fn stats(daemon: &Daemon, reset: bool) -> anyhow::Result<GetStatsResponse> {
    Ok(daemon
        .admin()
        .get_stats(daemon.req(ORG, GetStatsRequest { reset_peaks: reset }))
        .await
        .context("GetStats")?
        .into_inner())
}

async fn register(daemon: &Daemon, target: &Target, name: &str) -> anyhow::Result<String> {
    let created = daemon
        .client()
        .create_mcp_server(daemon.req(ORG, target.create_request(name)))
        .await
        .with_context(|| format!("registering {name}"))?
        .into_inner();
    anyhow::ensure!(
        created.tools.len() == 1,
        "{name}: expected 1 tool, got {:?}",
        created
    );
    Ok(created.server.map(|s| s.id).unwrap_or_default())
}

async fn unregister(daemon: &Daemon, server_id: &str) -> Result<(), tonic::Status> {
    daemon
        .client()
        .close_mcp_server(daemon.req(
            ORG,
            proto::CloseMcpServerRequest {
                server_id: server_id.to_owned(),
            },
        ))
        .await
        .map(drop)
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { round(num / den) } else { 0.0 }
}

/// Everything for both transports; the daemon was started for this scenario
/// (stdio allowlist, `--max-calls-per-server` [`MAX_CALLS_PER_SERVER`]).
pub async fn run(
    daemon: &Daemon,
    test_server: &str,
    pool_size: u32,
    plan: &CallPlan,
) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for kind in [Kind::Stdio, Kind::Http] {
        let prefix = match kind {
            Kind::Stdio => "stdio_",
            Kind::Http => "http_",
        };
        let target = Target::start(kind, test_server, prefix.to_owned()).await?;
        let server_id = register(daemon, &target, &format!("call-{}", kind.name())).await?;
        let latency = latency(daemon, &target, &server_id, plan).await?;
        eprintln!("  call latency {}: {latency}", kind.name());
        rows.push(latency);
        let mut concurrent = concurrent(daemon, &target, &server_id, plan).await?;
        let probe = stall_probe(daemon, &target, &server_id, plan.stall).await?;
        if let (Value::Object(row), Value::Object(probe)) = (&mut concurrent, probe) {
            row.extend(probe);
        }
        concurrent["pool_size"] = json!(pool_size);
        // Held during MCP I/O: none if each call held at most one connection
        // at a time and calls waiting on a stopped server held none.
        let held_none = [
            &concurrent["peak_connections_per_call"],
            &concurrent["stalled_peak_connections_per_call"],
        ]
        .iter()
        .all(|peak| **peak == 1)
            && concurrent["stalled_samples"].as_u64() > Some(0)
            && concurrent["stalled_checked_out_seen"] == 0
            && concurrent["stalled_errors"] == 0;
        concurrent["targets"]["held_during_io_max"] = json!(0);
        concurrent["targets"]["held_during_io_met"] = json!(held_none);
        eprintln!("  call concurrent {}: {concurrent}", kind.name());
        rows.push(concurrent);
        unregister(daemon, &server_id).await?;
        let sessions = live_sessions(daemon, kind, test_server, plan.sessions).await?;
        eprintln!("  call sessions {}: {sessions}", kind.name());
        rows.push(sessions);
    }
    Ok(rows)
}

/// (a), (b) and (c) interleaved in one loop.
async fn latency(
    daemon: &Daemon,
    target: &Target,
    server_id: &str,
    plan: &CallPlan,
) -> anyhow::Result<Value> {
    let tool = target.tool();
    let mut client = daemon.client();
    let direct = target.open(http_client()?).await?;
    let peer = direct.peer().clone();

    // The first call through the daemon opens its live session.
    let started = Instant::now();
    let first = daemon_call(daemon, &mut client, server_id, &tool, None).await?;
    let first_ms = ms_since(started);
    let mut peak_per_call = first.peak;
    for _ in 0..20 {
        direct_call(&peer, &tool).await?;
        daemon_call(daemon, &mut client, server_id, &tool, None).await?;
    }

    let before = stats(daemon, false).await?;
    let (mut a, mut b, mut b_mcp, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut a_errors, mut b_errors, mut c_errors) = (0u64, 0u64, 0u64);
    // What an RPC costs the daemon before any tool work: a CallMcpTool
    // refused for want of an API key (the gRPC round trip), and GetStats
    // (the round trip and the API-key lookup).
    let (mut refused, mut authed) = (Vec::new(), Vec::new());
    let mut admin = daemon.admin();
    let every = (plan.runs / plan.fresh_runs.max(1)).max(1);
    for i in 0..plan.runs {
        // Alternate which goes first, so neither always follows (c).
        for first_direct in [i % 2 == 0, i % 2 == 1] {
            if first_direct {
                let started = Instant::now();
                match direct_call(&peer, &tool).await {
                    Ok(()) => a.push(ms_since(started)),
                    Err(err) => {
                        a_errors += 1;
                        eprintln!("direct call failed: {err:#}");
                    }
                }
            } else {
                match daemon_call(daemon, &mut client, server_id, &tool, None).await {
                    Ok(sample) => {
                        b.push(sample.total_ms);
                        b_mcp.push(sample.mcp_ms);
                        peak_per_call = peak_per_call.max(sample.peak);
                    }
                    Err(status) => {
                        b_errors += 1;
                        eprintln!("CallMcpTool failed: {status}");
                    }
                }
            }
        }
        let started = Instant::now();
        let answer = client
            .call_mcp_tool(proto::CallMcpToolRequest {
                server_id: server_id.to_owned(),
                tool_name: tool.clone(),
                arguments_json: r#"{"x":1}"#.to_owned(),
            })
            .await;
        if matches!(&answer, Err(status) if status.code() == tonic::Code::Unauthenticated) {
            refused.push(ms_since(started));
        }
        let started = Instant::now();
        if admin
            .get_stats(daemon.req(ORG, GetStatsRequest { reset_peaks: false }))
            .await
            .is_ok()
        {
            authed.push(ms_since(started));
        }
        if i % every == every - 1 {
            let http = http_client()?;
            let started = Instant::now();
            match fresh_call(target, http).await {
                Ok(()) => c.push(ms_since(started)),
                Err(err) => {
                    c_errors += 1;
                    eprintln!("connect-per-call failed: {err:#}");
                }
            }
        }
    }
    let after = stats(daemon, false).await?;
    direct.cancel().await?;

    let (sa, sb, sm, sc) = (
        summarize(&a),
        summarize(&b),
        summarize(&b_mcp),
        summarize(&c),
    );
    // Each GetStats (those in the loop and `after`) checked out one
    // connection for its API key.
    let checkouts = after
        .pool_checkouts
        .saturating_sub(before.pool_checkouts)
        .saturating_sub(1 + plan.runs as u64);
    let (rpc, rpc_authed) = (summarize(&refused), summarize(&authed));
    let b_over_a = ratio(sb.p50, sa.p50);
    let c_over_b = ratio(sc.p50, sb.p50);
    Ok(json!({
        "scenario": "call_latency",
        "transport": target.kind.name(),
        "runs": plan.runs,
        "fresh_runs": c.len(),
        "direct_p50_ms": round(sa.p50),
        "direct_p99_ms": round(sa.p99),
        "mcpd_p50_ms": round(sb.p50),
        "mcpd_p99_ms": round(sb.p99),
        "mcpd_mcp_p50_ms": round(sm.p50),
        "mcpd_mcp_p99_ms": round(sm.p99),
        "mcpd_first_call_ms": round(first_ms),
        // The daemon's own share, p50: b minus the MCP time it reports.
        "mcpd_outside_mcp_p50_ms": round(sb.p50 - sm.p50),
        "rpc_unauthenticated_p50_ms": round(rpc.p50),
        "rpc_get_stats_p50_ms": round(rpc_authed.p50),
        "connect_per_call_p50_ms": round(sc.p50),
        "connect_per_call_p99_ms": round(sc.p99),
        "mcpd_over_direct_p50": b_over_a,
        "mcpd_over_direct_p99": ratio(sb.p99, sa.p99),
        "connect_per_call_over_mcpd_p50": c_over_b,
        "errors": a_errors + b_errors + c_errors,
        "direct_errors": a_errors,
        "mcpd_errors": b_errors,
        "connect_per_call_errors": c_errors,
        "peak_connections_per_call": peak_per_call,
        "pool_checkouts_per_call": ratio(checkouts as f64, b.len() as f64),
        "session_opens": after.session_opens.saturating_sub(before.session_opens),
        "session_reuses": after.session_reuses.saturating_sub(before.session_reuses),
        "targets": {
            "mcpd_over_direct_p50_max": 1.3,
            "mcpd_over_direct_p50_met": b_over_a <= 1.3,
            "connect_per_call_over_mcpd_p50_min": if target.kind == Kind::Stdio { json!(10.0) } else { Value::Null },
            "connect_per_call_over_mcpd_p50_met": if target.kind == Kind::Stdio { json!(c_over_b >= 10.0) } else { Value::Null },
        },
    }))
}

/// [`CALLERS`] callers at once, each making `calls_per_caller` calls in a
/// row: directly on one rmcp session, then through the daemon (one live
/// session, one gRPC channel), while GetStats is sampled.
async fn concurrent(
    daemon: &Daemon,
    target: &Target,
    server_id: &str,
    plan: &CallPlan,
) -> anyhow::Result<Value> {
    let tool = target.tool();
    let calls = CALLERS * plan.calls_per_caller;

    let direct = target.open(http_client()?).await?;
    let started = Instant::now();
    let results: Vec<Vec<anyhow::Result<f64>>> =
        futures::future::join_all((0..CALLERS).map(|_| {
            let peer = direct.peer().clone();
            let tool = tool.clone();
            async move {
                let mut out = Vec::with_capacity(plan.calls_per_caller);
                for _ in 0..plan.calls_per_caller {
                    let started = Instant::now();
                    out.push(direct_call(&peer, &tool).await.map(|()| ms_since(started)));
                }
                out
            }
        }))
        .await;
    let direct_secs = started.elapsed().as_secs_f64();
    direct.cancel().await?;
    let (mut direct_ms, mut direct_errors) = (Vec::new(), 0u64);
    for result in results.into_iter().flatten() {
        match result {
            Ok(ms) => direct_ms.push(ms),
            Err(err) => {
                direct_errors += 1;
                eprintln!("concurrent direct call failed: {err:#}");
            }
        }
    }

    let before = stats(daemon, true).await?;
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        async move {
            let (mut in_flight, mut checked_out) = (0u32, 0u32);
            while running.load(Ordering::Relaxed) {
                if let Ok(s) = stats(daemon, false).await {
                    in_flight = in_flight.max(s.calls_in_flight);
                    checked_out = checked_out.max(s.pool_checked_out);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (in_flight, checked_out)
        }
    };
    let load = async {
        let started = Instant::now();
        let results: Vec<Vec<Result<CallSample, tonic::Status>>> =
            futures::future::join_all((0..CALLERS).map(|_| {
                let mut client = daemon.client();
                let (tool, server_id) = (tool.clone(), server_id.to_owned());
                async move {
                    let mut out = Vec::with_capacity(plan.calls_per_caller);
                    for _ in 0..plan.calls_per_caller {
                        out.push(daemon_call(daemon, &mut client, &server_id, &tool, None).await);
                    }
                    out
                }
            }))
            .await;
        let secs = started.elapsed().as_secs_f64();
        running.store(false, Ordering::Relaxed);
        (results, secs)
    };
    let ((results, secs), (max_in_flight, max_checked_out)) = tokio::join!(load, sampler);
    let after = stats(daemon, false).await?;

    let (mut ms, mut errors, mut peak_per_call) = (Vec::new(), 0u64, 0u64);
    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    for result in results.into_iter().flatten() {
        match result {
            Ok(sample) => {
                ms.push(sample.total_ms);
                peak_per_call = peak_per_call.max(sample.peak);
            }
            Err(status) => {
                errors += 1;
                *by_code.entry(format!("{:?}", status.code())).or_default() += 1;
                if errors <= 5 {
                    eprintln!("concurrent CallMcpTool failed: {status}");
                }
            }
        }
    }
    let (d, m) = (summarize(&direct_ms), summarize(&ms));
    let per_s = ms.len() as f64 / secs;
    let direct_per_s = direct_ms.len() as f64 / direct_secs;
    Ok(json!({
        "scenario": "call_concurrent",
        "transport": target.kind.name(),
        "callers": CALLERS,
        "calls": calls,
        "max_calls_per_server": MAX_CALLS_PER_SERVER,
        "throughput_per_s": round(per_s),
        "p50_ms": round(m.p50),
        "p99_ms": round(m.p99),
        "errors": errors,
        "errors_by_code": by_code,
        "direct_throughput_per_s": round(direct_per_s),
        "direct_p50_ms": round(d.p50),
        "direct_p99_ms": round(d.p99),
        "direct_errors": direct_errors,
        "throughput_vs_direct": ratio(per_s, direct_per_s),
        "peak_connections_per_call": peak_per_call,
        "peak_connections": after.pool_peak_checked_out,
        "pool_timeouts": after.pool_timeouts.saturating_sub(before.pool_timeouts),
        // The `after` GetStats checked out one connection for its API key;
        // the sampler's GetStats calls are not counted out (up to a few
        // hundred): this figure is an upper bound.
        "pool_checkouts": after.pool_checkouts.saturating_sub(before.pool_checkouts),
        "max_calls_in_flight_seen": max_in_flight,
        "max_checked_out_seen": max_checked_out,
        "live_sessions": after.live_sessions,
        "session_opens": after.session_opens.saturating_sub(before.session_opens),
        "session_reuses": after.session_reuses.saturating_sub(before.session_reuses),
        "targets": { "errors_max": 0, "errors_met": errors == 0 },
    }))
}

/// SIGSTOP on the MCP server, so calls sit in MCP I/O; what the daemon
/// holds meanwhile is read from GetStats. SIGCONT when dropped.
struct Stopped(i32);

impl Stopped {
    fn new(pid: u32) -> anyhow::Result<Stopped> {
        let pid = i32::try_from(pid)?;
        // SAFETY: a process this benchmark started (directly or through the
        // daemon it started); resumed on drop.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!("SIGSTOP {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(Stopped(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The pid of the daemon's child running `--tool-prefix <prefix>`.
fn stdio_child(daemon_pid: u32, prefix: &str) -> Option<u32> {
    children(daemon_pid).into_iter().find_map(|(pid, args)| {
        args.windows(2)
            .any(|w| w[0] == "--tool-prefix" && w[1] == prefix)
            .then_some(pid)
    })
}

/// The processes whose parent is `parent`, with their command lines.
fn children(parent: u32) -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The field after the parenthesized command name, then the ppid.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(())?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, args))
        })
        .collect()
}

/// [`stall_probe_once`], again (at most three times in all) when GetStats
/// never saw every call waiting: on a loaded machine the calls have been
/// seen answered although the server was stopped (cause not found yet;
/// `stalled_attempts` in the JSON says how often it took).
async fn stall_probe(
    daemon: &Daemon,
    target: &Target,
    server_id: &str,
    stall: Duration,
) -> anyhow::Result<Value> {
    let mut attempt = 1;
    loop {
        let mut probe = stall_probe_once(daemon, target, server_id, stall).await?;
        if probe["stalled_samples"].as_u64() > Some(0) || attempt == 3 {
            probe["stalled_attempts"] = json!(attempt);
            return Ok(probe);
        }
        eprintln!("stall probe: the calls were never all seen waiting; probing again");
        attempt += 1;
    }
}

/// [`STALLED_CALLS`] calls wait on a stopped MCP server: GetStats shows them
/// in flight and how many pooled connections are checked out meanwhile;
/// their `mcpd-mcp-us` shows the wait was MCP time.
async fn stall_probe_once(
    daemon: &Daemon,
    target: &Target,
    server_id: &str,
    stall: Duration,
) -> anyhow::Result<Value> {
    let pid = match &target.http {
        Some((proc, _)) => proc.pid(),
        None => daemon
            .proc
            .pid()
            .and_then(|daemon_pid| stdio_child(daemon_pid, &target.prefix)),
    }
    .context("the MCP server's pid")?;
    let tool = target.tool();
    let stopped = Stopped::new(pid)?;
    let calls = futures::future::join_all((0..STALLED_CALLS).map(|_| {
        let mut client = daemon.client();
        let tool = tool.clone();
        async move {
            daemon_call(
                daemon,
                &mut client,
                server_id,
                &tool,
                Some(Duration::from_secs(60)),
            )
            .await
        }
    }));
    let watch = async {
        // Until every call is in flight, then for `stall`: the most calls
        // seen in flight and the most connections seen checked out.
        let (mut in_flight, mut checked_out, mut samples) = (0u32, 0u32, 0u32);
        let started = Instant::now();
        let mut all_in_since: Option<Instant> = None;
        while started.elapsed() < Duration::from_secs(20) {
            let s = stats(daemon, false).await?;
            if s.calls_in_flight as usize >= STALLED_CALLS {
                all_in_since.get_or_insert_with(Instant::now);
                in_flight = in_flight.max(s.calls_in_flight);
                checked_out = checked_out.max(s.pool_checked_out);
                samples += 1;
            }
            if all_in_since.is_some_and(|t| t.elapsed() >= stall) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(stopped);
        anyhow::Ok((in_flight, checked_out, samples))
    };
    let (results, watched) = tokio::join!(calls, watch);
    let (in_flight, checked_out, samples) = watched?;
    let (mut errors, mut mcp_min, mut peak) = (0u64, f64::MAX, 0u64);
    for result in results {
        match result {
            Ok(sample) => {
                mcp_min = mcp_min.min(sample.mcp_ms);
                peak = peak.max(sample.peak);
            }
            Err(status) => {
                errors += 1;
                eprintln!("stalled CallMcpTool failed: {status}");
            }
        }
    }
    Ok(json!({
        "stalled_calls": STALLED_CALLS,
        "stalled_ms": stall.as_millis() as u64,
        "stalled_samples": samples,
        "stalled_in_flight_seen": in_flight,
        "stalled_checked_out_seen": checked_out,
        "stalled_mcp_min_ms": if mcp_min == f64::MAX { 0.0 } else { round(mcp_min) },
        "stalled_peak_connections_per_call": peak,
        "stalled_errors": errors,
    }))
}

/// `sessions` servers registered, each called once: the daemon's RSS before,
/// with them registered, and with a live session to each.
async fn live_sessions(
    daemon: &Daemon,
    kind: Kind,
    test_server: &str,
    sessions: usize,
) -> anyhow::Result<Value> {
    let targets: Vec<Target> = stream::iter(0..sessions)
        .map(|i| Target::start(kind, test_server, format!("live{i:04}_")))
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    settle().await;
    let before = stats(daemon, false).await?;
    let ids: Vec<String> = stream::iter(targets.iter().enumerate())
        .map(|(i, target)| async move {
            register(daemon, target, &format!("live-{}-{i:04}", kind.name())).await
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    settle().await;
    let registered = stats(daemon, false).await?;
    // One after another: each first call opens a session (spawn or HTTP
    // handshake, initialize) and calls, comparable with connect-per-call.
    let mut client = daemon.client();
    let mut results = Vec::with_capacity(ids.len());
    for (target, id) in targets.iter().zip(&ids) {
        results.push(daemon_call(daemon, &mut client, id, &target.tool(), None).await);
    }
    let first_ms: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|s| s.total_ms))
        .collect();
    let errors = results.iter().filter(|r| r.is_err()).count() as u64;
    for status in results.iter().filter_map(|r| r.as_ref().err()).take(5) {
        eprintln!("first call failed: {status}");
    }
    settle().await;
    let live = stats(daemon, false).await?;
    let children = match (kind, daemon.proc.pid()) {
        (Kind::Stdio, Some(pid)) => children(pid).len(),
        _ => 0,
    };
    let mut close_errors = 0u64;
    for result in stream::iter(&ids)
        .map(|id| unregister(daemon, id))
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
    {
        if let Err(status) = result {
            close_errors += 1;
            eprintln!("close failed: {status}");
        }
    }
    settle().await;
    let closed = stats(daemon, false).await?;
    drop(targets);
    let mb = |bytes: u64| round(bytes as f64 / 1_048_576.0);
    let f = summarize(&first_ms);
    Ok(json!({
        "scenario": "call_sessions",
        "transport": kind.name(),
        "servers": sessions,
        "errors": errors + close_errors,
        "first_call_p50_ms": round(f.p50),
        "first_call_p99_ms": round(f.p99),
        "live_sessions": live.live_sessions,
        "session_opens": live.session_opens.saturating_sub(registered.session_opens),
        "stdio_children": children,
        "rss_before_mb": mb(before.rss_bytes),
        "rss_registered_mb": mb(registered.rss_bytes),
        "rss_live_mb": mb(live.rss_bytes),
        "rss_per_session_kb": round(
            (live.rss_bytes as f64 - registered.rss_bytes as f64) / 1024.0 / sessions.max(1) as f64
        ),
        "rss_after_close_mb": mb(closed.rss_bytes),
        "live_sessions_after_close": closed.live_sessions,
    }))
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The call scenario's tables and targets.
pub fn print_table(rows: &[Value]) {
    if rows.is_empty() {
        return;
    }
    let f = |v: &Value| match v {
        Value::Number(n) => n.to_string(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let of = |scenario: &'static str| rows.iter().filter(move |r| r["scenario"] == scenario);
    let name = |r: &Value| {
        (
            r["backend"].as_str().unwrap_or("").to_owned(),
            r["transport"].as_str().unwrap_or("").to_owned(),
        )
    };
    println!(
        "\nTool calls, one caller: (a) direct rmcp client on one open session, (b) CallMcpTool \
         through mcpd on its live session, (c) connect-per-call (open, initialize, call, close)"
    );
    println!(
        "{:<9} {:<16} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>6} {:>6} {:>9} {:>9}",
        "backend",
        "transport",
        "runs",
        "a p50",
        "a p99",
        "b p50",
        "b p99",
        "b mcp",
        "c p50",
        "c p99",
        "b/a",
        "c/b",
        "errors",
        "peak/call",
        "conn/call"
    );
    for r in of("call_latency") {
        let (backend, transport) = name(r);
        println!(
            "{:<9} {:<16} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>6} {:>6} {:>6} {:>9} {:>9}",
            backend,
            transport,
            f(&r["runs"]),
            f(&r["direct_p50_ms"]),
            f(&r["direct_p99_ms"]),
            f(&r["mcpd_p50_ms"]),
            f(&r["mcpd_p99_ms"]),
            f(&r["mcpd_mcp_p50_ms"]),
            f(&r["connect_per_call_p50_ms"]),
            f(&r["connect_per_call_p99_ms"]),
            f(&r["mcpd_over_direct_p50"]),
            f(&r["connect_per_call_over_mcpd_p50"]),
            f(&r["errors"]),
            f(&r["peak_connections_per_call"]),
            f(&r["pool_checkouts_per_call"]),
        );
    }
    println!(
        "\nTool calls, {CALLERS} concurrent callers on one server (daemon started with \
         --max-calls-per-server {MAX_CALLS_PER_SERVER}); stall: {STALLED_CALLS} calls held on \
         a stopped MCP server"
    );
    println!(
        "{:<9} {:<16} {:>6} {:>8} {:>9} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9} {:>13} {:>13}",
        "backend",
        "transport",
        "calls",
        "per s",
        "direct/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "peak/call",
        "peak conn",
        "in flight",
        "stall flight",
        "stall conn"
    );
    for r in of("call_concurrent") {
        let (backend, transport) = name(r);
        println!(
            "{:<9} {:<16} {:>6} {:>8} {:>9} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9} {:>13} {:>13}",
            backend,
            transport,
            f(&r["calls"]),
            f(&r["throughput_per_s"]),
            f(&r["direct_throughput_per_s"]),
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            f(&r["errors"]),
            f(&r["peak_connections_per_call"]),
            f(&r["peak_connections"]),
            f(&r["max_calls_in_flight_seen"]),
            f(&r["stalled_in_flight_seen"]),
            f(&r["stalled_checked_out_seen"]),
        );
    }
    println!("\nTool calls, live sessions: servers registered, then each called once");
    println!(
        "{:<9} {:<16} {:>7} {:>6} {:>9} {:>9} {:>11} {:>9} {:>11} {:>10} {:>6}",
        "backend",
        "transport",
        "servers",
        "live",
        "children",
        "RSS MB",
        "registered",
        "live MB",
        "KB/session",
        "first p50",
        "errors"
    );
    for r in of("call_sessions") {
        let (backend, transport) = name(r);
        println!(
            "{:<9} {:<16} {:>7} {:>6} {:>9} {:>9} {:>11} {:>9} {:>11} {:>10} {:>6}",
            backend,
            transport,
            f(&r["servers"]),
            f(&r["live_sessions"]),
            f(&r["stdio_children"]),
            f(&r["rss_before_mb"]),
            f(&r["rss_registered_mb"]),
            f(&r["rss_live_mb"]),
            f(&r["rss_per_session_kb"]),
            f(&r["first_call_p50_ms"]),
            f(&r["errors"]),
        );
    }
    println!("\nTool-call targets");
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    for r in of("call_latency") {
        let (backend, transport) = name(r);
        let t = &r["targets"];
        println!(
            "  {backend:<9} {transport:<16} b/a at p50 <= 1.3: {:>7}  {}",
            f(&r["mcpd_over_direct_p50"]),
            met(t["mcpd_over_direct_p50_met"] == true)
        );
        if t["connect_per_call_over_mcpd_p50_met"].is_boolean() {
            println!(
                "  {backend:<9} {transport:<16} c/b at p50 >= 10:  {:>7}  {}",
                f(&r["connect_per_call_over_mcpd_p50"]),
                met(t["connect_per_call_over_mcpd_p50_met"] == true)
            );
        }
    }
    for r in of("call_concurrent") {
        let (backend, transport) = name(r);
        println!(
            "  {backend:<9} {transport:<16} errors at {CALLERS} callers = 0: {:>3}  {}",
            f(&r["errors"]),
            met(r["targets"]["errors_met"] == true)
        );
        println!(
            "  {backend:<9} {transport:<16} pooled connections held during MCP I/O = 0: peak/call {}, \
             {} of {} stalled calls in flight with {} checked out  {}",
            f(&r["peak_connections_per_call"]),
            f(&r["stalled_in_flight_seen"]),
            f(&r["stalled_calls"]),
            f(&r["stalled_checked_out_seen"]),
            met(r["targets"]["held_during_io_met"] == true)
        );
    }
}

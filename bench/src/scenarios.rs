//! The daemon's own figures, measured through its gRPC API.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, stream};
use mcpd::{
    api::{DIFF_US_HEADER, MCP_US_HEADER, PEAK_CONNECTIONS_HEADER, PERSIST_US_HEADER},
    proto::{
        self, GetStatsRequest, create_mcp_server_request::Transport,
        mcp_server_service_client::McpServerServiceClient,
    },
};
use serde_json::{Value, json};
use tonic::{metadata::MetadataMap, transport::Channel};

use crate::{
    env::{Daemon, ProcStat},
    floor::{CreateFloor, SyncFloor},
    stats::{ratio, round, summarize},
};

fn header_u64(metadata: &MetadataMap, name: &str) -> u64 {
    metadata
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn http_create(name: &str, url: &str) -> proto::CreateMcpServerRequest {
    proto::CreateMcpServerRequest {
        server_name: name.to_owned(),
        transport: Some(Transport::StreamableHttp(proto::StreamableHttpTransport {
            url: url.to_owned(),
            headers: Default::default(),
            oauth: None,
        })),
        tool_prefix: String::new(),
    }
}

/// One timed create.
pub struct CreateSample {
    pub total_ms: f64,
    pub mcp_ms: f64,
    pub persist_ms: f64,
    pub peak_per_request: u64,
    pub server_id: String,
    pub stored_tools: usize,
}

pub async fn create(
    daemon: &Daemon,
    client: &mut McpServerServiceClient<Channel>,
    org: &str,
    name: &str,
    url: &str,
) -> Result<CreateSample, tonic::Status> {
    let started = Instant::now();
    let response = client
        .create_mcp_server(daemon.req(org, http_create(name, url)))
        .await?;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let metadata = response.metadata().clone();
    let body = response.into_inner();
    Ok(CreateSample {
        total_ms,
        mcp_ms: header_u64(&metadata, MCP_US_HEADER) as f64 / 1000.0,
        persist_ms: header_u64(&metadata, PERSIST_US_HEADER) as f64 / 1000.0,
        peak_per_request: header_u64(&metadata, PEAK_CONNECTIONS_HEADER),
        server_id: body.server.map(|s| s.id).unwrap_or_default(),
        stored_tools: body.tools.len(),
    })
}

pub async fn close(
    daemon: &Daemon,
    client: &mut McpServerServiceClient<Channel>,
    org: &str,
    server_id: &str,
) -> Result<f64, tonic::Status> {
    let started = Instant::now();
    client
        .close_mcp_server(daemon.req(
            org,
            proto::CloseMcpServerRequest {
                server_id: server_id.to_owned(),
            },
        ))
        .await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

pub async fn daemon_peak(daemon: &Daemon, reset: bool) -> anyhow::Result<proto::GetStatsResponse> {
    Ok(daemon
        .admin()
        .get_stats(daemon.req("load", GetStatsRequest { reset_peaks: reset }))
        .await
        .context("GetStats")?
        .into_inner())
}

/// Scenario 1: sequential creates of one size; the persistence part is what
/// `floor` is compared with, one write of which runs after each create (see
/// [`CreateFloor`]; the back-to-back figure is reported beside it).
pub async fn single_creates(
    daemon: &Daemon,
    url: &str,
    n: usize,
    runs: usize,
    floor: &mut CreateFloor,
) -> anyhow::Result<Value> {
    let mut client = daemon.client();
    let org = format!("single-{n}");
    let (mut totals, mut mcp, mut persist) = (Vec::new(), Vec::new(), Vec::new());
    let (mut errors, mut peak, mut peak_per_request) = (0u64, 0u32, 0u64);
    let mut created = Vec::new();
    let mut floor_ms = Vec::with_capacity(runs);
    for i in 0..runs {
        daemon_peak(daemon, true).await?;
        floor.settle().await?;
        match create(daemon, &mut client, &org, &format!("s{n}-{i}"), url).await {
            Ok(sample) if sample.stored_tools == n => {
                totals.push(sample.total_ms);
                mcp.push(sample.mcp_ms);
                persist.push(sample.persist_ms);
                peak_per_request = peak_per_request.max(sample.peak_per_request);
                created.push(sample.server_id);
                floor_ms.push(floor.write().await?);
            }
            Ok(sample) => {
                errors += 1;
                eprintln!("create stored {} of {n} tools", sample.stored_tools);
            }
            Err(status) => {
                errors += 1;
                eprintln!("create failed: {status}");
            }
        }
        peak = peak.max(daemon_peak(daemon, false).await?.pool_peak_checked_out);
    }
    let mut hot_floor_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        hot_floor_ms.push(floor.write().await?);
    }
    let mut closes = Vec::new();
    for id in created {
        floor.settle().await?;
        match close(daemon, &mut client, &org, &id).await {
            Ok(ms) => closes.push(ms),
            Err(_) => errors += 1,
        }
    }
    let (t, m, p, c) = (
        summarize(&totals),
        summarize(&mcp),
        summarize(&persist),
        summarize(&closes),
    );
    let (floor, hot_floor) = (summarize(&floor_ms).p50, summarize(&hot_floor_ms).p50);
    Ok(json!({
        "scenario": "single_create",
        "n": n,
        "runs": runs,
        "p50_ms": round(t.p50),
        "p99_ms": round(t.p99),
        "mcp_ms": round(m.p50),
        "persist_ms": round(p.p50),
        "persist_p99_ms": round(p.p99),
        "floor_ms": round(floor),
        "floor_ratio": ratio(p.p50, floor),
        "hot_floor_ms": round(hot_floor),
        "hot_floor_ratio": ratio(p.p50, hot_floor),
        "close_p50_ms": round(c.p50),
        // Issue 11's target: closing a server costs no more than storing it.
        "close_vs_persist": ratio(c.p50, p.p50),
        "errors": errors,
        "peak_connections": peak,
        "peak_connections_per_request": peak_per_request,
    }))
}

/// Scenario 4: `count` creates at once, then `count` closes at once.
pub async fn load(daemon: &Daemon, url: &str, count: usize, tools: usize) -> anyhow::Result<Value> {
    let org = "load";
    daemon_peak(daemon, true).await?;
    // Where the daemon's CPU goes: its own time per create and per close.
    let cpu_before = ProcStat::of(daemon.proc.pid()).cpu_secs;
    let started = Instant::now();
    let creates = (0..count).map(|i| {
        let mut client = daemon.client();
        async move { create(daemon, &mut client, org, &format!("load-{i}"), url).await }
    });
    let results = futures::future::join_all(creates).await;
    let create_secs = started.elapsed().as_secs_f64();
    let (mut latencies, mut ids, mut errors, mut peak_per_request) =
        (Vec::new(), Vec::new(), 0u64, 0u64);
    for result in results {
        match result {
            Ok(sample) if sample.stored_tools == tools => {
                latencies.push(sample.total_ms);
                peak_per_request = peak_per_request.max(sample.peak_per_request);
                ids.push(sample.server_id);
            }
            Ok(_) => errors += 1,
            Err(status) => {
                errors += 1;
                eprintln!("load create failed: {status}");
            }
        }
    }
    let cpu_after_creates = ProcStat::of(daemon.proc.pid()).cpu_secs;
    let stats_after_creates = daemon_peak(daemon, true).await?;
    let started = Instant::now();
    let closes = ids.iter().map(|id| {
        let mut client = daemon.client();
        async move { close(daemon, &mut client, org, id).await }
    });
    let results = futures::future::join_all(closes).await;
    let close_secs = started.elapsed().as_secs_f64();
    let mut close_latencies = Vec::new();
    let mut close_errors = 0u64;
    for result in results {
        match result {
            Ok(ms) => close_latencies.push(ms),
            Err(status) => {
                close_errors += 1;
                eprintln!("load close failed: {status}");
            }
        }
    }
    let cpu_after_closes = ProcStat::of(daemon.proc.pid()).cpu_secs;
    let stats_after_closes = daemon_peak(daemon, false).await?;
    let (c, k) = (summarize(&latencies), summarize(&close_latencies));
    let per = |secs: f64, n: usize| {
        if n == 0 {
            0.0
        } else {
            round(secs * 1000.0 / n as f64)
        }
    };
    Ok(json!({
        "scenario": "load",
        "creates": count,
        "tools_per_server": tools,
        "throughput_per_s": round(latencies.len() as f64 / create_secs),
        "p50_ms": round(c.p50),
        "p99_ms": round(c.p99),
        "errors": errors + close_errors,
        "create_errors": errors,
        "close_errors": close_errors,
        "close_throughput_per_s": round(close_latencies.len() as f64 / close_secs),
        "close_p50_ms": round(k.p50),
        "close_p99_ms": round(k.p99),
        "cpu_ms_per_create": per(cpu_after_creates - cpu_before, latencies.len()),
        "cpu_ms_per_close": per(cpu_after_closes - cpu_after_creates, close_latencies.len()),
        "cpu_cores_during_creates": round((cpu_after_creates - cpu_before) / create_secs),
        "peak_connections": stats_after_creates.pool_peak_checked_out.max(stats_after_closes.pool_peak_checked_out),
        "peak_connections_per_request": peak_per_request,
        "pool_size": stats_after_closes.pool_max_size,
        "pool_timeouts": stats_after_closes.pool_timeouts,
    }))
}

/// Scenario 5: RSS idle and after `servers` × `tools` registered, and the
/// latency of paging through them 100 at a time.
pub async fn memory(
    daemon: &Daemon,
    url: &str,
    idle_rss: u64,
    servers: usize,
    tools: usize,
) -> anyhow::Result<Value> {
    let org = "memory";
    let mut errors = 0u64;
    let started = Instant::now();
    // RSS at the half and at the end: what is kept per server or per tool
    // shows as growth between the two; warm-up (allocator arenas, caches,
    // the pool filling) shows before the half.
    let mut rss_half = 0;
    for (from, to) in [(0, servers / 2), (servers / 2, servers)] {
        let results: Vec<_> = stream::iter(from..to)
            .map(|i| {
                let mut client = daemon.client();
                async move { create(daemon, &mut client, org, &format!("mem-{i:06}"), url).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        errors += results
            .iter()
            .filter(|r| !matches!(r, Ok(s) if s.stored_tools == tools))
            .count() as u64;
        if from == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            rss_half = daemon_peak(daemon, false).await?.rss_bytes;
        }
    }
    let register_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = daemon_peak(daemon, false).await?;

    let mut client = daemon.client();
    let mut pages = Vec::new();
    let mut token = String::new();
    let mut listed = 0usize;
    loop {
        let started = Instant::now();
        let page = client
            .list_mcp_servers(daemon.req(
                org,
                proto::ListMcpServersRequest {
                    page_size: 100,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        pages.push(started.elapsed().as_secs_f64() * 1000.0);
        listed += page.servers.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let l = summarize(&pages);
    let mb = |bytes: u64| round(bytes as f64 / 1_048_576.0);
    Ok(json!({
        "scenario": "memory",
        "servers": servers,
        "tools": servers * tools,
        "registered_per_s": round(servers as f64 / register_secs),
        "errors": errors,
        "listed": listed,
        "rss_idle_mb": mb(idle_rss),
        "rss_mb": mb(after.rss_bytes),
        "rss_growth_mb": round(mb(after.rss_bytes) - mb(idle_rss)),
        "rss_half_mb": mb(rss_half),
        "rss_growth_second_half_mb": round(mb(after.rss_bytes) - mb(rss_half)),
        "list_page_size": 100,
        "list_p50_ms": round(l.p50),
        "list_p99_ms": round(l.p99),
    }))
}

/// The tools file of the sync scenario: `n` tools, the first `changed` of
/// them with a new description when `round` > 0.
fn write_tools_file(
    path: &std::path::Path,
    n: usize,
    changed: usize,
    round: usize,
) -> anyhow::Result<()> {
    let tools: Vec<Value> = (0..n)
        .map(|i| {
            let description = if i < changed && round > 0 {
                format!("Tool number {i}, revised in round {round}.")
            } else {
                format!("Tool number {i}; echoes its name and arguments.")
            };
            json!({
                "name": format!("tool_{i:05}"),
                "description": description,
                "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
            })
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&tools)?).context("writing the tools file")
}

/// Issue 10's sync figure: an `n`-tool server with `changed` tools changed,
/// synced (the exact difference, in place) against what a resync without a
/// difference does (close it and register it again), and its persistence
/// against `floor`, one round of which runs after each sync (see
/// [`SyncFloor`]; the back-to-back figure is reported beside it). Rows
/// written are the
/// answer's own counts: tools updated or added/removed (with their mapping),
/// plus the server row and the watch event; a close and create write and
/// delete the server, every tool and every mapping, and write two events.
pub async fn sync_vs_recreate(
    daemon: &Daemon,
    test_server: &str,
    n: usize,
    changed: usize,
    runs: usize,
    floor: &mut SyncFloor,
) -> anyhow::Result<Value> {
    let org = "sync";
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tools.json");
    write_tools_file(&file, n, changed, 0)?;
    let file_arg = file.to_string_lossy().into_owned();
    let (_server, url) =
        crate::env::start_http_server(test_server, &["--tools-file", &file_arg]).await?;
    let mut client = daemon.client();
    let created = create(daemon, &mut client, org, "synced", &url).await?;
    anyhow::ensure!(
        created.stored_tools == n,
        "stored {} of {n} tools",
        created.stored_tools
    );
    let mut sync_ms = Vec::new();
    let mut sync_diff_ms = Vec::new();
    let mut sync_persist_ms = Vec::new();
    let mut sync_rows = 0;
    let mut floor_ms = Vec::with_capacity(runs);
    for round in 1..=runs {
        write_tools_file(&file, n, changed, round)?;
        let started = Instant::now();
        let response = client
            .sync_mcp_server_tools(daemon.req(
                org,
                proto::SyncMcpServerToolsRequest {
                    server_id: created.server_id.clone(),
                },
            ))
            .await?;
        sync_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        sync_diff_ms.push(header_u64(response.metadata(), DIFF_US_HEADER) as f64 / 1000.0);
        sync_persist_ms.push(header_u64(response.metadata(), PERSIST_US_HEADER) as f64 / 1000.0);
        let body = response.into_inner();
        anyhow::ensure!(
            body.updated.len() == changed && body.added.is_empty() && body.removed.is_empty(),
            "round {round}: sync reported {} updated, {} added, {} removed; expected {changed} updated",
            body.updated.len(),
            body.added.len(),
            body.removed.len()
        );
        // Tools, mappings, the server row and the event that announces it.
        sync_rows = body.updated.len() + 2 * (body.added.len() + body.removed.len()) + 2;
        floor_ms.push(floor.round().await?);
    }
    let mut hot_floor_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        hot_floor_ms.push(floor.round().await?);
    }
    // The same change applied the other way: close, then register again.
    let mut recreate_ms = Vec::new();
    let mut recreate_persist_ms = Vec::new();
    let mut server_id = created.server_id;
    // Five are enough for a p50; more syncs (--sync-runs) are for profiling.
    for _ in 0..runs.min(5) {
        let started = Instant::now();
        close(daemon, &mut client, org, &server_id).await?;
        let again = create(daemon, &mut client, org, "synced", &url).await?;
        recreate_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        recreate_persist_ms.push(again.persist_ms);
        server_id = again.server_id;
    }
    close(daemon, &mut client, org, &server_id).await?;
    // Server, tools and mappings, twice, and the CLOSED and CREATED events.
    let recreate_rows = 2 * (1 + 2 * n) + 2;
    let (sync, sync_diff, sync_persist) = (
        summarize(&sync_ms),
        summarize(&sync_diff_ms),
        summarize(&sync_persist_ms),
    );
    let (recreate, recreate_persist) = (summarize(&recreate_ms), summarize(&recreate_persist_ms));
    let (floor, hot_floor) = (summarize(&floor_ms).p50, summarize(&hot_floor_ms).p50);
    Ok(json!({
        "scenario": "sync_vs_recreate",
        "n": n,
        "changed": changed,
        "runs": runs,
        "sync_p50_ms": round(sync.p50),
        "sync_diff_p50_ms": round(sync_diff.p50),
        "sync_persist_p50_ms": round(sync_persist.p50),
        "sync_floor_ms": round(floor),
        "sync_floor_ratio": ratio(sync_persist.p50, floor),
        "sync_hot_floor_ms": round(hot_floor),
        "sync_hot_floor_ratio": ratio(sync_persist.p50, hot_floor),
        "sync_rows_written": sync_rows,
        "recreate_p50_ms": round(recreate.p50),
        "recreate_persist_p50_ms": round(recreate_persist.p50),
        "recreate_rows_written": recreate_rows,
        "rows_ratio": ratio(recreate_rows as f64, sync_rows as f64),
        "time_ratio": ratio(recreate.p50, sync.p50),
    }))
}

/// Issue 10's watch figure: how long after a change is asked for its event
/// reaches a watcher on another daemon (PostgreSQL: `writer` and `watcher`
/// are two daemons on one database, the event crossing by NOTIFY; SQLite:
/// one daemon, watchers are in-process). Each round renames a server on
/// `writer` and waits for the event on `watcher`; the RPC's own time is
/// reported beside it, since the commit happens inside it.
pub async fn watch_latency(
    writer: &Daemon,
    watcher: &Daemon,
    test_server: &str,
    rounds: usize,
) -> anyhow::Result<Value> {
    let org = "watch";
    let (_server, url) = crate::env::start_mcp_server(test_server, 1).await?;
    let mut client = writer.client();
    let created = create(writer, &mut client, org, "watched", &url).await?;
    let mut events = watcher
        .client()
        .watch_mcp_servers(watcher.req(org, proto::WatchMcpServersRequest { after: None }))
        .await?
        .into_inner();
    let bookmark = events.message().await?.context("the watch ended")?;
    anyhow::ensure!(
        bookmark.kind() == proto::McpServerEventKind::Bookmark,
        "the watch started with {bookmark:?}"
    );
    let mut event_ms = Vec::with_capacity(rounds);
    let mut rpc_ms = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let name = format!("watched-{round}");
        let started = Instant::now();
        let rename = client.update_mcp_server(writer.req(
            org,
            proto::UpdateMcpServerRequest {
                server_id: created.server_id.clone(),
                server_name: name.clone(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["server_name".into()],
                }),
                ..Default::default()
            },
        ));
        let heard = async {
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), events.message())
                    .await
                    .context("no event within 10 s")??
                    .context("the watch ended")?;
                if event.server.as_ref().is_some_and(|s| s.server_name == name) {
                    return anyhow::Ok(started.elapsed());
                }
            }
        };
        let (renamed, heard) = tokio::join!(
            async {
                let result = rename.await;
                (result, started.elapsed())
            },
            heard
        );
        renamed.0?;
        rpc_ms.push(renamed.1.as_secs_f64() * 1000.0);
        event_ms.push(heard?.as_secs_f64() * 1000.0);
    }
    close(writer, &mut client, org, &created.server_id).await?;
    let (event, rpc) = (summarize(&event_ms), summarize(&rpc_ms));
    Ok(json!({
        "scenario": "watch_latency",
        "daemons": if std::ptr::eq(writer, watcher) { 1 } else { 2 },
        "rounds": rounds,
        "event_p50_ms": round(event.p50),
        "event_p99_ms": round(event.p99),
        "rpc_p50_ms": round(rpc.p50),
        "rpc_p99_ms": round(rpc.p99),
    }))
}

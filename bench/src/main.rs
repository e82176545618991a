//! mcpd-bench: starts the release daemon as its own process on PostgreSQL
//! and on SQLite, drives it through gRPC with synthetic MCP servers over
//! streamable HTTP, and compares it with the database floor and with the
//! incident's 2N-connection fan-out; then measures tool calls through the
//! daemon against a direct rmcp client and connect-per-call. Prints a
//! table, writes JSON.

mod calls;
mod env;
mod fanout;
mod floor;
mod replicas;
mod scenarios;
mod stats;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use crate::{
    calls::CallPlan,
    env::{Backend, Daemon, Db, start_mcp_server},
    fanout::FanoutPool,
    floor::{CreateFloor, SyncFloor},
    stats::{round, summarize},
};

#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Fewer runs and a smaller registry: under two minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    #[arg(long, value_enum, default_value_t = Which::Both)]
    backend: Which,
    /// Where the JSON goes.
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// The daemon binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/mcpd")]
    daemon: String,
    /// The synthetic MCP server (tests/mcp-test-server).
    #[arg(long, default_value = "target/release/mcp-test-server")]
    test_server: String,
    /// A PostgreSQL database to create throwaway databases from.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_admin_url: String,
    /// Pool size of the daemon and of the fan-out baseline.
    #[arg(long, default_value_t = 10)]
    pool_size: u32,
    /// Acquire timeout of the daemon's pool and of the fan-out baseline.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pool_timeout: Duration,
    /// Which scenarios: the registry's (creates, fan-out, load, memory),
    /// tool calls, replicas on one PostgreSQL, or all.
    #[arg(long, value_enum, default_value_t = Scenarios::All)]
    scenarios: Scenarios,
    /// Syncs of the large server (default: 5, 2 with --quick); many give a
    /// profiler something to sample.
    #[arg(long)]
    sync_runs: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenarios {
    All,
    Registry,
    /// Only the sync of a large server (part of the registry's).
    Sync,
    Call,
    Replicas,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Postgres,
    Sqlite,
    Both,
}

struct Plan {
    sizes: Vec<(usize, usize)>,
    /// Tools of the synced server, how many change, runs.
    sync: (usize, usize, usize),
    load_creates: usize,
    memory_servers: usize,
    /// Changes timed from request to a watcher's event.
    watch_rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                sizes: vec![(1, 10), (50, 10), (500, 5), (5000, 2)],
                sync: (1000, 10, 2),
                watch_rounds: 30,
                load_creates: 200,
                memory_servers: 1_000,
            }
        } else {
            Plan {
                sizes: vec![(1, 40), (50, 40), (500, 20), (5000, 5)],
                sync: (5000, 50, 5),
                watch_rounds: 300,
                load_creates: 200,
                memory_servers: 10_000,
            }
        }
    }
}

const LOAD_TOOLS: usize = 50;
const MEMORY_TOOLS: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut plan = Plan::new(cli.quick);
    if let Some(runs) = cli.sync_runs {
        plan.sync.2 = runs.max(1);
    }
    let backends = match cli.backend {
        Which::Postgres => vec![Backend::Postgres],
        Which::Sqlite => vec![Backend::Sqlite],
        Which::Both => vec![Backend::Postgres, Backend::Sqlite],
    };
    for bin in [&cli.daemon, &cli.test_server] {
        anyhow::ensure!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: run `cargo build --release -p mcpd -p mcp-test-server` first"
        );
    }
    let call_plan = CallPlan::new(cli.quick);
    let mut results = Vec::new();
    let mut baseline = Vec::new();
    let mut call = Vec::new();
    let mut replica_rows = Vec::new();
    let replica_plan = replicas::ReplicaPlan::new(cli.quick);
    for backend in backends {
        eprintln!("== {}", backend.name());
        let db = Db::create(backend, &cli.pg_admin_url).await?;
        let outcome = async {
            let registry = if matches!(cli.scenarios, Scenarios::All | Scenarios::Registry) {
                run_backend(&cli, &plan, &db).await?
            } else if cli.scenarios == Scenarios::Sync {
                let daemon = Daemon::start(
                    &cli.daemon,
                    &db,
                    cli.pool_size,
                    cli.pool_timeout,
                    &["sync".to_owned()],
                    &[],
                )
                .await?;
                let row = run_sync(&cli, &plan, &db, &daemon).await;
                daemon.proc.terminate().await;
                (vec![row?], Vec::new())
            } else {
                (Vec::new(), Vec::new())
            };
            let calls = if matches!(cli.scenarios, Scenarios::All | Scenarios::Call) {
                run_calls(&cli, &call_plan, &db).await?
            } else {
                Vec::new()
            };
            // Replicas need a database server: PostgreSQL only.
            let replicated = if matches!(cli.scenarios, Scenarios::All | Scenarios::Replicas)
                && backend == Backend::Postgres
            {
                run_replicas(&cli, replica_plan, &db).await?
            } else {
                Vec::new()
            };
            anyhow::Ok((registry, calls, replicated))
        }
        .await;
        db.drop_db().await;
        let ((ours, theirs), calls, replicated) = outcome?;
        results.extend(ours);
        baseline.extend(theirs);
        call.extend(calls);
        replica_rows.extend(replicated);
    }
    let report = json!({
        "generated_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "mode": if cli.quick { "quick" } else { "full" },
        "machine": machine(),
        "pool_size": cli.pool_size,
        "results": results,
        "fanout_baseline": baseline,
        "call": call,
        "replicas": replica_rows,
    });
    if let Some(dir) = cli.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", cli.out.display()))?;
    print_table(&report);
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}

async fn run_backend(cli: &Cli, plan: &Plan, db: &Db) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let backend = db.backend;
    let orgs: Vec<String> = plan
        .sizes
        .iter()
        .map(|(n, _)| format!("single-{n}"))
        .chain(["load", "memory", "sync", "watch"].map(String::from))
        .collect();
    let daemon =
        Daemon::start(&cli.daemon, db, cli.pool_size, cli.pool_timeout, &orgs, &[]).await?;
    // Idle: started, migrated, nothing registered yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = scenarios::daemon_peak(&daemon, false).await?.rss_bytes;
    let tag = |mut v: Value| {
        v["backend"] = json!(backend.name());
        v
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();

    // 1 and 2: single creates against the floor.
    for &(n, runs) in &plan.sizes {
        let (_server, url) = start_mcp_server(&cli.test_server, n).await?;
        let mut floor = match backend {
            Backend::Postgres => CreateFloor::postgres(&db.url, n).await?,
            Backend::Sqlite => CreateFloor::sqlite(&db.sqlite_path()?, n)?,
        };
        let row = scenarios::single_creates(&daemon, &url, n, runs, &mut floor).await?;
        eprintln!("  single create n={n}: {row}");
        ours.push(tag(row));
    }

    // 3: the fan-out baseline, same pool size and acquire timeout.
    let pool = FanoutPool::new(backend, &db.url, cli.pool_size, cli.pool_timeout);
    for &(n, runs) in plan.sizes.iter().filter(|(n, _)| matches!(n, 50 | 500)) {
        let mut times = Vec::new();
        let mut outcome = fanout::Outcome::default();
        for _ in 0..runs {
            let started = std::time::Instant::now();
            let once = pool.run(1, n).await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            outcome.errors += once.errors;
            outcome.pool_timeouts += once.pool_timeouts;
            outcome.peak_checked_out = outcome.peak_checked_out.max(once.peak_checked_out);
            outcome.max_wait_ms = outcome.max_wait_ms.max(once.max_wait_ms);
        }
        let ms = summarize(&times);
        let ours_p50 = ours
            .iter()
            .find(|r| r["scenario"] == "single_create" && r["n"] == n)
            .and_then(|r| r["persist_ms"].as_f64())
            .unwrap_or(0.0);
        let row = json!({
            "backend": backend.name(),
            "scenario": "fanout_single",
            "n": n,
            "runs": runs,
            "p50_ms": round(ms.p50),
            "p99_ms": round(ms.p99),
            "connections_demanded": n,
            "peak_connections": outcome.peak_checked_out,
            "peak_connections_per_request": outcome.peak_checked_out,
            "pool_timeouts": outcome.pool_timeouts,
            "errors": outcome.errors,
            "max_wait_ms": round(outcome.max_wait_ms),
            "daemon_persist_p50_ms": ours_p50,
            "speedup_vs_daemon_persist": if ours_p50 > 0.0 { round(ms.p50 / ours_p50) } else { 0.0 },
        });
        eprintln!("  fan-out n={n}: {row}");
        theirs.push(row);
    }
    let started = std::time::Instant::now();
    let outcome = pool.run(plan.load_creates, LOAD_TOOLS).await;
    let secs = started.elapsed().as_secs_f64();
    let row = json!({
        "backend": backend.name(),
        "scenario": "fanout_load",
        "creates": plan.load_creates,
        "tools_per_server": LOAD_TOOLS,
        "seconds": round(secs),
        "throughput_per_s": round(plan.load_creates as f64 / secs),
        "connections_demanded": plan.load_creates * LOAD_TOOLS,
        "peak_connections": outcome.peak_checked_out,
        "pool_timeouts": outcome.pool_timeouts,
        "errors": outcome.errors,
        "max_wait_ms": round(outcome.max_wait_ms),
    });
    eprintln!("  fan-out load: {row}");
    theirs.push(row);

    ours.push(run_sync(cli, plan, db, &daemon).await?);

    // Watch latency: across two daemons on PostgreSQL, in one on SQLite.
    let second = match backend {
        Backend::Postgres => Some(
            Daemon::start(
                &cli.daemon,
                db,
                cli.pool_size,
                cli.pool_timeout,
                &["watch".to_owned()],
                &[],
            )
            .await?,
        ),
        Backend::Sqlite => None,
    };
    let row = scenarios::watch_latency(
        &daemon,
        second.as_ref().unwrap_or(&daemon),
        &cli.test_server,
        plan.watch_rounds,
    )
    .await?;
    if let Some(second) = second {
        second.proc.terminate().await;
    }
    eprintln!("  watch: {row}");
    ours.push(tag(row));

    // 4: load.
    let (_server, url) = start_mcp_server(&cli.test_server, LOAD_TOOLS).await?;
    let row = scenarios::load(&daemon, &url, plan.load_creates, LOAD_TOOLS).await?;
    eprintln!("  load: {row}");
    ours.push(tag(row));

    // 5: memory.
    let (_server, url) = start_mcp_server(&cli.test_server, MEMORY_TOOLS).await?;
    let row = scenarios::memory(&daemon, &url, idle_rss, plan.memory_servers, MEMORY_TOOLS).await?;
    eprintln!("  memory: {row}");
    ours.push(tag(row));

    daemon.proc.terminate().await;
    Ok((ours, theirs))
}

/// Sync of a large server with 1% of its tools changed, against closing and
/// registering it again, and against the sync floor.
async fn run_sync(cli: &Cli, plan: &Plan, db: &Db, daemon: &Daemon) -> anyhow::Result<Value> {
    let (n, changed, runs) = plan.sync;
    let mut floor = match db.backend {
        Backend::Postgres => SyncFloor::postgres(&db.url, n, changed).await?,
        Backend::Sqlite => SyncFloor::sqlite(&db.sqlite_path()?, n, changed).await?,
    };
    let mut row =
        scenarios::sync_vs_recreate(daemon, &cli.test_server, n, changed, runs, &mut floor).await?;
    row["backend"] = json!(db.backend.name());
    eprintln!("  sync n={n} changed={changed}: {row}");
    Ok(row)
}

/// Tool calls, on a daemon of their own: stdio allowed for the test server,
/// and a per-server call limit above the 100 concurrent callers.
async fn run_calls(cli: &Cli, plan: &CallPlan, db: &Db) -> anyhow::Result<Vec<Value>> {
    // The allowlist matches the command exactly.
    let test_server = std::fs::canonicalize(&cli.test_server)
        .with_context(|| format!("resolving {}", cli.test_server))?
        .to_string_lossy()
        .into_owned();
    let daemon = Daemon::start(
        &cli.daemon,
        db,
        cli.pool_size,
        cli.pool_timeout,
        &[calls::ORG.to_owned()],
        &[
            "--stdio-allow".to_owned(),
            test_server.clone(),
            "--max-calls-per-server".to_owned(),
            calls::MAX_CALLS_PER_SERVER.to_string(),
        ],
    )
    .await?;
    let rows = calls::run(&daemon, &test_server, cli.pool_size, plan).await;
    daemon.proc.terminate().await;
    Ok(rows?
        .into_iter()
        .map(|mut row| {
            row["backend"] = json!(db.backend.name());
            row
        })
        .collect())
}

/// The round-robin workload on one daemon, then on three on one database.
async fn run_replicas(
    cli: &Cli,
    plan: replicas::ReplicaPlan,
    db: &Db,
) -> anyhow::Result<Vec<Value>> {
    eprintln!("  replicas: {} servers, {} calls", plan.servers, plan.calls);
    let test_server = std::fs::canonicalize(&cli.test_server)
        .with_context(|| format!("resolving {}", cli.test_server))?
        .to_string_lossy()
        .into_owned();
    replicas::run(
        &replicas::Launch {
            bin: &cli.daemon,
            db,
            pool_size: cli.pool_size,
            pool_timeout: cli.pool_timeout,
            test_server: &test_server,
        },
        plan,
    )
    .await
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| round(kb / 1_048_576.0))
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "memory_gb": mem_gb,
    })
}

fn print_table(report: &Value) {
    let empty = Vec::new();
    let rows = report["results"].as_array().unwrap_or(&empty);
    let fanout = report["fanout_baseline"].as_array().unwrap_or(&empty);
    let f = |v: &Value| match v {
        Value::Number(n) => n.to_string(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    if !rows.is_empty() {
        print_registry(rows, fanout, f);
    }
    calls::print_table(report["call"].as_array().unwrap_or(&empty));
    replicas::print_table(report["replicas"].as_array().unwrap_or(&empty));
}

fn print_registry(rows: &[Value], fanout: &[Value], f: impl Fn(&Value) -> String) {
    println!("\nSingle create (daemon) vs floor");
    println!(
        "{:<9} {:>5} {:>5} {:>9} {:>9} {:>9} {:>11} {:>9} {:>7} {:>9} {:>7} {:>9} {:>8} {:>6} {:>9}",
        "backend",
        "n",
        "runs",
        "p50 ms",
        "p99 ms",
        "mcp ms",
        "persist ms",
        "floor ms",
        "ratio",
        "hot floor",
        "hot x",
        "close ms",
        "close x",
        "errors",
        "peak/req"
    );
    for r in rows.iter().filter(|r| r["scenario"] == "single_create") {
        println!(
            "{:<9} {:>5} {:>5} {:>9} {:>9} {:>9} {:>11} {:>9} {:>7} {:>9} {:>7} {:>9} {:>8} {:>6} {:>9}",
            r["backend"].as_str().unwrap_or(""),
            f(&r["n"]),
            f(&r["runs"]),
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            f(&r["mcp_ms"]),
            f(&r["persist_ms"]),
            f(&r["floor_ms"]),
            f(&r["floor_ratio"]),
            f(&r["hot_floor_ms"]),
            f(&r["hot_floor_ratio"]),
            f(&r["close_p50_ms"]),
            f(&r["close_vs_persist"]),
            f(&r["errors"]),
            f(&r["peak_connections_per_request"]),
        );
    }
    println!("\nFan-out baseline (the incident's pattern; not the daemon)");
    println!(
        "{:<9} {:<14} {:>5} {:>9} {:>10} {:>10} {:>9} {:>7} {:>11} {:>9}",
        "backend",
        "scenario",
        "n",
        "p50 ms",
        "demanded",
        "peak conn",
        "timeouts",
        "errors",
        "max wait ms",
        "vs ours"
    );
    for r in fanout {
        println!(
            "{:<9} {:<14} {:>5} {:>9} {:>10} {:>10} {:>9} {:>7} {:>11} {:>9}",
            r["backend"].as_str().unwrap_or(""),
            r["scenario"].as_str().unwrap_or(""),
            f(if r["n"].is_null() {
                &r["creates"]
            } else {
                &r["n"]
            }),
            f(if r["p50_ms"].is_null() {
                &r["seconds"]
            } else {
                &r["p50_ms"]
            }),
            f(&r["connections_demanded"]),
            f(&r["peak_connections"]),
            f(&r["pool_timeouts"]),
            f(&r["errors"]),
            f(&r["max_wait_ms"]),
            f(&r["speedup_vs_daemon_persist"]),
        );
    }
    println!("\nSync with 1% changed vs close and register again (daemon)");
    println!(
        "{:<9} {:>5} {:>7} {:>9} {:>8} {:>11} {:>9} {:>8} {:>9} {:>6} {:>7} {:>11} {:>15} {:>8} {:>9} {:>9}",
        "backend",
        "n",
        "changed",
        "sync ms",
        "diff ms",
        "persist ms",
        "floor ms",
        "floor x",
        "hot floor",
        "hot x",
        "rows",
        "recreate ms",
        "persist ms",
        "rows",
        "rows x",
        "time x"
    );
    for r in rows.iter().filter(|r| r["scenario"] == "sync_vs_recreate") {
        println!(
            "{:<9} {:>5} {:>7} {:>9} {:>8} {:>11} {:>9} {:>8} {:>9} {:>6} {:>7} {:>11} {:>15} {:>8} {:>9} {:>9}",
            r["backend"].as_str().unwrap_or(""),
            f(&r["n"]),
            f(&r["changed"]),
            f(&r["sync_p50_ms"]),
            f(&r["sync_diff_p50_ms"]),
            f(&r["sync_persist_p50_ms"]),
            f(&r["sync_floor_ms"]),
            f(&r["sync_floor_ratio"]),
            f(&r["sync_hot_floor_ms"]),
            f(&r["sync_hot_floor_ratio"]),
            f(&r["sync_rows_written"]),
            f(&r["recreate_p50_ms"]),
            f(&r["recreate_persist_p50_ms"]),
            f(&r["recreate_rows_written"]),
            f(&r["rows_ratio"]),
            f(&r["time_ratio"]),
        );
    }
    println!("\nWatch: request to event at a watcher (daemon)");
    println!(
        "{:<9} {:>8} {:>7} {:>10} {:>10} {:>9} {:>9}",
        "backend", "daemons", "rounds", "event p50", "event p99", "rpc p50", "rpc p99"
    );
    for r in rows.iter().filter(|r| r["scenario"] == "watch_latency") {
        println!(
            "{:<9} {:>8} {:>7} {:>10} {:>10} {:>9} {:>9}",
            r["backend"].as_str().unwrap_or(""),
            f(&r["daemons"]),
            f(&r["rounds"]),
            f(&r["event_p50_ms"]),
            f(&r["event_p99_ms"]),
            f(&r["rpc_p50_ms"]),
            f(&r["rpc_p99_ms"]),
        );
    }
    println!("\nLoad: concurrent creates then closes (daemon)");
    println!(
        "{:<9} {:>7} {:>8} {:>9} {:>9} {:>7} {:>10} {:>9} {:>10} {:>9} {:>12} {:>11} {:>6}",
        "backend",
        "creates",
        "per s",
        "p50 ms",
        "p99 ms",
        "errors",
        "peak conn",
        "peak/req",
        "close/s",
        "close p99",
        "CPU/create",
        "CPU/close",
        "cores"
    );
    for r in rows.iter().filter(|r| r["scenario"] == "load") {
        println!(
            "{:<9} {:>7} {:>8} {:>9} {:>9} {:>7} {:>10} {:>9} {:>10} {:>9} {:>12} {:>11} {:>6}",
            r["backend"].as_str().unwrap_or(""),
            f(&r["creates"]),
            f(&r["throughput_per_s"]),
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            f(&r["errors"]),
            f(&r["peak_connections"]),
            f(&r["peak_connections_per_request"]),
            f(&r["close_throughput_per_s"]),
            f(&r["close_p99_ms"]),
            f(&r["cpu_ms_per_create"]),
            f(&r["cpu_ms_per_close"]),
            f(&r["cpu_cores_during_creates"]),
        );
    }
    println!("\nMemory and listing (daemon)");
    println!(
        "{:<9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>12} {:>11} {:>11}",
        "backend",
        "servers",
        "tools",
        "idle MB",
        "RSS MB",
        "growth",
        "2nd half",
        "list p50",
        "list p99"
    );
    for r in rows.iter().filter(|r| r["scenario"] == "memory") {
        println!(
            "{:<9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>12} {:>11} {:>11}",
            r["backend"].as_str().unwrap_or(""),
            f(&r["servers"]),
            f(&r["tools"]),
            f(&r["rss_idle_mb"]),
            f(&r["rss_mb"]),
            f(&r["rss_growth_mb"]),
            f(&r["rss_growth_second_half_mb"]),
            f(&r["list_p50_ms"]),
            f(&r["list_p99_ms"]),
        );
    }
}

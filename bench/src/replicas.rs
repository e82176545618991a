//! Scale-out on PostgreSQL: the same round-robin workload (creates, calls,
//! syncs, closes) on one daemon and on three daemons sharing one database,
//! in the same run, with each daemon's CPU time and RSS. PostgreSQL only:
//! replicas need a database server they all reach.

use std::time::Instant;

use futures::{StreamExt, stream};
use mcpd::proto::{self, create_mcp_server_request::Transport};
use serde_json::{Value, json};
use tonic::Status;

use crate::{
    env::{Daemon, Db, Proc, ProcStat, start_http_server},
    stats::{round, summarize},
};

/// The workload's size.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaPlan {
    pub servers: usize,
    pub calls: usize,
}

impl ReplicaPlan {
    pub fn new(quick: bool) -> ReplicaPlan {
        if quick {
            ReplicaPlan {
                servers: 30,
                calls: 150,
            }
        } else {
            ReplicaPlan {
                servers: 200,
                calls: 2_000,
            }
        }
    }
}

/// Every this many servers one is a stdio server (a child per replica that
/// calls it); the others are registrations of a few HTTP test servers.
const STDIO_EVERY: usize = 20;
const HTTP_SERVERS: usize = 4;
/// Requests in flight at once, over all replicas.
const IN_FLIGHT: usize = 32;
const OPERATIONS: [&str; 4] = ["create", "call", "sync", "close"];

/// Where the daemons come from: a started daemon per call, on `db`, for
/// `org`, with these extra arguments.
pub struct Launch<'a> {
    pub bin: &'a str,
    pub db: &'a Db,
    pub pool_size: u32,
    pub pool_timeout: std::time::Duration,
    /// The test server, canonical (the stdio allowlist matches exactly).
    pub test_server: &'a str,
}

impl Launch<'_> {
    async fn daemon(&self, org: &str) -> anyhow::Result<Daemon> {
        Daemon::start(
            self.bin,
            self.db,
            self.pool_size,
            self.pool_timeout,
            &[org.to_owned()],
            &["--stdio-allow".to_owned(), self.test_server.to_owned()],
        )
        .await
    }
}

/// One row per replica count (1, then 3), and the ratio of their
/// throughputs per operation on the second.
pub async fn run(launch: &Launch<'_>, plan: ReplicaPlan) -> anyhow::Result<Vec<Value>> {
    let mut http: Vec<(Proc, String)> = Vec::new();
    for _ in 0..HTTP_SERVERS {
        http.push(start_http_server(launch.test_server, &["--tools", "3"]).await?);
    }
    let urls: Vec<String> = http.iter().map(|(_, url)| url.clone()).collect();
    let mut rows = Vec::new();
    for replicas in [1, 3] {
        let org = format!("replicas-{replicas}");
        let mut daemons = Vec::new();
        for _ in 0..replicas {
            daemons.push(launch.daemon(&org).await?);
        }
        let row = workload(&daemons, &org, &urls, launch.test_server, plan).await;
        for daemon in daemons {
            daemon.proc.terminate().await;
        }
        let row = row?;
        eprintln!("  replicas={replicas}: {row}");
        rows.push(row);
    }
    if let [one, three] = &mut rows[..] {
        for op in OPERATIONS {
            let key = format!("{op}_per_s");
            let (a, b) = (one[&key].as_f64(), three[&key].as_f64());
            if let (Some(a), Some(b)) = (a, b)
                && a > 0.0
            {
                three[format!("{op}_vs_one")] = json!(round(b / a));
            }
        }
    }
    Ok(rows)
}

/// One timed phase: its latencies, errors and wall time.
#[derive(Default)]
struct Phase {
    latencies: Vec<f64>,
    errors: u64,
    secs: f64,
    first_error: Option<String>,
}

impl Phase {
    async fn run<F, T>(n: usize, job: impl Fn(usize) -> F) -> (Phase, Vec<Option<T>>)
    where
        F: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let results: Vec<(f64, Result<T, Status>)> = stream::iter(0..n)
            .map(|i| {
                let job = job(i);
                async move {
                    let started = Instant::now();
                    let result = job.await;
                    (started.elapsed().as_secs_f64() * 1000.0, result)
                }
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        let mut phase = Phase {
            secs: started.elapsed().as_secs_f64(),
            ..Phase::default()
        };
        let mut values = Vec::with_capacity(n);
        for (ms, result) in results {
            match result {
                Ok(value) => {
                    phase.latencies.push(ms);
                    values.push(Some(value));
                }
                Err(status) => {
                    phase.errors += 1;
                    phase.first_error.get_or_insert_with(|| status.to_string());
                    values.push(None);
                }
            }
        }
        (phase, values)
    }

    fn report(&self, name: &str, row: &mut Value) {
        let s = summarize(&self.latencies);
        row[format!("{name}_per_s")] = json!(round(self.latencies.len() as f64 / self.secs));
        row[format!("{name}_p50_ms")] = json!(round(s.p50));
        row[format!("{name}_p99_ms")] = json!(round(s.p99));
        row[format!("{name}_errors")] = json!(self.errors);
        if let Some(error) = &self.first_error {
            eprintln!("  {name}: {} failed, the first: {error}", self.errors);
        }
    }
}

async fn workload(
    daemons: &[Daemon],
    org: &str,
    urls: &[String],
    test_server: &str,
    plan: ReplicaPlan,
) -> anyhow::Result<Value> {
    let on = |i: usize| &daemons[i % daemons.len()];
    let transport = |i: usize| {
        if i.is_multiple_of(STDIO_EVERY) {
            Transport::Stdio(proto::StdioTransport {
                command: test_server.to_owned(),
                args: vec!["--tools".into(), "3".into()],
                env: Default::default(),
            })
        } else {
            Transport::StreamableHttp(proto::StreamableHttpTransport {
                url: urls[i % urls.len()].clone(),
                headers: Default::default(),
                oauth: None,
            })
        }
    };
    let pids: Vec<Option<u32>> = daemons.iter().map(|d| d.proc.pid()).collect();
    let before: Vec<ProcStat> = pids.iter().map(|pid| ProcStat::of(*pid)).collect();
    let started = Instant::now();

    let (creates, ids) = Phase::run(plan.servers, |i| {
        let daemon = on(i);
        let request = proto::CreateMcpServerRequest {
            server_name: format!("replicated-{i:04}"),
            transport: Some(transport(i)),
            tool_prefix: String::new(),
        };
        async move {
            let response = daemon
                .client()
                .create_mcp_server(daemon.req(org, request))
                .await?;
            Ok(response
                .into_inner()
                .server
                .map(|s| s.id)
                .unwrap_or_default())
        }
    })
    .await;
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    anyhow::ensure!(!ids.is_empty(), "no server was created");

    // Call j goes to replica j mod R and server j mod servers: each server
    // is called on every replica, whichever created it.
    let (calls, _) = Phase::run(plan.calls, |j| {
        let daemon = on(j);
        let request = proto::CallMcpToolRequest {
            server_id: ids[j % ids.len()].clone(),
            tool_name: "tool_0001".into(),
            arguments_json: json!({"x": j}).to_string(),
        };
        async move {
            let answer = daemon
                .client()
                .call_mcp_tool(daemon.req(org, request))
                .await?
                .into_inner();
            if answer.is_error {
                return Err(Status::internal(format!("the tool failed: {answer:?}")));
            }
            Ok(())
        }
    })
    .await;
    // What each replica holds once every server has a live session there.
    let busy: Vec<ProcStat> = pids.iter().map(|pid| ProcStat::of(*pid)).collect();

    let (syncs, _) = Phase::run(ids.len(), |i| {
        let daemon = on(i + 1);
        let request = proto::SyncMcpServerToolsRequest {
            server_id: ids[i].clone(),
        };
        async move {
            daemon
                .client()
                .sync_mcp_server_tools(daemon.req(org, request))
                .await?;
            Ok(())
        }
    })
    .await;
    let (closes, _) = Phase::run(ids.len(), |i| {
        let daemon = on(i + 2);
        let request = proto::CloseMcpServerRequest {
            server_id: ids[i].clone(),
        };
        async move {
            daemon
                .client()
                .close_mcp_server(daemon.req(org, request))
                .await?;
            Ok(())
        }
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let after: Vec<ProcStat> = pids.iter().map(|pid| ProcStat::of(*pid)).collect();

    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| round(a.cpu_secs - b.cpu_secs))
        .collect();
    let mut row = json!({
        "scenario": "replicas",
        "backend": "postgres",
        "replicas": daemons.len(),
        "servers": plan.servers,
        "calls": plan.calls,
        "seconds": round(seconds),
        "errors": creates.errors + calls.errors + syncs.errors + closes.errors,
        "cpu_secs_per_replica": cpu,
        "cpu_secs_total": round(cpu.iter().sum::<f64>()),
        "rss_mb_per_replica": busy.iter().map(|s| round(s.rss_bytes as f64 / 1_048_576.0)).collect::<Vec<_>>(),
    });
    for (name, phase) in OPERATIONS.iter().zip([&creates, &calls, &syncs, &closes]) {
        phase.report(name, &mut row);
    }
    Ok(row)
}

/// The table of [`run`]'s rows.
pub fn print_table(rows: &[Value]) {
    if rows.is_empty() {
        return;
    }
    let f = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    println!("\nReplicas on one PostgreSQL: round-robin creates, calls, syncs, closes");
    println!(
        "{:<8} {:>7} {:>6} {:>6} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>7} {:>20} {:>16}",
        "replicas",
        "servers",
        "calls",
        "errors",
        "create/s",
        "create p99",
        "call/s",
        "call p50",
        "call p99",
        "sync/s",
        "close/s",
        "vs one",
        "CPU s per replica",
        "RSS MB"
    );
    for r in rows {
        let list = |v: &Value| {
            v.as_array()
                .map(|a| a.iter().map(f).collect::<Vec<_>>().join("/"))
                .unwrap_or_default()
        };
        println!(
            "{:<8} {:>7} {:>6} {:>6} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>7} {:>20} {:>16}",
            f(&r["replicas"]),
            f(&r["servers"]),
            f(&r["calls"]),
            f(&r["errors"]),
            f(&r["create_per_s"]),
            f(&r["create_p99_ms"]),
            f(&r["call_per_s"]),
            f(&r["call_p50_ms"]),
            f(&r["call_p99_ms"]),
            f(&r["sync_per_s"]),
            f(&r["close_per_s"]),
            f(&r["call_vs_one"]),
            list(&r["cpu_secs_per_replica"]),
            list(&r["rss_mb_per_replica"]),
        );
    }
}

//! The things a run needs: a throwaway database, the release daemon as a
//! separate process, and synthetic MCP servers over streamable HTTP.

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use mcpd::{
    api::AUTHORIZATION_HEADER,
    proto::{
        admin_service_client::AdminServiceClient, mcp_server_service_client::McpServerServiceClient,
    },
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{Request, transport::Channel};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// A database for one run of one backend, dropped at the end.
pub struct Db {
    pub backend: Backend,
    /// As `--database-url` takes it.
    pub url: String,
    pg_admin: String,
    pg_name: Option<String>,
    /// Scratch space: the SQLite file, the daemon's secret key.
    pub dir: PathBuf,
}

impl Db {
    pub async fn create(backend: Backend, pg_admin: &str) -> anyhow::Result<Db> {
        let tag = format!("{}_{}", std::process::id(), uuid::Uuid::now_v7().simple());
        let dir = std::env::temp_dir().join(format!("mcpd-bench-{tag}"));
        std::fs::create_dir_all(&dir)?;
        match backend {
            Backend::Postgres => {
                let name = format!("mcpd_bench_{tag}");
                let mut admin = AsyncPgConnection::establish(pg_admin)
                    .await
                    .with_context(|| format!("connecting to {pg_admin}"))?;
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await?;
                let base = pg_admin.rsplit_once('/').map_or(pg_admin, |(base, _)| base);
                Ok(Db {
                    backend,
                    url: format!("{base}/{name}"),
                    pg_admin: pg_admin.to_owned(),
                    pg_name: Some(name),
                    dir,
                })
            }
            Backend::Sqlite => Ok(Db {
                backend,
                url: format!("sqlite://{}", dir.join("mcpd.db").display()),
                pg_admin: pg_admin.to_owned(),
                pg_name: None,
                dir,
            }),
        }
    }

    /// The SQLite file's path (for the floor).
    pub fn sqlite_path(&self) -> anyhow::Result<String> {
        self.url
            .strip_prefix("sqlite://")
            .map(str::to_owned)
            .with_context(|| format!("{} is not a SQLite URL", self.url))
    }

    pub async fn drop_db(self) {
        if let Some(name) = &self.pg_name
            && let Ok(mut admin) = AsyncPgConnection::establish(&self.pg_admin).await
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM and wait: the daemon's own shutdown path.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        }
    }
}

/// What `/proc/<pid>/stat` says about a process: the CPU time it used so
/// far (user + system, its own threads; children it reaped are not
/// counted) and its resident set.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

impl ProcStat {
    pub fn of(pid: Option<u32>) -> ProcStat {
        pid.and_then(Self::read).unwrap_or_default()
    }

    fn read(pid: u32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command may hold spaces: count fields after its closing
        // parenthesis, where field 3 (state) is index 0 (man 5 proc).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let (utime, stime, rss_pages) = (field(14)?, field(15)?, field(24)?);
        // SAFETY: sysconf reads a constant of the system.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Some(ProcStat {
            cpu_secs: (utime + stime) as f64 / ticks.max(1) as f64,
            rss_bytes: rss_pages * u64::try_from(page).ok()?,
        })
    }
}

/// The rmcp test server on a free loopback port, serving `tools` synthetic
/// tools whose names are unique per session.
pub async fn start_mcp_server(bin: &str, tools: usize) -> anyhow::Result<(Proc, String)> {
    start_http_server(
        bin,
        &[
            "--unique-per-session",
            "--tools",
            &tools.to_string(),
            "--page-size",
            "500",
        ],
    )
    .await
}

/// The rmcp test server over streamable HTTP on a free loopback port, with
/// `args` added to its command line.
pub async fn start_http_server(bin: &str, args: &[&str]) -> anyhow::Result<(Proc, String)> {
    let mut child = Command::new(bin)
        .args(["--transport", "http", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let stdout = child.stdout.take().context("test server stdout")?;
    let line = tokio::time::timeout(
        Duration::from_secs(20),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .context("test server did not announce its address")??
    .context("test server exited")?;
    let url = line
        .strip_prefix("LISTENING ")
        .with_context(|| format!("unexpected line {line:?}"))?
        .trim()
        .to_owned();
    Ok((Proc { child }, url))
}

pub struct Daemon {
    pub proc: Proc,
    pub channel: Channel,
    /// An API key per organization the scenarios act for.
    keys: HashMap<String, String>,
}

impl Daemon {
    pub async fn start(
        bin: &str,
        db: &Db,
        pool_size: u32,
        pool_timeout: Duration,
        orgs: &[String],
        extra_args: &[String],
    ) -> anyhow::Result<Daemon> {
        let mut keys = HashMap::new();
        for org in orgs {
            let output = Command::new(bin)
                .args([
                    "keys",
                    "create",
                    "--org",
                    org,
                    "--name",
                    "mcpd-bench",
                    "--database-url",
                    &db.url,
                ])
                .output()
                .await?;
            anyhow::ensure!(
                output.status.success(),
                "mcpd keys create: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            keys.insert(
                org.clone(),
                String::from_utf8(output.stdout)?.trim().to_owned(),
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(bin)
            .env("RUST_LOG", "warn")
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", "127.0.0.1:0"])
            .args([
                "--database-url",
                &db.url,
                "--pool-size",
                &pool_size.to_string(),
            ])
            .args([
                "--pool-timeout",
                &humantime::format_duration(pool_timeout).to_string(),
                "--mcp-connect-timeout",
                "60s",
                "--mcp-list-timeout",
                "60s",
                // The synthetic servers listen on loopback.
                "--outbound-allow",
                "127.0.0.0/8",
            ])
            .arg("--secret-key-file")
            .arg(db.dir.join("mcpd.key"))
            .arg("--run-dir")
            .arg(db.dir.join("mcpd.run"))
            .args(extra_args)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let proc = Proc { child };
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..400 {
            if let Ok(channel) = Channel::from_shared(endpoint.clone())?.connect().await {
                return Ok(Daemon {
                    proc,
                    channel,
                    keys,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("daemon did not serve on {endpoint}")
    }

    pub fn client(&self) -> McpServerServiceClient<Channel> {
        McpServerServiceClient::new(self.channel.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// A request on behalf of `org` (one of those given to `start`).
    pub fn req<T>(&self, org: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let key = self.keys.get(org).map(String::as_str).unwrap_or_default();
        if let Ok(value) = format!("Bearer {key}").parse() {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value);
        }
        request
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }
}

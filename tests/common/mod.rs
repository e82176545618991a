//! Shared test harness: a throwaway database per test (PostgreSQL or an
//! SQLite file), an in-process daemon on a free loopback port, a tonic
//! client, and the paths of the real MCP servers the tests talk to.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use mcpd::{
    api::{self, ServeOptions},
    manager::{Limits, Manager},
    mcp::{McpConnector, McpSettings, outbound::OutboundPolicy},
    proto::{self, mcp_server_service_client::McpServerServiceClient},
    store::{self, DatabaseUrl, Sealer, Store, StoreSettings},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, transport::Channel};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Instantiates an async test body once per backend.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// A database that exists for one test only.
pub struct TestDb {
    pub url: DatabaseUrl,
    pg_name: Option<String>,
    /// Scratch space for this test: the SQLite file, key files.
    dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => {
                static N: AtomicU64 = AtomicU64::new(0);
                let name = format!(
                    "mcpd_test_{}_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed),
                    uuid::Uuid::new_v4().simple()
                );
                let mut admin = AsyncPgConnection::establish(PG_ADMIN_URL).await.expect(
                    "PostgreSQL on 127.0.0.1:5432 (see README: the test command starts it)",
                );
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                TestDb {
                    url: DatabaseUrl::Postgres(format!(
                        "postgres://postgres@127.0.0.1:5432/{name}"
                    )),
                    pg_name: Some(name),
                    dir: tempfile::tempdir().expect("temp dir"),
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("mcpd.db");
                TestDb {
                    url: DatabaseUrl::Sqlite(path.to_string_lossy().into_owned()),
                    pg_name: None,
                    dir,
                }
            }
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The URL as `--database-url` takes it.
    pub fn cli_url(&self) -> String {
        match &self.url {
            DatabaseUrl::Postgres(url) => url.clone(),
            DatabaseUrl::Sqlite(path) => format!("sqlite://{path}"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside any runtime we may block: use a thread.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(mut admin) = AsyncPgConnection::establish(PG_ADMIN_URL).await {
                        let _ = diesel::sql_query(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        ))
                        .execute(&mut admin)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub pool_size: u32,
    pub pool_timeout: Duration,
    pub mcp: McpSettings,
    pub limits: Limits,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            pool_size: 10,
            pool_timeout: Duration::from_secs(10),
            mcp: test_mcp_settings(),
            limits: Limits::default(),
        }
    }
}

/// What the tests' daemons may run and reach: the test server and node over
/// stdio, loopback over HTTP.
pub fn test_mcp_settings() -> McpSettings {
    McpSettings {
        connect_timeout: Duration::from_secs(30),
        list_timeout: Duration::from_secs(30),
        teardown_grace: Duration::from_millis(500),
        stdio_allow: vec![test_server_bin(), "node".to_owned()],
        outbound: OutboundPolicy::new(&LOOPBACK.map(String::from), &[]).unwrap(),
        ..McpSettings::default()
    }
}

/// `--outbound-allow` for loopback, where every test server listens.
pub const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// An in-process daemon serving on a free loopback port.
pub struct Daemon {
    pub db: std::sync::Arc<TestDb>,
    pub keys: Keys,
    pub store: Store,
    pub manager: Manager,
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Daemon {
    pub async fn start(backend: Backend) -> Daemon {
        Self::start_with(backend, DaemonOptions::default()).await
    }

    pub async fn start_with(backend: Backend, options: DaemonOptions) -> Daemon {
        let db = std::sync::Arc::new(TestDb::new(backend).await);
        Self::start_on(db, options).await
    }

    /// A daemon on an existing database: several daemons can share one.
    pub async fn start_on(db: std::sync::Arc<TestDb>, options: DaemonOptions) -> Daemon {
        mcpd::telemetry::init();
        store::run_migrations(&db.url).await.expect("migrations");
        let store = Store::open(StoreSettings {
            url: db.url.clone(),
            pool_size: options.pool_size,
            acquire_timeout: options.pool_timeout,
            sealer: Some(Sealer::from_key(rand::random())),
        })
        .await
        .expect("open store");
        let manager = Manager::new(
            store.clone(),
            McpConnector::new(options.mcp).expect("mcp connector"),
            options.limits,
        );
        let keys = Keys::create(&manager).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let manager = manager.clone();
            async move {
                api::serve(
                    listener,
                    manager,
                    ServeOptions {
                        drain_timeout: Duration::from_secs(10),
                    },
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
                .expect("serve");
            }
        });
        Daemon {
            db,
            keys,
            store,
            manager,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> McpServerServiceClient<Channel> {
        McpServerServiceClient::new(self.channel().await)
    }

    /// A connected channel to the daemon, for any of its services.
    pub async fn channel(&self) -> Channel {
        let endpoint = format!("http://{}", self.addr);
        for _ in 0..100 {
            if let Ok(channel) = Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
            {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("daemon at {endpoint} did not accept connections");
    }

    /// The servers `org` sees (first 1000).
    pub async fn servers(&self, org: &str) -> Vec<proto::McpServer> {
        self.client()
            .await
            .list_mcp_servers(self.keys.req(
                org,
                proto::ListMcpServersRequest {
                    page_size: 1000,
                    ..Default::default()
                },
            ))
            .await
            .expect("list servers")
            .into_inner()
            .servers
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Organizations the tests act for; each test daemon has a key for each.
pub const ORGS: &[&str] = &["acme", "org-a", "org-b", "globex"];

/// A request carrying an API key.
pub fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        api::AUTHORIZATION_HEADER,
        format!("Bearer {key}").parse().unwrap(),
    );
    request
}

/// API keys by organization.
#[derive(Clone, Default)]
pub struct Keys(std::sync::Arc<std::collections::HashMap<String, String>>);

impl Keys {
    pub async fn create(manager: &Manager) -> Keys {
        let mut keys = std::collections::HashMap::new();
        for org in ORGS {
            let created = manager
                .create_api_key(org, "tests")
                .await
                .expect("create key");
            keys.insert(org.to_string(), created.key);
        }
        Keys(std::sync::Arc::new(keys))
    }

    pub fn key(&self, org: &str) -> &str {
        self.0
            .get(org)
            .unwrap_or_else(|| panic!("no test key for organization {org:?}; add it to ORGS"))
    }

    /// A request made on behalf of `org`.
    pub fn req<T>(&self, org: &str, message: T) -> Request<T> {
        with_key(self.key(org), message)
    }
}

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The rmcp test server (tests/mcp-test-server), built by the test command.
pub fn test_server_bin() -> String {
    if let Ok(path) = std::env::var("MCP_TEST_SERVER_BIN") {
        return path;
    }
    let path = target_dir().join("mcp-test-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p mcp-test-server` first (the README's test command does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

pub fn stdio(args: &[&str]) -> proto::create_mcp_server_request::Transport {
    proto::create_mcp_server_request::Transport::Stdio(proto::StdioTransport {
        command: test_server_bin(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
    })
}

/// A streamable HTTP transport with no extra headers.
pub fn streamable_http(url: &str) -> proto::create_mcp_server_request::Transport {
    proto::create_mcp_server_request::Transport::StreamableHttp(proto::StreamableHttpTransport {
        url: url.to_owned(),
        headers: Default::default(),
    })
}

pub fn create_request(
    name: &str,
    transport: proto::create_mcp_server_request::Transport,
) -> proto::CreateMcpServerRequest {
    proto::CreateMcpServerRequest {
        server_name: name.to_owned(),
        transport: Some(transport),
    }
}

/// Whether a process with this pid still exists (a zombie counts as gone:
/// it is reaped by whoever owns it).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Waits up to `within` for every pid to be gone.
pub async fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| process_alive(*p)).collect();
        if alive.is_empty() || tokio::time::Instant::now() > deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most 20 s) until a `--spawn-grandchild` test server has
/// written its pids, then returns them.
pub async fn wait_for_pids(path: &std::path::Path) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pids = read_pids(path);
        if pids.len() >= 2 {
            return pids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the test server never wrote {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pids a `--spawn-grandchild PIDFILE` test server wrote.
pub fn read_pids(path: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The rmcp test server serving streamable HTTP on a free loopback port.
pub struct HttpTestServer {
    pub url: String,
    child: tokio::process::Child,
}

impl HttpTestServer {
    pub async fn start(args: &[&str]) -> HttpTestServer {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(test_server_bin())
            .args(["--transport", "http", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start mcp-test-server over http");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("test server announces its address")
            .unwrap()
            .expect("a LISTENING line");
        let url = line
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .trim()
            .to_owned();
        HttpTestServer { url, child }
    }
}

/// A write lock on the registry held by a connection outside the daemon's
/// pool, to make the daemon's own connection wait.
pub enum DbLock {
    Postgres(Box<AsyncPgConnection>),
    Sqlite(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
}

impl DbLock {
    pub async fn take(db: &TestDb) -> DbLock {
        use diesel_async::AsyncConnection as _;
        match &db.url {
            DatabaseUrl::Postgres(url) => {
                let mut conn = AsyncPgConnection::establish(url).await.unwrap();
                diesel::sql_query("BEGIN").execute(&mut conn).await.unwrap();
                diesel::sql_query("LOCK TABLE mcp_servers IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                DbLock::Postgres(Box::new(conn))
            }
            DatabaseUrl::Sqlite(path) => {
                use diesel::Connection;
                let path = path.clone();
                let (locked_tx, locked_rx) = std::sync::mpsc::channel();
                let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
                let thread = std::thread::spawn(move || {
                    let mut conn = diesel::SqliteConnection::establish(&path).unwrap();
                    diesel::RunQueryDsl::execute(diesel::sql_query("BEGIN EXCLUSIVE"), &mut conn)
                        .unwrap();
                    locked_tx.send(()).unwrap();
                    let _ = release_rx.recv();
                    diesel::RunQueryDsl::execute(diesel::sql_query("COMMIT"), &mut conn).unwrap();
                });
                locked_rx.recv().unwrap();
                DbLock::Sqlite(release_tx, thread)
            }
        }
    }

    pub async fn release(self) {
        match self {
            DbLock::Postgres(mut conn) => {
                diesel::sql_query("COMMIT")
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            DbLock::Sqlite(release, thread) => {
                release.send(()).unwrap();
                tokio::task::spawn_blocking(move || thread.join().unwrap())
                    .await
                    .unwrap();
            }
        }
    }
}

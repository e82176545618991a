//! Shared test harness: a throwaway database per test (PostgreSQL or an
//! SQLite file), an in-process daemon on a loopback port, a typed client per
//! organization, the real MCP servers the tests talk to, and waits on
//! conditions (never on the clock).
#![allow(dead_code)]

mod groups;
mod registry;
mod serve;
mod spawn;
mod wait;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
#[allow(unused_imports)]
pub use groups::{GroupLeader, dead_record, records, start_time};
use mcpd::{
    api::{self, ServeOptions},
    manager::{Limits, Manager},
    mcp::{McpConnector, McpSettings, OAuthSettings, outbound::OutboundPolicy},
    proto::{
        self, create_mcp_server_request::Transport,
        mcp_server_service_client::McpServerServiceClient,
    },
    store::{self, DatabaseUrl, Sealer, Store, StoreSettings},
};
#[allow(unused_imports)]
pub use registry::{PgActivity, Registry, StoredKey, StoredLease, StoredServer};
#[allow(unused_imports)]
pub use serve::{
    McpdProcess, announced_mcpd, mcpd_command, serve_command, serve_command_in, start_mcpd,
    stop_mcpd,
};
#[allow(unused_imports)]
pub use spawn::{
    Announced, HttpTestServer, On, address_after, after_prefix, refused_port, spawn_announcing,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    transport::{Channel, ClientTlsConfig},
};
#[allow(unused_imports)]
pub use wait::{Pidfile, Pids, assert_gone, process_alive, wait_for, wait_until};

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
    /// The secret key of the daemons on this database: replicas share one,
    /// as they share a `--secret-key-file`.
    secret_key: [u8; 32],
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
                    secret_key: rand::random(),
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("mcpd.db");
                TestDb {
                    url: DatabaseUrl::Sqlite(path.to_string_lossy().into_owned()),
                    pg_name: None,
                    dir,
                    secret_key: rand::random(),
                }
            }
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The run directory (`--run-dir`) of the daemons on this database.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("mcpd.run")
    }

    /// The PostgreSQL database's name (`None` on SQLite).
    pub fn pg_name(&self) -> Option<&str> {
        self.pg_name.as_deref()
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
    pub event_retention: mcpd::store::EventRetention,
    /// Serve gRPC over TLS; the harness's own clients (`channel`, `org`)
    /// then connect with `DaemonTls::client`.
    pub tls: Option<DaemonTls>,
}

#[derive(Debug, Clone)]
pub struct DaemonTls {
    pub server: api::TlsSettings,
    pub client: ClientTlsConfig,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            pool_size: 10,
            pool_timeout: Duration::from_secs(10),
            mcp: test_mcp_settings(),
            limits: Limits::default(),
            event_retention: Default::default(),
            tls: None,
        }
    }
}

impl DaemonOptions {
    /// Automatic syncs after a quiet moment of 50 ms instead of the
    /// default's half second: announcement tests wait on the sync.
    pub fn quick_sync() -> Self {
        DaemonOptions {
            limits: Limits {
                sync_debounce: Duration::from_millis(50),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Two replicas on one PostgreSQL database, and a client of `acme` on each.
pub async fn two_replicas() -> (Daemon, Daemon, OrgClient, OrgClient) {
    let db = std::sync::Arc::new(TestDb::new(Backend::Postgres).await);
    let left = Daemon::start_on(db.clone(), DaemonOptions::default()).await;
    let right = Daemon::start_on(db, DaemonOptions::default()).await;
    let key = left.keys.key("acme").to_owned();
    let on_left = OrgClient::new(left.channel().await, &key);
    let on_right = OrgClient::new(right.channel().await, &key);
    (left, right, on_left, on_right)
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

/// An in-process daemon serving on a loopback port it bound itself.
pub struct Daemon {
    pub db: std::sync::Arc<TestDb>,
    pub keys: Keys,
    pub store: Store,
    pub manager: Manager,
    pub addr: std::net::SocketAddr,
    /// The HTTP listener (OAuth callback).
    pub http_addr: std::net::SocketAddr,
    client_tls: Option<ClientTlsConfig>,
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
            sealer: Some(Sealer::from_key(db.secret_key)),
            event_retention: options.event_retention,
        })
        .await
        .expect("open store");
        // The OAuth callback's listener, bound first: the redirect URI
        // names its port.
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let oauth = options.mcp.oauth.clone().unwrap_or_else(|| OAuthSettings {
            redirect_uri: format!("http://{http_addr}/oauth/callback")
                .parse()
                .unwrap(),
            client_metadata_url: None,
            client_name: "mcpd".into(),
        });
        let manager = Manager::new(
            store.clone(),
            McpConnector::new(McpSettings {
                oauth: Some(oauth.clone()),
                // Daemons on one database share a run directory, as replicas
                // on one machine may.
                run_dir: Some(options.mcp.run_dir.clone().unwrap_or_else(|| db.run_dir())),
                ..options.mcp
            })
            .expect("mcp connector"),
            options.limits,
        );
        let keys = Keys::create(&manager).await;
        // Bound here and handed over: it accepts connections from now on.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (tls, client_tls) = match options.tls {
            Some(DaemonTls { server, client }) => (Some(server), Some(client)),
            None => (None, None),
        };
        let task = tokio::spawn({
            let manager = manager.clone();
            async move {
                api::serve(
                    listener,
                    Some(api::HttpEdge {
                        listener: http,
                        oauth,
                    }),
                    manager,
                    ServeOptions {
                        drain_timeout: Duration::from_secs(10),
                        tls,
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
            http_addr,
            client_tls,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client acting for `org`, with the daemon's key for it.
    pub async fn org(&self, org: &str) -> OrgClient {
        OrgClient::new(self.channel().await, self.keys.key(org))
    }

    /// A connected channel to the daemon, for any of its services.
    pub async fn channel(&self) -> Channel {
        let endpoint = endpoint(self.addr, self.client_tls.clone());
        match try_connect(self.addr, self.client_tls.clone()).await {
            Ok(channel) => channel,
            Err(e) => panic!("connecting to the daemon at {endpoint}: {e:?}"),
        }
    }

    /// The registry's tables, read behind the daemon's back.
    pub fn registry(&self) -> Registry {
        Registry::of(&self.db)
    }

    /// MCP sessions the daemon holds open right now.
    pub fn open_sessions(&self) -> usize {
        self.manager.stats().open_mcp_sessions
    }

    /// The daemon's connection pool right now.
    pub fn pool(&self) -> mcpd::store::PoolStats {
        self.manager.stats().pool
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

/// A channel to a daemon that is listening already.
pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    try_connect(addr, None)
        .await
        .unwrap_or_else(|e| panic!("connecting to the daemon at {addr}: {e}"))
}

/// The daemon's URL: `https` when the client speaks TLS.
pub fn endpoint(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> String {
    match tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// A channel to a daemon that is listening already, over TLS with `tls`.
pub async fn try_connect(
    addr: std::net::SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Channel::from_shared(endpoint(addr, tls.clone())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await
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
}

/// The registry service as one organization calls it: typed calls that
/// follow every page, and `raw()`/`req()` for anything else (metadata,
/// hand-made requests). Cheap to clone; calls run concurrently.
#[derive(Clone)]
pub struct OrgClient {
    client: McpServerServiceClient<Channel>,
    key: String,
}

impl OrgClient {
    pub fn new(channel: Channel, key: &str) -> OrgClient {
        OrgClient {
            client: McpServerServiceClient::new(channel),
            key: key.to_owned(),
        }
    }

    /// A client for the daemon listening at `addr`, calling with `key`.
    pub async fn connect(addr: std::net::SocketAddr, key: &str) -> OrgClient {
        OrgClient::new(connect(addr).await, key)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// A request carrying this organization's key.
    pub fn req<T>(&self, message: T) -> Request<T> {
        with_key(&self.key, message)
    }

    /// The generated client, for calls the typed methods do not cover.
    pub fn raw(&self) -> McpServerServiceClient<Channel> {
        self.client.clone()
    }

    pub async fn create(
        &self,
        name: &str,
        transport: Transport,
    ) -> Result<proto::CreateMcpServerResponse, Status> {
        self.raw()
            .create_mcp_server(self.req(create_request(name, transport)))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Creates all these servers at once; the answers in the same order.
    pub async fn create_concurrently(
        &self,
        servers: impl IntoIterator<Item = (String, Transport)>,
    ) -> Vec<Result<proto::CreateMcpServerResponse, Status>> {
        futures::future::join_all(
            servers
                .into_iter()
                .map(|(name, transport)| async move { self.create(&name, transport).await }),
        )
        .await
    }

    /// CallMcpTool as this organization.
    pub async fn call_tool(
        &self,
        request: proto::CallMcpToolRequest,
    ) -> Result<proto::CallMcpToolResponse, Status> {
        Ok(self
            .raw()
            .call_mcp_tool(self.req(request))
            .await?
            .into_inner())
    }

    pub async fn get(&self, server_id: &str) -> Result<proto::McpServer, Status> {
        let response = self
            .raw()
            .get_mcp_server(self.req(proto::GetMcpServerRequest {
                server_id: server_id.to_owned(),
            }))
            .await?
            .into_inner();
        Ok(response.server.expect("GetMcpServer answers a server"))
    }

    pub async fn close(&self, server_id: &str) -> Result<proto::CloseMcpServerResponse, Status> {
        self.raw()
            .close_mcp_server(self.req(proto::CloseMcpServerRequest {
                server_id: server_id.to_owned(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// One page of a server's tools.
    pub async fn tools_page(
        &self,
        server_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<proto::ListMcpServerToolsResponse, Status> {
        self.raw()
            .list_mcp_server_tools(self.req(proto::ListMcpServerToolsRequest {
                server_id: server_id.to_owned(),
                page_size,
                page_token: page_token.to_owned(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// All of a server's tools, every page.
    pub async fn tools(&self, server_id: &str) -> Result<Vec<proto::Tool>, Status> {
        let mut tools = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.tools_page(server_id, 0, &token).await?;
            tools.extend(page.tools);
            if page.next_page_token.is_empty() {
                return Ok(tools);
            }
            token = page.next_page_token;
        }
    }

    pub async fn sync(&self, server_id: &str) -> Result<proto::SyncMcpServerToolsResponse, Status> {
        self.raw()
            .sync_mcp_server_tools(self.req(proto::SyncMcpServerToolsRequest {
                server_id: server_id.to_owned(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// One page of the organization's servers.
    pub async fn servers_page(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<proto::ListMcpServersResponse, Status> {
        self.list_servers(proto::ListMcpServersRequest {
            page_size,
            page_token: page_token.to_owned(),
            ..Default::default()
        })
        .await
    }

    pub async fn list_servers(
        &self,
        request: proto::ListMcpServersRequest,
    ) -> Result<proto::ListMcpServersResponse, Status> {
        self.raw()
            .list_mcp_servers(self.req(request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// All of the organization's servers, every page, oldest first.
    /// The organization's events: after `after`, or from now (a bookmark
    /// first).
    pub async fn watch(&self, after: Option<u64>) -> Result<Watch, Status> {
        let stream = self
            .raw()
            .watch_mcp_servers(self.req(proto::WatchMcpServersRequest { after }))
            .await?
            .into_inner();
        Ok(Watch(stream))
    }

    pub async fn servers(&self) -> Result<Vec<proto::McpServer>, Status> {
        let mut servers = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.servers_page(0, &token).await?;
            servers.extend(page.servers);
            if page.next_page_token.is_empty() {
                return Ok(servers);
            }
            token = page.next_page_token;
        }
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

/// Where the npm packages the tests use are installed (`npm ci --prefix`).
pub fn support_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

/// The reference server `@modelcontextprotocol/server-everything`'s entry
/// point, for `node`.
pub fn everything_js() -> String {
    let path =
        support_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        path.exists(),
        "{} is missing: run `npm ci --prefix tests/support` (the README's test command does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// server-everything over stdio, run by `node`.
pub fn everything_stdio() -> Transport {
    command("node", [everything_js(), "stdio".to_owned()])
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

fn strings(items: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

/// The test server over stdio, with these arguments.
pub fn stdio(args: impl IntoIterator<Item = impl Into<String>>) -> Transport {
    command(test_server_bin(), args)
}

/// Any program over stdio.
pub fn command(
    program: impl Into<String>,
    args: impl IntoIterator<Item = impl Into<String>>,
) -> Transport {
    Transport::Stdio(proto::StdioTransport {
        command: program.into(),
        args: strings(args),
        env: Default::default(),
    })
}

/// A streamable HTTP transport with no extra headers.
pub fn streamable_http(url: impl Into<String>) -> Transport {
    Transport::StreamableHttp(proto::StreamableHttpTransport {
        url: url.into(),
        headers: Default::default(),
        oauth: None,
    })
}

/// A legacy SSE transport with no extra headers.
pub fn sse(url: impl Into<String>) -> Transport {
    Transport::Sse(proto::SseTransport {
        url: url.into(),
        headers: Default::default(),
    })
}

/// Adds env variables (stdio) or headers (HTTP, SSE) to a transport.
pub trait TransportExt {
    /// An env variable for stdio, a header for the others.
    fn with(self, name: &str, value: impl Into<String>) -> Self;
}

impl TransportExt for Transport {
    fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        let map = match &mut self {
            Transport::Stdio(t) => &mut t.env,
            Transport::StreamableHttp(t) => &mut t.headers,
            Transport::Sse(t) => &mut t.headers,
        };
        map.insert(name.to_owned(), value.into());
        self
    }
}

/// A CallMcpTool (or first StreamMcpToolCall) request.
pub fn call(
    server_id: &str,
    tool: &str,
    arguments: serde_json::Value,
) -> proto::CallMcpToolRequest {
    proto::CallMcpToolRequest {
        server_id: server_id.to_owned(),
        tool_name: tool.to_owned(),
        arguments_json: arguments.to_string(),
    }
}

/// The text blocks of a tool result, one per line.
pub fn text_of(result: &proto::CallMcpToolResponse) -> String {
    result
        .content
        .iter()
        .filter_map(|c| match &c.kind {
            Some(proto::content::Kind::Text(t)) => Some(t.text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn create_request(name: &str, transport: Transport) -> proto::CreateMcpServerRequest {
    proto::CreateMcpServerRequest {
        server_name: name.to_owned(),
        transport: Some(transport),
        tool_prefix: String::new(),
    }
}

/// A write lock on the registry held by a connection outside the daemon's
/// pool, to make the daemon's own connection wait when it writes. Reads go
/// on: on PostgreSQL the table lock is EXCLUSIVE (it admits plain SELECTs),
/// on SQLite a write transaction leaves WAL readers alone.
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
                diesel::sql_query("LOCK TABLE mcp_servers IN EXCLUSIVE MODE")
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

/// An open `WatchMcpServers` stream.
pub struct Watch(tonic::Streaming<proto::WatchMcpServersResponse>);

impl Watch {
    /// The next message; panics if none comes within 30 s or the stream
    /// ends without a status.
    pub async fn next(&mut self) -> Result<proto::WatchMcpServersResponse, Status> {
        match tokio::time::timeout(Duration::from_secs(30), self.0.message()).await {
            Err(_) => panic!("no watch event within 30 s"),
            Ok(Ok(Some(event))) => Ok(event),
            Ok(Ok(None)) => panic!("the watch ended without a status"),
            Ok(Err(status)) => Err(status),
        }
    }

    /// The next event, which must be of `kind`.
    pub async fn expect(
        &mut self,
        kind: proto::McpServerEventKind,
    ) -> proto::WatchMcpServersResponse {
        let event = self.next().await.expect("a watch event");
        assert_eq!(event.kind(), kind, "{event:?}");
        event
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(message) = tokio::time::timeout(quiet, self.0.message()).await {
            panic!("expected no watch event, got {message:?}");
        }
    }
}

//! The `mcpd` binary as operators run it: `migrate`, `serve`, SIGTERM, logs.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use mcpd::proto::{
    self, create_mcp_server_request::Transport, mcp_server_service_client::McpServerServiceClient,
};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

backend_tests!(
    migrate_subcommand_is_idempotent,
    sigterm_drains_tears_down_and_exits_zero
);

fn mcpd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcpd"));
    command.kill_on_drop(true);
    command
}

/// A daemon process whose stderr is drained as it runs (a full pipe would
/// stall it).
struct Process {
    child: Child,
    log: tokio::task::JoinHandle<String>,
}

/// Starts `mcpd serve` on a free port; returns it with a connected client.
async fn serve(
    db: &TestDb,
    extra: &[&str],
    rust_log: &str,
) -> (Process, McpServerServiceClient<Channel>) {
    use tokio::io::AsyncReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = mcpd()
        .env("RUST_LOG", rust_log)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &db.cli_url(),
            "--stdio-allow",
            &test_server_bin(),
            "--outbound-allow",
            &LOOPBACK.join(","),
        ])
        .arg("--secret-key-file")
        .arg(db.dir().join("mcpd.key"))
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = String::new();
        let _ = pipe.read_to_string(&mut log).await;
        log
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if let Ok(client) = McpServerServiceClient::connect(endpoint.clone()).await {
            return (Process { child, log }, client);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon did not serve on {endpoint}");
}

/// SIGTERM, then the exit status and everything the daemon logged.
async fn stop(mut daemon: Process) -> (std::process::ExitStatus, String) {
    let pid = daemon.child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.child.wait())
        .await
        .expect("daemon exits after SIGTERM within its drain bound")
        .unwrap();
    (status, daemon.log.await.unwrap())
}

/// `mcpd keys create`: the key is the one line on stdout.
async fn create_key(db: &TestDb, org: &str) -> String {
    let output = mcpd()
        .args([
            "keys",
            "create",
            "--org",
            org,
            "--name",
            "tests",
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
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("mcpd_"), "{key:?}");
    key
}

async fn server_names(db: &TestDb, org: &str) -> Vec<String> {
    let store = mcpd::store::Store::open(mcpd::store::StoreSettings {
        url: db.url.clone(),
        pool_size: 1,
        acquire_timeout: Duration::from_secs(5),
        sealer: None,
    })
    .await
    .unwrap();
    store
        .list_servers(org, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

async fn migrate_subcommand_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    for _ in 0..2 {
        let output = mcpd()
            .args(["migrate", "--database-url", &db.cli_url()])
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The schema is there.
    assert!(server_names(&db, "acme").await.is_empty());
}

async fn sigterm_drains_tears_down_and_exits_zero(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = create_key(&db, "acme").await;
    let (daemon, mut client) = serve(
        &db,
        &[
            "--mcp-list-timeout",
            "60s",
            "--shutdown-timeout",
            "2s",
            "--teardown-grace",
            "300ms",
        ],
        "info",
    )
    .await;

    // A finished create, and one stuck listing tools from a server that also
    // ignores shutdown and has a child of its own.
    client
        .create_mcp_server(with_key(
            &key,
            create_request("done", stdio(&["--tools", "2"])),
        ))
        .await
        .expect("create before shutdown");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let stuck = tokio::spawn({
        let mut client = client.clone();
        let key = key.clone();
        let args = [
            "--hang",
            "list",
            "--ignore-shutdown",
            "--tool-prefix",
            "stuck_",
            "--spawn-grandchild",
            pidfile.to_str().unwrap(),
        ]
        .map(String::from);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            client
                .create_mcp_server(with_key(&key, create_request("stuck", stdio(&args))))
                .await
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read_pids(&pidfile).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck server never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pids = read_pids(&pidfile);

    let (status, log) = stop(daemon).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck call fails cleanly"
    );
    assert_eq!(
        wait_gone(&pids, Duration::from_secs(5)).await,
        Vec::<u32>::new(),
        "no orphans"
    );
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("mcpd stopped"), "{log}");
    // Nothing half-written: the stuck server is absent, the finished one is there.
    assert_eq!(server_names(&db, "acme").await, ["done"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_reach_the_log_even_at_trace() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let (daemon, mut client) = serve(&db, &[], "trace").await;
    let env_secret = "env-s3cret-7f1c9a";
    let header_secret = "hdr-s3cret-9b2e4d";

    let with_env = Transport::Stdio(proto::StdioTransport {
        command: test_server_bin(),
        args: ["--tools", "1", "--tool-prefix", "e_"]
            .map(String::from)
            .to_vec(),
        env: [("API_TOKEN".to_owned(), env_secret.to_owned())].into(),
    });
    client
        .create_mcp_server(with_key(&key, create_request("with-env", with_env)))
        .await
        .expect("stdio create");

    let http = HttpTestServer::start(&["--tools", "1", "--tool-prefix", "h_"]).await;
    let with_header = |name: &str, value: String| {
        create_request(
            name,
            Transport::StreamableHttp(proto::StreamableHttpTransport {
                url: http.url.clone(),
                headers: [("authorization".to_owned(), value)].into(),
            }),
        )
    };
    client
        .create_mcp_server(with_key(
            &key,
            with_header("with-header", format!("Bearer {header_secret}")),
        ))
        .await
        .expect("http create");
    // An invalid header value is refused without being echoed or logged.
    let status = client
        .create_mcp_server(with_key(
            &key,
            with_header("bad-header", format!("{header_secret}\n")),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(!status.message().contains(header_secret));

    let (status, log) = stop(daemon).await;
    assert!(status.success());
    assert!(log.contains("TRACE"), "the log really was at trace level");
    assert!(
        !log.contains(env_secret),
        "an env value leaked into the log"
    );
    assert!(
        !log.contains(header_secret),
        "a header value leaked into the log"
    );
}

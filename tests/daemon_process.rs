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

/// The registry as the tests read it behind the daemon's back.
async fn inspect(db: &TestDb) -> mcpd::store::Store {
    mcpd::store::Store::open(mcpd::store::StoreSettings {
        url: db.url.clone(),
        pool_size: 1,
        acquire_timeout: Duration::from_secs(5),
        sealer: None,
    })
    .await
    .unwrap()
}

async fn server_names(db: &TestDb, org: &str) -> Vec<String> {
    let store = inspect(db).await;
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
    let pids = wait_for_pids(&pidfile).await;

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

/// Fault 3: servers that ignore shutdown, exit non-zero, or garble the
/// stream while closing. Close answers OK, the log says what happened at
/// debug, and no process is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn teardown_faults_are_logged_at_debug_and_never_fail_a_call() {
    let db = TestDb::new(Backend::Postgres).await;
    let key = create_key(&db, "acme").await;
    let (daemon, mut client) = serve(&db, &["--teardown-grace", "300ms"], "info,mcpd=debug").await;
    let mut pids = Vec::new();
    for (i, flag) in ["--ignore-shutdown", "--crash-on-shutdown"]
        .into_iter()
        .enumerate()
    {
        let pidfile = db.dir().join(format!("pids{i}"));
        let prefix = format!("t{i}_");
        let created = client
            .create_mcp_server(with_key(
                &key,
                create_request(
                    &format!("faulty-{i}"),
                    stdio(&[
                        "--tools",
                        "2",
                        "--tool-prefix",
                        &prefix,
                        flag,
                        "--spawn-grandchild",
                        pidfile.to_str().unwrap(),
                    ]),
                ),
            ))
            .await
            .expect("teardown faults never fail a create")
            .into_inner();
        let closed = client
            .close_mcp_server(with_key(
                &key,
                proto::CloseMcpServerRequest {
                    server_id: created.server.unwrap().id,
                },
            ))
            .await
            .expect("teardown faults never fail a close")
            .into_inner();
        assert_eq!(closed.removed_tools, 2);
        pids.extend(read_pids(&pidfile));
    }
    assert_eq!(pids.len(), 4);
    assert_eq!(
        wait_gone(&pids, Duration::from_secs(5)).await,
        Vec::<u32>::new(),
        "no orphans"
    );
    let (status, log) = stop(daemon).await;
    assert!(status.success());
    assert!(
        log.contains("did not exit after its session closed; killing it"),
        "the ignored shutdown is logged:\n{log}"
    );
    assert!(
        log.contains("exit status: 3"),
        "the non-zero exit is logged:\n{log}"
    );
    for line in log
        .lines()
        .filter(|l| l.contains("killing it") || l.contains("exit status: 3"))
    {
        assert!(
            line.contains("DEBUG"),
            "teardown faults are logged at debug: {line}"
        );
    }
}

/// Stdio children get only what the request sets plus a small pass-through
/// list, never the daemon's own environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stdio_children_get_a_clean_environment() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = mcpd()
        .env("MCPD_DATABASE_URL", db.cli_url())
        .env("MCPD_STDIO_ALLOW", test_server_bin())
        .env("AWS_SECRET_ACCESS_KEY", "daemon-secret-e9d1")
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mcp-list-timeout",
            "30s",
            "--shutdown-timeout",
            "1s",
        ])
        .arg("--secret-key-file")
        .arg(db.dir().join("mcpd.key"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = McpServerServiceClient::connect(endpoint.clone()).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("daemon serves");
    let pidfile = db.dir().join("pids");
    let pending = tokio::spawn({
        let key = key.clone();
        let transport = Transport::Stdio(proto::StdioTransport {
            command: test_server_bin(),
            args: [
                "--hang",
                "list",
                "--spawn-grandchild",
                pidfile.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
            env: [("GIVEN".to_owned(), "by-request".to_owned())].into(),
        });
        async move {
            client
                .create_mcp_server(with_key(&key, create_request("env", transport)))
                .await
        }
    });
    let server_pid = wait_for_pids(&pidfile).await[1];
    let environ = std::fs::read(format!("/proc/{server_pid}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(vars.iter().any(|v| v == "GIVEN=by-request"), "{vars:?}");
    assert!(vars.iter().any(|v| v.starts_with("PATH=")), "{vars:?}");
    assert!(!vars.iter().any(|v| v.starts_with("MCPD_")), "{vars:?}");
    assert!(
        !vars.iter().any(|v| v.contains("daemon-secret")),
        "{vars:?}"
    );
    let pid = daemon.id().unwrap() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(40), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let _ = pending.await;
    assert_eq!(
        wait_gone(&read_pids(&pidfile), Duration::from_secs(5)).await,
        Vec::<u32>::new()
    );
}

/// Fault 6: the daemon is SIGKILLed during 5,000-tool creates, at several
/// points of their progress. Afterwards each server is whole or absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_a_big_create_leaves_all_or_nothing() {
    const TOOLS: u32 = 5000;
    let db = TestDb::new(Backend::Postgres).await;
    let key = create_key(&db, "acme").await;
    let http = HttpTestServer::start(&[
        "--tools",
        &TOOLS.to_string(),
        "--page-size",
        "1000",
        "--unique-per-session",
    ])
    .await;
    let mut outcomes = Vec::new();
    for (i, delay_ms) in [20u64, 60, 120, 200, 350, 600].into_iter().enumerate() {
        let (daemon, mut client) = serve(&db, &[], "warn").await;
        let request = with_key(
            &key,
            create_request(&format!("big-{i}"), streamable_http(&http.url)),
        );
        let call = tokio::spawn(async move { client.create_mcp_server(request).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let mut child = daemon.child;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        outcomes.push(call.await.unwrap().is_ok());
    }
    // Whatever was cut off, the registry holds whole servers only.
    let store = inspect(&db).await;
    let servers = store.list_servers("acme", None, 100).await.unwrap();
    for server in &servers {
        assert_eq!(server.tool_count as u32, TOOLS, "{}", server.name);
        let tools = store
            .list_server_tools("acme", &server.id, None, 10_000)
            .await
            .unwrap();
        assert_eq!(tools.len() as u32, TOOLS, "{}", server.name);
    }
    // A call answered OK was committed.
    for (i, ok) in outcomes.iter().enumerate() {
        if *ok {
            assert!(
                servers.iter().any(|s| s.name == format!("big-{i}")),
                "big-{i} answered OK but is missing"
            );
        }
    }
}

/// Fault 8: SIGTERM while twenty creates are in flight: each call finishes
/// or fails cleanly, the daemon exits 0, and no child survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_leaves_no_orphans() {
    let db = TestDb::new(Backend::Postgres).await;
    let key = create_key(&db, "acme").await;
    let (daemon, client) = serve(
        &db,
        &["--shutdown-timeout", "10s", "--teardown-grace", "300ms"],
        "info",
    )
    .await;
    let mut pidfiles = Vec::new();
    let mut calls = Vec::new();
    for i in 0..20 {
        let pidfile = db.dir().join(format!("load{i}"));
        let args = [
            "--tools",
            "50",
            "--tool-prefix",
            &format!("l{i}_"),
            "--spawn-grandchild",
            pidfile.to_str().unwrap(),
        ]
        .map(String::from);
        pidfiles.push(pidfile);
        let mut client = client.clone();
        let request = with_key(
            &key,
            create_request(
                &format!("load-{i}"),
                stdio(&args.iter().map(String::as_str).collect::<Vec<_>>()),
            ),
        );
        calls.push(tokio::spawn(async move {
            client.create_mcp_server(request).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _log) = stop(daemon).await;
    assert!(status.success(), "{status:?}");
    let mut answered_ok = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("every call returns")
            .unwrap();
        if result.is_ok() {
            answered_ok.push(format!("load-{i}"));
        }
    }
    let pids: Vec<u32> = pidfiles.iter().flat_map(|p| read_pids(p)).collect();
    assert_eq!(
        wait_gone(&pids, Duration::from_secs(5)).await,
        Vec::<u32>::new(),
        "no orphans"
    );
    let store = inspect(&db).await;
    let servers = store.list_servers("acme", None, 100).await.unwrap();
    for server in &servers {
        assert_eq!(server.tool_count, 50, "{}", server.name);
    }
    for name in answered_ok {
        assert!(
            servers.iter().any(|s| s.name == name),
            "{name} answered OK but is missing"
        );
    }
}

/// Stored secrets need the key that sealed them: a missing or different key
/// stops the daemon at start-up with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_secrets_need_their_key_at_start_up() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let (daemon, mut client) = serve(&db, &[], "info").await;
    let transport = Transport::Stdio(proto::StdioTransport {
        command: test_server_bin(),
        args: vec!["--tools".into(), "1".into()],
        env: [("TOKEN".to_owned(), "sealed-value-5c2a".to_owned())].into(),
    });
    client
        .create_mcp_server(with_key(&key, create_request("sealed", transport)))
        .await
        .unwrap();
    let (status, _) = stop(daemon).await;
    assert!(status.success());
    let raw = std::fs::read(db.dir().join("mcpd.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&raw).contains("sealed-value-5c2a"),
        "secret in the clear on disk"
    );

    let start = |key_file: std::path::PathBuf| {
        let db_url = db.cli_url();
        async move {
            let mut child = mcpd()
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--database-url",
                    &db_url,
                ])
                .arg("--secret-key-file")
                .arg(key_file)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .expect("refuses to start promptly")
                .unwrap();
            let mut log = String::new();
            use tokio::io::AsyncReadExt;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .await
                .unwrap();
            (status, log)
        }
    };
    let (status, log) = start(db.dir().join("missing.key")).await;
    assert!(!status.success());
    assert!(log.contains("is missing; restore it"), "{log}");
    assert!(
        !db.dir().join("missing.key").exists(),
        "no new key is made over sealed secrets"
    );

    let other = db.dir().join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&other).unwrap().permissions(),
        0o600,
    );
    let mut perms = std::fs::metadata(&other).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&other, perms).unwrap();
    let (status, log) = start(other).await;
    assert!(!status.success());
    assert!(log.contains("does not open the stored secrets"), "{log}");
}

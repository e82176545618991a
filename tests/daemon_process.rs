//! The `mcpd` binary as operators run it: `migrate`, `serve`, and SIGTERM.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use mcpd::proto::mcp_server_service_client::McpServerServiceClient;
use tokio::process::Command;

backend_tests!(
    migrate_subcommand_is_idempotent,
    sigterm_drains_tears_down_and_exits_zero
);

fn mcpd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcpd"));
    command.env("RUST_LOG", "info").kill_on_drop(true);
    command
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
    // The schema is there: a daemon on it serves an empty registry.
    let store = mcpd::store::Store::open(mcpd::store::StoreSettings {
        url: db.url.clone(),
        pool_size: 1,
        acquire_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    assert!(
        store
            .list_servers("acme", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn sigterm_drains_tears_down_and_exits_zero(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = mcpd()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &db.cli_url(),
            "--mcp-list-timeout",
            "60s",
            "--shutdown-timeout",
            "2s",
            "--teardown-grace",
            "300ms",
        ])
        .stderr(Stdio::piped())
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

    // A finished create, and one stuck listing tools from a server that also
    // ignores shutdown and has a child of its own.
    client
        .create_mcp_server(as_org(
            "acme",
            create_request("done", stdio(&["--tools", "2"])),
        ))
        .await
        .expect("create before shutdown");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let stuck = tokio::spawn({
        let mut client = client.clone();
        let pidfile = pidfile.clone();
        async move {
            client
                .create_mcp_server(as_org(
                    "acme",
                    create_request(
                        "stuck",
                        stdio(&[
                            "--hang",
                            "list",
                            "--ignore-shutdown",
                            "--tool-prefix",
                            "stuck_",
                            "--spawn-grandchild",
                            pidfile.to_str().unwrap(),
                        ]),
                    ),
                ))
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

    let daemon_pid = daemon.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(daemon_pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.wait())
        .await
        .expect("daemon exits after SIGTERM within its drain bound")
        .unwrap();
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
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    daemon
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(stderr.contains("mcpd stopped"), "{stderr}");
    // Nothing half-written: the stuck server is absent, the finished one is there.
    let store = mcpd::store::Store::open(mcpd::store::StoreSettings {
        url: db.url.clone(),
        pool_size: 1,
        acquire_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    let names: Vec<String> = store
        .list_servers("acme", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["done"]);
}

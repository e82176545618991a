//! The `mcpd` binary as operators run it: `migrate`, `keys`, `serve`,
//! SIGTERM, SIGKILL, logs.

mod common;

use std::{process::Output, time::Duration};

use common::*;
use tonic::Code;

backend_tests!(
    migrate_subcommand_is_idempotent,
    sigterm_drains_tears_down_and_exits_zero,
    keys_are_listed_and_revoked_from_the_command_line,
);

async fn serve(db: &TestDb, extra: &[&str], rust_log: &str) -> McpdProcess {
    let mut command = serve_command(db, rust_log);
    command.args(extra);
    start_mcpd(command).await
}

/// `mcpd keys ARGS --database-url …`.
async fn keys<'a>(db: &TestDb, args: impl IntoIterator<Item = &'a str>) -> Output {
    mcpd_command()
        .arg("keys")
        .args(args)
        .args(["--database-url", &db.cli_url()])
        .output()
        .await
        .unwrap()
}

/// `mcpd keys create`: the key is the one line on stdout.
async fn create_key(db: &TestDb, org: &str) -> String {
    let output = keys(db, ["create", "--org", org, "--name", "tests"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("mcpd_"), "{key:?}");
    key
}

/// A row of `mcpd keys list`.
#[derive(Debug, PartialEq, Eq)]
struct ListedKey {
    id: String,
    org: String,
    name: String,
    state: String,
}

/// `mcpd keys list [--org ORG]`, parsed (names without spaces only).
async fn list_keys(db: &TestDb, org: Option<&str>) -> Vec<ListedKey> {
    let mut args = vec!["list"];
    if let Some(org) = org {
        args.extend(["--org", org]);
    }
    let output = keys(db, args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(header.starts_with("id"), "{stdout}");
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                fields.len(),
                5,
                "id, organization, name, state, created: {line:?}"
            );
            ListedKey {
                id: fields[0].to_owned(),
                org: fields[1].to_owned(),
                name: fields[2].to_owned(),
                state: fields[3].to_owned(),
            }
        })
        .collect()
}

async fn migrate_subcommand_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    for _ in 0..2 {
        let output = mcpd_command()
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
    // The schema is there: these read every table.
    let registry = Registry::of(&db);
    registry.assert_empty("acme").await;
    assert!(registry.api_keys().await.is_empty());
}

async fn sigterm_drains_tears_down_and_exits_zero(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = create_key(&db, "acme").await;
    let daemon = serve(
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
    let acme = daemon.org(&key).await;

    // A finished create, and one stuck listing tools from a server that also
    // ignores shutdown and has a child of its own.
    acme.create("done", stdio(["--tools", "2"]))
        .await
        .expect("create before shutdown");
    let pidfile = Pidfile::temp();
    let stuck = tokio::spawn({
        let acme = acme.clone();
        let transport = stdio(pidfile.args_with([
            "--hang",
            "list",
            "--ignore-shutdown",
            "--tool-prefix",
            "stuck_",
        ]));
        async move { acme.create("stuck", transport).await }
    });
    let pids = pidfile.wait().await;

    let (status, log) = stop_mcpd(daemon).await;
    assert!(status.success(), "exit status {status:?}");
    let answer = stuck.await.unwrap();
    assert!(
        answer.is_err(),
        "the stuck call is not answered OK: {answer:?}"
    );
    pids.assert_gone().await;
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("mcpd stopped"), "{log}");
    assert_eq!(
        records(&db.run_dir()),
        Vec::<std::path::PathBuf>::new(),
        "a daemon that tore everything down leaves no record"
    );
    // Nothing half-written: the stuck server is absent, the finished one is
    // there with all its tools.
    let servers = Registry::of(&db).assert_whole("acme", 2).await;
    let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["done"]);
}

/// `mcpd keys list` shows each key's id, organization, name and state;
/// `mcpd keys revoke ID` refuses the key's next call at once; an unknown id
/// is an error that says so.
async fn keys_are_listed_and_revoked_from_the_command_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let created = keys(&db, ["create", "--org", "acme", "--name", "ci-bot"]).await;
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let other = create_key(&db, "globex").await;

    let listed = list_keys(&db, Some("acme")).await;
    assert_eq!(listed.len(), 1, "only acme's key: {listed:?}");
    let id = listed[0].id.clone();
    assert_eq!(
        listed[0],
        ListedKey {
            id: id.clone(),
            org: "acme".into(),
            name: "ci-bot".into(),
            state: "active".into(),
        }
    );
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(stderr.contains(&id), "create names the key's id: {stderr}");
    let all = list_keys(&db, None).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().any(|k| k.org == "globex"), "{all:?}");
    assert!(
        !String::from_utf8_lossy(&keys(&db, ["list"]).await.stdout).contains(&key),
        "the key itself is never listed"
    );

    let daemon = serve(&db, &[], "info").await;
    let acme = daemon.org(&key).await;
    acme.servers().await.expect("the key works");

    let revoked = keys(&db, ["revoke", &id]).await;
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let listed = list_keys(&db, Some("acme")).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "revoked");
    let status = acme.servers().await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    daemon
        .org(&other)
        .await
        .servers()
        .await
        .expect("other keys still work");

    let unknown = uuid::Uuid::now_v7().to_string();
    let refused = keys(&db, ["revoke", &unknown]).await;
    assert!(!refused.status.success(), "revoking an unknown id fails");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&unknown) && stderr.contains("not found"),
        "{stderr}"
    );
    let (status, _) = stop_mcpd(daemon).await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_reach_the_log_even_at_trace() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let daemon = serve(&db, &[], "trace").await;
    let acme = daemon.org(&key).await;
    let env_secret = "env-s3cret-7f1c9a";
    let header_secret = "hdr-s3cret-9b2e4d";

    acme.create(
        "with-env",
        stdio(["--tools", "1", "--tool-prefix", "e_"]).with("API_TOKEN", env_secret),
    )
    .await
    .expect("stdio create");

    let http = HttpTestServer::start(["--tools", "1", "--tool-prefix", "h_"]).await;
    acme.create(
        "with-header",
        streamable_http(&http.url).with("authorization", format!("Bearer {header_secret}")),
    )
    .await
    .expect("http create");
    // An invalid header value is refused without being echoed or logged.
    let status = acme
        .create(
            "bad-header",
            streamable_http(&http.url).with("authorization", format!("{header_secret}\n")),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!status.message().contains(header_secret));

    // OAuth: the client secret, and the access token granted for it.
    let client_secret = "cc-s3cret-4e8d21";
    let grants = tempfile::NamedTempFile::new().unwrap();
    let protected = HttpTestServer::start([
        "--tools".to_owned(),
        "1".to_owned(),
        "--tool-prefix".to_owned(),
        "o_".to_owned(),
        "--oauth-client".to_owned(),
        format!("mcpd:{client_secret}"),
        "--oauth-log".to_owned(),
        grants.path().to_string_lossy().into_owned(),
    ])
    .await;
    let oauth = mcpd::proto::OAuth {
        client_credentials: Some(mcpd::proto::ClientCredentials {
            client_id: "mcpd".to_owned(),
            credential: Some(mcpd::proto::client_credentials::Credential::ClientSecret(
                client_secret.to_owned(),
            )),
        }),
        scopes: Vec::new(),
        ..Default::default()
    };
    let id = acme
        .create(
            "with-oauth",
            mcpd::proto::create_mcp_server_request::Transport::StreamableHttp(
                mcpd::proto::StreamableHttpTransport {
                    url: protected.url.clone(),
                    headers: Default::default(),
                    oauth: Some(oauth),
                },
            ),
        )
        .await
        .expect("oauth create")
        .server
        .unwrap()
        .id;
    acme.raw()
        .call_mcp_tool(acme.req(mcpd::proto::CallMcpToolRequest {
            server_id: id,
            tool_name: "o_0000".to_owned(),
            arguments_json: "{}".to_owned(),
        }))
        .await
        .expect("a call with the token");
    // The authorization code flow: a pre-registered client's secret, the
    // state and code of the browser's return, access and refresh tokens
    // (they live a second: the call renews them first).
    let code_secret = "ac-s3cret-77b1f0";
    let code_grants = tempfile::NamedTempFile::new().unwrap();
    let code_server = HttpTestServer::start([
        "--tools".to_owned(),
        "1".to_owned(),
        "--tool-prefix".to_owned(),
        "a_".to_owned(),
        "--oauth-client".to_owned(),
        format!("mcpd-ac:{code_secret}"),
        "--oauth-code".to_owned(),
        "--token-lifetime-secs".to_owned(),
        "1".to_owned(),
        "--oauth-log".to_owned(),
        code_grants.path().to_string_lossy().into_owned(),
    ])
    .await;
    let pending = acme
        .create(
            "with-code",
            mcpd::proto::create_mcp_server_request::Transport::StreamableHttp(
                mcpd::proto::StreamableHttpTransport {
                    url: code_server.url.clone(),
                    headers: Default::default(),
                    oauth: Some(mcpd::proto::OAuth {
                        client_id: "mcpd-ac".to_owned(),
                        client_secret: code_secret.to_owned(),
                        ..Default::default()
                    }),
                },
            ),
        )
        .await
        .expect("authorization code create")
        .server
        .unwrap();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let back = no_redirects
        .get(&pending.authorization_url)
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let returned: std::collections::HashMap<String, String> = url::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let page = reqwest::get(&back).await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    acme.raw()
        .call_mcp_tool(acme.req(mcpd::proto::CallMcpToolRequest {
            server_id: pending.id,
            tool_name: "a_0000".to_owned(),
            arguments_json: "{}".to_owned(),
        }))
        .await
        .expect("a call with a renewed token");

    let mut granted = std::fs::read_to_string(grants.path()).unwrap();
    granted.push_str(&std::fs::read_to_string(code_grants.path()).unwrap());
    let tokens: Vec<&str> = granted
        .lines()
        .flat_map(|line| {
            ["value=", "refresh="]
                .into_iter()
                .filter_map(|key| line.split(key).nth(1)?.split(' ').next())
        })
        .collect();
    assert!(
        granted.contains("grant=refresh_token") && tokens.len() >= 5,
        "{granted}"
    );

    let (status, log) = stop_mcpd(daemon).await;
    assert!(status.success());
    assert!(log.contains("TRACE"), "the log really was at trace level");
    assert!(
        !log.contains(client_secret),
        "an OAuth client secret leaked into the log"
    );
    for token in tokens {
        assert!(!log.contains(token), "an OAuth token leaked into the log");
    }
    assert!(
        !log.contains(code_secret),
        "a pre-registered client secret leaked into the log"
    );
    for (what, value) in [("state", &returned["state"]), ("code", &returned["code"])] {
        assert!(
            !log.contains(value.as_str()),
            "the {what} of an authorization response leaked into the log"
        );
    }
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
    let daemon = serve(&db, &["--teardown-grace", "300ms"], "info,mcpd=debug").await;
    let acme = daemon.org(&key).await;
    for (i, flag) in ["--ignore-shutdown", "--crash-on-shutdown"]
        .into_iter()
        .enumerate()
    {
        let pidfile = Pidfile::temp();
        let prefix = format!("t{i}_");
        let created = acme
            .create(
                &format!("faulty-{i}"),
                stdio(pidfile.args_with(["--tools", "2", "--tool-prefix", &prefix, flag])),
            )
            .await
            .expect("teardown faults never fail a create");
        let closed = acme
            .close(&created.server.unwrap().id)
            .await
            .expect("teardown faults never fail a close");
        assert_eq!(closed.removed_tools, 2);
        pidfile.written().assert_gone().await;
    }
    let (status, log) = stop_mcpd(daemon).await;
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
    let mut command = mcpd_command();
    command
        .env("RUST_LOG", "info")
        .env("MCPD_DATABASE_URL", db.cli_url())
        .env("MCPD_STDIO_ALLOW", test_server_bin())
        .env("MCPD_RUN_DIR", db.run_dir())
        .env("AWS_SECRET_ACCESS_KEY", "daemon-secret-e9d1")
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--mcp-list-timeout",
            "30s",
            "--shutdown-timeout",
            "1s",
        ])
        .arg("--secret-key-file")
        .arg(db.dir().join("mcpd.key"));
    let daemon = start_mcpd(command).await;
    let acme = daemon.org(&key).await;
    let pidfile = Pidfile::temp();
    let pending = tokio::spawn({
        let transport = stdio(pidfile.args_with(["--hang", "list"])).with("GIVEN", "by-request");
        async move { acme.create("env", transport).await }
    });
    let pids = pidfile.wait().await;
    let environ = std::fs::read(format!("/proc/{}/environ", pids.server)).unwrap();
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
    let (status, _) = stop_mcpd(daemon).await;
    assert!(status.success());
    assert!(
        pending.await.unwrap().is_err(),
        "the hung create is not answered OK"
    );
    pids.assert_gone().await;
}

/// Fault 6: the daemon is SIGKILLed while a 5,000-tool create's transaction
/// is writing (PostgreSQL shows it holding a transaction id, so rows are
/// written and not committed), twice. Afterwards nothing of those creates
/// is stored, and every server that is stored is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_transaction_leaves_all_or_nothing() {
    const TOOLS: i64 = 5000;
    const KILLS: usize = 2;
    const ATTEMPTS: usize = 8;
    let db = TestDb::new(Backend::Postgres).await;
    let key = create_key(&db, "acme").await;
    let http = HttpTestServer::start([
        "--tools",
        &TOOLS.to_string(),
        "--page-size",
        "1000",
        "--unique-per-session",
    ])
    .await;
    let registry = Registry::of(&db);
    let mut activity = PgActivity::of(&db).await;
    let mut landed = 0;
    let mut answered_ok = Vec::new();
    for attempt in 0..ATTEMPTS {
        if landed == KILLS {
            break;
        }
        let name = format!("big-{attempt}");
        let daemon = serve(&db, &[], "info").await;
        let call = tokio::spawn({
            let acme = daemon.org(&key).await;
            let name = name.clone();
            let transport = streamable_http(&http.url);
            async move { acme.create(&name, transport).await }
        });
        // Killed the moment its transaction has written (or, if the call
        // was answered first, after the fact: that attempt does not count).
        let was_writing = wait_for(
            "the create's transaction to write, or its answer",
            Duration::from_secs(60),
            async || {
                if call.is_finished() {
                    return Some(false);
                }
                (!activity.writing().await.is_empty()).then_some(true)
            },
        )
        .await;
        daemon.kill().await;
        if call.await.unwrap().is_ok() {
            answered_ok.push(name.clone());
        }
        wait_until(
            "PostgreSQL to roll back the killed daemon's transaction",
            Duration::from_secs(20),
            async || activity.writing().await.is_empty(),
        )
        .await;
        let committed = registry
            .servers("acme")
            .await
            .iter()
            .any(|s| s.name == name);
        // Written, not committed when the kill landed, and nothing of it
        // stored now: the kill landed mid-transaction.
        if was_writing && !committed {
            landed += 1;
        }
    }
    assert_eq!(
        landed, KILLS,
        "a SIGKILL landed mid-transaction only {landed} times in {ATTEMPTS} attempts"
    );
    // Whatever was cut off, the registry holds whole servers only.
    let servers = registry.assert_whole("acme", TOOLS).await;
    assert_eq!(registry.tools("acme").await, TOOLS * servers.len() as i64);
    // A call answered OK was committed.
    for name in answered_ok {
        assert!(
            servers.iter().any(|s| s.name == name),
            "{name} answered OK but is missing"
        );
    }
}

/// Fault 8: SIGTERM while twenty creates are in flight: each call finishes
/// or fails cleanly, the daemon exits 0, and no child survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_leaves_no_orphans() {
    let db = TestDb::new(Backend::Postgres).await;
    let key = create_key(&db, "acme").await;
    let daemon = serve(
        &db,
        &["--shutdown-timeout", "10s", "--teardown-grace", "300ms"],
        "info",
    )
    .await;
    let acme = daemon.org(&key).await;
    let pidfiles: Vec<Pidfile> = (0..20).map(|_| Pidfile::temp()).collect();
    let calls: Vec<_> = pidfiles
        .iter()
        .enumerate()
        .map(|(i, pidfile)| {
            let acme = acme.clone();
            let prefix = format!("l{i}_");
            let transport = stdio(pidfile.args_with(["--tools", "50", "--tool-prefix", &prefix]));
            tokio::spawn(async move { acme.create(&format!("load-{i}"), transport).await })
        })
        .collect();
    // A create whose server runs is in flight: the daemon reaps the server
    // before it answers.
    wait_until(
        "a create to be in flight",
        Duration::from_secs(20),
        async || {
            pidfiles
                .iter()
                .any(|p| p.read().get(1).is_some_and(|pid| process_alive(*pid)))
        },
    )
    .await;
    let in_flight = calls.iter().filter(|c| !c.is_finished()).count();
    let (status, _log) = stop_mcpd(daemon).await;
    assert!(status.success(), "{status:?}");
    assert!(in_flight > 0, "SIGTERM came while creates were in flight");
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
    let pids: Vec<u32> = pidfiles.iter().flat_map(Pidfile::read).collect();
    assert_gone(&pids, Duration::from_secs(5)).await;
    let servers = Registry::of(&db).assert_whole("acme", 50).await;
    for name in answered_ok {
        assert!(
            servers.iter().any(|s| s.name == name),
            "{name} answered OK but is missing"
        );
    }
}

/// Every file of the SQLite database (`mcpd.db` and, while it runs, its
/// `-wal` and `-shm`) holds the sealed config and never `secret`.
fn assert_sealed_on_disk(dir: &std::path::Path, secret: &str) {
    let mut bytes = Vec::new();
    for file in ["mcpd.db", "mcpd.db-wal", "mcpd.db-shm"] {
        match std::fs::read(dir.join(file)) {
            Ok(content) => bytes.extend(content),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file != "mcpd.db" => {}
            Err(e) => panic!("{file}: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("sealed:v1:"),
        "the sealed config is in the files read"
    );
    assert!(!text.contains(secret), "secret in the clear on disk");
}

/// Stored secrets need the key that sealed them: a missing or different key
/// stops the daemon at start-up with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_secrets_need_their_key_at_start_up() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let daemon = serve(&db, &[], "info").await;
    let secret = "sealed-value-5c2a";
    daemon
        .org(&key)
        .await
        .create("sealed", stdio(["--tools", "1"]).with("TOKEN", secret))
        .await
        .unwrap();
    // While the daemon runs, the newest pages are in the write-ahead log.
    assert_sealed_on_disk(db.dir(), secret);
    let (status, _) = stop_mcpd(daemon).await;
    assert!(status.success());
    assert_sealed_on_disk(db.dir(), secret);

    let start = |key_file: std::path::PathBuf| {
        let db_url = db.cli_url();
        let run_dir = db.run_dir();
        async move {
            let output = mcpd_command()
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--database-url",
                    &db_url,
                ])
                .arg("--secret-key-file")
                .arg(key_file)
                .arg("--run-dir")
                .arg(&run_dir)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(20), output)
                .await
                .expect("refuses to start promptly")
                .unwrap();
            (
                output.status,
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };
    let (status, log) = start(db.dir().join("missing.key")).await;
    assert!(!status.success());
    assert!(log.contains("is missing; restore it"), "{log}");
    assert!(
        !db.dir().join("missing.key").exists(),
        "no new key is made over sealed secrets"
    );

    // A well-formed key file (mode 0600, as mcpd makes them) that is not
    // the one that sealed the registry.
    let other = db.dir().join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).unwrap();
    let mut perms = std::fs::metadata(&other).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&other, perms).unwrap();
    let (status, log) = start(other).await;
    assert!(!status.success());
    assert!(log.contains("does not open the stored secrets"), "{log}");
}

/// The daemon's direct children, from every thread's `children` list.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children
}

/// Issue 11: a SIGKILLed daemon runs no teardown, yet none of its stdio
/// servers outlives it (the kernel's parent-death signal), whether idle on
/// a live session or in the middle of a call. What each server spawned
/// into its group (here a `sleep`) does not get that signal and survives
/// until the daemon starts again on the same run directory: the restart
/// kills all ten groups, says so, and finds the registry whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_leaves_no_stdio_server_behind() {
    const SERVERS: usize = 10;
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    // The servers ignore their stdin closing: each create's listing session
    // waits this long for them, then kills them.
    let daemon = serve(&db, &["--teardown-grace", "200ms"], "info").await;
    let daemon_pid = daemon.process.child.id().expect("running");
    let acme = daemon.org(&key).await;
    let pidfiles: Vec<Pidfile> = (0..SERVERS).map(|_| Pidfile::temp()).collect();
    let mut ids = Vec::new();
    for (i, pidfile) in pidfiles.iter().enumerate() {
        // Every other server answers calls only after a minute: those calls
        // are in flight when the kill lands.
        let delay = if i % 2 == 0 { "0" } else { "60000" };
        let created = acme
            .create(
                &format!("child-{i}"),
                // Like servers that never read stdin again: its end is no
                // signal to them. Each spawns a grandchild of the daemon.
                stdio(pidfile.args_with([
                    "--tools",
                    "1",
                    "--call-delay-ms",
                    delay,
                    "--ignore-shutdown",
                ])),
            )
            .await
            .unwrap();
        ids.push(created.server.unwrap().id);
    }
    let mut in_flight = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let request = call(id, "tool_0000", serde_json::json!({}));
        if i % 2 == 0 {
            acme.call_tool(request)
                .await
                .expect("a call on a live session");
        } else {
            let acme = acme.clone();
            in_flight.push(tokio::spawn(async move { acme.call_tool(request).await }));
        }
    }
    // Each pidfile names, once rewritten by its live session's server, one
    // of the daemon's children (the create's listing server wrote it first).
    let pids: Vec<Pids> = wait_for(
        "a live session (a stdio child) per server, with its grandchild",
        Duration::from_secs(20),
        async || {
            let children = children_of(daemon_pid);
            let pids: Vec<Pids> = pidfiles
                .iter()
                .filter_map(|p| Some(p.read()).filter(|pids| pids.len() == 2))
                .map(|pids| Pids {
                    grandchild: pids[0],
                    server: pids[1],
                })
                .filter(|pids| children.contains(&pids.server))
                .collect();
            (children.len() == SERVERS && pids.len() == SERVERS).then_some(pids)
        },
    )
    .await;
    let children: Vec<u32> = pids.iter().map(|p| p.server).collect();
    let grandchildren: Vec<u32> = pids.iter().map(|p| p.grandchild).collect();

    daemon.kill().await;
    assert_gone(&children, Duration::from_secs(2)).await;
    for call in in_flight {
        assert!(call.await.unwrap().is_err(), "the daemon died mid-call");
    }
    let alive: Vec<u32> = grandchildren
        .iter()
        .copied()
        .filter(|pid| process_alive(*pid))
        .collect();
    assert_eq!(
        alive, grandchildren,
        "the parent-death signal spares the servers' own children"
    );
    assert_eq!(records(&db.run_dir()).len(), 1, "the dead daemon's record");

    let restarted = serve(&db, &[], "info").await;
    assert_gone(&grandchildren, Duration::from_secs(10)).await;
    let acme = restarted.org(&key).await;
    let servers = acme.servers().await.unwrap();
    assert_eq!(servers.len(), SERVERS);
    assert!(
        servers
            .iter()
            .all(|s| s.state() == mcpd::proto::McpServerState::Ready),
        "{servers:?}"
    );
    acme.call_tool(call(&ids[0], "tool_0000", serde_json::json!({})))
        .await
        .expect("a new session after the restart");
    let (status, log) = stop_mcpd(restarted).await;
    assert!(status.success());
    let swept = log
        .lines()
        .find(|line| line.contains("process groups a previous mcpd left"))
        .unwrap_or_else(|| panic!("no sweep line in\n{log}"));
    assert!(
        swept.contains("swept 10 process groups") && swept.contains("records=1"),
        "{swept}"
    );
}

/// A second daemon starting on the run directory of one that lives leaves
/// its record and its servers alone: the record's lock is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_daemons_groups_are_not_swept() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let first = serve(&db, &["--shutdown-timeout", "1s"], "info").await;
    let acme = first.org(&key).await;
    let pidfile = Pidfile::temp();
    let pending = tokio::spawn({
        let transport = stdio(pidfile.args_with(["--hang", "list"]));
        let acme = acme.clone();
        async move { acme.create("hanging", transport).await }
    });
    let pids = pidfile.wait().await;
    let record = records(&db.run_dir());
    assert_eq!(record.len(), 1, "the first daemon's record");

    let second = serve(&db, &[], "info").await;
    // The second swept before it listened.
    assert!(process_alive(pids.server), "the first daemon's server");
    assert!(process_alive(pids.grandchild), "and its grandchild");
    assert!(record[0].exists(), "the first daemon's record is kept");
    assert_eq!(records(&db.run_dir()).len(), 2, "one record per daemon");
    second.org(&key).await.servers().await.expect("serving");
    let (status, log) = stop_mcpd(second).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("swept 0 process groups a previous mcpd left") && log.contains("records=0"),
        "{log}"
    );

    let (status, _) = stop_mcpd(first).await;
    assert!(status.success());
    assert!(pending.await.unwrap().is_err(), "the hung create fails");
    pids.assert_gone().await;
    assert!(records(&db.run_dir()).is_empty());
}

/// A SIGTERM sent the moment the daemon says it is listening stops it
/// cleanly: its handler is installed before the listener, not when the
/// server first polls for shutdown (until then the default action killed
/// the daemon, leaving its run record behind). Several times, since the
/// window was a few scheduler ticks wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigterm_right_after_listening_stops_the_daemon_cleanly() {
    let db = TestDb::new(Backend::Sqlite).await;
    for attempt in 0..5 {
        let daemon = serve(&db, &[], "info").await;
        let (status, log) = stop_mcpd(daemon).await;
        assert!(status.success(), "attempt {attempt}: {status:?}\n{log}");
        assert!(log.contains("mcpd stopped"), "attempt {attempt}: {log}");
        assert!(records(&db.run_dir()).is_empty(), "attempt {attempt}");
    }
}

/// Listeners beyond loopback without TLS are named at start-up: the gRPC one
/// (API keys and tool calls in clear text) and the HTTP one (OAuth callbacks,
/// unauthenticated metrics). Bound to every address, reached by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_listeners_beyond_loopback_are_warned_about() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut command = mcpd_command();
    command
        .env("RUST_LOG", "info")
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--http-listen",
            "0.0.0.0:0",
        ])
        .args(["--database-url", &db.cli_url()])
        .arg("--secret-key-file")
        .arg(db.dir().join("mcpd.key"))
        .arg("--run-dir")
        .arg(db.run_dir());
    let (status, log) = stop_mcpd(announced_mcpd(command).await).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("serving gRPC without TLS on a non-loopback address"),
        "{log}"
    );
    assert!(
        log.contains("serving the HTTP listener on a non-loopback address"),
        "{log}"
    );

    let daemon = serve(&db, &[], "info").await;
    let (_, log) = stop_mcpd(daemon).await;
    assert!(
        !log.contains("non-loopback"),
        "loopback is not warned about: {log}"
    );
}

/// A dead daemon's record names two groups: one whose leader still has the
/// recorded start time (killed), and one whose id a process started at
/// another time holds now, i.e. a recycled pid (spared).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recycled_group_id_is_spared() {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db, "acme").await;
    let survivor = GroupLeader::spawn();
    let recycled = GroupLeader::spawn();
    let record = dead_record(
        &db.run_dir(),
        &[
            (survivor.pid(), survivor.start_time()),
            (recycled.pid(), recycled.start_time() + 1),
        ],
    );

    let daemon = serve(&db, &[], "info").await;
    assert_gone(&[survivor.pid()], Duration::from_secs(10)).await;
    assert!(
        process_alive(recycled.pid()),
        "a recycled pid is not killed"
    );
    assert!(!record.exists(), "a swept record is removed");
    daemon.org(&key).await.servers().await.expect("serving");
    let (status, log) = stop_mcpd(daemon).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("swept 1 process groups a previous mcpd left")
            && log.contains("killed=1")
            && log.contains("recycled=1"),
        "{log}"
    );
    assert!(process_alive(recycled.pid()));
}

/// A run directory that cannot be made stops the daemon at start-up, with a
/// message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unusable_run_dir_stops_the_daemon() {
    let db = TestDb::new(Backend::Sqlite).await;
    let file = db.dir().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        serve_command_in(&db, &file.join("run"), "info")
            .args(["--listen", "127.0.0.1:0"])
            .output(),
    )
    .await
    .expect("refuses to start promptly")
    .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains(&format!("run directory {}", file.join("run").display()))
            && log.contains("--run-dir"),
        "{log}"
    );
    assert!(!log.contains("mcpd listening"), "{log}");
}

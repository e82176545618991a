//! The daemon's log as an operator reads it: the real binary, stderr to a
//! pipe (not a terminal), text and JSON formats, and callers trying to forge
//! lines through what an MCP server writes.

mod common;

use std::process::ExitStatus;

use common::*;
use tokio::process::Command;

const MCPD: &str = env!("CARGO_BIN_EXE_mcpd");

/// A line a caller tries to slip into the log through a stdio server's
/// stderr (the caller controls the arguments of an allowed program).
const FORGED: &str = "bad option\n2026-01-01T00:00:00.000000Z  INFO mcpd::api::service: rpc rpc=CloseMcpServer org=\"victim\" code=OK duration_ms=1 FORGED";

async fn create_key(db: &TestDb) -> String {
    let output = Command::new(MCPD)
        .args(["keys", "create", "--org", "acme", "--database-url"])
        .arg(db.cli_url())
        .output()
        .await
        .expect("run mcpd keys create");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Runs the daemon, makes three calls (one answered OK, one refused
/// connection, one stdio server writing a forged line), stops it with
/// SIGTERM and returns its exit status and stderr.
async fn session(format: &str) -> (ExitStatus, String, u16) {
    let db = TestDb::new(Backend::Sqlite).await;
    let key = create_key(&db).await;
    let mut command = Command::new(MCPD);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--stdio-allow", "sh"])
        .args(["--outbound-allow", "127.0.0.0/8", "--log-format", format])
        .arg("--database-url")
        .arg(db.cli_url())
        .arg("--secret-key-file")
        .arg(db.dir().join("secret.key"))
        .arg("--run-dir")
        .arg(db.run_dir())
        .env_remove("RUST_LOG")
        .env_remove("MCPD_LOG_FORMAT");
    let mut daemon = spawn_announcing(command, On::Stderr, address_after("mcpd listening")).await;
    let client = OrgClient::connect(daemon.announced.parse().unwrap(), &key).await;

    client.servers().await.expect("list answers OK");
    let (_reserved, port) = refused_port();
    client
        .create(
            "refused",
            streamable_http(format!("http://127.0.0.1:{port}/mcp")),
        )
        .await
        .expect_err("nothing listens there");
    client
        .create(
            "forger",
            command_transport("sh", ["-c", "printf '%s' \"$1\" >&2; exit 1", "sh", FORGED]),
        )
        .await
        .expect_err("the server exits at once");

    let pid = daemon.child.id().expect("running");
    // SAFETY: signalling our own child, whose pid we hold.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = daemon.child.wait().await.expect("daemon exits");
    (status, daemon.output().await, port)
}

fn command_transport(
    program: &str,
    args: impl IntoIterator<Item = impl Into<String>>,
) -> mcpd::proto::create_mcp_server_request::Transport {
    command(program, args)
}

fn rpc_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" rpc rpc=")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_are_plain_keyed_and_unforgeable() {
    let (status, log, port) = session("text").await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a pipe:\n{log}");
    assert!(!log.contains(" ERROR "), "{log}");
    assert!(
        !log.contains("rmcp"),
        "rmcp's own events are off by default:\n{log}"
    );
    assert_eq!(
        log.matches("generated new secrets key").count(),
        1,
        "the new key is announced once:\n{log}"
    );

    // One line per call, and only those: the forged one is not among them.
    let rpcs = rpc_lines(&log);
    assert_eq!(rpcs.len(), 3, "{log}");
    // A line's own rpc field is its first; the forged one only comes later,
    // inside a quoted value.
    assert!(
        rpcs.iter().all(|l| !l
            .split_once(" rpc rpc=")
            .unwrap()
            .1
            .starts_with("CloseMcpServer")),
        "{log}"
    );

    let ok = rpcs[0];
    assert!(
        ok.contains(r#"rpc=ListMcpServers org="acme" code=OK duration_ms="#),
        "{ok}"
    );
    let duration = ok.rsplit_once("duration_ms=").unwrap().1;
    let (_, decimals) = duration.split_once('.').unwrap_or((duration, ""));
    assert!(
        duration.parse::<f64>().is_ok() && decimals.len() <= 3,
        "duration without float noise: {duration:?}"
    );

    let refused = rpcs[1];
    assert!(refused.contains("code=UNAVAILABLE"), "{refused}");
    assert!(
        refused.contains(&format!(
            r#"error="the MCP server failed while connecting and initializing: connection refused at 127.0.0.1:{port}"#
        )),
        "{refused}"
    );

    // The forged text stays inside the quoted, escaped error of its own line.
    let forger = rpcs[2];
    assert!(
        forger.contains(r#"code=UNAVAILABLE duration_ms="#)
            && forger.contains(r#"initializing: sh exited (exit status: 1) before completing the MCP initialize handshake"#),
        "{forger}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("FORGED")).count(),
        1,
        "{log}"
    );
    assert!(
        forger.contains(r#"bad option\\n2026-01-01T00:00:00.000000Z"#)
            && forger.contains(r#"org=\"victim\""#),
        "{forger}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_objects_with_typed_fields() {
    let (status, log, port) = session("json").await;
    assert!(status.success(), "{status:?}\n{log}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["timestamp"].is_string() && e["level"].is_string())
    );
    let rpcs: Vec<&serde_json::Value> = events.iter().filter(|e| e["message"] == "rpc").collect();
    assert_eq!(rpcs.len(), 3, "{log}");
    assert_eq!(rpcs[0]["rpc"], "ListMcpServers");
    assert_eq!(rpcs[0]["org"], "acme");
    assert_eq!(rpcs[0]["code"], "OK");
    assert!(rpcs[0]["duration_ms"].is_f64(), "{}", rpcs[0]);
    assert!(rpcs[0].get("error").is_none(), "{}", rpcs[0]);
    assert_eq!(rpcs[1]["code"], "UNAVAILABLE");
    let error = rpcs[1]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("connection refused at 127.0.0.1:{port}")),
        "{error}"
    );
    // In JSON the forged text is a string value like any other.
    assert!(rpcs[2]["error"].as_str().unwrap().contains("FORGED"));
}

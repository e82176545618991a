//! `mcpd serve` as a process of its own, for tests of what only a process
//! shows: signals, exit codes, its log, command-line flags.

use std::{net::SocketAddr, path::Path, time::Duration};

use tokio::process::Command;

use super::{
    Announced, LOOPBACK, On, OrgClient, TestDb, address_after, spawn_announcing, test_server_bin,
};

/// The `mcpd` binary under test, killed if the test drops it.
pub fn mcpd_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcpd"));
    command.kill_on_drop(true);
    command
}

/// A running `mcpd serve`; its log (stderr) is drained as it runs.
pub struct McpdProcess {
    pub process: Announced,
    pub addr: SocketAddr,
}

impl McpdProcess {
    /// A client acting with `key`.
    pub async fn org(&self, key: &str) -> OrgClient {
        OrgClient::connect(self.addr, key).await
    }

    /// SIGKILL, and reaped.
    pub async fn kill(self) {
        self.process.kill().await;
    }
}

/// `mcpd serve` on `db`, its key file and run directory, allowed to run the
/// test server and to reach loopback, logging at `rust_log`.
pub fn serve_command(db: &TestDb, rust_log: &str) -> Command {
    serve_command_in(db, &db.run_dir(), rust_log)
}

/// [`serve_command`] with another run directory.
pub fn serve_command_in(db: &TestDb, run_dir: &Path, rust_log: &str) -> Command {
    let mut command = mcpd_command();
    command
        .env("RUST_LOG", rust_log)
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--database-url",
            &db.cli_url(),
            "--stdio-allow",
            &test_server_bin(),
            "--outbound-allow",
            &LOOPBACK.join(","),
        ])
        .arg("--secret-key-file")
        .arg(db.dir().join("mcpd.key"))
        .arg("--run-dir")
        .arg(run_dir);
    command
}

/// Starts the daemon `command` describes on a port of its choosing: it
/// binds 127.0.0.1:0 and announces the address in its log, so `RUST_LOG`
/// must let `mcpd::api` log at info.
pub async fn start_mcpd(mut command: Command) -> McpdProcess {
    command.args(["--listen", "127.0.0.1:0"]);
    announced_mcpd(command).await
}

/// Spawns `command` (which names its own `--listen`) and waits for the
/// address it announces.
pub async fn announced_mcpd(command: Command) -> McpdProcess {
    let process = spawn_announcing(command, On::Stderr, address_after("mcpd listening")).await;
    let addr = process.announced.parse().expect("a socket address");
    McpdProcess { process, addr }
}

/// SIGTERM, then the exit status and everything the daemon logged.
pub async fn stop_mcpd(daemon: McpdProcess) -> (std::process::ExitStatus, String) {
    let McpdProcess { mut process, .. } = daemon;
    let pid = process.child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(40), process.child.wait())
        .await
        .expect("daemon exits after SIGTERM within its drain bound")
        .unwrap();
    (status, process.output().await)
}

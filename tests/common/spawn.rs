//! Child processes that listen: each binds port 0 itself and announces the
//! address it got, so no port is ever picked by one process and bound by
//! another (that races with everything else on the machine).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::oneshot,
    task::JoinHandle,
};

use super::test_server_bin;

/// Which of its streams a child announces its address on.
#[derive(Debug, Clone, Copy)]
pub enum On {
    Stdout,
    Stderr,
}

/// A child that announced where it listens. The stream it announced on is
/// drained for its whole life (a full pipe would stall it) and kept.
pub struct Announced {
    pub child: Child,
    /// What `find` took from the announcing line.
    pub announced: String,
    output: JoinHandle<String>,
}

impl Announced {
    /// Everything the child wrote on the announcing stream, once it is closed
    /// (the child has exited).
    pub async fn output(self) -> String {
        self.output.await.expect("output reader")
    }

    /// Kills the child and returns what it wrote.
    pub async fn kill(mut self) -> String {
        self.child.start_kill().expect("kill");
        self.child.wait().await.expect("reap");
        self.output().await
    }
}

/// Spawns `command` (killed when dropped) with `on` piped, and waits up to
/// 20 s for the first line for which `find` returns something.
pub async fn spawn_announcing(
    mut command: Command,
    on: On,
    find: impl Fn(&str) -> Option<String> + Send + 'static,
) -> Announced {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    command.kill_on_drop(true);
    match on {
        On::Stdout => command.stdout(Stdio::piped()),
        On::Stderr => command.stderr(Stdio::piped()),
    };
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let (found_tx, found_rx) = oneshot::channel();
    let output = match on {
        On::Stdout => tokio::spawn(collect(child.stdout.take().unwrap(), find, found_tx)),
        On::Stderr => tokio::spawn(collect(child.stderr.take().unwrap(), find, found_tx)),
    };
    match tokio::time::timeout(Duration::from_secs(20), found_rx).await {
        Ok(Ok(announced)) => Announced {
            child,
            announced,
            output,
        },
        // The stream closed first: the child exited (or closed it).
        Ok(Err(_)) => {
            let status = child.wait().await;
            let output = output.await.unwrap_or_default();
            panic!("{program} exited ({status:?}) without announcing its address:\n{output}")
        }
        Err(_) => panic!("{program} did not announce its address within 20 s"),
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    find: impl Fn(&str) -> Option<String>,
    found: oneshot::Sender<String>,
) -> String {
    let mut found = Some(found);
    let mut output = String::new();
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if found.is_some()
            && let Some(value) = find(&line)
        {
            let _ = found.take().unwrap().send(value);
        }
        output.push_str(&line);
        output.push('\n');
    }
    output
}

/// The value after `prefix` on a line that starts with it (`LISTENING <url>`).
pub fn after_prefix(prefix: &'static str) -> impl Fn(&str) -> Option<String> + Send + 'static {
    move |line| line.strip_prefix(prefix).map(|rest| rest.trim().to_owned())
}

/// The socket address on a line containing `marker`, in any log format
/// (`addr=127.0.0.1:5000`, `"addr":"[::1]:5000"`, with or without colours).
pub fn address_after(marker: &'static str) -> impl Fn(&str) -> Option<String> + Send + 'static {
    move |line| {
        if !line.contains(marker) {
            return None;
        }
        line.split(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
            .find_map(|token| token.parse::<SocketAddr>().ok())
            .map(|addr| addr.to_string())
    }
}

/// The rmcp test server serving streamable HTTP on a port it picks.
pub struct HttpTestServer {
    pub url: String,
    process: Announced,
}

impl HttpTestServer {
    pub async fn start(args: impl IntoIterator<Item = impl Into<String>>) -> HttpTestServer {
        HttpTestServer::start_on(0, args).await
    }

    /// On this loopback port (0: one it picks); a server back on the port
    /// of one that went away is the same server to its clients.
    pub async fn start_on(
        port: u16,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> HttpTestServer {
        let mut command = Command::new(test_server_bin());
        command
            .args([
                "--transport",
                "http",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(args.into_iter().map(Into::into));
        let process = spawn_announcing(command, On::Stdout, after_prefix("LISTENING ")).await;
        HttpTestServer {
            url: process.announced.clone(),
            process,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id().expect("running")
    }

    pub fn port(&self) -> u16 {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|url| url.port())
            .expect("the announced URL has a port")
    }

    /// Kills it and waits until it is gone (its port refuses connections).
    pub async fn stop(self) {
        self.process.kill().await;
    }
}

/// A loopback port that refuses connections for as long as the returned
/// socket lives: bound, so nobody else can take it, but not listening.
pub fn refused_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind a loopback port");
    let port = socket.local_addr().expect("bound address").port();
    (socket, port)
}

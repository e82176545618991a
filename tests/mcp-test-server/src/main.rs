//! `mcp-test-server`: a real MCP server (stdio or streamable HTTP) that mcpd's
//! tests and benchmark register. It offers generated tools, paginates
//! `tools/list`, or offers the tools of a file a test rewrites as it runs
//! (announcing the changes if asked), and can misbehave on request (invalid
//! tools, hangs, crashes, malformed answers, ignoring shutdown, leaving a
//! grandchild process behind).

mod catalog;
mod handler;
mod http;
mod malformed;
mod oauth;
mod stdio;
mod tools_file;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    catalog::Catalog,
    handler::{Calls, TestServer, Tools},
    tools_file::{ListChanged, ToolsFile},
};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// How to talk MCP.
    #[arg(long, value_enum, default_value_t = Transport::Stdio)]
    transport: Transport,
    /// Address to bind for `--transport http`; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Number of valid tools offered.
    #[arg(long, default_value_t = 3)]
    tools: usize,
    /// Prefix of the valid tool names, followed by a 4-digit zero-padded index.
    #[arg(long, default_value = "tool_")]
    tool_prefix: String,
    /// Most tools returned per `tools/list` page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    page_size: u64,
    /// Number of deliberately invalid tools offered after the valid ones.
    #[arg(long, default_value_t = 0)]
    invalid_tools: usize,
    /// Offer the tools listed in this file instead of generated ones, read
    /// anew for every `tools/list` and `tools/call` so a test can change them
    /// while we run: a JSON array of `{"name", "description"?, "title"?,
    /// "input_schema"?, "output_schema"?, "annotations"?}`, all in one page.
    #[arg(long, value_name = "PATH",
          conflicts_with_all = ["tools", "tool_prefix", "page_size", "invalid_tools"])]
    tools_file: Option<PathBuf>,
    /// With `--tools-file`: advertise `tools.listChanged` and send
    /// `notifications/tools/list_changed` when the file changes (polled every
    /// 100 ms): to every `initialize` session, and on every open
    /// `subscriptions/listen` request (2026-07-28).
    #[arg(long, requires = "tools_file")]
    notify_list_changed: bool,
    /// Never answer this request.
    #[arg(long, value_enum)]
    hang: Option<Hang>,
    /// Exit abruptly with code 4, without answering, as soon as a `tools/list`
    /// request (any page) arrives. Over stdio nothing more is written to
    /// stdout; over HTTP the POST gets no response at all, not even headers,
    /// its connection just closes (POST bodies are then limited to 4 MiB).
    #[arg(long, conflicts_with = "malformed_list")]
    crash_during_list: bool,
    /// Answer every `tools/list` request with data that is not valid JSON and
    /// keep running; the request never gets a valid answer. Over stdio: one
    /// line of truncated JSON carrying the request id. Over HTTP: the POST
    /// gets `200 OK`, `Content-Type: application/json` and a truncated JSON
    /// body (POST bodies are then limited to 4 MiB).
    #[arg(long)]
    malformed_list: bool,
    /// Exit abruptly with code 3 when the client closes the session.
    #[arg(long)]
    crash_on_shutdown: bool,
    /// Ignore SIGTERM and, for stdio, keep running after stdin closes.
    #[arg(long)]
    ignore_shutdown: bool,
    /// Give every session's tool names a prefix of their own (`s0000042_`).
    /// Implies `--legacy`: only the stateful lifecycle has sessions.
    #[arg(long)]
    unique_per_session: bool,
    /// Speak only the lifecycle of revisions before 2026-07-28: answer
    /// `server/discover` with "method not found", so clients fall back to
    /// `initialize` and a session. Implied by `--unique-per-session` and
    /// `--crash-on-shutdown` (both act on sessions).
    #[arg(long)]
    legacy: bool,
    /// Spawn `sleep 1000` and write its PID, then ours, to this file.
    #[arg(long, value_name = "PIDFILE")]
    spawn_grandchild: Option<PathBuf>,
    /// Answer each `tools/call` only after this many milliseconds (unless the
    /// client cancels it first).
    #[arg(long, default_value_t = 0)]
    call_delay_ms: u64,
    /// With `--call-delay-ms`: append `started <id>` for every `tools/call`
    /// and `cancelled <id>` for each the client cancels
    /// (`notifications/cancelled`) to this file.
    #[arg(long, value_name = "PATH")]
    cancel_log: Option<PathBuf>,
    /// Answer each `tools/list` request (each page) only after this many
    /// milliseconds (unless the client cancels it first).
    #[arg(long, default_value_t = 0)]
    list_delay_ms: u64,
    /// Append `list <n>` to this file for every `tools/list` request (each
    /// page) as it arrives, n the requests being answered at that moment,
    /// this one included (over every session).
    #[arg(long, value_name = "PATH")]
    list_log: Option<PathBuf>,
    /// Append `server/discover` (or `server/discover (refused)` with
    /// `--legacy`), `initialize` and `subscriptions/listen` to this file as
    /// they arrive.
    #[arg(long, value_name = "PATH")]
    lifecycle_log: Option<PathBuf>,
    /// HTTP only: require `Authorization: Bearer <the file's content>` on
    /// every request (the file is read for each one); 401 otherwise.
    #[arg(long, value_name = "PATH")]
    bearer_file: Option<PathBuf>,
    /// HTTP only: be an OAuth protected resource with its own authorization
    /// server for the client credentials grant, accepting this client.
    #[arg(long, value_name = "ID:SECRET")]
    oauth_client: Option<String>,
    /// With `--oauth-client`: how long an access token is valid.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: u64,
    /// With `--oauth-client`: append each token grant to this file.
    #[arg(long, value_name = "PATH")]
    oauth_log: Option<PathBuf>,
    /// With `--oauth-client`: the protected resource metadata URL the 401
    /// challenge names, instead of this server's own.
    #[arg(long, value_name = "URL")]
    resource_metadata_url: Option<String>,
    /// With `--oauth-client`: also grant authorization codes (PKCE), refresh
    /// tokens and dynamic client registration.
    #[arg(long, requires = "oauth_client")]
    oauth_code: bool,
    /// With `--oauth-code`: `/authorize` shows a consent page first.
    #[arg(long, requires = "oauth_code")]
    oauth_consent: bool,
    /// With `--oauth-code`: `/authorize` answers `error=access_denied`.
    #[arg(long, requires = "oauth_code")]
    oauth_deny: bool,
    /// With `--oauth-client`: a `tools/call` of TOOL needs a token granted
    /// SCOPE, else 403 `insufficient_scope`. Repeatable.
    #[arg(long, value_name = "TOOL=SCOPE", requires = "oauth_client",
          value_parser = oauth::parse_tool_scope)]
    oauth_tool_scope: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Transport {
    Stdio,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Hang {
    Initialize,
    List,
}

/// The misbehaviours the transports implement themselves.
pub struct Behaviour {
    pub hang_initialize: bool,
    pub crash_on_shutdown: bool,
    pub ignore_shutdown: bool,
    /// Only over HTTP: over stdio the handler crashes (see
    /// [`TestServer::crash_during_list`]).
    pub crash_during_list: bool,
    pub malformed_list: bool,
    /// Only over HTTP: the file holding the one bearer token accepted.
    pub bearer_file: Option<PathBuf>,
    /// Only over HTTP: an OAuth protected resource (see [`oauth`]).
    pub oauth: Option<oauth::OAuthSettings>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();

    if cli.ignore_shutdown {
        ignore_sigterm()?;
    }
    // Kept alive for the life of the process; dropping a `Child` neither
    // kills nor reaps it.
    let _grandchild = match &cli.spawn_grandchild {
        Some(pidfile) => Some(spawn_grandchild(pidfile)?),
        None => None,
    };

    let page_size = usize::try_from(cli.page_size).context("--page-size too large")?;
    let tools = match &cli.tools_file {
        Some(path) => Tools::File(Arc::new(ToolsFile::new(path.clone()))),
        None => Tools::Generated(Arc::new(Catalog::new(
            &cli.tool_prefix,
            cli.tools,
            cli.invalid_tools,
            page_size,
        ))),
    };
    let list_changed = match (&tools, cli.notify_list_changed) {
        (Tools::File(file), true) => {
            let list_changed = ListChanged::new();
            tokio::spawn(list_changed.clone().watch(file.path().to_owned()));
            Some(list_changed)
        }
        _ => None,
    };
    let behaviour = Behaviour {
        hang_initialize: cli.hang == Some(Hang::Initialize),
        crash_on_shutdown: cli.crash_on_shutdown,
        ignore_shutdown: cli.ignore_shutdown,
        crash_during_list: cli.crash_during_list,
        malformed_list: cli.malformed_list,
        bearer_file: cli.bearer_file.clone(),
        oauth: cli
            .oauth_client
            .as_deref()
            .map(|client| {
                oauth::OAuthSettings::parse(
                    client,
                    std::time::Duration::from_secs(cli.token_lifetime_secs),
                    cli.oauth_log.clone(),
                )
                .map(|settings| oauth::OAuthSettings {
                    resource_metadata: cli.resource_metadata_url.clone(),
                    code: cli.oauth_code,
                    consent: cli.oauth_consent,
                    deny: cli.oauth_deny,
                    tool_scopes: cli.oauth_tool_scope.clone(),
                    ..settings
                })
            })
            .transpose()?,
    };
    let hang_list = cli.hang == Some(Hang::List);
    let legacy = cli.legacy || cli.unique_per_session || cli.crash_on_shutdown;
    let calls = Calls {
        delay: std::time::Duration::from_millis(cli.call_delay_ms),
        cancel_log: cli.cancel_log.clone(),
        lifecycle_log: cli.lifecycle_log.clone(),
        list_delay: std::time::Duration::from_millis(cli.list_delay_ms),
        list_log: cli.list_log.clone(),
    };

    match cli.transport {
        Transport::Stdio => {
            // Over stdio the end of the session is stdin EOF, handled in
            // `stdio::run`, so the handler itself never crashes.
            let server = TestServer::new(tools, hang_list, false)
                .list_changed(list_changed)
                .unique_per_session(cli.unique_per_session)
                .legacy(legacy)
                .crash_during_list(cli.crash_during_list)
                .calls(calls);
            stdio::run(server, &behaviour).await
        }
        Transport::Http => {
            // `--crash-during-list` is up to `http::run`: crashing in the
            // handler would be too late, rmcp has sent the SSE headers by then.
            let server = TestServer::new(tools, hang_list, cli.crash_on_shutdown)
                .list_changed(list_changed)
                .unique_per_session(cli.unique_per_session)
                .legacy(legacy)
                .calls(calls);
            http::run(server, cli.listen, &behaviour).await
        }
    }
}

/// Replaces SIGTERM's default action (terminate) with a log line.
///
/// Tokio installs its handler on first registration and never removes it, so
/// the listener task only has to drain the signal stream.
fn ignore_sigterm() -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::spawn(async move {
        while sigterm.recv().await.is_some() {
            eprintln!("mcp-test-server: --ignore-shutdown, ignoring SIGTERM");
        }
    });
    Ok(())
}

/// Starts `sleep 1000` in our process group and records `<its pid>\n<our pid>\n`
/// in `pidfile`.
///
/// The child gets /dev/null for stdin, stdout and stderr: it must not hold our
/// stdio pipes open, or a client waiting for our stdout to close would wait for
/// the sleep too, and the test would measure that rather than process cleanup.
fn spawn_grandchild(pidfile: &Path) -> anyhow::Result<std::process::Child> {
    let child = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning `sleep 1000`")?;
    // Written to a temporary name and renamed into place, so a test polling for
    // the file never reads it half-written.
    let mut tmp = pidfile.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{}\n{}\n", child.id(), std::process::id()))
        .with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
    std::fs::rename(&tmp, pidfile).with_context(|| format!("writing {}", pidfile.display()))?;
    Ok(child)
}

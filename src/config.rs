//! Command line and environment: every flag has an `MCPD_*` twin.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    api::{PemFile, TlsSettings},
    manager::Limits,
    mcp::{
        McpSettings, OAuthSettings, PoolLimits,
        outbound::{OutboundPolicy, PolicyError},
    },
    store::{DatabaseUrl, EventRetention, StoreError, StoreSettings},
    telemetry::LogFormat,
};

#[derive(Debug, Parser)]
#[command(name = "mcpd", version, about = "gRPC registry of MCP servers")]
pub struct Cli {
    /// Log lines as `text` (key=value) or `json` (one object per line).
    #[arg(long, global = true, env = "MCPD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (applies pending migrations first).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for an organization; the key is printed once, on stdout.
    Create {
        #[arg(long)]
        org: String,
        /// What the key is for (shown by `keys list`).
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a key by id; calls with it are refused from then on.
    Revoke {
        id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// postgres://USER@HOST/DB or sqlite://PATH. The default is an SQLite
    /// file in the working directory.
    #[arg(long, env = "MCPD_DATABASE_URL", default_value = "sqlite://mcpd.db")]
    pub database_url: String,
    /// Most pooled database connections.
    #[arg(long, env = "MCPD_POOL_SIZE", default_value_t = 10)]
    pub pool_size: u32,
    /// How long a call waits for a free connection before RESOURCE_EXHAUSTED.
    #[arg(long, env = "MCPD_POOL_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub pool_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "MCPD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Serve gRPC over TLS with this certificate chain (PEM, leaf first).
    /// Needs --tls-key.
    #[arg(long, env = "MCPD_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "MCPD_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by one of
    /// these CAs (PEM bundle). Needs --tls-cert and --tls-key.
    #[arg(long, env = "MCPD_TLS_CLIENT_CA", value_name = "PATH", requires_all = ["tls_cert", "tls_key"])]
    pub tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Spawning or reaching an MCP server and its initialize handshake.
    #[arg(long, env = "MCPD_MCP_CONNECT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub mcp_connect_timeout: Duration,
    /// Listing all of an MCP server's tools.
    #[arg(long, env = "MCPD_MCP_LIST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub mcp_list_timeout: Duration,
    /// How long a closing MCP session or child process gets before it is
    /// cancelled or killed.
    #[arg(long, env = "MCPD_TEARDOWN_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub teardown_grace: Duration,
    /// Export traces over OTLP/gRPC to this collector (`http://HOST:PORT`):
    /// a span per RPC with its MCP and database work. Off when unset.
    #[arg(long, env = "MCPD_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// On SIGINT/SIGTERM, how long in-flight calls get to finish.
    #[arg(long, env = "MCPD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Programs stdio MCP servers may run: exact paths or bare names,
    /// comma-separated or repeated. Empty (the default) refuses stdio.
    #[arg(long, env = "MCPD_STDIO_ALLOW", value_delimiter = ',')]
    pub stdio_allow: Vec<String>,
    /// CIDRs remote MCP servers may be reached at although they are loopback
    /// or private (denied by default), comma-separated or repeated.
    #[arg(long, env = "MCPD_OUTBOUND_ALLOW", value_delimiter = ',')]
    pub outbound_allow: Vec<String>,
    /// CIDRs remote MCP servers may never be reached at.
    #[arg(long, env = "MCPD_OUTBOUND_DENY", value_delimiter = ',')]
    pub outbound_deny: Vec<String>,
    /// Key that seals header and env values at rest (64 hex characters).
    /// Created (mode 0600) when missing and nothing is sealed yet.
    #[arg(long, env = "MCPD_SECRET_KEY_FILE", default_value = "mcpd.key")]
    pub secret_key_file: std::path::PathBuf,
    /// Directory where the daemon records the process groups of its stdio
    /// servers, so that after it is killed outright (SIGKILL) the next start
    /// kills what they spawned. Local to this machine; created (mode 0700)
    /// when missing.
    #[arg(long, env = "MCPD_RUN_DIR", default_value = "mcpd.run")]
    pub run_dir: PathBuf,
    /// Most tools one MCP server may offer.
    #[arg(long, env = "MCPD_MAX_TOOLS_PER_SERVER", default_value_t = 10_000)]
    pub max_tools_per_server: usize,
    /// Longest a tool call may take when its caller sets no gRPC deadline
    /// (a deadline beyond it is cut to it).
    #[arg(long, env = "MCPD_MCP_CALL_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub mcp_call_timeout: Duration,
    /// A live MCP session no call used for this long is closed.
    #[arg(long, env = "MCPD_SESSION_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub session_idle_timeout: Duration,
    /// Most live MCP sessions; the least recently used idle one makes room.
    #[arg(long, env = "MCPD_MAX_LIVE_SESSIONS", default_value_t = 256)]
    pub max_live_sessions: usize,
    /// Most calls in flight on one MCP server; more are RESOURCE_EXHAUSTED.
    #[arg(long, env = "MCPD_MAX_CALLS_PER_SERVER", default_value_t = 32)]
    pub max_calls_per_server: usize,
    /// Address of the HTTP listener: the OAuth callback
    /// (`GET /oauth/callback`) and mcpd's client ID metadata document.
    #[arg(long, env = "MCPD_HTTP_LISTEN", default_value = "127.0.0.1:50052")]
    pub http_listen: SocketAddr,
    /// The URL browsers reach the HTTP listener at, when a proxy stands in
    /// front of it (the redirect URI is `<public URL>/oauth/callback`).
    /// Default: `http://<--http-listen, as bound>`.
    #[arg(long, env = "MCPD_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// mcpd's client ID metadata document URL, offered as its client id to
    /// authorization servers that support them. Default:
    /// `<public URL>/oauth/client-metadata.json` when the public URL is https.
    #[arg(long, env = "MCPD_OAUTH_CLIENT_METADATA_URL")]
    pub oauth_client_metadata_url: Option<url::Url>,
    /// How long an authorization URL stays good.
    #[arg(long, env = "MCPD_OAUTH_STATE_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub oauth_state_ttl: Duration,
    /// Contact every ready MCP server this often (a ping on its live session,
    /// else on a session opened for it: a stdio server is started) and keep
    /// its state READY or UNREACHABLE. Off unless set.
    #[arg(long, env = "MCPD_HEALTH_INTERVAL", value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// MCP servers contacted at once by a health round.
    #[arg(long, env = "MCPD_HEALTH_CONCURRENCY", default_value_t = 4)]
    pub health_concurrency: usize,
    /// How long after a live session hears that its server's tools changed
    /// (`notifications/tools/list_changed`, and the last of a burst) mcpd
    /// syncs them.
    #[arg(long, env = "MCPD_SYNC_DEBOUNCE", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub sync_debounce: Duration,
    /// WatchMcpServers resumes from events this recent; a watcher whose
    /// cursor is older is told to list again (FAILED_PRECONDITION).
    #[arg(long, env = "MCPD_WATCH_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub watch_retention: Duration,
    /// And from at most this many of each organization's newest events.
    #[arg(long, env = "MCPD_WATCH_RETENTION_EVENTS", default_value_t = 10_000)]
    pub watch_retention_events: u64,
}

impl DatabaseArgs {
    pub fn store_settings(&self) -> Result<StoreSettings, StoreError> {
        Ok(StoreSettings {
            url: DatabaseUrl::parse(&self.database_url)?,
            pool_size: self.pool_size.max(1),
            acquire_timeout: self.pool_timeout,
            sealer: None,
            event_retention: EventRetention::default(),
        })
    }
}

/// A file named by a flag that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {flag} {}", path.display())]
pub struct ReadError {
    pub flag: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn read_pem(flag: &'static str, path: &Path) -> Result<PemFile, ReadError> {
    match std::fs::read(path) {
        Ok(pem) => Ok(PemFile {
            path: path.to_owned(),
            pem,
        }),
        Err(source) => Err(ReadError {
            flag,
            path: path.to_owned(),
            source,
        }),
    }
}

impl ServeArgs {
    /// The TLS files, read; `None` when --tls-cert is not given (clap has
    /// made sure the flags come together).
    pub fn tls_settings(&self) -> Result<Option<TlsSettings>, ReadError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(TlsSettings {
            cert: read_pem("--tls-cert", cert)?,
            key: read_pem("--tls-key", key)?,
            client_ca: self
                .tls_client_ca
                .as_deref()
                .map(|ca| read_pem("--tls-client-ca", ca))
                .transpose()?,
        }))
    }

    pub fn mcp_settings(&self) -> Result<McpSettings, PolicyError> {
        Ok(McpSettings {
            connect_timeout: self.mcp_connect_timeout,
            list_timeout: self.mcp_list_timeout,
            teardown_grace: self.teardown_grace,
            stdio_allow: self
                .stdio_allow
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            outbound: OutboundPolicy::new(&self.outbound_allow, &self.outbound_deny)?,
            call_timeout: self.mcp_call_timeout,
            pool: PoolLimits {
                idle_timeout: self.session_idle_timeout,
                max_sessions: self.max_live_sessions,
                max_calls_per_server: self.max_calls_per_server,
            },
            run_dir: Some(self.run_dir.clone()),
            ..McpSettings::default()
        })
    }

    /// The OAuth callback's settings, once the HTTP listener is bound at
    /// `bound`.
    pub fn oauth_settings(&self, bound: SocketAddr) -> Result<OAuthSettings, String> {
        let public = match &self.public_url {
            Some(url) => url.clone(),
            None => url::Url::parse(&format!("http://{bound}"))
                .map_err(|e| format!("the HTTP listener's address: {e}"))?,
        };
        let redirect_uri = public
            .join("oauth/callback")
            .map_err(|e| format!("--public-url: {e}"))?;
        let client_metadata_url = match &self.oauth_client_metadata_url {
            Some(url) => Some(url.clone()),
            None if public.scheme() == "https" => public.join("oauth/client-metadata.json").ok(),
            None => None,
        };
        Ok(OAuthSettings {
            redirect_uri,
            client_metadata_url,
            client_name: "mcpd".into(),
        })
    }

    pub fn event_retention(&self) -> EventRetention {
        EventRetention {
            max_events: self.watch_retention_events.max(1),
            max_age: self.watch_retention,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_tools_per_server: self.max_tools_per_server,
            authorization_ttl: self.oauth_state_ttl,
            health_interval: self.health_interval.filter(|every| !every.is_zero()),
            health_concurrency: self.health_concurrency.max(1),
            sync_debounce: self.sync_debounce,
        }
    }
}

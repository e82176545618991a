use anyhow::Context;
use clap::Parser;
use mcpd::{
    api::{self, ServeOptions},
    config::{Cli, Command, KeysCommand},
    manager::{Limits, Manager},
    mcp::{McpConnector, McpSettings},
    store::{self, Sealer, Store, StoreSettings},
    telemetry,
};

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(daemon())
}

/// glibc gives each thread that allocates an arena of its own, up to eight
/// per core. The daemon's tasks hop threads (SQLite work moves the runtime
/// off the thread it blocks, see `store::blocking`), so every thread ends up
/// holding freed memory of every kind: measured after 1,000 registrations
/// on SQLite, 157 MB resident against 91 MB with one arena per core, which
/// holds it to what the work needs. Set before the runtime starts any
/// thread.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only tunes the allocator; no thread has started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

async fn daemon() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Checked here, not by clap: its message would repeat the value, and
    // with it any credentials in the URL.
    let otlp_endpoint = match &cli.command {
        Command::Serve(args) => args
            .otlp_endpoint
            .as_deref()
            .map(telemetry::traces::parse_endpoint)
            .transpose()?,
        _ => None,
    };
    let traces = telemetry::init_with_traces(cli.log_format, otlp_endpoint.as_deref())?;
    if let (Some(_), Some(endpoint)) = (&traces, &otlp_endpoint) {
        tracing::info!(endpoint, "exporting traces over OTLP");
    }
    let outcome = run(cli).await;
    // Last: the spans of the shutdown itself go out too.
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    outcome
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys { command } => keys(command).await?,
        Command::Migrate(db) => {
            let settings = db.store_settings()?;
            let applied = store::run_migrations(&settings.url).await?;
            tracing::info!(
                backend = settings.url.backend_name(),
                ?applied,
                "migrations applied"
            );
        }
        Command::Serve(args) => {
            // First: a wrong file should stop the daemon before it touches
            // the database.
            let tls = args.tls_settings()?;
            if let Some(tls) = &tls {
                tls.check()?;
            }
            let settings = args.database.store_settings()?;
            tracing::info!(
                backend = settings.url.backend_name(),
                url = %store::redact_url(&args.database.database_url),
                pool_size = settings.pool_size,
                "opening the registry"
            );
            let applied = store::run_migrations(&settings.url)
                .await
                .context("applying database migrations")?;
            if !applied.is_empty() {
                tracing::info!(?applied, "migrations applied");
            }
            let sealer = open_sealer(&settings, &args.secret_key_file).await?;
            let store = Store::open(StoreSettings {
                sealer: Some(sealer),
                event_retention: args.event_retention(),
                ..settings
            })
            .await?;
            let http = tokio::net::TcpListener::bind(args.http_listen)
                .await
                .with_context(|| format!("binding {} (--http-listen)", args.http_listen))?;
            let oauth = args
                .oauth_settings(http.local_addr()?)
                .map_err(anyhow::Error::msg)?;
            let mcp = McpConnector::new(McpSettings {
                oauth: Some(oauth.clone()),
                ..args.mcp_settings()?
            })?;
            let manager = Manager::new(store, mcp, args.limits());
            // Before the listener: from here on a signal stops the daemon
            // cleanly (until now it ends it where it stands).
            let shutdown = shutdown_signal()?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            api::serve(
                listener,
                Some(api::HttpEdge {
                    listener: http,
                    oauth,
                }),
                manager,
                ServeOptions {
                    drain_timeout: args.shutdown_timeout,
                    tls,
                },
                shutdown,
            )
            .await?;
        }
    }
    Ok(())
}

/// The key that seals secrets at rest. A missing key file is created only
/// while nothing is sealed; a key that does not open what is stored stops
/// the daemon here, with a message that says so.
async fn open_sealer(settings: &StoreSettings, path: &std::path::Path) -> anyhow::Result<Sealer> {
    let probe = Store::open(settings.clone()).await?;
    let sealed = probe.has_sealed_configs().await?;
    let sealer = if path.exists() || sealed {
        Sealer::load(path).with_context(|| {
            if sealed && !path.exists() {
                format!(
                    "the registry holds sealed secrets but the key file {} is missing; restore it",
                    path.display()
                )
            } else {
                format!("loading the secret key {}", path.display())
            }
        })?
    } else {
        // Logs the creation itself, once.
        Sealer::load_or_create(path)?.0
    };
    probe.verify_sealer(&sealer).await?;
    tracing::info!(fingerprint = %sealer.fingerprint(), "secrets at rest are sealed");
    Ok(sealer)
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let database = match &command {
        KeysCommand::Create { database, .. }
        | KeysCommand::List { database, .. }
        | KeysCommand::Revoke { database, .. } => database,
    };
    let settings = database.store_settings()?;
    store::run_migrations(&settings.url).await?;
    let manager = Manager::new(
        Store::open(settings).await?,
        McpConnector::new(McpSettings::default())?,
        Limits::default(),
    );
    match command {
        KeysCommand::Create { org, name, .. } => {
            let created = manager.create_api_key(&org, &name).await?;
            eprintln!(
                "created API key {} for organization {:?}; it is shown only now:",
                created.info.id, created.info.organization_id
            );
            println!("{}", created.key);
        }
        KeysCommand::List { org, .. } => {
            println!(
                "{:<36}  {:<24}  {:<24}  {:<8}  created",
                "id", "organization", "name", "state"
            );
            for key in manager.list_api_keys(org.as_deref()).await? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<36}  {:<24}  {:<24}  {:<8}  {}",
                    key.id,
                    key.organization_id,
                    key.name,
                    state,
                    humantime::format_rfc3339_seconds(key.created_at)
                );
            }
        }
        KeysCommand::Revoke { id, .. } => {
            manager.revoke_api_key(&id).await?;
            eprintln!("revoked API key {id}");
        }
    }
    Ok(())
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a signal that came after the daemon said
/// it was listening but before the server polled its shutdown future would
/// otherwise take the default action and kill the daemon with no teardown.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

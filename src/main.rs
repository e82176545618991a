use anyhow::Context;
use clap::Parser;
use mcpd::{
    api::{self, ServeOptions},
    config::{Cli, Command},
    manager::Manager,
    mcp::McpConnector,
    store::{self, Store},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    match Cli::parse().command {
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
            let store = Store::open(settings).await?;
            let mcp = McpConnector::new(args.mcp_settings())?;
            let manager = Manager::new(store, mcp, args.limits());
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            api::serve(
                listener,
                manager,
                ServeOptions {
                    drain_timeout: args.shutdown_timeout,
                },
                shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

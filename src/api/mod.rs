//! The gRPC edge: the registry service, health and reflection, and the
//! server's lifecycle (graceful shutdown, teardown of everything held).

mod admin;
mod auth;
mod convert;
mod deadline;
mod health;
mod http;
mod limits;
mod observe;
mod service;
mod status;
mod stream;
mod tls;
mod watch;

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};

pub use auth::AUTHORIZATION_HEADER;
pub use http::HttpEdge;
pub use service::{
    DIFF_US_HEADER, MCP_US_HEADER, McpServerApi, PEAK_CONNECTIONS_HEADER, PERSIST_US_HEADER,
};
pub use tls::{PemFile, TlsError, TlsSettings};

use crate::{manager::Manager, proto, telemetry::metrics::Registry};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// After a shutdown signal, how long in-flight calls get to finish.
    pub drain_timeout: Duration,
    /// TLS on the gRPC listener; plaintext when `None`.
    pub tls: Option<TlsSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` completes, then stops accepting calls, lets the
/// in-flight ones finish (bounded by `drain_timeout`), and tears down every
/// MCP session and child process the daemon still holds. `http`, when
/// given, serves the OAuth callback beside gRPC until the same moment.
pub async fn serve(
    listener: TcpListener,
    http: Option<HttpEdge>,
    manager: Manager,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    // Before anything is spawned: a bad certificate leaves nothing running.
    let builder = match &options.tls {
        Some(tls) => tls.apply(Server::builder())?,
        None => Server::builder(),
    };
    let stopping = CancellationToken::new();
    let (health_reporter, health_service) = health::service(stopping.clone());
    health_reporter
        .set_serving::<proto::mcp_server_service_server::McpServerServiceServer<McpServerApi>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl 1.8 and other older clients only speak v1alpha.
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");

    let registry = Registry::new();
    manager.register_metrics(&registry);
    let observe = observe::ObserveLayer::new(
        &registry,
        &[
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
    );
    let http = http.map(|edge| {
        tokio::spawn(http::serve(
            edge,
            manager.clone(),
            registry,
            stopping.clone(),
        ))
    });
    tokio::spawn(sweep_expired(manager.clone(), stopping.clone()));
    tokio::spawn(manager.clone().run_event_listener(stopping.clone()));
    tokio::spawn(manager.clone().run_auto_sync(stopping.clone()));
    tokio::spawn(manager.clone().run_closed_elsewhere(stopping.clone()));
    if let Some(every) = manager.limits().health_interval {
        let concurrency = manager.limits().health_concurrency;
        tokio::spawn(
            manager
                .clone()
                .run_health_checks(every, concurrency, stopping.clone()),
        );
    }
    let signal = {
        let stopping = stopping.clone();
        let reporter = health_reporter.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new calls; finishing in-flight ones");
            health::not_serving::<
                proto::mcp_server_service_server::McpServerServiceServer<McpServerApi>,
            >(&reporter)
            .await;
            stopping.cancel();
        }
    };
    // Outermost first: the observer sees every answer as the client gets
    // it (refusals by the key check and the codes rewritten below included).
    let server = builder
        .layer(observe)
        .layer(auth::AuthLayer::new(manager.clone()))
        .layer(tower::util::MapResponseLayer::new(
            limits::oversized_is_resource_exhausted,
        ))
        .layer(tower::util::MapResponseLayer::new(
            deadline::expired_is_deadline_exceeded,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            proto::mcp_server_service_server::McpServerServiceServer::new(McpServerApi::new(
                manager.clone(),
                stopping.clone(),
            ))
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
        )
        .add_service(
            proto::admin_service_server::AdminServiceServer::new(admin::AdminApi::new(
                manager.clone(),
            ))
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    if let Some(addr) = local {
        let mode = match &options.tls {
            None => "off",
            Some(tls) if tls.client_ca.is_some() => "mutual",
            Some(_) => "on",
        };
        tracing::info!(%addr, tls = mode, "mcpd listening");
        if tls::exposed_in_clear(addr.ip(), options.tls.is_some()) {
            tracing::warn!(
                %addr,
                "serving gRPC without TLS on a non-loopback address: API keys and tool \
                 calls cross the network in clear text; give --tls-cert and --tls-key"
            );
        }
    }

    let drain = options.drain_timeout;
    let result = tokio::select! {
        result = server => result,
        () = async { stopping.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(?drain, "in-flight calls did not finish in time; stopping anyway");
            Ok(())
        }
    };
    stopping.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    manager.shutdown().await;
    tracing::info!("mcpd stopped");
    result.map_err(ServeError::from)
}

/// How often authorizations nobody finished, and events past their
/// retention, are looked for.
const SWEEP: Duration = Duration::from_secs(60);

async fn sweep_expired(manager: Manager, stopping: CancellationToken) {
    // Not at start-up: the first sweep would compete with the first calls
    // for the pool, for authorizations that cannot have expired yet.
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP, SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(err) = manager.sweep_authorizations().await {
            tracing::debug!(error = %err, "sweeping expired authorizations failed");
        }
        if let Err(err) = manager.sweep_events().await {
            tracing::debug!(error = %err, "sweeping events past their retention failed");
        }
    }
}

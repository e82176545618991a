//! Health and both reflection versions answer, so grpcurl and other tools
//! work with no .proto at hand.

mod common;

use common::*;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let mut health = HealthClient::new(daemon.channel().await);
    for service in ["", "mcpd.v1.McpServerService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    daemon.stop().await;
}

macro_rules! list_services {
    ($module:path, $channel:expr) => {{
        use $module as reflection;
        let mut client =
            reflection::server_reflection_client::ServerReflectionClient::new($channel);
        let request = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().expect("one response");
        match response.message_response {
            Some(
                reflection::server_reflection_response::MessageResponse::ListServicesResponse(list),
            ) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_services() {
    let daemon = Daemon::start(Backend::Sqlite).await;
    let v1 = list_services!(tonic_reflection::pb::v1, daemon.channel().await);
    let v1alpha = list_services!(tonic_reflection::pb::v1alpha, daemon.channel().await);
    for services in [&v1, &v1alpha] {
        assert!(
            services.iter().any(|s| s == "mcpd.v1.McpServerService"),
            "{services:?}"
        );
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{services:?}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stats_report_the_pool_and_reset_peaks() {
    use mcpd::proto::{GetStatsRequest, admin_service_client::AdminServiceClient};
    let daemon = Daemon::start(Backend::Sqlite).await;
    let acme = daemon.org("acme").await;
    acme.create("one", stdio(["--tools", "2"])).await.unwrap();
    let mut admin = AdminServiceClient::new(daemon.channel().await);
    let stats = admin
        .get_stats(acme.req(GetStatsRequest { reset_peaks: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.pool_max_size, 10);
    assert_eq!(stats.pool_peak_checked_out, 1);
    // Read while this call's key lookup is done: nothing held.
    assert_eq!(stats.pool_checked_out, 0);
    assert!(stats.pool_checkouts >= 2, "{stats:?}");
    assert_eq!(stats.pool_timeouts, 0);
    assert_eq!(stats.open_mcp_sessions, 0);
    assert!(stats.rss_bytes > 1_000_000, "{stats:?}");
    let after_reset = admin
        .get_stats(acme.req(GetStatsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    // Since the reset only this call's own key lookup held a connection.
    assert_eq!(after_reset.pool_peak_checked_out, 1);
    assert_eq!(after_reset.pool_checkouts, stats.pool_checkouts + 1);
    daemon.stop().await;
}

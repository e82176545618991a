//! `mcpd.v1.AdminService`: the daemon's own figures, for operators and the
//! benchmark.

use tonic::{Request, Response, Status};

use super::service::for_caller;
use crate::{
    manager::Manager,
    proto::{self, admin_service_server::AdminService},
};

pub struct AdminApi {
    manager: Manager,
}

impl AdminApi {
    pub fn new(manager: Manager) -> Self {
        AdminApi { manager }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_stats(
        &self,
        request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        // Daemon-wide figures, no tenant data: any valid key may read them.
        for_caller(request, |_org, body| async move {
            let stats = self.manager.stats();
            let pool = stats.pool;
            if body.reset_peaks {
                self.manager.reset_peaks();
            }
            let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            Ok(Response::new(proto::GetStatsResponse {
                pool_max_size: pool.max_size,
                pool_open: pool.open,
                pool_idle: pool.idle,
                pool_checked_out: clamp(pool.checked_out),
                pool_peak_checked_out: clamp(pool.peak_checked_out),
                pool_checkouts: pool.checkouts,
                pool_timeouts: pool.timeouts,
                open_mcp_sessions: clamp(stats.open_mcp_sessions),
                rss_bytes: rss_bytes().unwrap_or(0),
                live_sessions: clamp(stats.live.live_sessions),
                calls_in_flight: clamp(stats.live.calls_in_flight),
                session_opens: stats.live.session_opens,
                session_reuses: stats.live.session_reuses,
            }))
        })
        .await
    }
}

/// VmRSS from /proc (Linux); None elsewhere.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

//! Server health: what contacts with ready servers show (a sync, a call, a
//! health check), kept on the server record as READY or UNREACHABLE with the
//! last error and the time of the last contact that worked.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Manager;
use crate::{model::ServerState, store::Contact};

/// Servers read from the database per page of a health round.
const ROUND_PAGE: i64 = 200;

/// What one health round found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HealthRound {
    pub checked: usize,
    pub unreachable: usize,
}

impl Manager {
    /// Records a contact with a ready server; a change between ready and
    /// unreachable is logged. Never fails its caller: the answer of the RPC
    /// that made the contact does not depend on this write.
    pub(super) async fn note_contact(&self, org: &str, server_id: &str, contact: Contact) {
        match self.store.record_contact(org, server_id, &contact).await {
            Ok(false) => {}
            Ok(true) => match &contact {
                Contact::Reached => {
                    tracing::info!(%org, server = %server_id, "MCP server reachable again")
                }
                Contact::Unreachable(why) => {
                    tracing::warn!(%org, server = %server_id, error = %why, "MCP server unreachable")
                }
            },
            Err(err) => {
                tracing::warn!(%org, server = %server_id, error = %err, "recording an MCP server's health failed")
            }
        }
    }

    /// Contacts every ready server of every organization, at most
    /// `concurrency` at a time, and records what each showed. Each server is
    /// read with its own short checkout; none is held while a server is
    /// contacted.
    pub async fn check_health(&self, concurrency: usize) -> HealthRound {
        let mut round = HealthRound::default();
        let mut after: Option<String> = None;
        loop {
            let page = match self.store.ready_servers(after.as_deref(), ROUND_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %err, "health round: listing servers failed");
                    break;
                }
            };
            let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= ROUND_PAGE;
            after = page.last().map(|(_, id)| id.clone());
            let reached: Vec<bool> = futures::stream::iter(page)
                .map(async |(org, id)| self.check_server(&org, &id).await)
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            round.checked += reached.len();
            round.unreachable += reached.iter().filter(|reached| !**reached).count();
            if !full {
                break;
            }
        }
        round
    }

    /// Whether the server answered (any answer counts: a refusal is an
    /// answer; only the failure to reach it makes it unreachable).
    async fn check_server(&self, org: &str, server_id: &str) -> bool {
        let transport = match self.store.server_transport(org, server_id).await {
            Ok((transport, ServerState::Ready)) => transport,
            // Closed or no longer ready since the page was read: not ours.
            Ok(_) => return true,
            Err(err) => {
                tracing::debug!(%org, server = %server_id, error = %err, "health check skipped");
                return true;
            }
        };
        let transport = match self.fresh_transport(org, server_id, transport).await {
            Ok(transport) => transport,
            Err(err) => {
                tracing::debug!(%org, server = %server_id, error = %err, "health check skipped");
                return true;
            }
        };
        match self.mcp.check(org, server_id, &transport).await {
            Err(err) if err.unreachable() => {
                self.note_contact(org, server_id, Contact::Unreachable(err.to_string()))
                    .await;
                false
            }
            answered => {
                if let Err(err) = answered {
                    tracing::debug!(%org, server = %server_id, error = %err, "health check: the server answered with an error");
                }
                self.note_contact(org, server_id, Contact::Reached).await;
                true
            }
        }
    }

    /// Health rounds every `every` until `stopping` (`--health-interval`).
    /// Every replica runs its own: each sees its own network path.
    pub async fn run_health_checks(
        self,
        every: Duration,
        concurrency: usize,
        stopping: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stopping.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let round = tokio::select! {
                () = stopping.cancelled() => return,
                // One trace per round, with its reads, contacts and writes.
                round = self
                    .check_health(concurrency)
                    .instrument(tracing::info_span!(parent: None, "health_round")) => round,
            };
            tracing::debug!(
                checked = round.checked,
                unreachable = round.unreachable,
                "health round done"
            );
        }
    }
}

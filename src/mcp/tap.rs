//! The progress and log notifications of a streamed call, relayed to its
//! caller in the order they arrived.
//!
//! rmcp runs every notification handler on a task of its own, while a
//! response goes straight to the request waiting for it: a handler could
//! relay the last progress notification after the result it preceded on the
//! wire had already reached the caller. Taken off the transport instead,
//! before rmcp sees them, notifications are relayed before anything that
//! came after them is even read.

use std::future::Future;

use rmcp::{
    RoleClient,
    model::{ServerJsonRpcMessage, ServerNotification},
    transport::Transport,
};
use tokio::sync::mpsc;

use crate::model::CallEvent;

/// A transport that hands the notifications it receives to `events` (when
/// there is a caller to hand them to) and then on to rmcp.
pub(super) struct Tapped<T> {
    inner: T,
    events: Option<mpsc::Sender<CallEvent>>,
}

impl<T> Tapped<T> {
    pub(super) fn new(inner: T, events: Option<mpsc::Sender<CallEvent>>) -> Self {
        Tapped { inner, events }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Tapped<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: rmcp::model::ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        let message = self.inner.receive().await?;
        if let (Some(events), ServerJsonRpcMessage::Notification(notification)) =
            (&self.events, &message)
            && let Some(event) = call_event(&notification.notification)
        {
            // A caller that stopped listening is the call's business.
            let _ = events.send(event).await;
        }
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// The notifications a streamed call's caller sees.
#[allow(deprecated)] // logging is deprecated by 2026-07-28, still used by 2025-11-25 servers
fn call_event(notification: &ServerNotification) -> Option<CallEvent> {
    match notification {
        ServerNotification::ProgressNotification(progress) => {
            let params = &progress.params;
            Some(CallEvent::Progress {
                progress: params.progress,
                total: params.total,
                message: params.message.clone(),
            })
        }
        ServerNotification::LoggingMessageNotification(log) => {
            let params = &log.params;
            let level = serde_json::to_value(params.level)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            Some(CallEvent::Log {
                level,
                logger: params.logger.clone(),
                data: params.data.clone(),
            })
        }
        _ => None,
    }
}

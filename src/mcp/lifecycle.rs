//! How a session starts: the 2026-07-28 `server/discover` probe first, the
//! legacy `initialize` handshake for servers that predate it.
//!
//! rmcp's `ClientLifecycleMode::Auto` falls back to `initialize` on the same
//! transport when the probe gets a JSON-RPC error. Older servers fail the
//! probe in other ways too: some answer it with an empty result, a stateful
//! HTTP server refuses any request before `initialize` with HTTP 400, and an
//! older stdio server exits. Those get one more attempt, on a fresh
//! transport, with the legacy handshake alone. Either way the daemon
//! remembers the target (in memory, until it restarts), so its next sessions
//! skip the probe: a server upgraded meanwhile still answers `initialize`.

use std::{collections::HashSet, sync::Mutex};

use rmcp::{
    ClientLifecycleMode,
    model::{ErrorCode, ProtocolVersion},
    service::ClientInitializeError,
};

/// The two ways a session can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// `server/discover`, falling back to `initialize` in place.
    Discover,
    /// `initialize` only, proposing 2025-11-25.
    Legacy,
}

impl Start {
    pub(super) fn mode(self) -> ClientLifecycleMode {
        match self {
            Start::Discover => ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
            },
            Start::Legacy => ClientLifecycleMode::Initialize,
        }
    }
}

/// Whether a failed discover-first start may be a server that only knows
/// `initialize`. A server that answered the probe the way a 2026-07-28
/// server refuses a client (a missing capability, mismatched headers) is
/// not legacy, and a cancelled start is not the server's doing.
pub(super) fn may_be_legacy(err: &ClientInitializeError) -> bool {
    match err {
        ClientInitializeError::JsonRpcError(data) => !matches!(
            data.code,
            ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY | ErrorCode::HEADER_MISMATCH
        ),
        ClientInitializeError::Cancelled => false,
        _ => true,
    }
}

/// Most targets remembered; past it the memory starts over (a forgotten
/// target costs one more probe, nothing else).
const REMEMBERED: usize = 4096;

/// Targets (URL or command) whose servers needed the legacy start.
#[derive(Default)]
pub(super) struct LegacyTargets(Mutex<HashSet<String>>);

impl LegacyTargets {
    pub(super) fn start_for(&self, target: &str) -> Start {
        let known = self.0.lock().is_ok_and(|known| known.contains(target));
        if known {
            Start::Legacy
        } else {
            Start::Discover
        }
    }

    pub(super) fn remember(&self, target: &str) {
        if let Ok(mut known) = self.0.lock() {
            if known.len() >= REMEMBERED {
                known.clear();
            }
            known.insert(target.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ErrorData;

    #[test]
    fn modern_refusals_are_not_mistaken_for_legacy_servers() {
        let refused = |code| ClientInitializeError::JsonRpcError(ErrorData::new(code, "no", None));
        assert!(!may_be_legacy(&refused(
            ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY
        )));
        assert!(!may_be_legacy(&refused(ErrorCode::HEADER_MISMATCH)));
        assert!(may_be_legacy(&refused(ErrorCode::METHOD_NOT_FOUND)));
        assert!(may_be_legacy(&ClientInitializeError::ExpectedInitResult(
            None
        )));
        assert!(!may_be_legacy(&ClientInitializeError::Cancelled));
    }

    #[test]
    fn remembered_targets_start_with_initialize() {
        let targets = LegacyTargets::default();
        assert_eq!(targets.start_for("old"), Start::Discover);
        targets.remember("old");
        assert_eq!(targets.start_for("old"), Start::Legacy);
        assert_eq!(targets.start_for("new"), Start::Discover);
    }
}

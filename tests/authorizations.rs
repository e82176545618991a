//! Authorizations in flight for the OAuth authorization code flow, as the
//! store keeps them: the state stored only as a hash, the payload sealed,
//! taken once (also when two daemons race for it), void once expired, gone
//! with their server.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;

backend_tests!(
    an_authorization_is_taken_once_and_kept_only_as_a_hash,
    expired_authorizations_are_void_and_swept,
);

const TTL: Duration = Duration::from_secs(600);

/// A registered server to attach authorizations to.
async fn server(daemon: &Daemon) -> String {
    daemon
        .org("acme")
        .await
        .create("pending", stdio(["--tools", "1"]))
        .await
        .unwrap()
        .server
        .unwrap()
        .id
}

async fn an_authorization_is_taken_once_and_kept_only_as_a_hash(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let id = server(&daemon).await;
    let state = "st4te-Zq8xW1vR0aLmK3bYt7";
    let payload = br#"{"verifier":"pkce-v3rifier-9c41"}"#;
    daemon
        .store
        .save_authorization("acme", &id, state, payload, TTL)
        .await
        .unwrap();

    let stored = daemon.registry().authorizations().await;
    assert_eq!(stored.len(), 1);
    assert_ne!(
        stored[0].state_hash, state,
        "the state itself is not stored"
    );
    assert!(!stored[0].state_hash.contains(state));
    assert!(
        !stored[0].payload.contains("pkce-v3rifier"),
        "the payload is sealed"
    );

    assert!(
        daemon
            .store
            .take_authorization("another-state")
            .await
            .unwrap()
            .is_none()
    );
    let taken = daemon
        .store
        .take_authorization(state)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.organization_id, "acme");
    assert_eq!(taken.server_id, id);
    assert_eq!(taken.payload, payload);
    assert!(
        daemon
            .store
            .take_authorization(state)
            .await
            .unwrap()
            .is_none(),
        "a state is good for one callback"
    );
    assert!(daemon.registry().authorizations().await.is_empty());

    // Closing the server takes its authorizations with it.
    daemon
        .store
        .save_authorization("acme", &id, "second-state", payload, TTL)
        .await
        .unwrap();
    daemon.org("acme").await.close(&id).await.unwrap();
    assert!(
        daemon
            .store
            .take_authorization("second-state")
            .await
            .unwrap()
            .is_none()
    );
    daemon.stop().await;
}

async fn expired_authorizations_are_void_and_swept(backend: Backend) {
    let daemon = Daemon::start(backend).await;
    let id = server(&daemon).await;
    for state in ["old-1", "old-2"] {
        daemon
            .store
            .save_authorization("acme", &id, state, b"{}", Duration::ZERO)
            .await
            .unwrap();
    }
    daemon
        .store
        .save_authorization("acme", &id, "fresh", b"{}", TTL)
        .await
        .unwrap();
    assert!(
        daemon
            .store
            .take_authorization("old-1")
            .await
            .unwrap()
            .is_none(),
        "an expired state is refused"
    );
    assert_eq!(daemon.store.sweep_authorizations().await.unwrap(), 1);
    assert_eq!(daemon.registry().authorizations().await.len(), 1);
    assert!(
        daemon
            .store
            .take_authorization("fresh")
            .await
            .unwrap()
            .is_some()
    );
    daemon.stop().await;
}

/// A callback may reach any replica: two daemons on one PostgreSQL race for
/// the same states, and each state goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_racing_for_a_state_get_it_once() {
    let first = Daemon::start(Backend::Postgres).await;
    let second = Daemon::start_on(first.db.clone(), DaemonOptions::default()).await;
    let id = server(&first).await;
    let states: Vec<String> = (0..20).map(|i| format!("raced-state-{i}")).collect();
    for state in &states {
        first
            .store
            .save_authorization("acme", &id, state, b"{}", TTL)
            .await
            .unwrap();
    }
    let (a, b) = (
        Arc::new(first.store.clone()),
        Arc::new(second.store.clone()),
    );
    let races = states.iter().map(|state| {
        let (a, b) = (a.clone(), b.clone());
        let state = state.clone();
        async move {
            let (x, y) = tokio::join!(a.take_authorization(&state), b.take_authorization(&state));
            usize::from(x.unwrap().is_some()) + usize::from(y.unwrap().is_some())
        }
    });
    for winners in futures::future::join_all(races).await {
        assert_eq!(winners, 1, "exactly one daemon takes each state");
    }
    second.stop().await;
    first.stop().await;
}

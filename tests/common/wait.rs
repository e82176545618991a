//! Waiting on conditions, never on the clock: every wait in the tests polls
//! the thing it waits for, with a bound after which the test fails.

use std::{path::PathBuf, time::Duration};

/// How often the wait helpers look again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `probe` until it returns `Some`, and returns that. Fails the test,
/// naming `what`, if it has not within `within`.
pub async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `condition` until it holds; fails the test, naming `what`, if it
/// has not within `within`.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    wait_for(what, within, async || condition().await.then_some(())).await
}

/// Whether a process with this pid still exists (a zombie counts as gone:
/// it is reaped by whoever owns it). Every thread counts: a killed
/// multi-threaded process shows its main thread as a zombie while the others
/// are still exiting, and its parent cannot reap it until they have.
pub fn process_alive(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.filter_map(Result::ok).any(|thread| {
        match std::fs::read_to_string(thread.path().join("stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next());
                !matches!(state, Some("Z") | Some("X") | None)
            }
            Err(_) => false,
        }
    })
}

/// Fails the test unless every pid is gone within `within`.
pub async fn assert_gone(pids: &[u32], within: Duration) {
    wait_until(
        &format!("processes {pids:?} to be gone"),
        within,
        async || !pids.iter().any(|pid| process_alive(*pid)),
    )
    .await
}

/// Where a test server started with `--spawn-grandchild PIDFILE` writes the
/// pid of its `sleep 1000` child, then its own.
pub struct Pidfile(PathBuf, Option<tempfile::TempDir>);

impl Pidfile {
    pub fn new(path: impl Into<PathBuf>) -> Pidfile {
        Pidfile(path.into(), None)
    }

    /// A pidfile in a directory of its own, removed with it.
    pub fn temp() -> Pidfile {
        let dir = tempfile::tempdir().expect("temp dir");
        Pidfile(dir.path().join("pids"), Some(dir))
    }

    /// The test server's arguments `args` followed by
    /// `--spawn-grandchild PIDFILE`.
    pub fn args_with(&self, args: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
        let mut args: Vec<String> = args.into_iter().map(Into::into).collect();
        args.push("--spawn-grandchild".to_owned());
        args.push(self.0.to_str().expect("UTF-8 temp path").to_owned());
        args
    }

    /// What was written so far (nothing, or both pids: the server writes the
    /// file whole, by rename).
    pub fn read(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Both pids, once the server has started (at most 20 s).
    pub async fn wait(&self) -> Pids {
        let pids = wait_for(
            &format!("the test server to write {}", self.0.display()),
            Duration::from_secs(20),
            async || Some(self.read()).filter(|pids| pids.len() >= 2),
        )
        .await;
        Pids {
            grandchild: pids[0],
            server: pids[1],
        }
    }

    /// Both pids, which must have been written by now.
    pub fn written(&self) -> Pids {
        let pids = self.read();
        assert_eq!(pids.len(), 2, "the test server wrote {}", self.0.display());
        Pids {
            grandchild: pids[0],
            server: pids[1],
        }
    }
}

/// A test server's pid and its `sleep` child's.
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    pub server: u32,
    pub grandchild: u32,
}

impl Pids {
    pub fn both(&self) -> [u32; 2] {
        [self.server, self.grandchild]
    }

    /// Both processes are gone within five seconds.
    pub async fn assert_gone(&self) {
        assert_gone(&self.both(), Duration::from_secs(5)).await
    }
}

//! Stdio MCP servers as child processes we own: their own process group, a
//! clean environment, stderr drained, and a teardown that always reaps.

use std::{
    collections::{BTreeMap, VecDeque},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::AsyncReadExt,
    process::{Child, ChildStdin, ChildStdout, Command},
};

use super::{McpError, metrics::McpMetrics, orphans::GroupRecord};

/// Bytes of the child's stderr kept for error messages.
const STDERR_TAIL: usize = 1024;

pub(super) struct ChildProcess {
    child: Child,
    /// The child leads its own process group, so one signal reaches whatever
    /// it spawned too (npx → node, shells → their jobs).
    pgid: Option<i32>,
    program: String,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    swept: bool,
    metrics: Arc<McpMetrics>,
    /// Names the group while it may hold processes, for the daemon that
    /// starts after this one is killed outright.
    record: Arc<GroupRecord>,
}

impl ChildProcess {
    pub(super) fn spawn(
        program: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
        passthrough: &[String],
        metrics: &Arc<McpMetrics>,
        record: &Arc<GroupRecord>,
    ) -> Result<(ChildProcess, ChildStdout, ChildStdin), McpError> {
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(
                passthrough
                    .iter()
                    .filter_map(|name| std::env::var_os(name).map(|value| (name, value))),
            )
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // A safety net only: teardown kills the whole group and reaps.
            .kill_on_drop(true);
        die_with_daemon(&mut command);
        let mut child = spawner::spawn(command).map_err(|error| McpError::Spawn {
            program: program.to_owned(),
            error,
        })?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            return Err(McpError::Settings("child stdio was not piped".into()));
        };
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        if let Some(mut stderr) = child.stderr.take() {
            // Drained so a chatty child never blocks on a full pipe.
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                    if let Ok(mut tail) = tail.lock() {
                        tail.extend(&buf[..n]);
                        let excess = tail.len().saturating_sub(STDERR_TAIL);
                        tail.drain(..excess);
                    }
                }
            });
        }
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        if let Some(pgid) = pgid {
            record.started(pgid);
        }
        metrics.child_started();
        Ok((
            ChildProcess {
                child,
                pgid,
                program: program.to_owned(),
                stderr_tail,
                swept: false,
                metrics: metrics.clone(),
                record: record.clone(),
            },
            stdout,
            stdin,
        ))
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.pgid.and_then(|p| u32::try_from(p).ok())
    }

    /// The last lines the child wrote to stderr, for error messages, with
    /// newlines and other control characters escaped.
    pub(super) fn stderr_tail(&self) -> String {
        let tail = match self.stderr_tail.lock() {
            Ok(tail) => tail.iter().copied().collect::<Vec<u8>>(),
            Err(_) => return String::new(),
        };
        // Whatever the child wrote: escaped, so it cannot forge lines of a
        // log or of a status message.
        crate::telemetry::escape_control(String::from_utf8_lossy(&tail).trim())
    }

    /// How the child exited, if it has.
    pub(super) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits `grace` for the child to exit by itself (its stdin is closed by
    /// now), then kills its process group and reaps it. Never fails: what goes
    /// wrong is logged at debug.
    pub(super) async fn reap(mut self, grace: Duration) {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::debug!(program = %self.program, %status, "stdio MCP server exited")
            }
            Ok(Err(err)) => {
                self.metrics.teardown_failed();
                tracing::debug!(program = %self.program, error = %err, "waiting for stdio MCP server failed")
            }
            Err(_) => {
                self.metrics.child_killed();
                tracing::debug!(
                    program = %self.program,
                    ?grace,
                    "stdio MCP server did not exit after its session closed; killing it"
                )
            }
        }
        // Also sweeps anything the child left behind in its group.
        self.kill_group();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                self.metrics.teardown_failed();
                tracing::debug!(program = %self.program, error = %err, "reaping stdio MCP server failed")
            }
            Err(_) => {
                self.metrics.teardown_failed();
                tracing::debug!(program = %self.program, "stdio MCP server survived SIGKILL for {grace:?}")
            }
        }
    }

    fn kill_group(&mut self) {
        if self.swept {
            return;
        }
        self.swept = true;
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions. ESRCH (the
            // group is already gone) is the expected, harmless outcome.
            let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ESRCH) {
                    self.metrics.teardown_failed();
                    tracing::debug!(program = %self.program, error = %err, "killpg failed");
                    // Still named in the record: a later start retries.
                    return;
                }
            }
            self.record.ended(pgid);
        }
    }
}

impl Drop for ChildProcess {
    /// A session dropped without teardown (its request was cancelled) still
    /// leaves nothing behind: the group is killed here and tokio reaps the
    /// leader in the background (`kill_on_drop`).
    fn drop(&mut self) {
        self.kill_group();
        self.metrics.child_reaped();
    }
}

/// Asks the kernel to SIGKILL the child when the daemon dies, however it
/// dies (SIGKILL included, where no teardown runs). The signal follows the
/// *thread* that forked, hence [`spawner`].
#[cfg(target_os = "linux")]
fn die_with_daemon(command: &mut Command) {
    let daemon = i32::try_from(std::process::id()).unwrap_or_default();
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (prctl, getppid), touching no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon died between fork and prctl: nobody would kill us.
            if libc::getppid() != daemon {
                return Err(std::io::Error::other(
                    "mcpd exited while starting the server",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_daemon(_command: &mut Command) {}

/// Children are forked by one thread that lives as long as the daemon: a
/// parent-death signal fires when the forking thread exits, and tokio's
/// blocking threads come and go.
mod spawner {
    use std::sync::{OnceLock, mpsc};

    use tokio::process::{Child, Command};

    type Job = Box<dyn FnOnce() + Send>;

    fn thread() -> &'static mpsc::Sender<Job> {
        static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
        SPAWNER.get_or_init(|| {
            let (jobs, queue) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("mcpd-spawner".into())
                .spawn(move || {
                    for job in queue {
                        job();
                    }
                })
                .expect("starting the child-process spawner thread");
            jobs
        })
    }

    /// Spawns `command` on the spawner thread, registered with the calling
    /// runtime (which reaps it). Blocks for the fork and exec only, as
    /// spawning on the caller's thread would.
    pub(super) fn spawn(mut command: Command) -> std::io::Result<Child> {
        let runtime = tokio::runtime::Handle::current();
        let (done, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _entered = runtime.enter();
            let _ = done.send(command.spawn());
        });
        thread()
            .send(job)
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        result
            .recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

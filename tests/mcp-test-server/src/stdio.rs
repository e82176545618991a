//! MCP over stdin/stdout.

use std::{
    io::Write,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use rmcp::{ServiceExt, transport::stdio};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::{
    Behaviour,
    handler::{CRASH_EXIT_CODE, TestServer},
};

/// How long answers still in flight at stdin EOF may take to be written.
///
/// rmcp itself allows them 5 seconds before `waiting()` returns; a request
/// that is never answered (`--hang list`) would use all of that, delaying our
/// exit for no benefit. Answers that are coming at all come within
/// milliseconds here.
const EOF_GRACE: Duration = Duration::from_millis(500);

pub async fn run(server: TestServer, behaviour: &Behaviour) -> anyhow::Result<()> {
    if behaviour.hang_initialize {
        // Read nothing at all: the client's `initialize` sits in the pipe
        // unanswered, and stdin EOF goes unnoticed too.
        eprintln!("mcp-test-server: --hang initialize, never reading stdin");
        std::future::pending::<()>().await;
    }

    let stdin_closed = CancellationToken::new();
    let (stdin, stdout) = stdio();
    let stdin = EofSignal {
        inner: stdin,
        eof: stdin_closed.clone(),
    };
    // `serve` performs the initialize handshake; it fails if stdin closes
    // before the handshake completes, which ends the session all the same.
    match server.serve((stdin, stdout)).await {
        Ok(running) => {
            let eof_grace = async {
                stdin_closed.cancelled().await;
                tokio::time::sleep(EOF_GRACE).await;
            };
            // Dropping a still running session (when the grace wins) aborts
            // its handlers.
            tokio::select! {
                reason = running.waiting() => {
                    eprintln!("mcp-test-server: stdio session ended: {:?}", reason?);
                }
                () = eof_grace => {
                    eprintln!("mcp-test-server: stdin closed, abandoning unanswered requests");
                }
            }
        }
        Err(error) => {
            eprintln!("mcp-test-server: stdio session ended before initialization: {error}")
        }
    }

    if behaviour.crash_on_shutdown {
        // Bytes that are not JSON-RPC, then an abrupt non-zero exit.
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(b"\x00garbage after shutdown {{{ not json\n");
        let _ = stdout.flush();
        eprintln!("mcp-test-server: stdin closed, crashing with exit code {CRASH_EXIT_CODE}");
        std::process::exit(CRASH_EXIT_CODE);
    }
    if behaviour.ignore_shutdown {
        // SIGTERM is already ignored (see `main`); only SIGKILL ends us now.
        eprintln!("mcp-test-server: stdin closed, --ignore-shutdown, running on");
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Passes reads through and cancels `eof` once the reader reports EOF (or an
/// error). rmcp notices EOF too but does not tell us until its drain is over
/// (see [`EOF_GRACE`]).
struct EofSignal<R> {
    inner: R,
    eof: CancellationToken,
}

impl<R: AsyncRead + Unpin> AsyncRead for EofSignal<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let filled_before = buf.filled().len();
        let asked_for_bytes = buf.remaining() > 0;
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(result) = &poll {
            let at_eof = asked_for_bytes && buf.filled().len() == filled_before;
            if result.is_err() || at_eof {
                self.eof.cancel();
            }
        }
        poll
    }
}

//! MCP over stdin/stdout.

/// `eprintln!` that never panics: once the client is gone stderr may be a
/// broken pipe, and a failed print would end the server where a real one
/// (say, one that ignores its stdin closing) runs on.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use std::{
    io::Write,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use rmcp::{
    RoleServer, ServiceExt,
    model::{ClientRequest, JsonRpcMessage, JsonRpcRequest},
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::{Transport, async_rw::AsyncRwTransport, stdio},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Behaviour,
    handler::{CRASH_EXIT_CODE, TestServer},
    malformed,
};

/// How long answers still in flight at stdin EOF may take to be written.
///
/// rmcp itself allows them 5 seconds before `waiting()` returns; a request
/// that is never answered (`--hang list`) would use all of that, delaying our
/// exit for no benefit. Answers that are coming at all come within
/// milliseconds here.
const EOF_GRACE: Duration = Duration::from_millis(500);

/// How long `--malformed-list` waits at the end for queued stdout lines.
const STDOUT_DRAIN: Duration = Duration::from_secs(1);

pub async fn run(server: TestServer, behaviour: &Behaviour) -> anyhow::Result<()> {
    if behaviour.hang_initialize {
        // Read nothing at all: the client's `initialize` sits in the pipe
        // unanswered, and stdin EOF goes unnoticed too.
        say!("mcp-test-server: --hang initialize, never reading stdin");
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
    let mut stdout_writer = None;
    let served = if behaviour.malformed_list {
        let (lines, writer) = spawn_stdout_writer();
        stdout_writer = Some(writer);
        let transport = MalformedList {
            inner: AsyncRwTransport::new_server(
                stdin,
                LineSender {
                    lines: lines.clone(),
                    partial: Vec::new(),
                },
            ),
            lines,
        };
        server.serve(transport).await
    } else {
        server.serve((stdin, stdout)).await
    };
    match served {
        Ok(running) => {
            let eof_grace = async {
                stdin_closed.cancelled().await;
                tokio::time::sleep(EOF_GRACE).await;
            };
            // Dropping a still running session (when the grace wins) aborts
            // its handlers.
            tokio::select! {
                reason = running.waiting() => {
                    say!("mcp-test-server: stdio session ended: {:?}", reason?);
                }
                () = eof_grace => {
                    say!("mcp-test-server: stdin closed, abandoning unanswered requests");
                }
            }
        }
        Err(error) => {
            say!("mcp-test-server: stdio session ended before initialization: {error}")
        }
    }
    if let Some(writer) = stdout_writer {
        // The session (and with it every sender) is gone or going; let what
        // it queued reach stdout before we exit or write anything ourselves.
        let _ = tokio::time::timeout(STDOUT_DRAIN, writer).await;
    }

    if behaviour.crash_on_shutdown {
        // Bytes that are not JSON-RPC, then an abrupt non-zero exit.
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(b"\x00garbage after shutdown {{{ not json\n");
        let _ = stdout.flush();
        say!("mcp-test-server: stdin closed, crashing with exit code {CRASH_EXIT_CODE}");
        std::process::exit(CRASH_EXIT_CODE);
    }
    if behaviour.ignore_shutdown {
        // SIGTERM is already ignored (see `main`); only SIGKILL ends us now.
        say!("mcp-test-server: stdin closed, --ignore-shutdown, running on");
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

/// `--malformed-list`: hides `tools/list` requests from rmcp and answers each
/// with one line of truncated JSON instead (see [`malformed::truncated_answer`]).
///
/// rmcp's own transport owns the reading and the message framing; this only
/// filters what it parsed. Its writes and ours both go through [`LineSender`]
/// into one queue, whole lines at a time, so they never interleave on stdout.
struct MalformedList<T> {
    inner: T,
    lines: mpsc::UnboundedSender<Vec<u8>>,
}

impl<T: Transport<RoleServer>> Transport<RoleServer> for MalformedList<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let message = self.inner.receive().await?;
            // Nothing is awaited from here on, so a cancelled `receive`
            // (rmcp polls it in a `select!`) never loses a request.
            let JsonRpcMessage::Request(JsonRpcRequest {
                id,
                request: ClientRequest::ListToolsRequest(_),
                ..
            }) = &message
            else {
                return Some(message);
            };
            let id = serde_json::to_string(id).expect("a request id serializes");
            say!("mcp-test-server: --malformed-list, answering tools/list {id} with garbage");
            let mut line = malformed::truncated_answer(&id).into_bytes();
            line.push(b'\n');
            // Fails only once the writer is gone, i.e. stdout is broken.
            let _ = self.lines.send(line);
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// Writes every queued chunk to stdout, in order, until all senders are gone
/// or stdout fails.
fn spawn_stdout_writer() -> (mpsc::UnboundedSender<Vec<u8>>, JoinHandle<()>) {
    let (lines, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = queue.recv().await {
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    (lines, writer)
}

/// rmcp's stdout for `--malformed-list`: queues what rmcp writes, one whole
/// line per chunk, for [`spawn_stdout_writer`]'s task. Writes never block;
/// rmcp's frames are small and the queue drains as fast as stdout takes it.
struct LineSender {
    lines: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes written since the last newline.
    partial: Vec<u8>,
}

impl AsyncWrite for LineSender {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let mut rest = buf;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            let (line, after) = rest.split_at(newline + 1);
            let mut chunk = std::mem::take(&mut this.partial);
            chunk.extend_from_slice(line);
            if this.lines.send(chunk).is_err() {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            rest = after;
        }
        this.partial.extend_from_slice(rest);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Only whole lines are ever queued: a partial one waits for its end.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

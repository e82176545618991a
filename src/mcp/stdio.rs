//! JSON-RPC over a child's stdin/stdout, one message per line, read
//! strictly: the spec allows nothing but MCP messages on stdout, so a line
//! that is not one ends the session at once (the caller gets UNAVAILABLE
//! saying why) instead of leaving a request to wait for its timeout.

use std::{
    future::ready,
    pin::Pin,
    sync::{Arc, Mutex},
};

use futures::{Sink, SinkExt, Stream, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio::process::{ChildStdin, ChildStdout};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

/// Longest line accepted from a server: a listing of thousands of tools is
/// a few megabytes; anything beyond this is a broken server.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Why the server's output stream ended early, if it did.
#[derive(Clone, Default)]
pub(super) struct Malformed(Arc<Mutex<Option<String>>>);

impl Malformed {
    fn record(&self, why: String) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(why);
        }
    }

    pub(super) fn reason(&self) -> Option<String> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

pub(super) type OutgoingSink =
    Pin<Box<dyn Sink<ClientJsonRpcMessage, Error = std::io::Error> + Send>>;
pub(super) type IncomingStream = Pin<Box<dyn Stream<Item = ServerJsonRpcMessage> + Send>>;

pub(super) fn transport(
    stdout: ChildStdout,
    stdin: ChildStdin,
    malformed: Malformed,
) -> (OutgoingSink, IncomingStream) {
    let incoming = FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE))
        .filter(|line| ready(!matches!(line, Ok(text) if text.trim().is_empty())))
        .scan(malformed, |malformed, line| {
            let message = match line {
                Ok(text) => match serde_json::from_str::<ServerJsonRpcMessage>(&text) {
                    Ok(message) => Some(message),
                    Err(err) => {
                        malformed.record(format!(
                            "it wrote a line that is not a JSON-RPC message ({err})"
                        ));
                        None
                    }
                },
                Err(err) => {
                    malformed.record(format!("its output could not be read ({err})"));
                    None
                }
            };
            ready(message)
        });
    let outgoing = SinkExt::<String>::sink_map_err(
        FramedWrite::new(stdin, LinesCodec::new()),
        std::io::Error::other,
    )
    .with(|message: ClientJsonRpcMessage| {
        ready(serde_json::to_string(&message).map_err(std::io::Error::other))
    });
    (Box::pin(outgoing), Box::pin(incoming))
}

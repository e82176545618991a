//! Where SQLite's work runs.
//!
//! diesel's SQLite connection is synchronous; diesel-async's wrapper hands
//! each statement to `spawn_blocking` and waits to be woken: two thread
//! switches per statement, and a create is about seven statements (BEGIN,
//! server, tools, mappings, cursor, event, COMMIT). Measured, those hops
//! were most of a small create's persistence time.
//!
//! Here a whole unit of work (one `with_conn!` body) runs on the thread that
//! polls it, after `block_in_place` has handed that worker's other tasks to
//! another thread; the statements inside then run where they are issued
//! ([`super::sqlite_conn`]). One hand-off per transaction instead of one per
//! statement, and a body that has started always finishes: a cancelled call
//! can no longer leave a transaction open between two statements.

use std::future::Future;

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` to completion on this thread, out of the runtime's way.
///
/// On the multi-thread runtime (the daemon's) the worker's queue moves to
/// another thread for the duration. On a current-thread runtime there is no
/// other thread to move it to, and the work simply runs as it is polled.
pub(crate) async fn unit_of_work<F: Future>(work: F) -> F::Output {
    match multi_thread() {
        Some(handle) => tokio::task::block_in_place(|| handle.block_on(work)),
        None => work.await,
    }
}

/// `block_in_place` where the runtime allows it; inside a unit of work
/// (already out of the runtime) it costs nothing.
pub(super) fn leave_runtime<R>(f: impl FnOnce() -> R) -> R {
    match multi_thread() {
        Some(_) => tokio::task::block_in_place(f),
        None => f(),
    }
}

fn multi_thread() -> Option<Handle> {
    Handle::try_current()
        .ok()
        .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread)
}

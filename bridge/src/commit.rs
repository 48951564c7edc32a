//! Group commit of the request path's writes: revocations that arrive while another write is on
//! its way to disk are gathered and applied together, as one change of the replicated document
//! and one log append with one `fsync`, instead of one each.
//!
//! A writer queues its changes and waits. If no commit is running, it starts one on a blocking
//! thread: the committer takes everything queued, applies it under the node lock (the changes in
//! the order they were queued, so a later write sees an earlier one), answers every writer of the
//! batch and repeats until the queue is empty. Under a light load a batch holds one write and
//! nothing waits longer than before; under a heavy one the batch grows with the time a commit
//! takes, which keeps the number of document changes (and the sync work each one costs every
//! peer) well below the number of writes.

use std::sync::{Arc, Mutex};

use mesh::state::Change;
use tokio::sync::oneshot;

use crate::http::AppState;

/// The most writes one commit applies; the rest wait for the next one.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<(), Arc<str>>>;

/// The queue of writes waiting for a commit.
#[derive(Default)]
pub struct GroupCommit {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    queue: Vec<(Vec<Change>, Reply)>,
    /// Whether a committer is running (it empties the queue before it stops).
    running: bool,
}

impl GroupCommit {
    /// Applies `changes` to the node (and its view) together with any other writes queued at the
    /// same time; resolves once they are durable, or with the error that made the commit fail.
    pub async fn commit(&self, state: &AppState, changes: Vec<Change>) -> Result<(), Arc<str>> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.queue.push((changes, reply));
            !std::mem::replace(&mut pending.running, true)
        };
        if start {
            let state = state.clone();
            // Detached: the committer answers every queued writer, also after this one gave up.
            drop(tokio::task::spawn_blocking(move || state.group_commit().run(&state)));
        }
        answer.await.map_err(|_| Arc::from("the commit was abandoned"))?
    }

    /// The committer: commits batches until the queue is empty.
    fn run(&self, state: &AppState) {
        loop {
            let batch = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.queue.is_empty() {
                    pending.running = false;
                    return;
                }
                let n = pending.queue.len().min(MAX_BATCH);
                pending.queue.drain(..n).collect::<Vec<_>>()
            };
            let all: Vec<Change> = batch.iter().flat_map(|(changes, _)| changes.iter().cloned()).collect();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                state.with_node(|node| node.apply(&all).map(|()| ((), all)))
            }));
            let result: Result<(), Arc<str>> = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Arc::from(e.to_string())),
                Err(_) => Err(Arc::from("the commit panicked")),
            };
            if batch.len() > 1 {
                tracing::trace!(writes = batch.len(), "group commit");
            }
            for (_, reply) in batch {
                let _ = reply.send(result.clone());
            }
        }
    }
}

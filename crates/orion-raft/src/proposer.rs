//! The batching proposer: every write this node proposes as leader (its own API's, the
//! controller's and executor's, and those forwarded by followers) goes through one queue, and
//! the commands that queued up while earlier proposals were in flight share one Raft entry
//! (`Command::Batch`). One entry is one log append and one fsync on each member, so under
//! concurrent load the fsyncs are shared instead of paid per command.
//!
//! - **No lingering.** There is no timer: a command is proposed as soon as fewer than
//!   `PROPOSALS_IN_FLIGHT_MAX` proposals are in flight, together with whatever else is queued
//!   at that moment. A lone write on an idle leader is proposed at once, alone, as the command
//!   itself (not wrapped in a batch), exactly as before batching.
//! - **Bounded.** A batch holds at most `BATCH_COMMANDS_MAX` commands and `BATCH_BYTES_MAX`
//!   bytes of command JSON (a larger command goes alone); at most `PROPOSALS_IN_FLIGHT_MAX`
//!   proposals are in flight; the queue holds at most `QUEUE_MAX` commands, and a writer waits
//!   for room (within its own time bound).
//! - **One answer per command.** A batch applies to `Response::Batch`, one answer per command
//!   in order; each writer gets its own. A failure of the proposal as a whole (not the leader,
//!   no commit in time, shutdown) is every command's failure, so the retry rule is unchanged:
//!   `NotLeader` (surely not proposed) lets each writer retry; a timeout leaves each `Unknown`.
//! - **Given up is not proposed.** A writer whose time ran out while its command was still
//!   queued has been told `Timeout` (`Unknown`, conservatively); its command is then dropped
//!   from the queue and never proposed.
//!
//! Durability is unchanged: a batch is acknowledged to its writers only after openraft
//! committed and applied its entry, which is after the fsync of the log on a quorum.

use crate::network::ForwardError;
use crate::types::TypeConfig;
use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use orion_types::{Command, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

/// Most commands in one entry. A batch's commands are applied under one hold of the state
/// lock; 256 small commands apply in well under a millisecond, and a 64-client load never
/// queues more than 64 anyway.
pub(crate) const BATCH_COMMANDS_MAX: usize = 256;

/// Most bytes of command JSON in one batch (a single larger command goes alone). openraft
/// sends up to 300 entries per append-entries RPC and the RPC refuses bodies over
/// `RPC_BODY_BYTES_MAX` (16 MiB), asking openraft for fewer entries; 256 KiB keeps a catch-up
/// append of many full batches within a few RPCs and a batch's apply short.
pub(crate) const BATCH_BYTES_MAX: usize = 256 * 1024;

/// Most proposals (entries) in flight at once. One in flight would serialise the log append
/// and the replication round of each batch behind the previous one; a few let openraft overlap
/// the leader's append of one with the replication of another, while what queues meanwhile
/// still batches.
pub(crate) const PROPOSALS_IN_FLIGHT_MAX: usize = 4;

/// Most commands waiting in the queue; a writer waits for room beyond that.
const QUEUE_MAX: usize = 4_096;

struct Queued {
    cmd: Command,
    bytes: usize,
    reply: oneshot::Sender<Result<Response, ForwardError>>,
}

/// The queue's sending end. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::Sender<Queued>,
}

/// Counts the bytes a value serialises to, without keeping them.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_bytes(cmd: &Command) -> usize {
    let mut n = ByteCount(0);
    // Writing to a counter cannot fail, and a Command always serialises.
    let _ = serde_json::to_writer(&mut n, cmd);
    n.0
}

impl Proposer {
    /// Starts the proposer's loop on `raft`; it ends when `stop` turns true or every
    /// `Proposer` handle is gone.
    pub(crate) fn start(
        raft: Raft<TypeConfig>,
        timeout: Duration,
        stop: watch::Receiver<bool>,
    ) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let task = tokio::spawn(run(raft, rx, timeout, stop));
        (Proposer { tx }, task)
    }

    /// Proposes `cmd` (already validated) with whatever else is queued, and returns its own
    /// answer once its entry is committed and applied, within `timeout` in all.
    pub(crate) async fn write(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Response, ForwardError> {
        let (reply, answer) = oneshot::channel();
        let bytes = json_bytes(&cmd);
        let queued = async {
            self.tx
                .send(Queued { cmd, bytes, reply })
                .await
                .map_err(|_| ForwardError::Shutdown)?;
            answer.await.map_err(|_| ForwardError::Shutdown)?
        };
        match tokio::time::timeout(timeout, queued).await {
            Ok(res) => res,
            Err(_) => Err(ForwardError::Timeout {
                ms: timeout.as_millis() as u64,
            }),
        }
    }
}

async fn run(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Queued>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    let mut held: Option<Queued> = None;
    loop {
        let first = match held.take() {
            Some(q) => q,
            None => tokio::select! {
                q = rx.recv() => match q {
                    Some(q) => q,
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            },
        };
        // Wait for a free slot; what queues meanwhile joins this batch.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(q) if bytes + q.bytes > BATCH_BYTES_MAX => {
                    held = Some(q);
                    break;
                }
                Ok(q) => {
                    bytes += q.bytes;
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        // A writer that gave up was answered `Timeout`; its command is not proposed.
        batch.retain(|q| !q.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch, timeout).await;
            drop(permit);
        });
    }
}

/// Proposes one batch as one entry and answers each of its writers.
async fn propose(raft: &Raft<TypeConfig>, batch: Vec<Queued>, timeout: Duration) {
    let n = batch.len();
    metrics::histogram!("orion_raft_proposal_commands").record(n as f64);
    let (mut cmds, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|q| (q.cmd, q.reply)).unzip();
    let cmd = match cmds.pop() {
        Some(only) if cmds.is_empty() => only,
        Some(last) => {
            cmds.push(last);
            Command::Batch { commands: cmds }
        }
        None => return,
    };
    let res = propose_one(raft, cmd, timeout).await;
    match res {
        Ok(Response::Batch(answers)) if n > 1 && answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answer) if n == 1 => {
            for reply in replies {
                let _ = reply.send(Ok(answer.clone()));
            }
        }
        // Applied, but not answered as a batch of n: a programmer error; the commands were
        // committed, so their outcome is unknown to the writers, never "not proposed".
        Ok(other) => {
            tracing::error!(commands = n, answer = ?other, "a batch was answered out of shape");
            for reply in replies {
                let _ = reply.send(Err(ForwardError::Other(format!(
                    "a batch of {n} commands was answered out of shape"
                ))));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// One `client_write` within `timeout`, its failure mapped to the forward protocol's.
pub(crate) async fn propose_one(
    raft: &Raft<TypeConfig>,
    cmd: Command,
    timeout: Duration,
) -> Result<Response, ForwardError> {
    match tokio::time::timeout(timeout, raft.client_write(Arc::new(cmd))).await {
        Err(_) => Err(ForwardError::Timeout {
            ms: timeout.as_millis() as u64,
        }),
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ForwardError::Other(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(_))) => Err(ForwardError::Shutdown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_count_is_the_json_length() {
        let cmd = Command::DeleteTask {
            task_id: "t1".into(),
            at: 7,
        };
        assert_eq!(json_bytes(&cmd), serde_json::to_vec(&cmd).unwrap().len());
    }
}

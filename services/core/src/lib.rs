//! Herald core: everything the api, packer and sender share.
//!
//! The campaign lifecycle (`lifecycle`, `transitions`), why a recipient failed or was skipped
//! (`reason`), which failed ones a retry re-opens (`retry`), the bus contracts
//! (`contracts`), the JetStream layout (`bus`), the outbox relay (`outbox`), the
//! recipient ledger (`ledger`), and the consumer loops that every worker runs
//! (`work`, `control`, on the self-healing pulls of `pull`), and the replicas'
//! heartbeats and control acks (`presence`). Tenants' suppression lists
//! live in `suppressions`; A/B/n tests (variants, assignment, the decision) in
//! `ab`. Postgres is the source of truth; NATS only distributes.

pub mod ab;
pub mod address;
pub mod auth;
pub mod auto_pause;
pub mod bus;
pub mod campaigns;
pub mod channel;
pub mod channels;
pub mod claim_gate;
pub mod config;
pub mod contracts;
pub mod control;
pub mod db;
pub mod halt;
pub mod installation;
pub mod lifecycle;
pub mod outbox;
pub mod presence;
pub mod pull;
pub mod reason;
pub mod receipts;
pub mod retry;
pub mod send_window;
pub mod subjects;
pub mod suppressions;
pub mod telemetry;
pub mod template;
pub mod transitions;
pub mod work;

pub use tokio_util::sync::CancellationToken;

/// Cancels `target` once `trigger` is cancelled (a process's shutdown ending a
/// component's own token). The forwarding task ends as soon as either token is
/// cancelled, so it never outlives `target`. Needs a Tokio runtime.
pub fn cancel_on(target: &CancellationToken, trigger: CancellationToken) {
    let target = target.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = trigger.cancelled() => target.cancel(),
            _ = target.cancelled() => {}
        }
    });
}

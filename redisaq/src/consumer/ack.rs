//! Acknowledgements, coalesced: whatever arrived while the previous pipeline was in
//! flight (and, when that is little, within the next millisecond) goes out together, one
//! fenced `XACK` per partition with all its ids. An ack
//! into a partition whose lease this consumer lost is refused: the consumer stops work
//! on that partition at once, and whoever owns it next runs those jobs again as a new
//! attempt (at-least-once).

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::partitions::Tenure;
use super::Shared;
use crate::keys;
use crate::store::acks::{Acks, Outcome};

/// Most ids sent in one round trip.
const MAX_PER_FLUSH: usize = 2048;
/// Fewer acks than this wait up to [`LINGER`] for more before they are sent.
const ENOUGH: usize = 256;
/// How long an ack may wait for others to go with.
const LINGER: Duration = Duration::from_millis(1);

/// A request to the acknowledger.
#[derive(Debug)]
pub(crate) enum Ack {
    /// Acknowledge this entry, delivered in this holding of its partition.
    Entry { tenure: Tenure, id: String },
    /// Answer once everything sent before is flushed.
    Flush(oneshot::Sender<()>),
}

/// Who acknowledges: the consumer, for fencing.
pub(crate) struct Acker {
    pub acks: Acks,
    pub shared: Arc<Shared>,
}

impl Acker {
    /// Acknowledges until `stop` is cancelled and everything sent before is flushed.
    pub(crate) async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Ack>,
        stop: CancellationToken,
    ) {
        loop {
            // Requests already sent go out before the stop is noticed.
            let first = tokio::select! {
                biased;
                request = requests.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
                () = stop.cancelled() => return,
            };
            let mut by_partition: BTreeMap<Tenure, Vec<String>> = BTreeMap::new();
            let mut waiting = Vec::new();
            let mut count = 0;
            let mut next = Some(first);
            let linger_until = Instant::now() + LINGER;
            while let Some(request) = next.take() {
                match request {
                    Ack::Entry { tenure, id } => {
                        by_partition.entry(tenure).or_default().push(id);
                        count += 1;
                    }
                    Ack::Flush(reply) => waiting.push(reply),
                }
                if count >= MAX_PER_FLUSH {
                    break;
                }
                next = match requests.try_recv() {
                    Ok(request) => Some(request),
                    // A few acks wait a moment for more: one fenced call then carries
                    // many, which is what Redis spends least on. Not when a flush is
                    // asked for (a hand-over or a stop waits on it).
                    Err(TryRecvError::Empty) if count < ENOUGH && waiting.is_empty() => {
                        tokio::time::timeout_at(linger_until, requests.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                    Err(_) => None,
                };
            }
            if count > 0 {
                self.flush(&by_partition).await;
            }
            for reply in waiting {
                let _ = reply.send(());
            }
        }
    }

    /// Sends the acks, retrying what did not land (a dropped connection, a Redis that
    /// is loading, busy or failing over) for a while. A refused ack (the lease is not
    /// ours) stops that holding. Acks that still did not land stop their holding too:
    /// taking the partition anew claims those jobs and runs them again, so nothing stays
    /// pending unseen under a live consumer.
    async fn flush(&mut self, by_partition: &BTreeMap<Tenure, Vec<String>>) {
        let shared = self.shared.clone();
        let mut left: Vec<(Tenure, &Vec<String>)> =
            by_partition.iter().map(|(t, ids)| (*t, ids)).collect();
        for (attempt, delay) in (1..=10).zip(crate::retry::quick()) {
            let batches: Vec<_> = left
                .iter()
                .map(|(tenure, ids)| (shared.holding(*tenure), ids.as_slice()))
                .collect();
            // The leases of what is held now: the next flush's, likely.
            let keep: Vec<String> = shared
                .held
                .tenures()
                .iter()
                .map(|t| keys::lease(&shared.topic, t.partition, shared.group))
                .collect();
            match self.acks.send(&batches, &keep).await {
                Ok(outcomes) => {
                    let mut again = Vec::new();
                    for ((tenure, ids), outcome) in left.into_iter().zip(outcomes) {
                        match outcome {
                            Outcome::Taken => {}
                            Outcome::Refused => {
                                // These jobs ran: the next owner's run is a new attempt.
                                shared.held.ran_unacked(tenure.partition, ids);
                                shared.lease_lost(
                                    tenure,
                                    "its acknowledgements were refused (the lease is not ours)",
                                );
                            }
                            Outcome::Failed(e) => {
                                tracing::warn!(
                                    partition = tenure.partition, count = ids.len(), error = %e,
                                    attempt, "acknowledgements not taken; retrying"
                                );
                                again.push((tenure, ids));
                            }
                        }
                    }
                    left = again;
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "acknowledging jobs failed; retrying");
                }
            }
            if left.is_empty() {
                return;
            }
            tokio::time::sleep(delay).await;
        }
        for (tenure, ids) in left {
            shared.held.ran_unacked(tenure.partition, ids);
            shared.lease_lost(
                tenure,
                &format!(
                    "{} acknowledgement(s) could not be sent; the partition is taken anew and \
                     those jobs run again",
                    ids.len()
                ),
            );
        }
    }
}

//! Retries wait in Redis, not in the worker: a failed job's entry stays pending and the
//! partition's due record says when it runs again ([`crate::store::due`]). The execute step
//! [`defer`]s it; the fetch loop of whoever holds the partition when it is due claims it
//! ([`claim_due`]) before reading new entries, as far as there is room.

use std::time::Duration;

use super::partitions::Tenure;
use super::{clock, Delivery, Shared};
use crate::store::due;
use crate::store::lease;

/// Records that the delivery's job runs again after `delay`. If that cannot be written,
/// the partition is taken anew, whose claim runs the job again at once rather than
/// never.
pub(crate) async fn defer(shared: &Shared, delivery: &Delivery, delay: Duration) {
    let holding = shared.holding(delivery.tenure);
    for wait in crate::retry::quick().take(8) {
        let deferred = due::defer(
            &mut shared.conn.clone(),
            &holding,
            &delivery.entry_id,
            delay,
            shared.script_flags,
        )
        .await;
        match deferred {
            Ok(()) => {
                shared.held.due_at(delivery.tenure, clock::now() + delay);
                return;
            }
            Err(crate::Error::Redis(e)) if lease::is_fenced(&e) => {
                tracing::debug!(entry = %delivery.entry_id, "partition moved; its new owner retries the job");
                return;
            }
            Err(e) => {
                tracing::warn!(entry = %delivery.entry_id, error = %e, "recording the retry failed; trying again");
                tokio::time::sleep(wait).await;
            }
        }
    }
    shared.lease_lost(
        delivery.tenure,
        "a retry could not be recorded; taking the partition anew runs the job again",
    );
}

/// Claims and queues up to `room` entries of `tenure` that are due; returns how many.
pub(crate) async fn claim_due(shared: &Shared, tenure: Tenure, room: usize) -> usize {
    let taken = due::take(
        &mut shared.conn.clone(),
        &shared.holding(tenure),
        &shared.consumer,
        room,
    )
    .await;
    let taken = match taken {
        Ok(taken) => taken,
        Err(crate::Error::Redis(e)) if lease::is_fenced(&e) => {
            shared.lease_lost(tenure, "claiming its due retries was refused");
            return 0;
        }
        Err(e) => {
            // The claim may have happened with its reply lost: taking the partition
            // anew claims whatever is pending here.
            shared.lease_lost(tenure, &format!("claiming its due retries failed ({e})"));
            return 0;
        }
    };
    shared
        .held
        .set_next_due(tenure, taken.next.map(|wait| clock::now() + wait));
    for id in &taken.gone {
        shared.metrics.lost.inc();
        tracing::error!(
            partition = tenure.partition,
            entry = %id,
            "entry {id} was deleted from the stream while it waited for its retry (XDEL, or \
             trimming by someone else); its job cannot run"
        );
    }
    let count = taken.entries.len();
    for (entry, attempt) in taken.entries {
        let delivery = Delivery::new(shared, tenure, entry, attempt);
        if shared.deliveries.send(delivery).await.is_err() {
            break;
        }
    }
    count
}

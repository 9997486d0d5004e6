//! Taking over what others left in a partition this consumer owns: pending entries of
//! other consumers (a dead one, or the previous owner's unstarted jobs) are claimed,
//! fenced by the lease, and queued here; consumers without a heartbeat and without
//! pending entries are removed from the Redis group.

use std::collections::BTreeMap;

use super::{Delivery, Shared};
use crate::error::Error;
use crate::keys;
use crate::store::{self, group::Removal, lease, stream};
use crate::wire;

/// Most entries claimed in one round trip.
const CLAIM_PAGE: usize = 100;

/// Who left the entries to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Orphans {
    /// Other consumers: a dead one, a previous owner, a paused one that lost the lease.
    OfOthers,
    /// Also this consumer's own, when it (re)acquires the partition: entries whose ack
    /// was refused or whose delivery was dropped while the partition was not ours.
    All,
    /// Only this consumer's own entries after this id: what a read whose reply was lost
    /// delivered to it (Redis counted them delivered; nobody here saw them).
    OwnAfter(String),
}

/// Claims the pending entries of `partition` that `whose` says were left behind, and
/// queues them here. Returns how many were queued.
pub(crate) async fn claim_orphans(
    shared: &Shared,
    partition: u32,
    whose: Orphans,
) -> Result<usize, Error> {
    let Some(tenure) = shared.held.tenure(partition) else {
        return Ok(0); // not ours (any more)
    };
    let holding = shared.holding(tenure);
    let mut conn = shared.conn.clone();
    if whose == Orphans::OfOthers {
        // Cheap check first: usually nobody else holds anything here.
        let by_consumer =
            stream::pending_by_consumer(&mut conn, &holding.stream, shared.group).await?;
        if by_consumer.iter().all(|(name, _)| *name == shared.consumer) {
            return Ok(0);
        }
    }
    // A consumer that handed the partition over ran nothing it left here to the end.
    let handed = match whose {
        Orphans::OwnAfter(_) => None,
        _ => {
            let key = keys::handed_over(&shared.topic, partition, shared.group);
            lease::handed_over(&mut conn, &key).await?
        }
    };
    let mut queued = 0;
    let mut start = match &whose {
        Orphans::OwnAfter(floor) => wire::next_stream_id(floor).unwrap_or_else(|| floor.clone()),
        _ => "-".to_string(),
    };
    loop {
        // Claim no more than the delivery queue has room for: what a worker holds stays
        // bounded however much is left behind.
        let room = tokio::select! {
            permit = shared.deliveries.reserve() => match permit {
                Ok(permit) => { drop(permit); shared.deliveries.capacity().clamp(1, CLAIM_PAGE) }
                Err(_) => return Ok(queued),
            },
            () = shared.shutdown.cancelled() => return Ok(queued),
        };
        let page =
            stream::pending_page(&mut conn, &holding.stream, shared.group, &start, room).await?;
        let Some(last) = page.last() else { break };
        start = wire::next_stream_id(&last.id).unwrap_or_else(|| last.id.clone());
        // Entries of a consumer that crashed or lost the partition were delivered there:
        // the next run is a new attempt. Those of the one that handed it over, and our
        // own leftovers, may never have started, so they keep their count, unless we
        // know they ran. The claim itself skips entries waiting for a retry
        // (they run when due) and whatever changed hands since this page was read.
        let mut batches: BTreeMap<Option<u64>, Vec<&wire::Pending>> = BTreeMap::new();
        for pending in &page {
            if let Orphans::OwnAfter(_) = whose {
                if pending.consumer == shared.consumer {
                    batches
                        .entry(Some(pending.deliveries))
                        .or_default()
                        .push(pending);
                }
            } else if pending.consumer != shared.consumer {
                let unrun = handed.as_deref() == Some(pending.consumer.as_str());
                batches
                    .entry(unrun.then_some(pending.deliveries))
                    .or_default()
                    .push(pending);
            } else if whose == Orphans::All && shared.held.take_ran_unacked(partition, &pending.id)
            {
                // It ran here and its ack was refused: this is a new attempt.
                batches.entry(None).or_default().push(pending);
            } else if whose == Orphans::All {
                batches
                    .entry(Some(pending.deliveries))
                    .or_default()
                    .push(pending);
            }
        }
        for (keep_count, batch) in batches {
            let claimed =
                stream::claim(&mut conn, &holding, &shared.consumer, &batch, keep_count).await?;
            for id in &claimed.gone {
                shared.metrics.lost.inc();
                tracing::error!(
                    partition,
                    entry = %id,
                    "entry {id} was deleted from the stream while pending (XDEL, or trimming \
                     by someone else); its job cannot run"
                );
            }
            for entry in claimed.entries {
                let previous = batch.iter().find(|p| p.id == entry.id);
                let deliveries = previous.map_or(1, |p| p.deliveries);
                let attempt = match keep_count {
                    Some(count) => count.max(1),
                    None => deliveries + 1,
                };
                tracing::info!(
                    partition, entry = %entry.id,
                    from = previous.map_or("", |p| p.consumer.as_str()),
                    "Consumer {} took over pending job", shared.consumer
                );
                let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
                if let Orphans::OwnAfter(_) = whose {
                    shared.held.advance_floor(tenure, &entry.id);
                }
                let delivery = Delivery::new(shared, tenure, entry, attempt);
                tokio::select! {
                    sent = shared.deliveries.send(delivery) => if sent.is_err() { return Ok(queued) },
                    () = shared.shutdown.cancelled() => return Ok(queued),
                }
                queued += 1;
            }
        }
        if page.len() < room {
            break;
        }
    }
    if whose == Orphans::All {
        shared.held.forget_ran_unacked(partition); // what is not pending any more
    }
    Ok(queued)
}

/// Removes from the group, on this partition, consumers that are not alive and hold
/// nothing (DELCONSUMER would drop pending entries, so only those without).
pub(crate) async fn remove_dead(
    shared: &Shared,
    partition: u32,
    live: &[String],
) -> Result<(), Error> {
    let stream = keys::partition(&shared.topic, partition);
    let mut conn = shared.conn.clone();
    for wire::ConsumerRow { name, pending, .. } in
        stream::consumers(&mut conn, &stream, shared.group).await?
    {
        if pending > 0 || name == shared.consumer || live.contains(&name) {
            continue;
        }
        // Checked again in the same step as the delete: it may have read meanwhile.
        let removal =
            store::group::remove_consumer_if_idle(&mut conn, &stream, shared.group, &name).await?;
        if removal == Removal::Removed {
            tracing::info!(partition, dead = %name, "Consumer {} removed dead consumer {name} from the group", shared.consumer);
        }
    }
    Ok(())
}

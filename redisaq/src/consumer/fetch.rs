//! Reading new entries: one blocking `XREADGROUP` over the partitions this consumer owns
//! (with a lease surely still valid), on a connection of its own, sized to the room the
//! executor has, so nothing is fetched that cannot start soon. On a Redis Cluster, where
//! one command reads one slot, [`super::readers`] reads each partition on its own.

use crate::store::conn::Conn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::partitions::Tenure;
use super::retries;
use super::takeover::{self, Orphans};
use super::{Delivery, Shared};
use crate::error::Error;
use crate::keys;
use crate::store;
use crate::store::stream;
use crate::wire;

/// Most entries asked for in one read.
const MAX_READ: usize = 1000;

pub(crate) async fn run(shared: Arc<Shared>, target: &store::conn::Target) -> Result<(), Error> {
    if target.server().await?.cluster {
        return super::readers::run(shared, target).await;
    }
    let mut conn = target
        .connect(shared.config.block + Duration::from_secs(5), 6)
        .await?;
    let mut failures = 0u32;
    // Holdings with entries delivered here but not queued: a read whose reply was lost
    // in transit, or one that brought more than there was room for. They would stay
    // pending here unseen; they are claimed back before the partition is read again.
    let mut lost_read: Vec<Tenure> = Vec::new();
    // Where the next read over more partitions than free slots starts.
    let mut turn = 0;
    // What the last read brought: queued while the next read is on its way.
    let mut ready = Ready::default();
    loop {
        if !lost_read.is_empty() {
            // Claimed back after what was read before it, in order.
            if !ready.queue(&shared) {
                return Ok(());
            }
            for tenure in std::mem::take(&mut lost_read) {
                recover_lost_read(&shared, tenure).await;
            }
        }
        let partitions = shared.held.fetchable();
        if partitions.is_empty() || *shared.paused.borrow() {
            if !ready.queue(&shared) || !shared.unpaused().await {
                return Ok(());
            }
            if partitions.is_empty() {
                tokio::select! {
                    () = shared.ownership_changed.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = shared.shutdown.cancelled() => return Ok(()),
                }
            }
            continue;
        }
        // Never block past the point where a lease might have run out, nor past the next
        // retry that waits in Redis.
        let due_in = due_in(&shared, &partitions);
        let block_ms = block_ms(&shared, &partitions).min(due_in.as_millis().max(1) as u64);
        // Wait for room: half the delivery queue free, so that reads stay large (each
        // costs Redis a fixed part besides its entries) while what is queued (and what
        // the last read brought) keeps the executor busy. (A quarter measured more Redis
        // CPU per job, and batches slower.)
        let refill = (shared.deliveries.max_capacity() / 2).max(1);
        if shared.deliveries.capacity() < refill {
            if !ready.queue(&shared) {
                return Ok(());
            }
            tokio::select! {
                permit = shared.deliveries.reserve_many(refill) => if permit.is_err() { return Ok(()) },
                () = shared.shutdown.cancelled() => return Ok(()),
            }
        }
        let mut room = shared.deliveries.capacity().min(MAX_READ);
        // Retries that are due come first.
        if due_in.is_zero() {
            if !ready.queue(&shared) {
                return Ok(());
            }
            room = claim_due_retries(&shared, &partitions, room).await;
        }
        if room == 0 {
            continue;
        }
        let reply = {
            let mut read = std::pin::pin!(read_for_room(
                &shared,
                &mut conn,
                &partitions,
                room,
                block_ms,
                &mut turn
            ));
            // Hand the read to the connection, then queue what the last one brought while
            // Redis answers.
            let first = futures_util::poll!(read.as_mut());
            if !ready.queue(&shared) {
                return Ok(());
            }
            match first {
                std::task::Poll::Ready(reply) => reply,
                std::task::Poll::Pending => tokio::select! {
                    reply = read => reply,
                    () = shared.shutdown.cancelled() => return Ok(()),
                },
            }
        };
        let entries = match reply {
            Ok(entries) => {
                failures = 0;
                entries
            }
            Err(Error::Redis(e)) if e.code() == Some("NOGROUP") => {
                group_lost(&shared, &partitions, &mut failures).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(topic = %shared.topic, error = %e, "reading jobs failed; retrying");
                // Unless Redis answered with an error, it may have delivered entries.
                if !matches!(&e, Error::Redis(e) if matches!(e.kind(), redis::ErrorKind::Server(_)))
                {
                    lost_read = partitions;
                }
                pause(&shared, &mut failures).await;
                continue;
            }
        };
        // Queue no more than there is room for. What a read delivered beyond that (only a
        // blocking read over more partitions than free slots can) stays pending here and
        // is claimed back, in order, before that partition is read again.
        let mut left = room;
        for (stream, mut entries) in entries {
            let Some(tenure) = keys::partition_of(&shared.topic, &stream)
                .and_then(|p| partitions.iter().find(|t| t.partition == p).copied())
            else {
                continue;
            };
            if !shared.held.is_current(tenure) {
                // The partition moved, or was taken anew, while the read was on its way:
                // what it delivered is pending here. If it is ours again, those entries
                // are claimed back; if not, its holder claims them.
                if let Some(now) = shared.held.tenure(tenure.partition) {
                    lost_read.push(now);
                }
                continue;
            }
            let take = entries.len().min(left);
            left -= take;
            if take < entries.len() {
                lost_read.push(tenure);
            }
            entries.truncate(take);
            ready.batches.push((tenure, entries));
        }
        // Its places in the delivery queue, taken before the next read asks for room.
        // (A takeover's claim may have queued entries while the read was on its way:
        // then this waits for the executor to make room.)
        let brought = ready.batches.iter().map(|(_, entries)| entries.len()).sum();
        if brought > 0 {
            tokio::select! {
                places = shared.deliveries.reserve_many(brought) => match places {
                    Ok(places) => ready.places = places.collect(),
                    Err(_) => return Ok(()),
                },
                () = shared.shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// What a read brought, with the places in the delivery queue taken for it.
#[derive(Default)]
struct Ready<'a> {
    batches: Vec<(Tenure, Vec<wire::StreamEntry>)>,
    places: Vec<mpsc::Permit<'a, Delivery>>,
}

impl Ready<'_> {
    /// Queues it all, noting how far each holding has read; false once the executor is
    /// gone (shutting down).
    fn queue(&mut self, shared: &Shared) -> bool {
        let mut places = self.places.drain(..);
        for (tenure, entries) in self.batches.drain(..) {
            if let Some(last) = entries.last() {
                shared.held.advance_floor(tenure, &last.id);
            }
            for entry in entries {
                let place = places
                    .next()
                    .expect("a place was taken for every entry read");
                place.send(Delivery::new(shared, tenure, entry, 1));
            }
        }
        !shared.deliveries.is_closed()
    }
}

/// How long a read of `partitions` may block: the block time, but never past the point
/// where one of their leases might have run out.
pub(super) fn block_ms(shared: &Shared, partitions: &[Tenure]) -> u64 {
    let lease_left = shared
        .held
        .valid_until(partitions)
        .map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(super::clock::now())
        });
    shared.config.block.min(lease_left).as_millis().max(1) as u64
}

/// How long until the next retry of `partitions` that waits in Redis is due (the block
/// time when none waits).
pub(super) fn due_in(shared: &Shared, partitions: &[Tenure]) -> Duration {
    shared
        .held
        .next_due(partitions)
        .map_or(shared.config.block, |due| {
            due.saturating_duration_since(super::clock::now())
        })
}

/// Claims the retries of `partitions` that are due, up to `room`; returns the room left.
pub(super) async fn claim_due_retries(
    shared: &Shared,
    partitions: &[Tenure],
    mut room: usize,
) -> usize {
    for &tenure in partitions {
        if room > 0
            && shared
                .held
                .next_due(&[tenure])
                .is_some_and(|due| due <= super::clock::now())
        {
            room -= retries::claim_due(shared, tenure, room).await;
        }
    }
    room
}

/// Queues entries read from a holding, once there are places for them all, as
/// [`Ready::queue`] does; false once the executor is gone (shutting down).
pub(super) async fn queue(
    shared: &Shared,
    tenure: Tenure,
    entries: Vec<wire::StreamEntry>,
) -> bool {
    if entries.is_empty() {
        return true;
    }
    let Ok(places) = shared.deliveries.reserve_many(entries.len()).await else {
        return false;
    };
    Ready {
        batches: vec![(tenure, entries)],
        places: places.collect(),
    }
    .queue(shared)
}

/// Redis lost the group (restarted without persistence, or someone deleted it), and with
/// it surely our leases: stop until they are taken anew, make the group again and go on.
pub(super) async fn group_lost(shared: &Shared, partitions: &[Tenure], failures: &mut u32) {
    tracing::warn!(topic = %shared.topic, group = shared.group, "consumer group is gone; creating it again");
    for &tenure in partitions {
        shared.lease_lost(tenure, "Redis lost the consumer group");
    }
    let mut conn = shared.conn.clone();
    if let Err(e) = crate::store::group::create_on_partitions(
        &mut conn,
        &shared.topic,
        shared.group,
        shared.known_partitions(),
    )
    .await
    {
        tracing::warn!(error = %e, "could not create the consumer group");
        pause(shared, failures).await;
    }
}

/// Reads new entries of `partitions`, asking for no more than `room` in all (`COUNT` is
/// per stream). With fewer free slots than partitions, it asks `room` partitions at a
/// time, in turns so that none is starved, without blocking; only when none has
/// anything does it block on all of them, for one entry each.
async fn read_for_room(
    shared: &Shared,
    conn: &mut Conn,
    partitions: &[Tenure],
    room: usize,
    block_ms: u64,
    turn: &mut usize,
) -> Result<Vec<(String, Vec<wire::StreamEntry>)>, Error> {
    let n = partitions.len();
    if room >= n {
        return read(shared, conn, partitions, room / n, Some(block_ms)).await;
    }
    for _ in 0..n.div_ceil(room) {
        let window: Vec<Tenure> = (0..room).map(|i| partitions[(*turn + i) % n]).collect();
        *turn = (*turn + room) % n;
        let entries = read(shared, conn, &window, 1, None).await?;
        if !entries.is_empty() {
            return Ok(entries);
        }
    }
    read(shared, conn, partitions, 1, Some(block_ms)).await
}

/// One read of new entries, up to `count` per partition.
async fn read(
    shared: &Shared,
    conn: &mut Conn,
    partitions: &[Tenure],
    count: usize,
    block_ms: Option<u64>,
) -> Result<Vec<(String, Vec<wire::StreamEntry>)>, Error> {
    let streams: Vec<String> = partitions
        .iter()
        .map(|t| keys::partition(&shared.topic, t.partition))
        .collect();
    stream::read(
        conn,
        shared.group,
        &shared.consumer,
        &streams,
        count,
        block_ms,
    )
    .await
}

/// Claims (to this consumer, keeping their delivery count) and queues what a read whose
/// reply was lost delivered: the holding's pending entries after the last one it saw.
/// If that fails too, the partition is taken anew, which claims everything left there.
pub(super) async fn recover_lost_read(shared: &Shared, tenure: Tenure) {
    let Some(floor) = shared.held.read_floor(tenure) else {
        return; // not held any more: its next holder claims what is there
    };
    let recovered =
        takeover::claim_orphans(shared, tenure.partition, Orphans::OwnAfter(floor)).await;
    match recovered {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            partition = tenure.partition,
            "recovered {n} job(s) delivered by a read whose reply was lost"
        ),
        Err(e) => shared.lease_lost(
            tenure,
            &format!("could not recover what a lost read delivered ({e})"),
        ),
    }
}

/// Backs off after a failed read, longer the more reads failed in a row.
pub(super) async fn pause(shared: &Shared, failures: &mut u32) {
    *failures += 1;
    let delay = Duration::from_millis(100 * 2u64.pow((*failures).min(5)));
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shared.shutdown.cancelled() => {}
    }
}

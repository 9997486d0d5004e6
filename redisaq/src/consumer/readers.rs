//! Reading new entries on a Redis Cluster, where one command reads one slot: one
//! blocking `XREADGROUP` per owned partition, each on a connection of its own (a blocked
//! command holds up whatever else waits on its connection), kept in flight across turns
//! of the loop. A partition's reads start when its lease is taken and end with it.
//!
//! What is in flight never asks for more than the delivery queue has room for, so a
//! worker holds no more than on one node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::fetch::{
    block_ms, claim_due_retries, due_in, group_lost, pause, queue, recover_lost_read,
};
use super::partitions::Tenure;
use super::Shared;
use crate::error::Error;
use crate::keys;
use crate::store::conn::{Conn, Target};
use crate::store::stream;
use crate::wire::StreamEntry;

/// Most entries one read asks for.
const MAX_READ: usize = 1000;

/// A finished read of one partition.
struct Read {
    tenure: Tenure,
    entries: Result<Vec<(String, Vec<StreamEntry>)>, Error>,
}

pub(crate) async fn run(shared: Arc<Shared>, target: &Target) -> Result<(), Error> {
    let response_timeout = shared.config.block + Duration::from_secs(5);
    let mut conns: HashMap<u32, Conn> = HashMap::new();
    let mut in_flight = FuturesUnordered::new();
    let mut reading: BTreeMap<Tenure, usize> = BTreeMap::new();
    let mut lost_read: Vec<Tenure> = Vec::new();
    let mut failures = 0u32;
    let mut paused = shared.paused.subscribe();
    loop {
        // What a read delivered unseen is claimed back once no read of that partition is
        // in flight (one would deliver what the claim also takes).
        for tenure in std::mem::take(&mut lost_read) {
            if reading.keys().any(|t| t.partition == tenure.partition) {
                lost_read.push(tenure);
            } else if let Some(now) = shared.held.tenure(tenure.partition) {
                recover_lost_read(&shared, now).await;
            }
        }
        let partitions = shared.held.fetchable();
        conns.retain(|partition, _| partitions.iter().any(|t| t.partition == *partition));
        let asked: usize = reading.values().sum();
        let mut room = shared.deliveries.capacity().saturating_sub(asked);
        // Paused: no new reads or claims; the reads in flight finish.
        let is_paused = *paused.borrow_and_update();
        if is_paused {
            room = 0;
        }
        room = claim_due_retries(&shared, &partitions, room).await;
        let idle: Vec<Tenure> = partitions
            .iter()
            .copied()
            .filter(|t| {
                !reading.contains_key(t) && !lost_read.iter().any(|l| l.partition == t.partition)
            })
            .collect();
        for (i, &tenure) in idle.iter().enumerate() {
            if room == 0 {
                break;
            }
            let count = (room / (idle.len() - i)).clamp(1, MAX_READ);
            room -= count;
            let conn = match conns.get(&tenure.partition) {
                Some(conn) => conn.clone(),
                None => {
                    let conn = target.connect(response_timeout, 6).await?;
                    conns.insert(tenure.partition, conn.clone());
                    conn
                }
            };
            reading.insert(tenure, count);
            in_flight.push(read(&shared, conn, tenure, count));
        }
        // Partitions left unread for want of room are read once the executor has freed
        // half the delivery queue beyond what the reads in flight may bring (as on one
        // node: reads stay large).
        let max = shared.deliveries.max_capacity();
        let asked: usize = reading.values().sum();
        let wanted = (asked + (max / 2).max(1)).min(max);
        let starved = !is_paused && asked < max && idle.iter().any(|t| !reading.contains_key(t));
        // Wake for a due retry even while every read blocks.
        // (Not while paused: the due retries wait for the resume, like everything else.)
        let next_due = if is_paused {
            shared.config.block
        } else {
            due_in(&shared, &partitions).max(Duration::from_millis(1))
        };
        let done = tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => done,
            permit = shared.deliveries.reserve_many(wanted), if starved => match permit {
                Ok(permit) => { drop(permit); continue }
                Err(_) => return Ok(()),
            },
            () = shared.ownership_changed.notified() => continue,
            _ = paused.changed() => continue,
            () = tokio::time::sleep(next_due) => continue,
            () = shared.shutdown.cancelled() => return Ok(()),
        };
        let asked = reading.remove(&done.tenure).unwrap_or_default();
        match done.entries {
            Ok(entries) => {
                failures = 0;
                if !shared.held.is_current(done.tenure) {
                    // Moved, or taken anew, while the read was on its way: what it
                    // delivered is pending here. If the partition is ours again, it is
                    // claimed back; if not, its holder claims it.
                    if entries.iter().any(|(_, e)| !e.is_empty()) {
                        lost_read.push(done.tenure);
                    }
                    continue;
                }
                for (_, entries) in entries {
                    debug_assert!(entries.len() <= asked);
                    if !queue(&shared, done.tenure, entries).await {
                        return Ok(());
                    }
                }
            }
            Err(Error::Redis(e)) if e.code() == Some("NOGROUP") => {
                group_lost(&shared, &[done.tenure], &mut failures).await;
            }
            Err(e) => {
                tracing::warn!(topic = %shared.topic, partition = done.tenure.partition, error = %e, "reading jobs failed; retrying");
                // Unless Redis answered with an error, it may have delivered entries.
                if !matches!(&e, Error::Redis(e) if matches!(e.kind(), redis::ErrorKind::Server(_)))
                {
                    lost_read.push(done.tenure);
                }
                pause(&shared, &mut failures).await;
            }
        }
    }
}

/// One blocking read of one partition, never past the point where its lease might run
/// out.
fn read(
    shared: &Shared,
    mut conn: Conn,
    tenure: Tenure,
    count: usize,
) -> impl std::future::Future<Output = Read> + Send + 'static {
    let stream = keys::partition(&shared.topic, tenure.partition);
    let group = shared.group;
    let consumer = shared.consumer.clone();
    let block_ms = block_ms(shared, &[tenure]);
    async move {
        let entries = stream::read(
            &mut conn,
            group,
            &consumer,
            &[stream],
            count,
            Some(block_ms),
        )
        .await;
        Read { tenure, entries }
    }
}

//! Moving due delayed jobs into their partition streams ([`crate::store::schedule`]): each
//! consumer does it for the partitions it holds, so the work spreads as partitions do.
//!
//! It sleeps until the next due time it knows of. It learns them from each move (the
//! script answers when the next one is due), from the hint an enqueue sends when its job
//! becomes a partition's next, and by checking a partition when it comes to hold it,
//! whenever its coordinator is told to look again (after the hints' connection came
//! back, say), and once a minute in case a hint was lost. An idle partition so costs
//! Redis one script a minute here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::hints::DelayedDue;
use super::Shared;
use crate::store::schedule;

/// Most jobs moved by one script call: a burst of due jobs moves in slices, so Redis
/// serves others in between.
const SLICE: usize = 500;

/// How often, at most, the set of held partitions is looked at locally (no Redis).
const HELD_CHECK: Duration = Duration::from_millis(250);

/// After a failed move, when to try again.
const RETRY: Duration = Duration::from_secs(1);

/// A partition with nothing known to wait is looked at again this often anyway: a
/// hint lost without the hints' connection noticing (or no pub/sub at all) delays a job
/// by at most this much.
const RECHECK: Duration = Duration::from_secs(60);

/// Runs until the consumer shuts down.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut looks: watch::Receiver<u64>,
    mut hints: watch::Receiver<DelayedDue>,
) {
    // When each held partition is next checked; `None`: nothing known to wait.
    let mut next: HashMap<u32, Option<Instant>> = HashMap::new();
    let mut hints_taken: HashMap<u32, u64> = HashMap::new();
    loop {
        let held: Vec<u32> = shared.held.tenures().iter().map(|t| t.partition).collect();
        next.retain(|partition, _| held.contains(partition));
        let now = Instant::now();
        for &partition in &held {
            next.entry(partition).or_insert(Some(now));
        }
        take_hints(&hints.borrow_and_update(), &mut next, &mut hints_taken);
        for (&partition, due) in next.iter_mut() {
            if due.is_some_and(|at| at <= now) {
                *due = promote(&shared, partition).await;
            }
        }
        // A hint that came while moving may name an earlier time than the move answered.
        take_hints(&hints.borrow_and_update(), &mut next, &mut hints_taken);
        let wake = next
            .values()
            .flatten()
            .min()
            .copied()
            .unwrap_or(now + HELD_CHECK)
            .min(Instant::now() + HELD_CHECK);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            changed = hints.changed() => if changed.is_err() { return },
            changed = looks.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = Instant::now();
                next.values_mut().for_each(|due| *due = Some(now));
            }
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Brings the times the hints name into `next`, each hint once.
fn take_hints(
    hints: &DelayedDue,
    next: &mut HashMap<u32, Option<Instant>>,
    taken: &mut HashMap<u32, u64>,
) {
    for (partition, &(at, hint)) in &hints.by_partition {
        let Some(due) = next.get_mut(partition) else {
            continue; // not held here
        };
        if taken.insert(*partition, hint) != Some(hint) {
            *due = Some(due.map_or(at, |due| due.min(at)));
        }
    }
}

/// Moves what is due in `partition`; answers when to check it next.
async fn promote(shared: &Shared, partition: u32) -> Option<Instant> {
    match schedule::promote(
        &mut shared.conn.clone(),
        &shared.topic,
        partition,
        SLICE,
        shared.script_flags,
    )
    .await
    {
        Ok(promoted) => {
            crate::metrics::METRICS
                .delayed
                .get_or_create(&shared.partition_labels(partition))
                .set(promoted.waiting as i64);
            if promoted.moved > 0 {
                shared.metrics.promoted.inc_by(promoted.moved);
                tracing::debug!(partition, moved = promoted.moved, "delayed jobs are due");
            }
            Some(Instant::now() + promoted.next.map_or(RECHECK, |wait| wait.min(RECHECK)))
        }
        Err(e) => {
            tracing::warn!(partition, error = %e, "moving due delayed jobs failed; retrying");
            Some(Instant::now() + RETRY)
        }
    }
}

//! The consumer's control loop: heartbeat, follow the group's assignment, hand partitions
//! over in two steps, renew leases, take over what others left, trim.
//!
//! Handing a partition from A to B: A sees the new assignment, stops fetching it and
//! starting its jobs ("pausing consumption"), waits for its running jobs and their acks,
//! then releases the lease. B tries to take the lease on every tick; once it is free (or
//! expired, when A died) B claims what is still pending there and starts ("resuming
//! consumption"); it claims again once a read A sent before letting go has surely
//! returned. Partitions that keep their owner are never paused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ack::Ack;
use super::assignment::{self, Assignment};
use super::clock;
use super::partitions::{self, Phase};
use super::takeover::{self, Orphans};
use super::{membership, Shared};
use crate::error::Error;
use crate::keys;
use crate::metrics::METRICS;
use crate::store::topic;
use crate::store::{self, lease, stream};
use crate::wire;

/// The last known state of the group, as this consumer saw it.
#[derive(Default)]
struct View {
    live: Vec<String>,
    assignment: Assignment,
    maxlen: u64,
    /// Whether the tools were told about partitions this consumer cannot hand over.
    stuck_reported: bool,
    /// When the first live member's record runs out unless renewed: a dead consumer is
    /// noticed then, not at the next heartbeat interval.
    next_expiry: Option<Instant>,
    /// What looking after each held partition last found, by partition.
    looked: HashMap<u32, Looked>,
    /// Partitions just taken, to look at again for what the previous holder's last read
    /// brought it (see [`recheck`]), and when.
    rechecks: Vec<(partitions::Tenure, Instant)>,
}

/// What looking after a partition last did, in one holding of it.
#[derive(Default)]
struct Looked {
    tenure: u64,
    /// The group's read position when the partition was last trimmed.
    trimmed_at: Option<String>,
    /// The live members and the group's consumer count when the dead were last removed.
    cleaned_for: Option<(Vec<String>, u64)>,
    /// The consumer's activity count when a look last found nothing to do here (nothing
    /// pending, nothing to trim): until jobs come or members change, looking again would
    /// find the same.
    quiet_at: Option<u64>,
    /// Intervals this partition was not looked at since its last look.
    skipped: u32,
}

/// Looks at the group every tick while partitions are on the move here. Once this
/// consumer owns exactly its share, it reads the group only when the topic's change hint
/// moves (someone wrote an assignment, left, raised partitions or paused), when the
/// keeper's heartbeat finds other members than it knows, when a member's record runs out
/// unrenewed (it died), when this consumer lost a lease, and once in [`LOOK_EVERY`]
/// intervals in case a hint was lost. Every interval it looks after the partitions it
/// holds. An idle consumer so costs Redis a few commands per interval, not per tick.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut hints: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let interval = shared.config.heartbeat_interval;
    let tick = tick(&shared.config);
    let mut members = shared.members.subscribe();
    let mut view = View::default();
    let mut next_heartbeat = Instant::now();
    let mut next_full_look = Instant::now();
    let mut hinting = true;
    let mut watching = true;
    let mut settled = false;
    let mut look = true;
    loop {
        recheck(&shared, &mut view.rechecks).await;
        let now = Instant::now();
        let look_now = look || !settled || now >= next_full_look;
        let result = if now >= next_heartbeat {
            next_heartbeat = now + interval;
            Some(maintain(&shared, &mut view, look_now).await)
        } else if look_now {
            Some(follow(&shared, &mut view).await)
        } else {
            None
        };
        if let Some(result) = result {
            if look_now {
                next_full_look = now + interval * LOOK_EVERY;
            }
            settled = result.unwrap_or_else(|e| {
                tracing::warn!(topic = %shared.topic, group = shared.group, error = %e, "coordination step failed; retrying");
                false
            });
        }
        let wake = if settled {
            // Just after the first record runs out, in case its consumer died.
            view.next_expiry
                .map_or(next_heartbeat, |expiry| next_heartbeat.min(expiry + tick))
        } else {
            Instant::now() + tick
        };
        // A recheck alone wakes the loop for itself, not for a look at the group.
        let recheck_at = view.rechecks.iter().map(|(_, at)| *at).min();
        let for_recheck = recheck_at.is_some_and(|at| at < wake);
        let wake = recheck_at.map_or(wake, |at| at.min(wake));
        let hinted = async {
            if hinting {
                hinting = hints.changed().await.is_ok();
            } else {
                std::future::pending::<()>().await;
            }
        };
        let heartbeat = async {
            if watching {
                watching = members.changed().await.is_ok();
            } else {
                std::future::pending::<()>().await;
            }
        };
        look = tokio::select! {
            () = tokio::time::sleep_until(wake) => !for_recheck && wake < next_heartbeat,
            () = hinted => true,
            () = heartbeat => {
                match members.borrow_and_update().clone() {
                    Some(snapshot) => {
                        view.next_expiry = snapshot.next_expiry;
                        snapshot.live != view.live
                    }
                    None => false,
                }
            }
            () = shared.coordinator_wake.notified() => true,
            () = stop.cancelled() => return,
        };
    }
}

/// How long after the previous holder's last read surely returned a taken partition is
/// looked at again.
const RECHECK_MARGIN: Duration = Duration::from_millis(250);

/// Claims what the previous holders of the partitions taken a while ago left after the
/// claim at taking them. A holder's read sent before it let the partition go (a
/// hand-over) or lost it can still deliver entries to it afterwards, up to the block
/// time later; it drops them, and they would wait for the next look after the
/// partition, a heartbeat interval away.
async fn recheck(shared: &Shared, rechecks: &mut Vec<(partitions::Tenure, Instant)>) {
    let now = Instant::now();
    let due: Vec<partitions::Tenure> = rechecks
        .iter()
        .filter(|(_, at)| *at <= now)
        .map(|(tenure, _)| *tenure)
        .collect();
    if due.is_empty() {
        return;
    }
    rechecks.retain(|(_, at)| *at > now);
    for tenure in due {
        if shared.held.tenure(tenure.partition) != Some(tenure) {
            continue; // let go meanwhile
        }
        if let Err(e) = takeover::claim_orphans(shared, tenure.partition, Orphans::OfOthers).await {
            tracing::debug!(partition = tenure.partition, error = %e, "looking again at a partition just taken failed; the next look after it claims what is left");
        }
    }
}

/// A settled consumer reads its group at least once in this many heartbeat intervals.
const LOOK_EVERY: u32 = 12;

/// How often a consumer looks at its group while partitions move.
fn tick(config: &crate::config::Config) -> Duration {
    (config.heartbeat_interval / 4).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

/// Every heartbeat interval: follow the assignment (with `look`), take over, remove the
/// dead, trim. (Liveness and leases are renewed by the keeper, which nothing here can
/// hold up.)
///
/// The partitions held are looked after even when following the assignment failed: on a
/// full Redis the assignment's writes are refused, and trimming is what frees memory.
async fn maintain(shared: &Shared, view: &mut View, look: bool) -> Result<bool, Error> {
    let followed = if look {
        follow(shared, view).await
    } else {
        Ok(true)
    };
    let held = shared.held.held();
    METRICS
        .owned_partitions
        .get_or_create(&shared.metrics.labels)
        .set(held.len() as i64);
    view.looked
        .retain(|partition, _| held.iter().any(|(p, _, _)| p == partition));
    let activity = shared.activity.load(std::sync::atomic::Ordering::Relaxed);
    let paused = *shared.paused.borrow();
    for (partition, phase, _) in held {
        if phase != Phase::Active {
            continue;
        }
        // A quiet partition is looked at again once in a while: the gauges' lag counts
        // entries nobody here has read, and a stale owner may have read some.
        if let Some(looked) = view.looked.get_mut(&partition) {
            let unchanged = looked.quiet_at == Some(activity)
                && !paused
                && shared.held.tenure(partition).map(|t| t.id) == Some(looked.tenure)
                && looked
                    .cleaned_for
                    .as_ref()
                    .is_some_and(|(live, _)| *live == view.live);
            if unchanged && looked.skipped + 1 < LOOK_EVERY {
                looked.skipped += 1;
                continue;
            }
        }
        if let Err(e) = look_after(shared, view, partition, activity).await {
            tracing::warn!(partition, error = %e, "looking after a partition failed; retrying next interval");
        }
    }
    followed
}

/// Gauges; then, where the partition's group row says there may be work: takeover of
/// others' entries (something is pending), removal of the dead (members or consumers
/// changed), trimming (the group read further). A partition costs one read, and none
/// while quiet (see [`maintain`]).
async fn look_after(
    shared: &Shared,
    view: &mut View,
    partition: u32,
    activity: u64,
) -> Result<(), Error> {
    let Some(tenure) = shared.held.tenure(partition) else {
        return Ok(());
    };
    let Some(row) = record_backlog(shared, partition).await? else {
        return Ok(());
    };
    let looked = view.looked.entry(partition).or_default();
    if looked.tenure != tenure.id {
        *looked = Looked {
            tenure: tenure.id,
            ..Looked::default()
        };
    }
    looked.skipped = 0;
    looked.quiet_at = None;
    // Trimming is what frees memory on a full Redis; only the group's reading on can let
    // more go here (other groups' owners trim when they read on). A pass looks at a
    // bounded number of entries, so the position counts as done only once a pass at it
    // found nothing left to trim.
    if view.maxlen > 0 && looked.trimmed_at.as_ref() != Some(&row.last_delivered) {
        let trimmed = crate::store::trim::trim(
            &mut shared.conn.clone(),
            &keys::partition(&shared.topic, partition),
            view.maxlen,
        )
        .await?;
        if trimmed == 0 {
            looked.trimmed_at = Some(row.last_delivered.clone());
        }
    }
    if row.pending > 0 {
        takeover::claim_orphans(shared, partition, Orphans::OfOthers).await?;
    }
    let cleaned_for = (view.live.clone(), row.consumers);
    if looked.cleaned_for.as_ref() != Some(&cleaned_for) {
        takeover::remove_dead(shared, partition, &view.live).await?;
        looked.cleaned_for = Some(cleaned_for);
    }
    let trimmed = view.maxlen == 0 || looked.trimmed_at.as_ref() == Some(&row.last_delivered);
    if row.pending == 0 && trimmed {
        looked.quiet_at = Some(activity);
    }
    Ok(())
}

/// Most entries counted for the lag gauge on servers that do not report lag (6.2).
const LAG_COUNT_6_2: usize = 1000;

/// The lag and pending gauges of an owned partition; the group's row there.
async fn record_backlog(shared: &Shared, partition: u32) -> Result<Option<wire::GroupRow>, Error> {
    let stream = keys::partition(&shared.topic, partition);
    let mut conn = shared.conn.clone();
    let Some(row) = stream::group_info(&mut conn, &stream, shared.group).await? else {
        return Ok(None);
    };
    let labels = shared.partition_labels(partition);
    METRICS
        .pending
        .get_or_create(&labels)
        .set(row.pending as i64);
    let lag = stream::lag(
        &mut conn,
        &stream,
        &row.last_delivered,
        row.lag,
        LAG_COUNT_6_2,
    )
    .await?;
    METRICS.lag.get_or_create(&labels).set(lag as i64);
    Ok(Some(row))
}

/// Reads the group (moving its assignment on if membership or partitions changed) and
/// acts on it. Returns whether all is settled: the assignment fits the group and this
/// consumer owns exactly its share, nothing on the way in or out.
async fn follow(shared: &Shared, view: &mut View) -> Result<bool, Error> {
    let mut conn = shared.conn.clone();
    let mut seen =
        store::view::read(&mut conn, &shared.topic, shared.group, shared.script_flags).await?;
    topic::check_layout(&shared.topic, seen.layout)?;
    shared.set_paused(seen.paused);
    let (partitions, maxlen) = match (seen.partitions, seen.maxlen) {
        (Some(partitions), Some(maxlen)) => (partitions, maxlen),
        // The topic's record is gone (a restart without persistence): write it again.
        _ => {
            let info = topic::ensure(&mut conn, shared.def.spec).await?;
            (info.partitions, info.maxlen)
        }
    };
    view.maxlen = maxlen;
    view.next_expiry = seen.next_expiry.map(|left| Instant::now() + left);
    if !seen.live.contains(&shared.consumer) {
        // Our record expired (we were paused?): come back before anything else.
        seen.live = membership::heartbeat(shared).await?;
    }
    let mut current = seen.assignment;
    if !current.matches(&seen.live, partitions) {
        let written = assignment::advance(
            &mut conn,
            &shared.topic,
            shared.group,
            &current,
            &seen.live,
            partitions,
            shared.script_flags,
        )
        .await?;
        if written {
            announce(shared).await;
        }
        current = assignment::load(&mut conn, &shared.topic, shared.group).await?;
    }
    let fits = current.matches(&seen.live, partitions);
    if current.generation != view.assignment.generation {
        let mine = current.owned_by(&shared.consumer);
        tracing::info!(
            topic = %shared.topic, group = shared.group, generation = current.generation,
            "Consumer {} assigned partitions {:?} (generation {})",
            shared.consumer, mine, current.generation
        );
    }
    view.live = seen.live;
    view.assignment = current;
    let owned = apply(
        shared,
        &view.assignment,
        &mut view.stuck_reported,
        &mut view.rechecks,
        partitions,
    )
    .await?;
    Ok(fits && owned)
}

/// Tells the other consumers of the topic to look at their groups now.
pub(crate) async fn announce(shared: &Shared) {
    if let Err(e) = store::changes::announce(&mut shared.conn.clone(), &shared.topic).await {
        tracing::debug!(error = %e, "could not raise the topic's change hint; the others follow within a heartbeat interval");
    }
}

/// Moves towards owning exactly the assigned partitions; returns whether it does (all
/// of them held, nothing else held).
async fn apply(
    shared: &Shared,
    assignment: &Assignment,
    stuck_reported: &mut bool,
    rechecks: &mut Vec<(partitions::Tenure, Instant)>,
    partitions: u32,
) -> Result<bool, Error> {
    let target = assignment.owned_by(&shared.consumer);
    let held = shared.held.held();
    let pausing: Vec<u32> = held
        .iter()
        .filter(|(p, phase, _)| *phase == Phase::Active && !target.contains(p))
        .map(|(p, _, _)| *p)
        .collect();
    if !pausing.is_empty() {
        tracing::info!(
            generation = assignment.generation,
            "Consumer {} pausing consumption of partitions {:?} (generation {})",
            shared.consumer,
            pausing,
            assignment.generation
        );
        for p in &pausing {
            shared.held.start_release(*p);
        }
    }
    let mut stuck = Vec::new();
    for (partition, phase, running) in shared.held.held() {
        if phase != Phase::Releasing {
            continue;
        }
        if running == 0 {
            METRICS
                .stuck_calls
                .get_or_create(&shared.partition_labels(partition))
                .set(0);
            release(shared, partition).await?;
            continue;
        }
        // A hand-over waits for running calls at most the release deadline; then they
        // are cancelled, and they run again at the new owner. A call that ignores
        // cancellation (blocking code) keeps the partition here until it ends.
        let waited = shared.held.releasing_for(partition).unwrap_or_default();
        if waited >= release_deadline(shared) {
            shared.held.cancel_calls(partition);
            let interval = shared.config.heartbeat_interval;
            if waited >= release_deadline(shared) + interval {
                stuck.push(partition);
            }
            if waited >= release_deadline(shared) + interval
                && shared.held.stuck_report_due(partition, interval)
            {
                METRICS
                    .stuck_calls
                    .get_or_create(&shared.partition_labels(partition))
                    .set(running as i64);
                tracing::error!(
                    partition,
                    running,
                    waited_ms = waited.as_millis() as u64,
                    "Consumer {} cannot hand partition {partition} over: {running} call(s) \
                     ignore cancellation (a handler blocking its thread?)",
                    shared.consumer
                );
            }
        }
    }
    report_stuck(shared, &stuck, stuck_reported).await;
    let mut resumed = Vec::new();
    let ttl = shared.config.heartbeat_ttl;
    for &partition in &target {
        if shared.held.is_held(partition) {
            // Active, or still releasing: a partition is taken anew only once it is gone,
            // so that a new holding never runs beside the calls of the last one.
            continue;
        }
        if partition >= shared.known_partitions() {
            // Whoever raised the count may not have made the other groups there.
            topic::spread_groups(
                &mut shared.conn.clone(),
                &shared.topic,
                shared.known_partitions(),
                partitions,
            )
            .await?;
            crate::store::group::create_on_partitions(
                &mut shared.conn.clone(),
                &shared.topic,
                shared.group,
                partition + 1,
            )
            .await?;
            shared.set_known_partitions(partitions);
        }
        let asked_at = clock::now();
        let Some(epoch) = lease::acquire(
            &mut shared.conn.clone(),
            &keys::lease(&shared.topic, partition, shared.group),
            &keys::epoch(&shared.topic, partition, shared.group),
            &keys::handed_over(&shared.topic, partition, shared.group),
            &shared.consumer,
            ttl,
            shared.script_flags,
        )
        .await?
        else {
            continue; // the previous owner is still finishing; try again next tick
        };
        shared
            .held
            .hold(partition, epoch, partitions::validity(ttl, asked_at));
        if let Err(e) = claim_leftovers(shared, partition).await {
            // What is left there must be claimed before new jobs run: take it again.
            shared.held.drop_partition(partition);
            return Err(e);
        }
        let floor = match delivered_up_to(shared, partition).await {
            Ok(floor) => floor,
            Err(e) => {
                shared.held.drop_partition(partition);
                return Err(e);
            }
        };
        shared.held.claimed(partition, floor);
        if let Some(tenure) = shared.held.tenure(partition) {
            rechecks.push((
                tenure,
                Instant::now() + shared.config.block + RECHECK_MARGIN,
            ));
        }
        resumed.push(partition);
    }
    if !resumed.is_empty() {
        tracing::info!(
            generation = assignment.generation,
            "Consumer {} resuming consumption of partitions {:?} (generation {})",
            shared.consumer,
            resumed,
            assignment.generation
        );
        shared.ownership_changed.notify_one();
    }
    let held = shared.held.held();
    Ok(held.len() == target.len()
        && held
            .iter()
            .all(|(p, phase, _)| *phase == Phase::Active && target.contains(p)))
}

/// Tells the tools which partitions this consumer cannot hand over (calls there ignore
/// cancellation), for as long as that lasts: `redisaq monitor` shows it `STUCK`.
async fn report_stuck(shared: &Shared, stuck: &[u32], reported: &mut bool) {
    let key = keys::stuck(&shared.topic, shared.group, &shared.consumer);
    let marked = if stuck.is_empty() {
        if !std::mem::take(reported) {
            return;
        }
        crate::store::group::mark_stuck(&mut shared.conn.clone(), &key, None).await
    } else {
        *reported = true;
        // Outlives a missed pass, not a crashed consumer.
        let ttl = shared.config.heartbeat_ttl + 2 * shared.config.heartbeat_interval;
        crate::store::group::mark_stuck(&mut shared.conn.clone(), &key, Some((stuck, ttl))).await
    };
    if let Err(e) = marked {
        tracing::debug!(error = %e, "could not record the stuck partitions for the tools");
    }
}

/// How long a hand-over waits for the partition's running calls before it cancels them:
/// one heartbeat TTL, well under any sensible handler timeout.
fn release_deadline(shared: &Shared) -> Duration {
    shared.config.heartbeat_ttl
}

/// The group's last delivered entry id on a partition.
async fn delivered_up_to(shared: &Shared, partition: u32) -> Result<String, Error> {
    let stream = keys::partition(&shared.topic, partition);
    Ok(
        stream::group_info(&mut shared.conn.clone(), &stream, shared.group)
            .await?
            .map_or_else(|| "0-0".to_string(), |g| g.last_delivered),
    )
}

/// Claims what was left pending on a partition just taken, making the group first if
/// Redis lost it (a restart without persistence).
async fn claim_leftovers(shared: &Shared, partition: u32) -> Result<(), Error> {
    match takeover::claim_orphans(shared, partition, Orphans::All).await {
        Err(Error::Redis(e)) if e.code() == Some("NOGROUP") => {
            crate::store::group::create_on_partitions(
                &mut shared.conn.clone(),
                &shared.topic,
                shared.group,
                shared.known_partitions().max(partition + 1),
            )
            .await?;
            takeover::claim_orphans(shared, partition, Orphans::All).await?;
        }
        claimed => {
            claimed?;
        }
    }
    Ok(())
}

/// Second step of a hand-over: once nothing of the partition runs here, flush its acks
/// and free the lease for the next owner.
pub(crate) async fn release(shared: &Shared, partition: u32) -> Result<(), Error> {
    let (flushed, done) = oneshot::channel();
    if shared.acks.send(Ack::Flush(flushed)).is_ok() {
        let _ = done.await;
    }
    let Some(tenure) = shared
        .held
        .tenures()
        .into_iter()
        .find(|t| t.partition == partition)
    else {
        return Ok(());
    };
    let released = lease::release(
        &mut shared.conn.clone(),
        &shared.holding(tenure),
        &keys::handed_over(&shared.topic, partition, shared.group),
        &shared.consumer,
        &shared.held.abandoned_in(tenure),
        shared.script_flags,
    )
    .await?;
    if released {
        shared.held.released(tenure);
    } else {
        shared.held.drop_tenure(tenure); // the lease was gone: nothing was counted
    }
    tracing::info!(
        partition,
        "Consumer {} released partition {partition}",
        shared.consumer
    );
    Ok(())
}

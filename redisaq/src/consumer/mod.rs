//! Running one handler: a consumer in the handler's group on every partition of its topic.
//!
//! A job's way through a consumer, one file each:
//! [`fetch`] reads new entries from the partitions this consumer owns (on a Redis Cluster,
//! [`readers`]: one per partition) → [`execute`]
//! gathers them into calls (one job, or a batch) within the concurrency limit, runs them
//! on [`runners`] and applies each result → [`ack`] acknowledges in coalesced, fenced
//! pipelines, or [`retries`] records when the job runs again (it waits in Redis; the
//! fetch loop of whoever owns the partition then claims it), or `execute` writes a dead
//! letter. Delayed jobs wait beside
//! the stream until the partition's owner moves them in when they are due ([`delayed`]).
//!
//! Which partitions a consumer owns: [`membership`] (heartbeats) → [`assignment`] (who
//! owns what, per generation) → leases ([`crate::store::lease`]: fenced ownership of one
//! partition, held in process in [`partitions`]) → [`takeover`] (claiming what others
//! left) — driven by the [`coordinator`] loop, while the worker's [`keeper`], on a
//! thread of its own, renews the membership and leases of all its consumers at once.

mod ack;
mod assignment;
mod clock;
mod coordinator;
mod cron;
mod delayed;
mod execute;
mod fetch;
pub(crate) mod hints;
pub(crate) mod keeper;
mod membership;
mod partitions;
mod readers;
mod retries;
mod runners;
mod takeover;
mod throttle;

use crate::store::conn::Conn;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::config::Config;
use crate::error::Error;
use crate::job::{JobMeta, RawJob};
use crate::keys;
use crate::registry::HandlerDef;
use crate::retry::Backoff;
use crate::store;
use crate::store::topic;
use crate::wire::{self, StreamEntry, Undecodable};

/// Entries a handler's delivery queue holds beyond one full round of calls
/// (`concurrency × batch`): enough that reads stay large and cheap and that the next read
/// is on its way while the last one's entries run, and a bound on what a worker holds
/// whatever the number of partitions.
pub(crate) const READ_AHEAD: usize = 512;

/// One delivery of an entry to this consumer.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The holding of the partition it was read or claimed in.
    pub tenure: partitions::Tenure,
    pub entry_id: String,
    pub attempt: u32,
    /// The job, or why the entry is not one this version runs.
    pub job: Result<RawJob, Undecodable>,
    /// The job's key, kept in its dead letter so a replay keeps its order.
    pub key: Option<String>,
    /// The one group that runs it (a replay), if not every group.
    pub for_group: Option<String>,
    /// The entry's fields as JSON, kept for a dead letter of an undecodable entry.
    pub raw_fields: Option<String>,
}

impl Delivery {
    fn new(shared: &Shared, tenure: partitions::Tenure, entry: StreamEntry, attempt: u32) -> Self {
        let partition = tenure.partition;
        let (job, key, for_group, raw_fields) = match wire::decode_job(&entry) {
            Ok(envelope) => (
                Ok(RawJob {
                    meta: JobMeta {
                        fencing_token: tenure.id,
                        id: envelope.id,
                        topic: shared.topic.clone(),
                        partition,
                        attempt,
                        enqueued_at_ms: envelope.enqueued_at_ms,
                        trace: envelope.trace,
                    },
                    payload: envelope.payload.into(),
                }),
                envelope.key.map(str::to_string),
                envelope.for_group.map(str::to_string),
                None,
            ),
            Err(reason) => (
                Err(reason),
                entry.field(wire::field::KEY).map(str::to_string),
                None,
                Some(wire::fields_as_json(&entry)),
            ),
        };
        Delivery {
            tenure,
            entry_id: entry.id,
            attempt,
            job,
            key,
            for_group,
            raw_fields,
        }
    }
}

/// What every task of one consumer shares.
pub(crate) struct Shared {
    pub def: &'static HandlerDef,
    pub topic: Arc<str>,
    pub group: &'static str,
    pub consumer: String,
    /// Partitions known to have the group (raised at run time as the topic grows).
    known_partitions: AtomicU32,
    /// Whether the server takes script flags (Redis 7+): scripts that must run on a
    /// full Redis (heartbeats, taking a lease) then say `allow-oom`.
    pub script_flags: bool,
    /// The partitions this consumer holds.
    pub held: partitions::Partitions,
    /// Wakes the fetch loop when it may read from other partitions.
    pub ownership_changed: Notify,
    /// Wakes the coordinator before its next look (a lease was lost).
    pub coordinator_wake: Notify,
    /// Counts the batches of deliveries the executor took in: while it stands still, a
    /// partition the coordinator found quiet stays quiet.
    pub activity: AtomicU64,
    /// The group's members as the keeper's last heartbeat found them.
    pub members: tokio::sync::watch::Sender<Option<membership::Snapshot>>,
    /// Whether the topic or the group is paused: no job starts, nothing is read.
    pub paused: tokio::sync::watch::Sender<bool>,
    /// This handler's metric series.
    pub metrics: crate::metrics::HandlerMetrics,
    pub config: Config,
    /// For commands other than the blocking read: claims, dead letters, heartbeats.
    pub conn: Conn,
    pub acks: mpsc::UnboundedSender<ack::Ack>,
    pub deliveries: mpsc::Sender<Delivery>,
    pub shutdown: CancellationToken,
}

impl Shared {
    fn known_partitions(&self) -> u32 {
        self.known_partitions.load(Ordering::Relaxed)
    }

    fn set_known_partitions(&self, partitions: u32) {
        self.known_partitions
            .fetch_max(partitions, Ordering::Relaxed);
    }

    /// Stops all work of a holding whose lease is not (or may not be) ours any more:
    /// no more reads, its running calls are abandoned, its queued jobs are turned away.
    /// If it is still assigned here, the coordinator takes it anew, which claims what
    /// was left pending.
    pub(crate) fn lease_lost(&self, tenure: partitions::Tenure, why: &str) {
        let partition = tenure.partition;
        if self.held.drop_tenure(tenure) {
            tracing::warn!(
                partition,
                "Consumer {} lost the lease of partition {partition}: {why}; stopping its jobs",
                self.consumer
            );
            self.ownership_changed.notify_one();
            self.coordinator_wake.notify_one();
        }
    }

    /// Follows the paused state the coordinator read.
    pub(crate) fn set_paused(&self, paused: bool) {
        let changed = self
            .paused
            .send_if_modified(|was| std::mem::replace(was, paused) != paused);
        if changed {
            self.metrics.paused.set(i64::from(paused));
            tracing::info!(
                topic = %self.topic, group = self.group,
                "Consumer {} {}", self.consumer,
                if paused { "paused: no new job starts until resumed" } else { "resumed" }
            );
        }
    }

    /// Returns at once unless paused; else once resumed, or false at shutdown.
    pub(crate) async fn unpaused(&self) -> bool {
        if !*self.paused.borrow() {
            return true;
        }
        let mut paused = self.paused.subscribe();
        tokio::select! {
            resumed = paused.wait_for(|p| !p) => resumed.is_ok(),
            () = self.shutdown.cancelled() => false,
        }
    }

    /// The keys and token of one of this consumer's holdings, for the fenced scripts.
    pub(crate) fn holding(&self, tenure: partitions::Tenure) -> crate::store::Holding {
        crate::store::Holding::new(
            &self.topic,
            tenure.partition,
            self.group,
            &self.consumer,
            tenure.id,
        )
    }

    /// This handler's metric labels for one partition.
    pub(crate) fn partition_labels(&self, partition: u32) -> crate::metrics::PartitionLabels {
        crate::metrics::PartitionLabels {
            topic: self.metrics.labels.topic.clone(),
            group: self.metrics.labels.group.clone(),
            partition,
        }
    }
}

/// Registers the topic and the group, trying again (with backoff, until `shutdown`)
/// while Redis cannot be reached or the connection drops: a worker started before its
/// Redis, or while connections are being cut, waits for it like a running worker does.
async fn join(
    def: &'static HandlerDef,
    target: &store::conn::Target,
    shutdown: &CancellationToken,
) -> Result<Option<(Conn, topic::TopicInfo, bool)>, Error> {
    for delay in crate::retry::doubling(Duration::from_millis(100), Duration::from_secs(5)) {
        let joined = async {
            let server = target.server().await?;
            let mut conn = target.connect(Duration::from_secs(10), 6).await?;
            let info = topic::ensure(&mut conn, def.spec).await?;
            store::group::create_on_partitions(
                &mut conn,
                def.spec.topic,
                def.group,
                info.partitions,
            )
            .await?;
            Ok::<_, Error>((conn, info, server.takes_script_flags()))
        };
        match joined.await {
            Ok(info) => return Ok(Some(info)),
            Err(e) if e.is_transient() => {
                tracing::warn!(
                    topic = def.spec.topic, group = def.group, error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "could not join the group yet; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the delays never end")
}

/// Removes this consumer from the Redis consumer group on every partition where it
/// holds nothing (where it still does, the next owner claims that and removes it), so a
/// clean stop leaves no dead consumer behind for `redisaq monitor` to report.
/// Leaves the Redis group on the partitions this consumer held, the only ones where it
/// can be a consumer of the group.
async fn leave_redis_group(shared: &Shared) {
    let mut conn = shared.conn.clone();
    for partition in shared.held.ever_held() {
        let stream = keys::partition(&shared.topic, partition);
        let removed = crate::store::group::remove_consumer_if_idle(
            &mut conn,
            &stream,
            shared.group,
            &shared.consumer,
        )
        .await;
        if let Err(e) = removed {
            tracing::warn!(partition, error = %e, "could not leave the consumer group; the partition's owner removes this consumer later");
        }
    }
}

/// Runs one handler until `shutdown` is cancelled, then stops fetching, lets running
/// calls finish within the shutdown timeout and flushes acknowledgements.
pub(crate) async fn run(
    def: &'static HandlerDef,
    config: Config,
    hints: hints::TopicHints,
    keeper: keeper::Keeper,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let target = store::conn::client(&config.redis_url)?;
    let throttle = throttle::Throttle::new(def.rate, def.key_rate)?;
    let schedule = def
        .cron
        .map(|expression| crate::cron::Schedule::parse(expression, def.tz))
        .transpose()?;
    let Some((conn, info, script_flags)) = join(def, &target, &shutdown).await? else {
        return Ok(()); // stopped before Redis could be reached
    };

    let consumer = format!("{}-{:08x}", config.consumer_prefix, rand::random::<u32>());
    let concurrency = config.concurrency.unwrap_or_else(|| {
        def.concurrency
            .map_or_else(|| def.default_concurrency(), |c| c as usize)
    });
    let batch = def.batch_size();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    // The read-ahead: what a worker holds beyond its running calls.
    let (delivery_tx, delivery_rx) = mpsc::channel(concurrency * batch + READ_AHEAD);
    let shared = Arc::new(Shared {
        def,
        topic: def.spec.topic.into(),
        group: def.group,
        consumer,
        known_partitions: AtomicU32::new(info.partitions),
        held: partitions::Partitions::default(),
        script_flags,
        ownership_changed: Notify::new(),
        coordinator_wake: Notify::new(),
        activity: AtomicU64::new(0),
        members: tokio::sync::watch::Sender::new(None),
        paused: tokio::sync::watch::Sender::new(false),
        metrics: crate::metrics::HandlerMetrics::new(def.spec.topic, def.group),
        conn: conn.clone(),
        acks: ack_tx,
        deliveries: delivery_tx,
        shutdown: shutdown.clone(),
        config,
    });
    tracing::info!(
        topic = %shared.topic, group = shared.group, consumer = %shared.consumer,
        concurrency, batch,
        "Consumer {} joined group {} on topic {} ({} partitions)",
        shared.consumer, shared.group, shared.topic, info.partitions
    );

    let acker = ack::Acker {
        acks: store::acks::Acks::new(conn.clone(), target.clone()),
        shared: shared.clone(),
    };
    // If this future is dropped (the embedding app dropped `run_until`), everything it
    // started stops with it, and the keeper lets go of it (`kept` dropped): nothing may
    // go on renewing the leases of a consumer that no longer runs jobs.
    // One tree of stops: `stopped` ends the acknowledger, last; its child `background`
    // ends the coordinator before the partitions are handed back, and the keeper lets
    // go of this consumer before that too.
    let stopped = CancellationToken::new();
    let _stop_all = stopped.clone().drop_guard();
    let background = stopped.child_token();
    let acker = AbortOnDropHandle::new(tokio::spawn(acker.run(ack_rx, stopped.clone())));
    let kept = keeper
        .register(shared.clone(), &target)
        .map_err(|e| Error::config(format!("could not start the lease keeper thread: {e}")))?;
    let scheduler = schedule
        .map(|schedule| AbortOnDropHandle::new(tokio::spawn(cron::run(shared.clone(), schedule))));
    let mover = AbortOnDropHandle::new(tokio::spawn(delayed::run(
        shared.clone(),
        hints.looks.clone(),
        hints.delayed,
    )));
    let coordinator = AbortOnDropHandle::new(tokio::spawn(coordinator::run(
        shared.clone(),
        hints.looks,
        background.clone(),
    )));
    let calls = Arc::new(execute::Calls {
        concurrency: Arc::new(Semaphore::new(concurrency)),
        limit: concurrency,
        running: TaskTracker::new(),
        max_attempts: def.retries().saturating_add(1),
        backoff: Backoff {
            first: shared.config.retry_backoff_min,
            max: shared.config.retry_backoff_max,
        },
    });
    let (rate, key_rate) = throttle.limits();
    if let Err(e) =
        store::rate::record(&mut conn.clone(), def.spec.topic, def.group, rate, key_rate).await
    {
        tracing::warn!(error = %e, "could not record the rate limits for the tools");
    }
    let executor = AbortOnDropHandle::new(tokio::spawn(execute::run(
        shared.clone(),
        calls.clone(),
        delivery_rx,
        throttle,
    )));
    let fetched = fetch::run(shared.clone(), &target).await;

    // Stop: no more fetching (done), no new calls; running calls get the deadline.
    let _ = executor.await;
    calls.running.close();
    let finished = tokio::time::timeout(shared.config.shutdown_timeout, calls.running.wait()).await;
    let running = concurrency - calls.concurrency.available_permits();
    background.cancel();
    let _ = coordinator.await;
    let _ = mover.await;
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    kept.leave().await;
    // Hand everything back at once: the others need not wait for lease or heartbeat TTLs.
    // (Partitions with calls still running past the deadline keep their lease until it
    // expires, so their next owner cannot start while those calls might still run.)
    for (partition, _, running) in shared.held.held() {
        if running > 0 {
            continue;
        }
        if let Err(e) = coordinator::release(&shared, partition).await {
            tracing::warn!(partition, error = %e, "could not release the partition; it moves after the lease TTL");
        }
    }
    leave_redis_group(&shared).await;
    membership::leave(&shared).await;
    coordinator::announce(&shared).await;
    let (topic, consumer) = (shared.topic.clone(), shared.consumer.clone());
    // Calls still running past the deadline may ack later into a closed channel; their
    // jobs stay pending and are delivered again.
    stopped.cancel();
    drop(shared);
    let _ = acker.await;
    tracing::info!(%topic, %consumer, "Consumer {consumer} stopped");
    fetched?;
    match finished {
        Ok(()) => Ok(()),
        Err(_) => Err(Error::ShutdownTimeout(running)),
    }
}

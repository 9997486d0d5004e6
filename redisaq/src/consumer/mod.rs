//! Running one handler: a consumer in the handler's group on every partition of its topic.
//!
//! A job's way through a consumer, one file each:
//! [`fetch`] reads new entries from the partition streams → [`execute`] gathers them into
//! calls (one job, or a batch) within the concurrency limit and applies each result →
//! [`ack`] acknowledges in coalesced pipelines, or `execute` schedules a retry or writes a
//! dead letter. [`membership`] keeps this consumer's heartbeat and takes over the pending
//! jobs of consumers whose heartbeat expired; [`crate::trim`] bounds the streams.

mod ack;
mod execute;
mod fetch;
mod membership;

use std::sync::Arc;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Error;
use crate::job::{JobMeta, RawJob};
use crate::registry::HandlerDef;
use crate::retry::Backoff;
use crate::wire::{self, StreamEntry};
use crate::{keys, redis_conn, topic};

/// One delivery of an entry to this consumer.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub partition: u32,
    pub entry_id: String,
    pub attempt: u32,
    /// The job, or why the entry is not one (it goes to the dead-letter queue).
    pub job: Result<RawJob, String>,
    /// The entry's fields as JSON, kept for a dead letter of an undecodable entry.
    pub raw_fields: Option<String>,
}

impl Delivery {
    fn new(shared: &Shared, partition: u32, entry: &StreamEntry, attempt: u32) -> Self {
        match wire::decode_job(entry) {
            Ok(envelope) => Delivery {
                partition,
                entry_id: entry.id.clone(),
                attempt,
                job: Ok(RawJob {
                    meta: JobMeta {
                        id: envelope.id,
                        topic: shared.topic.clone(),
                        partition,
                        attempt,
                        enqueued_at_ms: envelope.enqueued_at_ms,
                    },
                    payload: envelope.payload.into(),
                }),
                raw_fields: None,
            },
            Err(reason) => Delivery {
                partition,
                entry_id: entry.id.clone(),
                attempt,
                job: Err(reason),
                raw_fields: Some(wire::fields_as_json(entry)),
            },
        }
    }

    fn stream(&self, shared: &Shared) -> String {
        keys::partition(&shared.topic, self.partition)
    }
}

/// What every task of one consumer shares.
pub(crate) struct Shared {
    pub def: &'static HandlerDef,
    pub topic: Arc<str>,
    pub group: &'static str,
    pub consumer: String,
    pub partitions: u32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub config: Config,
    /// For commands other than the blocking read: claims, dead letters, heartbeats.
    pub conn: ConnectionManager,
    pub acks: mpsc::UnboundedSender<ack::Ack>,
    pub deliveries: mpsc::Sender<Delivery>,
    pub concurrency: Arc<Semaphore>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Shared {
    fn streams(&self) -> Vec<String> {
        (0..self.partitions)
            .map(|p| keys::partition(&self.topic, p))
            .collect()
    }
}

/// Creates the group on every partition (from the oldest retained entry, so a new group
/// reconsumes what is there) and the streams if they do not exist yet.
pub(crate) async fn create_groups(
    conn: &mut ConnectionManager,
    topic: &str,
    group: &str,
    partitions: u32,
) -> Result<(), Error> {
    let mut pipe = redis::pipe();
    for partition in 0..partitions {
        pipe.cmd("XGROUP")
            .arg("CREATE")
            .arg(keys::partition(topic, partition))
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
    }
    // Each command fails alone with BUSYGROUP when the group exists; in a pipeline the
    // first error is what we get back, so run them one by one only when needed.
    match pipe.exec_async(conn).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {
            for partition in 0..partitions {
                let created = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(keys::partition(topic, partition))
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .exec_async(conn)
                    .await;
                match created {
                    Err(e) if e.code() != Some("BUSYGROUP") => return Err(e.into()),
                    _ => {}
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs one handler until `shutdown` is cancelled, then stops fetching, lets running
/// calls finish within the shutdown timeout and flushes acknowledgements.
pub(crate) async fn run(
    def: &'static HandlerDef,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let client = redis_conn::client(&config.redis_url)?;
    let mut conn = redis_conn::manager(&client, std::time::Duration::from_secs(10)).await?;
    let info = topic::ensure(&mut conn, def.spec).await?;
    create_groups(&mut conn, def.spec.topic, def.group, info.partitions).await?;

    let consumer = format!("{}-{:08x}", config.consumer_prefix, rand::random::<u32>());
    let concurrency = config.concurrency.unwrap_or_else(|| {
        def.concurrency
            .map_or_else(|| def.default_concurrency(), |c| c as usize)
    });
    let batch = def.batch_size();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (delivery_tx, delivery_rx) = mpsc::channel(concurrency * batch);
    let shared = Arc::new(Shared {
        def,
        topic: def.spec.topic.into(),
        group: def.group,
        consumer,
        partitions: info.partitions,
        max_attempts: def.retries().saturating_add(1),
        backoff: Backoff {
            first: config.retry_backoff_min,
            max: config.retry_backoff_max,
        },
        conn: conn.clone(),
        acks: ack_tx,
        deliveries: delivery_tx,
        concurrency: Arc::new(Semaphore::new(concurrency)),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
        config,
    });
    tracing::info!(
        topic = %shared.topic, group = shared.group, consumer = %shared.consumer,
        partitions = info.partitions, concurrency, batch,
        "Consumer {} started on topic {} in group {}, partitions {:?}",
        shared.consumer, shared.topic, shared.group, (0..info.partitions).collect::<Vec<_>>()
    );

    let acker = tokio::spawn(ack::run(conn.clone(), shared.group, ack_rx));
    let background = CancellationToken::new();
    membership::join(&shared).await?;
    let heartbeat = tokio::spawn(membership::run(shared.clone(), background.clone()));
    let trimmer = tokio::spawn(crate::trim::run(
        conn.clone(),
        shared.topic.clone(),
        info.partitions,
        info.maxlen,
        shared.config.heartbeat_interval,
        background.clone(),
    ));
    let executor = tokio::spawn(execute::run(shared.clone(), delivery_rx));
    let fetched = fetch::run(shared.clone(), &client).await;

    // Stop: no more fetching (done), no new calls; running calls get the deadline.
    let _ = executor.await;
    shared.tasks.close();
    let finished = tokio::time::timeout(shared.config.shutdown_timeout, shared.tasks.wait()).await;
    let running = shared.concurrency.available_permits();
    background.cancel();
    let _ = heartbeat.await;
    let _ = trimmer.await;
    membership::leave(&shared).await;
    let (topic, consumer) = (shared.topic.clone(), shared.consumer.clone());
    // Calls still running past the deadline may ack later into a closed channel; their
    // jobs stay pending and are delivered again.
    let _ = shared.acks.send(ack::Ack::Close);
    drop(shared);
    let _ = acker.await;
    tracing::info!(%topic, %consumer, "Consumer {consumer} stopped");
    fetched?;
    match finished {
        Ok(()) => Ok(()),
        Err(_) => Err(Error::ShutdownTimeout(concurrency.saturating_sub(running))),
    }
}

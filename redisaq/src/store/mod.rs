//! The storage layer: the only code that speaks to Redis. One function per operation the
//! runtime and the tools need, with typed results; the consumer, the producer and the
//! admin call these and speak in types. Nothing here knows the consumer or the admin.
//!
//! [`stream`] (jobs in partition streams), [`acks`] (fenced acknowledgements, many at
//! once), [`lease`] (fenced ownership), [`members`]
//! (heartbeats), [`renewal`] (a worker's heartbeats and leases renewed at once), [`assignment`], [`view`] (what a coordinator reads each step),
//! [`changes`] (hints that a topic's assignment moved), [`group`] (consumer groups),
//! [`due`] (entries waiting to run again), [`schedule`] (delayed jobs, ids stored once), [`cron`] (schedules), [`rate`] (rate limits), [`dlq`] (dead letters), [`trim`], [`topic`]
//! (settings and layout), [`scripts`] (sent by hash) and [`conn`] (connections).

pub(crate) mod acks;
pub(crate) mod assignment;
pub(crate) mod changes;
pub(crate) mod conn;
pub(crate) mod cron;
pub(crate) mod dlq;
pub(crate) mod due;
pub(crate) mod group;
pub(crate) mod members;
pub(crate) mod rate;
pub(crate) mod renewal;
pub(crate) mod schedule;
pub(crate) mod scripts;
pub(crate) mod stream;
pub(crate) mod topic;
pub(crate) mod trim;
pub(crate) mod view;

use redis::aio::ConnectionLike;

use crate::error::Error;
use crate::keys;

/// The Redis server's clock, in Unix ms.
pub(crate) async fn server_ms(conn: &mut impl ConnectionLike) -> Result<u64, Error> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}

/// One holding of a partition by a consumer of a group, as the fenced scripts see it: the
/// keys it works on and the lease token it proves itself with.
#[derive(Clone)]
pub(crate) struct Holding {
    pub lease: String,
    pub token: String,
    pub stream: String,
    pub due: String,
    pub group: String,
}

impl Holding {
    pub(crate) fn new(
        topic: &str,
        partition: u32,
        group: &str,
        consumer: &str,
        epoch: u64,
    ) -> Self {
        Holding {
            lease: keys::lease(topic, partition, group),
            token: keys::lease_token(consumer, epoch),
            stream: keys::partition(topic, partition),
            due: keys::due(topic, partition, group),
            group: group.to_string(),
        }
    }
}
pub(crate) mod lease;

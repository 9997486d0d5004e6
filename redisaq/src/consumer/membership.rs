//! Liveness: each consumer renews its entry in the group's member set
//! (`redisaq:{topic}:members:{group}`, scored by expiry in Redis server time), and takes
//! over the pending jobs of consumers in the Redis group that have no live entry there,
//! then removes them from the group.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Delivery, Shared};
use crate::error::Error;
use crate::keys;
use crate::wire;

/// Renews `ARGV[1]`'s expiry to now + `ARGV[2]` ms and returns the live members. Uses the
/// server's clock so that workers with skewed clocks agree on who is alive.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

/// Claims taken in one round trip.
const CLAIM_PAGE: usize = 100;

/// Renews this consumer's record; returns the live members.
async fn heartbeat(shared: &Shared) -> Result<HashSet<String>, Error> {
    members(shared, &shared.consumer).await
}

/// The live members, without renewing anything.
async fn live_members(shared: &Shared) -> Result<HashSet<String>, Error> {
    members(shared, "").await
}

async fn members(shared: &Shared, renew: &str) -> Result<HashSet<String>, Error> {
    let live: redis::Value = redis::Script::new(HEARTBEAT)
        .key(keys::members(&shared.topic, shared.group))
        .arg(renew)
        .arg(shared.config.heartbeat_ttl.as_millis() as u64)
        .invoke_async(&mut shared.conn.clone())
        .await?;
    Ok(wire::parse_strings(&live)?.into_iter().collect())
}

/// Registers this consumer as alive.
pub(crate) async fn join(shared: &Shared) -> Result<(), Error> {
    heartbeat(shared).await.map(|_| ())
}

/// Leaves at once on a clean shutdown, so others take over what is left without
/// waiting for the heartbeat to expire.
pub(crate) async fn leave(shared: &Shared) {
    let result = redis::cmd("ZREM")
        .arg(keys::members(&shared.topic, shared.group))
        .arg(&shared.consumer)
        .exec_async(&mut shared.conn.clone())
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not leave the group; others take over after the heartbeat TTL");
    }
}

/// Heartbeats every interval; after each, takes over what dead consumers left.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = shared.config.heartbeat_interval;
    let beat = {
        let shared = shared.clone();
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stop.cancelled() => return,
                }
                if let Err(e) = heartbeat(&shared).await {
                    tracing::warn!(consumer = %shared.consumer, error = %e, "heartbeat failed");
                }
            }
        }
    };
    let reap = async move {
        loop {
            if let Err(e) = take_over_dead(&shared).await {
                tracing::warn!(error = %e, "taking over dead consumers failed; will try again");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        }
    };
    tokio::join!(beat, reap);
}

async fn take_over_dead(shared: &Shared) -> Result<(), Error> {
    let mut conn = shared.conn.clone();
    for partition in 0..shared.partitions {
        let stream = keys::partition(&shared.topic, partition);
        let consumers: redis::Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg(shared.group)
            .query_async(&mut conn)
            .await?;
        let others: Vec<(String, u64)> = wire::parse_consumers(&consumers)?
            .into_iter()
            .filter(|(name, _)| *name != shared.consumer)
            .collect();
        if others.is_empty() {
            continue;
        }
        // Listed after the consumers: a consumer joins before it first reads, so one that
        // appears in the group but not here really has no live heartbeat.
        let live = live_members(shared).await?;
        for (name, pending) in others {
            if live.contains(&name) {
                continue;
            }
            let left = if pending > 0 {
                claim_all(shared, partition, &stream, &name).await?
            } else {
                0
            };
            if left == 0 {
                // DELCONSUMER drops the consumer's pending entries, so only once it has none.
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&stream)
                    .arg(shared.group)
                    .arg(&name)
                    .exec_async(&mut conn)
                    .await?;
                tracing::info!(
                    topic = %shared.topic, partition, dead = %name,
                    "Consumer {} removed dead consumer {name} from the group", shared.consumer
                );
            }
        }
    }
    Ok(())
}

/// Claims a dead consumer's pending entries of one partition and queues them here.
/// Returns how many it still holds (entries claimed by someone else meanwhile, or not
/// idle long enough yet).
async fn claim_all(
    shared: &Shared,
    partition: u32,
    stream: &str,
    dead: &str,
) -> Result<usize, Error> {
    // Another live consumer may be claiming the same entries right now; requiring some
    // idle time makes the second claim of an entry fail instead of running it twice.
    let min_idle = (shared.config.heartbeat_interval / 2).max(Duration::from_millis(1));
    let min_idle_ms = min_idle.as_millis() as u64;
    let mut conn = shared.conn.clone();
    loop {
        let rows: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(shared.group)
            .arg("-")
            .arg("+")
            .arg(CLAIM_PAGE)
            .arg(dead)
            .query_async(&mut conn)
            .await?;
        let pending = wire::parse_pending(&rows)?;
        if pending.is_empty() {
            return Ok(0);
        }
        let claimed: redis::Value = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(shared.group)
            .arg(&shared.consumer)
            .arg(min_idle_ms)
            .arg(pending.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await?;
        let entries = wire::parse_claimed(&claimed)?;
        tracing::info!(
            topic = %shared.topic, partition, dead, count = entries.len(),
            "Consumer {} took over {} pending job(s) of dead consumer {dead}",
            shared.consumer, entries.len()
        );
        let still_held = pending.len() - entries.len();
        for entry in &entries {
            let deliveries = pending
                .iter()
                .find(|p| p.id == entry.id)
                .map_or(1, |p| p.deliveries);
            let attempt = u32::try_from(deliveries + 1).unwrap_or(u32::MAX);
            let delivery = Delivery::new(shared, partition, entry, attempt);
            tokio::select! {
                sent = shared.deliveries.send(delivery) => if sent.is_err() { return Ok(0) },
                () = shared.shutdown.cancelled() => return Ok(0),
            }
        }
        if still_held > 0 || pending.len() < CLAIM_PAGE {
            return Ok(still_held);
        }
    }
}

//! Liveness: each consumer renews its entry in the group's member set
//! (`redisaq:{topic}:members:{group}`, scored by expiry in Redis server time). A consumer
//! whose entry expired is dead.

use super::Shared;
use crate::error::Error;
use crate::keys;
use crate::wire;

/// Renews `ARGV[1]`'s expiry to now + `ARGV[2]` ms (unless `ARGV[1]` is empty) and
/// returns the live members. Uses the server's clock so that workers with skewed clocks
/// agree on who is alive.
///
/// The `ZREM` first is for a full Redis without script flags (6.2): there a script is
/// refused only if its first write is one a full Redis refuses (`ZADD`), and `ZREM`,
/// which frees memory, is not.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

/// The heartbeat script as one command, for a pipeline: renews `renew` (unless empty)
/// and answers the live members.
pub(super) fn heartbeat_cmd(shared: &Shared, renew: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(crate::redis_conn::allow_oom(HEARTBEAT, shared.script_flags).as_ref())
        .arg(1)
        .arg(keys::members(&shared.topic, shared.group))
        .arg(renew)
        .arg(shared.config.heartbeat_ttl.as_millis() as u64);
    cmd
}

async fn members(shared: &Shared, renew: &str) -> Result<Vec<String>, Error> {
    let live: redis::Value = heartbeat_cmd(shared, renew)
        .query_async(&mut shared.conn.clone())
        .await?;
    let mut live = wire::parse_strings(&live)?;
    live.sort_unstable();
    Ok(live)
}

/// Renews this consumer's record; returns the live members, sorted.
pub(crate) async fn heartbeat(shared: &Shared) -> Result<Vec<String>, Error> {
    members(shared, &shared.consumer).await
}

/// The live members, sorted, without renewing anything.
pub(crate) async fn live_members(shared: &Shared) -> Result<Vec<String>, Error> {
    members(shared, "").await
}

/// Leaves at once on a clean shutdown, so the others rebalance without waiting for the
/// heartbeat to expire.
pub(crate) async fn leave(shared: &Shared) {
    let result = redis::cmd("ZREM")
        .arg(keys::members(&shared.topic, shared.group))
        .arg(&shared.consumer)
        .exec_async(&mut shared.conn.clone())
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not leave the group; the others rebalance after the heartbeat TTL");
    }
}

//! Liveness records: each consumer renews its entry in the group's member set
//! (`redisaq:{topic}:members:{group}`, scored by expiry in Redis server time). A consumer
//! whose entry expired is dead.

use crate::store::scripts::lua_now;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;

use super::scripts::{self, Lua};
use crate::error::Error;
use crate::keys;

/// Renews `ARGV[1]`'s expiry to now + `ARGV[2]` ms (unless `ARGV[1]` is empty); with
/// `ARGV[3]` = 1 also forgets members dead for a day. Answers the server's time and the
/// live members with their expiries. Uses the server's clock so that workers with skewed
/// clocks agree on who is alive. The keeper sends it every heartbeat interval; what it
/// answers is how a settled coordinator learns of a member that joined, left or is about
/// to run out, without reading its group.
///
/// The `ZREM` first (`ARGV[4]` = 1) is for a full Redis without script flags (6.2):
/// there a script is refused only if its first write is one a full Redis refuses
/// (`ZADD`), and `ZREM`, which frees memory, is not.
const HEARTBEAT: &str = concat!(
    lua_now!(),
    r"if ARGV[1] ~= '' then
  if ARGV[4] == '1' then
    redis.call('ZREM', KEYS[1], ARGV[1])
  end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
if ARGV[3] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
end
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')}
"
);

static HEARTBEAT_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(HEARTBEAT));

/// The heartbeat script as one command for a pipeline, and the script to load if Redis
/// forgot it: renews `renew` (unless empty), with `clean` also forgets members dead for
/// a day, and answers the live members ([`parse_live`]). Allowed on a full Redis
/// (`script_flags`: Redis 7).
pub(crate) fn heartbeat_cmd(
    topic: &str,
    group: &str,
    renew: &str,
    ttl: Duration,
    script_flags: bool,
    clean: bool,
) -> (redis::Cmd, &'static redis::Script) {
    let script = HEARTBEAT_SCRIPT.script(script_flags);
    let mut cmd = scripts::evalsha(script, &[&keys::members(topic, group)]);
    cmd.arg(renew)
        .arg(ttl.as_millis() as u64)
        .arg(u8::from(clean))
        .arg(u8::from(!script_flags));
    (cmd, script)
}

/// A group's live members as a heartbeat found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Live {
    /// The server's time then, in ms.
    pub now_ms: u64,
    /// Each live member and when its record runs out (server ms), sorted by name.
    pub members: Vec<(String, u64)>,
}

impl Live {
    /// The live members as a script answers them (name, expiry), at `now_ms`.
    pub(crate) fn new(now_ms: u64, members: Vec<(String, f64)>) -> Self {
        let mut members: Vec<(String, u64)> = members
            .into_iter()
            .map(|(name, expiry)| (name, expiry as u64))
            .collect();
        members.sort_unstable();
        Live { now_ms, members }
    }

    /// How long until the first member's record runs out unless renewed, by the
    /// server's clock.
    pub(crate) fn next_expiry(&self) -> Option<Duration> {
        self.members
            .iter()
            .map(|(_, expiry)| *expiry)
            .min()
            .map(|expiry| Duration::from_millis(expiry.saturating_sub(self.now_ms)))
    }

    /// The members' names, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        self.members.iter().map(|(name, _)| name.clone()).collect()
    }
}

/// A heartbeat's answer.
pub(crate) fn parse_live(reply: redis::Value) -> Result<Live, Error> {
    let (now_ms, members): (u64, Vec<(String, f64)>) =
        redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
    Ok(Live::new(now_ms, members))
}

/// Renews `renew` (unless empty); returns the live members.
pub(crate) async fn heartbeat(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    renew: &str,
    ttl: Duration,
    script_flags: bool,
) -> Result<Live, Error> {
    let (cmd, script) = heartbeat_cmd(topic, group, renew, ttl, script_flags, true);
    let live: redis::Value = scripts::query(conn, &cmd, script).await?;
    parse_live(live)
}

/// The live members, sorted, read without writing anything (for the tools).
pub(crate) async fn live(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
) -> Result<Vec<String>, Error> {
    let now_ms = super::server_ms(conn).await?;
    let mut live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys::members(topic, group))
        .arg(format!("({now_ms}"))
        .arg("+inf")
        .query_async(conn)
        .await?;
    live.sort_unstable();
    Ok(live)
}

/// Removes `consumer` from the members at once (a clean stop).
pub(crate) async fn leave(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    consumer: &str,
) -> Result<(), Error> {
    redis::cmd("ZREM")
        .arg(keys::members(topic, group))
        .arg(consumer)
        .exec_async(conn)
        .await?;
    Ok(())
}

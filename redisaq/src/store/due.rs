//! When pending entries are due again: one sorted set per partition and group (entry id
//! scored by the time it is due, by the Redis server's clock). A job waiting for its
//! retry stays pending in its group and is recorded here, so whoever owns the partition
//! when it is due claims it then: nothing waits in a worker's memory, and a worker that
//! goes away takes no backoff with it.

use crate::store::scripts::{lua_fence, lua_now};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Value;

use super::Holding;
use crate::error::Error;
use crate::wire::{self, StreamEntry};

/// While lease `KEYS[1]` holds `ARGV[1]`: entry `ARGV[2]` is due in `ARGV[3]` ms
/// (recorded in `KEYS[2]`). The `ZREM` first lets it run on a full Redis without script
/// flags (6.2), which refuses a script only if its first write is one it refuses.
const DEFER: &str = concat!(
    lua_fence!(),
    lua_now!(),
    r"redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
return 1
"
);

static DEFER_SCRIPT: std::sync::LazyLock<super::scripts::Lua> =
    std::sync::LazyLock::new(|| super::scripts::Lua::new(DEFER));

/// While lease `KEYS[1]` holds `ARGV[1]`: claims for consumer `ARGV[3]` of group `ARGV[2]`
/// up to `ARGV[4]` entries of stream `KEYS[3]` that are due by `KEYS[2]`, counting the
/// attempt, and forgets their records. Answers `{{id, fields, attempt}...}`, the ids that
/// were deleted from the stream while they waited (acknowledged here, so they leave the
/// pending list), and the ms until the next one is due (-1: none).
const TAKE: &str = concat!(
    lua_fence!(),
    lua_now!(),
    r"local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local taken, gone = {}, {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local pending = redis.call('XPENDING', KEYS[3], ARGV[2], id, id, 1)
  if #pending > 0 then
    local attempt = tonumber(pending[1][4]) + 1
    local claimed = redis.call('XCLAIM', KEYS[3], ARGV[2], ARGV[3], 0, id, 'RETRYCOUNT', attempt)
    if claimed[1] then
      taken[#taken + 1] = {claimed[1][1], claimed[1][2], attempt}
    else
      redis.call('XACK', KEYS[3], ARGV[2], id)
      gone[#gone + 1] = id
    end
  end
end
local next = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if next[2] then
  wait = math.max(0, tonumber(next[2]) - now)
end
return {taken, gone, wait}
"
);
static TAKE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(TAKE));

/// Records that `entry` is due again in `delay`, while the holding has its lease.
/// Allowed on a full Redis: it is one small record, and the retry must not be lost.
pub(crate) async fn defer(
    conn: &mut impl ConnectionLike,
    holding: &Holding,
    entry: &str,
    delay: Duration,
    script_flags: bool,
) -> Result<(), Error> {
    let _: i64 = DEFER_SCRIPT
        .script(script_flags)
        .key(&holding.lease)
        .key(&holding.due)
        .arg(&holding.token)
        .arg(entry)
        .arg(delay.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// What [`take`] claimed.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Entries claimed for their next attempt, with its number.
    pub entries: Vec<(StreamEntry, u32)>,
    /// Entries deleted from the stream while they waited: they cannot run.
    pub gone: Vec<String>,
    /// When the next recorded entry is due, from now.
    pub next: Option<Duration>,
}

/// Claims for `consumer` up to `limit` entries that are due, while the holding has its
/// lease.
pub(crate) async fn take(
    conn: &mut impl ConnectionLike,
    holding: &Holding,
    consumer: &str,
    limit: usize,
) -> Result<Taken, Error> {
    let reply: Value = TAKE_SCRIPT
        .key(&holding.lease)
        .key(&holding.due)
        .key(&holding.stream)
        .arg(&holding.token)
        .arg(&holding.group)
        .arg(consumer)
        .arg(limit)
        .invoke_async(conn)
        .await?;
    Ok(parse_taken(&reply)?)
}

fn parse_taken(reply: &Value) -> Result<Taken, redis::RedisError> {
    let unexpected = || {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected reply to the due-entries script",
            format!("{reply:?}"),
        ))
    };
    let Value::Array(parts) = reply else {
        return Err(unexpected());
    };
    let [Value::Array(taken), gone, Value::Int(wait)] = parts.as_slice() else {
        return Err(unexpected());
    };
    let mut entries = Vec::with_capacity(taken.len());
    for item in taken {
        let Value::Array(item) = item else {
            return Err(unexpected());
        };
        let [id, fields, Value::Int(attempt)] = item.as_slice() else {
            return Err(unexpected());
        };
        let entry = wire::parse_entry(Value::Array(vec![id.clone(), fields.clone()]))?;
        entries.push((entry, u32::try_from(*attempt).unwrap_or(u32::MAX)));
    }
    Ok(Taken {
        entries,
        gone: wire::parse_strings(gone)?,
        next: u64::try_from(*wait).ok().map(Duration::from_millis),
    })
}

/// Which of `ids` have a due record: they wait for it and are not anyone's to claim
/// before then.
pub(crate) async fn waiting(
    conn: &mut impl ConnectionLike,
    due: &str,
    ids: &[&str],
) -> Result<Vec<bool>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
        .arg(due)
        .arg(ids)
        .query_async(conn)
        .await?;
    Ok(scores.into_iter().map(|s| s.is_some()).collect())
}

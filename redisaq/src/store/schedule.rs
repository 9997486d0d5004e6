//! Jobs that are not simply appended: delayed ones (`EnqueueOptions::delay` / `at`) and
//! those enqueued with an id of their own (`EnqueueOptions::id`, stored once).
//!
//! A delayed job waits in its partition's delayed set (`redisaq:{topic:N}:delayed`, job
//! id scored by when it is due, by the Redis server's clock) with its fields in
//! `redisaq:{topic:N}:delayed:jobs`. When it is due, an owner of the partition moves it
//! into the stream with [`promote`]: one script, so a mover that dies midway loses or
//! doubles nothing. An enqueue that becomes the partition's next due job says so on the
//! topic's change channel, so the owner sleeps until then instead of polling.
//!
//! A given id is recorded in `redisaq:{topic:N}:ids` (scored by its first enqueue) in the
//! same script that adds the job: enqueued again within the topic's dedupe window, or
//! while it is still delayed, it stores nothing.

use std::time::Duration;

use redis::aio::ConnectionLike;

use super::scripts::{lua_now, Lua};
use crate::error::Error;
use crate::keys;
use crate::wire::JobFields;

/// Adds one job with a delay or an id of its own (see the module docs).
///
/// `KEYS`: the stream, the delayed set, the delayed jobs' fields, the id records, then
/// (on one node) every partition's id records: an id recorded in another partition
/// before a raise moved its route counts too.
/// `ARGV`: `when` (`''` at once, `in` ms from now, `at` Unix ms), its ms, the dedupe
/// window in ms (`''`: no id of its own), the job id, the change channel, the partition,
/// then the entry's fields. Answers 1 if stored, 0 if the id was already there.
///
/// The first write is one a full Redis refuses (`HSET`, `XADD` or `ZADD`), so without
/// script flags (6.2) too the whole script is refused then, like a plain `XADD`.
const ADD: &str = concat!(
    lua_now!(),
    r"local id = ARGV[4]
local window = tonumber(ARGV[3])
if window then
  local first = redis.call('ZSCORE', KEYS[4], id)
  if (first and tonumber(first) > now - window) or redis.call('ZSCORE', KEYS[2], id) then
    return 0
  end
  for k = 5, #KEYS do
    if KEYS[k] ~= KEYS[4] then
      local elsewhere = redis.call('ZSCORE', KEYS[k], id)
      if elsewhere and tonumber(elsewhere) > now - window then
        return 0
      end
    end
  end
end
local fields = {}
for i = 7, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local due = nil
if ARGV[1] == 'in' then
  due = now + tonumber(ARGV[2])
elseif ARGV[1] == 'at' then
  due = tonumber(ARGV[2])
end
if due and due > now then
  redis.call('HSET', KEYS[3], id, cjson.encode(fields))
  redis.call('ZADD', KEYS[2], due, id)
  if redis.call('ZRANGE', KEYS[2], 0, 0)[1] == id then
    redis.call('PUBLISH', ARGV[5], 'delayed ' .. ARGV[6] .. ' ' .. (due - now))
  end
else
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
if window then
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (now - window))
end
return 1
"
);

static ADD_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ADD));

/// Moves up to `ARGV[1]` due jobs of delayed set `KEYS[1]` (fields in `KEYS[2]`) into
/// stream `KEYS[3]`. Answers how many it moved, the ms until the next one is due (-1:
/// none) and how many still wait.
const PROMOTE: &str = concat!(
    lua_now!(),
    r"local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local fields = redis.call('HGET', KEYS[2], id)
  if fields then
    redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(fields)))
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next[2] then
  wait = math.max(0, tonumber(next[2]) - now)
end
return {#due, wait, redis.call('ZCARD', KEYS[1])}
"
);

/// Moving due jobs must go on while Redis is full: they are there already.
static PROMOTE_SCRIPT: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| Lua::new(PROMOTE));

/// Removes delayed job `ARGV[1]` from set `KEYS[1]` and its fields from `KEYS[2]`;
/// answers 1 if it was there.
const CANCEL: &str = r"if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
";

static CANCEL_SCRIPT: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| Lua::new(CANCEL));

/// When a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// This long after Redis stored it (by Redis' clock).
    In(Duration),
    /// At this Unix time, in ms.
    At(u64),
}

/// What makes a job more than an append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scheduled<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub when: Option<When>,
    /// The topic's dedupe window, for a job with an id of its own.
    pub window: Option<Duration>,
    /// The id records of every partition, checked too, so an id recorded before the
    /// partition count was raised still counts; empty on a cluster, where one script
    /// reaches one slot only.
    pub all_ids: &'a [String],
}

/// The script that [`add_cmd`]s run, to load if Redis forgot it.
pub(crate) fn add_script() -> &'static redis::Script {
    &ADD_SCRIPT
}

/// The command that adds one scheduled job to `stream`; it answers 1 if stored, 0 if
/// its id was there already.
pub(crate) fn add_cmd(
    stream: &str,
    fields: &JobFields<'_>,
    scheduled: &Scheduled<'_>,
) -> redis::Cmd {
    let Scheduled {
        topic,
        partition,
        when,
        window,
        all_ids,
    } = *scheduled;
    let own = [
        stream.to_string(),
        keys::delayed(topic, partition),
        keys::delayed_jobs(topic, partition),
        keys::ids(topic, partition),
    ];
    let elsewhere = if window.is_some() { all_ids } else { &[] };
    let all: Vec<&str> = own.iter().chain(elsewhere).map(String::as_str).collect();
    let mut cmd = super::scripts::evalsha(&ADD_SCRIPT, &all);
    match when {
        None => cmd.arg("").arg(0),
        Some(When::In(delay)) => cmd.arg("in").arg(delay.as_millis() as u64),
        Some(When::At(at_ms)) => cmd.arg("at").arg(at_ms),
    };
    match window {
        Some(window) => cmd.arg(window.as_millis().max(1) as u64),
        None => cmd.arg(""),
    };
    cmd.arg(fields.id)
        .arg(keys::changes(topic))
        .arg(partition)
        .arg(fields);
    cmd
}

/// What [`promote`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Promoted {
    /// Jobs moved into the stream.
    pub moved: u64,
    /// How long until the next delayed job is due; `None` when none waits.
    pub next: Option<Duration>,
    /// How many delayed jobs still wait.
    pub waiting: u64,
}

/// Moves up to `limit` due delayed jobs of a partition into its stream.
pub(crate) async fn promote(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partition: u32,
    limit: usize,
    script_flags: bool,
) -> Result<Promoted, Error> {
    let (moved, wait, waiting): (u64, i64, u64) = PROMOTE_SCRIPT
        .script(script_flags)
        .key(keys::delayed(topic, partition))
        .key(keys::delayed_jobs(topic, partition))
        .key(keys::partition(topic, partition))
        .arg(limit)
        .invoke_async(conn)
        .await?;
    Ok(Promoted {
        moved,
        next: u64::try_from(wait).ok().map(Duration::from_millis),
        waiting,
    })
}

/// Cancels delayed job `id` of a partition; true if it was waiting there.
pub(crate) async fn cancel(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partition: u32,
    id: &str,
) -> Result<bool, Error> {
    let removed: i64 = CANCEL_SCRIPT
        .script(false)
        .key(keys::delayed(topic, partition))
        .key(keys::delayed_jobs(topic, partition))
        .arg(id)
        .invoke_async(conn)
        .await?;
    Ok(removed == 1)
}

/// How many delayed jobs wait in a partition.
pub(crate) async fn delayed_count(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partition: u32,
) -> Result<u64, Error> {
    Ok(redis::cmd("ZCARD")
        .arg(keys::delayed(topic, partition))
        .query_async(conn)
        .await?)
}

/// When delayed job `id` of a partition is due, if it waits there.
pub(crate) async fn due_of(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partition: u32,
    id: &str,
) -> Result<Option<u64>, Error> {
    let due: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys::delayed(topic, partition))
        .arg(id)
        .query_async(conn)
        .await?;
    Ok(due.map(|d| d as u64))
}

/// The first `limit` delayed jobs of a partition to be due: (id, due ms).
pub(crate) async fn first_due(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partition: u32,
    limit: usize,
) -> Result<Vec<(String, u64)>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys::delayed(topic, partition))
        .arg(0)
        .arg(limit - 1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(rows.into_iter().map(|(id, due)| (id, due as u64)).collect())
}

/// A change-channel message that says partition `partition`'s next delayed job is due
/// in `wait`: `delayed <partition> <ms>`.
pub(crate) fn parse_hint(message: &[u8]) -> Option<(u32, Duration)> {
    let text = std::str::from_utf8(message).ok()?;
    let mut words = text.strip_prefix("delayed ")?.split(' ');
    let partition = words.next()?.parse().ok()?;
    let wait = words.next()?.parse().ok()?;
    Some((partition, Duration::from_millis(wait)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_parse() {
        assert_eq!(
            parse_hint(b"delayed 3 1500"),
            Some((3, Duration::from_millis(1500)))
        );
        assert_eq!(parse_hint(b"1"), None);
        assert_eq!(parse_hint(b"delayed x 1"), None);
    }
}

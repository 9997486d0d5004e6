//! Cron schedules in Redis: one record per topic, `redisaq:{topic:0}:cron` (`last`: the
//! last fire time enqueued, or when the schedule was first recorded until `fired` is
//! set; `cron`, `tz`), beside partition 0's stream so that claiming a
//! fire time and adding its job are one script, on one slot. The names of topics with a
//! schedule are in `redisaq:schedules`.

use redis::aio::ConnectionLike;

use super::scripts::lua_now;
use crate::error::Error;
use crate::keys;
use crate::wire::JobFields;

/// Records the schedule of `KEYS[1]` (`ARGV[1]` cron, `ARGV[2]` tz). A new record starts
/// at Redis' now, so a new schedule fires first at its next fire time. Answers the last
/// fire time enqueued (or the start, for a new one).
const START: &str = concat!(
    lua_now!(),
    r"local last = redis.call('HGET', KEYS[1], 'last')
if not last then
  last = now
  redis.call('HSET', KEYS[1], 'last', last)
end
redis.call('HSET', KEYS[1], 'cron', ARGV[1], 'tz', ARGV[2])
return tonumber(last)
"
);

static START_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(START));

/// Claims fire time `ARGV[1]` of schedule `KEYS[1]` and adds its job (fields `ARGV[2..]`)
/// to stream `KEYS[2]`, unless that fire time, or a later one, was claimed already.
/// Answers 1 if this call enqueued it.
const FIRE: &str = r"local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '-1')
if tonumber(ARGV[1]) <= last then
  return 0
end
redis.call('HSET', KEYS[1], 'last', ARGV[1], 'fired', 1)
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
";

static FIRE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(FIRE));

/// Records `topic`'s schedule; returns the last fire time enqueued (Unix ms), or when
/// the schedule was first recorded.
pub(crate) async fn start(
    conn: &mut impl ConnectionLike,
    topic: &str,
    expression: &str,
    tz: &str,
) -> Result<u64, Error> {
    let last: u64 = START_SCRIPT
        .key(keys::cron(topic))
        .arg(expression)
        .arg(tz)
        .invoke_async(conn)
        .await?;
    let _: i64 = redis::cmd("SADD")
        .arg(keys::schedules())
        .arg(topic)
        .query_async(conn)
        .await?;
    Ok(last)
}

/// Enqueues the job of fire time `fire_ms` unless some worker did already; true if this
/// call did.
pub(crate) async fn fire(
    conn: &mut impl ConnectionLike,
    topic: &str,
    fire_ms: u64,
    job: JobFields<'_>,
) -> Result<bool, Error> {
    let fired: i64 = FIRE_SCRIPT
        .key(keys::cron(topic))
        .key(keys::partition(topic, 0))
        .arg(fire_ms)
        .arg(job)
        .invoke_async(conn)
        .await?;
    Ok(fired == 1)
}

/// One schedule as stored.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub topic: String,
    pub expression: String,
    pub tz: String,
    pub last_ms: Option<u64>,
}

/// Every schedule, by topic name.
pub(crate) async fn list(conn: &mut impl ConnectionLike) -> Result<Vec<Stored>, Error> {
    let mut topics: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::schedules())
        .query_async(conn)
        .await?;
    topics.sort_unstable();
    let mut schedules = Vec::with_capacity(topics.len());
    for topic in topics {
        type Row = (Option<u64>, Option<String>, Option<String>, Option<u8>);
        let (last_ms, expression, tz, fired): Row = redis::cmd("HMGET")
            .arg(keys::cron(&topic))
            .arg("last")
            .arg("cron")
            .arg("tz")
            .arg("fired")
            .query_async(conn)
            .await?;
        if let Some(expression) = expression {
            schedules.push(Stored {
                topic,
                expression,
                tz: tz.unwrap_or_else(|| "UTC".into()),
                last_ms: last_ms.filter(|_| fired.is_some()),
            });
        }
    }
    Ok(schedules)
}

//! Rate limits in Redis: one log per limit (`redisaq:{topic}:rate:{group}` for the group,
//! `…:rate:{group}:key:{key}` per job key), a sorted set of the starts within the last
//! period, scored by Redis' clock. A start is admitted only while every log it counts in
//! holds fewer than its limit, so no window of one period ever holds more starts than the
//! limit: no burst above the rate.

use std::time::Duration;

use redis::aio::ConnectionLike;

use super::scripts::lua_now;
use crate::error::Error;
use crate::keys;
use crate::rate::Rate;

/// Admits up to `ARGV[1]` starts against the logs `KEYS[k]` (limit `ARGV[2k]` per
/// `ARGV[2k+1]` ms). Answers how many it admitted, how long until another may start
/// (ms) if it admitted fewer, and which log refused (its index, 0 for none).
const TAKE: &str = concat!(
    lua_now!(),
    r"local granted = tonumber(ARGV[1])
local wait, refused = 0, 0
for k = 1, #KEYS do
  local limit, period = tonumber(ARGV[2 * k]), tonumber(ARGV[2 * k + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - period)
  local free = limit - redis.call('ZCARD', KEYS[k])
  if free < granted then
    granted = math.max(free, 0)
    refused = k
    local oldest = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    if oldest[2] then
      wait = math.max(wait, tonumber(oldest[2]) + period - now)
    end
  end
end
if granted > 0 then
  for k = 1, #KEYS do
    local n = redis.call('ZCARD', KEYS[k])
    for i = 1, granted do
      redis.call('ZADD', KEYS[k], now, now .. ':' .. (n + i))
    end
    redis.call('PEXPIRE', KEYS[k], tonumber(ARGV[2 * k + 1]))
  end
end
return {granted, wait, refused}
"
);

static TAKE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(TAKE));

/// Which limit refused a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Group,
    Key,
}

/// What [`take`] admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub granted: usize,
    /// When fewer were admitted than asked: how long until another may start, and which
    /// limit said no.
    pub refused: Option<(Duration, Refused)>,
}

/// Admits up to `want` starts of `group` (and of job key `key`, when both are given) on
/// `topic`.
pub(crate) async fn take(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    group_rate: Option<Rate>,
    key: Option<(&str, Rate)>,
    want: usize,
) -> Result<Taken, Error> {
    let mut invocation = TAKE_SCRIPT.prepare_invoke();
    invocation.arg(want);
    let mut kinds = Vec::with_capacity(2);
    if let Some(rate) = group_rate {
        invocation
            .key(keys::rate(topic, group))
            .arg(rate.limit)
            .arg(rate.period.as_millis() as u64);
        kinds.push(Refused::Group);
    }
    if let Some((key, rate)) = key {
        invocation
            .key(keys::key_rate(topic, group, key))
            .arg(rate.limit)
            .arg(rate.period.as_millis() as u64);
        kinds.push(Refused::Key);
    }
    if kinds.is_empty() {
        return Ok(Taken {
            granted: want,
            refused: None,
        });
    }
    let (granted, wait, refused): (usize, u64, usize) = invocation.invoke_async(conn).await?;
    Ok(Taken {
        granted,
        refused: refused
            .checked_sub(1)
            .and_then(|k| kinds.get(k))
            .map(|&kind| (Duration::from_millis(wait.max(1)), kind)),
    })
}

/// Records a group's limits in the topic's meta hash, for the tools.
pub(crate) async fn record(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    rate: Option<Rate>,
    key_rate: Option<Rate>,
) -> Result<(), Error> {
    let mut pipe = redis::pipe();
    for (field, rate) in [("rate", rate), ("key_rate", key_rate)] {
        let field = format!("{field}:{group}");
        match rate {
            Some(rate) => pipe.hset(keys::meta(topic), field, rate.to_string()),
            None => pipe.hdel(keys::meta(topic), field),
        };
        pipe.ignore();
    }
    let () = pipe.query_async(conn).await?;
    Ok(())
}

/// A group's recorded limits (`rate`, `key_rate`), and how many starts its group log
/// holds within the current period.
pub(crate) async fn status(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
) -> Result<(Option<Rate>, Option<Rate>, u64), Error> {
    let (rate, key_rate): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(keys::meta(topic))
        .arg(format!("rate:{group}"))
        .arg(format!("key_rate:{group}"))
        .query_async(conn)
        .await?;
    let rate = rate.and_then(|r| Rate::parse("rate", &r).ok());
    let key_rate = key_rate.and_then(|r| Rate::parse("key_rate", &r).ok());
    let used = match rate {
        Some(rate) => {
            let now_ms = super::server_ms(conn).await?;
            redis::cmd("ZCOUNT")
                .arg(keys::rate(topic, group))
                .arg(format!(
                    "({}",
                    now_ms.saturating_sub(rate.period.as_millis() as u64)
                ))
                .arg("+inf")
                .query_async(conn)
                .await?
        }
        None => 0,
    };
    Ok((rate, key_rate, used))
}

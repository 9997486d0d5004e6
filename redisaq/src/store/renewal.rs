//! One renewal of a worker's liveness: every consumer's heartbeat (answering its group's
//! live members) and every lease it holds, in one round trip. On one node with Redis 7
//! that is one script call for the whole worker, whatever its number of consumers, so an
//! idle worker costs Redis one `TIME` per interval, not one per consumer.

use std::sync::LazyLock;
use std::time::Duration;

use super::conn::Conn;
use super::members::{self, Live};
use super::scripts::{self, lua_now, Lua};
use super::{lease, Holding};
use crate::error::Error;
use crate::keys;

/// Renews `ARGV[2]` members (`KEYS[1..k]`, their names in `ARGV[4..]`) and then the
/// leases in the remaining keys (their tokens after the names) by `ARGV[1]` ms; with
/// `ARGV[3]` = 1 also forgets members dead for a day. Answers the server's time, each
/// member set's live members with their expiries, and per lease 1 (renewed) or 0 (not
/// ours). Sent only where it may run on a full Redis (script flags, Redis 7): there a
/// refused heartbeat cannot cost the leases, because nothing is refused.
const KEEP: &str = concat!(
    lua_now!(),
    r"local ttl = tonumber(ARGV[1])
local k = tonumber(ARGV[2])
local live = {}
for i = 1, k do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[3 + i])
  if ARGV[3] == '1' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - 86400000)
  end
  live[i] = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. now, '+inf', 'WITHSCORES')
end
local leases = {}
for j = k + 1, #KEYS do
  if redis.call('GET', KEYS[j]) == ARGV[3 + j] then
    redis.call('PEXPIRE', KEYS[j], ttl)
    leases[j - k] = 1
  else
    leases[j - k] = 0
  end
end
return {now, live, leases}
"
);

static KEEP_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::new(KEEP));

/// A consumer to renew: its membership and the holdings whose leases it renews.
pub(crate) struct Member<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub holdings: Vec<Holding>,
}

/// What a renewal found for one consumer: its group's live members (or why the heartbeat
/// failed), and per lease whether it is still ours (`Ok(false)`: someone else's now).
pub(crate) struct Renewal {
    pub heartbeat: Result<Live, Error>,
    pub leases: Vec<Result<bool, redis::RedisError>>,
}

/// Renews every member's heartbeat and leases by `ttl`, in one round trip: one script on
/// one node with Redis 7; else a pipeline in which each renewal counts alone (a refused
/// heartbeat must not cost the leases), the leases of a consumer in one call on one node
/// and one call each on a cluster (each lease is in a slot of its own).
pub(crate) async fn renew(
    conn: &mut Conn,
    members: &[Member<'_>],
    ttl: Duration,
    script_flags: bool,
    clean: bool,
) -> Result<Vec<Renewal>, Error> {
    if script_flags && !conn.is_cluster() {
        renew_in_one_script(conn, members, ttl, clean).await
    } else {
        renew_in_a_pipeline(conn, members, ttl, script_flags, clean).await
    }
}

async fn renew_in_one_script(
    conn: &mut Conn,
    members: &[Member<'_>],
    ttl: Duration,
    clean: bool,
) -> Result<Vec<Renewal>, Error> {
    let script = KEEP_SCRIPT.script(true);
    let mut keys: Vec<String> = members
        .iter()
        .map(|m| keys::members(m.topic, m.group))
        .collect();
    keys.extend(
        members
            .iter()
            .flat_map(|m| m.holdings.iter().map(|h| h.lease.clone())),
    );
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut cmd = scripts::evalsha(script, &keys);
    cmd.arg(ttl.as_millis() as u64)
        .arg(members.len())
        .arg(u8::from(clean));
    for member in members {
        cmd.arg(member.consumer);
    }
    for holding in members.iter().flat_map(|m| &m.holdings) {
        cmd.arg(&holding.token);
    }
    type Reply = (u64, Vec<Vec<(String, f64)>>, Vec<i64>);
    let (now_ms, live, renewed): Reply = scripts::query(conn, &cmd, script).await?;
    let leases: usize = members.iter().map(|m| m.holdings.len()).sum();
    if live.len() != members.len() || renewed.len() != leases {
        return Err(Error::from(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected answer to the renewal",
        ))));
    }
    let mut renewed = renewed.into_iter();
    Ok(members
        .iter()
        .zip(live)
        .map(|(member, live)| Renewal {
            heartbeat: Ok(Live::new(now_ms, live)),
            leases: renewed
                .by_ref()
                .take(member.holdings.len())
                .map(|r| Ok(r == 1))
                .collect(),
        })
        .collect())
}

async fn renew_in_a_pipeline(
    conn: &mut Conn,
    members: &[Member<'_>],
    ttl: Duration,
    script_flags: bool,
    clean: bool,
) -> Result<Vec<Renewal>, Error> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let together = !conn.is_cluster();
    let mut heartbeat_script = None;
    for member in members {
        let (heartbeat, script) = members::heartbeat_cmd(
            member.topic,
            member.group,
            member.consumer,
            ttl,
            script_flags,
            clean,
        );
        heartbeat_script = Some(script);
        pipe.add_command(heartbeat);
        if together && !member.holdings.is_empty() {
            pipe.add_command(lease::renew_all_cmd(&member.holdings, ttl));
        } else {
            for holding in &member.holdings {
                pipe.add_command(lease::renew_cmd(holding, ttl));
            }
        }
    }
    let mut loaded = vec![lease::renew_all_script(), lease::renew_script()];
    loaded.extend(heartbeat_script);
    let mut replies = scripts::query_pipeline(conn, &pipe, &loaded)
        .await?
        .into_iter();
    let mut next = || {
        replies.next().unwrap_or_else(|| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "fewer answers than renewals",
            )))
        })
    };
    let renewed = |v: redis::Value| Ok(redis::from_redis_value::<i64>(v)? == 1);
    let mut renewals = Vec::with_capacity(members.len());
    for member in members {
        let heartbeat = next().map_err(Error::from).and_then(members::parse_live);
        let count = member.holdings.len();
        let leases = if together && count > 0 {
            match next()
                .and_then(|answers| Ok(redis::from_redis_value::<Vec<redis::Value>>(answers)?))
            {
                Ok(answers) if answers.len() == count => answers.into_iter().map(renewed).collect(),
                Ok(_) => unexpected(count),
                Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
            }
        } else {
            (0..count).map(|_| next().and_then(renewed)).collect()
        };
        renewals.push(Renewal { heartbeat, leases });
    }
    Ok(renewals)
}

/// Every lease's outcome when the renewal's answer had the wrong shape: unknown, so the
/// keeper tries again.
fn unexpected(count: usize) -> Vec<Result<bool, redis::RedisError>> {
    (0..count)
        .map(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected answer to the lease renewal",
            )))
        })
        .collect()
}

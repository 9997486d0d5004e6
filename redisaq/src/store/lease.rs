//! Leases: fenced ownership of partitions. A consumer works on a partition only while it
//! holds the partition's lease (`redisaq:{topic:N}:lease:{group}`, value `consumer epoch`,
//! with the heartbeat TTL). Every acknowledgement and claim into the partition goes
//! through a script that first checks that token, so a consumer that lost the lease
//! (paused, cut off), or an earlier holding of the same consumer, cannot act on the
//! partition any more.

use super::conn::Conn;
use crate::store::scripts::{lua_fence, lua_now};
use std::time::Duration;

use std::sync::LazyLock;

use super::{scripts, Holding};
use crate::error::Error;

/// Takes the lease if it is free, or held by this consumer in an earlier holding (then
/// anew: a holding never resumes), with the next epoch of the partition's counter. The
/// counter never falls behind the server's clock in milliseconds, so epochs keep growing
/// even when Redis lost the counter (a restart without persistence). The lease's value
/// is the holder's token, `consumer epoch`. Answers the epoch, or 0.
///
/// A consumer taking the partition again stops being the one that handed it over
/// (`KEYS[3]`): whatever it leaves pending from now on may have run.
///
/// `PERSIST` (a no-op: the counter has no TTL) is its first write so that a full Redis
/// without script flags (6.2) runs it: there a script is refused only if its first
/// write is one a full Redis refuses, like `INCR`.
const ACQUIRE: &str = concat!(
    r"local owner = redis.call('GET', KEYS[1])
if owner and string.sub(owner, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then
  return 0
end
redis.call('PERSIST', KEYS[2])
local epoch = redis.call('INCR', KEYS[2])
",
    lua_now!(),
    r"if epoch < now then
  epoch = now
  redis.call('SET', KEYS[2], epoch)
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return epoch
"
);

static ACQUIRE_SCRIPT: std::sync::LazyLock<super::scripts::Lua> =
    std::sync::LazyLock::new(|| super::scripts::Lua::new(ACQUIRE));

/// Extends the lease if this holding still has it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// [`RENEW`] for every lease in `KEYS` (their tokens in `ARGV[2..]`, the TTL in
/// `ARGV[1]`): one call per renewal on one node, where all keys share a server.
const RENEW_ALL: &str = r"
local renewed = {}
for i, lease in ipairs(KEYS) do
  if redis.call('GET', lease) == ARGV[i + 1] then
    redis.call('PEXPIRE', lease, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
";

/// Gives the lease up if this holding still has it, recording its consumer `ARGV[2]` as
/// the one that handed the partition over (`KEYS[2]`). First the entries from `ARGV[4]`
/// on, whose calls the hand-over cancelled, are claimed by it again in group `ARGV[3]` of
/// stream `KEYS[3]`: that counts the attempt they had here. (One at a time, and an error
/// there, such as a group deleted meanwhile, does not keep the lease from going.)
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  for i = 4, #ARGV do
    redis.pcall('XCLAIM', KEYS[3], ARGV[3], ARGV[2], 0, ARGV[i])
  end
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
";
static RELEASE_SCRIPT: std::sync::LazyLock<super::scripts::Lua> =
    std::sync::LazyLock::new(|| super::scripts::Lua::new(RELEASE));

/// Runs `ARGV[2]` on the stream `KEYS[2]` with the remaining arguments, only while the
/// lease `KEYS[1]` holds the token `ARGV[1]`.
const FENCED: &str = concat!(
    lua_fence!(),
    r"return redis.call(ARGV[2], KEYS[2], unpack(ARGV, 3))
"
);

static FENCED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FENCED));
static RENEW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW));
static RENEW_ALL_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW_ALL));

/// The script behind [`fenced`], to load when Redis forgot it.
pub(crate) fn fenced_script() -> &'static redis::Script {
    &FENCED_SCRIPT
}

/// A stream command that runs only while the holding with `token` has `lease`; add the
/// command's arguments after the stream key. Send it with [`scripts::query`] or
/// [`scripts::query_pipeline`] and [`fenced_script`].
pub(crate) fn fenced(lease: &str, stream: &str, token: &str, command: &str) -> redis::Cmd {
    let mut cmd = scripts::evalsha(&FENCED_SCRIPT, &[lease, stream]);
    cmd.arg(token).arg(command);
    cmd
}

/// Whether an error says the lease was not held.
pub(crate) fn is_fenced(error: &redis::RedisError) -> bool {
    error.code() == Some("FENCED")
}

/// Takes the lease of a partition (see [`ACQUIRE`]); the new holding's epoch, or `None`
/// while someone else holds it.
pub(crate) async fn acquire(
    conn: &mut Conn,
    lease: &str,
    epoch_counter: &str,
    handed: &str,
    consumer: &str,
    ttl: Duration,
    script_flags: bool,
) -> Result<Option<u64>, Error> {
    // Allowed on a full Redis: a worker must be able to take its partitions to drain it.
    let script = ACQUIRE_SCRIPT.script(script_flags);
    if !conn.is_cluster() {
        let epoch: u64 = script
            .key(lease)
            .key(epoch_counter)
            .key(handed)
            .arg(consumer)
            .arg(ttl.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        return Ok((epoch > 0).then_some(epoch));
    }
    // On a cluster, masters fail over to replicas that may lack the latest writes: a
    // lease taken on a master that died before passing it on would be free again on
    // its replica, for someone else to take. So the lease is taken only once a replica
    // has it, or the master has none to wait for.
    let mut take = scripts::evalsha(script, &[lease, epoch_counter, handed]);
    take.arg(consumer).arg(ttl.as_millis() as u64);
    let mut pipe = redis::pipe();
    pipe.ignore_errors()
        .add_command(take)
        .cmd("WAIT")
        .arg(1)
        .arg(REPLICA_WAIT.as_millis() as u64);
    let mut replies = scripts::query_pipeline(conn, &pipe, &[script])
        .await?
        .into_iter();
    let mut next = || -> redis::RedisResult<i64> {
        Ok(redis::from_redis_value(
            replies.next().expect("one reply per command")?,
        )?)
    };
    let epoch = next()? as u64;
    let confirmed = next()?;
    if epoch > 0 && confirmed == 0 {
        tracing::debug!(
            lease,
            "no replica confirmed the lease within {} ms (the master may have none)",
            REPLICA_WAIT.as_millis()
        );
    }
    Ok((epoch > 0).then_some(epoch))
}

/// How long taking a lease on a cluster waits for a replica to have it. Spent in full
/// only on a master without replicas.
const REPLICA_WAIT: Duration = Duration::from_millis(100);

/// Gives the lease up so the next owner can start at once, recording the holding's
/// consumer as the one that handed the partition over (at `handed`), after counting the
/// attempt of the `abandoned` entries (whose calls the hand-over cancelled). False if the
/// holding had lost the lease: then nothing was done.
pub(crate) async fn release(
    conn: &mut Conn,
    holding: &Holding,
    handed: &str,
    consumer: &str,
    abandoned: &[String],
    script_flags: bool,
) -> Result<bool, Error> {
    // Allowed on a full Redis: the next owner must be able to take the partition.
    let released: i64 = RELEASE_SCRIPT
        .script(script_flags)
        .key(&holding.lease)
        .key(handed)
        .key(&holding.stream)
        .arg(&holding.token)
        .arg(consumer)
        .arg(&holding.group)
        .arg(abandoned)
        .invoke_async(conn)
        .await?;
    Ok(released == 1)
}

/// The consumer that last handed a partition over (see [`release`]), unless it has taken
/// the partition again since.
pub(crate) async fn handed_over(
    conn: &mut impl redis::aio::ConnectionLike,
    handed: &str,
) -> Result<Option<String>, Error> {
    Ok(redis::cmd("GET").arg(handed).query_async(conn).await?)
}

/// [`RENEW`] of one holding, for a renewal pipeline.
pub(crate) fn renew_cmd(holding: &Holding, ttl: Duration) -> redis::Cmd {
    let mut cmd = scripts::evalsha(&RENEW_SCRIPT, &[&holding.lease]);
    cmd.arg(&holding.token).arg(ttl.as_millis() as u64);
    cmd
}

/// [`RENEW_ALL`] of holdings on one node, for a renewal pipeline.
pub(crate) fn renew_all_cmd(holdings: &[Holding], ttl: Duration) -> redis::Cmd {
    let leases: Vec<&str> = holdings.iter().map(|h| h.lease.as_str()).collect();
    let mut cmd = scripts::evalsha(&RENEW_ALL_SCRIPT, &leases);
    cmd.arg(ttl.as_millis() as u64);
    for holding in holdings {
        cmd.arg(&holding.token);
    }
    cmd
}

/// The scripts behind [`renew_cmd`] and [`renew_all_cmd`], to load when Redis forgot them.
pub(crate) fn renew_script() -> &'static redis::Script {
    &RENEW_SCRIPT
}

pub(crate) fn renew_all_script() -> &'static redis::Script {
    &RENEW_ALL_SCRIPT
}

/// Who holds a partition's lease for a group (`consumer epoch`), if anyone.
pub(crate) async fn holder(
    conn: &mut impl redis::aio::ConnectionLike,
    lease: &str,
) -> Result<Option<String>, Error> {
    Ok(redis::cmd("GET").arg(lease).query_async(conn).await?)
}

//! Consumer-group operations on one partition stream.

use redis::aio::ConnectionLike;

use crate::error::Error;
use crate::keys;

/// Deletes `ARGV[2]` from group `ARGV[1]` of stream `KEYS[1]` only if it has nothing
/// pending there, in one step: a read landing between a check and a separate delete
/// would be deleted with the consumer, behind the group's read position, and lost.
/// Answers 1 (deleted), 0 (holds entries: kept) or -1 (no such group there). (The no-op
/// `PERSIST` lets it run on a full Redis without script flags, see `store::lease::ACQUIRE`.)
const DELETE_IF_IDLE: &str = r"
local held = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if held.err then
  return -1
end
if #held > 0 then
  return 0
end
redis.call('PERSIST', KEYS[1])
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";
static DELETE_IF_IDLE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(DELETE_IF_IDLE));

/// Creates `group` on `stream` (and the stream), reading from its oldest entry; a group
/// that exists is left as it is.
pub(crate) async fn create(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<(), Error> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .exec_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
        _ => Ok(()),
    }
}

/// What [`remove_consumer_if_idle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    Removed,
    /// It still holds entries there.
    Kept,
}

/// Removes `consumer` from `group` on `stream` unless it holds entries there.
pub(crate) async fn remove_consumer_if_idle(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<Removal, Error> {
    let outcome: i64 = DELETE_IF_IDLE_SCRIPT
        .key(stream)
        .arg(group)
        .arg(consumer)
        .invoke_async(conn)
        .await?;
    Ok(if outcome == 0 {
        Removal::Kept
    } else {
        Removal::Removed
    })
}

/// Creates the group on every partition (from the oldest retained entry, so a new group
/// reconsumes what is there) and the streams if they do not exist yet.
pub(crate) async fn create_on_partitions(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    partitions: u32,
) -> Result<(), Error> {
    // Look first, create only what is missing: on a full Redis `XGROUP CREATE` is
    // refused even where the group exists, and a worker must start there all the same.
    let mut look = redis::pipe();
    look.ignore_errors();
    for partition in 0..partitions {
        look.cmd("XINFO")
            .arg("GROUPS")
            .arg(keys::partition(topic, partition));
    }
    let found: Vec<redis::RedisResult<redis::streams::StreamInfoGroupsReply>> =
        look.query_async(conn).await?;
    for (partition, groups) in (0..partitions).zip(found) {
        if groups.is_ok_and(|g| g.groups.iter().any(|g| g.name == group)) {
            continue;
        }
        create(conn, &keys::partition(topic, partition), group).await?;
    }
    Ok(())
}

/// Tells the tools which partitions `consumer` cannot hand over (calls there ignore
/// cancellation), for `ttl`; `None` clears it. `redisaq monitor` shows it `STUCK`.
pub(crate) async fn mark_stuck(
    conn: &mut impl ConnectionLike,
    key: &str,
    partitions: Option<(&[u32], std::time::Duration)>,
) -> Result<(), Error> {
    match partitions {
        None => redis::cmd("DEL").arg(key).exec_async(conn).await?,
        Some((partitions, ttl)) => {
            let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
            redis::cmd("SET")
                .arg(key)
                .arg(list.join(","))
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .exec_async(conn)
                .await?
        }
    }
    Ok(())
}

/// Which of `consumers` of a group are marked stuck (see [`mark_stuck`]).
pub(crate) async fn stuck(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    consumers: &[&str],
) -> Result<Vec<bool>, Error> {
    if consumers.is_empty() {
        return Ok(Vec::new());
    }
    let mut look = redis::pipe();
    for name in consumers {
        look.cmd("EXISTS").arg(keys::stuck(topic, group, name));
    }
    Ok(look.query_async(conn).await?)
}

//! A topic's settings in Redis (`partitions`, `maxlen` and `layout` in
//! `redisaq:{topic}:meta`), so producers and workers agree on them. The first producer or
//! worker to touch a topic stores what its `#[job]` declared; after that the stored
//! values win.
//!
//! `layout` is the version of how the topic is kept in Redis. 1 (no `layout` field): dead
//! letters in one stream per topic. 2: dead letters per partition, entries that may name
//! the one group that runs them. A program meeting a newer layout refuses to touch the
//! topic; `redisaq migrate` brings older ones up to date.

use redis::aio::ConnectionLike;

use crate::error::Error;
use crate::keys;
use crate::registry::TopicSpec;

/// The settings of a topic as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    pub partitions: u32,
    pub maxlen: u64,
}

/// The newest layout this version knows (see the module documentation).
pub(crate) const LAYOUT: u32 = 2;

/// Refuses a topic stored in a layout newer than this version knows.
pub(crate) fn check_layout(topic: &str, layout: Option<u32>) -> Result<(), Error> {
    match layout {
        Some(found) if found > LAYOUT => Err(Error::Layout {
            topic: topic.into(),
            found,
            known: LAYOUT,
        }),
        _ => Ok(()),
    }
}

/// Stores the declared settings if the topic is new, and returns the stored ones.
pub(crate) async fn ensure(
    conn: &mut impl ConnectionLike,
    spec: &TopicSpec,
) -> Result<TopicInfo, Error> {
    let meta = keys::meta(spec.topic);
    // Read first, write only what is missing: on a full Redis every write is refused,
    // even one that would change nothing, and a known topic must still work.
    let (partitions, maxlen, layout, listed): (Option<u32>, Option<u64>, Option<u32>, bool) =
        redis::pipe()
            .hget(&meta, "partitions")
            .hget(&meta, "maxlen")
            .hget(&meta, "layout")
            .sismember(keys::topics(), spec.topic)
            .query_async(conn)
            .await?;
    check_layout(spec.topic, layout)?;
    if partitions.is_some() && maxlen.is_some() && listed {
        if layout.is_none() {
            warn_if_layout_1(conn, spec.topic).await;
        }
        return Ok(TopicInfo {
            partitions: partitions.filter(|&p| p > 0).unwrap_or(spec.partitions()),
            maxlen: maxlen.unwrap_or(spec.maxlen()),
        });
    }
    // The record may be gone while the streams are not (a restart without persistence
    // of some keys, eviction, a DEL): never fall back below the partitions that exist,
    // or the raised ones would never be assigned again.
    let existing = existing_partitions(conn, spec.topic, spec.partitions()).await?;
    let mut write = redis::pipe();
    if partitions.is_none() {
        // A new topic starts in the newest layout; a known one keeps its own until
        // `redisaq migrate` moves it on.
        write.hset_nx(&meta, "layout", LAYOUT).ignore();
    }
    let (partitions, maxlen): (Option<u32>, Option<u64>) = write
        .hset_nx(&meta, "partitions", spec.partitions().max(existing))
        .ignore()
        .hset_nx(&meta, "maxlen", spec.maxlen())
        .ignore()
        .sadd(keys::topics(), spec.topic)
        .ignore()
        .hget(&meta, "partitions")
        .hget(&meta, "maxlen")
        .query_async(conn)
        .await?;
    Ok(TopicInfo {
        partitions: partitions.filter(|&p| p > 0).unwrap_or(spec.partitions()),
        maxlen: maxlen.unwrap_or(spec.maxlen()),
    })
}

/// Layout 1 kept dead letters in one stream per topic: this version reads them, and
/// `redisaq migrate` moves them where this version writes new ones.
async fn warn_if_layout_1(conn: &mut impl ConnectionLike, topic: &str) {
    let old: Result<u64, _> = redis::cmd("XLEN")
        .arg(keys::legacy_dead_letters(topic))
        .query_async(conn)
        .await;
    if let Ok(count @ 1..) = old {
        tracing::warn!(
            topic,
            "topic {topic} keeps {count} dead letter(s) in layout 1's place; run `redisaq \
             migrate` to move them beside their partitions"
        );
    }
}

/// Moves a topic to the newest layout: dead letters of layout 1 into their partitions'
/// streams. Returns how many dead letters were moved. Safe to run again, and while
/// workers run.
pub(crate) async fn migrate(
    conn: &mut (impl ConnectionLike + Send),
    topic: &str,
) -> Result<u64, Error> {
    let meta = keys::meta(topic);
    let (partitions, layout): (Option<u32>, Option<u32>) = redis::pipe()
        .hget(&meta, "partitions")
        .hget(&meta, "layout")
        .query_async(conn)
        .await?;
    check_layout(topic, layout)?;
    let Some(partitions) = partitions else {
        return Err(Error::UnknownTopic(topic.into()));
    };
    let moved = crate::store::dlq::migrate(conn, topic, partitions).await?;
    redis::cmd("HSET")
        .arg(&meta)
        .arg("layout")
        .arg(LAYOUT)
        .exec_async(conn)
        .await?;
    Ok(moved)
}

/// How many partition streams exist: `declared` or more, counting up while the next one
/// exists.
async fn existing_partitions(
    conn: &mut impl ConnectionLike,
    topic: &str,
    declared: u32,
) -> Result<u32, Error> {
    let mut count = 0;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys::partition(topic, count))
            .query_async(conn)
            .await?;
        if !exists && count >= declared {
            return Ok(count);
        }
        count += 1;
        if count > 100_000 {
            return Ok(count); // a guard, far above any real partition count
        }
    }
}

const RAISE_PARTITIONS: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'partitions') or '0')
local wanted = tonumber(ARGV[1])
if wanted < current then
  return redis.error_reply('LOWER ' .. current)
end
redis.call('HSET', KEYS[1], 'partitions', wanted)
return current
";
static RAISE_PARTITIONS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RAISE_PARTITIONS));

/// Raises a topic's partition count on a given connection; returns the previous count
/// (see [`crate::set_partitions`]).
pub(crate) async fn raise(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partitions: u32,
) -> Result<u32, Error> {
    if partitions == 0 {
        return Err(Error::Partitions(format!(
            "topic `{topic}` needs at least 1 partition"
        )));
    }
    let previous: Result<u32, redis::RedisError> = RAISE_PARTITIONS_SCRIPT
        .key(keys::meta(topic))
        .arg(partitions)
        .invoke_async(conn)
        .await;
    match previous {
        Ok(previous) => {
            redis::cmd("SADD")
                .arg(keys::topics())
                .arg(topic)
                .exec_async(conn)
                .await?;
            spread_groups(conn, topic, previous, partitions).await?;
            if previous < partitions {
                // Only a hint: the workers see the raise within a heartbeat interval anyway.
                if let Err(e) = super::changes::announce(conn, topic).await {
                    tracing::debug!(topic, error = %e, "could not publish the change hint");
                }
            }
            Ok(previous)
        }
        Err(e) if e.code() == Some("LOWER") => Err(Error::Partitions(format!(
            "cannot lower topic `{topic}` from {} to {partitions} partitions: partition counts \
             can only be raised (jobs in the removed partitions would be stranded)",
            e.detail().unwrap_or("?")
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Creates every group the topic's first `old` partitions have on partitions `old..new`
/// (reading from their start). A group whose workers are all offline when partitions are
/// raised must exist on the new streams at once: without it, the other groups' owners
/// would trim those streams past the jobs it has not read.
pub(crate) async fn spread_groups(
    conn: &mut impl ConnectionLike,
    topic: &str,
    old: u32,
    new: u32,
) -> Result<(), Error> {
    if new <= old {
        return Ok(());
    }
    let mut groups = std::collections::BTreeSet::new();
    for partition in 0..old {
        let info: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(keys::partition(topic, partition))
            .query_async(conn)
            .await;
        match info {
            Ok(info) => groups.extend(info.groups.into_iter().map(|g| g.name)),
            // A partition stream that does not exist (yet) has no groups.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for group in groups {
        for partition in old..new {
            crate::store::group::create(conn, &keys::partition(topic, partition), &group).await?;
        }
    }
    Ok(())
}

/// A topic's stored partition count, if the topic exists.
pub(crate) async fn partitions(
    conn: &mut impl ConnectionLike,
    topic: &str,
) -> Result<Option<u32>, Error> {
    Ok(redis::cmd("HGET")
        .arg(keys::meta(topic))
        .arg("partitions")
        .query_async(conn)
        .await?)
}

/// The names of all topics, sorted.
pub(crate) async fn names(conn: &mut impl ConnectionLike) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::topics())
        .query_async(conn)
        .await?;
    names.sort();
    Ok(names)
}

/// The meta field that pauses `group`, or the whole topic.
fn pause_field(group: Option<&str>) -> String {
    match group {
        Some(group) => format!("paused:{group}"),
        None => "paused".to_string(),
    }
}

/// Pauses (or resumes) `topic`, or only `group` on it: recorded in the topic's meta hash,
/// which every consumer's coordinator reads each heartbeat interval, and announced so
/// they follow at once.
pub(crate) async fn set_paused(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: Option<&str>,
    paused: bool,
) -> Result<(), Error> {
    let field = pause_field(group);
    let cmd = if paused {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(keys::meta(topic)).arg(field).arg(1);
        cmd
    } else {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(keys::meta(topic)).arg(field);
        cmd
    };
    let _: i64 = cmd.query_async(conn).await?;
    super::changes::announce(conn, topic).await
}

/// What is paused on `topic`: the whole topic, and which groups.
pub(crate) async fn paused(
    conn: &mut impl ConnectionLike,
    topic: &str,
) -> Result<(bool, Vec<String>), Error> {
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(keys::meta(topic))
        .query_async(conn)
        .await?;
    let whole = fields.iter().any(|f| f == "paused");
    let mut groups: Vec<String> = fields
        .iter()
        .filter_map(|f| f.strip_prefix("paused:"))
        .map(str::to_string)
        .collect();
    groups.sort_unstable();
    Ok((whole, groups))
}

//! A group's stored assignment (`redisaq:{topic}:assignment:{group}`): who owns which
//! partition, in which generation. Computing the next one is the consumer's business
//! (`consumer/assignment.rs`); reading it and writing it with a compare-and-set is here.

use redis::aio::ConnectionLike;

use crate::error::Error;
use crate::keys;

/// The stored assignment of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub generation: u64,
    /// Sorted names of the members it was computed for.
    pub members: Vec<String>,
    /// Owner of each partition, by partition number.
    pub owners: Vec<String>,
}

/// Writes `owners` as generation `expected + 1` if the stored generation is still
/// `expected`; returns the generation now stored either way. (The no-op `PERSIST` lets it
/// run on a full Redis without script flags, see `store::lease::ACQUIRE`.)
const COMPARE_AND_SET: &str = r"
local generation = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if generation ~= tonumber(ARGV[1]) then
  return {0, generation}
end
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'generation', generation + 1, 'members', ARGV[2], 'owners', ARGV[3])
return {1, generation + 1}
";

static COMPARE_AND_SET_SCRIPT: std::sync::LazyLock<super::scripts::Lua> =
    std::sync::LazyLock::new(|| super::scripts::Lua::new(COMPARE_AND_SET));

/// Reads the stored assignment (generation 0 and nothing else when there is none).
pub(crate) async fn load(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
) -> Result<Assignment, Error> {
    let (generation, members, owners): (Option<u64>, Option<String>, Option<String>) =
        redis::cmd("HMGET")
            .arg(keys::assignment(topic, group))
            .arg(&["generation", "members", "owners"])
            .query_async(conn)
            .await?;
    Ok(from_fields(
        generation,
        members.as_deref(),
        owners.as_deref(),
    ))
}

/// An assignment from its stored fields (missing or unreadable ones as empty).
pub(crate) fn from_fields(
    generation: Option<u64>,
    members: Option<&str>,
    owners: Option<&str>,
) -> Assignment {
    let list = |text: Option<&str>| -> Vec<String> {
        text.and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    };
    Assignment {
        generation: generation.unwrap_or(0),
        members: list(members),
        owners: list(owners),
    }
}

/// Writes `owners` (computed for `members`) as the generation after `expected`, unless
/// the stored generation moved on. Returns whether this call wrote it. Allowed on a full
/// Redis: workers starting there must get partitions to drain it.
pub(crate) async fn compare_and_set(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    expected: u64,
    members: &[String],
    owners: &[String],
    script_flags: bool,
) -> Result<bool, Error> {
    let (written, _generation): (i64, u64) = COMPARE_AND_SET_SCRIPT
        .script(script_flags)
        .key(keys::assignment(topic, group))
        .arg(expected)
        .arg(serde_json::to_string(members)?)
        .arg(serde_json::to_string(owners)?)
        .invoke_async(conn)
        .await?;
    Ok(written == 1)
}

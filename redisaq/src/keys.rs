//! Every Redis key redisaq uses is built here, and nowhere else.
//!
//! All keys start with `redisaq:`. A topic's keys share the hash tag `{topic}`, and each
//! partition's keys share `{topic:N}`, so in Redis Cluster partitions spread over shards
//! while no command or script touches two slots.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `redisaq:topics` | set | names of all topics |
//! | `redisaq:{topic}:meta` | hash | `partitions`, `maxlen`, `layout` |
//! | `redisaq:{topic:N}` | stream | the jobs of partition `N`; one consumer group per handler group |
//! | `redisaq:{topic:N}:dlq` | stream | dead-lettered jobs of partition `N`, all groups |
//! | `redisaq:{topic}:dlq` | stream | layout 1's dead letters (one stream per topic); `redisaq migrate` moves them |
//! | `redisaq:{topic}:members:{group}` | sorted set | live consumers of a group, scored by heartbeat expiry (ms) |
//! | `redisaq:{topic}:assignment:{group}` | hash | `generation`, `members`, `owners` (JSON lists; owner by partition) |
//! | `redisaq:{topic}:stuck:{group}:{consumer}` | string | partitions whose hand-over waits for calls that ignore cancellation (with a TTL; `redisaq monitor` shows `STUCK`) |
//! | `redisaq:{topic:N}:lease:{group}` | string | the consumer that owns partition `N` for the group, with a TTL |
//! | `redisaq:{topic:N}:due:{group}` | sorted set | entries of partition `N` pending in the group that wait to run again (a retry's backoff), scored by when they are due (ms) |
//! | `redisaq:{topic:N}:replayed` | set | dead-letter ids already put back into partition `N` (expires after 7 days) |

/// Prefix of every key.
pub const PREFIX: &str = "redisaq";

/// The set of all topic names.
pub fn topics() -> String {
    format!("{PREFIX}:topics")
}

/// The hash with a topic's settings (`partitions`, `maxlen`).
pub fn meta(topic: &str) -> String {
    format!("{PREFIX}:{{{topic}}}:meta")
}

/// The stream of one partition of a topic.
pub fn partition(topic: &str, partition: u32) -> String {
    format!("{PREFIX}:{{{topic}:{partition}}}")
}

/// The dead-letter stream of one partition of a topic.
pub fn dead_letters(topic: &str, partition: u32) -> String {
    format!("{PREFIX}:{{{topic}:{partition}}}:dlq")
}

/// Where layout 1 kept a topic's dead letters (one stream per topic).
pub fn legacy_dead_letters(topic: &str) -> String {
    format!("{PREFIX}:{{{topic}}}:dlq")
}

/// Layout-1 dead-letter ids already moved into partition `N`'s stream, so a migration
/// that is run again moves each once (expires after 7 days).
pub fn migrated(topic: &str, partition: u32) -> String {
    format!("{PREFIX}:{{{topic}:{partition}}}:migrated")
}

/// The sorted set of a group's live consumers, scored by heartbeat expiry.
pub fn members(topic: &str, group: &str) -> String {
    format!("{PREFIX}:{{{topic}}}:members:{group}")
}

/// The hash with a group's current partition assignment.
pub fn assignment(topic: &str, group: &str) -> String {
    format!("{PREFIX}:{{{topic}}}:assignment:{group}")
}

/// Set while a consumer cannot hand partitions over because calls there ignore
/// cancellation: what `redisaq monitor` shows as `STUCK`.
pub fn stuck(topic: &str, group: &str, consumer: &str) -> String {
    format!("{PREFIX}:{{{topic}}}:stuck:{group}:{consumer}")
}

/// The lease that fences a group's ownership of one partition.
pub fn lease(topic: &str, partition: u32, group: &str) -> String {
    format!("{PREFIX}:{{{topic}:{partition}}}:lease:{group}")
}

/// The counter of a group's lease acquisitions on one partition: each holding's epoch.
pub fn epoch(topic: &str, partition: u32, group: &str) -> String {
    format!("{PREFIX}:{{{topic}:{partition}}}:epoch:{group}")
}

/// A lease's value while `consumer` holds it with `epoch`: what every fenced script
/// compares, so a command of an earlier holding fails even after the same consumer took
/// the partition again.
pub(crate) fn lease_token(consumer: &str, epoch: u64) -> String {
    format!("{consumer} {epoch}")
}

/// The consumer named in a lease's value.
pub(crate) fn lease_holder(value: &str) -> &str {
    value
        .rsplit_once(' ')
        .map_or(value, |(consumer, _)| consumer)
}

/// Entries of one partition pending in a group that wait to run again, scored by when
/// they are due.
pub fn due(topic: &str, partition: u32, group: &str) -> String {
    format!("{PREFIX}:{{{topic}:{partition}}}:due:{group}")
}

/// Dead-letter ids already replayed into one partition, so a replay runs once.
pub fn replayed(topic: &str, partition: u32) -> String {
    format!("{PREFIX}:{{{topic}:{partition}}}:replayed")
}

/// The partition number of a partition stream key, if it is one of `topic`'s.
pub fn partition_of(topic: &str, key: &str) -> Option<u32> {
    key.strip_prefix(PREFIX)?
        .strip_prefix(":{")?
        .strip_prefix(topic)?
        .strip_prefix(':')?
        .strip_suffix('}')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_round_trip() {
        let key = partition("send_email", 3);
        assert_eq!(key, "redisaq:{send_email:3}");
        assert_eq!(partition_of("send_email", &key), Some(3));
        assert_eq!(partition_of("send", &key), None);
        assert_eq!(
            partition_of("send_email", &dead_letters("send_email", 3)),
            None
        );
        assert_eq!(
            partition_of("send_email", &legacy_dead_letters("send_email")),
            None
        );
    }
}

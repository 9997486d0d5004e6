//! Every Redis key redisaq uses is built here, and nowhere else.
//!
//! All keys start with the prefix (`REDISAQ_PREFIX`, default `redisaq`, as below) and a
//! colon. A topic's keys share the hash tag `{topic}`, and each partition's keys share
//! `{topic:N}`, so in Redis Cluster partitions spread over shards while no command or
//! script touches two slots.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `redisaq:topics` | set | names of all topics |
//! | `redisaq:{topic}:meta` | hash | `partitions`, `maxlen`, `layout`; `paused` and `paused:{group}` while paused; `rate:{group}`, `key_rate:{group}` as the workers declare them |
//! | `redisaq:{topic:N}` | stream | the jobs of partition `N`; one consumer group per handler group |
//! | `redisaq:{topic:N}:dlq` | stream | dead-lettered jobs of partition `N`, all groups |
//! | `redisaq:{topic}:dlq` | stream | layout 1's dead letters (one stream per topic); `redisaq migrate` moves them |
//! | `redisaq:{topic}:members:{group}` | sorted set | live consumers of a group, scored by heartbeat expiry (ms) |
//! | `redisaq:{topic}:assignment:{group}` | hash | `generation`, `members`, `owners` (JSON lists; owner by partition) |
//! | `redisaq:{topic}:stuck:{group}:{consumer}` | string | partitions whose hand-over waits for calls that ignore cancellation (with a TTL; `redisaq monitor` shows `STUCK`) |
//! | `redisaq:{topic:N}:lease:{group}` | string | the consumer that owns partition `N` for the group, with a TTL |
//! | `redisaq:{topic:N}:epoch:{group}` | string | the counter of the group's holdings of partition `N`: each lease's epoch |
//! | `redisaq:{topic:N}:handed:{group}` | string | the consumer that last handed partition `N` over in the group (released it, not crashed); deleted when it takes the partition again |
//! | `redisaq:{topic:N}:due:{group}` | sorted set | entries of partition `N` pending in the group that wait to run again (a retry's backoff), scored by when they are due (ms) |
//! | `redisaq:{topic:N}:replayed` | set | dead-letter ids already put back into partition `N` (expires after 7 days) |
//! | `redisaq:{topic:N}:delayed` | sorted set | delayed jobs of partition `N` (job id), scored by when they are due (ms) |
//! | `redisaq:{topic:N}:delayed:jobs` | hash | job id → the delayed job's entry fields (a JSON list) |
//! | `redisaq:{topic}:rate:{group}` | sorted set | the group's job starts within the last period of its `rate` (Redis ms), with a TTL of one period |
//! | `redisaq:{topic}:rate:{group}:key:{key}` | sorted set | the same per job key, for `key_rate` |
//! | `redisaq:schedules` | set | names of topics with a cron schedule |
//! | `redisaq:{topic:0}:cron` | hash | the topic's cron schedule: `cron`, `tz`, `last` (the last fire time enqueued, ms) |
//! | `redisaq:{topic:N}:ids` | sorted set | ids given with `EnqueueOptions::id`, scored by their first enqueue (ms), kept for the dedupe window |

use std::sync::OnceLock;

/// The first part of every key unless `REDISAQ_PREFIX` says otherwise.
pub const DEFAULT_PREFIX: &str = "redisaq";

/// The first part of every key: `REDISAQ_PREFIX` (read once per process), or
/// [`DEFAULT_PREFIX`]. Several apps or environments can share a Redis under different
/// prefixes, and ACL key patterns (`~myapp:*`) can scope them.
pub fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        std::env::var("REDISAQ_PREFIX")
            .ok()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string())
    })
}

/// Refuses a prefix that would break the key layout; every connection checks it first.
pub(crate) fn check_prefix() -> Result<(), String> {
    let prefix = prefix();
    if prefix.contains(['{', '}']) || prefix.chars().any(char::is_whitespace) {
        return Err(format!(
            "REDISAQ_PREFIX={prefix:?} is not valid: it may not contain braces (they make \
             Redis Cluster hash tags) or spaces; e.g. REDISAQ_PREFIX=myapp"
        ));
    }
    Ok(())
}

/// The set of all topic names.
pub fn topics() -> String {
    format!("{}:topics", prefix())
}

/// The pub/sub channel that tells a topic's consumers to look at their groups again (see
/// `store::changes`). A channel, not a key.
pub fn changes(topic: &str) -> String {
    format!("{}:changes:{topic}", prefix())
}

/// The hash with a topic's settings (`partitions`, `maxlen`).
pub fn meta(topic: &str) -> String {
    format!("{}:{{{topic}}}:meta", prefix())
}

/// The stream of one partition of a topic.
pub fn partition(topic: &str, partition: u32) -> String {
    format!("{}:{{{topic}:{partition}}}", prefix())
}

/// The dead-letter stream of one partition of a topic.
pub fn dead_letters(topic: &str, partition: u32) -> String {
    format!("{}:{{{topic}:{partition}}}:dlq", prefix())
}

/// Where layout 1 kept a topic's dead letters (one stream per topic).
pub fn legacy_dead_letters(topic: &str) -> String {
    format!("{}:{{{topic}}}:dlq", prefix())
}

/// Layout-1 dead-letter ids already moved into partition `N`'s stream, so a migration
/// that is run again moves each once (expires after 7 days).
pub fn migrated(topic: &str, partition: u32) -> String {
    format!("{}:{{{topic}:{partition}}}:migrated", prefix())
}

/// The sorted set of a group's live consumers, scored by heartbeat expiry.
pub fn members(topic: &str, group: &str) -> String {
    format!("{}:{{{topic}}}:members:{group}", prefix())
}

/// The hash with a group's current partition assignment.
pub fn assignment(topic: &str, group: &str) -> String {
    format!("{}:{{{topic}}}:assignment:{group}", prefix())
}

/// Set while a consumer cannot hand partitions over because calls there ignore
/// cancellation: what `redisaq monitor` shows as `STUCK`.
pub fn stuck(topic: &str, group: &str, consumer: &str) -> String {
    format!("{}:{{{topic}}}:stuck:{group}:{consumer}", prefix())
}

/// The lease that fences a group's ownership of one partition.
pub fn lease(topic: &str, partition: u32, group: &str) -> String {
    format!("{}:{{{topic}:{partition}}}:lease:{group}", prefix())
}

/// The counter of a group's lease acquisitions on one partition: each holding's epoch.
pub fn epoch(topic: &str, partition: u32, group: &str) -> String {
    format!("{}:{{{topic}:{partition}}}:epoch:{group}", prefix())
}

/// The consumer that last gave a group's lease of one partition up in a hand-over (not
/// by crashing or losing it): what it still has pending there it never ran to the end,
/// so the next owner does not count those as attempts.
pub fn handed_over(topic: &str, partition: u32, group: &str) -> String {
    format!("{}:{{{topic}:{partition}}}:handed:{group}", prefix())
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
    format!("{}:{{{topic}:{partition}}}:due:{group}", prefix())
}

/// Dead-letter ids already replayed into one partition, so a replay runs once.
pub fn replayed(topic: &str, partition: u32) -> String {
    format!("{}:{{{topic}:{partition}}}:replayed", prefix())
}

/// A group's job starts within the last period of its rate limit.
pub fn rate(topic: &str, group: &str) -> String {
    format!("{}:{{{topic}}}:rate:{group}", prefix())
}

/// A group's starts of jobs with key `key` within the last period of its key rate.
pub fn key_rate(topic: &str, group: &str, key: &str) -> String {
    format!("{}:{{{topic}}}:rate:{group}:key:{key}", prefix())
}

/// The set of topics with a cron schedule.
pub fn schedules() -> String {
    format!("{}:schedules", prefix())
}

/// A topic's cron schedule, beside partition 0's stream (its jobs go there).
pub fn cron(topic: &str) -> String {
    format!("{}:{{{topic}:0}}:cron", prefix())
}

/// Delayed jobs of one partition, scored by when they are due.
pub fn delayed(topic: &str, partition: u32) -> String {
    format!("{}:{{{topic}:{partition}}}:delayed", prefix())
}

/// The entry fields of one partition's delayed jobs, by job id.
pub fn delayed_jobs(topic: &str, partition: u32) -> String {
    format!("{}:{{{topic}:{partition}}}:delayed:jobs", prefix())
}

/// Ids given to one partition's jobs (`EnqueueOptions::id`), scored by their first
/// enqueue: what makes enqueueing one again store nothing.
pub fn ids(topic: &str, partition: u32) -> String {
    format!("{}:{{{topic}:{partition}}}:ids", prefix())
}

/// The partition number of a partition stream key, if it is one of `topic`'s.
pub fn partition_of(topic: &str, key: &str) -> Option<u32> {
    key.strip_prefix(prefix())?
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

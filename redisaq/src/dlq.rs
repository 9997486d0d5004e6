//! The dead-letter queue: one stream per topic (`redisaq:{topic}:dlq`) holding jobs that
//! failed for good, with their payload, error text, attempts, topic, group, partition and
//! original id.

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::error::Error;
use crate::keys;
use crate::wire::DeadLetter;

/// Writes a dead-letter entry. The caller acknowledges the job only after this returned
/// Ok, so a crash in between dead-letters it twice rather than losing it.
pub(crate) async fn write(
    conn: &mut impl ConnectionLike,
    letter: &DeadLetter<'_>,
) -> Result<String, Error> {
    let id: String = redis::cmd("XADD")
        .arg(keys::dead_letters(letter.topic))
        .arg("*")
        .arg(letter.fields())
        .query_async(conn)
        .await?;
    Ok(id)
}

/// A dead-lettered job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterEntry {
    /// The entry's id in the dead-letter stream.
    pub dead_letter_id: String,
    /// The job's id (what `enqueue` returned), or the stream entry id of an entry that was
    /// not a job at all.
    pub id: String,
    /// The topic.
    pub topic: String,
    /// The group whose handler gave up on it.
    pub group: String,
    /// The partition it was in.
    pub partition: u32,
    /// Attempts made.
    pub attempts: u32,
    /// The last error's text.
    pub error: String,
    /// The payload as enqueued (JSON), or the raw fields of an undecodable entry.
    pub payload: String,
    /// The id of the original stream entry.
    pub entry_id: String,
    /// When it was dead-lettered (Unix ms).
    pub failed_at_ms: u64,
}

/// Adds the job back to partition `KEYS[2]` unless dead letter `ARGV[1]` was replayed
/// there already (recorded in `KEYS[1]`); the rest of `ARGV` are the entry's fields.
const REPLAY: &str = r"
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('PEXPIRE', KEYS[1], 604800000)
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 1
";

/// Puts a dead-lettered job back into its partition (every group of the topic gets it
/// again, with attempts counted from 1), then deletes the dead letter. Runs at most once
/// per dead letter, even when two replays race or one is interrupted between the two
/// steps. Returns whether this call added the job.
pub(crate) async fn replay(
    conn: &mut impl ConnectionLike,
    letter: &DeadLetterEntry,
    partitions: u32,
) -> Result<bool, Error> {
    let partition = letter.partition % partitions.max(1);
    let added: i64 = redis::Script::new(REPLAY)
        .key(keys::replayed(&letter.topic, partition))
        .key(keys::partition(&letter.topic, partition))
        .arg(&letter.dead_letter_id)
        .arg(crate::wire::job_args(
            &letter.id,
            &letter.payload,
            crate::job::now_ms(),
        ))
        .invoke_async(conn)
        .await?;
    redis::cmd("XDEL")
        .arg(keys::dead_letters(&letter.topic))
        .arg(&letter.dead_letter_id)
        .exec_async(conn)
        .await?;
    Ok(added == 1)
}

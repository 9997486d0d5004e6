//! The dead-letter queue: jobs that failed for good, with their payload, key, error text,
//! attempts, topic, group, partition and original id. Each partition keeps its own
//! (`redisaq:{topic:N}:dlq`), beside its stream and lease, so one fenced script writes
//! the dead letter and acknowledges the job together: a consumer that lost the partition
//! can do neither, and a retried write after a lost reply adds nothing twice. The tools
//! read a topic's partitions (and the one stream per topic of layout 1) as one queue.

use crate::store::scripts::lua_fence;
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::error::Error;
use crate::job::JobId;
use crate::keys;
use crate::store::Holding;
use crate::wire::{self, StreamEntry};

/// Field names of a dead-letter entry.
mod field {
    pub const ID: &str = "id";
    pub const TOPIC: &str = "topic";
    pub const GROUP: &str = "group";
    pub const PARTITION: &str = "partition";
    pub const ATTEMPTS: &str = "attempts";
    pub const ERROR: &str = "error";
    pub const PAYLOAD: &str = "payload";
    pub const ENTRY_ID: &str = "entry_id";
    pub const FAILED_AT: &str = "failed_at";
    pub const KEY: &str = "key";
}

impl DeadLetterEntry {
    /// The stream fields of a dead letter about to be written.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (field::ID, self.id.to_string()),
            (field::TOPIC, self.topic.clone()),
            (field::GROUP, self.group.clone()),
            (field::PARTITION, self.partition.to_string()),
            (field::ATTEMPTS, self.attempts.to_string()),
            (field::ERROR, self.error.clone()),
            (field::PAYLOAD, self.payload.clone()),
            (field::ENTRY_ID, self.entry_id.clone()),
            (field::FAILED_AT, self.failed_at_ms.to_string()),
        ];
        if let Some(key) = &self.key {
            fields.push((field::KEY, key.clone()));
        }
        fields
    }

    /// Decodes a dead-letter entry; fields it lacks come out empty or zero.
    fn decode(entry: &StreamEntry) -> DeadLetterEntry {
        let text = |name| entry.field(name).unwrap_or_default().to_string();
        let number = |name| {
            entry
                .field(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or_default()
        };
        DeadLetterEntry {
            dead_letter_id: entry.id.clone(),
            id: JobId::from_stored(&text(field::ID)),
            topic: text(field::TOPIC),
            group: text(field::GROUP),
            partition: number(field::PARTITION) as u32,
            key: entry.field(field::KEY).map(str::to_string),
            attempts: number(field::ATTEMPTS) as u32,
            error: text(field::ERROR),
            payload: text(field::PAYLOAD),
            entry_id: text(field::ENTRY_ID),
            failed_at_ms: number(field::FAILED_AT),
        }
    }
}

/// While lease `KEYS[1]` holds `ARGV[1]` and entry `ARGV[3]` is still pending in group
/// `ARGV[2]` of stream `KEYS[2]`: adds the dead letter (fields `ARGV[5..]`) to `KEYS[3]`,
/// keeping the newest `ARGV[4]`, and acknowledges the entry. Answers 1, or 0 when the entry
/// was no longer pending (an earlier try landed and its reply was lost).
const WRITE: &str = concat!(
    lua_fence!(),
    r"if #redis.call('XPENDING', KEYS[2], ARGV[2], ARGV[3], ARGV[3], 1) == 0 then
  return 0
end
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
return 1
"
);
static WRITE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(WRITE));

/// Writes the dead letter and acknowledges its entry in one fenced step (see [`WRITE`]).
pub(crate) async fn write(
    conn: &mut impl ConnectionLike,
    holding: &Holding,
    letter: &DeadLetterEntry,
    maxlen: u64,
) -> Result<(), Error> {
    let _: i64 = WRITE_SCRIPT
        .key(&holding.lease)
        .key(&holding.stream)
        .key(keys::dead_letters(&letter.topic, letter.partition))
        .arg(&holding.token)
        .arg(&holding.group)
        .arg(&letter.entry_id)
        .arg(maxlen)
        .arg(letter.fields())
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// A dead-lettered job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterEntry {
    /// The entry's id in its dead-letter stream.
    pub dead_letter_id: String,
    /// The job's id (what `enqueue` returned), or the stream entry id of an entry that was
    /// not a job at all.
    pub id: JobId,
    /// The topic.
    pub topic: String,
    /// The group whose handler gave up on it.
    pub group: String,
    /// The partition it was in.
    pub partition: u32,
    /// The job's key, if it was enqueued with one.
    pub key: Option<String>,
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

/// A dead letter and the stream it is kept in.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub stream: String,
    pub letter: DeadLetterEntry,
}

impl Stored {
    /// Whether it is kept where layout 1 kept dead letters (one stream per topic).
    fn is_legacy(&self) -> bool {
        self.stream == keys::legacy_dead_letters(&self.letter.topic)
    }
}

/// Every dead-letter stream of a topic: one per partition, and layout 1's.
fn streams(topic: &str, partitions: u32) -> Vec<String> {
    (0..partitions)
        .map(|p| keys::dead_letters(topic, p))
        .chain(std::iter::once(keys::legacy_dead_letters(topic)))
        .collect()
}

/// A topic's dead letters, oldest first, as one queue.
pub(crate) async fn list(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partitions: u32,
) -> Result<Vec<Stored>, Error> {
    let mut read = redis::pipe();
    let streams = streams(topic, partitions);
    for stream in &streams {
        read.cmd("XRANGE").arg(stream).arg("-").arg("+");
    }
    let replies: Vec<redis::Value> = read.query_async(conn).await?;
    let mut all = Vec::new();
    for (stream, reply) in streams.into_iter().zip(replies) {
        for entry in wire::parse_entries(reply)? {
            all.push(Stored {
                stream: stream.clone(),
                letter: DeadLetterEntry::decode(&entry),
            });
        }
    }
    // By when they failed (moved ones keep that, not their new id), then by id.
    all.sort_by_key(|s| {
        let (ms, seq) = s.letter.dead_letter_id.split_once('-').unwrap_or_default();
        (
            s.letter.failed_at_ms,
            ms.parse::<u64>().unwrap_or_default(),
            seq.parse::<u64>().unwrap_or_default(),
        )
    });
    Ok(all)
}

/// How many dead letters a topic keeps.
pub(crate) async fn count(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partitions: u32,
) -> Result<u64, Error> {
    let mut lengths = redis::pipe();
    for stream in streams(topic, partitions) {
        lengths.cmd("XLEN").arg(stream);
    }
    let lengths: Vec<u64> = lengths.query_async(conn).await?;
    Ok(lengths.iter().sum())
}

/// Deletes every dead letter of a topic; returns how many there were.
pub(crate) async fn purge(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partitions: u32,
) -> Result<u64, Error> {
    let mut purged = 0;
    for stream in streams(topic, partitions) {
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("DEL")
            .arg(&stream)
            .ignore()
            .query_async(conn)
            .await?;
        purged += count;
    }
    Ok(purged)
}

/// Unless dead letter `ARGV[1]` was replayed into this partition already (recorded in
/// `KEYS[1]`), adds the job back to partition stream `KEYS[2]` (fields `ARGV[2..]`) and,
/// when `KEYS[3]` is given, deletes the dead letter from it, all in one step.
const REPLAY: &str = r"
local added = 0
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], 604800000)
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
  added = 1
end
if KEYS[3] then
  redis.call('XDEL', KEYS[3], ARGV[1])
end
return added
";
static REPLAY_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REPLAY));

/// Puts a dead-lettered job back into its partition, for the group that gave up on it
/// only (the other groups acknowledge it unread), attempts counted from 1, keeping its
/// id and key; then deletes the dead letter. Runs at most once per dead letter, even
/// when two replays race or one is interrupted. Returns whether this call added the job.
pub(crate) async fn replay(
    conn: &mut impl ConnectionLike,
    stored: &Stored,
    partitions: u32,
) -> Result<bool, Error> {
    let letter = &stored.letter;
    let partition = letter.partition % partitions.max(1);
    let fields = wire::JobFields {
        id: letter.id.as_str(),
        payload: &letter.payload,
        enqueued_at_ms: crate::job::now_ms(),
        key: letter.key.as_deref(),
        for_group: Some(&letter.group),
        trace: None,
    };
    let script = &*REPLAY_SCRIPT;
    let mut script = script.prepare_invoke();
    script
        .key(keys::replayed(&letter.topic, partition))
        .key(keys::partition(&letter.topic, partition))
        .arg(&letter.dead_letter_id)
        .arg(fields);
    // Layout 1's stream is in another slot: deleted in a step of its own.
    if !stored.is_legacy() {
        script.key(&stored.stream);
    }
    let added: i64 = script.invoke_async(conn).await?;
    if stored.is_legacy() {
        redis::cmd("XDEL")
            .arg(&stored.stream)
            .arg(&letter.dead_letter_id)
            .exec_async(conn)
            .await?;
    }
    Ok(added == 1)
}

/// Moves one dead letter of layout 1 into its partition's stream, once (recorded in
/// `KEYS[1]`); the caller deletes it from the old stream after.
const MOVE: &str = r"
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], 604800000)
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
return 1
";
static MOVE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(MOVE));

/// Moves a topic's dead letters from layout 1's stream into their partitions' streams;
/// returns how many were moved. Safe to run again after an interruption, and while
/// layout-1 workers still add dead letters there.
pub(crate) async fn migrate(
    conn: &mut impl ConnectionLike,
    topic: &str,
    partitions: u32,
) -> Result<u64, Error> {
    let legacy = keys::legacy_dead_letters(topic);
    let mut moved = 0;
    loop {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&legacy)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(100)
            .query_async(conn)
            .await?;
        let entries = wire::parse_entries(reply)?;
        if entries.is_empty() {
            return Ok(moved);
        }
        for entry in entries {
            let letter = DeadLetterEntry::decode(&entry);
            let partition = letter.partition % partitions.max(1);
            let fields: Vec<&str> = entry
                .fields
                .iter()
                .flatten()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()])
                .collect();
            let _: i64 = MOVE_SCRIPT
                .key(keys::migrated(topic, partition))
                .key(keys::dead_letters(topic, partition))
                .arg(&entry.id)
                .arg(fields)
                .invoke_async(conn)
                .await?;
            redis::cmd("XDEL")
                .arg(&legacy)
                .arg(&entry.id)
                .exec_async(conn)
                .await?;
            moved += 1;
        }
    }
}

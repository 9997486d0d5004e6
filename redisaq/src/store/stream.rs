//! Operations on partition streams: reading, claiming and acknowledging (fenced by the
//! holding's lease), and the reads of pending entries, groups and lag that the consumer
//! and the tools share.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::ToRedisArgs;

use super::conn::Conn;
use super::scripts::lua_fence;
use super::{lease, scripts, Holding};
use crate::error::Error;
use crate::wire::{self, StreamEntry};

/// How many entries follow `last_delivered` (a group's read position), counting at most
/// `cap`: what Redis 7 reports as a group's lag, for servers that do not (6.2).
pub(crate) async fn undelivered(
    conn: &mut impl ConnectionLike,
    stream: &str,
    last_delivered: &str,
    cap: usize,
) -> Result<u64, Error> {
    let start = wire::next_stream_id(last_delivered).unwrap_or_else(|| "-".into());
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(cap)
        .query_async(conn)
        .await?;
    Ok(wire::parse_entries(reply)?.len() as u64)
}

/// How many entries lie after `from` up to and including `to` (two read positions of
/// a group), counting at most `cap`: what the group was handed in between.
pub(crate) async fn entries_between(
    conn: &mut impl ConnectionLike,
    stream: &str,
    from: &str,
    to: &str,
    cap: usize,
) -> Result<u64, Error> {
    if from == to {
        return Ok(0);
    }
    let start = wire::next_stream_id(from).unwrap_or_else(|| "-".into());
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(to)
        .arg("COUNT")
        .arg(cap)
        .query_async(conn)
        .await?;
    Ok(wire::parse_entries(reply)?.len() as u64)
}

/// A group's lag on a stream: entries after its read position `last_delivered`. Redis 7
/// reports it (`reported`), but as an estimate that trimming and restarts can leave too
/// high, so a figure above 0 counts only if anything follows the read position at all;
/// Redis 6.2 reports none, and then it is counted, up to `cap`.
pub(crate) async fn lag(
    conn: &mut impl ConnectionLike,
    stream: &str,
    last_delivered: &str,
    reported: Option<u64>,
    cap: usize,
) -> Result<u64, Error> {
    match reported {
        Some(0) => Ok(0),
        Some(lag) => Ok(
            if undelivered(conn, stream, last_delivered, 1).await? == 0 {
                0
            } else {
                lag
            },
        ),
        None => undelivered(conn, stream, last_delivered, cap).await,
    }
}

/// How many entries each consumer has pending in `group` on `stream`.
pub(crate) async fn pending_by_consumer(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Vec<(String, u64)>, Error> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await?;
    Ok(wire::parse_pending_by_consumer(&summary)?)
}

/// Up to `count` pending entries of `group` on `stream`, from id `start` on.
pub(crate) async fn pending_page(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    start: &str,
    count: usize,
) -> Result<Vec<wire::Pending>, Error> {
    let rows: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("+")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(wire::parse_pending(&rows)?)
}

/// While lease `KEYS[1]` holds `ARGV[1]`: claims for consumer `ARGV[3]` of group `ARGV[2]`
/// on stream `KEYS[2]` each entry of the triples (id, owner, deliveries) from `ARGV[5]` on
/// that is still pending under that owner with that count and has no due record in
/// `KEYS[3]`, setting its count to `ARGV[4]` unless that is negative (then Redis adds
/// one). Answers the claimed entries, and the ids deleted from the stream while pending
/// (acknowledged here, so they leave the pending list).
///
/// The owner and count are checked in the same step as the claim because the list they
/// come from is read a round trip earlier: meanwhile the fetch loop may have claimed an
/// entry that fell due, and taking it again would run it twice.
const CLAIM: &str = concat!(
    lua_fence!(),
    r"local keep = tonumber(ARGV[4])
local taken, gone = {}, {}
for i = 5, #ARGV, 3 do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[2], ARGV[2], id, id, 1)[1]
  if row and row[2] == ARGV[i + 1] and row[4] == tonumber(ARGV[i + 2])
      and not redis.call('ZSCORE', KEYS[3], id) then
    local claimed
    if keep < 0 then
      claimed = redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, id)
    else
      claimed = redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, id, 'RETRYCOUNT', keep)
    end
    if claimed[1] then
      taken[#taken + 1] = claimed[1]
    else
      redis.call('XACK', KEYS[2], ARGV[2], id)
      gone[#gone + 1] = id
    end
  end
end
return {taken, gone}
"
);
static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM));

/// What [`claim`] did.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// The entries now pending under the claiming consumer.
    pub entries: Vec<StreamEntry>,
    /// Entries deleted from the stream while pending (`XDEL`, trimming by someone else):
    /// they can never run, and are acknowledged.
    pub gone: Vec<String>,
}

/// Claims for `consumer`, while the holding has its lease, those of the `listed` pending
/// entries that are still as listed (same owner, same delivery count) and not waiting
/// for a retry; keeps the delivery count at `keep_count` if given, else Redis adds one.
pub(crate) async fn claim(
    conn: &mut impl ConnectionLike,
    holding: &Holding,
    consumer: &str,
    listed: &[&wire::Pending],
    keep_count: Option<u64>,
) -> Result<Claimed, Error> {
    let mut invocation = CLAIM_SCRIPT.key(&holding.lease);
    invocation
        .key(&holding.stream)
        .key(&holding.due)
        .arg(&holding.token)
        .arg(&holding.group)
        .arg(consumer)
        .arg(keep_count.map_or(-1, |count| i64::try_from(count).unwrap_or(i64::MAX)));
    for pending in listed {
        invocation
            .arg(&pending.id)
            .arg(&pending.consumer)
            .arg(pending.deliveries);
    }
    let reply: redis::Value = invocation.invoke_async(conn).await?;
    let (entries, gone) = wire::parse_claimed(reply)?;
    Ok(Claimed { entries, gone })
}

fn ack_cmd(holding: &Holding, ids: &[impl AsRef<str>]) -> redis::Cmd {
    let mut cmd = lease::fenced(&holding.lease, &holding.stream, &holding.token, "XACK");
    cmd.arg(&holding.group);
    for id in ids {
        cmd.arg(id.as_ref());
    }
    cmd
}

/// Acknowledges each holding's ids, all in one round trip; one outcome per holding
/// (a refused one is [`lease::is_fenced`]).
pub(crate) async fn ack_many(
    conn: &mut impl ConnectionLike,
    batches: &[(Holding, &[String])],
) -> Result<Vec<Result<(), redis::RedisError>>, Error> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (holding, ids) in batches {
        pipe.add_command(ack_cmd(holding, ids));
    }
    let results = scripts::query_pipeline(conn, &pipe, &[lease::fenced_script()]).await?;
    Ok(results.into_iter().map(|r| r.map(drop)).collect())
}

/// New entries for `consumer` of `group` from `streams`, up to `count` each, waiting up
/// to `block_ms` for one if given; per stream key, its entries. (On a cluster, one
/// stream per read: a command reads one slot.)
pub(crate) async fn read(
    conn: &mut Conn,
    group: &str,
    consumer: &str,
    streams: &[String],
    count: usize,
    block_ms: Option<u64>,
) -> Result<Vec<(String, Vec<StreamEntry>)>, Error> {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block_ms) = block_ms {
        read.arg("BLOCK").arg(block_ms);
    }
    read.arg("STREAMS").arg(streams);
    for _ in streams {
        read.arg(">");
    }
    let reply: redis::Value = read.query_async(conn).await?;
    Ok(wire::parse_read(reply)?)
}

/// `group`'s row of `XINFO GROUPS` on `stream`, if the group is there.
pub(crate) async fn group_info(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Option<wire::GroupRow>, Error> {
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    Ok(wire::parse_groups(&groups)?
        .into_iter()
        .find(|g| g.name == group))
}

/// The consumers of `group` on `stream` (`XINFO CONSUMERS`).
pub(crate) async fn consumers(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Vec<wire::ConsumerRow>, Error> {
    let consumers: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await?;
    Ok(wire::parse_consumers(&consumers)?)
}

/// A job to add to a partition stream.
pub(crate) struct NewJob<'a> {
    pub stream: &'a str,
    pub fields: wire::JobFields<'a>,
    /// A delay, or an id stored once: then a script adds it ([`super::schedule`]).
    pub scheduled: Option<super::schedule::Scheduled<'a>>,
}

/// What became of an [`add`].
pub(crate) struct Added {
    /// Per job, Redis's refusal if it refused it.
    pub refusals: Vec<Option<redis::RedisError>>,
    /// With a wait for replicas: the fewest replicas that confirmed a partition's jobs.
    pub replicas: Option<u64>,
}

/// Adds the jobs in one round trip; with `wait = (n, timeout)`, each partition's jobs are
/// followed by a `WAIT` for `n` replicas of that partition's node. `Err` when the round
/// trip itself failed (then any of them may or may not be stored).
pub(crate) async fn add(
    conn: &mut impl ConnectionLike,
    jobs: &[NewJob<'_>],
    wait: Option<(u32, std::time::Duration)>,
) -> Result<Added, redis::RedisError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    // Jobs grouped by partition, so a WAIT follows its partition's writes (on a cluster
    // it goes to that partition's node).
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    if wait.is_some() {
        order.sort_by_key(|&i| jobs[i].stream);
    }
    let mut slots = Vec::with_capacity(order.len()); // reply index → job index
    for (n, &i) in order.iter().enumerate() {
        let job = &jobs[i];
        pipe.add_command(add_cmd(job));
        slots.push(Some(i));
        let last_of_partition = order
            .get(n + 1)
            .is_none_or(|&next| jobs[next].stream != job.stream);
        if let (Some((replicas, timeout)), true) = (wait, last_of_partition) {
            pipe.cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis().max(1) as u64);
            slots.push(None);
        }
    }
    let mut results: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(conn).await?;
    resend_unknown_scripts(conn, jobs, &slots, wait, &mut results).await?;
    let mut refusals: Vec<Option<redis::RedisError>> = jobs.iter().map(|_| None).collect();
    let mut replicas: Option<u64> = None;
    for (slot, result) in slots.into_iter().zip(results) {
        match (slot, result) {
            (Some(i), result) => refusals[i] = result.err(),
            (None, Ok(redis::Value::Int(confirmed))) => {
                replicas = Some(replicas.map_or(confirmed as u64, |r| r.min(confirmed as u64)));
            }
            (None, _) => replicas = Some(0),
        }
    }
    Ok(Added { refusals, replicas })
}

fn add_cmd(job: &NewJob<'_>) -> redis::Cmd {
    match &job.scheduled {
        None => {
            // Sized up front: building an add is a good part of an enqueue's own work.
            let mut cmd = redis::Cmd::with_capacity(
                3 + job.fields.num_of_args(),
                8 + job.stream.len() + job.fields.byte_len(),
            );
            cmd.arg("XADD").arg(job.stream).arg("*").arg(job.fields);
            cmd
        }
        Some(scheduled) => super::schedule::add_cmd(job.stream, &job.fields, scheduled),
    }
}

/// Sends again, after loading their script, the scheduled adds that Redis refused for
/// not knowing it (after a restart or failover): only those, since the plain adds of the
/// same pipeline were stored (so within one batch they land after the plain ones). If a
/// `WAIT` was asked for, one follows each partition's resent adds, and the fewest
/// replicas any of them confirmed replaces the first round's counts.
async fn resend_unknown_scripts(
    conn: &mut impl ConnectionLike,
    jobs: &[NewJob<'_>],
    slots: &[Option<usize>],
    wait: Option<(u32, std::time::Duration)>,
    results: &mut [redis::RedisResult<redis::Value>],
) -> Result<(), redis::RedisError> {
    let mut unknown: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(e) if scripts::is_noscript(e)))
        .map(|(n, _)| n)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    super::schedule::add_script().load_async(conn).await?;
    let job_of = |n: usize| slots[n].expect("only adds are scripts");
    unknown.sort_by_key(|&n| jobs[job_of(n)].stream);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut waits = 0;
    for (k, &n) in unknown.iter().enumerate() {
        let job = &jobs[job_of(n)];
        pipe.add_command(add_cmd(job));
        let last_of_partition = unknown
            .get(k + 1)
            .is_none_or(|&next| jobs[job_of(next)].stream != job.stream);
        if let (Some((replicas, timeout)), true) = (wait, last_of_partition) {
            pipe.cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis().max(1) as u64);
            waits += 1;
        }
    }
    let answers: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(conn).await?;
    let mut answers = answers.into_iter();
    let mut fewest: Option<redis::RedisResult<redis::Value>> = None;
    for (k, &n) in unknown.iter().enumerate() {
        results[n] = answers.next().unwrap_or(Ok(redis::Value::Nil));
        let last_of_partition = unknown
            .get(k + 1)
            .is_none_or(|&next| jobs[job_of(next)].stream != jobs[job_of(n)].stream);
        if wait.is_some() && last_of_partition {
            let confirmed = answers.next().unwrap_or(Ok(redis::Value::Int(0)));
            fewest = Some(match (fewest, confirmed) {
                (Some(Ok(redis::Value::Int(a))), Ok(redis::Value::Int(b))) => {
                    Ok(redis::Value::Int(a.min(b)))
                }
                (None, confirmed) => confirmed,
                _ => Ok(redis::Value::Int(0)),
            });
        }
    }
    debug_assert!(waits == 0 || fewest.is_some());
    // The first round's WAITs answered before these adds: they count for no more than
    // the WAITs sent after them.
    if let Some(fewest) = fewest {
        for (slot, result) in slots.iter().zip(results.iter_mut()) {
            if slot.is_none() {
                *result = fewest.clone();
            }
        }
    }
    Ok(())
}

/// The newest entry of job `id` in `stream` between stream ids `from` and `to` (a
/// replayed job has a newer one), looking at no more than `cap` entries, a page at a
/// time.
pub(crate) async fn find_job(
    conn: &mut impl ConnectionLike,
    stream: &str,
    id: &str,
    from: &str,
    to: &str,
    cap: usize,
) -> Result<Option<StreamEntry>, Error> {
    const PAGE: usize = 1000;
    let mut start = from.to_string();
    let mut seen = 0;
    let mut found = None;
    while seen < cap {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg(to)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let entries = wire::parse_entries(reply)?;
        seen += entries.len();
        if let Some(entry) = entries
            .iter()
            .rev()
            .find(|e| e.field(wire::field::ID) == Some(id))
        {
            found = Some(entry.clone());
        }
        match entries
            .last()
            .and_then(|last| wire::next_stream_id(&last.id))
        {
            Some(next) if entries.len() == PAGE => start = next,
            _ => break,
        }
    }
    Ok(found)
}

/// What `XINFO STREAM` says of `stream`: its length, oldest and newest entry ids and how
/// many entries were ever added; all empty for a stream that does not exist (yet).
pub(crate) async fn info(
    conn: &mut impl ConnectionLike,
    stream: &str,
) -> Result<wire::StreamInfo, Error> {
    let info: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await;
    match info {
        Ok(info) => Ok(wire::parse_stream_info(&info)?),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            Ok(wire::StreamInfo {
                added: Some(0),
                ..Default::default()
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Every group of `stream` (none if the stream does not exist).
pub(crate) async fn groups(
    conn: &mut impl ConnectionLike,
    stream: &str,
) -> Result<Vec<wire::GroupRow>, Error> {
    let reply: Result<redis::Value, _> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    match reply {
        Ok(reply) => Ok(wire::parse_groups(&reply)?),
        Err(e) if e.to_string().contains("no such key") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

//! Looking at and repairing what redisaq keeps in Redis: topics, groups, dead letters.
//! The `redisaq` command-line tool only renders what this returns; every result is
//! `Serialize`, so scripts get the same data as JSON.
//!
//! ```no_run
//! # async fn demo() -> Result<(), redisaq::Error> {
//! let admin = redisaq::admin::Admin::connect("redis://127.0.0.1:6379").await?;
//! for topic in admin.topics().await? {
//!     println!("{}: {} partitions", topic.topic, topic.partitions);
//! }
//! # Ok(()) }
//! ```

use crate::store::conn::Conn;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
pub use crate::store::dlq::DeadLetterEntry;
use crate::store::topic;
use crate::store::{self, dlq, due, schedule, stream};
use crate::JobId;
use crate::{keys, wire};

/// A connection for administration.
#[derive(Clone)]
pub struct Admin {
    conn: Conn,
}

/// What [`Admin::migrate`] did to one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Migration {
    /// The topic.
    pub topic: String,
    /// Its layout now.
    pub layout: u32,
    /// Dead letters moved from layout 1's stream beside their partitions.
    pub dead_letters_moved: u64,
}

/// A topic and its partition streams.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TopicStatus {
    /// The topic name.
    pub topic: String,
    /// Its partition count.
    pub partitions: u32,
    /// Each partition stream.
    pub streams: Vec<StreamStatus>,
    /// Dead letters waiting.
    pub dead_letters: u64,
    /// Delayed jobs waiting to be due.
    pub delayed: u64,
    /// Whether the whole topic is paused ([`Admin::pause`]).
    pub paused: bool,
    /// Groups paused on their own.
    pub paused_groups: Vec<String>,
}

/// One partition stream.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StreamStatus {
    /// The partition number.
    pub partition: u32,
    /// Entries in the stream (processed ones are kept up to `maxlen`).
    pub length: u64,
    /// Age of the oldest entry, in ms.
    pub oldest_age_ms: Option<u64>,
    /// Age of the newest entry, in ms.
    pub newest_age_ms: Option<u64>,
    /// Entries ever added (Redis 7 counts them; `None` before): two readings give the
    /// enqueue rate.
    pub added: Option<u64>,
}

/// Where a job is ([`Admin::job`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's id.
    pub id: JobId,
    /// The topic.
    pub topic: String,
    /// Delayed: when it is due (Unix ms, Redis' clock).
    pub due_ms: Option<u64>,
    /// Its partition, once it is in a stream.
    pub partition: Option<u32>,
    /// Its stream entry, while the stream retains it.
    pub entry_id: Option<String>,
    /// When it was enqueued (Unix ms).
    pub enqueued_at_ms: Option<u64>,
    /// Where it is in each group of the partition.
    pub groups: Vec<JobInGroup>,
    /// Its dead letters (one per group that gave up on it).
    pub dead_letters: Vec<DeadLetterEntry>,
}

impl JobStatus {
    /// Whether it was found anywhere.
    pub fn found(&self) -> bool {
        self.due_ms.is_some() || self.entry_id.is_some() || !self.dead_letters.is_empty()
    }
}

/// A job in one group ([`JobStatus::groups`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobInGroup {
    /// The group.
    pub group: String,
    /// Where the job is in it.
    pub state: JobState,
    /// The consumer it was delivered to, while pending.
    pub consumer: Option<String>,
    /// Deliveries so far, while pending.
    pub deliveries: Option<u64>,
}

/// Where a job is in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Not yet delivered to the group.
    Waiting,
    /// Delivered to a consumer and not acknowledged, and not waiting for a retry: running,
    /// queued in that worker, or left by a consumer that died until the partition's next
    /// owner claims it.
    Running,
    /// Not acknowledged, waiting for its retry (it failed; the backoff has not passed).
    Pending,
    /// Acknowledged: processed (or, if a dead letter of the group is listed, given up).
    Done,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Pending => "pending",
            JobState::Done => "done",
        })
    }
}

/// A delayed job waiting to be due ([`Admin::delayed`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DelayedJob {
    /// Its id.
    pub id: JobId,
    /// The partition it waits beside.
    pub partition: u32,
    /// When it is due (Unix ms, Redis' clock).
    pub due_ms: u64,
}

/// A cron schedule ([`Admin::schedules`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ScheduleStatus {
    /// The topic its jobs go to.
    pub topic: String,
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub tz: String,
    /// The last fire time enqueued (Unix ms); `None` before the first.
    pub last_fire_ms: Option<u64>,
    /// The next fire time (Unix ms).
    pub next_fire_ms: Option<u64>,
}

/// A consumer group of a topic.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The group name.
    pub group: String,
    /// Entries not yet delivered to the group, over all partitions.
    pub lag: u64,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Live consumers (with a current heartbeat).
    pub consumers: Vec<String>,
    /// The assignment's generation (0: no worker has run yet).
    pub generation: u64,
    /// The owner of each partition, by partition number.
    pub owners: Vec<String>,
    /// Whether the group (or its whole topic) is paused ([`Admin::pause`]).
    pub paused: bool,
    /// Its rate limit (`#[job(rate = "100/s")]`), as its workers declare it.
    pub rate: Option<String>,
    /// Its rate limit per job key (`#[job(key_rate = "5/s")]`).
    pub key_rate: Option<String>,
    /// With a `rate`: the jobs started within the last period, out of its limit.
    pub rate_used: Option<u64>,
}

/// A consumer of a group, as the monitor sees it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// The consumer's name.
    pub consumer: String,
    /// Since its last read or claim, in ms (the smallest over the partitions it read).
    pub idle_ms: u64,
    /// Entries it holds unacknowledged.
    pub pending: u64,
    /// Whether its heartbeat is current.
    pub alive: bool,
    /// Partitions whose lease it holds.
    pub partitions: Vec<u32>,
    /// How it is doing.
    pub status: ConsumerState,
}

/// How a consumer is doing, as `redisaq monitor` shows it (`OK`, `IDLE`, ... in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ConsumerState {
    /// Alive and working.
    Ok,
    /// Alive, but has not read anything for longer than the threshold.
    Idle,
    /// Alive, holding more unacknowledged entries than the threshold.
    TooManyPending,
    /// Alive, but a hand-over waits for calls that ignore cancellation (a handler
    /// blocking its thread).
    Stuck,
    /// No heartbeat: its partitions and entries go to live consumers.
    Dead,
}

impl std::fmt::Display for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConsumerState::Ok => "OK",
            ConsumerState::Idle => "IDLE",
            ConsumerState::TooManyPending => "TOO_MANY_PENDING",
            ConsumerState::Stuck => "STUCK",
            ConsumerState::Dead => "DEAD",
        })
    }
}

/// What a cleanup did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Cleanup {
    /// Dead consumers removed from the group.
    pub removed: Vec<String>,
    /// Dead consumers kept because they still hold entries; the owners of their
    /// partitions claim those within a heartbeat, a later cleanup removes them.
    pub kept: Vec<ConsumerStatus>,
}

/// The seed Scaler's advice for a group, from two readings of the group
/// one second apart (`window_ms`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ScaleAdvice {
    /// What to do.
    pub decision: ScaleDecision,
    /// `100 × backlog / (backlog + finished)`: how much of the work in view (what waits
    /// now, and what was finished during the window) is still waiting. 0 when the
    /// consumers keep up, 100 when nothing gets finished.
    pub utilisation_pct: f64,
    /// Entries not yet finished by the group: `lag + pending`, at the second reading.
    pub backlog: u64,
    /// `backlog / consumers` (the whole backlog when no consumer is alive).
    pub backlog_per_consumer: f64,
    /// How the backlog changed between the two readings (negative: it shrank).
    pub growth: i64,
    /// Jobs the group finished (acknowledged) between the two readings.
    pub finished: u64,
    /// Time between the two readings.
    pub window_ms: u64,
    /// Entries not yet delivered to the group.
    pub lag: u64,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Live consumers of the group.
    pub consumers: usize,
    /// The topic's partitions: more consumers than this would idle.
    pub partitions: u32,
    /// Why, in words.
    pub reason: String,
}

/// What [`Admin::scale`] advises (`OUT`, `IN`, `NO_SCALE` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ScaleDecision {
    /// Add consumers.
    Out,
    /// Remove consumers.
    In,
    /// Leave it as it is.
    NoScale,
}

impl std::fmt::Display for ScaleDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScaleDecision::Out => "OUT",
            ScaleDecision::In => "IN",
            ScaleDecision::NoScale => "NO_SCALE",
        })
    }
}

/// Most entries counted one by one when a server reports no `lag` (before Redis 7).
const MAX_LAG_COUNT: usize = 100_000;

/// Time between the two readings of a group that [`Admin::scale`] compares.
const SCALE_WINDOW: Duration = Duration::from_secs(1);

/// Whether `id` is `letter`'s job id or dead-letter id.
fn names(letter: &DeadLetterEntry, id: &str) -> bool {
    letter.id == *id || letter.dead_letter_id == id
}

/// Refuses an `id` that is no job id but the dead-letter id of several letters: an entry
/// id of one partition's dead-letter stream, which another partition's may repeat.
fn unambiguous<'a>(
    letters: impl Iterator<Item = &'a DeadLetterEntry>,
    id: &str,
) -> Result<(), Error> {
    let (mut by_job, mut by_entry) = (false, 0);
    for letter in letters {
        by_job |= letter.id == *id;
        by_entry += usize::from(letter.dead_letter_id == id);
    }
    if !by_job && by_entry > 1 {
        return Err(Error::AmbiguousId {
            id: id.to_string(),
            count: by_entry,
        });
    }
    Ok(())
}

/// One partition's figures for a group at one moment.
struct Reading {
    last_delivered: String,
    pending: u64,
    lag: u64,
}

impl Admin {
    /// Connects to the Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let conn = store::conn::client(url)?.connect_now().await?;
        Ok(Admin { conn })
    }

    /// A topic's partition count.
    pub async fn partitions(&self, topic: &str) -> Result<u32, Error> {
        let partitions = topic::partitions(&mut self.conn.clone(), topic).await?;
        partitions.ok_or_else(|| Error::UnknownTopic(topic.into()))
    }

    /// The names of all topics, sorted.
    async fn topic_names(&self) -> Result<Vec<String>, Error> {
        topic::names(&mut self.conn.clone()).await
    }

    /// Brings topics (the given ones, or all) to the newest layout of redisaq's data in
    /// Redis (dead letters of layout 1 move beside their partitions); returns, per
    /// topic, how many dead letters were moved. Safe to run again, and while workers
    /// run: run it once more after the last worker of an older version stopped.
    pub async fn migrate(&self, topics: &[String]) -> Result<Vec<Migration>, Error> {
        let topics = if topics.is_empty() {
            self.topic_names().await?
        } else {
            topics.to_vec()
        };
        let mut done = Vec::with_capacity(topics.len());
        for topic in topics {
            let moved = topic::migrate(&mut self.conn.clone(), &topic).await?;
            done.push(Migration {
                topic,
                layout: topic::LAYOUT,
                dead_letters_moved: moved,
            });
        }
        Ok(done)
    }

    /// Every topic with its partitions.
    pub async fn topics(&self) -> Result<Vec<TopicStatus>, Error> {
        let mut conn = self.conn.clone();
        let names = self.topic_names().await?;
        let now_ms = store::server_ms(&mut conn).await?;
        let mut topics = Vec::with_capacity(names.len());
        for name in names {
            let partitions = self.partitions(&name).await.unwrap_or(0);
            let mut streams = Vec::with_capacity(partitions as usize);
            for partition in 0..partitions {
                let stream = keys::partition(&name, partition);
                let info = stream::info(&mut conn, &stream).await?;
                let age = |id: Option<String>| {
                    id.as_deref()
                        .and_then(wire::parse_stream_id)
                        .map(|(ms, _)| now_ms.saturating_sub(ms))
                };
                streams.push(StreamStatus {
                    partition,
                    length: info.length,
                    oldest_age_ms: age(info.first_id),
                    newest_age_ms: age(info.last_id),
                    added: info.added,
                });
            }
            let dead_letters = dlq::count(&mut conn, &name, partitions).await?;
            let mut delayed = 0;
            for partition in 0..partitions {
                delayed += schedule::delayed_count(&mut conn, &name, partition).await?;
            }
            let (paused, paused_groups) = topic::paused(&mut conn, &name).await?;
            topics.push(TopicStatus {
                topic: name,
                partitions,
                streams,
                dead_letters,
                delayed,
                paused,
                paused_groups,
            });
        }
        Ok(topics)
    }

    /// The consumer groups of a topic, with lag, pending count, live consumers and the
    /// partition assignment.
    pub async fn groups(&self, topic: &str) -> Result<Vec<GroupStatus>, Error> {
        let mut conn = self.conn.clone();
        let partitions = self.partitions(topic).await?;
        let mut groups: BTreeMap<String, GroupStatus> = BTreeMap::new();
        for partition in 0..partitions {
            let stream = keys::partition(topic, partition);
            for row in stream::groups(&mut conn, &stream).await? {
                let lag = stream::lag(
                    &mut self.conn.clone(),
                    &stream,
                    &row.last_delivered,
                    row.lag,
                    MAX_LAG_COUNT,
                )
                .await?;
                let status = groups
                    .entry(row.name.clone())
                    .or_insert_with(|| GroupStatus {
                        group: row.name.clone(),
                        lag: 0,
                        pending: 0,
                        consumers: Vec::new(),
                        generation: 0,
                        owners: Vec::new(),
                        paused: false,
                        rate: None,
                        key_rate: None,
                        rate_used: None,
                    });
                status.lag += lag;
                status.pending += row.pending;
            }
        }
        let (topic_paused, paused_groups) = topic::paused(&mut conn, topic).await?;
        for status in groups.values_mut() {
            status.paused = topic_paused || paused_groups.contains(&status.group);
            let (rate, key_rate, used) =
                store::rate::status(&mut conn, topic, &status.group).await?;
            status.rate_used = rate.map(|_| used);
            status.rate = rate.map(|r| r.to_string());
            status.key_rate = key_rate.map(|r| r.to_string());
            status.consumers = store::members::live(&mut conn, topic, &status.group).await?;
            let assignment = store::assignment::load(&mut conn, topic, &status.group).await?;
            status.generation = assignment.generation;
            status.owners = assignment.owners;
        }
        Ok(groups.into_values().collect())
    }

    /// Where job `id` of `topic` is: delayed, or in which partition and, per group,
    /// waiting, pending (with its consumer and deliveries) or done; and its dead letters.
    /// A job is found by the time in its id (a generated id is a UUIDv7, whose first 48
    /// bits are the enqueue time in ms) with a short `XRANGE` around it, so no index is
    /// kept; an id of its own (`EnqueueOptions::id`) or a delayed job moved in later is
    /// looked for in the first 100,000 entries of its partition, then of the others (the
    /// whole stream at the default `maxlen`).
    pub async fn job(&self, topic: &str, id: &JobId) -> Result<JobStatus, Error> {
        let partitions = self.partitions(topic).await?;
        let mut conn = self.conn.clone();
        let mut status = JobStatus {
            id: id.clone(),
            topic: topic.to_string(),
            due_ms: None,
            partition: None,
            entry_id: None,
            enqueued_at_ms: None,
            groups: Vec::new(),
            dead_letters: Vec::new(),
        };
        for partition in 0..partitions {
            if let Some(due) = schedule::due_of(&mut conn, topic, partition, id.as_str()).await? {
                status.due_ms = Some(due);
                status.partition = Some(partition);
            }
        }
        if status.due_ms.is_none() {
            if let Some((partition, entry)) = self.find_entry(topic, partitions, id).await? {
                status.partition = Some(partition);
                status.enqueued_at_ms = entry
                    .field(wire::field::ENQUEUED_AT)
                    .and_then(|t| t.parse().ok());
                status.groups = self.job_in_groups(topic, partition, &entry.id).await?;
                status.entry_id = Some(entry.id);
            }
        }
        status.dead_letters = self
            .dead_letters(topic, None, usize::MAX)
            .await?
            .into_iter()
            .filter(|l| l.id == *id)
            .collect();
        Ok(status)
    }

    /// The partition and entry of job `id`, if a stream still holds it.
    async fn find_entry(
        &self,
        topic: &str,
        partitions: u32,
        id: &JobId,
    ) -> Result<Option<(u32, wire::StreamEntry)>, Error> {
        const AROUND_MS: u64 = 60_000;
        const DEEP: usize = 100_000;
        let mut conn = self.conn.clone();
        let enqueued_ms = uuid::Uuid::parse_str(id.as_str())
            .ok()
            .filter(|u| u.get_version_num() == 7)
            .and_then(|u| u.get_timestamp())
            .map(|t| t.to_unix().0 * 1000 + u64::from(t.to_unix().1) / 1_000_000);
        if let Some(ms) = enqueued_ms {
            let (from, to) = (
                format!("{}-0", ms.saturating_sub(AROUND_MS)),
                format!("{}-0", ms + AROUND_MS),
            );
            for partition in 0..partitions {
                let stream = keys::partition(topic, partition);
                if let Some(entry) =
                    stream::find_job(&mut conn, &stream, id.as_str(), &from, &to, DEEP).await?
                {
                    return Ok(Some((partition, entry)));
                }
            }
        }
        // An id of its own routes like a key (unless a key was given too): look there
        // first, then everywhere.
        let routed = (crate::producer::key_hash(id.as_str()) % u64::from(partitions.max(1))) as u32;
        let order = std::iter::once(routed).chain((0..partitions).filter(|&p| p != routed));
        for partition in order {
            let stream = keys::partition(topic, partition);
            if let Some(entry) =
                stream::find_job(&mut conn, &stream, id.as_str(), "-", "+", DEEP).await?
            {
                return Ok(Some((partition, entry)));
            }
        }
        Ok(None)
    }

    /// Where entry `entry_id` of a partition is in each of its groups.
    async fn job_in_groups(
        &self,
        topic: &str,
        partition: u32,
        entry_id: &str,
    ) -> Result<Vec<JobInGroup>, Error> {
        let mut conn = self.conn.clone();
        let stream = keys::partition(topic, partition);
        let entry = wire::parse_stream_id(entry_id);
        let mut groups = Vec::new();
        for row in stream::groups(&mut conn, &stream).await? {
            let delivered = wire::parse_stream_id(&row.last_delivered);
            let (state, consumer, deliveries) = if entry > delivered {
                (JobState::Waiting, None, None)
            } else {
                let pending = stream::pending_page(&mut conn, &stream, &row.name, entry_id, 1)
                    .await?
                    .into_iter()
                    .find(|p| p.id == entry_id);
                match pending {
                    Some(p) => {
                        let due = keys::due(topic, partition, &row.name);
                        let retrying = due::waiting(&mut conn, &due, &[entry_id]).await?;
                        let state = if retrying.first() == Some(&true) {
                            JobState::Pending
                        } else {
                            JobState::Running
                        };
                        (state, Some(p.consumer), Some(p.deliveries))
                    }
                    None => (JobState::Done, None, None),
                }
            };
            groups.push(JobInGroup {
                group: row.name,
                state,
                consumer,
                deliveries,
            });
        }
        Ok(groups)
    }

    /// The delayed jobs of `topic` that are due first, soonest first, at most `limit`.
    pub async fn delayed(&self, topic: &str, limit: usize) -> Result<Vec<DelayedJob>, Error> {
        let partitions = self.partitions(topic).await?;
        let mut conn = self.conn.clone();
        let mut jobs = Vec::new();
        for partition in 0..partitions {
            for (id, due_ms) in schedule::first_due(&mut conn, topic, partition, limit).await? {
                jobs.push(DelayedJob {
                    id: JobId::from(id),
                    partition,
                    due_ms,
                });
            }
        }
        jobs.sort_by_key(|job| job.due_ms);
        jobs.truncate(limit);
        Ok(jobs)
    }

    /// Every cron schedule a worker has recorded, by topic, with its last and next fire
    /// time.
    pub async fn schedules(&self) -> Result<Vec<ScheduleStatus>, Error> {
        let stored = store::cron::list(&mut self.conn.clone()).await?;
        let now_ms = store::server_ms(&mut self.conn.clone()).await?;
        Ok(stored
            .into_iter()
            .map(|s| {
                let next_fire_ms = crate::cron::Schedule::parse(&s.expression, Some(&s.tz))
                    .ok()
                    .and_then(|schedule| schedule.next_after(now_ms.max(s.last_ms.unwrap_or(0))));
                ScheduleStatus {
                    topic: s.topic,
                    cron: s.expression,
                    tz: s.tz,
                    last_fire_ms: s.last_ms,
                    next_fire_ms,
                }
            })
            .collect())
    }

    /// Cancels a delayed job of `topic` before it runs; true if it was waiting, false if
    /// there is no such delayed job (it never was, was cancelled, or is due and runs).
    ///
    /// ```no_run
    /// # async fn demo(admin: redisaq::admin::Admin, id: redisaq::JobId) -> Result<(), redisaq::Error> {
    /// if admin.cancel("send_email", &id).await? {
    ///     println!("cancelled {id}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, topic: &str, id: &JobId) -> Result<bool, Error> {
        let partitions = self.partitions(topic).await?;
        let mut conn = self.conn.clone();
        let mut cancelled = false;
        for partition in 0..partitions {
            cancelled |= schedule::cancel(&mut conn, topic, partition, id.as_str()).await?;
        }
        Ok(cancelled)
    }

    /// Pauses `topic`, or only `group` on it: its workers start no new job within a
    /// heartbeat interval (at once, unless a hint is lost); running jobs finish. The
    /// state lives in Redis, so it outlasts restarts, until [`resume`](Self::resume).
    /// Enqueueing goes on, and delayed jobs still become due.
    ///
    /// ```no_run
    /// # async fn demo(admin: redisaq::admin::Admin) -> Result<(), redisaq::Error> {
    /// admin.pause("send_email", Some("email_group")).await?;
    /// admin.resume("send_email", Some("email_group")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn pause(&self, topic: &str, group: Option<&str>) -> Result<(), Error> {
        self.partitions(topic).await?;
        topic::set_paused(&mut self.conn.clone(), topic, group, true).await
    }

    /// Resumes what [`pause`](Self::pause) paused, with the same `group`. A group
    /// paused on its own stays paused when its topic resumes, and the other way round.
    pub async fn resume(&self, topic: &str, group: Option<&str>) -> Result<(), Error> {
        self.partitions(topic).await?;
        topic::set_paused(&mut self.conn.clone(), topic, group, false).await
    }

    /// Dead letters of a topic, oldest first, optionally of one group, at most `limit`:
    /// every partition's, read as one queue.
    pub async fn dead_letters(
        &self,
        topic: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, Error> {
        Ok(self
            .stored_dead_letters(topic, group)
            .await?
            .into_iter()
            .map(|stored| stored.letter)
            .take(limit)
            .collect())
    }

    async fn stored_dead_letters(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Vec<dlq::Stored>, Error> {
        let partitions = self.partitions(topic).await?;
        let mut all = dlq::list(&mut self.conn.clone(), topic, partitions).await?;
        all.retain(|stored| group.is_none_or(|g| stored.letter.group == g));
        Ok(all)
    }

    /// The dead letter with job id or dead-letter id `id`, if the topic has one.
    /// A dead-letter id that several partitions' dead-letter streams hold is refused
    /// ([`Error::AmbiguousId`]); job ids are unique.
    pub async fn dead_letter(
        &self,
        topic: &str,
        id: &str,
    ) -> Result<Option<DeadLetterEntry>, Error> {
        let letters = self.dead_letters(topic, None, usize::MAX).await?;
        unambiguous(letters.iter(), id)?;
        Ok(letters.into_iter().find(|letter| names(letter, id)))
    }

    /// Puts dead-lettered jobs back: those with the given ids (job id or dead-letter id),
    /// or all of the topic (of one group, if given). Each runs again only in the group
    /// that gave up on it (the others acknowledge it unread), attempts counted from 1,
    /// in its partition, with its id and key. Replaying the same dead letter twice adds
    /// it once. Returns the dead letters put back.
    pub async fn replay(
        &self,
        topic: &str,
        group: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<DeadLetterEntry>, Error> {
        let partitions = self.partitions(topic).await?;
        let letters = self.stored_dead_letters(topic, group).await?;
        for id in ids {
            unambiguous(letters.iter().map(|s| &s.letter), id)?;
        }
        let mut replayed = Vec::new();
        for stored in letters {
            if !ids.is_empty() && !ids.iter().any(|id| names(&stored.letter, id)) {
                continue;
            }
            if dlq::replay(&mut self.conn.clone(), &stored, partitions).await? {
                replayed.push(stored.letter);
            }
        }
        Ok(replayed)
    }

    /// The seed Monitor's view of a group: every consumer the Redis group knows with its
    /// idle time, pending entries, heartbeat, owned partitions and a status.
    pub async fn monitor(
        &self,
        topic: &str,
        group: &str,
        idle_threshold_ms: u64,
        pending_threshold: u64,
    ) -> Result<Vec<ConsumerStatus>, Error> {
        let mut conn = self.conn.clone();
        let partitions = self.partitions(topic).await?;
        let mut consumers: BTreeMap<String, ConsumerStatus> = BTreeMap::new();
        for partition in 0..partitions {
            let stream = keys::partition(topic, partition);
            let rows = match stream::consumers(&mut conn, &stream, group).await {
                Ok(rows) => rows,
                Err(Error::Redis(e))
                    if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") =>
                {
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            for row in rows {
                let status = consumers
                    .entry(row.name.clone())
                    .or_insert_with(|| ConsumerStatus {
                        consumer: row.name.clone(),
                        idle_ms: u64::MAX,
                        pending: 0,
                        alive: false,
                        partitions: Vec::new(),
                        status: ConsumerState::Ok,
                    });
                status.idle_ms = status.idle_ms.min(row.idle_ms);
                status.pending += row.pending;
            }
            let owner =
                store::lease::holder(&mut conn, &keys::lease(topic, partition, group)).await?;
            if let Some(status) = owner.and_then(|o| consumers.get_mut(keys::lease_holder(&o))) {
                status.partitions.push(partition);
            }
        }
        let live = store::members::live(&mut conn, topic, group).await?;
        let names: Vec<&str> = consumers.keys().map(String::as_str).collect();
        let stuck = store::group::stuck(&mut conn, topic, group, &names).await?;
        for (status, stuck) in consumers.values_mut().zip(stuck) {
            status.alive = live.contains(&status.consumer);
            status.status = if !status.alive {
                ConsumerState::Dead
            } else if stuck {
                ConsumerState::Stuck
            } else if status.pending > pending_threshold {
                ConsumerState::TooManyPending
            } else if status.idle_ms > idle_threshold_ms {
                ConsumerState::Idle
            } else {
                ConsumerState::Ok
            };
        }
        Ok(consumers.into_values().collect())
    }

    /// Removes dead consumers (no current heartbeat) from the group, except those that
    /// still hold entries: deleting those would drop their entries from the pending
    /// list. Their entries are claimed by the owners of their partitions (every live
    /// consumer sweeps the partitions it owns each heartbeat), after which a cleanup
    /// removes them too.
    pub async fn cleanup(&self, topic: &str, group: &str) -> Result<Cleanup, Error> {
        let mut conn = self.conn.clone();
        let partitions = self.partitions(topic).await?;
        let mut report = Cleanup {
            removed: Vec::new(),
            kept: Vec::new(),
        };
        for consumer in self.monitor(topic, group, u64::MAX, u64::MAX).await? {
            if consumer.alive {
                continue;
            }
            if consumer.pending > 0 {
                report.kept.push(consumer);
                continue;
            }
            let mut kept = false;
            for partition in 0..partitions {
                let removal = store::group::remove_consumer_if_idle(
                    &mut conn,
                    &keys::partition(topic, partition),
                    group,
                    &consumer.consumer,
                )
                .await?;
                // It read something since the listing: its entries' new owner claims
                // them, and a later cleanup removes it.
                kept |= removal == store::group::Removal::Kept;
            }
            if kept {
                report.kept.push(consumer);
            } else {
                report.removed.push(consumer.consumer);
            }
        }
        Ok(report)
    }

    /// Whether the group needs more or fewer consumers, from two readings of its
    /// backlog (`lag + pending`) one second apart:
    ///
    /// - `finished` = entries handed to the group between the readings − the growth of
    ///   its pending entries: what it acknowledged in the window;
    /// - utilisation = `100 × backlog / (backlog + finished)`; it does not depend on how
    ///   many processed entries the streams keep (`maxlen`).
    ///
    /// OUT when jobs wait and no consumer is alive, or when utilisation is above
    /// `scale_out_pct` (more waits than the group finishes in `out / (100 − out)`
    /// windows); held back (NO_SCALE) when every
    /// partition already has its own consumer (raise the partition count first). IN when
    /// utilisation is below `scale_in_pct`, the backlog did not grow and more than one
    /// consumer is alive. Else NO_SCALE.
    pub async fn scale(
        &self,
        topic: &str,
        group: &str,
        scale_out_pct: f64,
        scale_in_pct: f64,
    ) -> Result<ScaleAdvice, Error> {
        let partitions = self.partitions(topic).await?;
        let before = self.readings(topic, group, partitions).await?;
        tokio::time::sleep(SCALE_WINDOW).await;
        let after = self.readings(topic, group, partitions).await?;
        let consumers = store::members::live(&mut self.conn.clone(), topic, group)
            .await?
            .len();
        let (mut handed, mut pending_before) = (0, 0);
        for (partition, (then, now)) in before.iter().zip(&after).enumerate() {
            let stream = keys::partition(topic, partition as u32);
            handed += stream::entries_between(
                &mut self.conn.clone(),
                &stream,
                &then.last_delivered,
                &now.last_delivered,
                MAX_LAG_COUNT,
            )
            .await?;
            pending_before += then.pending;
        }
        let total = |readings: &[Reading]| readings.iter().map(|r| r.lag + r.pending).sum::<u64>();
        let lag = after.iter().map(|r| r.lag).sum::<u64>();
        let pending = after.iter().map(|r| r.pending).sum::<u64>();
        let backlog = total(&after);
        let growth = backlog as i64 - total(&before) as i64;
        let finished = (handed + pending_before).saturating_sub(pending);
        let utilisation_pct = if backlog == 0 {
            0.0
        } else {
            100.0 * backlog as f64 / (backlog + finished) as f64
        };
        let backlog_per_consumer = backlog as f64 / consumers.max(1) as f64;
        let figures = format!(
            "utilisation {utilisation_pct:.1}% ({backlog} waiting, {backlog_per_consumer:.1} per \
             consumer; {finished} finished and the backlog {} by {} in {} ms)",
            if growth < 0 { "shrank" } else { "grew" },
            growth.unsigned_abs(),
            SCALE_WINDOW.as_millis()
        );
        let (decision, reason) = if consumers == 0 && backlog > 0 {
            (
                ScaleDecision::Out,
                format!("jobs are waiting and no consumer is alive: {figures}"),
            )
        } else if utilisation_pct > scale_out_pct && consumers >= partitions as usize {
            (ScaleDecision::NoScale, format!(
                "{figures} is above {scale_out_pct}%, but each of the {partitions} partitions already has a consumer: raise the partition count first"
            ))
        } else if utilisation_pct > scale_out_pct {
            (
                ScaleDecision::Out,
                format!("{figures} is above {scale_out_pct}%"),
            )
        } else if utilisation_pct < scale_in_pct && growth <= 0 && consumers > 1 {
            (
                ScaleDecision::In,
                format!("{figures} is below {scale_in_pct}% and not growing"),
            )
        } else {
            (
                ScaleDecision::NoScale,
                format!("{figures}; thresholds {scale_in_pct}%..{scale_out_pct}%"),
            )
        };
        Ok(ScaleAdvice {
            decision,
            utilisation_pct,
            backlog,
            backlog_per_consumer,
            growth,
            finished,
            window_ms: SCALE_WINDOW.as_millis() as u64,
            lag,
            pending,
            consumers,
            partitions,
            reason,
        })
    }

    /// The group's figures on every partition (an unknown group is an error).
    async fn readings(
        &self,
        topic: &str,
        group: &str,
        partitions: u32,
    ) -> Result<Vec<Reading>, Error> {
        let mut conn = self.conn.clone();
        let mut readings = Vec::with_capacity(partitions as usize);
        let mut known = false;
        for partition in 0..partitions {
            let stream = keys::partition(topic, partition);
            let reading = match stream::group_info(&mut conn, &stream, group).await? {
                Some(row) => {
                    known = true;
                    let lag = stream::lag(
                        &mut conn,
                        &stream,
                        &row.last_delivered,
                        row.lag,
                        MAX_LAG_COUNT,
                    )
                    .await?;
                    Reading {
                        last_delivered: row.last_delivered,
                        pending: row.pending,
                        lag,
                    }
                }
                None => Reading {
                    last_delivered: "0-0".into(),
                    pending: 0,
                    lag: 0,
                },
            };
            readings.push(reading);
        }
        if !known {
            return Err(Error::UnknownGroup {
                topic: topic.into(),
                group: group.into(),
            });
        }
        Ok(readings)
    }

    /// Deletes every dead letter of a topic; returns how many there were.
    pub async fn purge_dead_letters(&self, topic: &str) -> Result<u64, Error> {
        let partitions = self.partitions(topic).await?;
        dlq::purge(&mut self.conn.clone(), topic, partitions).await
    }

    /// Raises a topic's partition count (see [`crate::set_partitions`]); returns the
    /// previous count.
    pub async fn set_partitions(&self, topic: &str, partitions: u32) -> Result<u32, Error> {
        topic::raise(&mut self.conn.clone(), topic, partitions).await
    }
}

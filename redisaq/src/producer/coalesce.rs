//! Single enqueues that happen at the same time share round trips. Each `enqueue` hands
//! its job to the connection's coalescer; the coalescer sends what has gathered as one
//! pipeline, with at most two pipelines on their way. An enqueue alone goes out at once;
//! under load, the jobs that arrive while both pipelines are on their way leave together
//! in the next one: Redis then reads, and the client writes, many jobs per system call
//! instead of one.
//!
//! Each job still gets its own answer: stored, refused (with Redis' reason), unknown when
//! its round trip failed, or late. The coalescer keeps the jobs' deadlines, so an enqueue
//! needs no timer of its own: one timer serves all the jobs queued or on their way.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::TopicState;
use crate::job::JobId;
use crate::store::conn::Conn;
use crate::store::schedule::{Scheduled, When};
use crate::store::stream::{self, NewJob};
use crate::wire::JobFields;

/// Most jobs in one pipeline.
const MOST: usize = 1_000;

/// While a round trip lasts longer than this, the coalescer looks at the jobs queued
/// behind it this often, to answer those whose deadline passed.
const LOOK_AT_QUEUED: Duration = Duration::from_millis(10);

/// A job waiting for its round trip.
pub(super) struct Single {
    pub job: Job,
    pub reply: Reply,
}

/// What is stored of a [`Single`].
pub(super) struct Job {
    pub topic: Arc<TopicState>,
    pub partition: u32,
    pub id: JobId,
    pub payload: String,
    pub enqueued_at_ms: u64,
    pub key: Option<String>,
    /// The enqueuing span's trace context.
    pub trace: Option<String>,
    /// When it runs and its dedupe window, if more than an append.
    pub scheduled: Option<(Option<When>, Option<Duration>)>,
}

/// What became of a [`Single`].
pub(super) enum Answer {
    /// Stored (`None`), or refused with Redis' reason.
    Done(Option<redis::RedisError>),
    /// Its round trip failed; whether it reached Redis the error says.
    Failed(redis::RedisError),
    /// Its deadline passed before it left (not stored) or while it was on its way
    /// (it may be stored).
    Late { sent: bool },
    /// The coalescer stopped (its runtime shut down) before or while it was on its way.
    Gone { sent: bool },
}

/// Where single enqueues go to share round trips; one per connection.
#[derive(Clone)]
pub(super) struct Coalescer {
    singles: mpsc::UnboundedSender<Single>,
}

impl Coalescer {
    /// Starts the coalescer of `conn` on the current runtime.
    pub(super) fn start(conn: Conn) -> Self {
        let (singles, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, waiting));
        Self { singles }
    }

    /// Queues a job; its answer comes on its `answer` channel, by its deadline.
    pub(super) fn send(&self, single: Single) {
        // Refused, it is dropped here, and its reply answers `Gone`.
        let _ = self.singles.send(single);
    }

    /// Whether the coalescer stopped (its runtime shut down).
    pub(super) fn is_closed(&self) -> bool {
        self.singles.is_closed()
    }
}

/// A job's answer channel and deadline, answered exactly once: by the coalescer, or
/// `Gone` when dropped unanswered (the coalescer stopped with the job).
pub(super) struct Reply {
    deadline: Instant,
    sent: bool,
    answer: Option<oneshot::Sender<Answer>>,
}

impl Reply {
    pub(super) fn new(deadline: Instant, answer: oneshot::Sender<Answer>) -> Self {
        Self {
            deadline,
            sent: false,
            answer: Some(answer),
        }
    }

    fn answer(&mut self, answer: Answer) {
        if let Some(channel) = self.answer.take() {
            let _ = channel.send(answer);
        }
    }

    fn waiting(&self) -> bool {
        self.answer.as_ref().is_some_and(|a| !a.is_closed())
    }

    /// Answers `Late` if the deadline passed by `now`.
    fn late(&mut self, now: Instant) {
        if self.deadline <= now {
            let sent = self.sent;
            self.answer(Answer::Late { sent });
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        let sent = self.sent;
        self.answer(Answer::Gone { sent });
    }
}

/// Pipelines on their way at once: while Redis works through one, the callers answered
/// by the other hand in their next jobs. (Measured: one left Redis idle between round
/// trips; four were no faster than two.)
const IN_FLIGHT: usize = 2;

async fn run(conn: Conn, mut waiting: mpsc::UnboundedReceiver<Single>) {
    let mut queued: Vec<(Job, Reply)> = Vec::new();
    let mut trips = futures_util::stream::FuturesUnordered::new();
    let mut on_way: Vec<(u64, Vec<Reply>)> = Vec::new();
    let mut trip_ids = 0u64;
    let alarm = tokio::time::sleep(LOOK_AT_QUEUED);
    tokio::pin!(alarm);
    let mut open = true;
    loop {
        if on_way.len() < IN_FLIGHT {
            if open {
                take_queued(&mut waiting, &mut queued);
            }
            // A second pipeline leaves once it is as full as the one on its way: sooner,
            // it would carry a few jobs at a time.
            let enough = on_way
                .iter()
                .map(|(_, replies)| replies.len())
                .min()
                .unwrap_or(1);
            if queued.len() >= enough {
                // Those who stopped waiting (their enqueue was dropped) are not sent, nor
                // those whose deadline passed while they were queued.
                prune(&mut queued, Instant::now());
            }
            if !queued.is_empty() && queued.len() >= enough {
                let rest = queued.split_off(queued.len().min(MOST));
                let batch = std::mem::replace(&mut queued, rest);
                let (jobs, mut replies): (Vec<Job>, Vec<Reply>) = batch.into_iter().unzip();
                for reply in &mut replies {
                    reply.sent = true;
                }
                let mut conn = conn.clone();
                let id = trip_ids;
                trip_ids += 1;
                trips.push(async move {
                    let added = stream::add(&mut conn, &new_jobs(&jobs), None).await;
                    (id, added)
                });
                on_way.push((id, replies));
                let look = next_look(on_way.iter().flat_map(|(_, r)| r), &queued);
                alarm.as_mut().reset(look);
                continue;
            }
        }
        if on_way.is_empty() {
            if !open {
                return;
            }
            match waiting.recv().await {
                Some(single) => queued.push((single.job, single.reply)),
                None => open = false,
            }
            continue;
        }
        tokio::select! {
            biased;
            Some((id, added)) = trips.next() => {
                let at = on_way.iter().position(|(trip, _)| *trip == id).expect("a trip on its way");
                let (_, mut replies) = on_way.swap_remove(at);
                match added {
                    Ok(added) => {
                        for (reply, refusal) in replies.iter_mut().zip(added.refusals) {
                            reply.answer(Answer::Done(refusal));
                        }
                    }
                    Err(e) => {
                        for reply in &mut replies {
                            reply.answer(Answer::Failed(e.clone()));
                        }
                    }
                }
            }
            single = waiting.recv(), if open && on_way.len() < IN_FLIGHT => match single {
                Some(single) => queued.push((single.job, single.reply)),
                None => open = false,
            },
            () = &mut alarm => {
                if open {
                    take_queued(&mut waiting, &mut queued);
                }
                let now = Instant::now();
                for (_, replies) in &mut on_way {
                    replies.iter_mut().for_each(|reply| reply.late(now));
                }
                prune(&mut queued, now);
                let look = next_look(on_way.iter().flat_map(|(_, r)| r), &queued);
                alarm.as_mut().reset(look);
            }
        }
    }
}

/// Moves what waits in the channel to `queued`.
fn take_queued(waiting: &mut mpsc::UnboundedReceiver<Single>, queued: &mut Vec<(Job, Reply)>) {
    while let Ok(single) = waiting.try_recv() {
        queued.push((single.job, single.reply));
    }
}

/// Answers the queued jobs whose deadline passed by `now`, and drops them and those
/// whose enqueue stopped waiting: neither is sent.
fn prune(queued: &mut Vec<(Job, Reply)>, now: Instant) {
    queued.retain_mut(|(_, reply)| {
        reply.late(now);
        reply.waiting()
    });
}

/// When to look again at the jobs' deadlines: the earliest unanswered one, but not
/// later than [`LOOK_AT_QUEUED`] from now, for the jobs not seen yet.
fn next_look<'a>(replies: impl Iterator<Item = &'a Reply>, queued: &'a [(Job, Reply)]) -> Instant {
    replies
        .chain(queued.iter().map(|(_, reply)| reply))
        .filter(|reply| reply.answer.is_some())
        .map(|reply| reply.deadline)
        .fold(Instant::now() + LOOK_AT_QUEUED, Instant::min)
}

fn new_jobs(jobs: &[Job]) -> Vec<NewJob<'_>> {
    jobs.iter()
        .map(|job| NewJob {
            stream: &job.topic.streams[job.partition as usize],
            fields: JobFields {
                id: job.id.as_str(),
                payload: &job.payload,
                enqueued_at_ms: job.enqueued_at_ms,
                key: job.key.as_deref(),
                for_group: None,
                trace: job
                    .trace
                    .as_deref()
                    .map(|t| (t, job.scheduled.is_some_and(|(when, _)| when.is_some()))),
            },
            scheduled: job.scheduled.map(|(when, window)| Scheduled {
                topic: job.topic.topic,
                partition: job.partition,
                when,
                window,
                all_ids: &job.topic.ids,
            }),
        })
        .collect()
}

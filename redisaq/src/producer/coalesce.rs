//! Single enqueues that happen at the same time share round trips. Each `enqueue` hands
//! its job to the connection's coalescer; the coalescer sends what has gathered as one
//! pipeline, one pipeline at a time. An enqueue alone goes out at once; under load, the
//! jobs that arrive while a pipeline is on its way leave together in the next one: Redis
//! then reads, and the client writes, many jobs per system call instead of one.
//!
//! Each job still gets its own answer: stored, refused (with Redis' reason), or unknown
//! when its round trip failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::TopicState;
use crate::job::JobId;
use crate::store::conn::Conn;
use crate::store::schedule::{Scheduled, When};
use crate::store::stream::{self, NewJob};
use crate::wire::JobFields;

/// Most jobs in one pipeline.
const MOST: usize = 1_000;

/// A job waiting for its round trip.
pub(super) struct Single {
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
    /// Set once the job is on its way: from then on, a lost answer means "unknown".
    pub sending: Arc<AtomicBool>,
    /// `Ok(None)`: stored; `Ok(Some(e))`: refused; `Err(e)`: the round trip failed.
    pub answer: oneshot::Sender<Result<Option<redis::RedisError>, redis::RedisError>>,
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

    /// Queues a job; its answer comes on the job's `answer` channel. If the coalescer is
    /// gone (its runtime shut down) the channel is dropped unanswered, and the job's
    /// `sending` mark tells whether it may have reached Redis.
    pub(super) fn send(&self, single: Single) {
        let _ = self.singles.send(single);
    }
}

async fn run(mut conn: Conn, mut waiting: mpsc::UnboundedReceiver<Single>) {
    loop {
        // While a pipeline is on its way, jobs gather for the next one.
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MOST {
            match waiting.try_recv() {
                Ok(single) => batch.push(single),
                Err(_) => break,
            }
        }
        // An enqueue that gave up before its job left (its deadline passed) must not
        // have it stored after all. Marking first, then checking, leaves no gap: the
        // enqueue reads the mark only after it stopped listening.
        batch.retain(|single| {
            single.sending.store(true, Ordering::SeqCst);
            !single.answer.is_closed()
        });
        if !batch.is_empty() {
            send(&mut conn, batch).await;
        }
    }
}

async fn send(conn: &mut Conn, batch: Vec<Single>) {
    let jobs: Vec<NewJob> = batch
        .iter()
        .map(|single| NewJob {
            stream: &single.topic.streams[single.partition as usize],
            fields: JobFields {
                id: single.id.as_str(),
                payload: &single.payload,
                enqueued_at_ms: single.enqueued_at_ms,
                key: single.key.as_deref(),
                for_group: None,
                trace: single
                    .trace
                    .as_deref()
                    .map(|t| (t, single.scheduled.is_some_and(|(when, _)| when.is_some()))),
            },
            scheduled: single.scheduled.map(|(when, window)| Scheduled {
                topic: single.topic.topic,
                partition: single.partition,
                when,
                window,
                all_ids: &single.topic.ids,
            }),
        })
        .collect();
    let added = stream::add(conn, &jobs, None).await;
    drop(jobs);
    match added {
        Ok(added) => {
            for (single, refusal) in batch.into_iter().zip(added.refusals) {
                let _ = single.answer.send(Ok(refusal));
            }
        }
        Err(e) => {
            for single in batch {
                let _ = single.answer.send(Err(e.clone()));
            }
        }
    }
}

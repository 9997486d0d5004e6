//! Following the change hints of a worker's topics ([`crate::store::changes`]): one task
//! per worker listens on its topics' channels and wakes the coordinators of the topic a
//! hint names, or the movers of delayed jobs.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::changes::Change;
use crate::store::{self, conn::Target};

/// How long to wait before listening again after the connection failed.
const RECONNECT: Duration = Duration::from_secs(1);

/// When the next delayed job of each partition of a topic is due, as the hints said; each
/// with the number of the hint that said so, so a mover takes each hint once.
#[derive(Debug, Default, Clone)]
pub(crate) struct DelayedDue {
    pub by_partition: HashMap<u32, (Instant, u64)>,
    hints: u64,
}

/// What one consumer follows of its topic's hints.
pub(crate) struct TopicHints {
    /// Changes when the coordinator should look at its group.
    pub looks: watch::Receiver<u64>,
    /// Changes when a delayed job became a partition's next.
    pub delayed: watch::Receiver<DelayedDue>,
}

struct Senders {
    looks: watch::Sender<u64>,
    delayed: watch::Sender<DelayedDue>,
}

/// The hints of a worker's topics.
pub(crate) struct Hints {
    topics: HashMap<&'static str, Senders>,
}

impl Hints {
    pub(crate) fn new(topics: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            topics: topics
                .into_iter()
                .map(|topic| {
                    let senders = Senders {
                        looks: watch::Sender::new(0),
                        delayed: watch::Sender::new(DelayedDue::default()),
                    };
                    (topic, senders)
                })
                .collect(),
        }
    }

    /// What a consumer of `topic` (one of those given to [`Hints::new`]) waits on.
    pub(crate) fn subscribe(&self, topic: &'static str) -> TopicHints {
        let senders = &self.topics[topic];
        TopicHints {
            looks: senders.looks.subscribe(),
            delayed: senders.delayed.subscribe(),
        }
    }

    fn wake(&self, change: Change) {
        match change {
            Change::Look(topic) => self.topics[topic].looks.send_modify(|n| *n += 1),
            Change::Delayed(topic, partition, wait) => {
                let at = Instant::now() + wait;
                self.topics[topic].delayed.send_modify(|due| {
                    due.hints += 1;
                    let hint = due.hints;
                    let entry = due.by_partition.entry(partition).or_insert((at, hint));
                    *entry = (entry.0.min(at), hint);
                });
            }
        }
    }

    /// Listens until `stop`. A lost connection is only logged and listened to again:
    /// without hints the coordinators still look every heartbeat interval, and the
    /// movers of delayed jobs check their partitions when the connection is back and
    /// once a minute.
    pub(crate) async fn run(self, target: Target, stop: CancellationToken) {
        let topics: Vec<&'static str> = self.topics.keys().copied().collect();
        loop {
            match store::changes::listen(&target, &topics).await {
                Ok(hints) => {
                    // Whatever changed while nobody listened is looked at now.
                    for topic in &topics {
                        self.wake(Change::Look(topic));
                    }
                    tokio::pin!(hints);
                    loop {
                        tokio::select! {
                            hint = hints.next() => match hint {
                                Some(change) => self.wake(change),
                                None => break,
                            },
                            () = stop.cancelled() => return,
                        }
                    }
                    tracing::debug!("the change hints' connection closed; listening again");
                }
                Err(e) => tracing::debug!(error = %e, "could not listen for change hints"),
            }
            tokio::select! {
                () = tokio::time::sleep(RECONNECT) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

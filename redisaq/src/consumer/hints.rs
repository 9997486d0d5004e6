//! Following the change hints of a worker's topics ([`crate::store::changes`]): one task
//! per worker reads the counters of all its topics in one command every tick, and wakes
//! the coordinators of the topics whose counter moved.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{self, conn::Target};

/// The hints of a worker's topics.
pub(crate) struct Hints {
    topics: HashMap<&'static str, watch::Sender<u64>>,
}

impl Hints {
    pub(crate) fn new(topics: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            topics: topics
                .into_iter()
                .map(|topic| (topic, watch::Sender::new(0)))
                .collect(),
        }
    }

    /// What a consumer of `topic` waits on.
    pub(crate) fn subscribe(&self, topic: &'static str) -> watch::Receiver<u64> {
        self.topics.get(topic).map_or_else(
            || watch::Sender::new(0).subscribe(),
            watch::Sender::subscribe,
        )
    }

    /// Polls every `tick` until `stop`. Failures are only logged: without hints the
    /// coordinators still look every heartbeat interval.
    pub(crate) async fn run(self, target: Target, tick: Duration, stop: CancellationToken) {
        let topics: Vec<&'static str> = self.topics.keys().copied().collect();
        let mut conn = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = stop.cancelled() => return,
            }
            if conn.is_none() {
                conn = target.connect(Duration::from_secs(5), 1).await.ok();
            }
            let Some(conn) = conn.as_mut() else { continue };
            match store::changes::counters(conn, &topics).await {
                Ok(counters) => {
                    for (topic, counter) in topics.iter().zip(counters) {
                        self.topics[topic]
                            .send_if_modified(|seen| std::mem::replace(seen, counter) != counter);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not read the change hints"),
            }
        }
    }
}

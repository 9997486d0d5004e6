//! Following the change hints of a worker's topics ([`crate::store::changes`]): one task
//! per worker listens on its topics' channels and wakes the coordinators of the topic a
//! hint names.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{self, conn::Target};

/// How long to wait before listening again after the connection failed.
const RECONNECT: Duration = Duration::from_secs(1);

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

    /// What a consumer of `topic` (one of those given to [`Hints::new`]) waits on.
    pub(crate) fn subscribe(&self, topic: &'static str) -> watch::Receiver<u64> {
        self.topics[topic].subscribe()
    }

    fn wake(&self, topic: &str) {
        self.topics[topic].send_modify(|n| *n += 1);
    }

    /// Listens until `stop`. A lost connection is only logged and listened to again:
    /// without hints the coordinators still look every heartbeat interval.
    pub(crate) async fn run(self, target: Target, stop: CancellationToken) {
        let topics: Vec<&'static str> = self.topics.keys().copied().collect();
        loop {
            match store::changes::listen(&target, &topics).await {
                Ok(hints) => {
                    // Whatever changed while nobody listened is looked at now.
                    for topic in &topics {
                        self.wake(topic);
                    }
                    tokio::pin!(hints);
                    loop {
                        tokio::select! {
                            hint = hints.next() => match hint {
                                Some(topic) => self.wake(topic),
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

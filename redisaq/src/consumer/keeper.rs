//! Keeping a worker's consumers alive and their partitions their own: every heartbeat
//! interval, one round trip renews every consumer's membership record and every lease it
//! holds (on one node with Redis 7, one script for the whole worker). The heartbeat
//! answers each group's live members, which its coordinator follows.
//!
//! The keeper runs on a thread and runtime of its own, with a connection of its own, so
//! nothing that waits on jobs can hold it up: not a full delivery queue, not a slow
//! trim, not a handler that blocks the worker threads. A failed renewal (a Redis stall,
//! a lost reply, a dropped connection) is tried again within the interval, so a fault
//! shorter than the TTL costs no partition.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{clock, membership, partitions, Shared};
use crate::store::conn::{Conn, Target};
use crate::store::renewal;

/// The keeper of one worker's consumers. Its thread starts with the first consumer and
/// stops when the last handle is dropped or [`stop`](Self::stop) is called.
#[derive(Clone, Default)]
pub(crate) struct Keeper {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    consumers: Mutex<Vec<Arc<Shared>>>,
    /// Held through each renewal: a consumer that leaves waits for it, so that nothing
    /// renews its record or its leases after it let them go.
    renewing: tokio::sync::Mutex<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A consumer's place in the keeper; [`leave`](Self::leave) it before letting its
/// partitions and membership go. Dropped without that (the consumer's future was
/// dropped), it leaves without waiting for a renewal under way.
pub(crate) struct Registration {
    keeper: Keeper,
    shared: Arc<Shared>,
}

impl Keeper {
    /// Renews `shared` from now on, starting the keeper's thread if it is the first.
    pub(crate) fn register(
        &self,
        shared: Arc<Shared>,
        target: &Target,
    ) -> std::io::Result<Registration> {
        let mut thread = self.inner.thread.lock().expect("keeper thread");
        if thread.is_none() {
            let weak = Arc::downgrade(&self.inner);
            let stop = self.inner.stop.clone();
            let target = target.clone();
            let (interval, ttl) = (
                shared.config.heartbeat_interval,
                shared.config.heartbeat_ttl,
            );
            *thread = Some(
                std::thread::Builder::new()
                    .name("redisaq-keeper".into())
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("a runtime for the lease keeper");
                        runtime.block_on(keep(weak, target, interval, ttl, stop));
                    })?,
            );
        }
        self.inner
            .consumers
            .lock()
            .expect("keeper consumers")
            .push(shared.clone());
        Ok(Registration {
            keeper: self.clone(),
            shared,
        })
    }

    /// Stops the thread and waits for it.
    pub(crate) async fn stop(self) {
        self.inner.stop.cancel();
        let thread = self.inner.thread.lock().expect("keeper thread").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    fn remove(&self, shared: &Arc<Shared>) {
        self.inner
            .consumers
            .lock()
            .expect("keeper consumers")
            .retain(|s| !Arc::ptr_eq(s, shared));
    }
}

impl Registration {
    /// Stops renewing this consumer, once a renewal under way is over.
    pub(crate) async fn leave(self) {
        let _renewal_over = self.keeper.inner.renewing.lock().await;
        self.keeper.remove(&self.shared);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.remove(&self.shared);
    }
}

async fn keep(
    inner: std::sync::Weak<Inner>,
    target: Target,
    interval: Duration,
    ttl: Duration,
    stop: CancellationToken,
) {
    // A renewal that takes longer than a quarter of the TTL is given up and tried again.
    let timeout = (ttl / 4).max(Duration::from_millis(50));
    let retry = (interval / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    // The first consumer joined before the keeper starts: what the server is, is known.
    let mut conn = match target.connect(timeout, 6).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(error = %e, "the lease keeper could not be started");
            return;
        }
    };
    let mut next = Instant::now();
    for renewal in 0u64.. {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stop.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let _renewing = inner.renewing.lock().await;
        let consumers = inner.consumers.lock().expect("keeper consumers").clone();
        // Members dead for a day are forgotten now and then, not on every renewal.
        let clean = renewal % CLEAN_EVERY == 0;
        next = if consumers.is_empty() || renew(&consumers, &mut conn, ttl, clean).await {
            Instant::now() + interval
        } else {
            Instant::now() + retry
        };
    }
}

/// One renewal in this many also forgets members dead for a day.
const CLEAN_EVERY: u64 = 12;

/// Renews membership and leases; false if some renewal has to be tried again.
async fn renew(consumers: &[Arc<Shared>], conn: &mut Conn, ttl: Duration, clean: bool) -> bool {
    let held: Vec<Vec<partitions::Tenure>> = consumers.iter().map(|s| s.held.tenures()).collect();
    let members: Vec<renewal::Member> = consumers
        .iter()
        .zip(&held)
        .map(|(shared, tenures)| renewal::Member {
            topic: &shared.topic,
            group: shared.group,
            consumer: &shared.consumer,
            holdings: tenures.iter().map(|&t| shared.holding(t)).collect(),
        })
        .collect();
    let script_flags = consumers.iter().all(|s| s.script_flags);
    let asked_at = clock::now();
    let renewals = match renewal::renew(conn, &members, ttl, script_flags, clean).await {
        Ok(renewals) => renewals,
        Err(e) => {
            // Keep going on the local deadline: if Redis stays away, the leases run out
            // locally before they can run out in Redis.
            tracing::warn!(error = %e, "renewing the heartbeat and leases failed; retrying");
            return false;
        }
    };
    let mut complete = true;
    for ((shared, tenures), renewal) in consumers.iter().zip(held).zip(renewals) {
        match renewal.heartbeat {
            Ok(live) => {
                let snapshot = membership::Snapshot::new(&live, Instant::now());
                shared.members.send_replace(Some(snapshot));
            }
            Err(e) => {
                complete = false;
                tracing::warn!(
                    topic = %shared.topic, group = shared.group, error = %e,
                    "renewing the heartbeat failed; retrying"
                );
            }
        }
        for (tenure, renewed) in tenures.into_iter().zip(renewal.leases) {
            match renewed {
                Ok(true) => shared
                    .held
                    .extend(tenure, partitions::validity(ttl, asked_at)),
                Ok(false) => shared.lease_lost(tenure, "it was not ours when renewing it"),
                Err(e) => {
                    complete = false;
                    tracing::warn!(
                        partition = tenure.partition, error = %e,
                        "renewing a lease failed; retrying"
                    );
                }
            }
        }
    }
    complete
}

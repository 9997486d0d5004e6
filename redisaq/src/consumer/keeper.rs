//! Keeping this consumer alive and its partitions its own: every heartbeat interval, one
//! pipeline renews the membership record and every held lease. The heartbeat answers
//! the group's live members, which the coordinator follows.
//!
//! The keeper runs on a thread and runtime of its own, with a connection of its own, so
//! nothing that waits on jobs can hold it up: not a full delivery queue, not a slow
//! trim, not a handler that blocks the worker threads. A failed renewal (a Redis stall,
//! a lost reply, a dropped connection) is tried again within the interval, so a fault
//! shorter than the TTL costs no partition.

use crate::store::conn::Conn;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{clock, membership, partitions, Shared};
use crate::error::Error;
use crate::store;
use crate::store::{lease, members};

/// Starts the keeper; it renews until `stop` is cancelled.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    target: store::conn::Target,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("redisaq-keeper".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the lease keeper");
            runtime.block_on(keep(shared, target, stop));
        })
}

async fn keep(shared: Arc<Shared>, target: store::conn::Target, stop: CancellationToken) {
    let interval = shared.config.heartbeat_interval;
    let ttl = shared.config.heartbeat_ttl;
    // A renewal that takes longer than a quarter of the TTL is given up and tried again.
    let timeout = (ttl / 4).max(Duration::from_millis(50));
    let retry = (interval / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    // The consumer joined before the keeper starts: what the server is, is known.
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
        // Members dead for a day are forgotten now and then, not on every renewal.
        let clean = renewal % CLEAN_EVERY == 0;
        next = if renew(&shared, &mut conn, ttl, clean).await {
            Instant::now() + interval
        } else {
            Instant::now() + retry
        };
    }
}

/// One renewal in this many also forgets members dead for a day.
const CLEAN_EVERY: u64 = 12;

/// Renews membership and leases; false if Redis could not be asked.
async fn renew(shared: &Shared, conn: &mut Conn, ttl: Duration, clean: bool) -> bool {
    let held = shared.held.tenures();
    let holdings: Vec<_> = held.iter().map(|&t| shared.holding(t)).collect();
    let asked_at = clock::now();
    match lease::renew(
        conn,
        membership::heartbeat_cmd(shared, clean),
        &holdings,
        ttl,
    )
    .await
    {
        Ok(renewal) => {
            let mut complete = true;
            match renewal
                .heartbeat
                .map_err(Error::from)
                .and_then(members::parse_live)
            {
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
            for (tenure, renewed) in held.into_iter().zip(renewal.leases) {
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
            complete
        }
        Err(e) => {
            // Keep going on the local deadline: if Redis stays away, the lease runs out
            // locally before it can run out in Redis.
            tracing::warn!(
                topic = %shared.topic, group = shared.group, error = %e,
                "renewing the heartbeat and leases failed; retrying"
            );
            false
        }
    }
}

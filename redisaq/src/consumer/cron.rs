//! Keeping a handler's cron schedule ([`crate::cron`]): every worker running the handler
//! sleeps until the next fire time and then tries to enqueue its [`Tick`]; the first to
//! claim the fire time in Redis enqueues it, the others find it claimed. After a time
//! when no worker ran, only the latest missed fire time runs, once.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::cron::{self, Schedule, Tick};
use crate::job::JobId;
use crate::store;
use crate::wire::JobFields;

/// Between attempts to reach Redis.
const RETRY: Duration = Duration::from_millis(250);

/// Runs until the consumer shuts down.
pub(crate) async fn run(shared: Arc<Shared>, schedule: Schedule) {
    let Some(mut last) = started(&shared, &schedule).await else {
        return;
    };
    loop {
        let now = cron::now_ms();
        if let Some(fire_ms) = schedule.latest_until(now).filter(|&f| f > last) {
            if !fire(&shared, fire_ms).await {
                return;
            }
            last = fire_ms;
            continue;
        }
        let Some(next) = schedule.next_after(now.max(last)) else {
            tracing::info!(topic = %shared.topic, cron = %schedule.expression, "the cron schedule has no more fire times");
            return;
        };
        let wait = Duration::from_millis(next.saturating_sub(now));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Records the schedule; the last fire time enqueued, or `None` at shutdown.
async fn started(shared: &Shared, schedule: &Schedule) -> Option<u64> {
    loop {
        let recorded = store::cron::start(
            &mut shared.conn.clone(),
            &shared.topic,
            &schedule.expression,
            &schedule.tz_name,
        )
        .await;
        match recorded {
            Ok(last) => return Some(last),
            Err(e) => {
                tracing::warn!(topic = %shared.topic, error = %e, "could not record the cron schedule; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = shared.shutdown.cancelled() => return None,
        }
    }
}

/// Enqueues the tick of `fire_ms` unless another worker did; false at shutdown.
async fn fire(shared: &Shared, fire_ms: u64) -> bool {
    let payload = serde_json::to_string(&Tick::new(fire_ms)).expect("a tick serializes");
    let id = JobId::generate();
    loop {
        let job = JobFields {
            id: id.as_str(),
            payload: &payload,
            enqueued_at_ms: cron::now_ms(),
            key: None,
            for_group: None,
            trace: None,
        };
        match store::cron::fire(&mut shared.conn.clone(), &shared.topic, fire_ms, job).await {
            Ok(true) => {
                tracing::info!(topic = %shared.topic, job_id = %id, fire_ms, "enqueued the cron job of fire time {fire_ms}");
                return true;
            }
            Ok(false) => return true, // another worker did
            Err(e) => {
                tracing::warn!(topic = %shared.topic, error = %e, fire_ms, "could not enqueue the cron job; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = shared.shutdown.cancelled() => return false,
        }
    }
}

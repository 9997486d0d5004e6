//! `redisaq::testing`: jobs captured in memory per test, drained through the registered
//! handlers with retries and follow-up jobs, without a Redis: enqueue points at a closed
//! port, so one that reached for Redis would fail.

use redisaq::{job, testing, Job, JobError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    n: u32,
}

/// Fails its first call of each order, then ships it (enqueues a follow-up).
#[job(topic = "orders", group = "shipping", retries = 2)]
async fn ship(job: Job<Order>) -> Result<(), JobError> {
    if job.attempt() == 1 {
        return Err(JobError::retry("carrier busy"));
    }
    receipt::enqueue(job.payload().clone()).await?;
    Ok(())
}

/// A second group on the topic: gets every order too, and always fails.
#[job(topic = "orders", group = "auditing", retries = 1)]
async fn audit(_job: Job<Order>) -> Result<(), JobError> {
    Err(JobError::retry("audit service down"))
}

#[job(topic = "receipts", group = "receipts")]
async fn receipt(_job: Job<Order>) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test]
async fn captured_jobs_drain_through_every_group_with_retries_and_follow_ups() {
    redisaq::set_redis_url("redis://127.0.0.1:1").unwrap();
    let capture = testing::capture();
    let ids = ship::enqueue_batch([Order { n: 1 }, Order { n: 2 }])
        .await
        .unwrap();
    assert_eq!(
        capture.enqueued::<Order>("orders"),
        [Order { n: 1 }, Order { n: 2 }]
    );
    assert_eq!(capture.ids("orders"), ids);

    let outcomes = capture.drain().await;
    let shipped: Vec<_> = outcomes.iter().filter(|o| o.group == "shipping").collect();
    assert_eq!(shipped.len(), 2);
    assert!(
        shipped.iter().all(|o| o.succeeded() && o.attempts == 2),
        "{shipped:?}"
    );
    let audited: Vec<_> = outcomes.iter().filter(|o| o.group == "auditing").collect();
    assert!(
        audited
            .iter()
            .all(|o| o.attempts == 2 && o.error.as_deref() == Some("audit service down")),
        "{audited:?}"
    );
    // The follow-ups the handler enqueued were captured and drained too.
    assert_eq!(capture.enqueued::<Order>("receipts").len(), 2);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| o.topic == "receipts" && o.succeeded())
            .count(),
        2
    );
    assert!(capture.drain().await.is_empty(), "nothing left");
}

#[tokio::test]
async fn two_tests_capturing_at_once_see_only_their_own_jobs() {
    redisaq::set_redis_url("redis://127.0.0.1:1").unwrap();
    let capture = testing::capture();
    let (other, mine) = tokio::join!(
        // Another test, on a runtime of its own, capturing at the same time.
        tokio::task::spawn_blocking(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let capture = testing::capture();
                    receipt::enqueue(Order { n: 7 }).await.unwrap();
                    capture.enqueued::<Order>("receipts")
                })
        }),
        async {
            receipt::enqueue(Order { n: 8 }).await.unwrap();
            capture.enqueued::<Order>("receipts")
        }
    );
    assert_eq!(other.unwrap(), [Order { n: 7 }]);
    assert_eq!(mine, [Order { n: 8 }]);
}

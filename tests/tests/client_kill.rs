//! Connections killed by Redis (`CLIENT KILL`) mid-run are survived without losing or
//! repeating jobs. Its own test binary: killing every normal client of the server would
//! cut the connections of other tests sharing it.

use std::collections::HashSet;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    enqueue_retrying, eventually, id_set, pending, redis, setup, worker_with_heartbeats,
    Background, Calls,
};

/// The id of every call.
static SEEN: Calls<String> = Calls::new();

#[job(topic = "core_kill", group = "kill_group", partitions = 2)]
async fn survives_client_kill(job: Job<u64>) -> Result<(), JobError> {
    SEEN.push(job.id().to_string());
    Ok(())
}

/// Ids of the clients blocked in `XREADGROUP`: the worker's fetch connections.
fn readers(conn: &mut redis::Connection) -> HashSet<String> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(conn).unwrap();
    list.lines()
        .filter(|l| l.contains("cmd=xreadgroup"))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_survived_without_losing_jobs() {
    setup();
    let worker = Background::start(
        worker_with_heartbeats(Duration::from_millis(500), Duration::from_secs(10))
            .topics([survives_client_kill::TOPIC])
            .concurrency(8),
    );
    let mut ids = HashSet::new();
    let mut conn = redis().connection();
    let mut kills = 0;
    for round in 0..30u64 {
        // Enqueue fails while its own connection is being killed; a caller retries.
        let batch = enqueue_retrying(Duration::from_millis(20), || {
            survives_client_kill::enqueue_batch((0..10).map(|i| round * 10 + i))
        })
        .await;
        ids.extend(id_set(batch));
        if round % 10 == 5 {
            // Wait until the worker reads again, so the kill surely hits its reader.
            let before = tokio::task::block_in_place(|| {
                let mut found = HashSet::new();
                for _ in 0..500 {
                    found = readers(&mut conn);
                    if !found.is_empty() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                found
            });
            assert!(!before.is_empty(), "the worker was reading");
            let _: i64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                .query(&mut conn)
                .unwrap();
            let after = readers(&mut conn);
            assert!(
                before.is_disjoint(&after),
                "the worker's reading connection was killed"
            );
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kills, 3);
    assert_eq!(ids.len(), 300);
    let done = eventually(Duration::from_secs(60), || SEEN.distinct() == ids).await;
    worker.stop().await.unwrap();
    assert!(done, "processed {} of 300", SEEN.len());
    let runs = SEEN.counts();
    let twice: Vec<_> = runs.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "jobs ran twice: {twice:?}");
    assert_eq!(
        pending(
            &mut conn,
            survives_client_kill::TOPIC,
            survives_client_kill::GROUP,
            2
        ),
        0
    );
}

//! Connections killed by Redis (`CLIENT KILL`) mid-run are survived without losing or
//! repeating jobs. Its own test binary: killing every normal client of the server would
//! cut the connections of other tests sharing it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{eventually, init_tracing, pending, redis};

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[job(topic = "core_kill", group = "kill_group", partitions = 2)]
async fn survives_client_kill(job: Job<u64>) -> Result<(), JobError> {
    SEEN.lock().unwrap().push(job.id().to_string());
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

async fn enqueue_retrying(round: u64) -> Vec<String> {
    let mut last = None;
    for _ in 0..200 {
        // Enqueue fails while its own connection is being killed; a caller retries.
        match survives_client_kill::enqueue_batch((0..10).map(|i| round * 10 + i)).await {
            Ok(ids) => return ids.into_iter().map(|id| id.to_string()).collect(),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("enqueue kept failing: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_survived_without_losing_jobs() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    let worker = redisaq::Worker::new()
        .redis_url(redis().url())
        .topics([survives_client_kill::TOPIC])
        .concurrency(8)
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(10));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let mut conn = redis().connection();
    let mut kills = 0;
    for round in 0..30u64 {
        let new = enqueue_retrying(round).await;
        ids.lock().unwrap().extend(new);
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
    let expected = ids.lock().unwrap().clone();
    assert_eq!(expected.len(), 300);
    let done = eventually(Duration::from_secs(60), || {
        SEEN.lock().unwrap().iter().cloned().collect::<HashSet<_>>() == expected
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let seen = SEEN.lock().unwrap().clone();
    assert!(done, "processed {} of 300", seen.len());
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for id in &seen {
        *runs.entry(id.as_str()).or_default() += 1;
    }
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

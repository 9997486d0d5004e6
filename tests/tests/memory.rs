//! A full Redis (`maxmemory` with `noeviction`): enqueue fails with an error that says
//! so, a worker starts all the same, drains and trims the topic, and enqueue works again
//! by itself once memory is free. Its own test binary: it fills its server.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Error, Job, JobError};
use redisaq_tests::{eventually, id_set, pending, redis, setup, worker_with_heartbeats, Calls};

/// The id of every call.
static SEEN: Calls<String> = Calls::new();

#[job(topic = "full", group = "full_group", partitions = 2, maxlen = 100)]
async fn drain(job: Job<String>) -> Result<(), JobError> {
    SEEN.push(job.id().to_string());
    Ok(())
}

fn worker() -> redisaq::Worker {
    worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(3))
        .topics([drain::TOPIC])
}

fn used_memory(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_drains_and_enqueue_recovers_by_itself() {
    setup();
    let mut conn = redis().connection();
    // The topic and its group exist before memory runs out.
    worker()
        .run_until(async {
            eventually(Duration::from_secs(30), || {
                redis::cmd("EXISTS")
                    .arg(redisaq::keys::partition(drain::TOPIC, 1))
                    .query::<bool>(&mut redis().connection())
                    .unwrap()
            })
            .await;
        })
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(&mut conn)
        .unwrap();
    let limit = used_memory(&mut conn) + (2 << 20);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query(&mut conn)
        .unwrap();

    // Enqueue until Redis is full.
    let payload = "x".repeat(1000);
    let mut stored = HashSet::new();
    let mut refusal = None;
    for _ in 0..200 {
        match drain::enqueue_batch((0..100).map(|_| payload.clone())).await {
            Ok(ids) => stored.extend(id_set(ids)),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let Some(Error::Enqueue {
        stored: partly,
        unknown,
        reason,
        ..
    }) = refusal
    else {
        panic!("Redis never filled up: {refusal:?}");
    };
    assert!(reason.contains("out of memory"), "{reason}");
    assert!(unknown.is_empty(), "{unknown:?}");
    stored.extend(id_set(partly));
    // Keep it full whatever Redis frees by itself meanwhile: the limit just below use.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used_memory(&mut conn) - 50_000)
        .query(&mut conn)
        .unwrap();
    assert!(drain::enqueue(payload.clone()).await.is_err(), "still full");

    // A worker starts on the full Redis, drains the topic and trims it.
    let expected = stored.clone();
    let recovered = std::sync::Arc::new(Mutex::new(None));
    let outcome = recovered.clone();
    worker()
        .run_until(async move {
            let drained = eventually(Duration::from_secs(60), || SEEN.distinct() == expected).await;
            // Enqueue works again by itself once trimming freed memory.
            let mut again = None;
            for _ in 0..300 {
                if let Ok(id) = drain::enqueue(String::from("again")).await {
                    again = Some(id.to_string());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let ran = match &again {
                Some(id) => eventually(Duration::from_secs(30), || SEEN.contains(id)).await,
                None => false,
            };
            *outcome.lock().unwrap() = Some((drained, again, ran));
        })
        .await
        .expect("a worker starts and runs on a full Redis");
    let (drained, again, ran) = recovered.lock().unwrap().take().unwrap();
    assert!(drained, "drained {} of {} jobs", SEEN.len(), stored.len());
    assert!(again.is_some(), "enqueue never worked again");
    assert!(ran, "the job enqueued after the recovery ran");
    assert!(SEEN.counts().values().all(|&n| n == 1), "each job once");
    assert_eq!(pending(&mut conn, drain::TOPIC, drain::GROUP, 2), 0);
}

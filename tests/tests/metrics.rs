//! The metrics endpoint after a known workload: 13 jobs, of which 4 fail fatally and one
//! fails once and then succeeds; the lag gauge while jobs wait behind a blocked handler.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{dead_letters, eventually, redis, setup, worker_with_heartbeats, Calls};

static RAN: AtomicU64 = AtomicU64::new(0);
static GATE_OPEN: AtomicBool = AtomicBool::new(false);

#[job(topic = "metered", group = "meter_group", partitions = 2, retries = 2)]
async fn metered(job: Job<u64>) -> Result<(), JobError> {
    // Every job waits until the test has seen the backlog in the lag gauge.
    while !GATE_OPEN.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    RAN.fetch_add(1, Ordering::SeqCst);
    if job.payload().is_multiple_of(4) {
        return Err(JobError::fatal("multiple of four"));
    }
    if *job.payload() == 5 && job.attempt() == 1 {
        return Err(JobError::retry("five fails once"));
    }
    Ok(())
}

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// `name{labels} value` lines of the exposition, by series.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| {
            !l.starts_with('#') && !l.is_empty() && !l.starts_with("HTTP") && l.contains(' ')
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn partition_series(name: &str, partition: u32) -> String {
    format!(r#"{name}{{topic="metered",group="meter_group",partition="{partition}"}}"#)
}

/// The sum of a per-partition gauge over both partitions (missing series count as none).
fn per_partition_sum(values: &HashMap<String, f64>, name: &str) -> Option<f64> {
    (0..2)
        .map(|p| values.get(&partition_series(name, p)).copied())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_match_a_known_workload() {
    setup();
    metered::enqueue_batch(0..13).await.unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let worker = worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(10))
        .topics([metered::TOPIC])
        .metrics_addr(addr)
        .concurrency(1)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10));
    let labels = r#"{topic="metered",group="meter_group"}"#;
    let expected: HashMap<String, f64> = [
        ("redisaq_jobs_processed_total", 9.0),
        ("redisaq_jobs_failed_total", 5.0),
        ("redisaq_jobs_retried_total", 1.0),
        ("redisaq_jobs_dead_lettered_total", 4.0),
        ("redisaq_handler_duration_seconds_count", 14.0),
        ("redisaq_owned_partitions", 2.0),
    ]
    .into_iter()
    .map(|(name, value)| (format!("{name}{labels}"), value))
    .collect();
    let outcome = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = outcome.clone();
    let wanted = expected.clone();
    worker
        .run_until(async move {
            let scrape_now = || async move {
                samples(
                    &tokio::task::spawn_blocking(move || scrape(addr))
                        .await
                        .unwrap(),
                )
            };
            // With one call at a time held at the gate, the rest wait unread: lag.
            let mut lag_seen = None;
            for _ in 0..300 {
                let values = scrape_now().await;
                if let Some(lag) = per_partition_sum(&values, "redisaq_partition_lag") {
                    if lag > 0.0 {
                        lag_seen = Some(lag);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            GATE_OPEN.store(true, Ordering::SeqCst);
            let done = eventually(Duration::from_secs(30), || {
                RAN.load(Ordering::SeqCst) == 14
                    && dead_letters(&mut redis().connection(), "metered").len() == 4
            })
            .await;
            // Acks and gauges land within a heartbeat or two: poll for the final values.
            let mut last = HashMap::new();
            for _ in 0..300 {
                last = scrape_now().await;
                let counters = wanted.iter().all(|(k, v)| last.get(k) == Some(v));
                let drained = per_partition_sum(&last, "redisaq_partition_pending") == Some(0.0)
                    && per_partition_sum(&last, "redisaq_partition_lag") == Some(0.0);
                if counters && drained {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            *keep.lock().unwrap() = Some((lag_seen, done, last));
        })
        .await
        .unwrap();
    let (lag_seen, done, values) = outcome.lock().unwrap().take().unwrap();
    assert!(
        lag_seen.is_some_and(|lag| lag > 0.0),
        "the lag gauge showed the jobs waiting"
    );
    assert!(done, "every job ran");
    for (series, value) in &expected {
        assert_eq!(values.get(series), Some(value), "{series}: {values:#?}");
    }
    for partition in 0..2 {
        for name in ["redisaq_partition_pending", "redisaq_partition_lag"] {
            assert_eq!(
                values.get(&partition_series(name, partition)),
                Some(&0.0),
                "{name} of partition {partition}: {values:#?}"
            );
        }
    }
}

/// The payload of every call of `survivor`.
static SURVIVORS: Calls<u64> = Calls::new();

#[job(topic = "deleted_pending", group = "deleted_group", partitions = 1)]
async fn survivor(job: Job<u64>) -> Result<(), JobError> {
    SURVIVORS.push(*job.payload());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_while_pending_is_counted_and_never_hangs() {
    setup();
    let mut conn = redis().connection();
    survivor::enqueue_batch(0..3).await.unwrap();
    let stream = redisaq::keys::partition(survivor::TOPIC, 0);
    // A consumer that is not alive read all three, then someone deleted one of them.
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", &stream, survivor::GROUP, "0", "MKSTREAM"])
        .query(&mut conn)
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            survivor::GROUP,
            "ghost",
            "COUNT",
            "10",
            "STREAMS",
            &stream,
            ">",
        ])
        .query(&mut conn)
        .unwrap();
    let deleted = read.keys[0].ids[1].id.clone();
    let _: () = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&deleted)
        .query(&mut conn)
        .unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let scraped = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let keep = scraped.clone();
    worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(10))
        .topics([survivor::TOPIC])
        .metrics_addr(addr)
        .run_until(async move {
            let series =
                r#"redisaq_entries_lost_total{topic="deleted_pending",group="deleted_group"}"#;
            for _ in 0..300 {
                let values = samples(
                    &tokio::task::spawn_blocking(move || scrape(addr))
                        .await
                        .unwrap(),
                );
                let settled = SURVIVORS.len() == 2
                    && values.get(series) == Some(&1.0)
                    && redisaq_tests::pending(
                        &mut redis().connection(),
                        survivor::TOPIC,
                        survivor::GROUP,
                        1,
                    ) == 0;
                *keep.lock().unwrap() = values;
                if settled {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap();
    let values = scraped.lock().unwrap().clone();
    assert_eq!(
        SURVIVORS.sorted(),
        vec![0, 2],
        "the two entries still there ran"
    );
    assert_eq!(
        values.get(r#"redisaq_entries_lost_total{topic="deleted_pending",group="deleted_group"}"#),
        Some(&1.0),
        "{values:#?}"
    );
    assert_eq!(
        redisaq_tests::pending(&mut conn, survivor::TOPIC, survivor::GROUP, 1),
        0,
        "nothing hangs on the deleted entry"
    );
}

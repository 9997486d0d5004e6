//! The metrics endpoint after a known workload: 9 jobs succeed, 4 fail fatally.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{dead_letters, eventually, redis};

static RAN: AtomicU64 = AtomicU64::new(0);

#[job(topic = "metered", group = "meter_group", partitions = 2, retries = 2)]
async fn metered(job: Job<u64>) -> Result<(), JobError> {
    RAN.fetch_add(1, Ordering::SeqCst);
    if job.payload().is_multiple_of(4) {
        return Err(JobError::fatal("multiple of four"));
    }
    Ok(())
}

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_a_known_workload() {
    redisaq::set_redis_url(&redis().url()).unwrap();
    metered::enqueue_batch(0..13).await.unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let worker = redisaq::Worker::new()
        .redis_url(redis().url())
        .metrics_addr(addr)
        .heartbeat_interval(Duration::from_millis(200))
        .heartbeat_ttl(Duration::from_millis(600));
    let scraped = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let keep = scraped.clone();
    worker
        .run_until(async move {
            let done = eventually(Duration::from_secs(30), || {
                RAN.load(Ordering::SeqCst) == 13
                    && dead_letters(&mut redis().connection(), "metered").len() == 4
            })
            .await;
            assert!(done);
            // Acks and gauges land within a heartbeat or two.
            tokio::time::sleep(Duration::from_millis(600)).await;
            *keep.lock().unwrap() = tokio::task::spawn_blocking(move || scrape(addr))
                .await
                .unwrap();
        })
        .await
        .unwrap();
    let text = scraped.lock().unwrap().clone();
    let values = samples(&text);
    let labels = r#"{topic="metered",group="meter_group"}"#;
    assert_eq!(
        values[&format!("redisaq_jobs_processed_total{labels}")],
        9.0,
        "{text}"
    );
    assert_eq!(
        values[&format!("redisaq_jobs_failed_total{labels}")],
        4.0,
        "{text}"
    );
    assert_eq!(
        values[&format!("redisaq_jobs_dead_lettered_total{labels}")],
        4.0,
        "{text}"
    );
    let retried = values.get(&format!("redisaq_jobs_retried_total{labels}"));
    assert!(
        retried.is_none_or(|&r| r == 0.0),
        "fatal errors are not retried: {text}"
    );
    assert_eq!(
        values[&format!("redisaq_handler_duration_seconds_count{labels}")],
        13.0,
        "{text}"
    );
    assert_eq!(
        values[&format!("redisaq_owned_partitions{labels}")],
        2.0,
        "{text}"
    );
    for partition in 0..2 {
        let series = format!(
            r#"redisaq_partition_pending{{topic="metered",group="meter_group",partition="{partition}"}}"#
        );
        assert_eq!(values[&series], 0.0, "{text}");
    }
}

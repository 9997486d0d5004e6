//! The `delayed` scenario: jobs all due at one moment. It reports how fast they were
//! moved into their streams (promotion jobs/s, from the due time to the last move) and how
//! late each move was (the stream entry's time minus the due time: p50, p99, max).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redisaq::{job, EnqueueOptions, Job, JobError};

use super::{payload, percentile, work_off, Bench, Outcome, Payload, HANDLED, PARTITIONS};

#[job(topic = "bench_delayed", group = "bench_delayed", partitions = 4)]
async fn bench_delayed(_job: Job<Payload>) -> Result<(), JobError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub(crate) async fn run(bench: &mut Bench) {
    bench.reset().await;
    HANDLED.store(0, Ordering::SeqCst);
    let jobs = bench.args.jobs.min(100_000);
    // Due once all are enqueued, with room to spare on a slow machine.
    let lead = Duration::from_secs(2) + Duration::from_secs_f64(jobs as f64 / 20_000.0);
    let due = SystemTime::now() + lead;
    let due_ms = due.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut n = 0;
    while n < jobs {
        let chunk: Vec<_> = (n..(n + 1_000).min(jobs))
            .map(|i| (payload(i), EnqueueOptions::new().at(due)))
            .collect();
        n += chunk.len() as u64;
        bench_delayed::enqueue_batch_with(chunk).await.unwrap();
    }
    let enqueued_by = SystemTime::now();
    if enqueued_by > due {
        eprintln!("delayed: enqueueing took longer than the lead; the figures are invalid");
    }
    let bar = bench.progress("delayed", jobs);
    let started = Instant::now();
    work_off(bench, bench_delayed::TOPIC, jobs, &bar).await;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    // Lateness of each move, in µs, from the entries' ids (ms of the XADD).
    let mut lateness = Vec::with_capacity(jobs as usize);
    let mut last_ms = due_ms;
    for partition in 0..PARTITIONS {
        let rows: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(redisaq::keys::partition(bench_delayed::TOPIC, partition))
            .arg("-")
            .arg("+")
            .query_async(&mut bench.conn)
            .await
            .unwrap();
        for row in rows.ids {
            let ms: u64 = row.id.split('-').next().unwrap().parse().unwrap();
            last_ms = last_ms.max(ms);
            lateness.push(ms.saturating_sub(due_ms) * 1000);
        }
    }
    assert_eq!(lateness.len() as u64, jobs, "delayed: every job moved once");
    lateness.sort_unstable();
    let figures: HashMap<String, f64> = [("p50", 0.5), ("p99", 0.99), ("max", 1.0)]
        .into_iter()
        .map(|(name, p)| (name.to_string(), percentile(&lateness, p)))
        .collect();
    let spread_s = ((last_ms - due_ms) as f64 / 1000.0).max(0.001);
    let rate = jobs as f64 / spread_s;
    eprintln!(
        "{:>16}: {jobs} jobs due at once moved in {spread_s:.2} s = {rate:.0} jobs/s; \
         lateness p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (all ran {:.2} s after the worker started)",
        "delayed",
        figures["p50"],
        figures["p99"],
        figures["max"],
        elapsed.as_secs_f64()
    );
    bench.outcomes.push(Outcome {
        scenario: "delayed".into(),
        jobs,
        seconds: spread_s,
        jobs_per_second: rate,
        ratio_to_raw: None,
        latency_ms: Some(figures),
        cost: None,
    });
}

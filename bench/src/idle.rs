//! The `idle` scenario: what consumers cost Redis while there is nothing to do. 20
//! topics, each with 2 groups, run by 3 workers (120 consumers); once they have settled,
//! Redis' command counts over 10 s, per consumer and second. Blocking reads are counted
//! apart: each waits up to the block time for nothing.

use std::time::Duration;

use redisaq::{job, Job, JobError};
use serde::Serialize;

use super::{commands_over, Bench};

/// Declares an idle topic with two groups.
macro_rules! idle_topic {
    ($topic:literal, $a:ident, $b:ident) => {
        #[job(topic = $topic, group = "idle_a", partitions = 2)]
        async fn $a(_job: Job<u64>) -> Result<(), JobError> {
            Ok(())
        }

        #[job(topic = $topic, group = "idle_b", partitions = 2)]
        async fn $b(_job: Job<u64>) -> Result<(), JobError> {
            Ok(())
        }
    };
}

idle_topic!("idle_00", idle_00_a, idle_00_b);
idle_topic!("idle_01", idle_01_a, idle_01_b);
idle_topic!("idle_02", idle_02_a, idle_02_b);
idle_topic!("idle_03", idle_03_a, idle_03_b);
idle_topic!("idle_04", idle_04_a, idle_04_b);
idle_topic!("idle_05", idle_05_a, idle_05_b);
idle_topic!("idle_06", idle_06_a, idle_06_b);
idle_topic!("idle_07", idle_07_a, idle_07_b);
idle_topic!("idle_08", idle_08_a, idle_08_b);
idle_topic!("idle_09", idle_09_a, idle_09_b);
idle_topic!("idle_10", idle_10_a, idle_10_b);
idle_topic!("idle_11", idle_11_a, idle_11_b);
idle_topic!("idle_12", idle_12_a, idle_12_b);
idle_topic!("idle_13", idle_13_a, idle_13_b);
idle_topic!("idle_14", idle_14_a, idle_14_b);
idle_topic!("idle_15", idle_15_a, idle_15_b);
idle_topic!("idle_16", idle_16_a, idle_16_b);
idle_topic!("idle_17", idle_17_a, idle_17_b);
idle_topic!("idle_18", idle_18_a, idle_18_b);
idle_topic!("idle_19", idle_19_a, idle_19_b);

const TOPICS: usize = 20;
const WORKERS: usize = 3;
const CONSUMERS: usize = TOPICS * 2 * WORKERS;
/// Long enough for the joins and the first hand-overs to be over (default heartbeats).
const SETTLE: Duration = Duration::from_secs(12);
const MEASURED: Duration = Duration::from_secs(10);

/// What the idle scenario measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Idle {
    pub consumers: usize,
    pub seconds: f64,
    /// Commands per second per consumer, blocking reads left out.
    pub commands_per_consumer_second: f64,
    /// Blocking reads (`XREADGROUP`) per second per consumer.
    pub blocking_reads_per_consumer_second: f64,
    /// The commands counted, busiest first, per second per consumer.
    pub by_command: Vec<(String, f64)>,
}

pub(crate) async fn run(bench: &mut Bench) -> Idle {
    bench.reset().await;
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("idle_{t:02}")).collect();
    let mut stops = Vec::new();
    let mut running = Vec::new();
    for _ in 0..WORKERS {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = redisaq::Worker::new()
            .redis_url(bench.url.clone())
            .topics(topics.iter().map(String::as_str));
        running.push(tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
        })));
        stops.push(stop);
    }
    tokio::time::sleep(SETTLE).await;
    let (seconds, counts) = commands_over(&mut bench.conn.clone(), MEASURED).await;
    for stop in stops {
        let _ = stop.send(());
    }
    for worker in running {
        worker.await.unwrap().unwrap();
    }

    let by_command: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(name, n)| (name, n as f64 / seconds / CONSUMERS as f64))
        .collect();
    let reads: f64 = by_command
        .iter()
        .filter(|(name, _)| name == "xreadgroup")
        .map(|(_, n)| n)
        .sum();
    let all: f64 = by_command.iter().map(|(_, n)| n).sum();
    let idle = Idle {
        consumers: CONSUMERS,
        seconds,
        commands_per_consumer_second: all - reads,
        blocking_reads_per_consumer_second: reads,
        by_command,
    };
    eprintln!(
        "{:>16}: {} consumers ({TOPICS} topics x 2 groups x {WORKERS} workers) with nothing to do: \
         {:.2} commands/s each, and {:.2} blocking reads/s",
        "idle", idle.consumers, idle.commands_per_consumer_second, idle.blocking_reads_per_consumer_second
    );
    idle
}

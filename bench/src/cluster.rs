//! The cluster scenarios (`--cluster`): the consume-single workload on a local Redis
//! Cluster (3 masters, 3 replicas) beside the same on one node, and what a topic's
//! coordination keys (`{topic}`, on one shard) cost that shard, busy and idle.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redisaq_tests::cluster::RedisCluster;

use super::{bench_single, info, info_field, payload, Bench, Payload, HANDLED, PARTITIONS};

/// `total_commands_processed` of the node on `port`.
async fn commands(port: u16) -> u64 {
    let client = redis::Client::open(RedisCluster::node_url(port)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    info_field(
        &info(&mut conn, &["stats"]).await,
        "total_commands_processed",
    ) as u64
}

/// Commands per second on each master over `during`, the coordination shard first.
async fn command_rates(masters: &[u16], during: impl std::future::Future<Output = ()>) -> Vec<f64> {
    let mut before = Vec::new();
    for &port in masters {
        before.push(commands(port).await);
    }
    let started = Instant::now();
    during.await;
    let seconds = started.elapsed().as_secs_f64();
    let mut rates = Vec::new();
    for (&port, before) in masters.iter().zip(before) {
        rates.push(commands(port).await.saturating_sub(before) as f64 / seconds);
    }
    rates
}

/// Jobs handled and nothing pending in the topic's group, on the cluster.
async fn drained(conn: &mut redis::cluster_async::ClusterConnection, jobs: u64) -> bool {
    if HANDLED.load(Ordering::Relaxed) < jobs {
        return false;
    }
    for p in 0..PARTITIONS {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(redisaq::keys::partition(bench_single::TOPIC, p))
            .arg(bench_single::GROUP)
            .query_async(conn)
            .await
            .unwrap();
        if let redis::Value::Array(items) = summary {
            if items.first() != Some(&redis::Value::Int(0)) {
                return false;
            }
        }
    }
    true
}

pub(crate) async fn run(bench: &mut Bench) {
    let cluster = RedisCluster::start().expect("start a local Redis Cluster");
    let url = cluster.url();
    redisaq::set_redis_url(&url).unwrap();
    let coordination = cluster
        .master_of(&redisaq::keys::meta(bench_single::TOPIC))
        .unwrap();
    let mut masters = cluster.masters();
    masters.sort_by_key(|&port| port != coordination);
    let mut partitions_on = vec![0; masters.len()];
    for p in 0..PARTITIONS {
        let home = cluster.master_of(&redisaq::keys::partition(bench_single::TOPIC, p));
        if let Some(i) = masters.iter().position(|&m| Some(m) == home) {
            partitions_on[i] += 1;
        }
    }
    let mut conn = redis::cluster::ClusterClient::new(url.split(','))
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();

    let jobs = bench.args.jobs;
    HANDLED.store(0, Ordering::SeqCst);
    let mut n = 0;
    while n < jobs {
        let chunk: Vec<Payload> = (n..(n + 1_000).min(jobs)).map(payload).collect();
        n += chunk.len() as u64;
        bench_single::enqueue_batch(chunk).await.unwrap();
    }
    let started = Instant::now();
    let worker = redisaq::Worker::new()
        .redis_url(url.clone())
        .topics([bench_single::TOPIC]);
    let mut busy = Vec::new();
    worker
        .run_until(async {
            busy = command_rates(&masters, async {
                while !drained(&mut conn, jobs).await {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        })
        .await
        .unwrap();
    bench
        .record(
            "cluster-consume",
            jobs,
            started.elapsed(),
            Some("consume-single"),
        )
        .await;

    // Three workers with nothing to do.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let idle: Vec<_> = (0..3)
        .map(|i| {
            let mut stopped = stopped.clone();
            tokio::spawn(
                redisaq::Worker::new()
                    .redis_url(url.clone())
                    .topics([bench_single::TOPIC])
                    .consumer_name(format!("idle-{i}"))
                    .run_until(async move {
                        let _ = stopped.wait_for(|&s| s).await;
                    }),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await; // settled
    let idle_rates = command_rates(&masters, tokio::time::sleep(Duration::from_secs(10))).await;
    let _ = stop.send(true);
    for worker in idle {
        worker.await.unwrap().unwrap();
    }
    let shown = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    eprintln!(
        "{:>16}: commands/s per master (the topic's coordination shard first; partitions on \
         each {:?}): busy (1 worker consuming) {}; idle (3 workers) {}",
        "cluster-shards",
        partitions_on,
        shown(&busy),
        shown(&idle_rates)
    );
    bench.cluster_shards = Some(serde_json::json!({
        "masters": masters,
        "partitions_per_master": partitions_on,
        "busy_commands_per_second": busy,
        "idle_commands_per_second": idle_rates,
    }));
}

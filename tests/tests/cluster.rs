//! redisaq on a real local Redis Cluster (3 masters, 3 replicas): partitions spread over
//! the masters, worker processes given different nodes' URLs, both groups of a topic
//! run every job, nothing is left pending. The tests share one cluster and run one at a
//! time (a cluster on 2 busy cores is sensitive to load).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::cluster::RedisCluster;
use redisaq_tests::{calls, eventually, pending, worker_command_at, KillOnDrop, RedisServer};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

const WORKER: &str = env!("CARGO_BIN_EXE_test_worker");
const PARTITIONS: u32 = 12;

/// One test at a time on the cluster.
static ALONE: Mutex<()> = Mutex::const_new(());

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work {
    n: u64,
}

/// The test workers' `spread` topic, declared here to enqueue into it (this process
/// runs no worker).
#[job(topic = "spread", group = "spread_a", partitions = 12)]
async fn spread(_job: Job<Work>) -> Result<(), JobError> {
    Ok(())
}

fn cluster() -> &'static RedisCluster {
    static CLUSTER: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start().unwrap_or_else(|e| panic!("{e}")))
}

/// Where the test workers record the calls: a Redis of its own, untouched by the faults
/// the tests inject into the cluster.
fn records() -> &'static RedisServer {
    static RECORDS: std::sync::OnceLock<RedisServer> = std::sync::OnceLock::new();
    RECORDS.get_or_init(|| RedisServer::start().unwrap_or_else(|e| panic!("{e}")))
}

/// A worker process of both groups of `spread`, pointed at `url`.
fn spread_worker(url: &str, name: &str) -> KillOnDrop {
    KillOnDrop::spawn(
        worker_command_at(WORKER, url, name, "spread", 0)
            .env("TEST_RECORD_URL", records().url())
            // A cluster on a busy 2-core machine answers slowly at times.
            .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "500")
            .env("REDISAQ_HEARTBEAT_TTL_MS", "5000")
            .stdout(std::process::Stdio::null()),
    )
}

/// What each group has pending on `spread`.
fn pending_ab(conn: &mut redis::cluster::ClusterConnection) -> (u64, u64) {
    (
        pending(conn, "spread", "spread_a", PARTITIONS),
        pending(conn, "spread", "spread_b", PARTITIONS),
    )
}

/// Waits up to `limit` until both groups ran every one of `ids` and nothing is pending.
async fn both_groups_ran<'a>(ids: impl IntoIterator<Item = &'a String>, limit: Duration) -> bool {
    let ids: Vec<&String> = ids.into_iter().collect();
    let mut conn = cluster().connection();
    let mut recorded = records().connection();
    eventually(limit, || {
        let a = calls(&mut recorded, "spread_a");
        let b = calls(&mut recorded, "spread_b");
        ids.iter()
            .all(|id| a.contains_key(*id) && b.contains_key(*id))
            && pending_ab(&mut conn) == (0, 0)
    })
    .await
}

async fn enqueue(from: u64, count: u64) -> Vec<String> {
    let mut ids = Vec::new();
    let mut n = from;
    while n < from + count {
        let chunk = (n..(n + 1000).min(from + count)).map(|n| Work { n });
        ids.extend(
            spread::enqueue_batch(chunk)
                .await
                .expect("enqueue")
                .iter()
                .map(ToString::to_string),
        );
        n += 1000;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_over_the_masters_and_both_groups_run_them_all() {
    let _alone = ALONE.lock().await;
    let cluster = cluster();
    redisaq::set_redis_url(&cluster.url()).unwrap();
    let masters = cluster.masters();
    let replicas = cluster.replicas();
    assert_eq!(
        (masters.len(), replicas.len()),
        (3, 3),
        "{masters:?} {replicas:?}"
    );

    // Every node URL form SPEC.md allows: the whole list, one replica, one master.
    let _workers = [
        spread_worker(&cluster.url(), "all-nodes"),
        spread_worker(&RedisCluster::node_url(replicas[0]), "a-replica"),
        spread_worker(&RedisCluster::node_url(masters[1]), "a-master"),
    ];
    let mut ids: HashSet<String> = enqueue(0, 20_000).await.into_iter().collect();
    assert_eq!(ids.len(), 20_000);
    // On a cluster every master has a replica: waiting for one is confirmed.
    let confirmed = spread::enqueue_with(
        Work { n: 20_000 },
        redisaq::EnqueueOptions::new().wait_replicas(1),
    )
    .await
    .expect("a replica confirms the job");
    ids.insert(confirmed.to_string());

    let all_done = both_groups_ran(&ids, Duration::from_secs(180)).await;
    let mut conn = cluster.connection();
    let mut recorded = records().connection();
    assert!(
        all_done,
        "processed by spread_a / spread_b: {} / {} of 20001; pending {:?}",
        calls(&mut recorded, "spread_a").len(),
        calls(&mut recorded, "spread_b").len(),
        pending_ab(&mut conn)
    );
    for group in ["spread_a", "spread_b"] {
        let seen = calls(&mut recorded, group);
        let twice = ids.iter().filter(|id| seen.get(*id) > Some(&1)).count();
        eprintln!("{group}: {twice} job(s) ran more than once");
    }

    // The tools read the cluster like a single Redis.
    let admin = redisaq::admin::Admin::connect(&cluster.url())
        .await
        .expect("the admin connects to the cluster");
    let topic = admin
        .topics()
        .await
        .expect("topics")
        .into_iter()
        .find(|t| t.topic == "spread")
        .expect("the spread topic is listed");
    assert_eq!(topic.partitions, PARTITIONS);
    assert!(topic.streams.iter().map(|s| s.length).sum::<u64>() > 0);
    let groups = admin.groups("spread").await.expect("groups");
    let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["spread_a", "spread_b"]);
    for group in &groups {
        assert_eq!((group.lag, group.pending), (0, 0), "{group:?}");
        assert_eq!(group.consumers.len(), 3, "{group:?}");
    }
    let monitored = admin
        .monitor("spread", "spread_a", 60_000, 1000)
        .await
        .expect("monitor");
    assert!(!monitored.is_empty());
    assert!(admin
        .dead_letters("spread", None, 10)
        .await
        .expect("dead letters")
        .is_empty());
    assert_eq!(admin.purge_dead_letters("spread").await.expect("purge"), 0);

    // The partitions live on every master.
    let homes: BTreeSet<u16> = (0..PARTITIONS)
        .filter_map(|p| cluster.master_of(&redisaq::keys::partition("spread", p)))
        .collect();
    assert_eq!(
        homes,
        masters.iter().copied().collect(),
        "partition streams on every master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_taken_over() {
    let _alone = ALONE.lock().await;
    let cluster = cluster();
    redisaq::set_redis_url(&cluster.url()).unwrap();
    let mut victim = spread_worker(&cluster.url(), "victim");
    let _others = [
        spread_worker(&cluster.url(), "survivor-1"),
        spread_worker(&cluster.url(), "survivor-2"),
    ];
    let ids: HashSet<String> = enqueue(100_000, 5_000).await.into_iter().collect();
    let mut conn = cluster.connection();
    let mut recorded = records().connection();
    assert!(
        eventually(Duration::from_secs(60), || {
            calls(&mut recorded, "spread_a")
                .keys()
                .filter(|id| ids.contains(*id))
                .count()
                > 500
        })
        .await,
        "the workers got going"
    );
    victim.0.kill().expect("kill -9 the worker");
    let _ = victim.0.wait();
    let more: HashSet<String> = enqueue(105_000, 5_000).await.into_iter().collect();
    let done = both_groups_ran(ids.iter().chain(&more), Duration::from_secs(120)).await;
    assert!(
        done,
        "every job processed by both groups after the kill; pending {:?}",
        pending_ab(&mut conn)
    );
}

/// A master is killed while jobs are enqueued and processed: its replica takes over,
/// the workers go on. Asynchronous replication may lose what the master acknowledged
/// just before it died (counted and reported); every other job (enqueued more than a
/// second before the kill, or after it) is processed, and nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_is_survived() {
    let _alone = ALONE.lock().await;
    let cluster = cluster();
    redisaq::set_redis_url(&cluster.url()).unwrap();
    let mut workers = [
        spread_worker(&cluster.url(), "fo-1"),
        spread_worker(&cluster.url(), "fo-2"),
        spread_worker(&cluster.url(), "fo-3"),
    ];
    // A producer enqueuing 100 jobs at a time, noting when each batch was acknowledged.
    let producing = tokio::spawn(async move {
        let mut batches = Vec::new();
        let mut failed = 0;
        let started = std::time::Instant::now();
        let mut n = 200_000;
        while started.elapsed() < Duration::from_secs(10) {
            match spread::enqueue_batch((n..n + 100).map(|n| Work { n })).await {
                Ok(ids) => batches.push((
                    std::time::Instant::now(),
                    ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
                )),
                Err(_) => failed += 1,
            }
            n += 100;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (batches, failed)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = cluster
        .master_of(&redisaq::keys::partition("spread", 0))
        .unwrap();
    cluster.kill(victim);
    let killed_at = std::time::Instant::now();
    let (batches, failed) = producing.await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            let masters = cluster.masters();
            masters.len() == 3 && !masters.contains(&victim)
        })
        .await,
        "a replica took over from {victim}: masters {:?}",
        cluster.masters()
    );
    cluster
        .wait_serving(Duration::from_secs(60))
        .expect("the cluster serves every slot");

    let enqueued: Vec<(std::time::Instant, String)> = batches
        .into_iter()
        .flat_map(|(at, ids)| ids.into_iter().map(move |id| (at, id)))
        .collect();
    // Acknowledged after the kill means written by a live master: never lost.
    let safe: Vec<&String> = enqueued
        .iter()
        .filter(|(at, _)| *at + Duration::from_secs(1) < killed_at || *at > killed_at)
        .map(|(_, id)| id)
        .collect();
    let settled = both_groups_ran(safe.iter().copied(), Duration::from_secs(180)).await;
    let mut conn = cluster.connection();
    let mut recorded = records().connection();
    let (a, b) = (
        calls(&mut recorded, "spread_a"),
        calls(&mut recorded, "spread_b"),
    );
    let lost = |seen: &std::collections::HashMap<String, u64>| {
        enqueued
            .iter()
            .filter(|(_, id)| !seen.contains_key(id))
            .count()
    };
    let twice = |seen: &std::collections::HashMap<String, u64>| {
        enqueued
            .iter()
            .filter(|(_, id)| seen.get(id).is_some_and(|&n| n > 1))
            .count()
    };
    eprintln!(
        "failover: {} enqueued ({} batches refused during the failover), {} of them more than \
         1 s before the kill or after it; lost {} / {}, ran twice {} / {} (spread_a / spread_b); pending {:?}",
        enqueued.len(),
        failed,
        safe.len(),
        lost(&a),
        lost(&b),
        twice(&a),
        twice(&b),
        pending_ab(&mut conn)
    );
    // The old master comes back as a replica, for the tests after this one (whatever
    // this one finds).
    cluster.restart(victim).expect("restart the old master");
    cluster
        .wait_healthy(Duration::from_secs(60))
        .expect("the cluster is whole again");
    assert!(
        settled,
        "every job enqueued more than 1 s before the kill, or after it, processed by both \
         groups, nothing pending"
    );
    for worker in &mut workers {
        assert!(worker.exited().is_none(), "the workers stay up");
    }
}

/// The test workers' scheduling topics, declared here to enqueue into them.
#[job(topic = "delayed", group = "producer_only", partitions = 4)]
async fn delayed(_job: Job<Work>) -> Result<(), JobError> {
    Ok(())
}

#[job(
    topic = "once",
    group = "producer_only",
    partitions = 4,
    dedupe_window_s = 3600
)]
async fn once(_job: Job<Work>) -> Result<(), JobError> {
    Ok(())
}

#[job(topic = "rate_group", group = "producer_only", partitions = 4)]
async fn rate_group(_job: Job<Work>) -> Result<(), JobError> {
    Ok(())
}

/// Delayed jobs, ids stored once, a cron schedule, a rate limit and a pause, with every
/// key on the partition's or the topic's slot: all of it on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_and_flow_control_work_on_the_cluster() {
    use redisaq::EnqueueOptions;
    let _alone = ALONE.lock().await;
    let cluster = cluster();
    redisaq::set_redis_url(&cluster.url()).unwrap();
    let admin = redisaq::admin::Admin::connect(&cluster.url())
        .await
        .unwrap();
    let mut recorded = records().connection();

    let before_ms = redisaq_tests::server_ms(&mut recorded);
    let later = EnqueueOptions::new().delay(Duration::from_millis(1500));
    let mut due = HashSet::new();
    for n in 0..20 {
        due.insert(
            delayed::enqueue_with(Work { n }, later.clone())
                .await
                .unwrap()
                .to_string(),
        );
    }
    let cancelled = delayed::enqueue_with(
        Work { n: 99 },
        EnqueueOptions::new().delay(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    assert!(admin.cancel("delayed", &cancelled).await.unwrap());
    for n in 0..6 {
        let id = format!("cluster-order-{}", n % 3);
        once::enqueue_with(Work { n }, EnqueueOptions::new().id(id))
            .await
            .unwrap();
    }
    admin.pause("once", None).await.unwrap();

    let _worker = KillOnDrop::spawn(
        worker_command_at(
            WORKER,
            &cluster.url(),
            "sched",
            "delayed,once,cron_each_second,rate_group",
            0,
        )
        .env("TEST_RECORD_URL", records().url())
        .env("REDISAQ_HEARTBEAT_INTERVAL_MS", "500")
        .env("REDISAQ_HEARTBEAT_TTL_MS", "5000")
        .stdout(std::process::Stdio::null()),
    );
    let ran = eventually(Duration::from_secs(60), || {
        let done: HashSet<String> = calls(&mut recorded, "delayed").into_keys().collect();
        due.is_subset(&done)
    })
    .await;
    assert!(ran, "the delayed jobs ran");
    let started = redisaq_tests::started_ms(&mut recorded, "delayed");
    assert!(
        due.iter().all(|id| started[id] >= before_ms + 1500),
        "a delayed job started early"
    );
    assert!(
        !started.contains_key(cancelled.as_str()),
        "the cancelled job ran"
    );

    let ticks = eventually(Duration::from_secs(60), || {
        redisaq_tests::ticks(&mut recorded, "cron_each_second").len() >= 3
    })
    .await;
    assert!(ticks, "the cron schedule fired");
    assert!(redisaq_tests::ticks(&mut recorded, "cron_each_second")
        .values()
        .all(|&n| n == 1));

    // Paused: nothing of `once` ran; resumed, each id ran once.
    assert!(
        calls(&mut recorded, "once").is_empty(),
        "a paused topic ran a job"
    );
    admin.resume("once", None).await.unwrap();
    let once_ran = eventually(Duration::from_secs(60), || {
        calls(&mut recorded, "once").len() == 3
    })
    .await;
    assert!(once_ran, "ran: {:?}", calls(&mut recorded, "once"));
    assert!(calls(&mut recorded, "once").values().all(|&n| n == 1));

    // A rate limit on the cluster: 30 jobs at 20/s take more than a second.
    rate_group::enqueue_batch((0..30).map(|n| Work { n }))
        .await
        .unwrap();
    let limited = eventually(Duration::from_secs(60), || {
        redisaq_tests::started_ms(&mut recorded, "rate_group").len() == 30
    })
    .await;
    assert!(limited, "the rate-limited jobs ran");
    let mut starts: Vec<u64> = redisaq_tests::started_ms(&mut recorded, "rate_group")
        .into_values()
        .collect();
    starts.sort_unstable();
    assert!(
        starts[29] - starts[0] >= 500,
        "30 jobs at 20/s started within {} ms",
        starts[29] - starts[0]
    );
}

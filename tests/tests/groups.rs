//! Groups and partitions: a group whose workers are all offline while the partition count
//! is raised still gets every job once it comes back, even on a topic trimmed hard.

use std::collections::HashSet;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    eventually, id_set, pending, redis, setup, worker_with_heartbeats, Background, Calls,
};

/// (group, job id) of every call.
static SEEN: Calls<(&'static str, String)> = Calls::new();

fn seen(group: &str) -> Vec<String> {
    SEEN.tagged(group)
}

#[job(
    topic = "raise_offline",
    group = "online",
    partitions = 2,
    maxlen = 100
)]
async fn online(job: Job<u64>) -> Result<(), JobError> {
    SEEN.push(("online", job.id().to_string()));
    Ok(())
}

#[job(
    topic = "raise_offline",
    group = "offline",
    partitions = 2,
    maxlen = 100
)]
async fn offline(job: Job<u64>) -> Result<(), JobError> {
    SEEN.push(("offline", job.id().to_string()));
    Ok(())
}

fn worker(group: &str) -> redisaq::Worker {
    setup();
    worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(10))
        .topics([online::TOPIC])
        .groups([group])
}

fn groups_on(partition: u32) -> HashSet<String> {
    let info: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(redisaq::keys::partition(online::TOPIC, partition))
        .query(&mut redis().connection());
    info.map(|i| i.groups.into_iter().map(|g| g.name).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_offline_while_partitions_are_raised_misses_nothing() {
    // Both groups exist, then only `online` runs.
    worker("offline")
        .run_until(async {
            eventually(Duration::from_secs(30), || groups_on(1).contains("offline")).await;
        })
        .await
        .unwrap();
    let running = Background::start(worker("online"));
    assert_eq!(redisaq::set_partitions(online::TOPIC, 4).await.unwrap(), 2);
    for partition in 2..4 {
        assert!(
            groups_on(partition).contains("offline"),
            "raising made the offline group on partition {partition}: {:?}",
            groups_on(partition)
        );
    }
    let mut ids = HashSet::new();
    for chunk in 0..10u64 {
        let batch = online::enqueue_batch((0..100).map(|i| chunk * 100 + i))
            .await
            .unwrap();
        ids.extend(id_set(batch));
    }
    let expected = ids.clone();
    let online_done = eventually(Duration::from_secs(60), || {
        seen("online").into_iter().collect::<HashSet<_>>() == expected
    })
    .await;
    running.stop().await.unwrap();
    assert!(online_done, "the online group ran every job");

    // The offline group comes back and gets every job, new partitions included.
    let expected = ids.clone();
    worker("offline")
        .run_until(async move {
            eventually(Duration::from_secs(60), || {
                seen("offline").into_iter().collect::<HashSet<_>>() == expected
            })
            .await;
        })
        .await
        .unwrap();
    let got = seen("offline");
    assert_eq!(
        got.iter().cloned().collect::<HashSet<_>>().len(),
        1000,
        "the offline group missed jobs"
    );
    assert_eq!(got.len(), 1000, "each job once");
    let mut conn = redis().connection();
    assert_eq!(pending(&mut conn, online::TOPIC, "offline", 4), 0);
}

#[job(topic = "meta_lost", group = "meta_group", partitions = 2)]
async fn meta_lost(job: Job<u64>) -> Result<(), JobError> {
    SEEN.push(("meta", job.id().to_string()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_topic_metadata_keeps_the_raised_partition_count() {
    setup();
    meta_lost::enqueue(0).await.unwrap();
    assert_eq!(
        redisaq::set_partitions(meta_lost::TOPIC, 4).await.unwrap(),
        2
    );
    let ids = id_set(meta_lost::enqueue_batch(1..41).await.unwrap());
    // The record goes (eviction, a restart that kept only some keys, a DEL)...
    let mut conn = redis().connection();
    let _: () = redis::cmd("DEL")
        .arg(redisaq::keys::meta(meta_lost::TOPIC))
        .query(&mut conn)
        .unwrap();
    // ...and a worker declaring 2 partitions still finds and runs all 4.
    let expected = ids.clone();
    worker_with_heartbeats(Duration::from_millis(200), Duration::from_secs(10))
        .topics([meta_lost::TOPIC])
        .run_until(async move {
            eventually(Duration::from_secs(60), || {
                let seen: HashSet<String> = seen("meta").into_iter().collect();
                expected.is_subset(&seen)
            })
            .await;
        })
        .await
        .unwrap();
    let partitions: u32 = redis::cmd("HGET")
        .arg(redisaq::keys::meta(meta_lost::TOPIC))
        .arg("partitions")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        partitions, 4,
        "the count is derived from the streams that exist"
    );
    let seen: HashSet<String> = seen("meta").into_iter().collect();
    assert!(
        ids.is_subset(&seen),
        "every job ran, on all four partitions"
    );
    assert_eq!(pending(&mut conn, meta_lost::TOPIC, meta_lost::GROUP, 4), 0);
}

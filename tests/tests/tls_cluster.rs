//! `rediss://` on a Redis Cluster whose nodes serve TLS with a certificate a CA made by
//! the test signed: `REDISAQ_TLS_CA_FILE` is trusted for every node, the ones named and
//! the ones the cluster points to. Its own test binary: it sets the variable for the whole
//! process.

use std::collections::HashSet;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::cluster::RedisCluster;
use redisaq_tests::tls::TlsFiles;
use redisaq_tests::{id_set, pending, run_worker_until, Calls};

/// The id of every call.
static SEEN: Calls<String> = Calls::new();

#[job(topic = "tls_spread", group = "tls_spread_group", partitions = 6)]
async fn over_tls(job: Job<u64>) -> Result<(), JobError> {
    SEEN.push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_through_a_tls_cluster_with_a_private_ca() {
    let files = TlsFiles::generate_temp("redisaq-tls-cluster");
    let cluster = RedisCluster::start_tls(&files).unwrap_or_else(|e| panic!("{e}"));
    std::env::set_var("REDISAQ_TLS_CA_FILE", &files.ca);
    // One node named: the others are found through it, and reached over TLS as well.
    let url = cluster.tls_url().split(',').next().unwrap().to_string();

    redisaq::set_redis_url(&url).unwrap();
    let ids = id_set(
        over_tls::enqueue_batch(0..60)
            .await
            .expect("enqueue over TLS"),
    );
    let worker = redisaq::Worker::new()
        .redis_url(&url)
        .topics([over_tls::TOPIC])
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(10));
    let expected = ids.clone();
    assert!(
        run_worker_until(worker, move || SEEN.distinct() == expected).await,
        "the worker ran every job over TLS"
    );
    // What the worker did is there, seen over the nodes' plain ports.
    assert_eq!(
        pending(
            &mut cluster.connection(),
            over_tls::TOPIC,
            over_tls::GROUP,
            6
        ),
        0
    );
    let homes: HashSet<u16> = (0..6)
        .filter_map(|p| cluster.master_of(&redisaq::keys::partition(over_tls::TOPIC, p)))
        .collect();
    assert!(homes.len() > 1, "the partitions span masters: {homes:?}");
    let admin = redisaq::admin::Admin::connect(&url)
        .await
        .expect("admin over TLS");
    let groups = admin
        .groups(over_tls::TOPIC)
        .await
        .expect("groups over TLS");
    assert_eq!((groups[0].lag, groups[0].pending), (0, 0), "{groups:?}");
}

//! The `redisaq` tool against a real local Redis Cluster (3 masters, 3 replicas), given
//! one node's URL: it reads and changes a topic whose partitions live on every master as
//! it does on one node. (A process of its own: the producer's URL is process-wide.)

use std::process::Command;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::cluster::RedisCluster;
use redisaq_tests::{id_set, Calls};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mail {
    to: String,
}

/// The id of every call.
static SEEN: Calls<String> = Calls::new();

#[job(
    topic = "cli_cluster",
    group = "cluster_group",
    partitions = 6,
    retries = 0
)]
async fn deliver(job: Job<Mail>) -> Result<(), JobError> {
    SEEN.push(job.id().to_string());
    if job.payload().to.starts_with("bad") {
        return Err(JobError::fatal(format!("bad address {}", job.payload().to)));
    }
    Ok(())
}

/// The `--json` output of `redisaq args…` run against `url`, which must succeed.
fn json(url: &str, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_redisaq"))
        .args(args)
        .arg("--json")
        .env("REDIS_URL", url)
        .output()
        .expect("run redisaq");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_reads_and_changes_a_topic_on_a_cluster() {
    let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    redisaq::set_redis_url(&cluster.url()).unwrap();
    let mails = (0..30).map(|i| Mail {
        to: if i % 10 == 0 {
            format!("bad{i}@x")
        } else {
            format!("user{i}@x")
        },
    });
    let ids = id_set(deliver::enqueue_batch(mails).await.expect("enqueue"));
    let worker = redisaq::Worker::new()
        .redis_url(cluster.url())
        .topics([deliver::TOPIC])
        .consumer_name("cli-cluster")
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(10));
    let ran_all = redisaq_tests::run_worker_until(worker, || SEEN.distinct() == ids).await;
    assert!(ran_all, "the worker ran every job");

    // One node's URL is enough: the tool finds the rest of the cluster.
    let url = RedisCluster::node_url(cluster.masters()[0]);
    let topics = json(&url, &["topics"]);
    let topic = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "cli_cluster")
        .unwrap_or_else(|| panic!("listed: {topics}"));
    assert_eq!(topic["partitions"], 6, "{topic}");
    assert_eq!(topic["dead_letters"], 3, "{topic}");

    let groups = json(&url, &["groups", "cli_cluster"]);
    assert_eq!(groups[0]["group"], "cluster_group", "{groups}");
    assert_eq!(
        (&groups[0]["lag"], &groups[0]["pending"]),
        (&0.into(), &0.into())
    );

    let letters = json(&url, &["dlq", "list", "cli_cluster"]);
    assert_eq!(letters.as_array().unwrap().len(), 3, "{letters}");
    let advice = json(&url, &["scale", "cli_cluster", "cluster_group"]);
    assert_eq!(advice["backlog"], 0, "{advice}");

    // Changes that touch several partitions, and so several masters.
    json(&url, &["partitions", "cli_cluster", "--set", "9"]);
    assert_eq!(
        json(&url, &["topics"])
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == "cli_cluster")
            .unwrap()["partitions"],
        9
    );
    let purged = json(&url, &["dlq", "purge", "cli_cluster", "--yes"]);
    assert_eq!(purged["purged"], 3, "{purged}");
    assert!(json(&url, &["dlq", "list", "cli_cluster"])
        .as_array()
        .unwrap()
        .is_empty());
}

//! `REDISAQ_PREFIX`: every key starts with it, so apps sharing a Redis stay apart (and ACL
//! key patterns can scope them); a prefix that would break the layout is refused at start.

use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::{
    eventually, pending, redis, setup, worker_command, Background, Calls, KillOnDrop,
};

/// The payload of every call.
static DONE: Calls<u64> = Calls::new();

#[job(topic = "prefixed", group = "prefixed_group", partitions = 2)]
async fn work(job: Job<u64>) -> Result<(), JobError> {
    DONE.push(*job.payload());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_starts_with_the_prefix() {
    // Before anything in this process builds a key (the prefix is read once).
    std::env::set_var("REDISAQ_PREFIX", "myapp");
    setup();
    work::enqueue_batch(0..10).await.unwrap();
    let worker = Background::start(
        redisaq::Worker::new()
            .redis_url(redis().url())
            .topics([work::TOPIC]),
    );
    let done = eventually(Duration::from_secs(30), || {
        DONE.len() == 10 && pending(&mut redis().connection(), work::TOPIC, work::GROUP, 2) == 0
    })
    .await;
    worker.stop().await.unwrap();
    assert!(done);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis().connection())
        .unwrap();
    let stray: Vec<&String> = keys.iter().filter(|k| !k.starts_with("myapp:")).collect();
    assert!(!keys.is_empty());
    assert!(stray.is_empty(), "keys outside the prefix: {stray:?}");
    assert!(keys.contains(&"myapp:{prefixed:0}".to_string()), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_that_would_break_the_layout_is_refused_at_start() {
    let mut command = worker_command(env!("CARGO_BIN_EXE_test_worker"), "w", "prefixed_x", 0);
    command
        .env("REDISAQ_PREFIX", "my{app}")
        .stderr(std::process::Stdio::piped());
    let mut worker = KillOnDrop::spawn(&mut command);
    let mut status = None;
    eventually(Duration::from_secs(30), || {
        status = worker.exited();
        status.is_some()
    })
    .await;
    let status = status.expect("the worker exits");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(worker.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("REDISAQ_PREFIX"), "{all}");
}

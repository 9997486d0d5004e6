//! `rediss://` against a real TLS redis-server whose certificate a CA made by the test
//! signed: trusted through `REDISAQ_TLS_CA_FILE`, producers and workers work; a CA file
//! that cannot be read is a clear error. Its own test binary: it sets the variable for
//! the whole process.

use std::collections::HashSet;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::tls::TlsFiles;
use redisaq_tests::{id_set, pending, run_worker_until, Calls};

/// The id of every call.
static SEEN: Calls<String> = Calls::new();

#[job(topic = "tls_jobs", group = "tls_group", partitions = 2)]
async fn over_tls(job: Job<u64>) -> Result<(), JobError> {
    SEEN.push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_through_a_tls_redis_with_a_private_ca() {
    let files = TlsFiles::generate_temp("redisaq-tls");
    let (server, url) = files
        .start_server()
        .expect("a TLS redis-server (Debian's is built with TLS)");

    // A CA file that cannot be read is a configuration error naming the variable.
    std::env::set_var(
        "REDISAQ_TLS_CA_FILE",
        files.ca.with_file_name("missing.pem"),
    );
    let error = redisaq::admin::Admin::connect(&url)
        .await
        .err()
        .expect("an error");
    assert!(error.to_string().contains("REDISAQ_TLS_CA_FILE"), "{error}");

    std::env::set_var("REDISAQ_TLS_CA_FILE", &files.ca);
    redisaq::set_redis_url(&url).unwrap();
    let ids = id_set(
        over_tls::enqueue_batch(0..20)
            .await
            .expect("enqueue over TLS"),
    );
    let worker = redisaq::Worker::new()
        .redis_url(&url)
        .topics([over_tls::TOPIC])
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(10));
    let expected = ids.clone();
    run_worker_until(worker, move || SEEN.distinct() == expected).await;
    let seen = SEEN.all();
    assert_eq!(seen.len(), 20, "each job once: {seen:?}");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
    // What the worker did is there, seen over the server's plain port.
    assert_eq!(
        pending(
            &mut server.connection(),
            over_tls::TOPIC,
            over_tls::GROUP,
            2
        ),
        0
    );
    let admin = redisaq::admin::Admin::connect(&url)
        .await
        .expect("admin over TLS");
    let topics = admin.topics().await.expect("topics over TLS");
    assert!(
        topics.iter().any(|t| t.topic == over_tls::TOPIC),
        "{topics:?}"
    );
}

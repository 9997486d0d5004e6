//! `rediss://` against a real TLS redis-server whose certificate a CA made by the test
//! signed: trusted through `REDISAQ_TLS_CA_FILE`, producers and workers work; a CA file
//! that cannot be read is a clear error. Its own test binary: it sets the variable for
//! the whole process.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::tls::TlsFiles;
use redisaq_tests::{eventually, free_port, pending, RedisServer};

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[job(topic = "tls_jobs", group = "tls_group", partitions = 2)]
async fn over_tls(job: Job<u64>) -> Result<(), JobError> {
    SEEN.lock().unwrap().push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_through_a_tls_redis_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("redisaq-tls-{}", std::process::id()));
    let files = TlsFiles::generate(&dir);
    let tls_port = free_port();
    let args = files.server_args(tls_port);
    let server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("a TLS redis-server (Debian's is built with TLS)");
    let url = format!("rediss://localhost:{tls_port}");

    // A CA file that cannot be read is a configuration error naming the variable.
    std::env::set_var("REDISAQ_TLS_CA_FILE", dir.join("missing.pem"));
    let error = redisaq::admin::Admin::connect(&url)
        .await
        .err()
        .expect("an error");
    assert!(error.to_string().contains("REDISAQ_TLS_CA_FILE"), "{error}");

    std::env::set_var("REDISAQ_TLS_CA_FILE", &files.ca);
    redisaq::set_redis_url(&url).unwrap();
    let ids: HashSet<String> = over_tls::enqueue_batch(0..20)
        .await
        .expect("enqueue over TLS")
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let worker = redisaq::Worker::new()
        .redis_url(&url)
        .topics([over_tls::TOPIC])
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(10));
    let expected = ids.clone();
    worker
        .run_until(async move {
            eventually(Duration::from_secs(60), || {
                SEEN.lock().unwrap().iter().cloned().collect::<HashSet<_>>() == expected
            })
            .await;
        })
        .await
        .expect("the worker ran over TLS");
    let seen = SEEN.lock().unwrap().clone();
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

//! Enqueue when Redis is not well: a deadline, a clear error, and for every job whether
//! it was stored, surely not stored, or unknown (its reply was lost). One test: the
//! producer's Redis is process-wide, and each step points it elsewhere.

use std::time::Duration;

use redisaq::{job, EnqueueOptions, Error, Job, JobError, JobId};
use redisaq_tests::proxy::{Fault, Proxy};
use redisaq_tests::{init_tracing, RedisServer};

#[job(topic = "enqueue_faults", group = "enqueue_group", partitions = 2)]
async fn faulty(_job: Job<u64>) -> Result<(), JobError> {
    Ok(())
}

/// One field of every job in the topic's streams.
fn field(server: &RedisServer, name: &str) -> Vec<String> {
    let mut conn = server.connection();
    (0..2)
        .flat_map(|p| {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(redisaq::keys::partition(faulty::TOPIC, p))
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .unwrap();
            reply
                .ids
                .into_iter()
                .filter_map(|e| e.get::<String>(name))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The ids of the jobs in the topic's streams.
fn stored(server: &RedisServer) -> Vec<String> {
    field(server, "id")
}

/// The payloads of the jobs in the topic's streams.
fn payloads(server: &RedisServer) -> Vec<u64> {
    field(server, "payload")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Checks that `error` is an enqueue error whose reason contains `reason`, with as many
/// jobs stored, surely not stored and of unknown fate as `fates` says; returns the unknown
/// ones.
fn check(error: Error, fates: [usize; 3], reason: &str) -> Vec<JobId> {
    let message = error.to_string();
    let Error::Enqueue {
        stored,
        not_stored,
        unknown,
        reason: said,
    } = error
    else {
        panic!("not an enqueue error: {message}");
    };
    assert_eq!(
        [stored.len(), not_stored.len(), unknown.len()],
        fates,
        "stored, not stored, unknown: {message}"
    );
    assert!(said.contains(reason), "{message}");
    unknown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_fails_within_its_deadline_and_says_what_became_of_each_job() {
    init_tracing();
    let server = RedisServer::start().unwrap();

    // Nothing listens: a clear error at once, the job surely not stored.
    let proxy = Proxy::start(server.port());
    proxy.set(Fault::Refuse);
    redisaq::set_redis_url(&proxy.url()).unwrap();
    let error = faulty::enqueue_with(1, EnqueueOptions::new().timeout(Duration::from_secs(30)))
        .await
        .unwrap_err();
    check(error, [0, 1, 0], "cannot be reached");

    // Redis stops answering while the job is on its way: the deadline ends the wait,
    // and the job's fate is unknown. Once the network heals it turns out stored.
    proxy.set(Fault::Pass);
    let first = faulty::enqueue(2).await.expect("enqueue through the proxy");
    proxy.set(Fault::Stall);
    let error = faulty::enqueue_with(3, EnqueueOptions::new().timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    let unknown = check(error, [0, 0, 1], "no answer within 300 ms");
    proxy.set(Fault::Pass);
    let landed = redisaq_tests::eventually(Duration::from_secs(30), || {
        stored(&server).contains(&unknown[0].to_string())
    })
    .await;
    assert!(landed, "the job whose reply was lost was stored after all");
    assert!(stored(&server).contains(&first.to_string()));

    // Redis' replies are held while two round trips are on their way: a job queued
    // behind them is answered by its own deadline, surely not stored, and never sent.
    // (An enqueue first: the producer knows the topic afresh, and asks Redis nothing
    // else while the replies are held.)
    faulty::enqueue(9).await.expect("enqueue through the proxy");
    proxy.set(Fault::HoldReplies);
    let patient = || EnqueueOptions::new().timeout(Duration::from_secs(60));
    let mut on_way = Vec::new();
    for payload in [5, 6] {
        on_way.push(tokio::spawn(faulty::enqueue_with(payload, patient())));
        let reached = redisaq_tests::eventually(Duration::from_secs(30), || {
            payloads(&server).contains(&payload)
        })
        .await;
        assert!(
            reached,
            "job {payload} went out while the one before it was unanswered"
        );
    }
    let error = faulty::enqueue_with(7, EnqueueOptions::new().timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    check(error, [0, 1, 0], "not sent within 300 ms");
    proxy.set(Fault::Pass);
    for enqueue in on_way {
        enqueue
            .await
            .unwrap()
            .expect("answered once the replies came through");
    }
    faulty::enqueue(8)
        .await
        .expect("enqueue after the replies came through");
    assert!(
        !payloads(&server).contains(&7),
        "the job that was answered 'not stored' was sent after all"
    );

    // Redis is full: every job of a batch refused, and the reason says what to do.
    redisaq::set_redis_url(&server.url()).unwrap();
    faulty::enqueue(4)
        .await
        .expect("topic known before memory runs out");
    let mut conn = server.connection();
    let _: () = redis::cmd("SET")
        .arg("filler")
        .arg(vec![b'x'; 4 << 20])
        .query(&mut conn)
        .unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used - 100_000)
        .query(&mut conn)
        .unwrap();
    let error = faulty::enqueue_batch(10..20).await.unwrap_err();
    check(error, [0, 10, 0], "out of memory");
    // Memory freed: enqueue works again without anyone touching the producer.
    let _: () = redis::cmd("DEL").arg("filler").query(&mut conn).unwrap();
    faulty::enqueue_batch(20..30)
        .await
        .expect("enqueue works again once memory is free");

    // Asked to wait for a replica this Redis does not have: the job reaches the master,
    // but enqueue says it was not confirmed.
    let error = faulty::enqueue_with(
        30,
        EnqueueOptions::new()
            .wait_replicas(1)
            .timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    let unknown = check(error, [0, 0, 1], "only 0 of the 1 replica");
    assert!(stored(&server).contains(&unknown[0].to_string()));
}

//! Faults around the connection and the lease: a worker whose connections fail while it
//! starts keeps trying, and a consumer whose lease vanished stops work on the partition
//! until it holds the lease again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::proxy::{Fault, Proxy};
use redisaq_tests::{dead_letters, eventually, init_tracing, pending, redis};

static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[job(topic = "fault_start", group = "start_group", partitions = 2)]
async fn starting(job: Job<u64>) -> Result<(), JobError> {
    STARTED.lock().unwrap().push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_fail_while_it_starts_keeps_trying() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    let proxy = Proxy::start(redis().port());
    // Nothing answers at first, then every connection is cut after one reply.
    proxy.set(Fault::Refuse);
    let worker = redisaq::Worker::new()
        .redis_url(proxy.url())
        .topics([starting::TOPIC])
        .concurrency(4)
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(5));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let refused = eventually(Duration::from_secs(60), || {
        proxy.accepted() >= 10 || running.is_finished()
    })
    .await;
    assert!(refused, "the worker tried to connect");
    proxy.set(Fault::CutAfterReply);
    let cut = eventually(Duration::from_secs(60), || {
        proxy.cuts() >= 5 || running.is_finished()
    })
    .await;
    assert!(cut, "the worker's connections were cut");
    assert!(
        !running.is_finished(),
        "the worker gave up while its connections failed: {:?}",
        running.await
    );
    proxy.set(Fault::Pass);

    let ids: HashSet<String> = starting::enqueue_batch(0..20)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let done = eventually(Duration::from_secs(60), || {
        STARTED
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<HashSet<_>>()
            == ids
    })
    .await;
    let _ = stop.send(());
    running
        .await
        .unwrap()
        .expect("the worker ran and stopped cleanly");
    assert!(done, "processed {} of 20", STARTED.lock().unwrap().len());
    assert_eq!(
        pending(
            &mut redis().connection(),
            starting::TOPIC,
            starting::GROUP,
            2
        ),
        0
    );
}

/// (job id, attempt, the lease's value in Redis when the call started) of every call.
static FENCED: Mutex<Vec<(String, u32, Option<String>)>> = Mutex::new(Vec::new());
/// The fencing token of every call, in order.
static TOKENS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static HOLD_STARTED: AtomicBool = AtomicBool::new(false);
static HOLD_RELEASED: AtomicBool = AtomicBool::new(false);

fn lease_key() -> String {
    redisaq::keys::lease(fenced::TOPIC, 0, fenced::GROUP)
}

#[job(
    topic = "fault_lease",
    group = "lease_group",
    partitions = 1,
    retries = 5
)]
async fn fenced(job: Job<u64>) -> Result<(), JobError> {
    let lease: Option<String> = redis::cmd("GET")
        .arg(lease_key())
        .query(&mut redis().connection())
        .unwrap();
    FENCED
        .lock()
        .unwrap()
        .push((job.id().to_string(), job.attempt(), lease));
    TOKENS.lock().unwrap().push(job.fencing_token());
    if *job.payload() == 0 && job.attempt() == 1 {
        HOLD_STARTED.store(true, Ordering::SeqCst);
        while !HOLD_RELEASED.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

async fn run_fenced_case(tamper: impl FnOnce(&mut redis::Connection)) {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    // Heartbeats far apart: the renewal must not be what notices the missing lease.
    let worker = redisaq::Worker::new()
        .redis_url(redis().url())
        .topics([fenced::TOPIC])
        .consumer_name("fenced")
        .concurrency(1)
        .heartbeat_interval(Duration::from_secs(20))
        .heartbeat_ttl(Duration::from_secs(60));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let held = fenced::enqueue(0).await.unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(30), || HOLD_STARTED
            .load(Ordering::SeqCst))
        .await,
        "the first job started"
    );
    let mut conn = redis().connection();
    tamper(&mut conn);
    HOLD_RELEASED.store(true, Ordering::SeqCst);

    let rerun = eventually(Duration::from_secs(60), || {
        FENCED
            .lock()
            .unwrap()
            .iter()
            .any(|(id, attempt, _)| *id == held && *attempt == 2)
    })
    .await;
    // Jobs enqueued afterwards run once the lease is ours again.
    let later: HashSet<String> = fenced::enqueue_batch(1..4)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let finished = eventually(Duration::from_secs(60), || {
        let seen: HashSet<String> = FENCED
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect();
        later.is_subset(&seen)
            && pending(&mut redis().connection(), fenced::TOPIC, fenced::GROUP, 1) == 0
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let calls = FENCED.lock().unwrap().clone();
    assert!(
        rerun,
        "the job whose ack was refused ran again as attempt 2: {calls:?}"
    );
    assert!(finished, "later jobs ran and nothing is pending: {calls:?}");
    let attempts: Vec<u32> = calls
        .iter()
        .filter(|(id, _, _)| *id == held)
        .map(|(_, attempt, _)| *attempt)
        .collect();
    assert_eq!(attempts, vec![1, 2], "{calls:?}");
    // Every call but the first (which started before the tampering) ran under our lease.
    for (id, attempt, lease) in &calls[1..] {
        assert!(
            lease.as_deref().is_some_and(|l| l.starts_with("fenced-")),
            "job {id} (attempt {attempt}) started while the lease was {lease:?}: {calls:?}"
        );
    }
    assert_eq!(calls.len(), 5, "each later job once: {calls:?}");
    // The token grew when the partition was taken again, and each call's lease value
    // carries the token it ran under.
    let tokens = TOKENS.lock().unwrap().clone();
    assert!(
        tokens[1] > tokens[0],
        "a new holding, a larger token: {tokens:?}"
    );
    assert!(tokens[1..].iter().all(|t| *t == tokens[1]), "{tokens:?}");
    for ((_, _, lease), token) in calls[1..].iter().zip(&tokens[1..]) {
        let lease = lease.as_deref().unwrap_or_default();
        assert!(lease.ends_with(&format!(" {token}")), "{lease} vs {token}");
    }
    assert!(dead_letters(&mut conn, fenced::TOPIC).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ack_stops_the_partition_until_its_lease_is_taken_again() {
    // The lease vanishes (as in a Redis restart without persistence), then someone else
    // holds it for a while.
    run_fenced_case(|conn| {
        let _: () = redis::cmd("SET")
            .arg(lease_key())
            .arg("intruder")
            .arg("PX")
            .arg(1500)
            .query(conn)
            .unwrap();
    })
    .await;
}

static LOST_REPLY: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[job(topic = "fault_lost_reply", group = "lost_reply_group", partitions = 1)]
async fn lost_reply(job: Job<u64>) -> Result<(), JobError> {
    LOST_REPLY.lock().unwrap().push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_delivered_by_a_read_whose_reply_was_lost_still_run() {
    init_tracing();
    redisaq::set_redis_url(&redis().url()).unwrap();
    let proxy = Proxy::start(redis().port());
    let worker = redisaq::Worker::new()
        .redis_url(proxy.url())
        .topics([lost_reply::TOPIC])
        .consumer_name("lossy")
        .concurrency(4)
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_ttl(Duration::from_secs(30));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let first = lost_reply::enqueue(0).await.unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(30), || LOST_REPLY
            .lock()
            .unwrap()
            .contains(&first))
        .await,
        "the worker runs"
    );
    // Redis carries out the worker's commands but its replies are lost: the blocked
    // read delivers these jobs to the worker, which never sees them.
    proxy.set(Fault::DropReplies);
    let ids: HashSet<String> = lost_reply::enqueue_batch(1..6)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let delivered = eventually(Duration::from_secs(30), || {
        pending(
            &mut redis().connection(),
            lost_reply::TOPIC,
            lost_reply::GROUP,
            1,
        ) > 0
    })
    .await;
    assert!(delivered, "Redis delivered the jobs to the worker");
    proxy.set(Fault::Pass);
    let done = eventually(Duration::from_secs(60), || {
        let seen: HashSet<String> = LOST_REPLY.lock().unwrap().iter().cloned().collect();
        ids.is_subset(&seen)
            && pending(
                &mut redis().connection(),
                lost_reply::TOPIC,
                lost_reply::GROUP,
                1,
            ) == 0
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let seen = LOST_REPLY.lock().unwrap().clone();
    assert!(done, "ran {seen:?}");
    assert_eq!(seen.len(), 6, "each job once: {seen:?}");
}

//! Faults around the connection and the lease: a worker whose connections fail while it
//! starts keeps trying, and a consumer whose lease vanished stops work on the partition
//! until it holds the lease again.

use std::collections::HashSet;
use std::time::Duration;

use redisaq::{job, Job, JobError};
use redisaq_tests::proxy::{Fault, Proxy};
use redisaq_tests::{
    dead_letters, eventually, id_set, pending, redis, setup, worker_with_heartbeats, Background,
    Calls, Hold,
};

/// The id of every call of `starting`.
static STARTED: Calls<String> = Calls::new();

#[job(topic = "fault_start", group = "start_group", partitions = 2)]
async fn starting(job: Job<u64>) -> Result<(), JobError> {
    STARTED.push(job.id().to_string());
    Ok(())
}

/// A proxy in front of the test server, and a worker for `topic` that reaches the server
/// only through it (heartbeats every 500 ms, with a TTL of `ttl`).
fn proxied_worker(topic: &str, ttl: Duration) -> (Proxy, redisaq::Worker) {
    setup();
    let proxy = Proxy::start(redis().port());
    let worker = worker_with_heartbeats(Duration::from_millis(500), ttl)
        .redis_url(proxy.url())
        .topics([topic])
        .concurrency(4);
    (proxy, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_fail_while_it_starts_keeps_trying() {
    let (proxy, worker) = proxied_worker(starting::TOPIC, Duration::from_secs(5));
    // Nothing answers at first, then every connection is cut after one reply.
    proxy.set(Fault::Refuse);
    let worker = Background::start(worker);
    let refused = eventually(Duration::from_secs(60), || {
        proxy.accepted() >= 10 || worker.is_finished()
    })
    .await;
    assert!(refused, "the worker tried to connect");
    proxy.set(Fault::CutAfterReply);
    let cut = eventually(Duration::from_secs(60), || {
        proxy.cuts() >= 5 || worker.is_finished()
    })
    .await;
    assert!(cut, "the worker's connections were cut");
    if worker.is_finished() {
        panic!(
            "the worker gave up while its connections failed: {:?}",
            worker.stop().await
        );
    }
    proxy.set(Fault::Pass);

    let ids = id_set(starting::enqueue_batch(0..20).await.unwrap());
    let done = eventually(Duration::from_secs(60), || STARTED.distinct() == ids).await;
    worker
        .stop()
        .await
        .expect("the worker ran and stopped cleanly");
    assert!(done, "processed {} of 20", STARTED.len());
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
static FENCED: Calls<(String, u32, Option<String>)> = Calls::new();
/// The fencing token of every call, in order.
static TOKENS: Calls<u64> = Calls::new();
/// Holds the first attempt of job 0.
static HOLD: Hold = Hold::new();

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
    FENCED.push((job.id().to_string(), job.attempt(), lease));
    TOKENS.push(job.fencing_token());
    if *job.payload() == 0 && job.attempt() == 1 {
        HOLD.hold().await;
    }
    Ok(())
}

async fn run_fenced_case(tamper: impl FnOnce(&mut redis::Connection)) {
    setup();
    // Heartbeats far apart: the renewal must not be what notices the missing lease.
    let worker = Background::start(
        worker_with_heartbeats(Duration::from_secs(20), Duration::from_secs(60))
            .topics([fenced::TOPIC])
            .consumer_name("fenced")
            .concurrency(1),
    );
    // A job acknowledged first: the held job's acknowledgement then goes out where the
    // lease was read (and watched) before the tampering, not after a fresh read.
    let first = fenced::enqueue(100).await.unwrap().to_string();
    let acked = eventually(Duration::from_secs(60), || {
        FENCED.count(|(id, _, _)| *id == first) > 0
            && pending(&mut redis().connection(), fenced::TOPIC, fenced::GROUP, 1) == 0
    })
    .await;
    assert!(acked, "the first job ran and was acknowledged");
    let (earlier_calls, earlier_tokens) = (FENCED.len(), TOKENS.len());
    let held = fenced::enqueue(0).await.unwrap().to_string();
    assert!(HOLD.started().await, "the held job started");
    let mut conn = redis().connection();
    tamper(&mut conn);
    HOLD.release();

    let rerun = eventually(Duration::from_secs(60), || {
        FENCED.count(|(id, attempt, _)| *id == held && *attempt == 2) > 0
    })
    .await;
    // Jobs enqueued afterwards run once the lease is ours again.
    let later = id_set(fenced::enqueue_batch(1..4).await.unwrap());
    let finished = eventually(Duration::from_secs(60), || {
        let seen: HashSet<String> = FENCED.all().into_iter().map(|(id, _, _)| id).collect();
        later.is_subset(&seen)
            && pending(&mut redis().connection(), fenced::TOPIC, fenced::GROUP, 1) == 0
    })
    .await;
    worker.stop().await.unwrap();
    let calls = FENCED.all().split_off(earlier_calls);
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
    let tokens = TOKENS.all().split_off(earlier_tokens);
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

/// The id of every call of `lost_reply`.
static LOST_REPLY: Calls<String> = Calls::new();

#[job(topic = "fault_lost_reply", group = "lost_reply_group", partitions = 1)]
async fn lost_reply(job: Job<u64>) -> Result<(), JobError> {
    LOST_REPLY.push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_delivered_by_a_read_whose_reply_was_lost_still_run() {
    let (proxy, worker) = proxied_worker(lost_reply::TOPIC, Duration::from_secs(30));
    let worker = Background::start(worker.consumer_name("lossy"));
    let first = lost_reply::enqueue(0).await.unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(30), || LOST_REPLY.contains(&first)).await,
        "the worker runs"
    );
    // Redis carries out the worker's commands but its replies are lost: the blocked
    // read delivers these jobs to the worker, which never sees them.
    proxy.set(Fault::DropReplies);
    let ids = id_set(lost_reply::enqueue_batch(1..6).await.unwrap());
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
        ids.is_subset(&LOST_REPLY.distinct())
            && pending(
                &mut redis().connection(),
                lost_reply::TOPIC,
                lost_reply::GROUP,
                1,
            ) == 0
    })
    .await;
    worker.stop().await.unwrap();
    let seen = LOST_REPLY.all();
    assert!(done, "ran {seen:?}");
    assert_eq!(seen.len(), 6, "each job once: {seen:?}");
}

/// The id of every call of `restricted`.
static RESTRICTED: Calls<String> = Calls::new();

#[job(topic = "fault_acl", group = "acl_group", partitions = 2)]
async fn restricted(job: Job<u64>) -> Result<(), JobError> {
    RESTRICTED.push(job.id().to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_user_without_transactions_still_gets_its_jobs_acknowledged() {
    setup();
    let mut conn = redis().connection();
    // Everything but MULTI (so a transaction's XACKs would run unfenced, one by one), as
    // an ACL written for the commands redisaq used to need might allow.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("notx")
        .arg("on")
        .arg(">notx-pass")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-multi")
        .query(&mut conn)
        .unwrap();
    let url = format!("redis://notx:notx-pass@127.0.0.1:{}", redis().port());
    let worker = Background::start(
        worker_with_heartbeats(Duration::from_millis(500), Duration::from_secs(10))
            .redis_url(url)
            .topics([restricted::TOPIC])
            .consumer_name("notx"),
    );
    let ids = id_set(restricted::enqueue_batch(0..50).await.unwrap());
    let done = eventually(Duration::from_secs(60), || {
        RESTRICTED.distinct() == ids
            && pending(
                &mut redis().connection(),
                restricted::TOPIC,
                restricted::GROUP,
                2,
            ) == 0
    })
    .await;
    worker.stop().await.unwrap();
    assert!(
        done,
        "ran {} of 50; pending {}",
        RESTRICTED.distinct().len(),
        pending(&mut conn, restricted::TOPIC, restricted::GROUP, 2)
    );
    assert_eq!(RESTRICTED.len(), 50, "each job once");
}

/// Holds the first call of `stalled`.
static STALL_HOLD: Hold = Hold::new();
/// (job n, attempt) of every call of `stalled`.
static STALLED: Calls<(u64, u32)> = Calls::new();

#[job(topic = "fault_stall", group = "stall_group", partitions = 1)]
async fn stalled(job: Job<u64>) -> Result<(), JobError> {
    STALLED.push((*job.payload(), job.attempt()));
    STALL_HOLD.hold_first().await;
    Ok(())
}

/// Before: a call abandoned because its consumer's lease ran out ran again under the same
/// attempt number when that consumer took the partition back (its own leftovers keep
/// their count), though it had started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_with_a_lapsed_lease_runs_again_as_the_next_attempt() {
    let (proxy, worker) = proxied_worker(stalled::TOPIC, Duration::from_secs(2));
    let worker = Background::start(worker.consumer_name("stalling"));
    let held = stalled::enqueue(0).await.unwrap();
    assert!(STALL_HOLD.started().await, "the job started");
    // Nothing reaches Redis past the lease's TTL: the lease runs out there, the worker
    // abandons the call, and takes the partition again once Redis answers.
    proxy.set(Fault::Stall);
    let lapsed = eventually(Duration::from_secs(30), || {
        let lease: Option<String> = redis::cmd("GET")
            .arg(redisaq::keys::lease(stalled::TOPIC, 0, stalled::GROUP))
            .query(&mut redis().connection())
            .unwrap();
        lease.is_none()
    })
    .await;
    proxy.set(Fault::Pass);
    assert!(lapsed, "the lease ran out");
    let done = eventually(Duration::from_secs(60), || {
        STALLED.len() >= 2
            && pending(&mut redis().connection(), stalled::TOPIC, stalled::GROUP, 1) == 0
    })
    .await;
    worker.stop().await.unwrap();
    assert!(
        done,
        "the job ran again and was acknowledged: {STALLED:?} ({held})"
    );
    assert_eq!(
        STALLED.all(),
        vec![(0, 1), (0, 2)],
        "the abandoned call counted as an attempt"
    );
}

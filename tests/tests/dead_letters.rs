//! Dead letters: written in the same fenced step that acknowledges the job, bounded,
//! keeping the job's key; replayed only into the group that gave up; and the layout in
//! Redis: today's is versioned, an older one is migrated, a newer one is left untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redisaq::admin::Admin;
use redisaq::{job, EnqueueOptions, Job, JobError};
use redisaq_tests::{
    dead_letters, eventually, init_tracing, pending, redis, run_worker_until, setup, test_worker,
    worker_with_heartbeats, Background, Calls, Hold,
};

/// Holds the first call of `refused`.
static HOLD: Hold = Hold::new();
/// (job id, attempt) of every call of `refused`.
static REFUSED_CALLS: Calls<(String, u32)> = Calls::new();

#[job(
    topic = "dl_fenced",
    group = "dl_fenced_group",
    partitions = 1,
    retries = 0
)]
async fn refused(job: Job<u64>) -> Result<(), JobError> {
    REFUSED_CALLS.push((job.id().to_string(), job.attempt()));
    HOLD.hold_first().await;
    Err(JobError::fatal("refused for good"))
}

/// Before: the dead letter was written unfenced, then the ack was refused, and the job
/// ran again under the new lease and was dead-lettered a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_lost_its_lease_writes_no_dead_letter() {
    setup();
    // Heartbeats far apart: the renewal must not be what notices the lost lease.
    let worker = Background::start(
        worker_with_heartbeats(Duration::from_secs(20), Duration::from_secs(60))
            .topics([refused::TOPIC])
            .consumer_name("dl-fenced")
            .concurrency(1),
    );
    let id = refused::enqueue(0).await.unwrap().to_string();
    assert!(HOLD.started().await, "the job started");
    let mut conn = redis().connection();
    // Someone else holds the partition for a while.
    let _: () = redis::cmd("SET")
        .arg(redisaq::keys::lease(refused::TOPIC, 0, refused::GROUP))
        .arg("intruder 1")
        .arg("PX")
        .arg(1500)
        .query(&mut conn)
        .unwrap();
    HOLD.release();
    let settled = eventually(Duration::from_secs(60), || {
        dead_letters(&mut redis().connection(), refused::TOPIC).len() == 1
            && pending(&mut redis().connection(), refused::TOPIC, refused::GROUP, 1) == 0
    })
    .await;
    // Time for a second dead letter to show, were one written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await.unwrap();
    let calls = REFUSED_CALLS.all();
    let letters = dead_letters(&mut conn, refused::TOPIC);
    assert!(settled, "the job was dead-lettered: {calls:?} {letters:?}");
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    assert_eq!(letters[0]["id"], id);
    assert_eq!(letters[0]["error"], "refused for good");
    assert_eq!(
        calls.len(),
        2,
        "the refused first call, then the new holding's: {calls:?}"
    );
}

/// (n, attempt) of every call of `keyed`.
static KEYED_CALLS: Calls<(u64, u32)> = Calls::new();
/// Whether `keyed` fails (the test turns it off before the replay).
static KEYED_FAILS: AtomicBool = AtomicBool::new(true);

#[job(
    topic = "dl_bounded",
    group = "dl_bounded_group",
    partitions = 1,
    retries = 0,
    concurrency = 1,
    dlq_maxlen = 5
)]
async fn keyed(job: Job<u64>) -> Result<(), JobError> {
    KEYED_CALLS.push((*job.payload(), job.attempt()));
    if KEYED_FAILS.load(Ordering::SeqCst) {
        return Err(JobError::fatal(format!("job {} fails", job.payload())));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_the_newest_dlq_maxlen_and_the_jobs_key() {
    setup();
    for n in 0..12u64 {
        keyed::enqueue_with(n, EnqueueOptions::new().key(format!("customer-{n}")))
            .await
            .unwrap();
    }
    let all_failed = run_worker_until(test_worker(&[keyed::TOPIC]), || {
        KEYED_CALLS.len() == 12
            && pending(&mut redis().connection(), keyed::TOPIC, keyed::GROUP, 1) == 0
    })
    .await;
    assert!(all_failed, "{KEYED_CALLS:?}");
    let mut conn = redis().connection();
    let letters = dead_letters(&mut conn, keyed::TOPIC);
    let kept: Vec<u64> = letters
        .iter()
        .map(|l| l["payload"].parse().unwrap())
        .collect();
    // The newest five written: one call's dead letter may be written just after the next
    // call's, so they are five of the last six jobs.
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert!(kept.iter().all(|&n| n >= 6), "the newest five: {kept:?}");
    for letter in &letters {
        assert_eq!(letter["key"], format!("customer-{}", letter["payload"]));
    }

    // A replay puts the job back with its key.
    KEYED_FAILS.store(false, Ordering::SeqCst);
    let admin = Admin::connect(&redis().url()).await.unwrap();
    let newest_letter = letters
        .iter()
        .find(|l| l["payload"] == "11")
        .expect("job 11's dead letter is kept");
    let replayed = admin
        .replay(keyed::TOPIC, None, &[newest_letter["id"].clone()])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].key.as_deref(), Some("customer-11"));
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(redisaq::keys::partition(keyed::TOPIC, 0))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let key: String = newest.ids[0].get("key").unwrap();
    assert_eq!(key, "customer-11");
    let rerun = run_worker_until(test_worker(&[keyed::TOPIC]), || {
        KEYED_CALLS.contains(&(11, 1)) && KEYED_CALLS.len() == 13
    })
    .await;
    assert!(rerun, "{KEYED_CALLS:?}");
    assert_eq!(dead_letters(&mut conn, keyed::TOPIC).len(), 4);
}

/// Calls per (group, n) of the two handlers of `dl_replay`.
static REPLAY_CALLS: Calls<(&'static str, u64)> = Calls::new();
static A_FAILS: AtomicBool = AtomicBool::new(true);

#[job(
    topic = "dl_replay",
    group = "dl_replay_a",
    partitions = 2,
    retries = 0
)]
async fn replay_a(job: Job<u64>) -> Result<(), JobError> {
    REPLAY_CALLS.push(("a", *job.payload()));
    if *job.payload() == 1 && A_FAILS.load(Ordering::SeqCst) {
        return Err(JobError::fatal("a cannot do job 1"));
    }
    Ok(())
}

#[job(
    topic = "dl_replay",
    group = "dl_replay_b",
    partitions = 2,
    retries = 0
)]
async fn replay_b(job: Job<u64>) -> Result<(), JobError> {
    REPLAY_CALLS.push(("b", *job.payload()));
    Ok(())
}

/// Both groups have read everything there is and hold nothing.
async fn both_groups_done(admin: &Admin) -> bool {
    let groups = admin.groups(replay_a::TOPIC).await.unwrap();
    groups.len() == 2 && groups.iter().all(|g| g.lag == 0 && g.pending == 0)
}

/// Before: the replayed job went back into the topic, and group b, which had processed
/// it fine, ran it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_runs_the_job_again_only_in_the_group_that_gave_up() {
    setup();
    let admin = Admin::connect(&redis().url()).await.unwrap();
    replay_a::enqueue_batch(0..4).await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let first = run_worker_until(test_worker(&[replay_a::TOPIC]), || {
        let calls = REPLAY_CALLS.counts();
        (0..4).all(|n| calls.contains_key(&("a", n)) && calls.contains_key(&("b", n)))
            && tokio::task::block_in_place(|| handle.block_on(both_groups_done(&admin)))
    })
    .await;
    assert!(first, "{:?}", REPLAY_CALLS.counts());
    let letters = admin.dead_letters(replay_a::TOPIC, None, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].group, "dl_replay_a");

    A_FAILS.store(false, Ordering::SeqCst);
    let replayed = admin.replay(replay_a::TOPIC, None, &[]).await.unwrap();
    assert_eq!(replayed.len(), 1);
    let again = run_worker_until(test_worker(&[replay_a::TOPIC]), || {
        REPLAY_CALLS.counts().get(&("a", 1)) == Some(&2)
            && tokio::task::block_in_place(|| handle.block_on(both_groups_done(&admin)))
    })
    .await;
    let calls = REPLAY_CALLS.counts();
    assert!(again, "group a ran job 1 again: {calls:?}");
    assert_eq!(
        calls.get(&("b", 1)),
        Some(&1),
        "group b ran job 1 once: {calls:?}"
    );
    assert!(admin
        .dead_letters(replay_a::TOPIC, None, 10)
        .await
        .unwrap()
        .is_empty());
}

static LEGACY_CALLS: Calls<String> = Calls::new();

#[job(topic = "dl_legacy", group = "dl_legacy_group", partitions = 2)]
async fn legacy(job: Job<serde_json::Value>) -> Result<(), JobError> {
    LEGACY_CALLS.push(job.id().to_string());
    Ok(())
}

/// Writes a topic as layout 1 kept it: settings without `layout`, jobs in the partition
/// streams, dead letters in one stream per topic.
fn write_layout_1(conn: &mut redis::Connection) {
    let topic = legacy::TOPIC;
    let _: () = redis::pipe()
        .hset(redisaq::keys::meta(topic), "partitions", 2)
        .hset(redisaq::keys::meta(topic), "maxlen", 1000)
        .sadd(redisaq::keys::topics(), topic)
        .query(conn)
        .unwrap();
    for n in 0..4u32 {
        let _: String = redis::cmd("XADD")
            .arg(redisaq::keys::partition(topic, n % 2))
            .arg("*")
            .arg(&[
                ("id", format!("old-job-{n}")),
                ("payload", format!("{{\"n\":{n}}}")),
                ("enqueued_at", "1700000000000".to_string()),
            ])
            .query(conn)
            .unwrap();
    }
    for n in 0..2u32 {
        let _: String = redis::cmd("XADD")
            .arg(redisaq::keys::legacy_dead_letters(topic))
            .arg("*")
            .arg(&[
                ("id", format!("old-letter-{n}")),
                ("topic", topic.to_string()),
                ("group", legacy::GROUP.to_string()),
                ("partition", "1".to_string()),
                ("attempts", "4".to_string()),
                ("error", "failed under layout 1".to_string()),
                ("payload", format!("{{\"letter\":{n}}}")),
                ("entry_id", format!("1700000000000-{n}")),
                ("failed_at", format!("170000000000{n}")),
            ])
            .query(conn)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_1_topic_with_jobs_and_dead_letters_is_migrated() {
    setup();
    let mut conn = redis().connection();
    write_layout_1(&mut conn);
    let admin = Admin::connect(&redis().url()).await.unwrap();
    // The tools read layout 1's dead letters before the migration too.
    assert_eq!(
        admin
            .dead_letters(legacy::TOPIC, None, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    let done = admin.migrate(&[legacy::TOPIC.to_string()]).await.unwrap();
    assert_eq!(done[0].dead_letters_moved, 2);
    assert_eq!(done[0].layout, 2);
    let again = admin.migrate(&[legacy::TOPIC.to_string()]).await.unwrap();
    assert_eq!(again[0].dead_letters_moved, 0, "a second run moves nothing");
    let old_left: u64 = redis::cmd("XLEN")
        .arg(redisaq::keys::legacy_dead_letters(legacy::TOPIC))
        .query(&mut conn)
        .unwrap();
    assert_eq!(old_left, 0);
    let layout: u32 = redis::cmd("HGET")
        .arg(redisaq::keys::meta(legacy::TOPIC))
        .arg("layout")
        .query(&mut conn)
        .unwrap();
    assert_eq!(layout, 2);
    let letters = admin.dead_letters(legacy::TOPIC, None, 10).await.unwrap();
    assert_eq!(letters.len(), 2);
    for (n, letter) in letters.iter().enumerate() {
        assert_eq!(letter.id, format!("old-letter-{n}"));
        assert_eq!(letter.partition, 1);
        assert_eq!(letter.error, "failed under layout 1");
        assert_eq!(letter.attempts, 4);
    }
    let in_partition_1: u64 = redis::cmd("XLEN")
        .arg(redisaq::keys::dead_letters(legacy::TOPIC, 1))
        .query(&mut conn)
        .unwrap();
    assert_eq!(in_partition_1, 2);

    // The jobs run, and the moved dead letters replay into their group.
    let replayed = admin.replay(legacy::TOPIC, None, &[]).await.unwrap();
    assert_eq!(replayed.len(), 2);
    let ran = run_worker_until(test_worker(&[legacy::TOPIC]), || {
        LEGACY_CALLS.len() == 6
            && pending(&mut redis().connection(), legacy::TOPIC, legacy::GROUP, 2) == 0
    })
    .await;
    let calls = LEGACY_CALLS.sorted();
    assert!(ran, "{calls:?}");
    assert_eq!(
        calls,
        [
            "old-job-0",
            "old-job-1",
            "old-job-2",
            "old-job-3",
            "old-letter-0",
            "old-letter-1"
        ]
    );
}

#[job(topic = "dl_future", group = "dl_future_group", partitions = 1)]
async fn future(_job: Job<u64>) -> Result<(), JobError> {
    panic!("a topic of a newer layout is never run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_a_topic_of_a_newer_layout_and_leaves_it_untouched() {
    init_tracing();
    let mut conn = redis().connection();
    let _: () = redis::pipe()
        .hset(redisaq::keys::meta(future::TOPIC), "partitions", 1)
        .hset(redisaq::keys::meta(future::TOPIC), "maxlen", 1000)
        .hset(redisaq::keys::meta(future::TOPIC), "layout", 99)
        .sadd(redisaq::keys::topics(), future::TOPIC)
        .xadd(
            redisaq::keys::partition(future::TOPIC, 0),
            "*",
            &[("id", "new"), ("payload", "1"), ("enqueued_at", "1")],
        )
        .query(&mut conn)
        .unwrap();
    let outcome = redisaq::Worker::new()
        .redis_url(redis().url())
        .topics([future::TOPIC])
        .run_until(tokio::time::sleep(Duration::from_secs(30)))
        .await;
    let error = outcome.expect_err("the worker refuses the topic");
    assert!(
        matches!(error, redisaq::Error::Layout { found: 99, .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("layout 99") && message.contains("upgrade"),
        "{message}"
    );
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(redisaq::keys::partition(future::TOPIC, 0))
        .query(&mut conn)
        .unwrap();
    assert!(groups.is_empty(), "no group was created: {groups:?}");
    let enqueued = redisaq::set_redis_url(&redis().url()).map(|_| future::enqueue(2));
    let refused = enqueued.unwrap().await;
    assert!(
        matches!(&refused, Err(redisaq::Error::Enqueue { reason, not_stored, .. })
            if reason.contains("layout 99") && not_stored.len() == 1),
        "producers refuse it too: {refused:?}"
    );
}

static FORMAT_CALLS: Calls<u64> = Calls::new();

#[job(topic = "dl_format", group = "dl_format_group", partitions = 1)]
async fn format(job: Job<u64>) -> Result<(), JobError> {
    FORMAT_CALLS.push(*job.payload());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_of_a_newer_format_is_neither_run_nor_dead_lettered() {
    setup();
    format::enqueue(1).await.unwrap();
    let mut conn = redis().connection();
    let _: String = redis::cmd("XADD")
        .arg(redisaq::keys::partition(format::TOPIC, 0))
        .arg("*")
        .arg(&[
            ("id", "from-the-future"),
            ("payload", "2"),
            ("enqueued_at", "1"),
            ("v", "3"),
        ])
        .query(&mut conn)
        .unwrap();
    format::enqueue(3).await.unwrap();
    let ran = run_worker_until(test_worker(&[format::TOPIC]), || {
        FORMAT_CALLS.len() == 2
            && pending(&mut redis().connection(), format::TOPIC, format::GROUP, 1) == 1
    })
    .await;
    let calls = FORMAT_CALLS.sorted();
    assert!(ran, "{calls:?}");
    assert_eq!(calls, [1, 3]);
    assert!(dead_letters(&mut conn, format::TOPIC).is_empty());
}

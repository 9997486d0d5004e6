//! Cron schedules with real worker processes: exactly one job per fire time however many
//! workers run, and after a time when none ran, only the latest missed fire time runs.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use redisaq::admin::Admin;
use redisaq_tests::{eventually, redis, server_ms, ticks, worker_command, KillOnDrop};

fn spawn_worker(name: &str, topic: &str) -> KillOnDrop {
    KillOnDrop::spawn(
        worker_command(env!("CARGO_BIN_EXE_test_worker"), name, topic, 0)
            .env("REDISAQ_HEARTBEAT_TTL_MS", "2000")
            .stdout(Stdio::null()),
    )
}

/// The fire time of every cron job in the topic's stream, with how many jobs carry it.
fn jobs_by_fire_time(conn: &mut redis::Connection, topic: &str) -> HashMap<u64, u64> {
    let rows: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(redisaq::keys::partition(topic, 0))
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    let mut found = HashMap::new();
    for row in rows.ids {
        let payload: String = row.get("payload").expect("a payload");
        let tick: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let fire = tick["scheduled_at_ms"].as_u64().expect("a fire time");
        *found.entry(fire).or_insert(0) += 1;
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_enqueue_exactly_one_job_per_fire_time() {
    let mut conn = redis().connection();
    let topic = "cron_each_second";
    let mut workers: Vec<KillOnDrop> = ["cron1", "cron2", "cron3"]
        .iter()
        .map(|name| spawn_worker(name, topic))
        .collect();
    let enough = eventually(Duration::from_secs(60), || {
        ticks(&mut conn, topic).len() >= 12
    })
    .await;
    assert!(enough, "ticks: {:?}", ticks(&mut conn, topic));
    for worker in &mut workers {
        worker.terminate().await.expect("the worker stopped");
    }
    let jobs = jobs_by_fire_time(&mut conn, topic);
    let doubled: Vec<_> = jobs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "fire times enqueued twice: {doubled:?}");
    assert!(
        jobs.keys().all(|fire| fire % 1000 == 0),
        "fire times on whole seconds: {jobs:?}"
    );
    let ran = ticks(&mut conn, topic);
    assert!(
        ran.values().all(|&n| n == 1),
        "each fire time ran once: {ran:?}"
    );
    assert!(ran.keys().all(|fire| jobs.contains_key(fire)));
    let admin = Admin::connect(&redis().url()).await.unwrap();
    let schedule = admin
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.topic == topic)
        .expect("the schedule is listed");
    assert_eq!(schedule.cron, "* * * * * *");
    assert_eq!(schedule.tz, "UTC");
    let last = schedule.last_fire_ms.expect("a last fire time");
    assert_eq!(Some(&last), jobs.keys().max());
    assert!(schedule.next_fire_ms.is_some_and(|next| next > last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_only_the_latest_missed_fire_time_runs() {
    let mut conn = redis().connection();
    let topic = "cron_each_minute";
    let admin = Admin::connect(&redis().url()).await.unwrap();
    // A new schedule starts with its next fire time: nothing before it started.
    let first_start = server_ms(&mut conn);
    let mut first = spawn_worker("minute1", topic);
    let mut listed = false;
    for _ in 0..300 {
        if admin
            .schedules()
            .await
            .unwrap()
            .iter()
            .any(|s| s.topic == topic)
        {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "the worker recorded the schedule");
    first.terminate().await.expect("the worker stopped");
    assert!(
        ticks(&mut conn, topic)
            .keys()
            .all(|&fire| fire >= first_start),
        "a new schedule ran a fire time from before it existed"
    );

    // No worker for five minutes (as far as the record says): the next worker runs the
    // latest missed fire time once, and none of the earlier ones.
    // Not within 6 s of a minute's end: the worker should start in the same minute, so
    // that its latest missed fire time is this minute's.
    let mut restart = server_ms(&mut conn);
    if restart % 60_000 > 54_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - restart % 60_000)).await;
        restart = server_ms(&mut conn);
    }
    let _: () = redis::cmd("HSET")
        .arg(redisaq::keys::cron(topic))
        .arg("last")
        .arg(restart - 5 * 60_000)
        .query(&mut conn)
        .unwrap();
    let latest_missed = restart / 60_000 * 60_000;
    let _second = spawn_worker("minute2", topic);
    let ran = eventually(Duration::from_secs(30), || {
        ticks(&mut conn, topic).contains_key(&latest_missed)
    })
    .await;
    assert!(
        ran,
        "the latest missed fire time ran: {:?}",
        ticks(&mut conn, topic)
    );
    // Time for a catch-up of the older ones to show, if there were one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let missed: Vec<u64> = ticks(&mut conn, topic)
        .into_iter()
        .filter(|&(fire, _)| fire <= restart && fire >= restart - 5 * 60_000)
        .map(|(fire, n)| {
            assert_eq!(n, 1, "fire time {fire} ran {n} times");
            fire
        })
        .collect();
    assert_eq!(
        missed,
        [latest_missed],
        "only the latest missed fire time ran"
    );
}

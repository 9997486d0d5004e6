//! A new Redis URL takes effect for the enqueues after it, even when an enqueue was still
//! connecting to the old one as the URL changed. (A test binary of its own: the URL is
//! the process's.)

use std::time::Duration;

use redis::Commands;

use redisaq::{job, Job, JobError};
use redisaq_tests::proxy::{Fault, Proxy};
use redisaq_tests::{eventually, init_tracing, redis, RedisServer};

#[job(topic = "url_switch", group = "url_switch_group", partitions = 1)]
async fn url_switch(_job: Job<u64>) -> Result<(), JobError> {
    Ok(())
}

/// The job ids in `url_switch`'s stream on the server at `port`.
fn stored(port: u16) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(redisaq::keys::partition(url_switch::TOPIC, 0))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    entries
        .into_iter()
        .flat_map(|(_, fields)| {
            fields
                .into_iter()
                .filter(|(k, _)| k == "id")
                .map(|(_, v)| v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_after_a_new_url_go_there_even_if_one_was_connecting_to_the_old() {
    init_tracing();
    let old = RedisServer::start().expect("a second redis-server");
    // The topic has two partitions there, one on the new server: nothing learnt of the
    // old server may be used for the new one.
    let _: () = redis::Client::open(format!("redis://127.0.0.1:{}", old.port()))
        .unwrap()
        .get_connection()
        .unwrap()
        .hset(redisaq::keys::meta(url_switch::TOPIC), "partitions", 2)
        .unwrap();
    let proxy = Proxy::start(old.port());
    // The first enqueue connects to the old URL and waits there for Redis' answers.
    proxy.set(Fault::HoldReplies);
    redisaq::set_redis_url(&proxy.url()).unwrap();
    let connecting = tokio::spawn(url_switch::enqueue(1));
    let reached = eventually(Duration::from_secs(10), || proxy.accepted() > 0).await;
    assert!(reached, "the first enqueue connected to the old URL");

    redisaq::set_redis_url(&redis().url()).unwrap();
    proxy.set(Fault::Pass);
    let first = connecting.await.unwrap();

    // Several, so that a partition count of two would send some to partition 1.
    let mut later = Vec::new();
    for n in 2..6 {
        later.push(url_switch::enqueue(n).await.unwrap().to_string());
    }
    let second = later[0].clone();
    let on_new = stored(redis().port());
    assert!(
        later.iter().all(|id| on_new.contains(id)),
        "every enqueue after the new URL went to its one partition: {later:?} vs {on_new:?}"
    );
    assert!(
        stored(redis().port()).contains(&second),
        "the enqueue after the new URL went there (the first: {first:?}); old server holds {:?}",
        stored(old.port())
    );
    assert!(!stored(old.port()).contains(&second));

    // Nothing keeps a connection to the old URL open: not the producer, nor the copies
    // the threads that enqueued keep of it.
    let closed = eventually(Duration::from_secs(10), || clients(old.port()) == 1).await;
    assert!(
        closed,
        "connections left on the old server: {}",
        clients(old.port()) - 1
    );
}

/// Connections to the server at `port`, the one asking included.
fn clients(port: u16) -> usize {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    list.lines().count()
}

//! Change hints: a counter per topic (`redisaq:changes`, one field per topic), raised
//! after anything that moves partitions between a topic's consumers (an assignment
//! written, a consumer leaving, partitions raised). Each worker polls the counters of its
//! topics in one command, so its consumers follow a change within a tick without each
//! reading its group every tick. A hint is only a hint: lost, it costs time, not
//! correctness, since every consumer also looks at its group each heartbeat interval.

use redis::aio::ConnectionLike;

use crate::error::Error;
use crate::keys;

/// Raises `topic`'s counter.
pub(crate) async fn announce(conn: &mut impl ConnectionLike, topic: &str) -> Result<(), Error> {
    redis::cmd("HINCRBY")
        .arg(keys::changes())
        .arg(topic)
        .arg(1)
        .exec_async(conn)
        .await?;
    Ok(())
}

/// The counters of `topics`, in order (0 for one never raised).
pub(crate) async fn counters(
    conn: &mut impl ConnectionLike,
    topics: &[&str],
) -> Result<Vec<u64>, Error> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let counters: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(keys::changes())
        .arg(topics)
        .query_async(conn)
        .await?;
    Ok(counters
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

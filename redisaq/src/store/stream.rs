//! Reads of one partition stream that both the consumer and the admin need.

use redis::aio::ConnectionLike;

use crate::error::Error;
use crate::wire;

/// How many entries follow `last_delivered` (a group's read position), counting at most
/// `cap`: what Redis 7 reports as a group's lag, for servers that do not (6.2).
pub(crate) async fn undelivered(
    conn: &mut impl ConnectionLike,
    stream: &str,
    last_delivered: &str,
    cap: usize,
) -> Result<u64, Error> {
    let start = wire::next_stream_id(last_delivered).unwrap_or_else(|| "-".into());
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(cap)
        .query_async(conn)
        .await?;
    Ok(wire::parse_entries(&reply)?.len() as u64)
}

/// A group's lag on a stream: entries after its read position `last_delivered`. Redis 7
/// reports it (`reported`), but as an estimate that trimming and restarts can leave too
/// high, so a figure above 0 counts only if anything follows the read position at all;
/// Redis 6.2 reports none, and then it is counted, up to `cap`.
pub(crate) async fn lag(
    conn: &mut impl ConnectionLike,
    stream: &str,
    last_delivered: &str,
    reported: Option<u64>,
    cap: usize,
) -> Result<u64, Error> {
    match reported {
        Some(0) => Ok(0),
        Some(lag) => Ok(
            if undelivered(conn, stream, last_delivered, 1).await? == 0 {
                0
            } else {
                lag
            },
        ),
        None => undelivered(conn, stream, last_delivered, cap).await,
    }
}

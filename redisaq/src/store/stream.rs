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

//! Bounding the partition streams. Each partition keeps about `maxlen` entries, but an
//! entry is only trimmed once every group is done with it: not pending anywhere and
//! already delivered to every group. A lagging group therefore makes the stream grow
//! instead of losing jobs. The owner of a partition trims it on every heartbeat.

use super::conn::Conn;
use crate::error::Error;
use crate::wire;

/// Most entries looked at in one pass when finding the retention boundary.
const MAX_SCAN: u64 = 10_000;

fn min_id(a: Option<String>, b: String) -> String {
    match a {
        Some(a) if wire::parse_stream_id(&a) <= wire::parse_stream_id(&b) => a,
        _ => b,
    }
}

/// Trims one stream; returns how many entries went.
pub(crate) async fn trim(conn: &mut Conn, stream: &str, maxlen: u64) -> Result<u64, Error> {
    let len: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
    if len <= maxlen {
        return Ok(0);
    }
    // The first entry that retention keeps.
    let excess = (len - maxlen).min(MAX_SCAN);
    let oldest: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(excess)
        .query_async(conn)
        .await?;
    let Some(last_excess) = wire::parse_entries(oldest)?.pop() else {
        return Ok(0);
    };
    let mut boundary = wire::next_stream_id(&last_excess.id).unwrap_or(last_excess.id);
    // Nothing a group has pending or not yet read.
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    for group in wire::parse_groups(&groups)? {
        let last_delivered = group.last_delivered;
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&group.name)
            .query_async(conn)
            .await?;
        let unread = wire::next_stream_id(&last_delivered).unwrap_or(last_delivered);
        let keep_from = min_id(wire::parse_pending_summary(&summary)?, unread);
        boundary = min_id(Some(boundary), keep_from);
    }
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg("~")
        .arg(&boundary)
        .query_async(conn)
        .await?;
    Ok(trimmed)
}

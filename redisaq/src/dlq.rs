//! The dead-letter queue: one stream per topic (`redisaq:{topic}:dlq`) holding jobs that
//! failed for good, with their payload, error text, attempts, topic, group, partition and
//! original id.

use redis::aio::ConnectionLike;

use crate::error::Error;
use crate::keys;
use crate::wire::DeadLetter;

/// Writes a dead-letter entry. The caller acknowledges the job only after this returned
/// Ok, so a crash in between dead-letters it twice rather than losing it.
pub(crate) async fn write(
    conn: &mut impl ConnectionLike,
    letter: &DeadLetter<'_>,
) -> Result<String, Error> {
    let id: String = redis::cmd("XADD")
        .arg(keys::dead_letters(letter.topic))
        .arg("*")
        .arg(letter.fields())
        .query_async(conn)
        .await?;
    Ok(id)
}

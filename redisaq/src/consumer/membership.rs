//! Liveness: each consumer renews its entry in the group's member set (see
//! [`crate::store::members`]); a consumer whose entry expired is dead.

use tokio::time::Instant;

use super::Shared;
use crate::error::Error;
use crate::store::members;

/// The group's members as the keeper's last heartbeat found them: the coordinator of a
/// settled consumer follows these instead of reading its group every interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The live members, sorted.
    pub live: Vec<String>,
    /// When the first of their records runs out unless renewed (its consumer died?).
    pub next_expiry: Option<Instant>,
}

impl Snapshot {
    /// `live`, as answered at `answered` (this process's clock).
    pub(crate) fn new(live: &members::Live, answered: Instant) -> Self {
        Snapshot {
            live: live.names(),
            next_expiry: live.next_expiry().map(|left| answered + left),
        }
    }
}

/// Renews this consumer's record; returns the live members, sorted.
pub(crate) async fn heartbeat(shared: &Shared) -> Result<Vec<String>, Error> {
    let live = members::heartbeat(
        &mut shared.conn.clone(),
        &shared.topic,
        shared.group,
        &shared.consumer,
        shared.config.heartbeat_ttl,
        shared.script_flags,
    )
    .await?;
    Ok(live.names())
}

/// Leaves at once on a clean shutdown, so the others rebalance without waiting for the
/// heartbeat to expire.
pub(crate) async fn leave(shared: &Shared) {
    let left = members::leave(
        &mut shared.conn.clone(),
        &shared.topic,
        shared.group,
        &shared.consumer,
    )
    .await;
    if let Err(e) = left {
        tracing::warn!(error = %e, "could not leave the group; the others rebalance after the heartbeat TTL");
    }
}

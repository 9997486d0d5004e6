//! Liveness: each consumer renews its entry in the group's member set (see
//! [`crate::store::members`]); a consumer whose entry expired is dead.

use super::Shared;
use crate::error::Error;
use crate::store::members;

/// The heartbeat as one command, for the keeper's pipeline; with `clean`, it also
/// forgets members dead for a day.
pub(super) fn heartbeat_cmd(shared: &Shared, clean: bool) -> (redis::Cmd, &'static redis::Script) {
    members::heartbeat_cmd(
        &shared.topic,
        shared.group,
        &shared.consumer,
        shared.config.heartbeat_ttl,
        shared.script_flags,
        members::Also { live: false, clean },
    )
}

/// Renews this consumer's record; returns the live members, sorted.
pub(crate) async fn heartbeat(shared: &Shared) -> Result<Vec<String>, Error> {
    members::heartbeat(
        &mut shared.conn.clone(),
        &shared.topic,
        shared.group,
        &shared.consumer,
        shared.config.heartbeat_ttl,
        shared.script_flags,
    )
    .await
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

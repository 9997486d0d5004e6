//! What a consumer's coordinator reads on each step, in one read-only script: the group's
//! live members, its stored assignment and the topic's settings (whether it or the group
//! is paused among them).

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;

use super::assignment::{self, Assignment};
use super::members::Live;
use super::scripts::{self, lua_now, Lua};
use crate::error::Error;
use crate::keys;

const VIEW: &str = concat!(
    lua_now!(),
    r"local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local assignment = redis.call('HMGET', KEYS[2], 'generation', 'members', 'owners')
local meta = redis.call('HMGET', KEYS[3], 'partitions', 'maxlen', 'layout', 'paused', 'paused:' .. ARGV[1])
return {live, assignment, meta, now}
"
);

static VIEW_SCRIPT: LazyLock<Lua> = LazyLock::new(|| Lua::read_only(VIEW));

/// A group as its coordinator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// The live members, sorted.
    pub live: Vec<String>,
    /// How long until the first live member's record expires (unless renewed first).
    pub next_expiry: Option<Duration>,
    pub assignment: Assignment,
    /// The topic's stored settings; `None` where the record lacks them (a new topic, or
    /// one Redis lost): then `store::topic::ensure` writes them.
    pub partitions: Option<u32>,
    pub maxlen: Option<u64>,
    pub layout: Option<u32>,
    /// Whether the topic or the group is paused (`Admin::pause`).
    pub paused: bool,
}

/// Reads the view of `group` on `topic`.
pub(crate) async fn read(
    conn: &mut impl ConnectionLike,
    topic: &str,
    group: &str,
    script_flags: bool,
) -> Result<View, Error> {
    let script = VIEW_SCRIPT.script(script_flags);
    let mut cmd = scripts::evalsha(
        script,
        &[
            &keys::members(topic, group),
            &keys::assignment(topic, group),
            &keys::meta(topic),
        ],
    );
    cmd.arg(group);
    type Reply = (
        Vec<(String, f64)>,
        (Option<u64>, Option<String>, Option<String>),
        (
            Option<u32>,
            Option<u64>,
            Option<u32>,
            Option<String>,
            Option<String>,
        ),
        u64,
    );
    let (
        live,
        (generation, members, owners),
        (partitions, maxlen, layout, topic_paused, group_paused),
        now,
    ): Reply = scripts::query(conn, &cmd, script).await?;
    let live = Live::new(now, live);
    Ok(View {
        live: live.names(),
        next_expiry: live.next_expiry(),
        assignment: assignment::from_fields(generation, members.as_deref(), owners.as_deref()),
        partitions: partitions.filter(|&p| p > 0),
        maxlen,
        layout,
        paused: topic_paused.is_some() || group_paused.is_some(),
    })
}

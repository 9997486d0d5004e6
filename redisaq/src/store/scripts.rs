//! Scripts are sent by their hash (`EVALSHA`). Redis keeps the scripts it was sent, but
//! forgets them on a restart or a failover: then it answers `NOSCRIPT`, and the script
//! is loaded and the command sent once more. (`redis::Script::invoke_async` does this for
//! single calls; commands that go into pipelines come from here.)

use redis::aio::ConnectionLike;

/// Lua that ends a script with a `FENCED` error unless lease `KEYS[1]` holds the token
/// `ARGV[1]`: the fence every write into a partition passes first.
macro_rules! lua_fence {
    () => {
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED partition lease is not held by ' .. ARGV[1])
end
"
    };
}

/// Lua that sets `now` to the Redis server's clock in ms, the clock leases, heartbeats
/// and due times are kept by.
macro_rules! lua_now {
    () => {
        "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

use redis::{RedisError, RedisResult, Value};
pub(crate) use {lua_fence, lua_now};

/// A script, plain (for Redis 6.2) and with flags that let it run on a full Redis (for
/// Redis 7, where a script must say so): `allow-oom` for one that writes, `no-writes` for
/// one that only reads.
pub(crate) struct Lua {
    plain: redis::Script,
    flagged: redis::Script,
}

impl Lua {
    /// A script that writes.
    pub(crate) fn new(text: &'static str) -> Self {
        Self::with_flags(text, "allow-oom")
    }

    /// A script that only reads.
    pub(crate) fn read_only(text: &'static str) -> Self {
        Self::with_flags(text, "no-writes")
    }

    fn with_flags(text: &'static str, flags: &str) -> Self {
        Lua {
            plain: redis::Script::new(text),
            flagged: redis::Script::new(&format!("#!lua flags={flags}\n{text}")),
        }
    }

    /// The script to send: allowed on a full Redis when `script_flags` (the server takes
    /// script flags).
    pub(crate) fn script(&self, script_flags: bool) -> &redis::Script {
        if script_flags {
            &self.flagged
        } else {
            &self.plain
        }
    }
}

/// `EVALSHA` of `script` with `keys`, as a command its arguments can be added to.
pub(crate) fn evalsha(script: &redis::Script, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// Whether Redis did not know the script.
pub(crate) fn is_noscript(error: &RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Sends `cmd` (an [`evalsha`] of `script`), loading the script first if Redis forgot it.
pub(crate) async fn query<T: redis::FromRedisValue>(
    conn: &mut impl ConnectionLike,
    cmd: &redis::Cmd,
    script: &redis::Script,
) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if is_noscript(&e) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        answer => answer,
    }
}

/// Sends `pipe` (with `ignore_errors`, so one answer per command); if Redis forgot one of
/// `scripts`, loads them and sends it once more, so every command in it must be safe to
/// repeat.
pub(crate) async fn query_pipeline(
    conn: &mut impl ConnectionLike,
    pipe: &redis::Pipeline,
    scripts: &[&redis::Script],
) -> RedisResult<Vec<RedisResult<Value>>> {
    let answers: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
    if !answers
        .iter()
        .any(|a| matches!(a, Err(e) if is_noscript(e)))
    {
        return Ok(answers);
    }
    for script in scripts {
        script.load_async(conn).await?;
    }
    pipe.query_async(conn).await
}

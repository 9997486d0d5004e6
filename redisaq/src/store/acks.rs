//! Acknowledging many holdings' entries at once, each fenced by its lease.
//!
//! On one Redis node, without a script: the acknowledger keeps a connection of its own on
//! which the leases of its partitions are `WATCH`ed and read, and sends the `XACK`s as one
//! `MULTI`/`EXEC`. Redis runs that only if no watched lease changed since it was read
//! (renewed, taken, released, or ran out), so an `XACK` runs only while the lease read
//! was this holding's, as in the fencing script. The same round trip watches and reads the
//! leases again for the next call, so a call costs one round trip. (Through the fencing
//! script Redis turns every id into a Lua string and back: that measured about two thirds
//! of what the `XACK` itself costs.)
//!
//! The watch lives on the connection: one that failed is dropped, never reconnected
//! under the watch, and the next call starts on a new one by watching and reading anew.
//!
//! On a Redis Cluster a transaction names one slot, so there the acknowledgements go
//! through the fencing script, one call per partition.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Value};

use super::conn::{Conn, Target};
use super::{lease, stream, Holding};
use crate::error::Error;

/// What became of one holding's acknowledgements.
#[derive(Debug)]
pub(crate) enum Outcome {
    Taken,
    /// The lease is not the holding's: nothing was acknowledged.
    Refused,
    /// Not sent, or its answer was lost: try again.
    Failed(RedisError),
}

/// How acknowledgements are sent: watched transactions on one node, the fencing script
/// on a cluster (and for what a full Redis refuses to queue in a transaction, or a Redis
/// user may not send in one).
pub(crate) struct Acks {
    conn: Conn,
    watched: Option<Watched>,
}

impl Acks {
    /// For `conn`'s deployment; `target` opens the watched connection on one node.
    pub(crate) fn new(conn: Conn, target: Target) -> Self {
        let watched = (!conn.is_cluster()).then(|| Watched {
            target,
            conn: None,
            seen: HashMap::new(),
        });
        Acks { conn, watched }
    }

    /// Acknowledges each holding's ids while its lease holds its token; one outcome per
    /// holding. `keep`: the leases the next call will likely need (those still held).
    pub(crate) async fn send(
        &mut self,
        batches: &[(Holding, &[String])],
        keep: &[String],
    ) -> Result<Vec<Outcome>, Error> {
        let Some(watched) = &mut self.watched else {
            return scripted(&mut self.conn, batches).await;
        };
        let mut outcomes = watched.send(batches, keep).await;
        // A full Redis (`maxmemory`) queues no command in a transaction, not even one
        // that frees memory, and a Redis user may be denied transactions (`NOPERM`):
        // either still runs the fencing script.
        let refused: Vec<usize> = (0..batches.len())
            .filter(|&at| matches!(&outcomes[at], Outcome::Failed(e) if needs_script(e)))
            .collect();
        if refused
            .iter()
            .any(|&at| matches!(&outcomes[at], Outcome::Failed(e) if e.code() == Some("NOPERM")))
        {
            tracing::warn!(
                "acknowledging through the fencing script from now on: this Redis user may \
                 not use WATCH, MULTI or EXEC (allow them for cheaper acknowledgements)"
            );
            self.watched = None;
        }
        if !refused.is_empty() {
            let again: Vec<(Holding, &[String])> =
                refused.iter().map(|&at| batches[at].clone()).collect();
            for (at, outcome) in refused
                .into_iter()
                .zip(scripted(&mut self.conn, &again).await?)
            {
                outcomes[at] = outcome;
            }
        }
        Ok(outcomes)
    }
}

/// Through the fencing script, one call per holding in one round trip.
async fn scripted(
    conn: &mut Conn,
    batches: &[(Holding, &[String])],
) -> Result<Vec<Outcome>, Error> {
    Ok(stream::ack_many(conn, batches)
        .await?
        .into_iter()
        .map(|result| match result {
            Ok(()) => Outcome::Taken,
            Err(e) if lease::is_fenced(&e) => Outcome::Refused,
            Err(e) => Outcome::Failed(e),
        })
        .collect())
}

fn needs_script(error: &RedisError) -> bool {
    matches!(error.code(), Some("OOM" | "EXECABORT" | "NOPERM"))
}

/// A connection with the leases watched on it, and what they held when read.
pub(crate) struct Watched {
    target: Target,
    conn: Option<MultiplexedConnection>,
    /// Lease key → its value when read after `WATCH` on `conn` (`None`: no lease).
    seen: HashMap<String, Option<String>>,
}

/// Transactions aborted by a lease that changed meanwhile (its renewal, mostly) are sent
/// again with what was read after them, this many times in one call.
const ROUNDS: usize = 4;

impl Watched {
    async fn send(&mut self, batches: &[(Holding, &[String])], keep: &[String]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = batches.iter().map(|_| None).collect();
        for _ in 0..ROUNDS {
            if let Err(e) = self.round(batches, keep, &mut outcomes).await {
                // The watch ended with the connection.
                self.conn = None;
                self.seen.clear();
                for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                    *outcome = Some(Outcome::Failed(e.clone()));
                }
            }
            if outcomes.iter().all(Option::is_some) {
                break;
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    Outcome::Failed(RedisError::from((
                        redis::ErrorKind::Client,
                        "the partitions' leases kept changing while being acknowledged",
                    )))
                })
            })
            .collect()
    }

    /// Decides what it can of `outcomes`: refuses the holdings whose lease is not theirs,
    /// and sends the others' acknowledgements in one transaction (unless it is aborted).
    async fn round(
        &mut self,
        batches: &[(Holding, &[String])],
        keep: &[String],
        outcomes: &mut [Option<Outcome>],
    ) -> RedisResult<()> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let mut conn = self.target.session(Duration::from_secs(10)).await?;
                // A user denied MULTI would see the XACKs run outside a transaction,
                // unfenced: make sure it may use them (else `NOPERM`) before any is sent.
                let _: Value = redis::pipe()
                    .cmd("MULTI")
                    .ignore()
                    .cmd("EXEC")
                    .query_async(&mut conn)
                    .await?;
                self.conn.insert(conn)
            }
        };
        let is_ours = |seen: &HashMap<String, Option<String>>, holding: &Holding| match seen
            .get(&holding.lease)
        {
            Some(Some(token)) => *token == holding.token,
            _ => false,
        };
        // A lease not read on this connection, or read as someone else's, is read anew
        // (it may have been taken since): only a read under the watch refuses.
        let unsure: Vec<&str> = batches
            .iter()
            .zip(outcomes.iter())
            .filter(|((holding, _), outcome)| outcome.is_none() && !is_ours(&self.seen, holding))
            .map(|((holding, _), _)| holding.lease.as_str())
            .collect();
        if !unsure.is_empty() {
            let mut pipe = redis::pipe();
            pipe.cmd("WATCH").arg(&unsure).ignore();
            pipe.cmd("MGET").arg(&unsure);
            let (values,): (Vec<Option<String>>,) = pipe.query_async(conn).await?;
            self.seen
                .extend(unsure.iter().map(|lease| lease.to_string()).zip(values));
        }
        let mut sending = Vec::new();
        for (at, (holding, _)) in batches.iter().enumerate() {
            if outcomes[at].is_some() {
                continue;
            }
            if is_ours(&self.seen, holding) {
                sending.push(at);
            } else {
                outcomes[at] = Some(Outcome::Refused);
            }
        }
        if sending.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("MULTI");
        for &at in &sending {
            let (holding, ids) = &batches[at];
            pipe.cmd("XACK")
                .arg(&holding.stream)
                .arg(&holding.group)
                .arg(*ids);
        }
        pipe.cmd("EXEC");
        // EXEC ends every watch: watch what the next call needs.
        if !keep.is_empty() {
            pipe.cmd("WATCH").arg(keep);
            pipe.cmd("MGET").arg(keep);
        }
        let mut answers: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
        self.seen.clear();
        if !keep.is_empty() {
            let values: Vec<Option<String>> =
                redis::from_redis_value(answers.pop().expect("MGET's answer")?)?;
            answers.pop().expect("WATCH's answer")?;
            self.seen.extend(keep.iter().cloned().zip(values));
        }
        let exec = match answers.pop().expect("EXEC's answer") {
            Ok(exec) => exec,
            // Discarded, for what a queued command was refused with (a full Redis).
            Err(discarded) => {
                let reason = answers
                    .into_iter()
                    .find_map(Result::err)
                    .unwrap_or(discarded);
                for &at in &sending {
                    outcomes[at] = Some(Outcome::Failed(reason.clone()));
                }
                return Ok(());
            }
        };
        match exec {
            // Aborted: a watched lease changed. What it holds now was read above.
            Value::Nil => {}
            Value::Array(results) => {
                for (&at, result) in sending.iter().zip(results) {
                    outcomes[at] = Some(match result.extract_error() {
                        Ok(_) => Outcome::Taken,
                        Err(e) => Outcome::Failed(e),
                    });
                }
            }
            other => {
                return Err(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "EXEC answered neither a list nor nil",
                    format!("{other:?}"),
                )))
            }
        }
        Ok(())
    }
}

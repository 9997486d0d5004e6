//! What a run found, from the sink's records and Redis: per group, jobs lost, left
//! pending, run twice and dead-lettered; stale effects the sink refused; the faults
//! injected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use comfy_table::Table;
use redisaq::admin::Admin;
use redisaq_tests::RedisServer;
use serde::Serialize;

use crate::faults::{Fault, TTL};
use crate::jobs::{sink, GROUPS, TOPIC};

/// One group's result.
#[derive(Debug, Clone, Serialize)]
pub struct GroupOutcome {
    pub group: String,
    /// Stored jobs whose effect was never recorded and that were not dead-lettered.
    pub lost: u64,
    /// Entries still pending or not yet delivered at the end.
    pub pending: u64,
    /// Jobs whose effect was recorded more than once (at-least-once at work).
    pub ran_twice: u64,
    /// Jobs in the dead-letter queue.
    pub dead_letters: u64,
    /// Jobs whose effect was recorded.
    pub done: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub seed: u64,
    pub fault_seconds: f64,
    pub drain_seconds: f64,
    /// Jobs Redis acknowledged as stored.
    pub enqueued: u64,
    /// Jobs whose enqueue reply was lost (may or may not be stored).
    pub enqueue_unknown: u64,
    /// Jobs whose enqueue failed (not stored).
    pub enqueue_failed: u64,
    pub faults: BTreeMap<Fault, u64>,
    pub groups: Vec<GroupOutcome>,
    /// Effects the sink refused because their fencing token was older than the newest,
    /// sent by a worker within a heartbeat TTL of its waking from a pause: calls it had
    /// sent before the pause, which no lease can stop and the fencing token is for.
    pub refused_after_pause: u64,
    /// Effects refused otherwise: an owner that ran beside a newer one.
    pub fencing_violations: u64,
    /// The first few refused effects of each kind.
    pub violation_samples: Vec<String>,
    pub refused_after_pause_samples: Vec<String>,
}

impl Outcome {
    /// Every group holds nothing and has every job accounted for.
    pub fn drained(&self) -> bool {
        self.groups.iter().all(|g| g.lost == 0 && g.pending == 0)
    }

    /// Nothing lost, nothing pending, no effect accepted out of order.
    pub fn passed(&self) -> bool {
        self.drained() && self.fencing_violations == 0
    }
}

/// What the run did: its seed, for how long it injected which faults, and when a
/// paused worker woke (worker, unix ms).
pub struct Run<'a> {
    pub seed: u64,
    pub duration: Duration,
    pub faults: &'a BTreeMap<Fault, u64>,
    pub resumed: &'a [(String, u64)],
}

type Expected = (HashSet<String>, HashSet<String>, u64);

/// Reads the records and Redis.
pub async fn collect(
    sink_server: &RedisServer,
    main_url: &str,
    admin: &Admin,
    (stored, unknown, failed): &Expected,
    run: &Run<'_>,
) -> Result<Outcome, String> {
    let mut conn = redis::Client::open(sink_server.url())
        .and_then(|c| c.get_connection())
        .map_err(|e| e.to_string())?;
    let partitions = admin.partitions(TOPIC).await.map_err(|e| e.to_string())?;
    let mut main = redis::Client::open(main_url)
        .and_then(|c| c.get_connection())
        .map_err(|e| e.to_string())?;
    let letters = admin
        .dead_letters(TOPIC, None, usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    let mut groups = Vec::new();
    for group in GROUPS {
        let effects: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(sink::effects(group))
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        let dead: HashSet<&str> = letters
            .iter()
            .filter(|l| l.group == group)
            .map(|l| l.id.as_str())
            .collect();
        let lost = stored
            .iter()
            .filter(|id| !effects.contains_key(*id) && !dead.contains(id.as_str()))
            .count() as u64;
        let pending = backlog(&mut main, group, partitions)?;
        groups.push(GroupOutcome {
            group: group.to_string(),
            lost,
            pending,
            ran_twice: effects.values().filter(|&&n| n > 1).count() as u64,
            dead_letters: dead.len() as u64,
            done: effects.len() as u64,
        });
    }
    let refused: Vec<String> = redis::cmd("LRANGE")
        .arg(sink::REFUSED)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .map_err(|e| e.to_string())?;
    let (after_pause, violations): (Vec<String>, Vec<String>) = refused
        .into_iter()
        .partition(|entry| after_a_pause(entry, run.resumed));
    Ok(Outcome {
        seed: run.seed,
        fault_seconds: run.duration.as_secs_f64(),
        drain_seconds: 0.0,
        enqueued: stored.len() as u64,
        enqueue_unknown: unknown.len() as u64,
        enqueue_failed: *failed,
        faults: run.faults.clone(),
        groups,
        refused_after_pause: after_pause.len() as u64,
        fencing_violations: violations.len() as u64,
        violation_samples: violations.into_iter().take(5).collect(),
        refused_after_pause_samples: after_pause.into_iter().take(5).collect(),
    })
}

/// Whether a refused effect (`<worker> <unix ms> …`) reached the sink within a heartbeat
/// TTL after its worker woke from a pause (`resumed`: worker and unix ms).
fn after_a_pause(entry: &str, resumed: &[(String, u64)]) -> bool {
    let mut fields = entry.split(' ');
    let (Some(worker), Some(Ok(at))) = (fields.next(), fields.next().map(str::parse::<u64>)) else {
        return false;
    };
    let window = TTL.as_millis() as u64;
    resumed
        .iter()
        .any(|(w, woke)| w == worker && (*woke..=woke + window).contains(&at))
}

/// What a group has not finished, counted exactly: entries pending, and entries after its
/// read position (not Redis's `lag`, an estimate that trimming and restarts can spoil).
fn backlog(conn: &mut redis::Connection, group: &str, partitions: u32) -> Result<u64, String> {
    let mut total = 0;
    for partition in 0..partitions {
        let stream = redisaq::keys::partition(TOPIC, partition);
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query(conn)
            .map_err(|e| e.to_string())?;
        let Some(info) = groups.groups.into_iter().find(|g| g.name == group) else {
            // No group there: everything in the stream is still to be read by it.
            let length: u64 = redis::cmd("XLEN")
                .arg(&stream)
                .query(conn)
                .map_err(|e| e.to_string())?;
            total += length;
            continue;
        };
        let after: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(format!("({}", info.last_delivered_id))
            .arg("+")
            .query(conn)
            .map_err(|e| e.to_string())?;
        total += info.pending as u64 + after.ids.len() as u64;
    }
    Ok(total)
}

/// Prints the outcome as a table, or JSON.
pub fn print(outcome: &Outcome, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(outcome).expect("serializable")
        );
        return;
    }
    let mut run = Table::new();
    run.set_header(["run", ""]);
    run.add_row(["seed".to_string(), outcome.seed.to_string()]);
    run.add_row([
        "faults for / drained in (s)".to_string(),
        format!(
            "{:.0} / {:.1}",
            outcome.fault_seconds, outcome.drain_seconds
        ),
    ]);
    run.add_row([
        "jobs enqueued (stored / reply lost / refused)".to_string(),
        format!(
            "{} / {} / {}",
            outcome.enqueued, outcome.enqueue_unknown, outcome.enqueue_failed
        ),
    ]);
    for (fault, count) in &outcome.faults {
        run.add_row([format!("fault {fault:?}"), count.to_string()]);
    }
    run.add_row([
        "stale effects refused after a pause / otherwise (violations)".to_string(),
        format!(
            "{} / {}",
            outcome.refused_after_pause, outcome.fencing_violations
        ),
    ]);
    println!("{run}");
    let mut groups = Table::new();
    groups.set_header([
        "group",
        "done",
        "lost",
        "pending",
        "ran twice",
        "dead letters",
    ]);
    for g in &outcome.groups {
        groups.add_row([
            g.group.clone(),
            g.done.to_string(),
            g.lost.to_string(),
            g.pending.to_string(),
            g.ran_twice.to_string(),
            g.dead_letters.to_string(),
        ]);
    }
    println!("{groups}");
    for sample in &outcome.refused_after_pause_samples {
        println!("refused after a pause (worker, unix ms, effect): {sample}");
    }
    for sample in &outcome.violation_samples {
        println!("violation (worker, unix ms, effect): {sample}");
    }
    println!("{}", if outcome.passed() { "PASSED" } else { "FAILED" });
}

#[cfg(test)]
mod tests {
    use super::after_a_pause;

    #[test]
    fn a_refusal_counts_as_after_a_pause_only_from_that_worker_within_the_ttl() {
        let resumed = [("w6".to_string(), 10_000)];
        let refused = |worker: &str, at: u64| {
            format!("{worker} {at} chaos_single:2 job 0193 token 100 < 200")
        };
        assert!(after_a_pause(&refused("w6", 10_000), &resumed));
        assert!(after_a_pause(&refused("w6", 10_900), &resumed));
        assert!(!after_a_pause(&refused("w6", 9_999), &resumed));
        assert!(!after_a_pause(&refused("w6", 11_001), &resumed));
        assert!(!after_a_pause(&refused("w7", 10_100), &resumed));
        assert!(!after_a_pause("garbled", &resumed));
    }
}

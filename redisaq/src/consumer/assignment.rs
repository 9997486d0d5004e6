//! Which live consumer owns which partition: a deterministic, sticky, balanced
//! assignment, stored per group in `redisaq:{topic}:assignment:{group}` with a
//! generation that grows with every change of membership or partition count.
//!
//! Any consumer that sees the stored assignment disagree with the live members or the
//! partition count computes the next one and writes it with a compare-and-set on the
//! generation; all consumers then follow the stored record.

use crate::store::conn::Conn;
use std::collections::{BTreeMap, HashMap};

use crate::error::Error;
pub(crate) use crate::store::assignment::{load, Assignment};

impl Assignment {
    /// The partitions `consumer` owns, ascending.
    pub(crate) fn owned_by(&self, consumer: &str) -> Vec<u32> {
        (0..self.owners.len() as u32)
            .filter(|&p| self.owners[p as usize] == consumer)
            .collect()
    }

    /// Whether it was computed for these members and this partition count.
    pub(crate) fn matches(&self, members: &[String], partitions: u32) -> bool {
        self.members == members && self.owners.len() == partitions as usize
    }
}

/// The next owners: every partition to a member, counts differing by at most one, and
/// as few partitions as possible changing owner.
///
/// Members are taken sorted. Members that already hold more get the larger quotas, so a
/// balanced assignment stays exactly as it is; partitions over quota (the highest
/// numbers) and those of departed members go, in order, to members under quota, in name
/// order.
pub(crate) fn assign(previous: &[String], members: &[String], partitions: u32) -> Vec<String> {
    assert!(
        !members.is_empty(),
        "an assignment needs at least one member"
    );
    let mut members: Vec<&str> = members.iter().map(String::as_str).collect();
    members.sort_unstable();
    members.dedup();
    let mut held: BTreeMap<&str, Vec<u32>> = members.iter().map(|m| (*m, Vec::new())).collect();
    for (partition, owner) in previous.iter().enumerate().take(partitions as usize) {
        if let Some(list) = held.get_mut(owner.as_str()) {
            list.push(partition as u32);
        }
    }
    let count = members.len();
    let base = partitions as usize / count;
    let extra = partitions as usize % count;
    let mut by_holding = members.clone();
    by_holding.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
    let quota: HashMap<&str, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(rank, m)| (*m, base + usize::from(rank < extra)))
        .collect();

    let mut owners: Vec<Option<&str>> = vec![None; partitions as usize];
    for (member, list) in &mut held {
        list.truncate(quota[member]);
        for &p in list.iter() {
            owners[p as usize] = Some(member);
        }
    }
    let unowned: Vec<u32> = (0..partitions)
        .filter(|&p| owners[p as usize].is_none())
        .collect();
    let mut free = unowned.into_iter();
    for member in &members {
        for _ in held[member].len()..quota[member] {
            if let Some(p) = free.next() {
                owners[p as usize] = Some(member);
            }
        }
    }
    owners
        .into_iter()
        .map(|o| o.expect("every partition assigned").to_string())
        .collect()
}

/// Stores the successor of `current` for these members and partitions, unless another
/// consumer was faster. Returns whether this call wrote it.
pub(crate) async fn advance(
    conn: &mut Conn,
    topic: &str,
    group: &str,
    current: &Assignment,
    members: &[String],
    partitions: u32,
    script_flags: bool,
) -> Result<bool, Error> {
    let owners = assign(&current.owners, members, partitions);
    crate::store::assignment::compare_and_set(
        conn,
        topic,
        group,
        current.generation,
        members,
        &owners,
        script_flags,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn counts(owners: &[String]) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for owner in owners {
            *counts.entry(owner.as_str()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn a_fresh_assignment_is_balanced() {
        let owners = assign(&[], &names(&["b", "a", "c"]), 8);
        let counts = counts(&owners);
        assert_eq!(counts.values().sum::<usize>(), 8);
        assert!(counts.values().all(|&c| c == 2 || c == 3), "{counts:?}");
        assert_eq!(
            owners,
            assign(&[], &names(&["c", "a", "b"]), 8),
            "deterministic"
        );
    }

    #[test]
    fn a_join_moves_only_what_the_newcomer_needs() {
        let before = assign(&[], &names(&["a", "b", "c"]), 8);
        let after = assign(&before, &names(&["a", "b", "c", "d"]), 8);
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert_eq!(moved, 2, "d takes two partitions, nothing else moves");
        assert!(counts(&after).values().all(|&c| c == 2));
        assert_eq!(
            after,
            assign(&after, &names(&["a", "b", "c", "d"]), 8),
            "stable"
        );
    }

    #[test]
    fn a_departure_moves_only_the_departed_members_partitions() {
        let before = assign(&[], &names(&["a", "b", "c", "d"]), 8);
        let after = assign(&before, &names(&["a", "b", "d"]), 8);
        for (p, (x, y)) in before.iter().zip(&after).enumerate() {
            if x != "c" {
                assert_eq!(x, y, "partition {p} kept its owner");
            }
        }
        assert_eq!(after.len(), 8);
        assert!(
            after
                .iter()
                .all(|owner| ["a", "b", "d"].contains(&owner.as_str())),
            "the departed member owns nothing: {after:?}"
        );
        assert!(counts(&after).values().all(|&c| c == 2 || c == 3));
    }

    #[test]
    fn new_partitions_spread_over_members() {
        let before = assign(&[], &names(&["a", "b"]), 2);
        let after = assign(&before, &names(&["a", "b"]), 6);
        assert_eq!(&after[..2], &before[..], "old partitions stay");
        assert_eq!(
            counts(&after).values().copied().collect::<Vec<_>>(),
            vec![3, 3]
        );
    }
}

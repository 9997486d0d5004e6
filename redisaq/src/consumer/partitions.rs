//! The partitions this consumer holds, in process: each holding (tenure) with its phase,
//! its running calls and until when its lease is surely ours. Fetch, execute, the
//! coordinator and the keeper share it; locally a consumer stops fetching a partition and
//! abandons its running jobs once its lease may have expired.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a lease is surely ours after we asked Redis to extend it at `asked_at`: the
/// TTL, less a margin for clocks running at slightly different rates.
pub(crate) fn validity(ttl: Duration, asked_at: Instant) -> Instant {
    asked_at + ttl - ttl / 20
}

/// Where a held partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Fetching and running jobs.
    Active,
    /// Assigned elsewhere: no new jobs start; the lease goes once running ones finish.
    Releasing,
}

#[derive(Debug)]
struct Slot {
    phase: Phase,
    /// When the hand-over began, while releasing.
    releasing_since: Option<Instant>,
    /// When calls that ignore cancellation were last reported.
    stuck_reported: Option<Instant>,
    /// Which holding of the partition this is (its epoch in Redis): deliveries read or
    /// claimed in an earlier one never run in this one (this one's claim delivers them
    /// again), and its writes are fenced by it.
    tenure: u64,
    /// Until when the lease is surely ours, by this process's clock.
    valid_until: Instant,
    running: usize,
    /// Cancelled when the holding is lost. Shared by `Arc`: cloning the token itself
    /// takes its tree's lock, once per call.
    lost: Arc<CancellationToken>,
    /// Whether what was left pending there has been claimed: only then may new entries
    /// be read, or a leftover read as new would be claimed (and run) twice.
    claimed: bool,
    /// The last entry id this holding saw delivered (by its claim, then by its reads):
    /// anything pending here after it came from a read whose reply was lost.
    read_floor: String,
    /// When an entry waiting in the partition's due record (a retry) is due next, as far
    /// as this holding knows; `None` when none waits.
    next_due: Option<Instant>,
    /// Entries whose call started here and was cancelled while this holding lasted (by
    /// the hand-over): the release charges them their attempt (what else it leaves
    /// pending never ran here); if the holding is dropped instead, they go to
    /// `ran_unacked`.
    abandoned: Vec<String>,
}

/// One holding of one partition, as deliveries and calls carry it: `id` is the epoch
/// the lease was taken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tenure {
    pub partition: u32,
    pub id: u64,
}

/// The partitions this consumer holds, shared by fetch, execute and the coordinator.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    slots: Mutex<BTreeMap<u32, Slot>>,
    /// Entries (partition, id) that ran here but whose ack was refused, or whose call was
    /// abandoned with the lease: taken again, they start a new attempt.
    ran_unacked: Mutex<HashSet<(u32, String)>>,
    /// Every partition held since the start: where this consumer may be in the Redis
    /// group.
    ever_held: Mutex<BTreeSet<u32>>,
}

/// What a running call needs to stop when one of its partitions is lost.
pub(crate) struct Guard {
    pub valid_until: Instant,
    pub lost: Vec<Arc<CancellationToken>>,
}

impl Partitions {
    /// Every partition held since the start, ascending.
    pub(crate) fn ever_held(&self) -> Vec<u32> {
        let ever = self.ever_held.lock().expect("ever_held lock");
        ever.iter().copied().collect()
    }

    /// Remembers entries that ran here but whose ack was refused (or whose call was
    /// abandoned with the lease).
    pub(crate) fn ran_unacked(&self, partition: u32, ids: &[String]) {
        let mut ran = self.ran_unacked.lock().expect("ran_unacked lock");
        ran.extend(ids.iter().map(|id| (partition, id.clone())));
    }

    pub(crate) fn forget_ran_unacked(&self, partition: u32) {
        let mut ran = self.ran_unacked.lock().expect("ran_unacked lock");
        ran.retain(|(p, _)| *p != partition);
    }

    /// Whether the entry ran here before its ack was refused (forgets it).
    pub(crate) fn take_ran_unacked(&self, partition: u32, id: &str) -> bool {
        let mut ran = self.ran_unacked.lock().expect("ran_unacked lock");
        ran.remove(&(partition, id.to_string()))
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<u32, Slot>) -> R) -> R {
        f(&mut self.slots.lock().expect("partition table lock"))
    }

    /// Records a freshly acquired lease with its epoch, valid until `valid_until`.
    pub(crate) fn hold(&self, partition: u32, epoch: u64, valid_until: Instant) {
        self.ever_held
            .lock()
            .expect("ever_held lock")
            .insert(partition);
        let tenure = epoch;
        let replaced = self.with(|slots| {
            slots.insert(
                partition,
                Slot {
                    phase: Phase::Active,
                    releasing_since: None,
                    stuck_reported: None,
                    tenure,
                    valid_until,
                    running: 0,
                    lost: Arc::new(CancellationToken::new()),
                    claimed: false,
                    read_floor: String::new(),
                    next_due: None,
                    abandoned: Vec::new(),
                },
            )
        });
        // Never two holdings at once: calls of an earlier one stop.
        if let Some(slot) = replaced {
            slot.lost.cancel();
        }
    }

    /// Lets the fetch loop read new entries of a partition whose leftovers are claimed;
    /// `floor` is the group's last delivered id then.
    pub(crate) fn claimed(&self, partition: u32, floor: String) {
        self.with(|slots| {
            if let Some(slot) = slots.get_mut(&partition) {
                slot.claimed = true;
                slot.read_floor = floor;
                // An earlier holder may have left retries waiting: look at once.
                slot.next_due = Some(super::clock::now());
            }
        });
    }

    /// Records the last entry id a read of this holding delivered.
    pub(crate) fn advance_floor(&self, tenure: Tenure, id: &str) {
        self.with(|slots| {
            if let Some(slot) = slots
                .get_mut(&tenure.partition)
                .filter(|s| s.tenure == tenure.id)
            {
                slot.read_floor = id.to_string();
            }
        });
    }

    /// Records when this holding's next waiting entry is due (`None`: none waits).
    pub(crate) fn set_next_due(&self, tenure: Tenure, at: Option<Instant>) {
        self.with(|slots| {
            if let Some(slot) = slots
                .get_mut(&tenure.partition)
                .filter(|s| s.tenure == tenure.id)
            {
                slot.next_due = at;
            }
        });
    }

    /// Records that an entry of this holding is due at `at` (keeps an earlier one).
    pub(crate) fn due_at(&self, tenure: Tenure, at: Instant) {
        self.with(|slots| {
            if let Some(slot) = slots
                .get_mut(&tenure.partition)
                .filter(|s| s.tenure == tenure.id)
            {
                slot.next_due = Some(slot.next_due.map_or(at, |due| due.min(at)));
            }
        });
    }

    /// The earliest time an entry waiting in one of these holdings is due.
    pub(crate) fn next_due(&self, tenures: &[Tenure]) -> Option<Instant> {
        self.with(|slots| {
            tenures
                .iter()
                .filter_map(|t| {
                    slots
                        .get(&t.partition)
                        .filter(|s| s.tenure == t.id)
                        .and_then(|s| s.next_due)
                })
                .min()
        })
    }

    /// The last entry id this holding saw delivered.
    pub(crate) fn read_floor(&self, tenure: Tenure) -> Option<String> {
        self.with(|slots| {
            slots
                .get(&tenure.partition)
                .filter(|s| s.tenure == tenure.id)
                .map(|s| s.read_floor.clone())
        })
    }

    /// Extends a holding's lease.
    pub(crate) fn extend(&self, tenure: Tenure, valid_until: Instant) {
        self.with(|slots| {
            if let Some(slot) = slots
                .get_mut(&tenure.partition)
                .filter(|s| s.tenure == tenure.id)
            {
                slot.valid_until = valid_until;
            }
        });
    }

    /// Forgets a partition whose lease is gone, stopping its running jobs; false if it
    /// was not held.
    pub(crate) fn drop_partition(&self, partition: u32) -> bool {
        let slot = self.with(|slots| slots.remove(&partition));
        self.forget(partition, slot)
    }

    /// [`drop_partition`](Self::drop_partition), if it is still held in this tenure;
    /// false if it was not.
    pub(crate) fn drop_tenure(&self, tenure: Tenure) -> bool {
        self.forget(tenure.partition, self.remove(tenure))
    }

    /// Stops a removed holding's running jobs; its abandoned entries are this consumer's
    /// to count if it takes the partition again. False if nothing was removed.
    fn forget(&self, partition: u32, slot: Option<Slot>) -> bool {
        let Some(slot) = slot else { return false };
        slot.lost.cancel();
        self.ran_unacked(partition, &slot.abandoned);
        true
    }

    /// Remembers that a call of `tenure` was stopped while running this entry: for
    /// the release of a holding that hands the partition over, or, once the holding is
    /// gone (its lease lost), for this consumer's next claim if it takes the partition
    /// again. Either way it runs next as a new attempt.
    pub(crate) fn abandoned(&self, tenure: Tenure, id: String) {
        let gone = self.with(|slots| match slots.get_mut(&tenure.partition) {
            Some(slot) if slot.tenure == tenure.id => {
                slot.abandoned.push(id);
                None
            }
            _ => Some(id),
        });
        if let Some(id) = gone {
            self.ran_unacked(tenure.partition, &[id]);
        }
    }

    /// The entries of `tenure` whose calls were cancelled (see [`abandoned`](Self::abandoned)).
    pub(crate) fn abandoned_in(&self, tenure: Tenure) -> Vec<String> {
        self.with(|slots| match slots.get(&tenure.partition) {
            Some(slot) if slot.tenure == tenure.id => slot.abandoned.clone(),
            _ => Vec::new(),
        })
    }

    /// Forgets a holding whose lease it gave up, with its abandoned entries (the release
    /// counted their attempt).
    pub(crate) fn released(&self, tenure: Tenure) {
        if let Some(slot) = self.remove(tenure) {
            slot.lost.cancel();
        }
    }

    fn remove(&self, tenure: Tenure) -> Option<Slot> {
        self.with(|slots| {
            if slots.get(&tenure.partition)?.tenure == tenure.id {
                slots.remove(&tenure.partition)
            } else {
                None
            }
        })
    }

    /// Stops new work on a partition that moves elsewhere.
    pub(crate) fn start_release(&self, partition: u32) {
        self.with(|slots| {
            if let Some(slot) = slots.get_mut(&partition) {
                slot.phase = Phase::Releasing;
                slot.releasing_since = Some(Instant::now());
            }
        });
    }

    /// How long a releasing partition has been waiting for its running calls.
    pub(crate) fn releasing_for(&self, partition: u32) -> Option<Duration> {
        self.with(|slots| {
            slots
                .get(&partition)?
                .releasing_since
                .map(|since| since.elapsed())
        })
    }

    /// Whether calls stuck on a partition are due to be reported again (once per
    /// `every`).
    pub(crate) fn stuck_report_due(&self, partition: u32, every: Duration) -> bool {
        self.with(|slots| {
            let Some(slot) = slots.get_mut(&partition) else {
                return false;
            };
            let due = slot.stuck_reported.is_none_or(|at| at.elapsed() >= every);
            if due {
                slot.stuck_reported = Some(Instant::now());
            }
            due
        })
    }

    /// Cancels the running calls of a partition (they stop at their next `.await` and
    /// their jobs run again at the partition's next owner); the lease stays until they
    /// are gone.
    pub(crate) fn cancel_calls(&self, partition: u32) {
        self.with(|slots| {
            if let Some(slot) = slots.get(&partition) {
                slot.lost.cancel();
            }
        });
    }

    /// The holdings, active or releasing.
    pub(crate) fn tenures(&self) -> Vec<Tenure> {
        let mut held: Vec<Tenure> = self.with(|slots| {
            slots
                .iter()
                .map(|(p, s)| Tenure {
                    partition: *p,
                    id: s.tenure,
                })
                .collect()
        });
        held.sort_unstable();
        held
    }

    /// Partitions held, with their phase and running count.
    pub(crate) fn held(&self) -> Vec<(u32, Phase, usize)> {
        let mut held: Vec<_> = self.with(|slots| {
            slots
                .iter()
                .map(|(p, s)| (*p, s.phase, s.running))
                .collect()
        });
        held.sort_unstable_by_key(|(p, _, _)| *p);
        held
    }

    /// Whether the partition is held, in any phase.
    pub(crate) fn is_held(&self, partition: u32) -> bool {
        self.with(|slots| slots.contains_key(&partition))
    }

    /// The current holding of an active partition.
    pub(crate) fn tenure(&self, partition: u32) -> Option<Tenure> {
        self.with(|slots| {
            slots
                .get(&partition)
                .filter(|s| s.phase == Phase::Active)
                .map(|s| Tenure {
                    partition,
                    id: s.tenure,
                })
        })
    }

    /// Whether `tenure` is the current holding of its partition, and active.
    pub(crate) fn is_current(&self, tenure: Tenure) -> bool {
        self.tenure(tenure.partition) == Some(tenure)
    }

    /// Whether `tenure` is held and not being handed over.
    pub(crate) fn is_active(&self, tenure: Tenure) -> bool {
        self.with(|slots| {
            slots
                .get(&tenure.partition)
                .is_some_and(|s| s.tenure == tenure.id && s.phase == Phase::Active)
        })
    }

    /// Partitions to fetch from: active, leftovers claimed, with a lease that is surely
    /// still ours.
    pub(crate) fn fetchable(&self) -> Vec<Tenure> {
        let now = super::clock::now();
        let mut list: Vec<Tenure> = self.with(|slots| {
            slots
                .iter()
                .filter(|(_, s)| s.phase == Phase::Active && s.claimed && s.valid_until > now)
                .map(|(p, s)| Tenure {
                    partition: *p,
                    id: s.tenure,
                })
                .collect()
        });
        list.sort_unstable();
        list
    }

    /// Registers a call on these holdings if all are current, active and with a valid
    /// lease; else answers the holdings whose lease may have run out, for the caller to
    /// give up (the jobs turned away here stay pending under this consumer, and only
    /// taking the partition anew, which claims everything left there, brings them back).
    pub(crate) fn begin(&self, tenures: &[Tenure]) -> Result<Guard, Vec<Tenure>> {
        let now = super::clock::now();
        self.with(|slots| {
            let lapsed: Vec<Tenure> = tenures
                .iter()
                .filter(|t| {
                    slots
                        .get(&t.partition)
                        .is_some_and(|s| s.tenure == t.id && s.valid_until <= now)
                })
                .copied()
                .collect();
            let usable = lapsed.is_empty()
                && tenures.iter().all(|t| {
                    slots
                        .get(&t.partition)
                        .is_some_and(|s| s.phase == Phase::Active && s.tenure == t.id)
                });
            if !usable {
                return Err(lapsed);
            }
            let mut guard = Guard {
                valid_until: now + Duration::from_secs(3600),
                lost: Vec::with_capacity(tenures.len()),
            };
            for t in tenures {
                let slot = slots.get_mut(&t.partition).expect("checked above");
                slot.running += 1;
                guard.valid_until = guard.valid_until.min(slot.valid_until);
                guard.lost.push(slot.lost.clone());
            }
            Ok(guard)
        })
    }

    /// The earliest lease end among these holdings now (leases get extended while a call
    /// runs); `None` if one is gone.
    pub(crate) fn valid_until(&self, tenures: &[Tenure]) -> Option<Instant> {
        self.with(|slots| {
            tenures
                .iter()
                .map(|t| {
                    slots
                        .get(&t.partition)
                        .filter(|s| s.tenure == t.id)
                        .map(|s| s.valid_until)
                })
                .try_fold(None::<Instant>, |min, v| {
                    v.map(|v| Some(min.map_or(v, |m: Instant| m.min(v))))
                })
                .flatten()
        })
    }

    /// Ends a call registered with [`begin`](Self::begin).
    pub(crate) fn end(&self, tenures: &[Tenure]) {
        self.with(|slots| {
            for t in tenures {
                if let Some(slot) = slots.get_mut(&t.partition).filter(|s| s.tenure == t.id) {
                    slot.running = slot.running.saturating_sub(1);
                }
            }
        });
    }
}

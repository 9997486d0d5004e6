//! Holding back job starts that a rate limit refuses ([`crate::store::rate`]): the
//! executor asks before it starts a call; a job the group's rate refuses waits here until
//! a start frees up, and one its key's rate refuses waits in its key's line, so other keys
//! keep flowing past it and one key's jobs still start in order. Nothing waiting here
//! spends an attempt, and what waits counts against the read-ahead: while it is full,
//! the executor takes nothing more from the delivery queue.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::{Delivery, Shared, READ_AHEAD};
use crate::error::Error;
use crate::rate::Rate;
use crate::store::rate::{self, Refused};

/// When Redis cannot be asked, how long until it is asked again.
const RETRY: Duration = Duration::from_millis(250);

/// The limits of one handler, and the jobs they hold back.
pub(crate) struct Throttle {
    rate: Option<Rate>,
    key_rate: Option<Rate>,
    /// Refused by the group's rate, oldest first; they start before anything newer.
    held: VecDeque<Delivery>,
    /// Until when the group's rate admits nothing.
    group_until: Option<Instant>,
    /// Refused by their key's rate: per key, until when, and the key's jobs in order.
    parked: HashMap<String, (Instant, VecDeque<Delivery>)>,
    /// A key's line whose wait is over, asked for again one by one, in order.
    resumed: VecDeque<Delivery>,
}

impl Throttle {
    /// The handler's limits; an error names the bad one.
    pub(crate) fn new(rate: Option<&str>, key_rate: Option<&str>) -> Result<Self, Error> {
        Ok(Throttle {
            rate: rate.map(|r| Rate::parse("rate", r)).transpose()?,
            key_rate: key_rate.map(|r| Rate::parse("key_rate", r)).transpose()?,
            held: VecDeque::new(),
            group_until: None,
            parked: HashMap::new(),
            resumed: VecDeque::new(),
        })
    }

    pub(crate) fn limits(&self) -> (Option<Rate>, Option<Rate>) {
        (self.rate, self.key_rate)
    }

    fn limited(&self) -> bool {
        self.rate.is_some() || self.key_rate.is_some()
    }

    /// How many jobs wait here.
    pub(crate) fn waiting(&self) -> usize {
        self.held.len()
            + self.resumed.len()
            + self.parked.values().map(|(_, q)| q.len()).sum::<usize>()
    }

    fn group_open(&self, now: Instant) -> bool {
        self.group_until.is_none_or(|until| until <= now)
    }

    /// Whether the executor may take more from the delivery queue.
    pub(crate) fn has_room(&self) -> bool {
        !self.limited() || (self.waiting() < READ_AHEAD && self.group_open(Instant::now()))
    }

    /// A job whose wait is over, if any.
    pub(crate) fn ready(&mut self) -> Option<Delivery> {
        if !self.limited() {
            return None;
        }
        let now = Instant::now();
        if !self.group_open(now) {
            return None;
        }
        if let Some(delivery) = self.held.pop_front() {
            return Some(delivery);
        }
        if let Some(delivery) = self.resumed.pop_front() {
            return Some(delivery);
        }
        // The whole line leaves the key's wait: asked for again in order, the first one
        // refused parks the key anew and the rest line up behind it.
        let key = self
            .parked
            .iter()
            .find(|(_, (until, _))| *until <= now)
            .map(|(key, _)| key.clone())?;
        let (_, mut line) = self.parked.remove(&key).expect("found above");
        let delivery = line.pop_front();
        self.resumed.extend(line);
        delivery
    }

    /// When the next held job may be ready.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        let group = self.group_until;
        let held = (!self.held.is_empty() || !self.resumed.is_empty())
            .then(|| group.unwrap_or_else(Instant::now));
        // A key's line also waits for the group's rate.
        let parked = self
            .parked
            .values()
            .map(|(until, _)| *until)
            .min()
            .map(|until| group.map_or(until, |group| until.max(group)));
        match (held, parked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Asks Redis to admit `batch`; returns the jobs that may start now, in order, and
    /// keeps the others until they may.
    pub(crate) async fn admit(&mut self, shared: &Shared, batch: Vec<Delivery>) -> Vec<Delivery> {
        if !self.limited() {
            return batch;
        }
        let before = self.waiting();
        let admitted = if self.key_rate.is_some() {
            self.admit_each(shared, batch).await
        } else {
            self.admit_together(shared, batch).await
        };
        let refused = self.waiting().saturating_sub(before);
        shared.metrics.throttled.inc_by(refused as u64);
        shared.metrics.throttled_waiting.set(self.waiting() as i64);
        admitted
    }

    /// Group rate only: one ask for the whole batch.
    async fn admit_together(&mut self, shared: &Shared, mut batch: Vec<Delivery>) -> Vec<Delivery> {
        let taken = rate::take(
            &mut shared.conn.clone(),
            &shared.topic,
            shared.group,
            self.rate,
            None,
            batch.len(),
        )
        .await;
        let (granted, wait) = match taken {
            Ok(taken) => (taken.granted, taken.refused.map(|(wait, _)| wait)),
            Err(e) => {
                tracing::warn!(error = %e, "could not ask Redis for the rate limit; holding the jobs");
                (0, Some(RETRY))
            }
        };
        let refused = batch.split_off(granted.min(batch.len()));
        for delivery in refused.into_iter().rev() {
            self.held.push_front(delivery);
        }
        if !self.held.is_empty() {
            self.group_until = Some(Instant::now() + wait.unwrap_or(RETRY));
        }
        batch
    }

    /// A key rate: one ask per job, keys waiting apart.
    async fn admit_each(&mut self, shared: &Shared, batch: Vec<Delivery>) -> Vec<Delivery> {
        let mut admitted = Vec::with_capacity(batch.len());
        for delivery in batch {
            let now = Instant::now();
            if let Some(key) = &delivery.key {
                if let Some((_, line)) = self.parked.get_mut(key) {
                    line.push_back(delivery);
                    continue;
                }
            }
            if !self.group_open(now) {
                self.held.push_back(delivery);
                continue;
            }
            let key = delivery.key.as_deref().zip(self.key_rate);
            let taken = rate::take(
                &mut shared.conn.clone(),
                &shared.topic,
                shared.group,
                self.rate,
                key,
                1,
            )
            .await;
            match taken {
                Ok(taken) if taken.granted == 1 => admitted.push(delivery),
                Ok(taken) => {
                    let (wait, by) = taken.refused.unwrap_or((RETRY, Refused::Group));
                    match (by, delivery.key.clone()) {
                        (Refused::Key, Some(key)) => {
                            self.parked
                                .insert(key, (now + wait, VecDeque::from([delivery])));
                        }
                        _ => {
                            self.group_until = Some(now + wait);
                            self.held.push_back(delivery);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not ask Redis for the rate limit; holding the job");
                    self.group_until = Some(now + RETRY);
                    self.held.push_back(delivery);
                }
            }
        }
        admitted
    }
}

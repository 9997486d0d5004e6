//! Enqueue rates from Redis' own counters: each look at the overview notes every topic's
//! count of entries ever added (`XINFO STREAM`, Redis 7); two notes some time apart give
//! the rate over the last minutes. Nothing is kept in Redis, and nothing runs while no
//! one looks (the page refreshes itself every 5 s while open).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Rates are taken over this window, or as much of it as was seen.
const WINDOW: Duration = Duration::from_secs(5 * 60);

/// The notes of each topic.
#[derive(Default)]
pub(super) struct Rates {
    notes: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

/// Jobs enqueued per minute, and over how long that was measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    pub per_minute: f64,
    pub over: Duration,
}

impl Rates {
    /// Notes `added` for `topic` now; the rate since the oldest note within the window,
    /// once there is one at least 4 s old.
    pub(super) fn note(&self, topic: &str, added: u64) -> Option<Rate> {
        self.note_at(topic, added, Instant::now())
    }

    fn note_at(&self, topic: &str, added: u64, now: Instant) -> Option<Rate> {
        let mut notes = self
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let notes = notes.entry(topic.to_string()).or_default();
        while notes
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            notes.pop_front();
        }
        notes.push_back((now, added));
        let (first_at, first) = *notes.front()?;
        let over = now.duration_since(first_at);
        if over < Duration::from_secs(4) {
            return None;
        }
        Some(Rate {
            per_minute: added.saturating_sub(first) as f64 / over.as_secs_f64() * 60.0,
            over,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_runs_over_the_notes_of_the_window() {
        let rates = Rates::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert!(rates.note_at("t", 100, at(0)).is_none());
        assert!(rates.note_at("t", 110, at(2)).is_none(), "too soon to say");
        let rate = rates.note_at("t", 160, at(30)).unwrap();
        assert_eq!(rate.per_minute, 120.0);
        assert_eq!(rate.over, Duration::from_secs(30));
        // Notes older than the window no longer count.
        let rate = rates.note_at("t", 400, at(330)).unwrap();
        assert_eq!(rate.over, Duration::from_secs(300));
        assert_eq!(rate.per_minute, 48.0);
        assert!(rates.note_at("other", 5, at(330)).is_none());
    }
}

//! Waiting before trying again: a failed job's exponential backoff with jitter
//! ([`Backoff`]), and the doubling delays between tries of a Redis operation that did not
//! land ([`doubling`]).

use std::time::Duration;

/// Backoff between attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `next_attempt` (2 for the first retry): `first * 2^(n-2)`,
    /// capped at `max`, then jittered down by up to half so that jobs that failed together
    /// do not all come back together.
    pub(crate) fn delay(&self, next_attempt: u32) -> Duration {
        let exponent = next_attempt.saturating_sub(2).min(20);
        let full = self.first.saturating_mul(1 << exponent).min(self.max);
        let jitter = rand::random_range(0.5..=1.0);
        full.mul_f64(jitter)
    }
}

/// Delays between tries of something that failed for a passing reason (a dropped
/// connection, a stall): `first`, doubling up to `max`, for ever (take as many as
/// wanted).
pub(crate) fn doubling(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(first), move |d| Some((*d * 2).min(max)))
}

/// The delays of the short retry loops around single Redis writes: 50 ms doubling up to
/// 2 s.
pub(crate) fn quick() -> impl Iterator<Item = Duration> {
    doubling(Duration::from_millis(50), Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_delays_stay_capped() {
        let delays: Vec<u64> = doubling(Duration::from_millis(100), Duration::from_millis(500))
            .take(5)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let second = backoff.delay(2);
        assert!(second >= Duration::from_millis(50) && second <= Duration::from_millis(100));
        let fourth = backoff.delay(4);
        assert!(fourth >= Duration::from_millis(200) && fourth <= Duration::from_millis(400));
        assert!(backoff.delay(60) <= Duration::from_secs(1));
    }
}

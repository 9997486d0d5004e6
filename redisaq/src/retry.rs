//! When a failed job runs again: exponential backoff with jitter, capped.

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

#[cfg(test)]
mod tests {
    use super::*;

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

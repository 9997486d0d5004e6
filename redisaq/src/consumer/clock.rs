//! The clock leases are judged by locally: one that keeps counting while the host is
//! suspended (a laptop asleep, a paused VM). The monotonic clock stops then, so after a
//! long suspend a worker would believe leases valid that Redis let expire long ago, and
//! start or finish jobs of partitions another consumer now owns.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

/// Now, as an `Instant` that also advanced through any suspend since the process began
/// (`CLOCK_BOOTTIME` on Linux; elsewhere the monotonic clock).
pub(crate) fn now() -> Instant {
    static BASE: LazyLock<(Instant, Duration)> = LazyLock::new(|| (Instant::now(), since_boot()));
    let (instant, boot) = *BASE;
    instant + since_boot().saturating_sub(boot)
}

/// The monotonic instant at which [`now`] will read `at` (for timers, which run on the
/// monotonic clock), assuming no further suspend.
pub(crate) fn timer_instant(at: Instant) -> Instant {
    let ahead = now().saturating_duration_since(Instant::now());
    at.checked_sub(ahead).unwrap_or(at)
}

#[cfg(target_os = "linux")]
fn since_boot() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if done != 0 {
        return fallback();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn since_boot() -> Duration {
    fallback()
}

fn fallback() -> Duration {
    static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    START.elapsed()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_pace_with_the_monotonic_clock_while_awake() {
        let (a, b) = (super::now(), tokio::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (c, d) = (super::now(), tokio::time::Instant::now());
        assert!(c > a);
        let drift = (c - a).as_secs_f64() - (d - b).as_secs_f64();
        assert!(drift.abs() < 0.01, "{drift}");
    }
}

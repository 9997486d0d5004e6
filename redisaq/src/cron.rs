//! Cron schedules: `#[job(cron = "...", tz = "...")]` on a handler of [`Tick`]s. Each
//! worker running such a handler keeps the schedule; for each fire time exactly one job is
//! enqueued to the topic, however many workers run (the fire time is claimed in the same
//! script that adds the job, see `store::cron`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The payload of a cron job: which fire time of its schedule it is.
///
/// ```
/// use redisaq::{job, Job, JobError, Tick};
///
/// #[job(topic = "nightly_report", cron = "0 0 3 * * *", tz = "Europe/Berlin")]
/// async fn nightly_report(job: Job<Tick>) -> Result<(), JobError> {
///     println!("the report of {:?}", job.payload().scheduled_at());
///     Ok(())
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    scheduled_at_ms: u64,
}

impl Tick {
    pub(crate) fn new(scheduled_at_ms: u64) -> Self {
        Tick { scheduled_at_ms }
    }

    /// The fire time this job is for (not when it started: that may be later).
    pub fn scheduled_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.scheduled_at_ms)
    }
}

/// Only [`Tick`]: what the macro asks of a cron handler's payload.
#[diagnostic::on_unimplemented(
    message = "a cron job takes `Job<redisaq::Tick>`, not `Job<{Self}>`",
    label = "write `redisaq::Tick` here",
    note = "`#[job(cron = \"...\")]` enqueues one `Tick` per fire time; enqueue other payloads to a topic without `cron`"
)]
pub trait IsTick {}

impl IsTick for Tick {}

/// Compile-time check the macro emits for a cron handler's payload type.
pub const fn assert_tick<T: IsTick>() {}

/// A parsed schedule: the expression and its time zone.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub expression: String,
    pub tz_name: String,
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parses `expression` (5 or 6 fields) in `tz` (default UTC); the error says what to
    /// write instead.
    pub(crate) fn parse(expression: &str, tz: Option<&str>) -> Result<Self, Error> {
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build();
        let cron = parser.parse(expression).map_err(|e| {
            Error::config(format!(
                "cron = {expression:?} is not a cron expression ({e}): write 5 fields (minute \
                 first) or 6 (seconds first), e.g. \"0 0 3 * * *\""
            ))
        })?;
        let tz_name = tz.unwrap_or("UTC");
        let tz = tz_name.parse::<chrono_tz::Tz>().map_err(|_| {
            Error::config(format!(
                "tz = {tz_name:?} is not a time zone of the IANA database: write e.g. \"Europe/Berlin\""
            ))
        })?;
        Ok(Schedule {
            expression: expression.to_string(),
            tz_name: tz_name.to_string(),
            cron,
            tz,
        })
    }

    fn at(&self, ms: u64) -> DateTime<chrono_tz::Tz> {
        Utc.timestamp_millis_opt(ms as i64)
            .single()
            .unwrap_or_default()
            .with_timezone(&self.tz)
    }

    /// The first fire time strictly after `ms` (Unix ms), if the schedule has one.
    pub(crate) fn next_after(&self, ms: u64) -> Option<u64> {
        let next = self.cron.find_next_occurrence(&self.at(ms), false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }

    /// The last fire time at or before `ms`, if any.
    pub(crate) fn latest_until(&self, ms: u64) -> Option<u64> {
        let previous = self
            .cron
            .find_previous_occurrence(&self.at(ms), true)
            .ok()?;
        u64::try_from(previous.timestamp_millis()).ok()
    }
}

/// The wall clock in Unix ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_times_follow_the_expression_and_the_zone() {
        let every_second = Schedule::parse("* * * * * *", None).unwrap();
        assert_eq!(every_second.next_after(1_000), Some(2_000));
        assert_eq!(every_second.next_after(1_500), Some(2_000));
        assert_eq!(every_second.latest_until(1_500), Some(1_000));
        assert_eq!(every_second.latest_until(2_000), Some(2_000));
        // 03:00 in Berlin is 02:00 UTC in winter (2026-01-01).
        let nightly = Schedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        let new_year_ms = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(
            nightly.next_after(new_year_ms),
            Some(new_year_ms + 2 * 3_600_000)
        );
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(Schedule::parse("* * * * *", Some("Mars/Olympus")).is_err());
    }
}

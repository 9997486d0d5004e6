//! Rate limits: `#[job(rate = "100/s")]` (a group's job starts per period, across all its
//! workers) and `#[job(key_rate = "5/s")]` (the same per job key), enforced in Redis by
//! its clock (see `store::rate`).

use std::fmt;
use std::time::Duration;

use crate::error::Error;

/// At most `limit` starts within any `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub limit: u32,
    pub period: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (N ≥ 1); the error names `option` and says what to
    /// write.
    pub(crate) fn parse(option: &str, text: &str) -> Result<Rate, Error> {
        let invalid = || {
            Error::config(format!(
                "{option} = {text:?} is not a rate: write jobs per period, e.g. \"100/s\", \
                 \"30/m\" or \"1000/h\""
            ))
        };
        let (limit, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
        let limit: u32 = limit.trim().parse().map_err(|_| invalid())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        if limit == 0 {
            return Err(invalid());
        }
        Ok(Rate { limit, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let rate = Rate::parse("rate", "100/s").unwrap();
        assert_eq!(rate.limit, 100);
        assert_eq!(rate.period, Duration::from_secs(1));
        assert_eq!(rate.to_string(), "100/s");
        assert_eq!(
            Rate::parse("rate", "5/m").unwrap().period,
            Duration::from_secs(60)
        );
        assert_eq!(Rate::parse("rate", "5/h").unwrap().to_string(), "5/h");
        for bad in ["0/s", "5", "5/d", "x/s", "-1/s"] {
            assert!(Rate::parse("rate", bad).is_err(), "{bad}");
        }
    }
}

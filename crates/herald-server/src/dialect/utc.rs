//! UTC calendar times for the compatibility dialects' JSON (push-stream's
//! stats `time`, push-api's RFC 3339 `created`), without a date library.

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Utc {
    /// The proleptic Gregorian year; before 1970 too.
    pub(crate) year: i64,
    /// From 1 (January) to 12.
    pub(crate) month: u32,
    /// Day of the month, from 1.
    pub(crate) day: u32,
    /// From 0 to 23.
    pub(crate) hour: u32,
    /// From 0 to 59.
    pub(crate) minute: u32,
    /// From 0 to 59: Unix time has no leap seconds.
    pub(crate) second: u32,
    /// Nanoseconds within the second.
    pub(crate) nanos: u32,
}

impl Utc {
    /// The calendar time of `ms` milliseconds since the Unix epoch.
    pub(crate) fn from_ms(ms: u64) -> Self {
        Self::from_nanos(u128::from(ms) * 1_000_000)
    }

    pub(crate) fn from_nanos(nanos: u128) -> Self {
        let secs = (nanos / 1_000_000_000) as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            nanos: (nanos % 1_000_000_000) as u32,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS`, as push-stream's stats print it.
    pub(crate) fn iso_seconds(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339 with trailing zeros of the fraction trimmed, as Go's
    /// `time.RFC3339Nano` prints a UTC time: `2019-08-10T12:00:00.5Z`.
    pub(crate) fn rfc3339_nano(&self) -> String {
        let mut out = self.iso_seconds();
        if self.nanos > 0 {
            let frac = format!("{:09}", self.nanos);
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
        out.push('Z');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Utc::from_ms(0).iso_seconds(), "1970-01-01T00:00:00");
        let t = Utc::from_ms(951_827_696_500); // 2000-02-29 12:34:56.5
        assert_eq!(t.rfc3339_nano(), "2000-02-29T12:34:56.5Z");
        assert_eq!(
            Utc::from_ms(1_700_000_000_000).rfc3339_nano(),
            "2023-11-14T22:13:20Z"
        );
    }
}

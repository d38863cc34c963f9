//! UTC timestamps for backup ids, manifests and the job log, without a
//! calendar dependency.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A moment in UTC, to the microsecond. It serialises as RFC 3339 text
/// (`2026-11-23T14:30:12.123456Z`), which is how manifests and reports
/// carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Moment {
    secs: i64,
    micros: u32,
}

impl Moment {
    /// The current time.
    pub fn now() -> Moment {
        Moment::from(SystemTime::now())
    }

    /// `secs` seconds and `micros` microseconds after 1970-01-01T00:00:00Z
    /// (microseconds past a second carry over).
    pub fn from_unix(secs: i64, micros: u32) -> Moment {
        Moment { secs: secs + i64::from(micros / 1_000_000), micros: micros % 1_000_000 }
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix_secs(&self) -> i64 {
        self.secs
    }

    /// Microseconds past the second.
    pub fn subsec_micros(&self) -> u32 {
        self.micros
    }

    /// This moment plus `secs` seconds (negative: earlier).
    pub fn add_secs(&self, secs: i64) -> Moment {
        Moment { secs: self.secs.saturating_add(secs), micros: self.micros }
    }

    /// `2026-11-23T14:30:12.123456Z`.
    pub fn rfc3339(&self) -> String {
        let (y, mo, d, h, mi, s) = self.fields();
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z", self.micros)
    }

    /// `20261123T143012.123456Z`: sorts like the time.
    pub fn compact(&self) -> String {
        let (y, mo, d, h, mi, s) = self.fields();
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{:06}Z", self.micros)
    }

    /// Days since the epoch (for daily/weekly/monthly retention).
    pub fn day(&self) -> i64 {
        self.secs.div_euclid(86_400)
    }

    /// (year, month) of the moment.
    pub fn year_month(&self) -> (i64, u32) {
        let (y, m, _) = civil_from_days(self.day());
        (y, m)
    }

    fn fields(&self) -> (i64, u32, u32, i64, i64, i64) {
        let (y, mo, d) = civil_from_days(self.day());
        let rem = self.secs.rem_euclid(86_400);
        (y, mo, d, rem / 3600, rem % 3600 / 60, rem % 60)
    }

    /// Parses what [`Moment::rfc3339`] and [`Moment::compact`] write.
    pub fn parse(s: &str) -> Option<Moment> {
        let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
        if digits.len() < 14 {
            return None;
        }
        let n = |a: usize, b: usize| digits.get(a..b)?.parse::<i64>().ok();
        let (y, mo, d, h, mi, sec) = (n(0, 4)?, n(4, 6)?, n(6, 8)?, n(8, 10)?, n(10, 12)?, n(12, 14)?);
        let micros = digits.get(14..20).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let days = days_from_civil(y, mo as u32, d as u32);
        Some(Moment { secs: days * 86_400 + h * 3600 + mi * 60 + sec, micros })
    }
}

impl fmt::Display for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for Moment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Moment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Moment::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not a time: {s:?}")))
    }
}

impl From<Moment> for SystemTime {
    fn from(m: Moment) -> SystemTime {
        let sub = Duration::from_micros(u64::from(m.micros));
        if m.secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(m.secs as u64) + sub
        } else {
            UNIX_EPOCH - Duration::from_secs(m.secs.unsigned_abs()) + sub
        }
    }
}

impl From<SystemTime> for Moment {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Moment { secs: d.as_secs() as i64, micros: d.subsec_micros() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_dates() {
        let m = Moment { secs: 1_795_444_212, micros: 42 };
        assert_eq!(m.rfc3339(), "2026-11-23T14:30:12.000042Z");
        assert_eq!(m.compact(), "20261123T143012.000042Z");
        assert_eq!(Moment::parse(&m.rfc3339()), Some(m));
        assert_eq!(Moment::parse(&m.compact()), Some(m));
        assert_eq!(Moment { secs: 0, micros: 0 }.rfc3339(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(Moment { secs: 951_782_400, micros: 0 }.rfc3339(), "2000-02-29T00:00:00.000000Z");
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert!(Moment::parse("2026-13-01T00:00:00Z").is_none());
    }
}

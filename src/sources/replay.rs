//! Replays: reading a topic again from a point (`run --from-offset`, `--from-timestamp`),
//! optionally with actions switched to debug prints (`--dry-run`) to try a new filter
//! on old traffic.

use std::collections::BTreeMap;

/// Where a replay starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayFrom {
    /// These offsets of these partitions; the others start as they would have.
    Offsets(BTreeMap<i32, i64>),
    /// The first message at or after this time (ms since the epoch) in every partition.
    Timestamp(i64),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("--from-offset: `{0}` is not PARTITION:OFFSET[,PARTITION:OFFSET...]")]
    Offsets(String),
    #[error("--from-offset: partition {0} is given twice: give one offset for each")]
    Repeated(i32),
    #[error(
        "--from-timestamp: `{0}` is neither ms since the epoch nor RFC 3339 (2026-11-27T10:00:00Z)"
    )]
    Timestamp(String),
    #[error("--from-timestamp: `{0}` is before 1970: Kafka's times start there")]
    BeforeEpoch(String),
}

impl ReplayFrom {
    /// `0:1500,3:0` (partition:offset pairs).
    ///
    /// ```
    /// # use event_trigger::sources::replay::ReplayFrom;
    /// let from = ReplayFrom::parse_offsets("0:1500, 3:0").unwrap();
    /// assert_eq!(from, ReplayFrom::Offsets([(0, 1500), (3, 0)].into()));
    /// assert!(ReplayFrom::parse_offsets("0=1500").is_err());
    /// assert_eq!(
    ///     ReplayFrom::parse_offsets("0:1,0:2").unwrap_err().to_string(),
    ///     "--from-offset: partition 0 is given twice: give one offset for each"
    /// );
    /// ```
    pub fn parse_offsets(text: &str) -> Result<ReplayFrom, ReplayError> {
        let bad = || ReplayError::Offsets(text.to_string());
        let mut offsets = BTreeMap::new();
        for pair in text.split(',') {
            let (p, o) = pair.trim().split_once(':').ok_or_else(bad)?;
            let p: i32 = p.trim().parse().map_err(|_| bad())?;
            let o: i64 = o.trim().parse().map_err(|_| bad())?;
            if p < 0 || o < 0 {
                return Err(bad());
            }
            if offsets.insert(p, o).is_some() {
                return Err(ReplayError::Repeated(p));
            }
        }
        Ok(ReplayFrom::Offsets(offsets))
    }

    /// Milliseconds since the epoch, or RFC 3339 (`2026-11-27T10:00:00.250+01:00`).
    ///
    /// ```
    /// # use event_trigger::sources::replay::ReplayFrom;
    /// assert_eq!(ReplayFrom::parse_timestamp("1795824784000").unwrap(), ReplayFrom::Timestamp(1795824784000));
    /// assert_eq!(ReplayFrom::parse_timestamp("1970-01-02T00:00:00Z").unwrap(), ReplayFrom::Timestamp(86_400_000));
    /// assert!(ReplayFrom::parse_timestamp("-5").is_err());
    /// assert!(ReplayFrom::parse_timestamp("2026-11-27T10:00:00+25:00").is_err());
    /// assert!(ReplayFrom::parse_timestamp("1969-12-31T23:59:59.999Z").is_err());
    /// ```
    pub fn parse_timestamp(text: &str) -> Result<ReplayFrom, ReplayError> {
        let t = text.trim();
        let ms = match t.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => rfc3339_ms(t).ok_or_else(|| ReplayError::Timestamp(text.to_string()))?,
        };
        // Kafka reads -1 and -2 as "the end" and "the beginning", not as times.
        if ms < 0 {
            return Err(ReplayError::BeforeEpoch(text.to_string()));
        }
        Ok(ReplayFrom::Timestamp(ms))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to ms since the epoch.
fn rfc3339_ms(t: &str) -> Option<i64> {
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, rest) = t.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (time, offset_min) = if let Some(time) = rest.strip_suffix(['Z', 'z']) {
        (time, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (time, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, mi) = zone[1..].split_once(':')?;
        let (h, mi) = (num(h)?, num(mi)?);
        if h > 23 || mi > 59 {
            return None;
        }
        (time, sign * (h * 60 + mi))
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut c = hms.split(':');
    let (h, mi, s) = (num(c.next()?)?, num(c.next()?)?, num(c.next()?)?);
    if c.next().is_some() || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let ms_frac = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        num(&digits)?
    };
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + s * 1000 + ms_frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_as_their_instant() {
        let ms = |t| match ReplayFrom::parse_timestamp(t) {
            Ok(ReplayFrom::Timestamp(ms)) => ms,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ms("2000-03-01T00:00:00Z"), 951_868_800_000);
        assert_eq!(ms("2026-11-27T10:00:00.25Z"), 1_795_773_600_250);
        assert_eq!(ms("2026-11-27T11:00:00.250+01:00"), 1_795_773_600_250);
        assert_eq!(ms("2026-11-27T05:30:00.250-04:30"), 1_795_773_600_250);
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-27",
            "2026-11-27T10:00Z",
        ] {
            assert!(ReplayFrom::parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_are_partition_offset_pairs() {
        assert!(
            ReplayFrom::parse_offsets("0:1,0:2").is_err(),
            "a partition twice"
        );
        assert!(ReplayFrom::parse_offsets("-1:0").is_err());
        assert!(ReplayFrom::parse_offsets("").is_err());
    }
}

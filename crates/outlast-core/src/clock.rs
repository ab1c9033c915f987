//! Wall-clock time, read in one place: milliseconds since the Unix epoch. Control logic
//! measures durations with monotonic clocks; this is only for times people and other
//! sites read (status, reports, alerts, peer nonces).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is set before 1970).
pub fn unix_ms() -> u64 {
    (unix_us() / 1000) as u64
}

/// Microseconds since the Unix epoch (0 if the clock is set before 1970).
#[allow(clippy::disallowed_methods)] // the one place the wall clock is read
pub fn unix_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Now, on the monotonic clock every duration in outlast is measured with (leases, probe
/// deadlines, backoffs, drill timings). Read only through here, so the clock can be swapped in
/// one place; tokio timers use tokio's own `Instant`, which reads the same clock.
#[allow(clippy::disallowed_methods)] // the one place the monotonic clock is read
pub fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// The site's lease deadline, shared by the agent with everything that must stop the moment
/// the lease ends rather than at the next routing update: the gateways (checked by every
/// request to a primary-standby service) and DNS (checked by every answer).
#[derive(Debug)]
pub struct LeaseClock {
    base: std::time::Instant,
    until_ms: std::sync::atomic::AtomicU64,
}

impl Default for LeaseClock {
    fn default() -> Self {
        Self {
            base: now(),
            until_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LeaseClock {
    /// Sets the deadline (`None`: no lease).
    pub fn set(&self, until: Option<std::time::Instant>) {
        let ms = until
            .map(|t| t.saturating_duration_since(self.base).as_millis() as u64)
            .unwrap_or(0);
        self.until_ms
            .store(ms, std::sync::atomic::Ordering::Release);
    }

    /// A clock whose lease always holds (for servers run without an agent, and tests).
    pub fn always() -> Self {
        let c = Self::default();
        c.until_ms
            .store(u64::MAX, std::sync::atomic::Ordering::Release);
        c
    }

    pub fn holds(&self) -> bool {
        (self.base.elapsed().as_millis() as u64)
            < self.until_ms.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The civil date (proleptic Gregorian year, month 1-12, day 1-31) of a day counted from
/// 1970-01-01.
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A time (Unix ms) in UTC as `YYYY-MM-DD HH:MM:SS.mmm+00`, the form PostgreSQL reads a
/// `timestamptz` in whatever its `TimeZone`.
pub fn utc_text(ms: i64) -> String {
    let (y, m, d) = civil(ms.div_euclid(86_400_000));
    let in_day = ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}+00",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// A time (Unix ms) as RFC 3339 in UTC with milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(ms: i64) -> String {
    let t = utc_text(ms);
    format!("{}Z", t.replacen(' ', "T", 1).trim_end_matches("+00"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(super::utc_text(0), "1970-01-01 00:00:00.000+00");
        assert_eq!(
            super::utc_text(951_782_400_123),
            "2000-02-29 00:00:00.123+00"
        );
        assert_eq!(
            super::utc_text(1_796_454_001_999),
            "2026-12-05 07:00:01.999+00"
        );
    }
}

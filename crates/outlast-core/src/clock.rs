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

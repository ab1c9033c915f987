//! Wall-clock time, read in one place: milliseconds since the Unix epoch. Control logic
//! measures durations with monotonic clocks; this is only for times people and other
//! sites read (status, reports, alerts, peer nonces).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

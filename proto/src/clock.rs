//! The wall clock, read in one place. Protocol machines never read it: their callers pass
//! `now` in; these helpers are for the edges that stamp records (bundles, deposits, invites,
//! announcements) with Unix time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    unix_ms() / 1000
}

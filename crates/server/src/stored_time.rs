//! How times are stored: microseconds since the Unix epoch, in an INTEGER
//! column (commit times, job due times).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch, as stored.
pub fn to_micros(t: SystemTime) -> i64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// A stored microsecond time.
pub fn from_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

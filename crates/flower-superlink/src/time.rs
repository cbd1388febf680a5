//! Timestamps as flwr writes them: ISO 8601 in UTC with microseconds and
//! an explicit offset (`2026-12-02T00:36:32.212146+00:00`, Python's
//! `datetime.now(timezone.utc).isoformat()`), which `flwr ls` parses with
//! `datetime.fromisoformat`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `t` (Unix seconds, not before 1970) as flwr's ISO 8601 text.
pub(crate) fn iso(t: f64) -> String {
    let micros_total = (t.max(0.0) * 1e6).round() as u64;
    let secs = micros_total / 1_000_000;
    let micros = micros_total % 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::iso;

    #[test]
    fn formats_like_python_isoformat() {
        assert_eq!(iso(0.0), "1970-01-01T00:00:00.000000+00:00");
        // datetime.fromtimestamp(1796171792.212146, timezone.utc).isoformat()
        assert_eq!(
            iso(1_796_171_792.212_146),
            "2026-12-02T00:36:32.212146+00:00"
        );
        // A leap day.
        assert_eq!(iso(951_782_400.5), "2000-02-29T00:00:00.500000+00:00");
    }
}

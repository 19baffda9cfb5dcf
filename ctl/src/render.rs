//! How people read what the CLI prints: dates as dates in the local time zone, durations and
//! sizes with units. (`--json` keeps the raw numbers.)

/// A Unix time as RFC 3339 in the local time zone, e.g. `2026-12-02T17:40:05+01:00`.
pub fn local_time(unix_secs: u64) -> String {
    let Ok(ts) = jiff::Timestamp::from_second(unix_secs.min(i64::MAX as u64) as i64) else {
        return format!("{unix_secs} (unix time)");
    };
    ts.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// Seconds as the two largest units that matter: `45 s`, `3 min 20 s`, `5 h 2 min`, `14 days`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) if s == 0 => format!("{m} min"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, 0) => format!("{h} h"),
        (0, _, _) => format!("{h} h {m} min"),
        (_, 0, _) => format!("{d} day{}", if d == 1 { "" } else { "s" }),
        _ => format!("{d} day{} {h} h", if d == 1 { "" } else { "s" }),
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `64 MiB`, `1 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() < 0.05 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_like_a_person_writes_them() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(200), "3 min 20 s");
        assert_eq!(duration(3600 * 5 + 120), "5 h 2 min");
        assert_eq!(duration(14 * 86_400), "14 days");
        assert_eq!(duration(86_400 + 7200), "1 day 2 h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        let t = local_time(1_796_223_404);
        assert!(t.starts_with("2026-12-"), "{t}");
        assert_eq!(t.len(), "2026-12-02T17:40:05+01:00".len(), "{t}");
    }
}

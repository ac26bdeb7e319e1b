//! Sizes and durations as the CLI reads and writes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (the unit of every timestamp the daemon sends).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sizes as Docker writes them: `1024` (bytes), `512k`, `512M`, `1.5g`, `1GB`, `2GiB`, `64 m`
/// (binary multiples, case-insensitive).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use e.g. 512M, 1G or a number of bytes");
    let mut t = s.trim().to_ascii_lowercase();
    if t.ends_with('b') {
        t.pop();
    }
    if t.ends_with('i') {
        t.pop();
    }
    let mult: u64 = match t.chars().last() {
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        Some('p') => 1 << 50,
        _ => 1,
    };
    if mult != 1 {
        t.pop();
    }
    let num = t.strip_suffix(' ').unwrap_or(&t);
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Durations as Go writes them: `5s`, `500ms`, `1m30s`, `1.5h`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 5s, 500ms, 1m30s");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." {
            return Err(bad());
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ns += n * unit_ns;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Go's way of writing a duration: "0s", "500ms", "5s", "1m30s", "1h0m0s".
pub fn fmt_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s_ms = ms % 60_000;
    let secs = if s_ms.is_multiple_of(1000) {
        format!("{}s", s_ms / 1000)
    } else {
        let s = format!("{}.{:03}", s_ms / 1000, s_ms % 1000);
        format!("{}s", s.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// Docker's byte sizes: "512MiB", "1.5GiB", "100B".
pub fn fmt_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", units[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("2h45m"), Duration::from_secs(9900));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        for bad in ["", "5", "soon", "5 s", "-5s", "s", "1m30", "5sec", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_duration_ms(0), "0s");
        assert_eq!(fmt_duration_ms(500), "500ms");
        assert_eq!(fmt_duration_ms(5000), "5s");
        assert_eq!(fmt_duration_ms(1500), "1.5s");
        assert_eq!(fmt_duration_ms(90_000), "1m30s");
        assert_eq!(fmt_duration_ms(3_600_000), "1h0m0s");
    }

    #[test]
    fn sizes_as_docker() {
        let s = |v| parse_size(v).unwrap();
        assert_eq!(s("1024"), 1024);
        assert_eq!(s("100b"), 100);
        assert_eq!(s("512k"), 512 << 10);
        assert_eq!(s("512M"), 512 << 20);
        assert_eq!(s("512m"), 512 << 20);
        assert_eq!(s("512MB"), 512 << 20);
        assert_eq!(s("512MiB"), 512 << 20);
        assert_eq!(s("1G"), 1 << 30);
        assert_eq!(s("1.5g"), 3 << 29);
        assert_eq!(s("64 m"), 64 << 20);
        for bad in ["", "M", "lots", "1x", "-1M", "1..2"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_bytes(512 << 20), "512MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.5GiB");
        assert_eq!(fmt_bytes(100), "100B");
    }
}

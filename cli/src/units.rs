//! Sizes and durations as the CLI reads and writes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (the unit of every timestamp the daemon sends).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One decimal number of a size or duration: its integer part and its fraction (digits and
/// how many), each possibly empty; the rest of the text follows.
struct Decimal<'a> {
    int: &'a str,
    frac: &'a str,
    rest: &'a str,
}

fn decimal(s: &str) -> Decimal<'_> {
    let digits = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n = digits(s);
    let (int, rest) = s.split_at(n);
    match rest.strip_prefix('.') {
        Some(r) => {
            let m = digits(r);
            let (frac, rest) = r.split_at(m);
            Decimal { int, frac, rest }
        }
        None => Decimal {
            int,
            frac: "",
            rest,
        },
    }
}

/// `int.frac × unit`, truncated, or None on overflow of u128. At most 30 fraction digits
/// count (the units are at most 2^50 or 3.6e12 ns).
fn scale(int: &str, frac: &str, unit: u128) -> Option<u128> {
    let whole = if int.is_empty() {
        0
    } else {
        int.parse::<u128>().ok()?
    };
    let frac = &frac[..frac.len().min(30)];
    let part = if frac.is_empty() {
        0
    } else {
        let f: u128 = frac.parse().ok()?;
        // unit × f / 10^len, without overflowing: unit < 2^64 and f < 10^30 < 2^100 may not
        // fit, so divide in two steps.
        let den = 10u128.pow(frac.len() as u32);
        (unit / den) * f + (unit % den) * f / den
    };
    whole.checked_mul(unit)?.checked_add(part)
}

/// Sizes as Docker reads them (go-units `RAMInBytes`): a number of bytes, with a binary
/// multiple `k`, `m`, `g`, `t` or `p`, optionally followed by `i` and `b`, case-insensitive, one
/// space allowed before the unit: `512`, `512b`, `64k`, `64kb`, `1m`, `1MiB`, `1g`, `1.5GiB`,
/// `64 m`. Used by every size flag.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use e.g. 512M, 1G or a number of bytes");
    let t = s.trim();
    let d = decimal(t);
    // Digits first, and digits after a point: not `.5`, not `1.`.
    if d.int.is_empty() || (d.frac.is_empty() && t[d.int.len()..].starts_with('.')) {
        return Err(bad());
    }
    let unit = d
        .rest
        .strip_prefix(' ')
        .unwrap_or(d.rest)
        .to_ascii_lowercase();
    let mut u = unit.as_str();
    let shift = match u.chars().next() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift > 0 {
        u = &u[1..];
    }
    u = u.strip_prefix('i').unwrap_or(u);
    u = u.strip_prefix('b').unwrap_or(u);
    if !u.is_empty() {
        return Err(bad());
    }
    scale(d.int, d.frac, 1u128 << shift)
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(bad)
}

/// Durations as Go and Docker read them (`time.ParseDuration`): one or more decimal numbers,
/// each with a unit `ns`, `us` (`µs`), `ms`, `s`, `m` or `h`: `90s`, `500ms`, `1m30s`,
/// `1h30m`, `1.5h`, `.5s`; `0` alone needs none. Not negative. Used by every duration flag.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 5s, 500ms, 1m30s");
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let d = decimal(rest);
        if d.int.is_empty() && d.frac.is_empty() {
            return Err(bad());
        }
        let unit_len = d
            .rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(d.rest.len());
        let unit_ns: u128 = match &d.rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        total = scale(d.int, d.frac, unit_ns)
            .and_then(|ns| total.checked_add(ns))
            .ok_or_else(bad)?;
        rest = &d.rest[unit_len..];
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
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
    use proptest::prelude::*;

    #[test]
    fn durations_as_go() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("2h45m"), Duration::from_secs(9900));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(d("1ns"), Duration::from_nanos(1));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("+1s"), Duration::from_secs(1));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        // Far beyond what the manager accepts, but read, so that it can say so.
        assert_eq!(
            d("2562047788015h"),
            Duration::from_secs(2_562_047_788_015 * 3600)
        );
        for bad in [
            "", "5", "soon", "5 s", "-5s", "s", "1m30", "5sec", ".", "1d", "1h 30m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("invalid duration") && e.contains("1m30s"), "{e}");
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
        assert_eq!(s("512"), 512);
        assert_eq!(s("1024"), 1024);
        assert_eq!(s("100b"), 100);
        assert_eq!(s("512b"), 512);
        assert_eq!(s("64k"), 64 << 10);
        assert_eq!(s("64kb"), 64 << 10);
        assert_eq!(s("512k"), 512 << 10);
        assert_eq!(s("1m"), 1 << 20);
        assert_eq!(s("512M"), 512 << 20);
        assert_eq!(s("512m"), 512 << 20);
        assert_eq!(s("512MB"), 512 << 20);
        assert_eq!(s("512MiB"), 512 << 20);
        assert_eq!(s("1MiB"), 1 << 20);
        assert_eq!(s("1g"), 1 << 30);
        assert_eq!(s("1G"), 1 << 30);
        assert_eq!(s("1GiB"), 1 << 30);
        assert_eq!(s("1.5g"), 3 << 29);
        assert_eq!(s("1.5GiB"), 3 << 29);
        assert_eq!(s("2t"), 2 << 40);
        assert_eq!(s("1p"), 1 << 50);
        assert_eq!(s("64 m"), 64 << 20);
        assert_eq!(s(" 4G "), 4 << 30);
        for bad in [
            "", "M", "lots", "1x", "-1M", "1..2", "1.2.3G", ".5G", "1.G", "1e3", "1 G B", "1GiBs",
            "1  G", "16384p",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("1x").unwrap_err().contains("512M"));
        assert_eq!(fmt_bytes(512 << 20), "512MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.5GiB");
        assert_eq!(fmt_bytes(100), "100B");
    }

    /// The ways of writing one binary multiple.
    fn unit_text(shift: u32, form: usize) -> String {
        let letter = ["", "k", "m", "g", "t", "p"][(shift / 10) as usize];
        let forms = [
            letter.to_string(),
            letter.to_uppercase(),
            format!("{letter}b"),
            format!("{}B", letter.to_uppercase()),
            format!("{}iB", letter.to_uppercase()),
            format!(" {letter}"),
        ];
        forms[form % forms.len()].clone()
    }

    proptest! {
        #[test]
        fn a_size_reads_back_from_any_of_its_spellings(
            n in 0u64..1 << 13, shift in (0u32..=5).prop_map(|k| k * 10), form in 0usize..6,
        ) {
            let text = format!("{n}{}", unit_text(shift, form));
            prop_assert_eq!(parse_size(&text), Ok(n << shift), "{}", text);
        }

        #[test]
        fn a_size_as_shown_reads_back_within_its_rounding(v in 0..u64::MAX / 2) {
            // fmt_bytes keeps three decimals of the largest unit: at most 0.05% off.
            let text = fmt_bytes(v);
            let back = parse_size(&text).map_err(TestCaseError::fail)?;
            let err = (back as f64 - v as f64).abs();
            prop_assert!(err <= v as f64 * 5e-4 + 1.0, "{} → {} → {}", v, text, back);
        }

        #[test]
        fn a_whole_multiple_as_shown_reads_back_exactly(
            n in 1u64..1024, shift in (0u32..=5).prop_map(|k| k * 10),
        ) {
            prop_assert_eq!(parse_size(&fmt_bytes(n << shift)), Ok(n << shift));
        }

        #[test]
        fn a_duration_as_shown_reads_back(ms in 0u64..1 << 50) {
            let text = fmt_duration_ms(ms);
            prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(ms)), "{}", text);
        }

        #[test]
        fn duration_parts_add_up(
            parts in prop::collection::vec((0u64..100_000, 0usize..6), 1..5),
        ) {
            const UNITS: [(&str, u64); 6] = [
                ("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000),
                ("ms", 1_000_000), ("us", 1_000), ("ns", 1),
            ];
            let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
            let ns: u128 = parts.iter().map(|(n, u)| u128::from(*n) * u128::from(UNITS[*u].1)).sum();
            let want = Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32);
            prop_assert_eq!(parse_duration(&text), Ok(want), "{}", text);
        }
    }
}

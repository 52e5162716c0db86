//! Parsers for the human-spelled quantities on the command line: sizes, CPUs, durations.

use std::time::Duration;

/// `256M`, `1G`, `512Mi`, `1.5G`, `1048576` → bytes. Suffixes are powers of 1024, as rkt and
/// Kubernetes' `Mi`/`Gi` are; a bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 256M or 1G)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown size unit (use K, M, G or T)")),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is not a positive size"));
    }
    // Checked above: finite, at least 1, at most 2^64 (which `as` saturates to u64::MAX).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = bytes as u64;
    Ok(bytes)
}

/// `1.5` → 1500 millicpus; `500m` → 500 (Kubernetes spelling).
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let milli = if let Some(m) = t.strip_suffix('m') {
        m.parse::<f64>().ok()
    } else {
        t.parse::<f64>().ok().map(|v| v * 1000.0)
    };
    match milli {
        Some(v) if (1.0..=1_000_000.0).contains(&v) => {
            // Within 1..=1e6 by the guard: positive and far below u32::MAX.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let milli = v.round() as u32;
            Ok(milli)
        }
        _ => Err(format!("{s:?} is not a CPU count (like 1, 1.5 or 500m)")),
    }
}

/// `30m`, `1h30m`, `10s`, `0`, `250ms`, `2d` → a duration; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a duration (like 30s, 10m, 1h)");
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, after) = rest.split_at(n_end);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let u_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(u_end);
        let secs = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(value * secs);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("256Mi").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1.5").unwrap(), 1500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert_eq!(parse_cpus("500m").unwrap(), 500);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("many").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
    }
}

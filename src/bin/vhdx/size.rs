//! Byte counts on the command line and on the screen.
//!
//! Input: a plain number of bytes (`1048576`, or hex `0x100000`), or a whole
//! number with a binary suffix `K`, `M`, `G`, `T`, `P` or `E` (case-insensitive,
//! optionally followed by `B` or `iB`: `10G`, `512m`, `64KiB`, `1TB`), or a
//! number followed by `B` alone (`4096B`). Fractions are refused rather than
//! rounded, so a size always means exactly what was typed.
//!
//! Output: `human` writes sizes the way `qemu-img info` does (`64 MiB`,
//! `1.22 MiB`).

/// Parses a byte count (see the module docs). Used as a clap value parser, so
/// the error is a sentence clap prints after the argument's name. (The size
/// arguments allow values starting with `-`, so that `--size -512` reaches
/// this parser and is called negative rather than an unknown option.)
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.strip_prefix('-').is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())) {
        return Err(format!("'{text}' is negative: a byte count is 0 or more"));
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| format!("'{text}' is not a hexadecimal byte count"));
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("'{text}' does not start with a number of bytes"));
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit: use plain bytes or a whole number with K, M, G or T (binary: 1K = 1024)"
            ))
        }
    };
    let value: u64 = number.parse().map_err(|_| format!("'{text}' is too large"))?;
    value.checked_mul(1u64 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a number of seconds, whole or decimal (`10`, `0.5`), for a clap
/// value parser. Zero is allowed (the options using it read it as "none").
pub fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!("'{text}' is negative: a number of seconds is 0 or more"));
    }
    let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') && s.matches('.').count() <= 1;
    let secs: f64 = s.parse().ok().filter(|_| ok).ok_or_else(|| format!("'{text}' is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("'{text}' is too many seconds"))
}

/// A byte count as `qemu-img info` writes it: three significant digits and a
/// binary unit (`512 B`, `64 MiB`, `1.22 MiB`, `10 GiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text} {}", UNITS[unit])
}

/// `human(n)` followed by the exact count: `64 MiB (67108864 bytes)`.
pub fn human_exact(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", human(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size(" 512 "), Ok(512));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("4096b"), Ok(4096));
    }

    #[test]
    fn hexadecimal() {
        assert_eq!(parse_size("0x100000"), Ok(1 << 20));
        assert_eq!(parse_size("0XfF"), Ok(255));
        assert!(parse_size("0x").is_err());
        assert!(parse_size("0x10M").is_err());
    }

    #[test]
    fn binary_suffixes_in_any_case() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("64t"), Ok(64 << 40));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("15E"), Ok(15 << 60));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "G", "-1", "1.5G", "10X", "10GiBB", "10 G B", "ten", "1e3"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn negative_counts_are_called_negative() {
        for bad in ["-512", "-1", " -5M", "-0x10", "-0"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("is negative"), "{bad:?}: {e}");
        }
        assert!(!parse_size("--parent").unwrap_err().contains("negative"));
    }

    #[test]
    fn seconds() {
        use std::time::Duration;
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        for bad in ["", "-1", "1e3", "ten", "1.2.3", "inf", "NaN", "1s", "99999999999999999999999"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_size("16E").is_err());
        assert!(parse_size("18446744073709551616").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_size("17179869184G").is_err());
    }

    #[test]
    fn human_sizes_look_like_qemu_img() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1024), "1 KiB");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(1_277_952), "1.22 MiB");
        assert_eq!(human(10 << 30), "10 GiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
        assert_eq!(human(u64::MAX), "16 EiB");
        assert_eq!(human_exact(4096), "4 KiB (4096 bytes)");
    }
}

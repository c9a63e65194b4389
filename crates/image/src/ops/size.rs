//! Sizes as qemu-img writes them: `64M`, `1.5G`, `512`, `10k`.

/// Parses a size with qemu's optional binary suffixes (k/K, M, G, T, P, E,
/// each 1024 times the previous; `b`/`B` means bytes). A fraction is accepted
/// before a suffix (`1.5G`), as qemu does. Returns `None` when the text is
/// not a size or overflows 64 bits.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') {
        return None;
    }
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return None,
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let int: u64 = int_part.parse().ok()?;
    let mut value = int.checked_mul(1u64.checked_shl(shift)?)?;
    if int.checked_shl(shift).map(|v| v >> shift) != Some(int) {
        return None;
    }
    if let Some(frac) = frac_part {
        // A fraction only makes sense with a suffix (qemu refuses "1.5").
        if shift == 0 || frac.is_empty() || frac.contains('.') {
            return None;
        }
        let digits = &frac[..frac.len().min(15)];
        let numerator: u128 = digits.parse().ok()?;
        let denominator = 10u128.pow(digits.len() as u32);
        let extra = (numerator << shift) / denominator;
        value = value.checked_add(u64::try_from(extra).ok()?)?;
    }
    Some(value)
}

/// Formats a byte count as qemu's human output does: `64 MiB`, `1.26 MiB`,
/// `512 B`, with three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    // qemu's size_to_str switches to the next unit once the integer part
    // reaches 1000, then prints "%0.3g".
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{} {}", format_g3(value), UNITS[unit])
}

/// C's `%0.3g` for values below 1000: three significant digits, trailing
/// zeros dropped.
fn format_g3(value: f64) -> String {
    let s = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("1.5M"), Some(1536 << 10));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("16E"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
    }

    #[test]
    fn human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(200704), "196 KiB");
        assert_eq!(human_size(1323008), "1.26 MiB");
        assert_eq!(human_size(1000), "0.977 KiB");
        assert_eq!(human_size(999), "999 B");
    }
}

//! Sizes as people write them: 512M, 2G, 1.5GiB, 4096.

/// Parses a byte size with an optional K/M/G/T suffix (powers of 1024; "B",
/// "iB" accepted after the letter).
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        _ => (body, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("'{s}' is not a size: use a number with K, M, G or T (e.g. 512M, 2G)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("'{s}' is not a size: it must be positive"));
    }
    Ok((v * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("2G"), Ok(2 << 30));
        assert_eq!(parse("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse("64kb"), Ok(64 << 10));
        assert!(parse("lots").is_err());
        assert!(parse("-1G").is_err());
        assert!(parse("0").is_err());
    }
}

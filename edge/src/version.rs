//! Model version strings read as Triton reads them.
//!
//! Triton parses `model_version` with C++ `std::stol` before it looks the model up: leading
//! white space, a sign and trailing junk are accepted ("01", " 1", "1x" and "+1" all mean
//! version 1). Routes, breakers, latency digests and metric labels know a version by that
//! number, so a request spelled another way reaches the backends holding the version, and
//! invented spellings of one version never make new entries. The gateway's
//! `gateway/routing/versions.py` reads them the same way.

use std::borrow::Cow;

/// Any number of this many digits fits an int64.
const FAST_DIGITS: usize = 18;

/// "" (the latest) or the version as a decimal number; None when Triton cannot read it as a
/// version (no leading number, out of int64's range, negative): the gateway refuses those in
/// Triton's words. Allocates only for a spelling other than the canonical one.
pub fn canonical(version: &str) -> Option<Cow<'_, str>> {
    let bytes = version.as_bytes();
    if bytes.is_empty() || (bytes.len() <= FAST_DIGITS && bytes[0] != b'0' && bytes.iter().all(u8::is_ascii_digit)) {
        return Some(Cow::Borrowed(version));
    }
    // C's isspace in the "C" locale, as std::stol skips it.
    let trimmed = version.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let length = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    if length == 0 {
        return None;
    }
    let digits = unsigned[..length].trim_start_matches('0');
    if digits.len() > 19 {
        return None; // past int64, whatever its sign
    }
    let number: u64 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    // A negative number in range is refused as well (only -0 is a version, 0).
    if number > i64::MAX as u64 || (negative && number != 0) {
        return None;
    }
    Some(Cow::Owned(number.to_string()))
}

#[cfg(test)]
mod tests {
    use super::canonical;
    use std::borrow::Cow;

    #[test]
    fn canonical_spellings_are_borrowed() {
        for version in ["", "1", "12", "999999999999999999"] {
            assert!(matches!(canonical(version), Some(Cow::Borrowed(v)) if v == version));
        }
    }

    #[test]
    fn other_spellings_read_as_stol_reads_them() {
        let cases = [
            ("01", "1"),
            (" 1", "1"),
            ("\t\n2", "2"),
            ("1x", "1"),
            ("+1", "1"),
            ("0", "0"),
            ("-0", "0"),
            ("000", "0"),
            ("9223372036854775807", "9223372036854775807"),
            ("0009223372036854775807", "9223372036854775807"),
        ];
        for (version, expected) in cases {
            assert_eq!(canonical(version).as_deref(), Some(expected), "{version:?}");
        }
    }

    #[test]
    fn what_triton_cannot_read_is_refused() {
        let long = "1".repeat(300);
        for version in [
            "x",
            "v1",
            " ",
            "+",
            "-1",
            "- 1",
            "\u{661}",
            "9223372036854775808",
            "-9223372036854775808",
            long.as_str(),
        ] {
            assert_eq!(canonical(version), None, "{version:?}");
        }
    }
}

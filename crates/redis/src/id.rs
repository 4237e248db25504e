//! A stream entry id (`<ms>-<seq>`) as the two numbers it is: every entry read is held by
//! it, looked up by it and written back with it, so it is kept as a copyable value rather
//! than a string allocated per entry, and ordered as the stream orders its entries.

use std::fmt;

/// A stream entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    #[cfg(test)]
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// An id as the server writes it; `None` if it is not one.
    pub fn parse(s: &[u8]) -> Option<Self> {
        let dash = s.iter().position(|&b| b == b'-')?;
        Some(Self {
            ms: number(&s[..dash])?,
            seq: number(&s[dash + 1..])?,
        })
    }

    /// Appends the id as the server writes it.
    pub fn write(self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{}-{}", self.ms, self.seq);
    }

    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        self.write(&mut out);
        out
    }
}

/// Digits only (no sign, no spaces), as in the ids the server makes.
fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order_as_the_stream_does() {
        let id = StreamId::parse(b"1700000000000-7").expect("an id");
        assert_eq!(id, StreamId::new(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "1700000000000-7");
        assert_eq!(id.to_bytes(), b"1700000000000-7");
        // Numerically, not as text: 9-0 comes before 10-0, and 1-9 before 1-10.
        assert!(StreamId::new(9, 0) < StreamId::new(10, 0));
        assert!(StreamId::new(1, 9) < StreamId::new(1, 10));
        for bad in [&b""[..], b"12", b"-1", b"1-", b"a-1", b"1-+2", b"1-2-3"] {
            assert_eq!(
                StreamId::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

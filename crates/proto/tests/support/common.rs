//! What both vector generators (the worker protocol's and the control protocol's) share:
//! hex in and out, whole-frame decoding and the varint boundaries.

use herd_proto::FrameError;

/// A decoded frame that must have used every byte of `frame`.
pub fn whole<T>(frame: &[u8], got: Option<(T, usize)>) -> Result<T, FrameError> {
    match got {
        Some((msg, used)) if used == frame.len() => Ok(msg),
        Some((_, used)) => Err(FrameError::Malformed(format!(
            "{} bytes after the frame",
            frame.len() - used
        ))),
        None => Err(FrameError::EofMidFrame),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)].into());
        s.push(DIGITS[usize::from(b & 15)].into());
    }
    s
}

pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(format!("{:?} is not a lower-case hex digit", char::from(c))),
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// The varint boundaries: each side of every change of encoded size.
pub const U32_BOUNDARIES: [u64; 8] = [0, 250, 251, 255, 256, 65_535, 65_536, 4_294_967_295];
pub const U64_BOUNDARIES: [u64; 10] = [
    0,
    250,
    251,
    255,
    256,
    65_535,
    65_536,
    4_294_967_295,
    4_294_967_296,
    u64::MAX,
];

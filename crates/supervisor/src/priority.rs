//! Priorities: which accepted job a waiting worker gets next, by priority level and, within
//! a level, by submission. (The pool's queue that carries the rule out is `pool/queue.rs`.)
//!
//! The rule. A priority is an integer in `-128..=127` (default 0; higher runs first). The next
//! job comes from the level with the highest *effective* priority: its priority plus one for
//! every [`AGING_DISPATCHES`] dispatches since that level was last served (or got its first
//! queued job); a tie goes to the level that waited longer. Within a level, submissions take
//! turns (round-robin) and each submission's jobs go in arrival order, a retry first. So a
//! level `d` below the top waits at most `d × AGING_DISPATCHES` dispatches for its next one:
//! delayed, never starved.
//!
//! Aging counts dispatches, not time: a queued job's own age would let a flood queued long
//! ago outrank everything that arrives after it, and a dispatch count gives a low level the
//! same share of the workers whether tasks take a microsecond or a minute. Only the choice of
//! the next job is affected: tasks already in a worker's window are never taken back.
//!
//! With a single level in use (no priorities), a dispatch costs what it did before levels
//! existed: one index check, then the submissions' round-robin.

/// A dispatch priority: higher first.
pub type Priority = i8;

/// Dispatches after which a waiting level counts one priority higher.
pub const AGING_DISPATCHES: u64 = 64;

/// Bytes scanned for the tab after a line's priority (`-128` and a tab fit, with room for a
/// clear "out of range" on a longer number).
const PREFIX_SCAN: usize = 12;

/// Why a `--line-priority` line has no valid priority (the message of its `rejected` record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinePriorityError {
    /// No tab within the first few bytes.
    #[error(
        "line does not start with a priority and a tab (--line-priority): \
         expected `<priority>\\t<event>`"
    )]
    Missing,
    /// What comes before the tab (escaped) is not an integer.
    #[error("bad line priority `{0}`: expected an integer from -128 to 127 and a tab")]
    NotAnInteger(String),
    /// An integer outside `-128..=127`.
    #[error("line priority {0} is out of range: expected an integer from -128 to 127")]
    OutOfRange(String),
}

/// Splits a `--line-priority` line, `<priority>\t<event>`: returns the priority and where the
/// event starts.
///
/// # Errors
/// Why the line has no valid priority (for its `rejected` record).
pub fn split_line_priority(line: &[u8]) -> Result<(Priority, usize), LinePriorityError> {
    let Some(tab) = line.iter().take(PREFIX_SCAN).position(|&b| b == b'\t') else {
        return Err(LinePriorityError::Missing);
    };
    let text = String::from_utf8_lossy(&line[..tab]);
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LinePriorityError::NotAnInteger(
            text.escape_debug().to_string(),
        ));
    }
    match text.parse::<i64>().map(Priority::try_from) {
        Ok(Ok(p)) => Ok((p, tab + 1)),
        _ => Err(LinePriorityError::OutOfRange(text.into_owned())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn line_priorities_parse_or_say_why_not() {
        assert_eq!(split_line_priority(b"5\t{\"n\":1}"), Ok((5, 2)));
        assert_eq!(split_line_priority(b"-128\tx"), Ok((-128, 5)));
        assert_eq!(split_line_priority(b"+127\t"), Ok((127, 5)));
        assert_eq!(split_line_priority(b"007\tx"), Ok((7, 4)));
        let err = |l: &[u8]| split_line_priority(l).unwrap_err().to_string();
        assert_eq!(split_line_priority(b"{}"), Err(LinePriorityError::Missing));
        assert_eq!(
            split_line_priority(b"high\tx"),
            Err(LinePriorityError::NotAnInteger("high".into()))
        );
        assert_eq!(
            split_line_priority(b"128\tx"),
            Err(LinePriorityError::OutOfRange("128".into()))
        );
        assert_eq!(
            err(b"x"),
            "line does not start with a priority and a tab (--line-priority): \
             expected `<priority>\\t<event>`"
        );
        assert!(err(b"{\"n\":1}").contains("does not start with a priority"));
        assert!(err(b"").contains("does not start with a priority"));
        assert!(err(b"\tx").contains("bad line priority ``"));
        assert!(err(b"high\tx").contains("bad line priority `high`"));
        assert!(err(b"1.5\tx").contains("bad line priority `1.5`"));
        assert!(err(b"--1\tx").contains("bad line priority"));
        assert!(err(b"\xff\xfe\tx").contains("bad line priority"));
        assert!(err(b"128\tx").contains("line priority 128 is out of range"));
        assert!(err(b"-9999999999\tx").contains("out of range"));
        // The tab must come within the first few bytes: a payload's own tabs don't count.
        assert!(err(b"{\"a\": 1,      \t\"b\": 2}").contains("does not start"));
    }
}

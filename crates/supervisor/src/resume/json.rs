//! A streaming JSON syntax check for records lines: fed a line in pieces of any size, it keeps
//! a few bytes of state (and one bit per open bracket), so a records file of any size is
//! checked in the same memory. It checks what RFC 8259 asks of the text's syntax: tokens,
//! nesting, string escapes and control characters. Like serde_json's check of a worker's
//! output (which decides whether herd embeds it as is), it does not look at UTF-8 inside
//! strings, so it accepts every line herd writes. It builds nothing.

/// Nesting deeper than this is refused. herd's records are at most a few levels deeper than
/// the worker outputs they embed, which serde_json already limits to 128 levels.
const MAX_DEPTH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value must come (the start, after `:` or after `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value inside a container: `,` or the closing bracket.
    CommaOrClose,
    /// Inside a string; `key` says what follows it.
    Str { key: bool },
    /// After a backslash in a string.
    Escape { key: bool },
    /// Inside `\uXXXX`, with `left` hex digits to go.
    Unicode { key: bool, left: u8 },
    /// Inside a number.
    Number(Num),
    /// Inside `true`, `false` or `null`: the bytes still to come.
    Literal(&'static [u8]),
    /// After the top-level value: only whitespace.
    End,
}

/// Where a number is: the states a number may end in are `Zero`, `Int`, `Frac` and `Exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }

    fn next(self, b: u8) -> Option<Num> {
        Some(match (self, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, b'1'..=b'9') => Num::Int,
            (Num::Int, b'0'..=b'9') => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
            (Num::E, b'+' | b'-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, b'0'..=b'9') => Num::Exp,
            _ => return None,
        })
    }
}

/// Why a line is not JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A byte that cannot come where it is.
    Unexpected { offset: u64, byte: u8 },
    /// The line ends inside a value (cut short).
    Unfinished,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep { offset: u64 },
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Unexpected { offset, byte } => {
                write!(
                    f,
                    "it is not valid JSON: byte 0x{byte:02x} at column {}",
                    offset + 1
                )
            }
            Invalid::Unfinished => f.write_str("it is not valid JSON: it ends inside a value"),
            Invalid::TooDeep { offset } => write!(
                f,
                "it is nested more than {MAX_DEPTH} levels deep at column {}",
                offset + 1
            ),
        }
    }
}

/// The check of one line; see the module docs.
#[derive(Debug, Clone)]
pub struct JsonCheck {
    state: State,
    /// One bit per open bracket: set for `{`, clear for `[`.
    stack: Vec<u64>,
    depth: usize,
    /// Bytes fed so far.
    offset: u64,
    error: Option<Invalid>,
}

impl Default for JsonCheck {
    fn default() -> Self {
        Self {
            state: State::Value,
            stack: Vec::new(),
            depth: 0,
            offset: 0,
            error: None,
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl JsonCheck {
    /// Checks the next bytes of the line. After the first error the rest is ignored.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let mut i = 0;
        while i < bytes.len() {
            // Plain string bytes are the bulk of most records: skip them in one go.
            if let State::Str { .. } = self.state {
                let plain = bytes[i..]
                    .iter()
                    .take_while(|&&b| b >= 0x20 && b != b'"' && b != b'\\')
                    .count();
                i += plain;
                if i == bytes.len() {
                    break;
                }
            }
            if let Err(e) = self.step(bytes[i], self.offset + i as u64) {
                self.error = Some(e);
                break;
            }
            i += 1;
        }
        self.offset += bytes.len() as u64;
    }

    /// Whether the bytes fed make one complete JSON value.
    pub fn finish(&self) -> Result<(), Invalid> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.state {
            State::End => Ok(()),
            State::Number(n) if n.complete() && self.depth == 0 => Ok(()),
            _ => Err(Invalid::Unfinished),
        }
    }

    fn top_is_object(&self) -> bool {
        let d = self.depth - 1;
        self.stack[d / 64] & (1 << (d % 64)) != 0
    }

    fn push(&mut self, object: bool, offset: u64) -> Result<State, Invalid> {
        if self.depth == MAX_DEPTH {
            return Err(Invalid::TooDeep { offset });
        }
        let d = self.depth;
        if d / 64 == self.stack.len() {
            self.stack.push(0);
        }
        let bit = 1u64 << (d % 64);
        if object {
            self.stack[d / 64] |= bit;
        } else {
            self.stack[d / 64] &= !bit;
        }
        self.depth += 1;
        Ok(if object {
            State::KeyOrClose
        } else {
            State::ValueOrClose
        })
    }

    /// The state after a complete value.
    fn after_value(&self) -> State {
        if self.depth == 0 {
            State::End
        } else {
            State::CommaOrClose
        }
    }

    /// The start of a value at byte `b`.
    fn value(&mut self, b: u8, offset: u64) -> Result<State, Invalid> {
        Ok(match b {
            b'{' => self.push(true, offset)?,
            b'[' => self.push(false, offset)?,
            b'"' => State::Str { key: false },
            b'-' => State::Number(Num::Minus),
            b'0' => State::Number(Num::Zero),
            b'1'..=b'9' => State::Number(Num::Int),
            b't' => State::Literal(b"rue"),
            b'f' => State::Literal(b"alse"),
            b'n' => State::Literal(b"ull"),
            _ => return Err(Invalid::Unexpected { offset, byte: b }),
        })
    }

    /// Closes the innermost container with `b` if it is its bracket.
    fn close(&mut self, b: u8, offset: u64) -> Result<State, Invalid> {
        let want = if self.top_is_object() { b'}' } else { b']' };
        if b != want {
            return Err(Invalid::Unexpected { offset, byte: b });
        }
        self.depth -= 1;
        Ok(self.after_value())
    }

    fn step(&mut self, b: u8, offset: u64) -> Result<(), Invalid> {
        let bad = Invalid::Unexpected { offset, byte: b };
        self.state = match self.state {
            State::Value
            | State::ValueOrClose
            | State::KeyOrClose
            | State::Key
            | State::Colon
            | State::CommaOrClose
            | State::End
                if is_ws(b) =>
            {
                self.state
            }
            State::Value => self.value(b, offset)?,
            State::ValueOrClose if b == b']' => self.close(b, offset)?,
            State::ValueOrClose => self.value(b, offset)?,
            State::KeyOrClose if b == b'}' => self.close(b, offset)?,
            State::KeyOrClose | State::Key if b == b'"' => State::Str { key: true },
            State::Colon if b == b':' => State::Value,
            State::CommaOrClose if b == b',' => {
                if self.top_is_object() {
                    State::Key
                } else {
                    State::Value
                }
            }
            State::CommaOrClose if b == b'}' || b == b']' => self.close(b, offset)?,
            State::Str { key } => match b {
                b'"' if key => State::Colon,
                b'"' => self.after_value(),
                b'\\' => State::Escape { key },
                0x00..=0x1f => return Err(bad),
                _ => self.state,
            },
            State::Escape { key } => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => State::Str { key },
                b'u' => State::Unicode { key, left: 4 },
                _ => return Err(bad),
            },
            State::Unicode { key, left } if b.is_ascii_hexdigit() => {
                if left == 1 {
                    State::Str { key }
                } else {
                    State::Unicode {
                        key,
                        left: left - 1,
                    }
                }
            }
            State::Number(n) => match n.next(b) {
                Some(n) => State::Number(n),
                // A number ends at the first byte that cannot continue it, which then
                // counts as the byte after the value.
                None if n.complete() => {
                    self.state = self.after_value();
                    return self.step(b, offset);
                }
                None => return Err(bad),
            },
            State::Literal([first, rest @ ..]) if b == *first => {
                if rest.is_empty() {
                    self.after_value()
                } else {
                    State::Literal(rest)
                }
            }
            _ => return Err(bad),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check of `text` fed in pieces of `size` bytes.
    fn check(text: &[u8], size: usize) -> Result<(), Invalid> {
        let mut c = JsonCheck::default();
        for piece in text.chunks(size.max(1)) {
            c.feed(piece);
        }
        c.finish()
    }

    #[test]
    fn agrees_with_serde_json() {
        let cases: &[&[u8]] = &[
            b"{\"seq\":1,\"ok\":true,\"output\":{\"a\":2}}",
            b"{\"seq\":1,\"ok\":true,\"output\":{\"a\":2}",
            b"{\"seq\":1,\"ok\":true,\"output\":{\"a\":2}}}",
            b"{\"seq\":1,\"ok\":true,\"output\":[1,2,{\"x\":[]}],\"m\":1}",
            b"{\"seq\":1,\"ok\":true,\"output\":[1,2,}",
            b"{\"a\":[1,2,]}",
            b"{\"a\":1,}",
            b"{\"a\" : -0.5e+10 , \"b\":[true,false,null]}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"{\"a\":1e}",
            b"{\"a\":tru}",
            b"{\"a\":truex}",
            b"{\"a\":\"\\u00e9\\n\\\"\"}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12g4\"}",
            b"{\"a\":\"tab\there\"}",
            "{\"a\":\"caf\u{e9} \u{1f600}\"}".as_bytes(),
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\xc3\"}",
            b"{\"a\":1}x",
            b"{\"a\":{\"b\":[1]]}",
            b"{\"a\":[1}}",
            b"{1:2}",
            b"{\"a\"}",
            b"{\"a\":\"unterminated}",
            b"",
            b"  ",
            b"[]",
            b"12",
            b"12 ",
            b"-",
        ];
        for &case in cases {
            let want = serde_json::from_slice::<serde::de::IgnoredAny>(case).is_ok();
            for size in [1, 2, 3, 7, case.len()] {
                assert_eq!(
                    check(case, size).is_ok(),
                    want,
                    "{:?} in pieces of {size}",
                    String::from_utf8_lossy(case)
                );
            }
        }
    }

    /// Records with bytes cut, doubled or replaced at random: the check agrees with serde_json
    /// on every one, fed whole and in pieces.
    #[test]
    fn agrees_with_serde_json_on_damaged_records() {
        let records: &[&[u8]] = &[
            b"{\"seq\":12,\"ok\":true,\"output\":{\"a\":[1,-2.5e3,true,null],\"b\":\"x\\\"y\\u00e9\"},\"attempts\":1}",
            b"{\"seq\":3,\"ok\":false,\"error\":{\"kind\":\"failed\",\"message\":\"no\"},\"attempts\":2,\"chunks\":1}",
            b"{\"seq\":0,\"chunk\":0,\"attempt\":1,\"output\":[[],{},0.0,\"\"]}",
        ];
        let alphabet = b"{}[]\",:\\-+.0159eEtfnlrsux ";
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        for round in 0..30_000 {
            let mut r = records[round % records.len()].to_vec();
            for _ in 0..1 + next(3) {
                let at = next(r.len());
                match next(3) {
                    0 => {
                        r.remove(at);
                    }
                    1 => r.insert(at, r[at]),
                    _ => r[at] = alphabet[next(alphabet.len())],
                }
            }
            let want = serde_json::from_slice::<serde::de::IgnoredAny>(&r).is_ok();
            let size = 1 + next(r.len());
            assert_eq!(
                check(&r, size).is_ok(),
                want,
                "{:?} in pieces of {size}",
                String::from_utf8_lossy(&r)
            );
        }
    }

    #[test]
    fn says_where_and_why() {
        assert_eq!(
            check(b"{\"seq\":1,\"ok\":true,\"output\":{\"a\":2}", 5),
            Err(Invalid::Unfinished)
        );
        assert_eq!(
            check(b"{\"a\":1,}", 3),
            Err(Invalid::Unexpected {
                offset: 7,
                byte: b'}'
            })
        );
        // Depth costs a bit per level; past the limit it is refused, not grown.
        let deep = [vec![b'['; 1000], vec![b']'; 1000]].concat();
        assert_eq!(check(&deep, 64), Ok(()));
        let deeper = vec![b'['; 100_000];
        assert_eq!(
            check(&deeper, 4096),
            Err(Invalid::TooDeep {
                offset: MAX_DEPTH as u64
            })
        );
    }
}

//! Per-key flow control: at most `--max-inflight-per-key` events of one key hold a worker (or
//! a retry's backoff) at a time, an optional `--key-rate` on each key's attempt starts, and
//! first-in first-out dispatch within a key.
//!
//! An event whose key is full or throttled is *parked* here, off the dispatch queue, so it
//! never holds back other keys (no head-of-line blocking across keys); the next event of the
//! queue is dispatched instead. A key's parked events go back to the front of the dispatch
//! queue, oldest first, as its places free up (a final record) or its rate allows (a wake-up).
//! A released event already holds its key's place, so it is never parked behind the events it
//! was released before.
//!
//! Keys are hashed (64-bit SipHash with a per-process random key): two keys that collide share
//! their limits, which no sender can arrange. A key's state lives only while it has events
//! holding a place, parked, or a rate schedule ahead of now: memory follows the events in the
//! pool, not the number of keys ever seen.
//!
//! Pure: the caller passes the time in; the pool requeues what comes out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;

use rustc_hash::FxHashMap as HashMap;
use tokio::time::Instant;

use crate::job::{Job, SubmissionId};
use crate::rate::{Limiter, Rate, Waits};

/// Longest key, in bytes: keys are names (a customer, a file, a partition), not payloads.
pub const MAX_KEY_LEN: usize = 1024;

/// Why an event's key could not be found (its `rejected` record says this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `--line-key`: no tab within the first [`MAX_KEY_LEN`] bytes.
    #[error("the line has no key: expected `<key>\\t` before the event (--line-key)")]
    Missing,
    /// Longer than [`MAX_KEY_LEN`].
    #[error("the event's key is longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    /// A `--key` that is not a JSON pointer.
    #[error("`{0}` is not a JSON pointer: expected one like /user/id (RFC 6901)")]
    BadPointer(String),
    /// `--key POINTER` on an event that is not JSON.
    #[error("the event is not JSON, so --key {pointer} cannot be read: {error}")]
    NotJson { pointer: String, error: String },
}

/// Splits a `--line-key` line, `<key>\t<event>`: the key (none if empty) and where the event
/// starts.
///
/// # Errors
/// The line has no tab early enough.
pub fn split_line_key(line: &[u8]) -> Result<(Option<&[u8]>, usize), KeyError> {
    let Some(tab) = line.iter().take(MAX_KEY_LEN + 1).position(|&b| b == b'\t') else {
        return Err(if line.len() > MAX_KEY_LEN {
            KeyError::TooLong
        } else {
            KeyError::Missing
        });
    };
    Ok(((tab > 0).then(|| &line[..tab]), tab + 1))
}

/// Checks a `--key` JSON pointer: empty (the whole event) or `/`-separated.
///
/// # Errors
/// It does not start with `/`, or is too long.
pub fn check_pointer(pointer: &str) -> Result<(), KeyError> {
    if pointer.len() > MAX_KEY_LEN || !(pointer.is_empty() || pointer.starts_with('/')) {
        return Err(KeyError::BadPointer(pointer.escape_debug().to_string()));
    }
    Ok(())
}

/// The key at JSON pointer `pointer` in `event`: a string as it is, another value as compact
/// JSON; none if the event has no such member.
///
/// # Errors
/// The event is not JSON, or the key is too long.
pub fn pointer_key(event: &[u8], pointer: &str) -> Result<Option<Vec<u8>>, KeyError> {
    let value: serde_json::Value =
        serde_json::from_slice(event).map_err(|e| KeyError::NotJson {
            pointer: pointer.to_string(),
            error: e.to_string(),
        })?;
    let key = match value.pointer(pointer) {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => other.to_string().into_bytes(),
    };
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    Ok(Some(key))
}

/// The pool's per-key limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyLimits {
    /// Events of one key holding a worker at once; 0: no limit.
    pub max_inflight: u32,
    /// Attempt starts of one key.
    pub rate: Option<Rate>,
}

impl KeyLimits {
    /// Whether any per-key limit applies.
    pub fn any(&self) -> bool {
        self.max_inflight > 0 || self.rate.is_some()
    }
}

#[derive(Debug, Default)]
struct KeyState {
    /// Its events holding a place (see [`crate::job::Extra::holds_key`]).
    inflight: u32,
    /// Its events waiting for a place or for its rate, oldest first.
    parked: VecDeque<Job>,
    limiter: Option<Limiter>,
    /// A wake-up for it is in `Keys::wakes`.
    waking: bool,
}

/// Every key's state.
#[derive(Debug)]
pub(crate) struct Keys {
    limits: KeyLimits,
    hasher: std::collections::hash_map::RandomState,
    map: HashMap<u64, KeyState>,
    /// When a throttled key may start again (or its state may be forgotten).
    wakes: BinaryHeap<Reverse<(Instant, u64)>>,
    parked: usize,
    /// Waits of the rate limits of keys since forgotten.
    past_waits: Waits,
}

impl Keys {
    pub fn new(limits: KeyLimits) -> Self {
        Self {
            limits,
            hasher: std::collections::hash_map::RandomState::new(),
            map: HashMap::default(),
            wakes: BinaryHeap::new(),
            parked: 0,
            past_waits: Waits::default(),
        }
    }

    pub fn limits(&self) -> KeyLimits {
        self.limits
    }

    /// New limits (a reload): parked events stay parked until their key frees a place or its
    /// next wake-up.
    pub fn set_limits(&mut self, limits: KeyLimits, now: Instant) {
        self.limits = limits;
        for st in self.map.values_mut() {
            match (limits.rate, st.limiter.as_mut()) {
                (Some(r), Some(l)) => l.set_rate(r, now),
                (None, Some(_)) => st.limiter = None,
                _ => {}
            }
        }
    }

    /// The hash that names `key`.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Events parked.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Keys with state (in flight, parked or throttled).
    pub fn tracked(&self) -> usize {
        self.map.len()
    }

    /// How much the per-key rate limits held starts back, over all keys.
    pub fn waits(&self) -> Waits {
        let mut w = self.past_waits;
        for l in self.map.values().filter_map(|s| s.limiter.as_ref()) {
            w.delayed += l.waits().delayed;
            w.waited += l.waits().waited;
        }
        w
    }

    /// At dispatch: `job` if it may start now (it then holds a place of its key), else `None`:
    /// it is parked until its key frees a place or its rate allows.
    pub fn admit(&mut self, mut job: Job, now: Instant) -> Option<Job> {
        let Some(extra) = job.extra.as_deref_mut() else {
            return Some(job);
        };
        let Some(key) = extra.key else {
            return Some(job);
        };
        let holds = extra.holds_key;
        let max = self.limits.max_inflight;
        let st = self.map.entry(key).or_default();
        if !holds && (!st.parked.is_empty() || (max > 0 && st.inflight >= max)) {
            st.parked.push_back(job);
            self.parked += 1;
            return None;
        }
        if let Some(rate) = self.limits.rate {
            let limiter = st.limiter.get_or_insert_with(|| Limiter::new(rate));
            if let Err(at) = limiter.check(now) {
                // First in its key's line: it was released, or nothing was parked.
                st.parked.push_front(job);
                self.parked += 1;
                if !st.waking {
                    st.waking = true;
                    self.wakes.push(Reverse((at, key)));
                }
                return None;
            }
            limiter.start(now);
            // The next in line starts when the rate allows it, not when a place frees.
            if !st.parked.is_empty() && !st.waking {
                let at = limiter.ready_at().map_or(now, |t| t.max(now));
                st.waking = true;
                self.wakes.push(Reverse((at, key)));
            }
        }
        if !holds {
            st.inflight += 1;
            if let Some(extra) = job.extra.as_deref_mut() {
                extra.holds_key = true;
            }
        }
        Some(job)
    }

    /// `job` got its final record: its place is free. Returns the parked events that may now
    /// go, oldest first (each already holding its place).
    pub fn settled(&mut self, job: &Job, now: Instant) -> Vec<Job> {
        let Some(extra) = job.extra.as_deref() else {
            return Vec::new();
        };
        let (Some(key), true) = (extra.key, extra.holds_key) else {
            return Vec::new();
        };
        let Some(st) = self.map.get_mut(&key) else {
            return Vec::new();
        };
        st.inflight = st.inflight.saturating_sub(1);
        // A key limited by its rate alone is released by its wake-ups, not by records.
        let out = if self.limits.max_inflight > 0 {
            self.release(key, usize::MAX)
        } else {
            Vec::new()
        };
        self.forget_if_idle(key, now);
        out
    }

    /// The next wake-up of a throttled key.
    pub fn next_wake(&self) -> Option<Instant> {
        self.wakes.peek().map(|Reverse((at, _))| *at)
    }

    /// Throttled keys whose time has come: the next parked event of each, to be dispatched.
    pub fn due(&mut self, now: Instant) -> Vec<Job> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, key))) = self.wakes.peek() {
            if at > now {
                break;
            }
            self.wakes.pop();
            if let Some(st) = self.map.get_mut(&key) {
                st.waking = false;
            }
            out.extend(self.release(key, 1));
            self.forget_if_idle(key, now);
        }
        out
    }

    /// Up to `most` parked events of `key` that a place allows, each taking one.
    fn release(&mut self, key: u64, most: usize) -> Vec<Job> {
        let max = self.limits.max_inflight;
        let Some(st) = self.map.get_mut(&key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < most {
            let Some(front) = st.parked.front() else {
                break;
            };
            let holds = front.extra.as_deref().is_some_and(|e| e.holds_key);
            if !holds && max > 0 && st.inflight >= max {
                break;
            }
            let Some(mut job) = st.parked.pop_front() else {
                break;
            };
            self.parked -= 1;
            if !holds {
                st.inflight += 1;
                if let Some(extra) = job.extra.as_deref_mut() {
                    extra.holds_key = true;
                }
            }
            out.push(job);
            // A throttled key goes one start at a time, by its wake-ups.
            if st.limiter.is_some() {
                break;
            }
        }
        out
    }

    /// Drops `key`'s state once nothing needs it; a rate schedule still ahead of `now` is
    /// kept (a fresh one would allow a new burst) and looked at again when it runs out.
    fn forget_if_idle(&mut self, key: u64, now: Instant) {
        let Some(st) = self.map.get_mut(&key) else {
            return;
        };
        if st.inflight > 0 || !st.parked.is_empty() || st.waking {
            return;
        }
        if let Some(at) = st.limiter.as_ref().and_then(Limiter::caught_up_at) {
            if at > now {
                st.waking = true;
                self.wakes.push(Reverse((at, key)));
                return;
            }
        }
        if let Some(st) = self.map.remove(&key) {
            if let Some(l) = st.limiter {
                self.past_waits.delayed += l.waits().delayed;
                self.past_waits.waited += l.waits().waited;
            }
        }
    }

    /// Takes the parked event `seq` of `submission` (a cancel).
    pub fn remove(&mut self, submission: SubmissionId, seq: u64, now: Instant) -> Option<Job> {
        let (key, job) = self.map.iter_mut().find_map(|(&k, st)| {
            let pos = st
                .parked
                .iter()
                .position(|j| j.submission == submission && j.seq == seq)?;
            Some((k, st.parked.remove(pos)?))
        })?;
        self.parked -= 1;
        self.forget_if_idle(key, now);
        Some(job)
    }

    /// Takes every parked event for which `pick` says so (out of time, a submitter gone, a
    /// stop), leaving the rest in order.
    pub fn take_where(&mut self, now: Instant, mut pick: impl FnMut(&Job) -> bool) -> Vec<Job> {
        if self.parked == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut touched = Vec::new();
        for (&key, st) in &mut self.map {
            // Most keys have nothing to give (a sweep runs every few milliseconds).
            if !st.parked.iter().any(&mut pick) {
                continue;
            }
            let before = out.len();
            let mut keep = VecDeque::with_capacity(st.parked.len());
            for job in st.parked.drain(..) {
                if pick(&job) {
                    out.push(job);
                } else {
                    keep.push_back(job);
                }
            }
            st.parked = keep;
            if out.len() > before {
                touched.push(key);
            }
        }
        self.parked -= out.len();
        for key in touched {
            self.forget_if_idle(key, now);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::job::Extra;
    use std::time::Duration;

    fn keyed(keys: &Keys, seq: u64, key: &str) -> Job {
        let mut j = Job::fresh(seq, 1, seq, 0);
        j.extra = Some(Box::new(Extra {
            key: Some(keys.hash(key.as_bytes())),
            ..Extra::default()
        }));
        j
    }

    #[test]
    fn keys_are_found_in_line_prefixes_and_json_pointers() {
        assert_eq!(split_line_key(b"a\t{}"), Ok((Some(&b"a"[..]), 2)));
        assert_eq!(split_line_key(b"\t{}"), Ok((None, 1)));
        assert_eq!(split_line_key(b"{}"), Err(KeyError::Missing));
        assert_eq!(split_line_key(&[b'k'; 2000]), Err(KeyError::TooLong));
        let ev = br#"{"user":{"id":7,"name":"ann"},"n":null}"#;
        assert_eq!(pointer_key(ev, "/user/name"), Ok(Some(b"ann".to_vec())));
        assert_eq!(pointer_key(ev, "/user/id"), Ok(Some(b"7".to_vec())));
        assert_eq!(
            pointer_key(ev, "/user"),
            Ok(Some(br#"{"id":7,"name":"ann"}"#.to_vec()))
        );
        assert_eq!(pointer_key(ev, "/nope"), Ok(None));
        assert_eq!(pointer_key(ev, "/n"), Ok(None));
        assert!(matches!(
            pointer_key(b"not json", "/a"),
            Err(KeyError::NotJson { .. })
        ));
    }

    fn seqs(jobs: &[Job]) -> Vec<u64> {
        jobs.iter().map(|j| j.seq).collect()
    }

    #[test]
    fn one_in_flight_per_key_keeps_order_and_lets_other_keys_past() {
        let t0 = Instant::now();
        let mut k = Keys::new(KeyLimits {
            max_inflight: 1,
            rate: None,
        });
        let a0 = k.admit(keyed(&k, 0, "a"), t0).unwrap();
        assert!(k.admit(keyed(&k, 1, "a"), t0).is_none());
        assert!(k.admit(keyed(&k, 2, "a"), t0).is_none());
        // Another key is not held back by a's line.
        let b3 = k.admit(keyed(&k, 3, "b"), t0).unwrap();
        let plain = k.admit(Job::fresh(4, 1, 4, 0), t0).unwrap();
        assert_eq!((b3.seq, plain.seq), (3, 4));
        assert_eq!((k.parked(), k.tracked()), (2, 2));
        // a0 answered: a1 (and only a1) goes, already holding a's place.
        let out = k.settled(&a0, t0);
        assert_eq!(seqs(&out), [1]);
        let a1 = k.admit(out.into_iter().next().unwrap(), t0).unwrap();
        // A new a event still waits behind a2.
        assert!(k.admit(keyed(&k, 5, "a"), t0).is_none());
        assert_eq!(seqs(&k.settled(&a1, t0)), [2]);
        // b answered with nothing parked: b is forgotten.
        assert!(k.settled(&b3, t0).is_empty());
        assert_eq!(k.tracked(), 1);
    }

    #[test]
    fn a_retry_keeps_its_place_and_is_not_parked_behind_later_events() {
        let t0 = Instant::now();
        let mut k = Keys::new(KeyLimits {
            max_inflight: 1,
            rate: None,
        });
        let a0 = k.admit(keyed(&k, 0, "a"), t0).unwrap();
        assert!(k.admit(keyed(&k, 1, "a"), t0).is_none());
        // a0 failed and comes back for another attempt: it still holds the place.
        let again = k.admit(a0, t0).unwrap();
        assert_eq!(again.seq, 0);
        assert_eq!(seqs(&k.settled(&again, t0)), [1]);
    }

    #[test]
    fn a_throttled_key_is_parked_and_woken_by_its_rate() {
        let t0 = Instant::now();
        let rate: Rate = "10/s".parse().unwrap();
        let mut k = Keys::new(KeyLimits {
            max_inflight: 0,
            rate: Some(rate),
        });
        let a0 = k.admit(keyed(&k, 0, "a"), t0).unwrap();
        assert!(k.admit(keyed(&k, 1, "a"), t0).is_none());
        assert!(k.admit(keyed(&k, 2, "a"), t0).is_none());
        assert!(
            k.admit(keyed(&k, 3, "b"), t0).is_some(),
            "b has its own rate"
        );
        let wake = k.next_wake().unwrap();
        assert_eq!(wake, t0 + Duration::from_millis(100));
        assert!(k.due(t0 + Duration::from_millis(50)).is_empty());
        let out = k.due(wake);
        assert_eq!(seqs(&out), [1]);
        let a1 = k.admit(out.into_iter().next().unwrap(), wake).unwrap();
        assert_eq!(a1.seq, 1);
        // The next one is woken on schedule, not by a0's answer.
        assert!(k.settled(&a0, wake).is_empty());
        assert_eq!(k.next_wake(), Some(t0 + Duration::from_millis(200)));
        let out = k.due(t0 + Duration::from_millis(200));
        assert_eq!(seqs(&out), [2]);
    }

    #[test]
    fn state_is_forgotten_once_idle_so_memory_follows_the_events() {
        let t0 = Instant::now();
        let mut k = Keys::new(KeyLimits {
            max_inflight: 1,
            rate: Some("1000/s".parse().unwrap()),
        });
        for i in 0..10_000u64 {
            let j = k.admit(keyed(&k, i, &format!("k{i}")), t0).unwrap();
            assert!(k.settled(&j, t0).is_empty());
        }
        // Their rate schedules are a millisecond ahead: forgotten at their wake-ups.
        assert_eq!(k.tracked(), 10_000);
        assert!(k.due(t0 + Duration::from_millis(2)).is_empty());
        assert_eq!(k.tracked(), 0);
        assert_eq!(k.next_wake(), None);
    }

    #[test]
    fn parked_events_can_be_cancelled_and_taken() {
        let t0 = Instant::now();
        let mut k = Keys::new(KeyLimits {
            max_inflight: 1,
            rate: None,
        });
        let a0 = k.admit(keyed(&k, 0, "a"), t0).unwrap();
        for s in 1..5 {
            assert!(k.admit(keyed(&k, s, "a"), t0).is_none());
        }
        assert_eq!(k.remove(1, 2, t0).map(|j| j.seq), Some(2));
        assert!(k.remove(1, 2, t0).is_none());
        let odd = k.take_where(t0, |j| j.seq % 2 == 1);
        assert_eq!(seqs(&odd), [1, 3]);
        assert_eq!(k.parked(), 1);
        assert_eq!(seqs(&k.settled(&a0, t0)), [4]);
    }
}

//! The queue of accepted jobs waiting for a worker, by priority level and, within a level,
//! by submission: the rule of [`crate::priority`], carried out.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;
use tokio::time::Instant;

use crate::job::{Job, SubmissionId};
use crate::priority::{Priority, AGING_DISPATCHES};

#[derive(Debug)]
struct Level {
    priority: Priority,
    /// Jobs queued at this level, across submissions.
    queued: usize,
    /// `Queue::dispatched` when this level was last served or got its first queued job.
    since: u64,
    /// Submissions with jobs queued at this level, in turn order: exactly those whose queue in
    /// `jobs` is not empty.
    ring: VecDeque<SubmissionId>,
    /// Per submission, its jobs at this level. An emptied queue stays (with its allocation)
    /// until the submission is forgotten.
    jobs: HashMap<SubmissionId, VecDeque<Job>>,
}

/// Queued jobs of every submission, by priority (see [`crate::priority`] for the rule).
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Every level ever used, highest priority first; at most 256, so an emptied level stays.
    levels: Vec<Level>,
    /// Jobs popped so far: the clock of aging.
    dispatched: u64,
    queued: usize,
}

impl Queue {
    /// Jobs queued across all levels.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether a submission other than `id` has jobs queued.
    pub fn others_queued(&self, id: SubmissionId) -> bool {
        self.levels.iter().any(|l| l.ring.iter().any(|&s| s != id))
    }

    /// Queued jobs per priority, highest first; levels with none are left out.
    pub fn depths(&self) -> impl Iterator<Item = (Priority, usize)> + '_ {
        self.levels
            .iter()
            .filter(|l| l.queued > 0)
            .map(|l| (l.priority, l.queued))
    }

    /// The index of `priority`'s level, created if new.
    fn level(&mut self, priority: Priority) -> usize {
        // The common case: one level, or the top one.
        if self.levels.first().is_some_and(|l| l.priority == priority) {
            return 0;
        }
        match self.levels.binary_search_by(|l| priority.cmp(&l.priority)) {
            Ok(i) => i,
            Err(i) => {
                self.levels.insert(
                    i,
                    Level {
                        priority,
                        queued: 0,
                        since: self.dispatched,
                        ring: VecDeque::new(),
                        jobs: HashMap::default(),
                    },
                );
                i
            }
        }
    }

    /// Queues jobs of submission `id` at the back, in order (each at its own priority).
    pub fn extend(&mut self, id: SubmissionId, jobs: impl IntoIterator<Item = Job>) {
        let mut jobs = jobs.into_iter().peekable();
        while let Some(first) = jobs.next() {
            // A run of jobs with one priority (a whole batch, without --line-priority) costs
            // one lookup.
            let priority = first.priority;
            let li = self.level(priority);
            let dispatched = self.dispatched;
            let level = &mut self.levels[li];
            let q = level.jobs.entry(id).or_default();
            if q.is_empty() {
                level.ring.push_back(id);
            }
            let before = q.len();
            q.push_back(first);
            while let Some(job) = jobs.next_if(|j| j.priority == priority) {
                q.push_back(job);
            }
            let added = q.len() - before;
            if level.queued == 0 {
                level.since = dispatched;
            }
            level.queued += added;
            self.queued += added;
        }
    }

    /// Queues one job: at the back of its submission's queue at its level, or (`front`, for
    /// a retry) at the front, with its submission's turn first.
    pub fn push(&mut self, job: Job, front: bool) {
        let id = job.submission;
        let li = self.level(job.priority);
        let dispatched = self.dispatched;
        let level = &mut self.levels[li];
        let q = level.jobs.entry(id).or_default();
        if q.is_empty() {
            if front {
                level.ring.push_front(id);
            } else {
                level.ring.push_back(id);
            }
        }
        if front {
            q.push_front(job);
        } else {
            q.push_back(job);
        }
        if level.queued == 0 {
            level.since = dispatched;
        }
        level.queued += 1;
        self.queued += 1;
    }

    /// The level to serve next: the highest effective priority among those with jobs.
    fn pick(&self) -> Option<usize> {
        let mut best: Option<(usize, (i64, u64))> = None;
        for (i, l) in self.levels.iter().enumerate() {
            if l.queued == 0 {
                continue;
            }
            let waited = self.dispatched - l.since;
            let score = i64::from(l.priority) * AGING_DISPATCHES as i64 + waited as i64;
            // A tie goes to the level that waited longer, then (strictly greater) to the
            // earlier, higher priority.
            if best.is_none_or(|(_, b)| (score, waited) > b) {
                best = Some((i, (score, waited)));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The next job to dispatch.
    pub fn pop(&mut self) -> Option<Job> {
        if self.queued == 0 {
            return None;
        }
        let li = if self.levels.len() == 1 {
            0
        } else {
            self.pick()?
        };
        self.dispatched += 1;
        let level = &mut self.levels[li];
        level.since = self.dispatched;
        while let Some(id) = level.ring.pop_front() {
            let Some(q) = level.jobs.get_mut(&id) else {
                continue;
            };
            let Some(job) = q.pop_front() else {
                continue;
            };
            if !q.is_empty() {
                level.ring.push_back(id);
            }
            level.queued -= 1;
            self.queued -= 1;
            return Some(job);
        }
        None
    }

    /// Jobs of submission `id` queued, across levels.
    pub fn queued_of(&self, id: SubmissionId) -> usize {
        self.levels
            .iter()
            .filter_map(|l| l.jobs.get(&id))
            .map(VecDeque::len)
            .sum()
    }

    /// The next job of a submission not in `held` (those a rate limit holds back): by the same
    /// rule as [`pop`](Self::pop), skipping the held ones, which keep their turn.
    pub fn pop_unless(&mut self, held: &[SubmissionId]) -> Option<Job> {
        if held.is_empty() {
            return self.pop();
        }
        // Levels by effective priority, best first (as `pick`).
        let mut order: Vec<(usize, (i64, u64))> = self
            .levels
            .iter()
            .enumerate()
            .filter(|(_, l)| l.queued > 0)
            .map(|(i, l)| {
                let waited = self.dispatched - l.since;
                (
                    i,
                    (
                        i64::from(l.priority) * AGING_DISPATCHES as i64 + waited as i64,
                        waited,
                    ),
                )
            })
            .collect();
        // Stable: among equals the earlier (higher) level stays first.
        order.sort_by_key(|&(_, score)| std::cmp::Reverse(score));
        for (li, _) in order {
            let level = &mut self.levels[li];
            let Some(pos) = level.ring.iter().position(|id| !held.contains(id)) else {
                continue;
            };
            let Some(id) = level.ring.remove(pos) else {
                continue;
            };
            let Some(q) = level.jobs.get_mut(&id) else {
                continue;
            };
            let Some(job) = q.pop_front() else {
                continue;
            };
            if !q.is_empty() {
                level.ring.push_back(id);
            }
            level.queued -= 1;
            self.queued -= 1;
            self.dispatched += 1;
            level.since = self.dispatched;
            return Some(job);
        }
        None
    }

    /// Removes submission `id`'s queued jobs and its queues; returns how many jobs it had.
    /// Jobs holding a place of their key are handed to `holding` (the place must be freed).
    pub fn cancel(&mut self, id: SubmissionId, holding: &mut Vec<Job>) -> usize {
        let mut removed = 0;
        for level in &mut self.levels {
            let Some(q) = level.jobs.remove(&id) else {
                continue;
            };
            if !q.is_empty() {
                level.ring.retain(|&s| s != id);
                level.queued -= q.len();
                removed += q.len();
                let held = q
                    .into_iter()
                    .filter(|j| j.extra.as_deref().is_some_and(|e| e.holds_key));
                holding.extend(held);
            }
        }
        self.queued -= removed;
        removed
    }

    /// Removes the queued job of event `seq` of submission `id`, if it is queued.
    pub fn remove(&mut self, id: SubmissionId, seq: u64) -> Option<Job> {
        for level in &mut self.levels {
            let Some(q) = level.jobs.get_mut(&id) else {
                continue;
            };
            let Some(pos) = q.iter().position(|j| j.seq == seq) else {
                continue;
            };
            let job = q.remove(pos)?;
            if q.is_empty() {
                level.ring.retain(|&s| s != id);
            }
            level.queued -= 1;
            self.queued -= 1;
            return Some(job);
        }
        None
    }

    /// Removes the queued jobs that are out of time at `now` (see [`crate::limits`]), looking
    /// at no more than `budget` jobs. Within one submission's queue at one level, jobs never
    /// dispatched are in the order they were accepted, behind any that went back to the front,
    /// so the scan of a queue stops at the first one of those still in time.
    pub fn take_out_of_time(
        &mut self,
        now: Instant,
        mut budget: usize,
    ) -> Vec<(Job, crate::record::ErrorKind)> {
        let mut out = Vec::new();
        for level in &mut self.levels {
            if level.queued == 0 {
                continue;
            }
            let mut emptied = false;
            let mut removed = 0;
            // Only the queues in the ring have jobs: an emptied one costs nothing here.
            for id in &level.ring {
                let Some(q) = level.jobs.get_mut(id) else {
                    continue;
                };
                let mut k = 0;
                while budget > 0 && k < q.len() {
                    budget -= 1;
                    match crate::limits::verdict(&q[k], now) {
                        Some(kind) => {
                            if let Some(job) = q.remove(k) {
                                out.push((job, kind));
                                removed += 1;
                            }
                        }
                        None if !q[k].dispatched => break,
                        None => k += 1,
                    }
                }
                emptied |= q.is_empty();
                if budget == 0 {
                    break;
                }
            }
            level.queued -= removed;
            self.queued -= removed;
            if emptied {
                let jobs = &level.jobs;
                level
                    .ring
                    .retain(|id| jobs.get(id).is_some_and(|q| !q.is_empty()));
            }
            if budget == 0 {
                break;
            }
        }
        out
    }

    /// Takes every queued job (for a fast stop).
    pub fn take_all(&mut self) -> Vec<Job> {
        let mut all = Vec::with_capacity(self.queued);
        for level in &mut self.levels {
            level.ring.clear();
            level.queued = 0;
            for q in level.jobs.values_mut() {
                all.extend(q.drain(..));
            }
        }
        self.queued = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(submission: SubmissionId, seq: u64, priority: Priority) -> Job {
        Job::fresh(submission * 1_000_000 + seq, submission, seq, priority)
    }

    #[test]
    fn others_queued_sees_any_other_submission_at_any_level() {
        let mut q = Queue::default();
        assert!(!q.others_queued(1));
        q.push(job(1, 0, 0), false);
        assert!(!q.others_queued(1), "only its own");
        q.push(job(2, 0, 5), false);
        assert!(q.others_queued(1));
        assert!(q.others_queued(2));
        assert_eq!(q.pop().map(|j| j.submission), Some(2));
        assert!(!q.others_queued(1), "an emptied queue counts no more");
    }

    fn drain(q: &mut Queue) -> Vec<(SubmissionId, u64, Priority)> {
        std::iter::from_fn(|| q.pop())
            .map(|j| (j.submission, j.seq, j.priority))
            .collect()
    }

    #[test]
    fn higher_first_in_order_within_a_level() {
        let mut q = Queue::default();
        q.extend(1, (0..3).map(|s| job(1, s, 0)));
        q.extend(2, [job(2, 0, 5), job(2, 1, -3), job(2, 2, 5), job(2, 3, 0)]);
        assert_eq!(q.queued(), 7);
        assert_eq!(q.depths().collect::<Vec<_>>(), [(5, 2), (0, 4), (-3, 1)]);
        assert_eq!(
            drain(&mut q),
            [
                (2, 0, 5),
                (2, 2, 5),
                // Level 0: the submissions take turns, each in its own order.
                (1, 0, 0),
                (2, 3, 0),
                (1, 1, 0),
                (1, 2, 0),
                (2, 1, -3),
            ]
        );
        assert_eq!(q.queued(), 0);
        assert_eq!(q.depths().count(), 0);
    }

    #[test]
    fn urgent_jobs_overtake_a_flood_queued_before_them() {
        let mut q = Queue::default();
        q.extend(1, (0..10_000).map(|s| job(1, s, 0)));
        for s in 0..1000 {
            assert_eq!(q.pop().unwrap().seq, s);
        }
        // A flood that has been served all along does not outrank newcomers, however old
        // its jobs are.
        q.extend(2, (0..5).map(|s| job(2, s, 1)));
        let next: Vec<_> = (0..5).map(|_| q.pop().unwrap().submission).collect();
        assert_eq!(next, [2; 5]);
        assert_eq!(q.pop().unwrap().seq, 1000);
    }

    #[test]
    fn aging_bounds_the_wait_of_a_low_level() {
        let mut q = Queue::default();
        q.extend(1, (0..10).map(|s| job(1, s, -2)));
        // A steady stream 2 levels higher: the low level gets exactly one dispatch in every
        // 2 × AGING_DISPATCHES + 1 (it waits 2 × AGING_DISPATCHES).
        let period = 2 * AGING_DISPATCHES + 1;
        let mut low_at = Vec::new();
        for n in 0..5 * period {
            // Keep the high level from ever running dry.
            q.push(job(2, n, 0), false);
            let j = q.pop().unwrap();
            if j.submission == 1 {
                low_at.push(n);
            }
        }
        assert_eq!(low_at.len(), 5, "{low_at:?}");
        for w in low_at.windows(2) {
            assert_eq!(w[1] - w[0], period, "{low_at:?}");
        }
        assert!(low_at[0] < period);
    }

    #[test]
    fn aging_with_one_level_apart_and_a_tie_goes_high() {
        let mut q = Queue::default();
        q.extend(1, (0..1000).map(|s| job(1, s, 0)));
        q.extend(2, (0..1000).map(|s| job(2, s, 1)));
        let first: Vec<_> = (0..=AGING_DISPATCHES + 1)
            .map(|_| q.pop().unwrap().priority)
            .collect();
        // Level 0 ties level 1 after AGING_DISPATCHES dispatches, and has waited longer.
        assert!(first[..AGING_DISPATCHES as usize].iter().all(|&p| p == 1));
        assert_eq!(first[AGING_DISPATCHES as usize], 0);
        assert_eq!(first[AGING_DISPATCHES as usize + 1], 1);
    }

    #[test]
    fn retries_go_first_within_their_level_and_keep_it() {
        let mut q = Queue::default();
        q.extend(1, (0..3).map(|s| job(1, s, 0)));
        q.extend(2, [job(2, 0, 9)]);
        let urgent = q.pop().unwrap();
        assert_eq!(urgent.priority, 9);
        let first = q.pop().unwrap();
        assert_eq!((first.submission, first.seq), (1, 0));
        q.push(first, true);
        q.push(urgent, true);
        assert_eq!(drain(&mut q), [(2, 0, 9), (1, 0, 0), (1, 1, 0), (1, 2, 0)]);
    }

    #[test]
    fn held_submissions_are_skipped_and_keep_their_turn() {
        let mut q = Queue::default();
        q.extend(1, (0..3).map(|s| job(1, s, 0)));
        q.extend(2, (0..3).map(|s| job(2, s, 0)));
        q.extend(3, [job(3, 0, 5)]);
        // The top level is held entirely: a lower one is served, not nothing.
        let j = q.pop_unless(&[3]).unwrap();
        assert_eq!((j.submission, j.seq), (1, 0));
        assert_eq!(q.pop_unless(&[1, 3]).unwrap().submission, 2);
        assert_eq!(q.pop_unless(&[1, 3]).unwrap().submission, 2);
        assert_eq!(q.queued_of(1), 2);
        assert!(q.pop_unless(&[1, 2, 3]).is_none());
        assert_eq!(q.queued(), 4);
        // Released, everything comes out in the usual order.
        assert_eq!(drain(&mut q), [(3, 0, 5), (1, 1, 0), (2, 2, 0), (1, 2, 0)]);
    }

    #[test]
    fn cancel_and_take_all_keep_the_counts() {
        let mut q = Queue::default();
        q.extend(1, [job(1, 0, 0), job(1, 1, 3), job(1, 2, 0)]);
        q.extend(2, [job(2, 0, 0), job(2, 1, 3)]);
        assert_eq!(q.cancel(1, &mut Vec::new()), 3);
        assert_eq!(q.cancel(1, &mut Vec::new()), 0);
        assert_eq!(q.queued(), 2);
        assert_eq!(q.depths().collect::<Vec<_>>(), [(3, 1), (0, 1)]);
        assert_eq!(drain(&mut q), [(2, 1, 3), (2, 0, 0)]);
        q.extend(3, [job(3, 0, 1), job(3, 1, -1)]);
        assert_eq!(q.take_all().len(), 2);
        assert_eq!(q.queued(), 0);
        assert!(q.pop().is_none());
        // Everything still works after a take_all.
        q.extend(3, [job(3, 2, -1)]);
        assert_eq!(drain(&mut q), [(3, 2, -1)]);
    }

    /// A cancelled event leaves its queue alone: the counts, the levels and the turns of the
    /// others stay right.
    #[test]
    fn remove_takes_one_job_and_keeps_the_counts_and_turns() {
        let mut q = Queue::default();
        q.extend(1, [job(1, 0, 0), job(1, 1, 3), job(1, 2, 0)]);
        q.extend(2, [job(2, 0, 3)]);
        assert_eq!(q.remove(1, 1).map(|j| j.seq), Some(1));
        assert!(q.remove(1, 1).is_none(), "only once");
        assert!(q.remove(2, 1).is_none(), "another submission's seq");
        assert!(q.remove(9, 0).is_none(), "no such submission");
        assert_eq!(q.queued(), 3);
        assert_eq!(q.depths().collect::<Vec<_>>(), [(3, 1), (0, 2)]);
        // Submission 2 was the only one at level 3 once 1's job left it.
        assert_eq!(q.remove(2, 0).map(|j| j.seq), Some(0));
        assert_eq!(q.depths().collect::<Vec<_>>(), [(0, 2)]);
        assert_eq!(drain(&mut q), [(1, 0, 0), (1, 2, 0)]);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn deadline_sweep_takes_what_is_out_of_time_and_keeps_the_counts() {
        use crate::record::ErrorKind;
        use std::time::Duration;
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let aged = |sub, seq, accepted: Duration| {
            let mut j = job(sub, seq, 0);
            j.extra = Some(Box::new(crate::job::Extra {
                expires: Some(t0 + accepted + ms(100)),
                deadline: Some(t0 + accepted + ms(500)),
                ..Default::default()
            }));
            j
        };
        let mut q = Queue::default();
        q.extend(1, (0..4).map(|i| aged(1, i, ms(10 * i))));
        q.extend(2, [aged(2, 0, ms(200))]);
        // A retry at the front: dispatched once, so held to its deadline only.
        let mut retry = aged(1, 9, ms(0));
        retry.dispatched = true;
        q.push(retry, true);
        assert!(q.take_out_of_time(t0 + ms(50), 100).is_empty());
        // At 125 ms: seqs 0, 1 and 2 of submission 1 expired; 3 and the retry are in time.
        let out = q.take_out_of_time(t0 + ms(125), 100);
        let got: Vec<_> = out.iter().map(|(j, k)| (j.submission, j.seq, *k)).collect();
        let e = ErrorKind::Expired;
        assert_eq!(got, [(1, 0, e), (1, 1, e), (1, 2, e)]);
        assert_eq!(q.queued(), 3);
        // The budget bounds the work: one job looked at (the retry, in time).
        assert!(q.take_out_of_time(t0 + ms(250), 1).is_empty());
        // At 600 ms: the retry's deadline passed, and everything else expired.
        let out = q.take_out_of_time(t0 + ms(600), 100);
        let got: Vec<_> = out.iter().map(|(j, k)| (j.submission, j.seq, *k)).collect();
        assert_eq!(got.len(), 3);
        assert!(got.contains(&(1, 9, ErrorKind::Deadline)));
        assert!(got.contains(&(1, 3, e)) && got.contains(&(2, 0, e)));
        assert_eq!(q.queued(), 0);
        assert!(q.pop().is_none());
        assert!(!q.others_queued(3), "emptied queues left the ring");
    }
}

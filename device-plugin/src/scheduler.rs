//! The main loop's scheduler: a small debounced queue of jobs on tokio time.
//!
//! - [`Scheduler::schedule`] asks for a job after a delay; asking again before it ran keeps the
//!   earlier deadline, so a burst of events is one run.
//! - A job marked running ([`Scheduler::start`]) is held: asking for it again only records the
//!   wish, and it becomes due once [`Scheduler::finish`] says the run ended. Two runs of one job
//!   never overlap, and a change seen during a run is never lost.
//! - A run that failed is retried with exponential backoff, reset by the next success.
//!
//! Deadlines are `tokio::time::Instant`s, so tests drive the scheduler with paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// Retry delays of a failing job: `first`, doubled after each failure, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// The jobs of the main loop, each with its deadline, running state and failure count.
#[derive(Debug)]
pub struct Scheduler<J: Ord + Clone> {
    due: BTreeMap<J, Instant>,
    running: BTreeSet<J>,
    failures: BTreeMap<J, u32>,
    backoff: Backoff,
    /// Jobs whose retries follow another backoff.
    backoffs: BTreeMap<J, Backoff>,
}

impl<J: Ord + Clone> Default for Scheduler<J> {
    fn default() -> Self {
        Scheduler::new(Backoff::default())
    }
}

impl<J: Ord + Clone> Scheduler<J> {
    pub fn new(backoff: Backoff) -> Self {
        Scheduler {
            due: BTreeMap::new(),
            running: BTreeSet::new(),
            failures: BTreeMap::new(),
            backoff,
            backoffs: BTreeMap::new(),
        }
    }

    /// Retries of `job` follow `backoff` instead of the default.
    pub fn set_backoff(&mut self, job: J, backoff: Backoff) {
        self.backoffs.insert(job, backoff);
    }

    /// Runs `job` after `delay`, or earlier if it was already asked for earlier.
    pub fn schedule(&mut self, job: J, delay: Duration) {
        let at = Instant::now() + delay;
        self.due
            .entry(job)
            .and_modify(|d| *d = (*d).min(at))
            .or_insert(at);
    }

    /// Forgets a pending request for `job`.
    pub fn cancel(&mut self, job: &J) {
        self.due.remove(job);
    }

    /// Whether `job` is asked for (running or not).
    pub fn is_scheduled(&self, job: &J) -> bool {
        self.due.contains_key(job)
    }

    pub fn is_running(&self, job: &J) -> bool {
        self.running.contains(job)
    }

    /// The earliest deadline of a job that may run now (running jobs are held).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due
            .iter()
            .filter(|(j, _)| !self.running.contains(*j))
            .map(|(_, at)| *at)
            .min()
    }

    /// Takes the job that is due soonest (deadline passed, not running), if any.
    pub fn pop_due(&mut self) -> Option<J> {
        let now = Instant::now();
        let job = self
            .due
            .iter()
            .filter(|(j, at)| **at <= now && !self.running.contains(*j))
            .min_by_key(|(_, at)| **at)
            .map(|(j, _)| j.clone())?;
        self.due.remove(&job);
        Some(job)
    }

    /// `job` started a run that ends with [`Scheduler::finish`].
    pub fn start(&mut self, job: J) {
        self.running.insert(job);
    }

    /// A run of `job` ended (or, for a job never marked running, a one-shot run). A failure
    /// schedules a retry after the next backoff delay, which it returns; a success resets it.
    pub fn finish(&mut self, job: &J, ok: bool) -> Option<Duration> {
        self.running.remove(job);
        if ok {
            self.failures.remove(job);
            return None;
        }
        let failures = self.failures.entry(job.clone()).or_default();
        *failures = failures.saturating_add(1);
        let delay = self
            .backoffs
            .get(job)
            .unwrap_or(&self.backoff)
            .delay(*failures);
        self.schedule(job.clone(), delay);
        Some(delay)
    }

    /// How many runs of `job` failed in a row.
    pub fn failures(&self, job: &J) -> u32 {
        self.failures.get(job).copied().unwrap_or(0)
    }

    /// Forgets everything about `job` (a pool that went away).
    pub fn forget(&mut self, job: &J) {
        self.due.remove(job);
        self.running.remove(job);
        self.failures.remove(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const MS: Duration = Duration::from_millis(1);

    /// Advances paused time to the next deadline and returns what is due then.
    async fn next<J: Ord + Clone>(s: &mut Scheduler<J>) -> Option<(J, Duration)> {
        let start = Instant::now();
        let at = s.next_deadline()?;
        tokio::time::sleep_until(at).await;
        s.pop_due().map(|j| (j, Instant::now() - start))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_run_at_the_earliest_deadline() {
        let mut s = Scheduler::default();
        s.schedule("discovery", 30 * MS);
        advance(10 * MS).await;
        s.schedule("discovery", 30 * MS);
        s.schedule("discovery", 100 * MS);
        assert_eq!(s.pop_due(), None, "not due yet");
        assert_eq!(next(&mut s).await, Some(("discovery", 20 * MS)));
        assert_eq!(s.pop_due(), None, "ran once");
        assert_eq!(s.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_come_in_deadline_order() {
        let mut s = Scheduler::default();
        s.schedule("resync", 30 * MS);
        s.schedule("config", 50 * MS);
        s.schedule("heartbeat", 5 * MS);
        advance(60 * MS).await;
        assert_eq!(s.pop_due(), Some("heartbeat"));
        assert_eq!(s.pop_due(), Some("resync"));
        assert_eq!(s.pop_due(), Some("config"));
        assert_eq!(s.pop_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_job_is_held_until_it_finishes() {
        let mut s = Scheduler::default();
        s.schedule("discovery", Duration::ZERO);
        let job = s.pop_due().unwrap();
        s.start(job);
        // An event during the run asks for another one: held, not lost.
        s.schedule("discovery", 30 * MS);
        s.schedule("config", 40 * MS);
        assert_eq!(next(&mut s).await, Some(("config", 40 * MS)));
        advance(Duration::from_secs(5)).await;
        assert_eq!(s.pop_due(), None, "still running");
        assert!(s.is_scheduled(&"discovery") && s.is_running(&"discovery"));
        assert_eq!(s.finish(&"discovery", true), None);
        assert_eq!(s.pop_due(), Some("discovery"), "due at once after the run");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_a_success_resets() {
        let mut s = Scheduler::new(Backoff {
            first: 100 * MS,
            max: 350 * MS,
        });
        let mut delays = Vec::new();
        for _ in 0..4 {
            s.start("discovery");
            assert!(s.finish(&"discovery", false).is_some());
            let (job, waited) = next(&mut s).await.unwrap();
            assert_eq!(job, "discovery");
            delays.push(waited);
        }
        assert_eq!(delays, [100 * MS, 200 * MS, 350 * MS, 350 * MS]);
        assert_eq!(s.failures(&"discovery"), 4);
        s.start("discovery");
        assert_eq!(s.finish(&"discovery", true), None);
        assert_eq!(s.failures(&"discovery"), 0);
        assert_eq!(s.next_deadline(), None, "no retry after a success");
        s.start("discovery");
        s.finish(&"discovery", false);
        assert_eq!(next(&mut s).await, Some(("discovery", 100 * MS)));
        // Another job with a backoff of its own.
        s.set_backoff(
            "node-state",
            Backoff {
                first: 10 * MS,
                max: 15 * MS,
            },
        );
        for want in [10, 15, 15] {
            assert_eq!(s.finish(&"node-state", false), Some(want * MS));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_during_backoff_runs_sooner() {
        let mut s = Scheduler::new(Backoff {
            first: Duration::from_secs(10),
            max: Duration::from_secs(10),
        });
        s.start("discovery");
        s.finish(&"discovery", false);
        advance(Duration::from_secs(1)).await;
        s.schedule("discovery", 30 * MS);
        assert_eq!(next(&mut s).await, Some(("discovery", 30 * MS)));
        s.forget(&"discovery");
        assert_eq!(s.failures(&"discovery"), 0);
    }
}

//! The demo app's event feeds: which event comes next, and when.
//!
//! Every feed is a [`Schedule`]: event `n` is due at `origin + n × period`,
//! and its id is `n`. Because an id says when its event was due, the app
//! can honour `Last-Event-ID` without keeping any history: a stream that
//! resumes after id `k` starts with event `k + 1`, sends at once every event
//! that fell due while it was away, and then goes on live. That is what
//! makes the demo's restart button lose nothing: the proxy reconnects with
//! the last id it published, and the app fills the gap exactly.
//!
//! - The **clock** and the **quiet** topic are tickers whose origin is the
//!   Unix epoch, so their ids are wall-clock based and stay meaningful across
//!   restarts of the demo itself.
//! - A **job** starts when it is first asked for and counts 0 → 100 %
//!   (ids `0`..=`100`), then ends: its stream closes after `100`, and from
//!   then on the app answers `204 No Content` for it, which the proxy passes
//!   on to browsers as "stop".
//!
//! The module is pure: times are `Duration`s since the Unix epoch, passed in.

use std::time::Duration;

/// How often the clock ticks.
pub const CLOCK_PERIOD: Duration = Duration::from_secs(1);

/// How often the quiet topic has something to say: rarely enough that the
/// proxy's heartbeats (`[sse] heartbeat` of the topic) show in between.
pub const QUIET_PERIOD: Duration = Duration::from_secs(10);

/// The id of a job's last event: 100 %.
pub const JOB_LAST: u64 = 100;

/// A job whose id ends in `-N` (N from 1 to [`MAX_JOB_UNITS`]) takes
/// N of these: `a1b2-1` runs 10 s, `a1b2-4` runs 40 s. The page uses it to
/// show jobs of different lengths, and the browser test to have one end soon.
pub const JOB_UNIT: Duration = Duration::from_secs(10);

/// The longest job, in [`JOB_UNIT`]s.
pub const MAX_JOB_UNITS: u32 = 6;

/// How long a job runs when its id does not say.
pub const DEFAULT_JOB_DURATION: Duration = Duration::from_secs(30);

/// The most events a resuming stream is sent at once to catch up; an older
/// resume point skips ahead (a demo app keeps no unbounded backlog).
pub const MAX_CATCH_UP: u64 = 600;

/// When each event of a feed is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// When event 0 is due, since the Unix epoch.
    origin: Duration,
    /// Time between two events.
    period: Duration,
    /// The id of the last event, for feeds that end (jobs).
    last: Option<u64>,
}

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With this event (sent at once if it is already due).
    At(u64),
    /// Nowhere: the feed has ended (answer `204`).
    Ended,
}

impl Schedule {
    /// A feed that never ends, with event `n` due at `n × period` after the
    /// Unix epoch.
    pub fn ticker(period: Duration) -> Schedule {
        Schedule {
            origin: Duration::ZERO,
            period: period.max(Duration::from_millis(1)),
            last: None,
        }
    }

    /// A job that started at `started` (since the Unix epoch) and reaches
    /// 100 % after `duration`.
    pub fn job(started: Duration, duration: Duration) -> Schedule {
        let steps = u32::try_from(JOB_LAST).unwrap_or(u32::MAX);
        Schedule {
            origin: started,
            period: (duration / steps).max(Duration::from_millis(1)),
            last: Some(JOB_LAST),
        }
    }

    /// When event `id` is due, since the Unix epoch.
    pub fn due(&self, id: u64) -> Duration {
        let steps = u32::try_from(id).unwrap_or(u32::MAX);
        self.origin
            .saturating_add(self.period.saturating_mul(steps))
    }

    /// The newest event due at `now`, if any is.
    pub fn current(&self, now: Duration) -> Option<u64> {
        let elapsed = now.checked_sub(self.origin)?;
        let id = u64::try_from(elapsed.as_nanos() / self.period.as_nanos()).unwrap_or(u64::MAX);
        Some(self.last.map_or(id, |last| id.min(last)))
    }

    /// Whether `id` is the feed's last event.
    pub fn is_last(&self, id: u64) -> bool {
        self.last == Some(id)
    }

    /// Where a stream opened at `now` starts: right after `resume` (the
    /// request's `Last-Event-ID`) when there is one, else with the current
    /// event, so a new stream has something to show at once.
    pub fn start(&self, resume: Option<u64>, now: Duration) -> Start {
        let current = self.current(now);
        let next = match resume {
            Some(id) => id.saturating_add(1),
            None => current.unwrap_or(0),
        };
        if self.last.is_some_and(|last| next > last)
            || (resume.is_none() && self.last.is_some() && current == self.last)
        {
            return Start::Ended;
        }
        let oldest = current.map_or(0, |c| c.saturating_sub(MAX_CATCH_UP - 1));
        Start::At(next.max(oldest))
    }
}

/// How long the job `id` runs: see [`JOB_UNIT`].
pub fn job_duration(id: &str) -> Duration {
    id.rsplit_once('-')
        .and_then(|(_, units)| units.parse::<u32>().ok())
        .filter(|units| (1..=MAX_JOB_UNITS).contains(units))
        .map_or(DEFAULT_JOB_DURATION, |units| JOB_UNIT * units)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn ticker_ids_follow_the_wall_clock() {
        let clock = Schedule::ticker(SECOND);
        assert_eq!(clock.current(Duration::from_millis(41_999)), Some(41));
        assert_eq!(clock.due(42), Duration::from_secs(42));
        assert_eq!(
            clock.start(None, Duration::from_millis(41_500)),
            Start::At(41)
        );
    }

    #[test]
    fn a_resumed_stream_starts_right_after_its_last_event_id() {
        let clock = Schedule::ticker(SECOND);
        let now = Duration::from_secs(50);
        assert_eq!(clock.start(Some(45), now), Start::At(46));
        // Events 46..=50 are already due: the stream catches up at once.
        assert!(clock.due(46) <= now && clock.due(50) <= now && clock.due(51) > now);
    }

    #[test]
    fn catching_up_is_bounded() {
        let clock = Schedule::ticker(SECOND);
        let now = Duration::from_secs(10_000);
        assert_eq!(
            clock.start(Some(3), now),
            Start::At(10_000 - MAX_CATCH_UP + 1)
        );
    }

    #[test]
    fn a_job_counts_to_100_and_then_has_ended() {
        let started = Duration::from_secs(1_000);
        let job = Schedule::job(started, Duration::from_secs(10));
        assert_eq!(job.start(None, started), Start::At(0));
        assert_eq!(job.due(50), started + Duration::from_secs(5));
        assert_eq!(
            job.current(started + Duration::from_secs(99)),
            Some(JOB_LAST)
        );
        assert!(job.is_last(JOB_LAST));
        assert_eq!(job.start(Some(99), started), Start::At(100));
        assert_eq!(job.start(Some(100), started), Start::Ended);
        assert_eq!(
            job.start(None, started + Duration::from_secs(20)),
            Start::Ended
        );
    }

    #[test]
    fn a_job_id_ending_in_a_number_says_how_long_it_runs() {
        assert_eq!(job_duration("a1b2-1"), JOB_UNIT);
        assert_eq!(job_duration("a1b2-4"), JOB_UNIT * 4);
        assert_eq!(job_duration("a1b2-99"), DEFAULT_JOB_DURATION);
        assert_eq!(job_duration("build"), DEFAULT_JOB_DURATION);
    }
}

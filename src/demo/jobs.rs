//! The demo app's jobs: when each one started.
//!
//! A job (`/stream/jobs/{id}`) starts the first time anyone asks for it and
//! then progresses on its own clock ([`super::feed::Schedule::job`]); the
//! board only remembers the start, so every later request for the same id,
//! such as the proxy reconnecting with `Last-Event-ID`, sees the same job.
//! The board is bounded: jobs that finished a while ago are forgotten to make
//! room, and when it is full of live jobs new ones are refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::feed::job_duration;

/// The most jobs remembered at once.
pub const MAX_JOBS: usize = 1024;

/// How long a finished job is remembered (and answered with `204`) before
/// its id may be forgotten to make room.
pub const FINISHED_JOB_MEMORY: Duration = Duration::from_secs(600);

/// The longest job id accepted.
pub const MAX_JOB_ID_LEN: usize = 64;

/// Why a job could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The id is empty, too long or has characters other than ASCII
    /// letters, digits, `-` and `_`.
    BadId,
    /// [`MAX_JOBS`] jobs are running or finished recently.
    Full,
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::BadId => write!(
                f,
                "a job id is 1 to {MAX_JOB_ID_LEN} ASCII letters, digits, '-' or '_'"
            ),
            JobError::Full => write!(f, "the demo app has {MAX_JOBS} jobs already; try later"),
        }
    }
}

impl std::error::Error for JobError {}

/// When each known job started.
#[derive(Debug, Default)]
pub struct JobBoard {
    /// Job id → start, since the Unix epoch. Locked only to look up or insert.
    started: Mutex<HashMap<String, Duration>>,
}

impl JobBoard {
    /// When job `id` started, starting it at `now` if it is new.
    pub fn start(&self, id: &str, now: Duration) -> Result<Duration, JobError> {
        let valid = !id.is_empty()
            && id.len() <= MAX_JOB_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(JobError::BadId);
        }
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = started.get(id) {
            return Ok(*at);
        }
        if started.len() >= MAX_JOBS {
            started.retain(|id, at| {
                let finished = at.saturating_add(job_duration(id));
                now.saturating_sub(finished) < FINISHED_JOB_MEMORY
            });
            if started.len() >= MAX_JOBS {
                return Err(JobError::Full);
            }
        }
        started.insert(id.to_string(), now);
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_the_start_of_its_first_request() {
        let board = JobBoard::default();
        let first = Duration::from_secs(100);
        assert_eq!(board.start("a-1", first), Ok(first));
        assert_eq!(board.start("a-1", first * 2), Ok(first));
    }

    #[test]
    fn odd_job_ids_are_refused() {
        let board = JobBoard::default();
        assert_eq!(board.start("", Duration::ZERO), Err(JobError::BadId));
        assert_eq!(board.start("a/b", Duration::ZERO), Err(JobError::BadId));
        let long = "x".repeat(MAX_JOB_ID_LEN + 1);
        assert_eq!(board.start(&long, Duration::ZERO), Err(JobError::BadId));
    }

    #[test]
    fn a_full_board_forgets_long_finished_jobs_and_refuses_otherwise() {
        let board = JobBoard::default();
        for n in 0..MAX_JOBS {
            board.start(&format!("job{n}"), Duration::ZERO).unwrap();
        }
        assert_eq!(board.start("one-more", Duration::ZERO), Err(JobError::Full));
        let later = FINISHED_JOB_MEMORY * 2;
        assert_eq!(board.start("one-more", later), Ok(later));
    }
}

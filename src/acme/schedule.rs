//! When to renew a certificate and how long to wait after a failed order.
//! Pure arithmetic on times, so the rules are tested without a clock.

use std::time::{Duration, SystemTime};

/// The share of a certificate's lifetime after which it is renewed: two
/// thirds (Let's Encrypt's 90-day certificates: at 60 days, a month before
/// they expire; a 60-second test certificate: at 40 s).
const RENEW_AFTER: f64 = 2.0 / 3.0;

/// The most a renewal is moved earlier at random, as a share of the
/// lifetime, so that instances started together do not order together.
const JITTER: f64 = 1.0 / 30.0;

/// The first wait after a failed order.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// The longest wait between failed orders (Let's Encrypt allows 5 failed
/// validations per name per hour).
pub const LONGEST_RETRY: Duration = Duration::from_secs(3600);

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// at two thirds of its lifetime, up to a thirtieth earlier by `jitter`
/// (drawn from `0.0..1.0`).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let share = RENEW_AFTER - JITTER * jitter.clamp(0.0, 1.0);
    not_before + lifetime.mul_f64(share)
}

/// Waits between failed orders: doubling from [`FIRST_RETRY`] to
/// [`LONGEST_RETRY`], never past the point where the certificate in
/// service expires less a margin (so a short-lived one is retried in time).
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: FIRST_RETRY }
    }
}

impl Backoff {
    /// The wait before the next attempt, given how long the certificate in
    /// service (if any) has left.
    pub fn next_wait(&mut self, left: Option<Duration>) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(LONGEST_RETRY);
        match left {
            // Try at least twice more in what is left.
            Some(left) => wait.min(left / 3).max(Duration::from_secs(1)),
            None => wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn a_certificate_is_renewed_at_two_thirds_of_its_lifetime_less_jitter() {
        assert_eq!(renew_at(at(0), at(90), 0.0), at(60));
        assert_eq!(renew_at(at(0), at(90), 1.0), at(57));
        // 60-second certificates, as pebble issues in the tests.
        assert_eq!(renew_at(at(100), at(160), 0.0), at(140));
        // A certificate that ends before it begins is due at once.
        assert_eq!(renew_at(at(100), at(50), 0.5), at(100));
    }

    #[test]
    fn retries_double_up_to_an_hour_and_fit_in_what_is_left() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_wait(None), FIRST_RETRY);
        assert_eq!(backoff.next_wait(None), FIRST_RETRY * 2);
        for _ in 0..20 {
            backoff.next_wait(None);
        }
        assert_eq!(backoff.next_wait(None), LONGEST_RETRY);
        assert_eq!(
            backoff.next_wait(Some(Duration::from_secs(30))),
            Duration::from_secs(10)
        );
        assert_eq!(
            backoff.next_wait(Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
    }
}

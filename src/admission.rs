//! Whether a subscription request is served, and what it is told if not.
//!
//! Every `GET` on a topic path passes here before the hub sees it, in this
//! order (cheapest first, so a flood is turned away before it costs an auth
//! request):
//!
//! 1. the request's inputs: template parameters (length and characters) and
//!    `Last-Event-ID` (too long or unusable counts as absent);
//! 2. the caps of [`Limits`]: total subscriptions, per client address, rate
//!    of new subscriptions per address;
//! 3. the topic's `auth` endpoint, when it has one ([`Authorizer`]).
//!
//! An admitted request leaves with a [`Ticket`]: its place under the caps
//! and its resume point. A refused one gets an answer a
//! browser handles as intended: `400` for bad input, the app's `401`/`403`,
//! `503` with `Retry-After` when the auth endpoint cannot be asked, and for a
//! cap the configured answer — by default `200` with a jittered `retry:` and
//! a clean end, so an EventSource backs off and comes back.
//!
//! A storm of refusals must not become a storm of log lines: every refusal
//! is counted ([`STATS`], in the admin listener's `/stats`), and a cap is
//! logged once when it starts binding and once when it has refused nothing
//! for [`CAP_QUIET`] (an [`Episode`]). An auth endpoint's outage is logged the
//! same way, by the authorizer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::auth::{self, AuthRequest, Authorizer, Decision, Denial, Unavailable};
use crate::client::{self, Client};
use crate::config::{OverLimit, TopicConfig};
use crate::event_stream::{self, last_event_id_header};
use crate::limits::{Admitted, Limit, Limits};
use crate::route::{ParamError, TopicMatch};
use crate::sse;

/// An admitted subscription request.
pub struct Ticket {
    /// Its place under the caps, held for the stream's life.
    pub place: Admitted,
    /// Where it resumes (`Last-Event-ID`), if anywhere.
    pub last_event_id: Option<String>,
}

/// Why a subscription request is not served.
#[derive(Debug)]
pub enum Rejection {
    /// Malformed input (a template parameter): `400`.
    BadRequest(ParamError),
    /// The auth endpoint said no: its `401`/`403`, passed on.
    Denied(Denial),
    /// The auth endpoint could not be asked: `503`.
    AuthUnavailable(Unavailable),
    /// A cap was reached.
    OverLimit(Limit),
    /// The process is draining: `200`, a jittered `retry:` and a clean end,
    /// so the EventSource comes back (to another instance, or to this one's
    /// successor) spread out.
    Draining,
}

/// Decides on subscription requests.
pub struct Admission {
    pub limits: Arc<Limits>,
    pub authorizer: Arc<Authorizer>,
}

impl Admission {
    /// Checks a subscription request from `client` for `route` of the topic
    /// `topic`.
    pub async fn check(
        &self,
        session: &ServerSession,
        client: &Client,
        route: &TopicMatch,
        topic: &TopicConfig,
    ) -> Result<Ticket, Rejection> {
        STATS.settle(Instant::now());
        let limits = self.limits.settings();
        route
            .check_params(limits.max_param_len)
            .map_err(Rejection::BadRequest)?;
        let last_event_id = event_stream::resume_point(session, limits.max_last_event_id);
        let place = self.limits.admit(client.ip).map_err(Rejection::OverLimit)?;
        if let Some(target) = &topic.access.auth {
            let request = AuthRequest {
                topic: route.key.clone(),
                cookie: client::header(session, header::COOKIE),
                authorization: client::header(session, header::AUTHORIZATION),
                origin: client::header(session, header::ORIGIN),
                forwarded_for: client.forwarded_for.clone(),
                // Only an id a header carries unchanged: anything else would
                // make the request unsendable and look like an auth outage.
                last_event_id: last_event_id
                    .clone()
                    .filter(|id| last_event_id_header(id).is_some()),
            };
            match self
                .authorizer
                .decide(target, topic.access.auth_cache, &request)
                .await
            {
                Decision::Allow => {}
                Decision::Deny(denial) => return Err(Rejection::Denied(denial)),
                // Logged by the authorizer when the endpoint fails and when
                // it recovers; counted by `respond`.
                Decision::Unavailable(why) => return Err(Rejection::AuthUnavailable(why)),
            }
        }
        Ok(Ticket {
            place,
            last_event_id,
        })
    }
}

/// How long a cap must refuse nothing before it is logged as no longer
/// binding. Longer than a crowd's way back (`retry`, jittered up to twice).
pub const CAP_QUIET: Duration = Duration::from_secs(10);

/// A condition that comes and goes (a cap refusing subscriptions, a flood
/// of addresses): every occurrence is counted, and the log gets one line when
/// it starts and one when it ends, however many occurrences in between.
pub struct Episode {
    /// Occurrences since the process started.
    total: AtomicU64,
    /// Whether an episode is under way: read on every subscription request,
    /// so the lock is only taken while one is.
    ongoing: AtomicBool,
    /// The episode under way.
    state: Mutex<EpisodeState>,
}

/// The episode under way, if any.
struct EpisodeState {
    /// Its first occurrence.
    started: Option<Instant>,
    /// Its latest occurrence.
    last: Option<Instant>,
    /// Its occurrences so far.
    count: u64,
}

/// How an episode went, for its closing log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Its occurrences.
    pub count: u64,
    /// From its first occurrence to its last.
    pub lasted: Duration,
}

impl Episode {
    pub const fn new() -> Episode {
        Episode {
            total: AtomicU64::new(0),
            ongoing: AtomicBool::new(false),
            state: Mutex::new(EpisodeState {
                started: None,
                last: None,
                count: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, EpisodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one occurrence at `now`; true when it starts an episode (the
    /// caller logs that).
    pub fn occur(&self, now: Instant) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        state.last = Some(now);
        if state.started.is_some() {
            state.count += 1;
            return false;
        }
        state.started = Some(now);
        state.count = 1;
        self.ongoing.store(true, Ordering::Relaxed);
        true
    }

    /// Ends the episode under way if nothing occurred for `quiet`.
    pub fn settle(&self, now: Instant, quiet: Duration) -> Option<Ended> {
        if !self.ongoing.load(Ordering::Relaxed) {
            return None;
        }
        let mut state = self.state();
        let (started, last) = (state.started?, state.last?);
        if now.saturating_duration_since(last) < quiet {
            return None;
        }
        let ended = Ended {
            count: state.count,
            lasted: last.saturating_duration_since(started),
        };
        *state = EpisodeState {
            started: None,
            last: None,
            count: 0,
        };
        self.ongoing.store(false, Ordering::Relaxed);
        Some(ended)
    }

    /// Occurrences since the process started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether an episode is under way.
    pub fn ongoing(&self) -> bool {
        self.ongoing.load(Ordering::Relaxed)
    }
}

impl Default for Episode {
    fn default() -> Episode {
        Episode::new()
    }
}

/// Subscription requests rejected since the process started, by reason.
pub struct Refusals {
    /// `400`: a template parameter out of bounds.
    bad_request: AtomicU64,
    /// The app's `401`/`403`.
    denied: AtomicU64,
    /// `503`: the auth endpoint could not be asked.
    auth_unavailable: AtomicU64,
    /// Told to come back: the process was draining.
    draining: AtomicU64,
    /// Each cap, by [`Limit::index`].
    caps: [Episode; Limit::ALL.len()],
}

impl Refusals {
    const fn new() -> Refusals {
        Refusals {
            bad_request: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            auth_unavailable: AtomicU64::new(0),
            draining: AtomicU64::new(0),
            caps: [
                Episode::new(),
                Episode::new(),
                Episode::new(),
                Episode::new(),
                Episode::new(),
            ],
        }
    }

    /// Refusals since the process started, by reason: `bad_request`,
    /// `denied`, `auth_unavailable`, then each cap by its config key (the
    /// names of `/stats` and of the metrics).
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut reasons = vec![
            ("bad_request", load(&self.bad_request)),
            ("denied", load(&self.denied)),
            ("auth_unavailable", load(&self.auth_unavailable)),
            ("draining", load(&self.draining)),
        ];
        reasons.extend(Limit::ALL.map(|limit| (limit.key(), self.cap(limit).total())));
        reasons
    }

    /// Whether `limit` is refusing subscriptions now (an episode is under way).
    pub fn binding(&self, limit: Limit) -> bool {
        self.cap(limit).ongoing()
    }

    /// The episodes of `limit` binding.
    fn cap(&self, limit: Limit) -> &Episode {
        // In bounds: `caps` has one entry per `Limit::ALL`, and `index` is a
        // limit's place there.
        #[allow(clippy::indexing_slicing)]
        &self.caps[limit.index()]
    }

    /// Counts a refusal; logs a cap that starts binding.
    fn count(&self, refused: &Rejection, over_limit: OverLimit) {
        let counter = match refused {
            Rejection::BadRequest(_) => &self.bad_request,
            Rejection::Denied(_) => &self.denied,
            Rejection::AuthUnavailable(_) => &self.auth_unavailable,
            Rejection::Draining => &self.draining,
            Rejection::OverLimit(limit) => {
                if self.cap(*limit).occur(Instant::now()) {
                    let answer = match over_limit {
                        OverLimit::Retry => "200 and a retry: later",
                        OverLimit::TooManyRequests => "429",
                        OverLimit::Unavailable => "503",
                    };
                    log::warn!(
                        "{} reached: refusing subscriptions with {answer}; refusals are counted in /stats until it has refused none for {}s",
                        limit.key(),
                        CAP_QUIET.as_secs()
                    );
                }
                return;
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What admission did since the process started: refusals, the caps binding
/// now, and newcomers let past a full rate map. Process-wide, like Pingora's
/// own metrics: refusals are answered by a free function on every listener,
/// and the admin listener reads them.
pub struct AdmissionStats {
    pub refusals: Refusals,
    /// Addresses admitted without a rate bucket in a flood (see `limits`).
    pub rate_untracked: Episode,
}

/// The process's admission counts.
pub static STATS: AdmissionStats = AdmissionStats {
    refusals: Refusals::new(),
    rate_untracked: Episode::new(),
};

impl AdmissionStats {
    /// Logs the end of every episode that has been quiet long enough.
    pub fn settle(&self, now: Instant) {
        for limit in Limit::ALL {
            if let Some(ended) = self.refusals.cap(limit).settle(now, CAP_QUIET) {
                log::info!(
                    "{} no longer reached: {} subscriptions refused in {:.1}s",
                    limit.key(),
                    ended.count,
                    ended.lasted.as_secs_f64()
                );
            }
        }
        if let Some(ended) = self.rate_untracked.settle(now, CAP_QUIET) {
            log::info!(
                "subscribe_rate_per_ip: the flood of new addresses passed; {} were admitted without a rate cap",
                ended.count
            );
        }
    }

    /// The `admission` block of `/stats`.
    pub fn json(&self) -> Value {
        self.settle(Instant::now());
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let refusals = &self.refusals;
        let mut refused = serde_json::Map::new();
        for (reason, count) in refusals.by_reason() {
            refused.insert(reason.into(), count.into());
        }
        let binding: Vec<&str> = Limit::ALL
            .into_iter()
            .filter(|l| refusals.binding(*l))
            .map(Limit::key)
            .collect();
        let counts = &auth::COUNTS;
        json!({
            "refused": refused,
            "binding": binding,
            "rate_untracked": self.rate_untracked.total(),
            "auth": {
                "asked": load(&counts.asked),
                "cached": load(&counts.cached),
                "allowed": load(&counts.allowed),
                "denied": load(&counts.denied),
                "unavailable": load(&counts.unavailable),
                "connections_opened": load(&counts.connections_opened),
                "connections_reused": load(&counts.connections_reused),
            },
        })
    }
}

/// Seconds to put in `Retry-After`: the topic's `retry`, at least a second.
fn retry_after(retry: Duration) -> String {
    retry.as_secs().max(1).to_string()
}

/// Answers a refused subscription request. `retry` is the topic's
/// reconnection time, `over_limit` how caps are answered, `cors` the headers
/// every answer to the request carries: CORS, so a cross-origin page can
/// read it, and the listener's `Strict-Transport-Security`.
pub async fn respond(
    session: &mut ServerSession,
    refused: Rejection,
    retry: Duration,
    over_limit: OverLimit,
    cors: &[(HeaderName, String)],
) -> pingora::Result<()> {
    STATS.refusals.count(&refused, over_limit);
    session.set_keepalive(None);
    let (status, mut extra, body): (u16, Vec<(HeaderName, String)>, Bytes) = match refused {
        Rejection::BadRequest(reason) => (
            400,
            vec![],
            Bytes::from(format!("400 Bad Request: {reason}\n")),
        ),
        Rejection::Denied(denial) => {
            let mut headers = Vec::new();
            if let Some(challenge) = denial.www_authenticate {
                headers.push((header::WWW_AUTHENTICATE, challenge));
            }
            if let Some(content_type) = denial.content_type {
                headers.push((header::CONTENT_TYPE, content_type));
            }
            (denial.status, headers, denial.body)
        }
        Rejection::AuthUnavailable(_) => (
            503,
            vec![(header::RETRY_AFTER, retry_after(retry))],
            Bytes::from_static(b"503 Service Unavailable: cannot check this subscription now\n"),
        ),
        Rejection::Draining => {
            let why = " this instance is stopping; come back (elsewhere) in a moment";
            return retry_later(session, why, retry, cors).await;
        }
        Rejection::OverLimit(limit) => match over_limit {
            OverLimit::Retry => {
                let why = format!(" over limit: {}; come back later", limit.key());
                return retry_later(session, &why, retry, cors).await;
            }
            OverLimit::TooManyRequests => (
                429,
                vec![(header::RETRY_AFTER, retry_after(retry))],
                Bytes::from(format!("429 Too Many Requests: {} reached\n", limit.key())),
            ),
            OverLimit::Unavailable => (
                503,
                vec![(header::RETRY_AFTER, retry_after(retry))],
                Bytes::from(format!(
                    "503 Service Unavailable: {} reached\n",
                    limit.key()
                )),
            ),
        },
    };
    if !extra.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
        extra.push((header::CONTENT_TYPE, "text/plain; charset=utf-8".into()));
    }
    let mut response = ResponseHeader::build(status, Some(extra.len() + cors.len() + 1))?;
    for (name, value) in extra.iter().chain(cors) {
        response.insert_header(name.clone(), value)?;
    }
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(response)).await?;
    session.write_response_body(body, true).await
}

/// The EventSource-friendly answer to a cap: a stream that only says when to
/// come back (a jittered `retry:`, between one and two times the topic's, so
/// a crowd does not return at once) and ends cleanly.
async fn retry_later(
    session: &mut ServerSession,
    why: &str,
    retry: Duration,
    cors: &[(HeaderName, String)],
) -> pingora::Result<()> {
    let mut response = event_stream::response_head(session)?;
    for (name, value) in cors {
        response.insert_header(name.clone(), value)?;
    }
    session.write_response_header(Box::new(response)).await?;
    session
        .write_response_body(event_stream::jittered_retry_line(retry), false)
        .await?;
    session
        .write_response_body(sse::comment_lines(why), false)
        .await?;
    session.finish_body().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_episode_starts_once_counts_everything_and_ends_after_a_quiet_spell() {
        let episode = Episode::new();
        let quiet = Duration::from_secs(10);
        assert!(episode.occur(Instant::now()), "the first refusal starts it");
        for _ in 0..999 {
            tokio::time::advance(Duration::from_millis(5)).await;
            assert!(!episode.occur(Instant::now()));
            assert_eq!(episode.settle(Instant::now(), quiet), None);
        }
        assert_eq!(episode.total(), 1000);
        assert!(episode.ongoing());
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(episode.settle(Instant::now(), quiet), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        let ended = episode.settle(Instant::now(), quiet).expect("it ended");
        assert_eq!(ended.count, 1000);
        assert_eq!(ended.lasted, Duration::from_millis(5 * 999));
        assert!(!episode.ongoing());
        assert_eq!(episode.settle(Instant::now(), quiet), None, "ends once");
        assert!(episode.occur(Instant::now()), "a new storm starts again");
        assert_eq!(episode.total(), 1001);
    }
}

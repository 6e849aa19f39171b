//! A topic: one upstream stream's frames, shared by all its subscribers.
//!
//! The topic's upstream reader [`publish`](Topic::publish)es each encoded
//! frame once into the [`ReplayWindow`]; subscribers hold a [`Subscription`],
//! a cursor into that window plus a `watch` receiver that wakes them when the
//! head moves, a heartbeat is due or the topic closes. Waking reads the new
//! frames as `Bytes` handles under a short lock and writes them outside it, so
//! no lock is ever held across an `.await` and no frame is copied or formatted
//! per subscriber.
//!
//! The topic also keeps what a late joiner needs (the last event id, the
//! current `retry:`), the subscriber count the hub's linger logic watches,
//! the upstream's state for the stats endpoint, and delivery counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::replay::ReplayWindow;
use crate::config::{ResumeLost, TopicSettings};
use crate::sse;

/// Frames a subscriber takes from the window per wake-up: bounds the handles
/// it holds while writing, and lets a fast topic's subscribers take turns.
const BATCH_FRAMES: usize = 64;

/// Sent to every new subscriber right after `retry:` when nothing else
/// follows at once, so intermediaries see the stream start.
const OPENING_COMMENT: &[u8] = b": ok\n\n";

/// What wakes subscribers; published through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signal {
    /// Sequence number the next frame will get.
    pub head: u64,
    /// Heartbeats sent so far; a change means "write a heartbeat".
    pub heartbeats: u64,
    /// Set when every subscriber must end its stream.
    pub close: Option<CloseReason>,
}

/// Why a topic ends its subscribers' streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The upstream answered `204 No Content`: the topic is over.
    Ended,
    /// The process is stopping; browsers reconnect elsewhere.
    ShuttingDown,
}

/// The upstream connection's state, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamState {
    /// Opening a connection (attempt number, from 1).
    Connecting { attempt: u32 },
    /// Reading the stream.
    Connected,
    /// Waiting before the next attempt.
    BackingOff { attempt: u32, error: String },
    /// The upstream answered `204`: nothing more will come.
    Ended,
}

/// Counters for the stats endpoint (relaxed atomics: figures, not control).
#[derive(Debug, Default)]
pub struct TopicCounters {
    /// Frames published from the upstream.
    pub events_in: AtomicU64,
    /// Events written to subscribers, summed over subscribers (opening
    /// frames and heartbeats not counted).
    pub deliveries: AtomicU64,
    /// Subscribers disconnected for falling too far behind.
    pub slow_closures: AtomicU64,
    /// Upstream connections opened (successfully answered with a stream).
    pub upstream_connects: AtomicU64,
}

/// A snapshot of a topic, for the stats endpoint.
#[derive(Debug, Clone)]
pub struct TopicSnapshot {
    pub key: String,
    pub upstream_url: String,
    pub subscribers: usize,
    pub upstream: UpstreamState,
    pub last_event_id: Option<String>,
    pub window_frames: usize,
    pub window_bytes: usize,
    pub events_in: u64,
    pub deliveries: u64,
    pub slow_closures: u64,
    pub upstream_connects: u64,
}

/// One topic instance (a literal topic, or one value of a template).
pub struct Topic {
    /// The request path that names it: `/events/news`, `/events/jobs/42`.
    pub key: String,
    /// Where its upstream stream comes from, for logs and stats.
    pub upstream_url: String,
    /// Heartbeat, replay and lag settings.
    pub settings: TopicSettings,
    /// Everything that changes together, behind one short-lived lock.
    state: Mutex<TopicState>,
    /// Wakes subscribers.
    signal: watch::Sender<Signal>,
    /// Wakes the hub's driver when the subscriber count changes.
    pub subscribers_changed: Notify,
    /// Figures for operators.
    pub counters: TopicCounters,
}

/// The mutable part of a [`Topic`].
struct TopicState {
    /// Recent frames; also the live broadcast ring.
    window: ReplayWindow,
    /// The id of the newest event that set one, for priming late joiners
    /// and for the upstream's `Last-Event-ID` on reconnect.
    last_event_id: Option<Arc<str>>,
    /// `id: <last_event_id>` frame, encoded on first need after a change.
    priming_frame: Option<Bytes>,
    /// The `retry:` frame new subscribers get (config, or the upstream's).
    retry_frame: Bytes,
    /// Subscriptions alive.
    subscribers: usize,
    /// When the count last dropped to zero.
    idle_since: Option<Instant>,
    /// When the last frame or heartbeat went out.
    last_activity: Instant,
    /// The upstream connection's state.
    upstream: UpstreamState,
}

/// Where a new subscriber wants to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Live events only (primed with the current last event id).
    Live,
    /// Right after the event with this id (`Last-Event-ID`).
    After(String),
    /// From the oldest frame the window holds (the topic was just created
    /// for this subscriber, whose own resume point seeds the upstream).
    Oldest,
}

impl Topic {
    /// A new topic with an empty window; `last_event_id` seeds the
    /// upstream's first `Last-Event-ID`.
    pub fn new(
        key: String,
        upstream_url: String,
        settings: TopicSettings,
        last_event_id: Option<String>,
    ) -> Arc<Topic> {
        let (signal, _) = watch::channel(Signal::default());
        Arc::new(Topic {
            key,
            upstream_url,
            state: Mutex::new(TopicState {
                window: ReplayWindow::new(settings.replay, settings.replay_bytes),
                last_event_id: last_event_id.filter(|id| !id.is_empty()).map(Arc::from),
                priming_frame: None,
                retry_frame: sse::retry_frame(millis(settings.retry)),
                subscribers: 0,
                idle_since: Some(Instant::now()),
                last_activity: Instant::now(),
                upstream: UpstreamState::Connecting { attempt: 1 },
            }),
            settings,
            signal,
            subscribers_changed: Notify::new(),
            counters: TopicCounters::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, TopicState> {
        // A panic while holding this lock cannot leave the state half
        // updated in a way later readers would misread; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes one encoded frame to every subscriber and the window.
    ///
    /// `id` is the id the frame sets, if it sets one (`""` resets it).
    pub fn publish(&self, frame: Bytes, id: Option<Arc<str>>) {
        let head = {
            let mut state = self.state();
            if let Some(id) = &id {
                state.last_event_id = (!id.is_empty()).then(|| id.clone());
                state.priming_frame = None;
            }
            state.window.push(frame, id);
            state.last_activity = Instant::now();
            state.window.head()
        };
        self.counters.events_in.fetch_add(1, Ordering::Relaxed);
        self.signal.send_modify(|signal| signal.head = head);
    }

    /// Whether the window already holds a frame that set this id (used to
    /// drop events an upstream replays after a reconnect).
    pub fn has_id(&self, id: &str) -> bool {
        self.state().window.contains_id(id)
    }

    /// The id the upstream should resume after.
    pub fn last_event_id(&self) -> Option<Arc<str>> {
        self.state().last_event_id.clone()
    }

    /// Adopts the upstream's `retry:` for subscribers that join from now on
    /// (current subscribers receive it in the frame that carried it).
    pub fn set_retry(&self, retry_ms: u64) {
        self.state().retry_frame = sse::retry_frame(retry_ms);
    }

    /// When the next heartbeat is due if nothing is published before then.
    pub fn heartbeat_due(&self) -> Instant {
        self.state().last_activity + self.settings.heartbeat
    }

    /// Sends a heartbeat if the topic has been silent for its interval.
    pub fn heartbeat_if_due(&self) {
        {
            let mut state = self.state();
            if state.last_activity + self.settings.heartbeat > Instant::now() {
                return;
            }
            state.last_activity = Instant::now();
        }
        self.signal.send_modify(|signal| signal.heartbeats += 1);
    }

    /// Ends every subscriber's stream; new subscribers are refused.
    pub fn close(&self, reason: CloseReason) {
        if reason == CloseReason::Ended {
            self.set_upstream(UpstreamState::Ended);
        }
        self.signal.send_modify(|signal| {
            signal.close.get_or_insert(reason);
        });
    }

    /// Why the topic closed, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        self.signal.borrow().close
    }

    /// Records the upstream connection's state.
    pub fn set_upstream(&self, upstream: UpstreamState) {
        self.state().upstream = upstream;
    }

    /// Subscriptions alive.
    pub fn subscriber_count(&self) -> usize {
        self.state().subscribers
    }

    /// Since when the topic has had no subscribers (`None` while it has some).
    pub fn idle_since(&self) -> Option<Instant> {
        self.state().idle_since
    }

    /// Opens a subscription. The hub calls this under its map lock, so the
    /// count cannot go from 0 to 1 while the topic is being reclaimed.
    pub fn subscribe(self: &Arc<Self>, start: Start) -> Subscription {
        let mut receiver = self.signal.subscribe();
        let signal = *receiver.borrow_and_update();
        let mut state = self.state();
        state.subscribers += 1;
        state.idle_since = None;
        let mut opening = vec![state.retry_frame.clone()];
        let head = state.window.head();
        let cursor = match start {
            Start::Live => head,
            Start::Oldest => state.window.first(),
            Start::After(id) => match state.window.position_after(&id) {
                Some(position) => position,
                None => {
                    opening.push(sse::comment_frame(&format!(
                        " resume point {id:?} is no longer available; {}",
                        match self.settings.resume_lost {
                            ResumeLost::Replay => "replaying every event still kept",
                            ResumeLost::Live => "continuing with live events",
                        }
                    )));
                    match self.settings.resume_lost {
                        ResumeLost::Replay => state.window.first(),
                        ResumeLost::Live => head,
                    }
                }
            },
        };
        if cursor == head {
            // Nothing to replay: prime the browser's last event id so its own
            // reconnect carries a position, then open the stream.
            if let Some(priming) = priming_frame(&mut state) {
                opening.push(priming);
            }
            opening.push(Bytes::from_static(OPENING_COMMENT));
        }
        drop(state);
        self.subscribers_changed.notify_one();
        Subscription {
            topic: self.clone(),
            cursor,
            replay_until: head,
            seen_heartbeats: signal.heartbeats,
            receiver,
            opening,
            unconfirmed: 0,
        }
    }

    fn unsubscribe(&self) {
        {
            let mut state = self.state();
            state.subscribers -= 1;
            if state.subscribers == 0 {
                state.idle_since = Some(Instant::now());
            }
        }
        self.subscribers_changed.notify_one();
    }

    /// A snapshot for the stats endpoint.
    pub fn snapshot(&self) -> TopicSnapshot {
        let state = self.state();
        TopicSnapshot {
            key: self.key.clone(),
            upstream_url: self.upstream_url.clone(),
            subscribers: state.subscribers,
            upstream: state.upstream.clone(),
            last_event_id: state.last_event_id.as_deref().map(str::to_string),
            window_frames: state.window.len(),
            window_bytes: state.window.bytes(),
            events_in: self.counters.events_in.load(Ordering::Relaxed),
            deliveries: self.counters.deliveries.load(Ordering::Relaxed),
            slow_closures: self.counters.slow_closures.load(Ordering::Relaxed),
            upstream_connects: self.counters.upstream_connects.load(Ordering::Relaxed),
        }
    }
}

/// The `id:` frame for the current last event id, encoded once per change.
fn priming_frame(state: &mut TopicState) -> Option<Bytes> {
    let id = state.last_event_id.clone()?;
    if state.priming_frame.is_none() {
        // Ids come from the parser, which never yields one with CR, LF or NUL.
        state.priming_frame = sse::id_frame(&id).ok();
    }
    state.priming_frame.clone()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a subscriber should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Write the frames just appended to the buffer.
    Write,
    /// Nothing to write: wait for [`Subscription::changed`].
    Wait,
    /// The subscriber fell too far behind: end its stream (it will resume).
    TooSlow,
    /// The topic closed: end the stream.
    Closed(CloseReason),
}

/// One subscriber's place in a topic. Dropping it unsubscribes.
pub struct Subscription {
    topic: Arc<Topic>,
    /// Sequence number of the next frame to deliver.
    cursor: u64,
    /// The head when the subscription started: frames before it are the
    /// subscriber's replay, which does not count as lag.
    replay_until: u64,
    /// Heartbeats already accounted for.
    seen_heartbeats: u64,
    /// Wakes the subscriber.
    receiver: watch::Receiver<Signal>,
    /// Frames to write before any event: `retry:`, priming, comments.
    opening: Vec<Bytes>,
    /// Events handed out by `next` and not yet confirmed written.
    unconfirmed: usize,
}

impl Subscription {
    /// The topic subscribed to.
    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    /// Moves the opening frames (`retry:`, priming id, comments) into `out`.
    pub fn take_opening(&mut self, out: &mut Vec<Bytes>) {
        // `take`, not `append`: the emptied vector's buffer is freed, not
        // kept for the subscription's whole life.
        out.extend(std::mem::take(&mut self.opening));
    }

    /// Appends the next frames to write to `out` and says what to do.
    pub fn next(&mut self, out: &mut Vec<Bytes>) -> Next {
        let signal = *self.receiver.borrow_and_update();
        if let Some(reason) = signal.close {
            return Next::Closed(reason);
        }
        {
            let state = self.topic.state();
            if self.lagging(&state.window) {
                drop(state);
                self.topic
                    .counters
                    .slow_closures
                    .fetch_add(1, Ordering::Relaxed);
                return Next::TooSlow;
            }
            if self.cursor < state.window.head() {
                let from = self.cursor;
                self.cursor = state.window.read_from(from, BATCH_FRAMES, out);
                self.unconfirmed += (self.cursor - from) as usize;
                // frames keep the stream alive as well as a heartbeat would
                self.seen_heartbeats = signal.heartbeats;
                return Next::Write;
            }
        }
        if signal.heartbeats != self.seen_heartbeats {
            self.seen_heartbeats = signal.heartbeats;
            out.push(sse::heartbeat_frame());
            return Next::Write;
        }
        Next::Wait
    }

    /// Whether this subscriber is too far behind: frames published since it
    /// subscribed and not yet read exceed `max_lag` or `max_lag_bytes`, or
    /// frames it still needs were evicted. Its initial replay does not count.
    fn lagging(&self, window: &ReplayWindow) -> bool {
        let settings = &self.topic.settings;
        match (
            window.lag(self.cursor),
            window.lag(self.cursor.max(self.replay_until)),
        ) {
            (Some(_), Some(live)) => {
                live.frames > settings.max_lag as u64 || live.bytes > settings.max_lag_bytes as u64
            }
            _ => true,
        }
    }

    /// Checks the lag bound while a write is stuck; counts the closure when
    /// the subscriber has to go.
    pub fn is_too_slow(&self) -> bool {
        let slow = self.lagging(&self.topic.state().window);
        if slow {
            self.topic
                .counters
                .slow_closures
                .fetch_add(1, Ordering::Relaxed);
        }
        slow
    }

    /// Waits until there may be something new for [`next`](Self::next).
    pub async fn changed(&mut self) {
        // The sender lives in the topic this subscription keeps alive, so
        // the channel cannot close under us.
        let _ = self.receiver.changed().await;
    }

    /// Confirms that the events [`next`](Self::next) handed out were written.
    pub fn delivered(&mut self) {
        if self.unconfirmed > 0 {
            self.topic
                .counters
                .deliveries
                .fetch_add(self.unconfirmed as u64, Ordering::Relaxed);
            self.unconfirmed = 0;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.topic.unsubscribe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TopicSettings {
        TopicSettings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_millis(1500),
            replay: 8,
            replay_bytes: 4096,
            max_lag: 3,
            max_lag_bytes: 2048,
            resume_lost: ResumeLost::Replay,
            linger: Duration::from_secs(30),
            max_event_size: 64,
            backoff_max: Duration::from_secs(30),
            upstream_idle_timeout: None,
        }
    }

    fn topic() -> Arc<Topic> {
        Topic::new("/t".into(), "http://app/t".into(), settings(), None)
    }

    fn event(id: &str) -> (Bytes, Option<Arc<str>>) {
        let frame = sse::Event::builder()
            .id(id)
            .data(format!("event {id}"))
            .build()
            .unwrap()
            .encode();
        (frame, Some(Arc::from(id)))
    }

    fn publish(topic: &Topic, id: &str) {
        let (frame, id) = event(id);
        topic.publish(frame, id);
    }

    #[test]
    fn new_subscriber_gets_retry_priming_and_live_frames_only() {
        let topic = topic();
        publish(&topic, "1");
        let mut sub = topic.subscribe(Start::Live);
        let mut out = Vec::new();
        sub.take_opening(&mut out);
        assert_eq!(out[0], sse::retry_frame(1500));
        assert_eq!(out[1], sse::id_frame("1").unwrap());
        out.clear();
        assert_eq!(sub.next(&mut out), Next::Wait);
        publish(&topic, "2");
        assert_eq!(sub.next(&mut out), Next::Write);
        assert_eq!(out, vec![event("2").0]);
    }

    #[test]
    fn resume_delivers_exactly_the_events_after_the_id() {
        let topic = topic();
        for id in ["1", "2", "3"] {
            publish(&topic, id);
        }
        let mut sub = topic.subscribe(Start::After("1".into()));
        let mut out = Vec::new();
        assert_eq!(sub.next(&mut out), Next::Write);
        assert_eq!(out, vec![event("2").0, event("3").0]);
    }

    #[test]
    fn every_subscriber_gets_the_same_shared_bytes() {
        let topic = topic();
        let mut a = topic.subscribe(Start::Live);
        let mut b = topic.subscribe(Start::Live);
        publish(&topic, "1");
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        a.next(&mut out_a);
        b.next(&mut out_b);
        assert_eq!(out_a[0].as_ptr(), out_b[0].as_ptr(), "frame was copied");
    }

    #[test]
    fn subscriber_past_max_lag_is_too_slow_and_counted() {
        let topic = topic();
        let mut sub = topic.subscribe(Start::Live);
        for id in ["1", "2", "3", "4"] {
            publish(&topic, id);
        }
        assert_eq!(sub.next(&mut Vec::new()), Next::TooSlow);
        assert_eq!(topic.snapshot().slow_closures, 1);
    }

    #[test]
    fn initial_replay_does_not_count_as_lag() {
        let topic = topic();
        for id in ["1", "2", "3", "4", "5", "6"] {
            publish(&topic, id);
        }
        let mut sub = topic.subscribe(Start::After("1".into()));
        let mut out = Vec::new();
        assert_eq!(sub.next(&mut out), Next::Write);
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn lost_resume_point_replays_the_window_after_a_comment() {
        let topic = topic();
        publish(&topic, "1");
        let mut sub = topic.subscribe(Start::After("unknown".into()));
        let mut out = Vec::new();
        sub.take_opening(&mut out);
        assert!(String::from_utf8_lossy(&out[1]).starts_with(": resume point"));
        out.clear();
        assert_eq!(sub.next(&mut out), Next::Write);
        assert_eq!(out, vec![event("1").0]);
    }

    #[test]
    fn dropping_subscriptions_counts_down_to_idle() {
        let topic = topic();
        let sub = topic.subscribe(Start::Live);
        assert_eq!(topic.subscriber_count(), 1);
        assert!(topic.idle_since().is_none());
        drop(sub);
        assert_eq!(topic.subscriber_count(), 0);
        assert!(topic.idle_since().is_some());
    }

    #[test]
    fn close_reaches_waiting_subscribers() {
        let topic = topic();
        let mut sub = topic.subscribe(Start::Live);
        topic.close(CloseReason::Ended);
        assert_eq!(sub.next(&mut Vec::new()), Next::Closed(CloseReason::Ended));
    }
}

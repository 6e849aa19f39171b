//! A topic: one upstream stream's frames, shared by all its subscribers.
//!
//! The topic's upstream reader [`publish`](Topic::publish)es each encoded
//! frame once into the `ReplayWindow`; subscribers hold a [`Subscription`],
//! a cursor into that window plus a `watch` receiver that wakes them when the
//! head moves, a heartbeat is due or the topic closes. Waking reads the new
//! frames as `Bytes` handles under a short lock and writes them outside it, so
//! no lock is ever held across an `.await` and no frame is copied or formatted
//! per subscriber.
//!
//! A subscriber resuming from an id the window does not hold is handed to a
//! `CatchUp` (see `catch_up.rs`) that fetches what it missed from the app
//! for that id alone; it joins the window where the catch-up splices in.
//! Nothing a subscriber sends ever changes what the others get: the topic's
//! last event id, which late joiners are primed with and the upstream resumes
//! from, only ever comes from the topic's own upstream.
//!
//! The topic also keeps what a late joiner needs (the last event id, the
//! current `retry:`), the subscriber count the hub's linger logic watches,
//! the upstream's state for the stats endpoint, and delivery counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::budget::ReplayBudget;
use super::catch_up::{self, CatchUp, Outcome};
use super::replay::ReplayWindow;
use super::subscription::{Catching, Position, Subscription, BATCH_FRAMES};
use super::upstream::{UpstreamError, UpstreamSource};
use super::AbortOnDrop;
use crate::config::{Prime, ResumeLost, TopicSettings};
use crate::event_stream::last_event_id_header;
use crate::sse;

/// Sent to every new subscriber right after `retry:` when nothing else
/// follows at once, so intermediaries see the stream start.
const OPENING_COMMENT: &[u8] = b": ok\n";

/// What wakes subscribers; published through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signal {
    /// Sequence number the next frame will get.
    pub head: u64,
    /// Heartbeats sent so far; a change means "write a heartbeat".
    pub heartbeats: u64,
    /// Set when every subscriber must end its stream.
    pub close: Option<CloseReason>,
    /// When set with `close`, each subscriber ends at its own moment before
    /// this instant (a drain), not all at once.
    pub close_by: Option<Instant>,
}

/// Why a topic ends its subscribers' streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The upstream answered `204 No Content`: the topic is over.
    Ended,
    /// The process is stopping; browsers reconnect elsewhere.
    ShuttingDown,
    /// A reload removed the topic from the config.
    Removed,
    /// The topic's driver stopped unexpectedly; browsers reconnect and get
    /// a fresh instance of the topic.
    Failed,
}

/// The upstream connection's state, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamState {
    /// Opening a connection (attempt number, from 1).
    Connecting { attempt: u32 },
    /// Reading the stream.
    Connected,
    /// Waiting before the next attempt.
    BackingOff { attempt: u32, error: UpstreamError },
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
    /// Subscriptions opened.
    pub subscriptions: AtomicU64,
    /// Subscribers that resumed from the window.
    pub resumes_replayed: AtomicU64,
    /// Subscribers that resumed through a catch-up (joined the window after
    /// it, or found they had missed nothing).
    pub resumes_caught_up: AtomicU64,
    /// Subscribers disconnected for falling too far behind.
    pub slow_closures: AtomicU64,
    /// Subscribers disconnected because a write made no progress for two
    /// heartbeat intervals (a client that stopped reading a quiet topic).
    pub write_timeouts: AtomicU64,
    /// Upstream connections opened (successfully answered with a stream).
    pub upstream_connects: AtomicU64,
    /// Upstream events dropped for breaking `max_event_size`.
    pub events_skipped: AtomicU64,
    /// Catch-ups started (one per distinct resume point the window lacked).
    pub catch_ups: AtomicU64,
    /// Catch-ups that spliced into the window (or found nothing missed).
    pub catch_ups_spliced: AtomicU64,
    /// Subscribers whose resume point could not be served at all (an id no
    /// catch-up could ask for, `catch_up_max` reached, the app could not
    /// serve it): they got the `resume_lost` policy.
    pub resumes_lost: AtomicU64,
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
    pub write_timeouts: u64,
    pub upstream_connects: u64,
    pub events_skipped: u64,
    pub catch_ups: u64,
    pub catch_ups_running: usize,
    pub catch_ups_spliced: u64,
    pub resumes_lost: u64,
}

/// One topic instance (a literal topic, or one value of a template).
pub struct Topic {
    /// The request path that names it: `/events/news`, `/events/jobs/42`.
    pub key: String,
    /// The path as configured (`/events/jobs/{id}`): what metrics are
    /// labelled with, so their number is bounded by the config.
    pub config_path: Arc<str>,
    /// Where its upstream stream comes from (also asked by catch-ups); a
    /// reload may point it elsewhere.
    source: Mutex<Arc<UpstreamSource>>,
    /// Tells the upstream reader to reopen its stream now (from the
    /// topic's last id): its source changed.
    pub reopen_upstream: Notify,
    /// Everything that changes together, behind one short-lived lock.
    state: Mutex<TopicState>,
    /// Wakes subscribers.
    signal: watch::Sender<Signal>,
    /// Wakes the hub's driver when the subscriber count changes or the
    /// topic closes (both move its linger).
    pub subscribers_changed: Notify,
    /// Figures for operators.
    pub counters: TopicCounters,
    /// The process-wide bound on replay memory this window counts against.
    budget: Arc<ReplayBudget>,
    /// Whether reaching `catch_up_max` was logged (it is, once per topic).
    catch_up_cap_told: AtomicBool,
}

/// The mutable part of a [`Topic`].
struct TopicState {
    /// Heartbeat, replay and lag settings (a reload may change them).
    settings: TopicSettings,
    /// Recent frames; also the live broadcast ring.
    window: ReplayWindow,
    /// The id of the newest event that set one, for priming late joiners
    /// and for the upstream's `Last-Event-ID` on reconnect.
    last_event_id: Option<Arc<str>>,
    /// `id: <last_event_id>` frame, encoded on first need after a change.
    priming_frame: Option<Bytes>,
    /// The `retry:` line new subscribers get (config, or the upstream's).
    retry_line: Bytes,
    /// The heartbeat (`:` LF, padded as configured).
    heartbeat_line: Bytes,
    /// Subscriptions alive.
    subscribers: usize,
    /// When the count last dropped to zero.
    idle_since: Option<Instant>,
    /// When the last frame or heartbeat went out.
    last_activity: Instant,
    /// The upstream connection's state.
    upstream: UpstreamState,
    /// Catch-ups running, by resume point; each task is aborted if the
    /// topic goes first. At most `catch_up_max`.
    catch_ups: HashMap<Arc<str>, (Arc<CatchUp>, AbortOnDrop)>,
}

/// What reading the window for one subscriber gave.
pub(super) enum WindowRead {
    /// It fell too far behind (counted).
    TooSlow,
    /// This many frames were appended.
    Frames(u64),
    /// Nothing new.
    Nothing,
}

/// Where a new subscriber wants to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Live events only (primed with the current last event id).
    Live,
    /// Right after the event with this id (`Last-Event-ID`).
    After(String),
}

impl Topic {
    /// A new topic with an empty window and no last event id.
    pub fn new(
        key: String,
        config_path: Arc<str>,
        source: Arc<UpstreamSource>,
        settings: TopicSettings,
        budget: Arc<ReplayBudget>,
    ) -> Arc<Topic> {
        let (signal, _) = watch::channel(Signal::default());
        Arc::new(Topic {
            key,
            config_path,
            source: Mutex::new(source),
            reopen_upstream: Notify::new(),
            state: Mutex::new(TopicState {
                settings,
                window: ReplayWindow::new(settings.replay, settings.replay_bytes),
                last_event_id: None,
                priming_frame: None,
                retry_line: sse::retry_line(millis(settings.retry)),
                heartbeat_line: sse::padded_heartbeat_line(settings.heartbeat_padding),
                subscribers: 0,
                idle_since: Some(Instant::now()),
                last_activity: Instant::now(),
                upstream: UpstreamState::Connecting { attempt: 1 },
                catch_ups: HashMap::new(),
            }),
            signal,
            subscribers_changed: Notify::new(),
            counters: TopicCounters::default(),
            budget,
            catch_up_cap_told: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, TopicState> {
        // A panic while holding this lock cannot leave the state half
        // updated in a way later readers would misread; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Heartbeat, replay and lag settings, as they are now.
    pub fn settings(&self) -> TopicSettings {
        self.state().settings
    }

    /// Where the upstream stream comes from, as it is now.
    pub fn source(&self) -> Arc<UpstreamSource> {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a reloaded config: new settings from now on (the window's
    /// bounds, the `retry:` new subscribers get, heartbeats, lag bounds),
    /// and, when `source` is given, a new upstream: the reader reopens its
    /// stream there at once, from the topic's last id, and subscribers stay.
    pub fn reconfigure(&self, settings: TopicSettings, source: Option<Arc<UpstreamSource>>) {
        let freed = {
            let mut state = self.state();
            if state.settings.retry != settings.retry {
                state.retry_line = sse::retry_line(millis(settings.retry));
            }
            if state.settings.heartbeat_padding != settings.heartbeat_padding {
                state.heartbeat_line = sse::padded_heartbeat_line(settings.heartbeat_padding);
            }
            state.settings = settings;
            state
                .window
                .set_bounds(settings.replay, settings.replay_bytes)
        };
        self.budget.adjust(0, freed);
        if let Some(source) = source {
            *self.source.lock().unwrap_or_else(|p| p.into_inner()) = source;
            self.reopen_upstream.notify_one();
        }
        // The heartbeat or the linger may have moved.
        self.subscribers_changed.notify_one();
    }

    /// Publishes one encoded frame to every subscriber and the window.
    ///
    /// `id` is the id the frame sets, if it sets one (`""` resets it).
    pub fn publish(&self, frame: Bytes, id: Option<Arc<str>>) {
        let added = frame.len();
        let stamp = self.budget.stamp();
        let (head, removed) = {
            let mut state = self.state();
            if let Some(id) = &id {
                state.last_event_id = (!id.is_empty()).then(|| id.clone());
                state.priming_frame = None;
            }
            let before = state.window.bytes();
            state.window.push(frame, id, stamp);
            state.last_activity = Instant::now();
            let removed = before + added - state.window.bytes();
            (state.window.head(), removed)
        };
        self.budget.adjust(added, removed);
        self.counters.events_in.fetch_add(1, Ordering::Relaxed);
        self.signal.send_modify(|signal| signal.head = head);
    }

    /// Takes `id` as the topic's last event id without a frame for the
    /// window: the upstream primed the topic (see the reader).
    pub fn adopt_last_event_id(&self, id: Arc<str>) {
        let mut state = self.state();
        state.last_event_id = (!id.is_empty()).then_some(id);
        state.priming_frame = None;
    }

    /// Whether the window already holds a frame that set this id (used to
    /// drop events an upstream replays after a reconnect).
    pub fn has_id(&self, id: &str) -> bool {
        self.state().window.contains_id(id)
    }

    /// The sequence number of the frame that set `id`, if the window holds it.
    pub fn position_of(&self, id: &str) -> Option<u64> {
        self.state().window.position_of(id)
    }

    /// The position right after the frame that set `id`, if the window holds it.
    pub fn position_after(&self, id: &str) -> Option<u64> {
        self.state().window.position_after(id)
    }

    /// The sequence number the next frame will get.
    pub fn head(&self) -> u64 {
        self.state().window.head()
    }

    /// A receiver that wakes at every publish, heartbeat and close.
    pub fn watch(&self) -> watch::Receiver<Signal> {
        self.signal.subscribe()
    }

    /// When the oldest frame the budget may evict was published.
    pub fn oldest_evictable(&self) -> Option<u64> {
        self.state().window.oldest_evictable()
    }

    /// Evicts the oldest frame (never the newest) for the replay budget.
    pub fn evict_for_budget(&self) -> bool {
        let freed = self.state().window.evict_one();
        self.budget.adjust(0, freed);
        freed > 0
    }

    /// The id the upstream should resume after.
    pub fn last_event_id(&self) -> Option<Arc<str>> {
        self.state().last_event_id.clone()
    }

    /// Adopts the upstream's `retry:` for subscribers that join from now on
    /// (current subscribers receive it in the frame that carried it).
    pub fn set_retry(&self, retry_ms: u64) {
        self.state().retry_line = sse::retry_line(retry_ms);
    }

    /// The heartbeat line this topic's subscribers write.
    pub fn heartbeat_line(&self) -> Bytes {
        self.state().heartbeat_line.clone()
    }

    /// When the next heartbeat is due if nothing is published before then.
    pub fn heartbeat_due(&self) -> Instant {
        let state = self.state();
        state.last_activity + state.settings.heartbeat
    }

    /// Sends a heartbeat if the topic has been silent for its interval.
    pub fn heartbeat_if_due(&self) {
        {
            let mut state = self.state();
            if state.last_activity + state.settings.heartbeat > Instant::now() {
                return;
            }
            state.last_activity = Instant::now();
        }
        self.signal.send_modify(|signal| signal.heartbeats += 1);
    }

    /// Ends every subscriber's stream (after the frames already published);
    /// new subscribers are refused.
    pub fn close(&self, reason: CloseReason) {
        if reason == CloseReason::Ended {
            self.set_upstream(UpstreamState::Ended);
        }
        self.signal.send_modify(|signal| {
            signal.close.get_or_insert(reason);
        });
        self.subscribers_changed.notify_one();
    }

    /// Ends every subscriber's stream, each at its own moment before
    /// `until` (spread, so they do not all come back at once); new
    /// subscribers are refused.
    pub fn drain(&self, reason: CloseReason, until: Instant) {
        self.signal.send_modify(|signal| {
            if signal.close.is_none() {
                signal.close = Some(reason);
                signal.close_by = Some(until);
            }
        });
        self.subscribers_changed.notify_one();
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
        // A line, not a block: it joins the first event's block (or the
        // priming), so no client sees an event of its own for it.
        let mut opening = vec![state.retry_line.clone()];
        let head = state.window.head();
        let mut catching_up = None;
        self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        let late_joiner = start == Start::Live;
        let cursor = match start {
            Start::Live => head,
            Start::After(id) => match state.window.position_after(&id) {
                Some(position) => {
                    self.counters
                        .resumes_replayed
                        .fetch_add(1, Ordering::Relaxed);
                    position
                }
                None => match self.catch_up_for(&mut state, id.as_str()) {
                    Some(catch_up) => {
                        catching_up = Some(Catching::new(catch_up, head));
                        head
                    }
                    None => self.resume_lost(&state, &id, head, &mut opening),
                },
            },
        };
        if cursor == head {
            // Nothing to replay. A late joiner is primed as the topic says,
            // so its own reconnect carries a position; a resumer has its own.
            if late_joiner {
                prime(&mut state, &mut opening);
            }
            opening.push(Bytes::from_static(OPENING_COMMENT));
        }
        drop(state);
        self.subscribers_changed.notify_one();
        Subscription::new(
            self.clone(),
            Position {
                cursor,
                replay_until: head,
                seen_heartbeats: signal.heartbeats,
            },
            receiver,
            opening,
            catching_up,
        )
    }

    /// The running catch-up for `id`, or a new one; `None` when `id` cannot
    /// be sent to the app unchanged or `catch_up_max` are running.
    fn catch_up_for(self: &Arc<Self>, state: &mut TopicState, id: &str) -> Option<Arc<CatchUp>> {
        if let Some((catch_up, _)) = state.catch_ups.get(id) {
            return Some(catch_up.clone());
        }
        last_event_id_header(id)?;
        let settings = state.settings;
        if state.catch_ups.len() >= settings.catch_up_max {
            if !self.catch_up_cap_told.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "topic {}: catch_up_max ({}) catch-ups running; resume points past it get resume_lost (said once; see resumes_lost in /stats)",
                    self.key,
                    settings.catch_up_max
                );
            }
            return None;
        }
        let id: Arc<str> = Arc::from(id);
        let catch_up = CatchUp::new(id.clone(), settings.replay, settings.replay_bytes);
        let task = tokio::spawn(catch_up::run(
            catch_up.clone(),
            Arc::downgrade(self),
            self.source(),
        ));
        state
            .catch_ups
            .insert(id, (catch_up.clone(), AbortOnDrop(task.abort_handle())));
        self.counters.catch_ups.fetch_add(1, Ordering::Relaxed);
        Some(catch_up)
    }

    /// A catch-up ended: it is forgotten (new resumers from its id start
    /// afresh) and counted.
    pub fn catch_up_ended(&self, catch_up: &Arc<CatchUp>, outcome: &Outcome) {
        if matches!(outcome, Outcome::Spliced(_) | Outcome::UpToDate) {
            self.counters
                .catch_ups_spliced
                .fetch_add(1, Ordering::Relaxed);
        }
        let removed = {
            let mut state = self.state();
            match state.catch_ups.get(&catch_up.id) {
                Some((running, _)) if Arc::ptr_eq(running, catch_up) => {
                    state.catch_ups.remove(&catch_up.id)
                }
                _ => None,
            }
        };
        // The entry holds the task's abort handle; the task calling this
        // ends without another await, so dropping it here is harmless.
        drop(removed);
    }

    /// The lost-resume policy for a subscriber that arrived when the head
    /// was `arrived`: a comment in `opening`, and where it starts.
    fn resume_lost(
        &self,
        state: &TopicState,
        id: &str,
        arrived: u64,
        opening: &mut Vec<Bytes>,
    ) -> u64 {
        self.counters.resumes_lost.fetch_add(1, Ordering::Relaxed);
        opening.push(sse::comment_lines(&format!(
            " resume point {id:?} is no longer available; {}",
            match state.settings.resume_lost {
                ResumeLost::Replay => "replaying every event still kept",
                ResumeLost::Live => "continuing with live events",
            }
        )));
        match state.settings.resume_lost {
            ResumeLost::Replay => state.window.first(),
            // Live from when it arrived: what was published while its
            // catch-up was tried is not withheld.
            ResumeLost::Live => arrived.max(state.window.first()),
        }
    }

    /// The lost-resume policy for a subscriber whose catch-up failed: its
    /// comment goes to `out`; returns where it starts in the window.
    pub(super) fn resume_lost_after_catch_up(
        &self,
        id: &str,
        arrived: u64,
        out: &mut Vec<Bytes>,
    ) -> u64 {
        let state = self.state();
        self.resume_lost(&state, id, arrived, out)
    }

    /// Reads the window for a subscriber at `cursor` (advancing it) whose
    /// replay runs until `replay_until`: up to [`BATCH_FRAMES`] frames, or
    /// that it is too slow (counted), or that there is nothing new.
    pub(super) fn read_window(
        &self,
        cursor: &mut u64,
        replay_until: u64,
        out: &mut Vec<Bytes>,
    ) -> WindowRead {
        let state = self.state();
        if self.lagging(&state, *cursor, replay_until) {
            drop(state);
            self.counters.slow_closures.fetch_add(1, Ordering::Relaxed);
            return WindowRead::TooSlow;
        }
        if *cursor < state.window.head() {
            let from = *cursor;
            *cursor = state.window.read_from(from, BATCH_FRAMES, out);
            return WindowRead::Frames(*cursor - from);
        }
        WindowRead::Nothing
    }

    /// Whether a subscriber at `cursor` is too far behind (counted when it
    /// is): see [`lagging`](Self::lagging).
    pub(super) fn too_slow(&self, cursor: u64, replay_until: u64) -> bool {
        let state = self.state();
        let slow = self.lagging(&state, cursor, replay_until);
        drop(state);
        if slow {
            self.counters.slow_closures.fetch_add(1, Ordering::Relaxed);
        }
        slow
    }

    /// Whether a subscriber at `cursor` is too far behind: frames published
    /// since `replay_until` and not yet read exceed `max_lag` or
    /// `max_lag_bytes`, or frames it still needs were evicted. Its replay
    /// (frames before `replay_until`) does not count.
    fn lagging(&self, state: &TopicState, cursor: u64, replay_until: u64) -> bool {
        let window = &state.window;
        match (window.lag(cursor), window.lag(cursor.max(replay_until))) {
            (Some(_), Some(live)) => {
                live.frames > state.settings.max_lag as u64
                    || live.bytes > state.settings.max_lag_bytes as u64
            }
            _ => true,
        }
    }

    pub(super) fn unsubscribe(&self) {
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
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TopicSnapshot {
            key: self.key.clone(),
            upstream_url: self.source().url.clone(),
            subscribers: state.subscribers,
            upstream: state.upstream.clone(),
            last_event_id: state.last_event_id.as_deref().map(str::to_string),
            window_frames: state.window.len(),
            window_bytes: state.window.bytes(),
            events_in: count(&self.counters.events_in),
            deliveries: count(&self.counters.deliveries),
            slow_closures: count(&self.counters.slow_closures),
            write_timeouts: count(&self.counters.write_timeouts),
            upstream_connects: count(&self.counters.upstream_connects),
            events_skipped: count(&self.counters.events_skipped),
            catch_ups: count(&self.counters.catch_ups),
            catch_ups_running: state.catch_ups.len(),
            catch_ups_spliced: count(&self.counters.catch_ups_spliced),
            resumes_lost: count(&self.counters.resumes_lost),
        }
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        let held = self.state().window.bytes();
        self.budget.adjust(0, held);
    }
}

/// What a late joiner gets before live events, as the topic's `prime` says
/// (see [`Prime`]): appended to `opening`.
fn prime(state: &mut TopicState, opening: &mut Vec<Bytes>) {
    let by_id = match state.settings.prime {
        Prime::None => false,
        Prime::Id => true,
        Prime::Last => {
            let head = state.window.head();
            let had = opening.len();
            if head > state.window.first() {
                state.window.read_from(head - 1, 1, opening);
            }
            // Priming by id when the window holds nothing.
            opening.len() == had
        }
    };
    if by_id {
        if let Some(priming) = priming_frame(state) {
            opening.push(priming);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Next;

    fn settings() -> TopicSettings {
        TopicSettings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_millis(1500),
            replay: 8,
            replay_bytes: 4096,
            max_lag: 3,
            max_lag_bytes: 2048,
            resume_lost: ResumeLost::Replay,
            prime: Prime::Id,
            heartbeat_padding: 0,
            linger: Duration::from_secs(30),
            max_event_size: 64,
            backoff_max: Duration::from_secs(30),
            upstream_idle_timeout: None,
            catch_up_max: 4,
            catch_up_timeout: Duration::from_secs(30),
        }
    }

    fn source() -> Arc<UpstreamSource> {
        Arc::new(UpstreamSource {
            origin: crate::upstream_addr::UpstreamAddr::parse("127.0.0.1:9").unwrap(),
            path: "/t".into(),
            url: "http://127.0.0.1:9/t".into(),
            extra_headers: Vec::new(),
            connect: crate::upstream_addr::ConnectSettings {
                connect_timeout: Duration::from_secs(1),
                tls_verify: true,
                ca: None,
            },
            connector: Arc::new(pingora::connectors::http::Connector::new(None)),
        })
    }

    fn topic() -> Arc<Topic> {
        topic_with(settings())
    }

    fn topic_with(settings: TopicSettings) -> Arc<Topic> {
        Topic::new(
            "/t".into(),
            Arc::from("/t"),
            source(),
            settings,
            Arc::new(ReplayBudget::new(usize::MAX)),
        )
    }

    /// The bytes a new subscription opens with.
    fn opening(sub: &mut Subscription) -> Vec<u8> {
        let mut out = Vec::new();
        sub.take_opening(&mut out);
        out.concat()
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
        assert_eq!(out.concat(), b"retry: 1500\nid: 1\n\n: ok\n");
        out.clear();
        assert_eq!(sub.next(&mut out), Next::Wait);
        publish(&topic, "2");
        assert_eq!(sub.next(&mut out), Next::Write);
        assert_eq!(out, vec![event("2").0]);
    }

    #[test]
    fn the_opening_is_written_in_one_piece() {
        let topic = topic();
        publish(&topic, "1");
        let mut sub = topic.subscribe(Start::Live);
        let mut out = Vec::new();
        sub.take_opening(&mut out);
        assert_eq!(
            out,
            vec![Bytes::from_static(b"retry: 1500\nid: 1\n\n: ok\n")]
        );
    }

    #[test]
    fn the_opening_is_one_block_whose_retry_joins_the_priming() {
        let topic = topic();
        publish(&topic, "1");
        let mut sub = topic.subscribe(Start::Live);
        let parsed = parse(&opening(&mut sub));
        // One block: the retry and the id together, firing no event.
        assert_eq!(parsed.len(), 2, "{parsed:?}");
        let sse::Item::Event(block) = &parsed[0] else {
            panic!("{parsed:?}")
        };
        assert_eq!((block.id(), block.retry()), (Some("1"), Some(1500)));
        assert!(!block.fires_event());
    }

    #[test]
    fn with_prime_none_a_late_joiner_gets_no_block_of_its_own() {
        let topic = topic_with(TopicSettings {
            prime: Prime::None,
            ..settings()
        });
        publish(&topic, "1");
        let mut sub = topic.subscribe(Start::Live);
        assert_eq!(opening(&mut sub), b"retry: 1500\n: ok\n");
    }

    #[test]
    fn with_prime_last_a_late_joiner_gets_the_latest_event() {
        let topic = topic_with(TopicSettings {
            prime: Prime::Last,
            ..settings()
        });
        let mut sub = topic.subscribe(Start::Live);
        // Nothing yet: nothing to prime with.
        assert_eq!(opening(&mut sub), b"retry: 1500\n: ok\n");
        publish(&topic, "1");
        publish(&topic, "2");
        let mut late = topic.subscribe(Start::Live);
        let mut expected = b"retry: 1500\n".to_vec();
        expected.extend_from_slice(&event("2").0);
        expected.extend_from_slice(b": ok\n");
        assert_eq!(opening(&mut late), expected);
        // And then live events only.
        let mut out = Vec::new();
        assert_eq!(late.next(&mut out), Next::Wait);
    }

    #[test]
    fn a_resumer_with_nothing_missed_is_not_primed() {
        let topic = topic();
        publish(&topic, "1");
        let mut sub = topic.subscribe(Start::After("1".into()));
        // No id-only block: a client that dispatches every block would see
        // an empty event at each reconnect.
        assert_eq!(opening(&mut sub), b"retry: 1500\n: ok\n");
    }

    #[test]
    fn heartbeats_are_a_comment_line_padded_as_configured() {
        let padded = topic_with(TopicSettings {
            heartbeat_padding: 4,
            ..settings()
        });
        assert_eq!(&padded.heartbeat_line()[..], b":    \n");
        assert_eq!(&topic().heartbeat_line()[..], b":\n");
    }

    /// Parses `bytes` as a whole stream.
    fn parse(bytes: &[u8]) -> Vec<sse::Item> {
        let mut parser = sse::Parser::new(sse::ParserLimits::default());
        let mut items = Vec::new();
        parser.feed(bytes, &mut items);
        items
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
    fn resume_point_no_catch_up_can_ask_for_replays_the_window_after_a_comment() {
        let topic = topic();
        publish(&topic, "1");
        // A control character cannot go in a Last-Event-ID header.
        let mut sub = topic.subscribe(Start::After("un\u{1}known".into()));
        let opening = String::from_utf8(opening(&mut sub)).unwrap();
        assert!(
            opening
                .lines()
                .nth(1)
                .unwrap()
                .starts_with(": resume point"),
            "{opening}"
        );
        let mut out = Vec::new();
        assert_eq!(sub.next(&mut out), Next::Write);
        assert_eq!(out, vec![event("1").0]);
        assert_eq!(topic.snapshot().resumes_lost, 1);
    }

    #[tokio::test]
    async fn resume_points_past_catch_up_max_get_the_lost_policy_and_are_counted() {
        let topic = topic();
        publish(&topic, "1");
        // Nothing runs between these (one thread, no await): four catch-ups
        // are running when the fifth resume point arrives.
        let subs: Vec<_> = ["a", "b", "c", "d", "e"]
            .into_iter()
            .map(|id| topic.subscribe(Start::After(id.into())))
            .collect();
        let snapshot = topic.snapshot();
        assert_eq!(snapshot.catch_ups, 4);
        assert_eq!(snapshot.catch_ups_running, 4);
        assert_eq!(snapshot.resumes_lost, 1);
        // Resumers from the same id share a running catch-up.
        let _again = topic.subscribe(Start::After("a".into()));
        assert_eq!(topic.snapshot().catch_ups, 4);
        drop(subs);
    }

    #[test]
    fn frames_published_before_a_close_still_reach_slower_subscribers() {
        let topic = topic();
        let mut sub = topic.subscribe(Start::Live);
        publish(&topic, "1");
        publish(&topic, "2");
        topic.close(CloseReason::Ended);
        let mut out = Vec::new();
        assert_eq!(sub.next(&mut out), Next::Write);
        assert_eq!(out, vec![event("1").0, event("2").0]);
        assert_eq!(sub.next(&mut Vec::new()), Next::Closed(CloseReason::Ended));
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

//! Catch-ups: a resuming subscriber's missed events, from the app, for that
//! resume point alone.
//!
//! A subscriber that comes back with a `Last-Event-ID` the topic's window
//! holds is served from the window. One whose id the window does not hold
//! (the proxy restarted, the browser failed over from another instance, it
//! was away longer than the window reaches) would otherwise lose events or
//! get doubles. Its id must not become the topic's shared upstream request
//! either: one client's value would then decide what every subscriber gets.
//! So it gets a **catch-up**: one request to the topic's upstream with that
//! `Last-Event-ID`, shared by every subscriber resuming from the same id.
//!
//! The catch-up reads what the app replays after the id and keeps it in a
//! small window of its own, from which its subscribers read as they would
//! from the topic's. It ends by **splicing** into the topic: at the first
//! event it reads that the topic's window already holds, or as soon as the
//! topic's window holds the last event the catch-up read (the topic's own
//! stream caught up with it). Its subscribers then read everything the
//! catch-up holds and continue in the topic's window right after it: no gap,
//! no double, whatever the order in which subscribers and events arrived.
//!
//! ```text
//!  app ──▶ topic's stream ──▶ window: … 41 42 43 44 45 …
//!  app ──▶ catch-up (Last-Event-ID: 37) ──▶ 38 39 40 41 ┐ 41 is in the window:
//!          subscribers at 37 read 38 39 40, then ───────┴▶ continue at 41
//! ```
//!
//! A catch-up is bounded: per topic at most `catch_up_max` run at once, each
//! for at most `catch_up_timeout`, each holding at most the topic's `replay`
//! frames and `replay_bytes`. How it ends decides what its subscribers get:
//!
//! - spliced: the window, from the splice point on;
//! - the app delivered nothing and the topic published nothing meanwhile
//!   (a quiet topic: the subscriber missed nothing): the topic, live;
//! - the app could not serve it (no connection, a non-`200` answer, a
//!   timeout) before delivering anything: the topic's lost-resume policy
//!   (`resume_lost`), for those subscribers alone;
//! - it stopped after delivering events (too many to hold, or the app broke
//!   off): its subscribers' streams end cleanly once they read what it
//!   holds, and they come back (after `retry`) with the id of the last
//!   event they got, for a new catch-up from there.
//!
//! While a catch-up runs its subscribers get the topic's heartbeats, never
//! an error.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::watch;

use super::replay::ReplayWindow;
use super::topic::Topic;
use super::upstream::{EventReader, Opened, UpstreamError, UpstreamSource};
use crate::sse::{Item, ParserLimits};

/// One catch-up: the events after one `Last-Event-ID`.
pub struct CatchUp {
    /// The resume point it asks the app for.
    pub id: Arc<str>,
    /// What it has read and how it stands.
    state: Mutex<CatchUpState>,
    /// Bumped at every change, to wake its subscribers.
    changed: watch::Sender<u64>,
}

/// The mutable part of a [`CatchUp`].
struct CatchUpState {
    /// The events read so far (frames and the ids they set).
    frames: ReplayWindow,
    /// Whether the catch-up still runs, and how it ended.
    outcome: Outcome,
}

/// How a catch-up stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still reading.
    Running,
    /// Spliced: after its frames, continue in the topic's window at this
    /// sequence number.
    Spliced(u64),
    /// Nothing was missed (no event from the app, none on the topic):
    /// continue with the topic live.
    UpToDate,
    /// The app could not serve it; nothing was delivered.
    Failed(UpstreamError),
    /// It stopped after delivering events: end the stream once they are
    /// read, so the subscriber resumes from its last one.
    Stopped,
}

/// What a subscriber reading a catch-up should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUpRead {
    /// Frames were appended; this many of them.
    Frames(u64),
    /// Nothing new yet: wait.
    Pending,
    /// Continue in the topic's window at this sequence number.
    Join(u64),
    /// Continue with the topic live.
    Live,
    /// The resume point cannot be served: apply the lost-resume policy.
    Lost,
    /// End the stream cleanly; the subscriber resumes from its last event.
    Reconnect,
    /// The subscriber fell behind what the catch-up still holds.
    TooSlow,
}

impl CatchUp {
    /// A catch-up from `id`, holding at most `max_frames` and `max_bytes`.
    pub fn new(id: Arc<str>, max_frames: usize, max_bytes: usize) -> Arc<CatchUp> {
        Arc::new(CatchUp {
            id,
            state: Mutex::new(CatchUpState {
                frames: ReplayWindow::new(max_frames, max_bytes),
                outcome: Outcome::Running,
            }),
            changed: watch::channel(0).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, CatchUpState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that wakes at every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Where a subscriber joining now starts reading.
    pub fn first(&self) -> u64 {
        self.state().frames.first()
    }

    /// How it stands.
    pub fn outcome(&self) -> Outcome {
        self.state().outcome.clone()
    }

    /// Reads up to `max` frames from `cursor` into `out` (advancing it), or
    /// says what to do once every frame has been read.
    pub fn read(&self, cursor: &mut u64, max: usize, out: &mut Vec<Bytes>) -> CatchUpRead {
        let state = self.state();
        if *cursor < state.frames.first() {
            return CatchUpRead::TooSlow;
        }
        if *cursor < state.frames.head() {
            let from = *cursor;
            *cursor = state.frames.read_from(from, max, out);
            return CatchUpRead::Frames(*cursor - from);
        }
        match &state.outcome {
            Outcome::Running => CatchUpRead::Pending,
            Outcome::Spliced(at) => CatchUpRead::Join(*at),
            Outcome::UpToDate => CatchUpRead::Live,
            Outcome::Failed(_) => CatchUpRead::Lost,
            Outcome::Stopped => CatchUpRead::Reconnect,
        }
    }

    fn push(&self, frame: Bytes, id: Option<Arc<str>>) -> bool {
        let fits = {
            let mut state = self.state();
            let fits = state.frames.len() < state.frames.max_frames()
                && state.frames.bytes() + frame.len() <= state.frames.max_bytes();
            if fits {
                state.frames.push(frame, id, 0);
            }
            fits
        };
        if fits {
            self.changed.send_modify(|n| *n += 1);
        }
        fits
    }

    fn finish(&self, outcome: Outcome) {
        self.state().outcome = outcome;
        self.changed.send_modify(|n| *n += 1);
    }

    /// The id of the last event read, or the resume point itself.
    fn last_id(&self) -> Arc<str> {
        self.state()
            .frames
            .newest_id()
            .cloned()
            .unwrap_or_else(|| self.id.clone())
    }

    fn delivered_anything(&self) -> bool {
        self.state().frames.head() > 0
    }
}

/// Runs a catch-up for `topic` (held weakly: a topic reclaimed while its
/// catch-up runs takes the catch-up's task down with it) until it ends, and
/// records how.
pub async fn run(catch_up: Arc<CatchUp>, topic: Weak<Topic>, source: Arc<UpstreamSource>) {
    let Some(settings) = topic.upgrade().map(|t| t.settings()) else {
        return;
    };
    let Some(started_head) = topic.upgrade().map(|t| t.head()) else {
        return;
    };
    let outcome = match tokio::time::timeout(
        settings.catch_up_timeout,
        follow(&catch_up, &topic, &source),
    )
    .await
    {
        // The app had nothing after the id and said so by ending the
        // stream: as at the deadline, nothing was missed if the topic
        // published nothing since either.
        Ok(Outcome::Failed(UpstreamError::Ended))
            if topic.upgrade().is_some_and(|t| t.head() == started_head) =>
        {
            Outcome::UpToDate
        }
        Ok(outcome) => outcome,
        // Still open at the deadline: if the topic published nothing
        // since, nothing was missed (the app had nothing after the id).
        Err(_) if topic.upgrade().is_some_and(|t| t.head() == started_head) => Outcome::UpToDate,
        Err(_) if catch_up.delivered_anything() => Outcome::Stopped,
        Err(_) => Outcome::Failed(UpstreamError::NoAnswer(settings.catch_up_timeout)),
    };
    if let Some(topic) = topic.upgrade() {
        topic.catch_up_ended(&catch_up, &outcome);
    }
    catch_up.finish(outcome);
}

/// Opens the request and reads until the catch-up splices or fails.
async fn follow(catch_up: &CatchUp, topic: &Weak<Topic>, source: &UpstreamSource) -> Outcome {
    let failed = |error| {
        if catch_up.delivered_anything() {
            Outcome::Stopped
        } else {
            Outcome::Failed(error)
        }
    };
    let session = match source.open(Some(&catch_up.id)).await {
        Ok(Opened::Stream(session)) => session,
        Ok(Opened::NoContent) => return Outcome::Failed(UpstreamError::Status(204)),
        Err(error) => return Outcome::Failed(error),
    };
    let Some((settings, mut topic_changed)) = topic.upgrade().map(|t| (t.settings(), t.watch()))
    else {
        return Outcome::Failed(UpstreamError::Ended);
    };
    let mut reader = EventReader::new(
        session,
        ParserLimits {
            max_line_len: settings.max_event_size,
            max_event_size: settings.max_event_size,
        },
        None,
    );
    let mut items = Vec::new();
    loop {
        // While a read is pending, the topic's own stream may reach what the
        // catch-up read. The read itself is never dropped half done.
        let read = {
            let read = reader.read(&mut items);
            tokio::pin!(read);
            loop {
                let Some(topic_now) = topic.upgrade() else {
                    return Outcome::Failed(UpstreamError::Ended);
                };
                if let Some(at) = topic_now.position_after(&catch_up.last_id()) {
                    return Outcome::Spliced(at);
                }
                drop(topic_now);
                tokio::select! {
                    read = &mut read => break read,
                    _ = topic_changed.changed() => {}
                }
            }
        };
        if let Err(error) = read {
            return failed(error);
        }
        let Some(topic_now) = topic.upgrade() else {
            return Outcome::Failed(UpstreamError::Ended);
        };
        for item in items.drain(..) {
            let Item::Event(event) = item else { continue };
            let id = event.id().filter(|id| !id.is_empty()).map(Arc::<str>::from);
            if let Some(at) = id.as_deref().and_then(|id| topic_now.position_of(id)) {
                // The topic holds this event: continue there.
                return Outcome::Spliced(at);
            }
            if !catch_up.push(event.encode(), id) {
                return Outcome::Stopped;
            }
        }
    }
}

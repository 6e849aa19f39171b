//! A subscription: one subscriber's place in a topic.
//!
//! A [`Subscription`] is a cursor into the topic's replay window (the
//! sequence number of the next frame it needs) and a `watch` receiver that
//! wakes it when the head moves, a heartbeat is due or the topic closes.
//! [`Subscription::next`] says what to write next as a [`Next`], appending
//! shared `Bytes` handles to the caller's buffer under a short lock; the
//! caller (`subscriber.rs`) writes them outside it and confirms with
//! [`Subscription::delivered`]. Replay, live delivery and catching up after a
//! slow write are the same read from the cursor on, so there is no seam where
//! a frame could be lost or doubled.
//!
//! A subscriber resuming from an id the window lacks first reads its
//! catch-up (`catch_up.rs`), then joins the window where the catch-up
//! splices in. Dropping the subscription unsubscribes it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::catch_up::{CatchUp, CatchUpRead};
use super::topic::{CloseReason, Signal, Topic, WindowRead};

/// Frames a subscriber takes from the window per wake-up: bounds the handles
/// it holds while writing, and lets a fast topic's subscribers take turns.
pub(super) const BATCH_FRAMES: usize = 64;

/// What a subscriber should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Write the frames just appended to the buffer.
    Write,
    /// Nothing to write: wait for [`Subscription::changed`].
    Wait,
    /// The subscriber fell too far behind: end its stream (it will resume).
    TooSlow,
    /// Its catch-up stopped part way: end its stream cleanly so it resumes
    /// from the last event it got.
    Resume,
    /// The topic closed: end the stream.
    Closed(CloseReason),
}

/// Where a subscriber stands in its topic's window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    /// Sequence number of the next frame to deliver.
    pub cursor: u64,
    /// The head when the subscription started (or joined the window after a
    /// catch-up): frames before it are the subscriber's replay, which does
    /// not count as lag.
    pub replay_until: u64,
    /// Heartbeats already accounted for.
    pub seen_heartbeats: u64,
}

/// A subscriber reading a catch-up before it joins the window.
pub(super) struct Catching {
    catch_up: Arc<CatchUp>,
    /// The topic's head when the subscriber arrived.
    arrived: u64,
    /// The next frame to read in the catch-up.
    cursor: u64,
    /// Wakes the subscriber when the catch-up reads or ends.
    changed: watch::Receiver<u64>,
}

impl Catching {
    /// A subscriber that arrived when the topic's head was `arrived`, reading
    /// `catch_up` from its start.
    pub(super) fn new(catch_up: Arc<CatchUp>, arrived: u64) -> Box<Catching> {
        Box::new(Catching {
            arrived,
            cursor: catch_up.first(),
            changed: catch_up.subscribe(),
            catch_up,
        })
    }
}

/// One subscriber's place in a topic. Dropping it unsubscribes.
pub struct Subscription {
    topic: Arc<Topic>,
    /// Its cursor, replay bound and heartbeat count.
    position: Position,
    /// Wakes the subscriber.
    receiver: watch::Receiver<Signal>,
    /// Frames to write before any event: `retry:`, priming, comments.
    opening: Vec<Bytes>,
    /// Events handed out by `next` and not yet confirmed written.
    unconfirmed: usize,
    /// The catch-up it reads before joining the window, if any (boxed: most
    /// subscriptions never have one, and all of them live long).
    catching_up: Option<Box<Catching>>,
    /// When its stream ends in a drain: a moment drawn once, uniformly
    /// before the drain's end, so a drained topic's subscribers leave (and
    /// come back) spread out.
    closing_at: Option<Instant>,
}

impl Subscription {
    /// A subscription the topic has counted (see `Topic::subscribe`).
    pub(super) fn new(
        topic: Arc<Topic>,
        position: Position,
        receiver: watch::Receiver<Signal>,
        opening: Vec<Bytes>,
        catching_up: Option<Box<Catching>>,
    ) -> Subscription {
        Subscription {
            topic,
            position,
            receiver,
            opening,
            unconfirmed: 0,
            catching_up,
            closing_at: None,
        }
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    /// Moves the opening (`retry:`, priming id, comments) into `out`, as
    /// one frame: one write, so one DATA frame or chunk for all of it (a
    /// few dozen bytes copied once per subscription, not per event).
    pub fn take_opening(&mut self, out: &mut Vec<Bytes>) {
        // `take`: the emptied vector's buffer is freed, not kept for the
        // subscription's whole life.
        let opening = std::mem::take(&mut self.opening);
        match opening.as_slice() {
            [] => {}
            [one] => out.push(one.clone()),
            several => out.push(Bytes::from(several.concat())),
        }
    }

    /// Why the stream must end now, if it must: at once when the topic
    /// closed, or at this subscriber's moment when it drains.
    fn closing(&mut self, signal: &Signal) -> Option<CloseReason> {
        let reason = signal.close?;
        let Some(until) = signal.close_by else {
            return Some(reason);
        };
        let now = Instant::now();
        let at = *self.closing_at.get_or_insert_with(|| {
            now + until
                .saturating_duration_since(now)
                .mul_f64(fastrand::f64())
        });
        (now >= at).then_some(reason)
    }

    /// Appends the next frames to write to `out` and says what to do.
    pub fn next(&mut self, out: &mut Vec<Bytes>) -> Next {
        let signal = *self.receiver.borrow_and_update();
        let closing = self.closing(&signal);
        if self.catching_up.is_some() {
            if let Some(reason) = closing {
                return Next::Closed(reason);
            }
            match self.read_catch_up(out) {
                Some(Next::Wait) => {}
                Some(next) => {
                    if next == Next::Write {
                        self.position.seen_heartbeats = signal.heartbeats;
                    }
                    return next;
                }
                // Joined the window: read it below.
                None => {}
            }
        }
        if self.catching_up.is_none() {
            let position = &mut self.position;
            // Frames published before a close are still delivered.
            match self
                .topic
                .read_window(&mut position.cursor, position.replay_until, out)
            {
                WindowRead::TooSlow => return Next::TooSlow,
                WindowRead::Frames(n) => {
                    self.unconfirmed += n as usize;
                    // frames keep the stream alive as well as a heartbeat would
                    position.seen_heartbeats = signal.heartbeats;
                    return Next::Write;
                }
                WindowRead::Nothing => {}
            }
        }
        if let Some(reason) = closing {
            return Next::Closed(reason);
        }
        if signal.heartbeats != self.position.seen_heartbeats {
            self.position.seen_heartbeats = signal.heartbeats;
            out.push(self.topic.heartbeat_line());
            return Next::Write;
        }
        Next::Wait
    }

    /// Reads the catch-up; `None` once the subscriber joined the window.
    fn read_catch_up(&mut self, out: &mut Vec<Bytes>) -> Option<Next> {
        let catching = self.catching_up.as_mut()?;
        catching.changed.borrow_and_update();
        let read = catching
            .catch_up
            .read(&mut catching.cursor, BATCH_FRAMES, out);
        let join_at = match read {
            CatchUpRead::Frames(n) => {
                self.unconfirmed += n as usize;
                return Some(Next::Write);
            }
            CatchUpRead::Pending => return Some(Next::Wait),
            CatchUpRead::TooSlow => {
                self.topic
                    .counters
                    .slow_closures
                    .fetch_add(1, Ordering::Relaxed);
                return Some(Next::TooSlow);
            }
            CatchUpRead::Reconnect => return Some(Next::Resume),
            CatchUpRead::Join(at) => {
                self.topic
                    .counters
                    .resumes_caught_up
                    .fetch_add(1, Ordering::Relaxed);
                Some(at)
            }
            CatchUpRead::Live => {
                self.topic
                    .counters
                    .resumes_caught_up
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            CatchUpRead::Lost => Some(self.topic.resume_lost_after_catch_up(
                &catching.catch_up.id,
                catching.arrived,
                out,
            )),
        };
        self.catching_up = None;
        let head = self.topic.head();
        self.position.cursor = join_at.unwrap_or(head);
        self.position.replay_until = head;
        if out.is_empty() {
            None
        } else {
            Some(Next::Write)
        }
    }

    /// Checks the lag bound while a write is stuck; counts the closure when
    /// the subscriber has to go.
    pub fn is_too_slow(&self) -> bool {
        self.catching_up.is_none()
            && self
                .topic
                .too_slow(self.position.cursor, self.position.replay_until)
    }

    /// Counts a subscriber cut off because a write made no progress.
    pub fn write_timed_out(&self) {
        self.topic
            .counters
            .write_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until there may be something new for [`next`](Self::next).
    pub async fn changed(&mut self) {
        // The senders live in the topic and the catch-up this subscription
        // keeps alive, so the channels cannot close under us.
        if self.catching_up.is_none() && self.closing_at.is_none() {
            // The common case, kept small: every open subscription's state
            // holds this future while it waits.
            let _ = self.receiver.changed().await;
        } else {
            Box::pin(self.changed_while_catching_up_or_leaving()).await;
        }
    }

    /// [`changed`](Self::changed) for a subscription reading a catch-up, or
    /// that also wakes at its moment to leave a drain.
    async fn changed_while_catching_up_or_leaving(&mut self) {
        let leave = async {
            match self.closing_at {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        match &mut self.catching_up {
            None => {
                tokio::select! {
                    _ = self.receiver.changed() => {}
                    _ = leave => {}
                }
            }
            Some(catching) => {
                tokio::select! {
                    _ = self.receiver.changed() => {}
                    _ = catching.changed.changed() => {}
                    _ = leave => {}
                }
            }
        }
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

//! A topic's driver: the one task that owns a topic's life.
//!
//! The hub spawns one [`Driver`] per topic instance (into its `JoinSet`). It
//! owns the topic's upstream reader task (aborted when the driver ends),
//! sends the topic's heartbeats (one timer per topic, however many
//! subscribers) and reclaims the topic once it has had no subscribers for its
//! `linger`. An `eager` topic is never reclaimed while its upstream lives;
//! once the upstream answered `204` it lingers like any other and is opened
//! afresh, so the app is asked again.
//!
//! The driver holds the topic's [`Registration`]: however the driver ends
//! (reclaimed, panicked, aborted at shutdown), the topic leaves the hub's map,
//! so the next subscriber gets a fresh instance rather than a dead one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::topic::{CloseReason, Topic};
use super::upstream::UpstreamReader;
use super::{AbortOnDrop, Live, Shared};

/// A topic's place in the hub, for as long as its driver runs: dropping it
/// (the driver returned, panicked or was aborted) takes the topic out of the
/// map, so new subscribers get a fresh instance rather than a dead one, and
/// ends the streams of any subscribers left so they reconnect to it.
pub(super) struct Registration {
    pub(super) shared: Arc<Shared>,
    pub(super) topic: Arc<Topic>,
}

impl Registration {
    /// Reclaims the topic if it has no subscribers: takes it out of the
    /// map (unless a reload already did); true when it is idle. Subscribing
    /// happens under the same lock, so no one can join between the check
    /// and the removal.
    fn reclaim_if_idle(&self) -> bool {
        let topics = self.shared.topics();
        if self.topic.subscriber_count() != 0 {
            return false;
        }
        self.remove(topics);
        true
    }

    fn remove(&self, mut topics: std::sync::MutexGuard<'_, Live>) -> bool {
        self.shared.unregister(&mut topics, &self.topic)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let topics = self.shared.topics();
        let shutting_down = self.shared.shutting_down.load(Ordering::Acquire);
        if self.remove(topics) && !shutting_down {
            log::error!(
                "topic {}: its driver stopped unexpectedly; the topic was closed and its subscribers reconnect to a new instance",
                self.topic.key
            );
            self.topic.close(CloseReason::Failed);
        }
    }
}

/// A topic's life: its upstream reader, heartbeats while it lives, and its
/// reclaiming after `linger` without subscribers.
pub(super) struct Driver {
    pub(super) registration: Registration,
    pub(super) reader: UpstreamReader,
}

impl Driver {
    pub(super) async fn run(self) {
        let topic = self.registration.topic.clone();
        let shared = self.registration.shared.clone();
        let _reader = AbortOnDrop(tokio::spawn(self.reader.run()).abort_handle());
        loop {
            let heartbeat_at = topic.heartbeat_due();
            // An eager topic lingers only once its upstream ended (`204`):
            // then it is reclaimed and opened afresh, so the app is asked
            // again rather than never.
            let closed = topic.closed();
            let eager = shared.eager_topic(&topic.config_path).is_some();
            let linger = match closed {
                // Removed by a reload: gone as soon as its subscribers are.
                Some(CloseReason::Removed) => Duration::ZERO,
                _ => topic.settings().linger,
            };
            let linger_until = if eager && closed.is_none() {
                None
            } else {
                topic.idle_since().map(|since| since + linger)
            };
            tokio::select! {
                _ = sleep_until(heartbeat_at) => topic.heartbeat_if_due(),
                _ = sleep_until(linger_until.unwrap_or(heartbeat_at)), if linger_until.is_some() => {
                    if linger_until.is_some_and(|until| until <= Instant::now()) && self.registration.reclaim_if_idle() {
                        log::info!("topic {}: no subscribers for {linger:?}; upstream closed", topic.key);
                        if let Some(config) = shared.eager_topic(&topic.config_path) {
                            let mut topics = shared.topics();
                            shared.open_eager(&mut topics, &config);
                        }
                        return;
                    }
                }
                _ = topic.subscribers_changed.notified() => {}
            }
        }
    }
}

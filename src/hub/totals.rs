//! What the topics counted, summed per configured topic, for metrics.
//!
//! Each topic instance counts its own events, deliveries, subscriptions and
//! so on in relaxed atomics (`TopicCounters`), so counting on the hot path
//! costs one atomic add and no shared cache line between instances. A
//! configured topic (a literal path, or a template with many instances) is
//! the sum of its live instances plus every instance already reclaimed: when
//! an instance leaves the hub, its final figures are folded into the
//! configured topic's *retired* totals. So a counter exported per configured
//! topic never goes backwards, however instances come and go, and its label
//! set is bounded by the config (`/events/jobs/{id}`, never `/events/jobs/42`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::topic::{Topic, UpstreamState};

/// Monotonic figures of one topic instance, or of all instances of one
/// configured topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicTotals {
    /// Subscriptions admitted.
    pub subscriptions: u64,
    /// Events received from the upstream.
    pub events: u64,
    /// Events written to subscribers, summed over subscribers.
    pub deliveries: u64,
    /// Subscribers ended for lagging or for a write that made no progress.
    pub slow_closes: u64,
    /// Upstream connections opened after the first (reconnects).
    pub upstream_reconnects: u64,
    /// Resumes served from the replay window.
    pub resumes_replayed: u64,
    /// Resumes served by a catch-up from the app.
    pub resumes_caught_up: u64,
    /// Resumes that got the lost-resume policy.
    pub resumes_lost: u64,
}

impl TopicTotals {
    /// The figures of one live instance.
    pub fn of(topic: &Topic) -> TopicTotals {
        let c = &topic.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TopicTotals {
            subscriptions: count(&c.subscriptions),
            events: count(&c.events_in),
            deliveries: count(&c.deliveries),
            slow_closes: count(&c.slow_closures) + count(&c.write_timeouts),
            upstream_reconnects: count(&c.upstream_connects).saturating_sub(1),
            resumes_replayed: count(&c.resumes_replayed),
            resumes_caught_up: count(&c.resumes_caught_up),
            resumes_lost: count(&c.resumes_lost),
        }
    }

    /// Adds `other`'s figures to these.
    pub fn add(&mut self, other: &TopicTotals) {
        self.subscriptions += other.subscriptions;
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.slow_closes += other.slow_closes;
        self.upstream_reconnects += other.upstream_reconnects;
        self.resumes_replayed += other.resumes_replayed;
        self.resumes_caught_up += other.resumes_caught_up;
        self.resumes_lost += other.resumes_lost;
    }
}

/// One configured topic's figures: gauges over its live instances, and
/// totals over every instance it ever had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetrics {
    /// The path as configured (a template stays a template).
    pub topic: String,
    /// Live instances.
    pub instances: usize,
    /// Open subscriptions over its live instances.
    pub subscribers: usize,
    /// Live instances whose upstream is connected.
    pub upstreams_connected: usize,
    /// Monotonic figures, reclaimed instances included.
    pub totals: TopicTotals,
}

impl TopicMetrics {
    /// A configured topic with no instance yet, and what its reclaimed
    /// instances counted.
    pub fn new(topic: String, retired: TopicTotals) -> TopicMetrics {
        TopicMetrics {
            topic,
            instances: 0,
            subscribers: 0,
            upstreams_connected: 0,
            totals: retired,
        }
    }

    /// Counts one live instance in.
    pub fn add_instance(&mut self, topic: &Topic) {
        let snapshot = topic.snapshot();
        self.instances += 1;
        self.subscribers += snapshot.subscribers;
        if snapshot.upstream == UpstreamState::Connected {
            self.upstreams_connected += 1;
        }
        self.totals.add(&TopicTotals::of(topic));
    }
}

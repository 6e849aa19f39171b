//! The process-wide replay budget: how much memory every topic's replay
//! window may hold together.
//!
//! Each topic bounds its own window (`replay`, `replay_bytes`), but a
//! template topic has one window per instance: 10,000 instances of 4 MiB
//! would be 40 GiB. So every window also reports its size here, and once the
//! sum passes `[limits] replay_memory` the hub's trimmer evicts the oldest
//! frames across all topics (each frame carries a stamp from the
//! process-wide publish count) until the sum is a tenth below the budget.
//! A topic's newest frame is never evicted, so late joiners are still primed
//! and resumes from the latest id still work.
//!
//! ```text
//!  Topic::publish ─ adjust(+bytes) ─▶ ReplayBudget ─ over? ─ notify ─▶ trimmer task (hub)
//!                                                                       └─ evicts oldest frames, any topic
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Shared by the hub and every topic.
#[derive(Debug)]
pub struct ReplayBudget {
    /// Bytes every window may hold together (a reload may change it).
    limit: AtomicUsize,
    /// Bytes the windows hold now.
    held: AtomicUsize,
    /// Frames published so far, process-wide: each frame's stamp.
    published: AtomicU64,
    /// Frames evicted to stay within the budget (for operators).
    pub evicted: AtomicU64,
    /// Wakes the trimmer when the windows hold more than the limit.
    pub over: Notify,
}

impl ReplayBudget {
    pub fn new(limit: usize) -> ReplayBudget {
        ReplayBudget {
            limit: AtomicUsize::new(limit),
            held: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            over: Notify::new(),
        }
    }

    /// The stamp of a frame being published now.
    pub fn stamp(&self) -> u64 {
        self.published.fetch_add(1, Ordering::Relaxed)
    }

    /// A window grew by `added` and shrank by `removed` bytes.
    pub fn adjust(&self, added: usize, removed: usize) {
        let held = if added >= removed {
            self.held.fetch_add(added - removed, Ordering::Relaxed) + (added - removed)
        } else {
            self.held.fetch_sub(removed - added, Ordering::Relaxed) - (removed - added)
        };
        if held > self.limit() {
            self.over.notify_one();
        }
    }

    /// Bytes the windows hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new budget (a reload); the trimmer runs if the windows hold more.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        if self.held() > limit {
            self.over.notify_one();
        }
    }

    /// What the trimmer evicts down to: a tenth below the limit, so it does
    /// not run again after every publish.
    pub fn target(&self) -> usize {
        let limit = self.limit();
        limit - limit / 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn going_over_the_limit_wakes_the_trimmer() {
        let budget = ReplayBudget::new(100);
        budget.adjust(60, 0);
        assert!(futures_util::FutureExt::now_or_never(budget.over.notified()).is_none());
        budget.adjust(50, 0);
        assert_eq!(budget.held(), 110);
        assert!(futures_util::FutureExt::now_or_never(budget.over.notified()).is_some());
        budget.adjust(0, 30);
        assert_eq!(budget.held(), 80);
        assert_eq!(budget.target(), 90);
    }
}

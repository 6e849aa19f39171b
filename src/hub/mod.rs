//! The hub: every live topic, keyed by the request path that names it.
//!
//! The proxy asks the hub whether a path is a topic ([`Hub::find`]) and, if
//! so, for a [`Subscription`] ([`Hub::subscribe`]). The first subscriber of a
//! topic instance creates it and starts its *driver*, one task per topic that
//! owns the topic's upstream reader task, sends the topic's heartbeats (one
//! timer per topic, however many subscribers) and reclaims the topic once it
//! has had no subscribers for its `linger` (unless it is `eager`).
//!
//! ```text
//!  Hub ── topics: path → Arc<Topic> ── driver task ── owns ── UpstreamReader task
//!   │                      │                          (heartbeats, linger)
//!   │                      ├── Subscription (cursor) × N, one per browser stream
//!   │                      └── CatchUp task × (≤ catch_up_max), one per resume point
//!   ├── drivers: JoinSet (the hub owns every driver; a driver that ends
//!   │   for any reason, a panic included, takes its topic out of the map)
//!   └── trimmer task: keeps every window together within `replay_memory`
//! ```
//!
//! The hub has no HTTP server code: it hands out subscriptions, and
//! `subscriber.rs` writes them to sessions.

mod budget;
mod catch_up;
mod driver;
mod replay;
mod subscription;
pub mod topic;
mod totals;
pub mod upstream;

use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pingora::connectors::http::Connector;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, LimitSettings, TopicConfig};
use crate::limits::Limit;
use crate::route::{TopicMatch, TopicRoutes};
use crate::upstream_addr::ConnectSettings;
use budget::ReplayBudget;
use driver::{Driver, Registration};
pub use subscription::{Next, Subscription};
pub use topic::{CloseReason, Start, Topic, TopicSnapshot, UpstreamState};
pub use totals::{TopicMetrics, TopicTotals};
use upstream::{UpstreamReader, UpstreamSource};

/// Why a subscription was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// The topic's upstream answered `204`: tell the browser to stop.
    Ended,
    /// The topic instance is full, or its template has all the live
    /// instances it may (`max_subscribers_per_topic`, `max_topic_instances`).
    Full(Limit),
    /// The process is draining: come back (to another instance, or to this
    /// one's successor).
    Draining,
}

/// The topics of one process. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// The live topic instances.
struct Live {
    /// By key (the request path that names the instance).
    by_key: HashMap<String, Arc<Topic>>,
    /// Live instances per configured topic (index into `configs`).
    instances: Vec<usize>,
}

impl Live {
    /// Live instances of the configured topic `index`.
    fn count(&self, index: usize) -> usize {
        self.instances.get(index).copied().unwrap_or(0)
    }

    /// Counts `delta` more (or fewer) live instances of topic `index`.
    fn add(&mut self, index: usize, delta: isize) {
        if let Some(count) = self.instances.get_mut(index) {
            *count = count.saturating_add_signed(delta);
        }
    }
}

/// State shared by the hub's handles and its drivers.
struct Shared {
    /// The configured topics, by index as [`TopicRoutes`] reports them.
    configs: Vec<TopicConfig>,
    /// Path matching.
    routes: TopicRoutes,
    /// Live topic instances, and how many each configured topic has.
    topics: Mutex<Live>,
    /// Every topic's driver task. Finished ones are reaped whenever a topic
    /// is created, so the set is as large as the live topics.
    drivers: Mutex<JoinSet<()>>,
    /// `max_subscribers_per_topic` and `max_topic_instances`.
    limits: LimitSettings,
    /// Pingora's connector for every upstream stream.
    connector: Arc<Connector>,
    /// How upstreams are reached (from `[app]`).
    connect: ConnectSettings,
    /// What every replay window may hold together.
    budget: Arc<ReplayBudget>,
    /// What reclaimed instances counted, by configured path. Written under
    /// the `topics` lock (when an instance leaves), so a reader holding that
    /// lock sees every figure exactly once.
    retired: Mutex<HashMap<Arc<str>, TopicTotals>>,
    /// Set once shutdown (the drain) began: new subscriptions are refused.
    shutting_down: AtomicBool,
}

/// Aborts a task when dropped: the owner of a task ends it with itself.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Hub {
    /// A hub for the config's topics; nothing runs until the first subscriber
    /// (or [`start`](Self::start)).
    pub fn new(config: &Config) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                configs: config.topics.clone(),
                routes: TopicRoutes::new(config.topics.iter().map(|t| &t.path)),
                topics: Mutex::new(Live {
                    by_key: HashMap::new(),
                    instances: vec![0; config.topics.len()],
                }),
                drivers: Mutex::new(JoinSet::new()),
                limits: config.limits,
                connector: Arc::new(Connector::new(None)),
                connect: config.app.connect.clone(),
                budget: Arc::new(ReplayBudget::new(config.limits.replay_memory)),
                retired: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// The configuration of the topic a route names.
    pub fn config(&self, route: &TopicMatch) -> &TopicConfig {
        // In bounds: a route's index is its topic's place in `configs`
        // (`TopicRoutes` is built from the same list, in order).
        #[allow(clippy::indexing_slicing)]
        &self.shared.configs[route.index]
    }

    /// Whether a request path (without query) is a topic.
    pub fn find(&self, path: &str) -> Option<TopicMatch> {
        self.shared.routes.find(path)
    }

    /// Subscribes to a topic instance, creating it (and opening its upstream)
    /// if it is not live. `last_event_id` is the subscriber's resume point:
    /// it decides where this subscriber starts, and nothing else.
    pub fn subscribe(
        &self,
        route: &TopicMatch,
        last_event_id: Option<String>,
    ) -> Result<Subscription, SubscribeError> {
        let mut topics = self.shared.topics();
        let topic = match topics.by_key.get(&route.key) {
            Some(topic) => topic.clone(),
            None => {
                let cap = self.shared.limits.max_topic_instances;
                if topics.count(route.index) >= cap {
                    return Err(SubscribeError::Full(Limit::Instances));
                }
                self.shared.create(&mut topics, route)
            }
        };
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(SubscribeError::Draining);
        }
        if topic.closed() == Some(CloseReason::Ended) {
            return Err(SubscribeError::Ended);
        }
        if topic.subscriber_count() >= self.shared.limits.max_subscribers_per_topic {
            return Err(SubscribeError::Full(Limit::PerTopic));
        }
        let start = match last_event_id {
            Some(id) if !id.is_empty() => Start::After(id),
            _ => Start::Live,
        };
        let subscription = topic.subscribe(start);
        drop(topics);
        Ok(subscription)
    }

    /// Starts the hub's own work: opens the upstreams of `eager` topics
    /// (which stay open with no subscribers), and the trimmer that keeps
    /// every replay window together within `[limits] replay_memory`.
    pub fn start(&self) {
        let shared = self.shared.clone();
        self.shared
            .drivers()
            .spawn(async move { shared.trim_replay_forever().await });
        let mut topics = self.shared.topics();
        for (index, config) in self.shared.configs.iter().enumerate() {
            if config.eager {
                self.shared.open_eager(&mut topics, index);
            }
        }
    }

    /// Begins the end: from now on new subscriptions are refused (told to
    /// come back later), and every subscriber's stream ends cleanly at its
    /// own moment within `window`, so browsers come back spread out (to
    /// another instance, or to this one's successor) rather than all at once.
    pub fn drain(&self, window: Duration) {
        self.shared.shutting_down.store(true, Ordering::Release);
        let until = Instant::now() + window;
        let topics: Vec<Arc<Topic>> = self.shared.topics().by_key.values().cloned().collect();
        for topic in topics {
            if window.is_zero() {
                topic.close(CloseReason::ShuttingDown);
            } else {
                topic.drain(CloseReason::ShuttingDown, until);
            }
        }
    }

    /// Ends every task the hub owns: the drivers (and with them the upstream
    /// readers and catch-ups), the replay trimmer. For the end of a drain.
    pub fn stop_tasks(&self) {
        self.shared.drivers().abort_all();
    }

    /// Ends every subscriber's stream at once, and every task the hub owns.
    pub fn shut_down(&self) {
        self.drain(Duration::ZERO);
        self.stop_tasks();
    }

    /// A snapshot of every live topic, sorted by key.
    pub fn snapshot(&self) -> Vec<TopicSnapshot> {
        let topics: Vec<Arc<Topic>> = self.shared.topics().by_key.values().cloned().collect();
        let mut snapshots: Vec<TopicSnapshot> = topics.iter().map(|t| t.snapshot()).collect();
        snapshots.sort_by(|a, b| a.key.cmp(&b.key));
        snapshots
    }

    /// Every configured topic's figures, in config order: gauges over its
    /// live instances, totals over every instance it had (see `totals.rs`).
    pub fn metrics(&self) -> Vec<TopicMetrics> {
        let topics = self.shared.topics();
        let retired = self.shared.retired();
        let mut metrics: Vec<TopicMetrics> = self
            .shared
            .configs
            .iter()
            .map(|config| {
                let path = config.path.as_str();
                TopicMetrics::new(path.into(), retired.get(path).copied().unwrap_or_default())
            })
            .collect();
        drop(retired);
        for topic in topics.by_key.values() {
            if let Some(entry) = metrics.iter_mut().find(|m| *m.topic == *topic.config_path) {
                entry.add_instance(topic);
            }
        }
        metrics
    }

    /// Whether new subscriptions are served (false once draining began).
    pub fn accepting(&self) -> bool {
        !self.shared.shutting_down.load(Ordering::Acquire)
    }

    /// Process-wide replay memory: bytes held, the budget, frames evicted
    /// to stay within it.
    pub fn replay_memory(&self) -> (usize, usize, u64) {
        let budget = &self.shared.budget;
        (
            budget.held(),
            budget.limit(),
            budget.evicted.load(Ordering::Relaxed),
        )
    }
}

impl Shared {
    fn topics(&self) -> MutexGuard<'_, Live> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn retired(&self) -> MutexGuard<'_, HashMap<Arc<str>, TopicTotals>> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drivers(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.drivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a topic instance, registers it and starts its driver.
    fn create(self: &Arc<Self>, topics: &mut Live, route: &TopicMatch) -> Arc<Topic> {
        // In bounds: see `Hub::config`.
        #[allow(clippy::indexing_slicing)]
        let config = &self.configs[route.index];
        let path = config.upstream.path.fill(&route.param_pairs());
        let source = Arc::new(UpstreamSource {
            url: format!("{}{path}", config.upstream.origin),
            origin: config.upstream.origin.clone(),
            path,
            extra_headers: config.access.upstream_headers.clone(),
            connect: self.connect.clone(),
            connector: self.connector.clone(),
        });
        let topic = Topic::new(
            route.key.clone(),
            Arc::from(config.path.as_str()),
            source.clone(),
            config.settings,
            self.budget.clone(),
        );
        topics.by_key.insert(route.key.clone(), topic.clone());
        topics.add(route.index, 1);
        let driver = Driver {
            registration: Registration {
                shared: self.clone(),
                topic: topic.clone(),
                index: route.index,
            },
            reader: UpstreamReader {
                topic: topic.clone(),
                source,
            },
            eager: config.eager,
        };
        let mut drivers = self.drivers();
        // Reap drivers that ended, so the set stays as large as the topics.
        while drivers.try_join_next().is_some() {}
        drivers.spawn(driver.run());
        topic
    }

    /// Opens the eager topic `index` unless it is live.
    fn open_eager(self: &Arc<Self>, topics: &mut Live, index: usize) {
        let Some(config) = self.configs.get(index) else {
            return;
        };
        let key = config.path.as_str().to_string();
        if !topics.by_key.contains_key(&key) && !self.shutting_down.load(Ordering::Acquire) {
            let route = TopicMatch {
                index,
                key,
                params: Vec::new(),
            };
            self.create(topics, &route);
        }
    }

    /// Keeps the replay windows within the budget: woken when they hold
    /// more, evicts the oldest frames across all topics down to the target.
    async fn trim_replay_forever(&self) {
        loop {
            self.budget.over.notified().await;
            self.trim_replay();
        }
    }

    fn trim_replay(&self) {
        if self.budget.held() <= self.budget.limit() {
            return;
        }
        let topics: Vec<Arc<Topic>> = self.topics().by_key.values().cloned().collect();
        // Oldest first: a min-heap on the stamp of each window's oldest frame.
        let mut oldest: BinaryHeap<std::cmp::Reverse<(u64, usize)>> = topics
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some(std::cmp::Reverse((t.oldest_evictable()?, i))))
            .collect();
        let mut evicted = 0;
        while self.budget.held() > self.budget.target() {
            let Some(std::cmp::Reverse((_, i))) = oldest.pop() else {
                break;
            };
            let Some(topic) = topics.get(i) else {
                continue;
            };
            if topic.evict_for_budget() {
                evicted += 1;
            }
            if let Some(stamp) = topic.oldest_evictable() {
                oldest.push(std::cmp::Reverse((stamp, i)));
            }
        }
        let before = self.budget.evicted.fetch_add(evicted, Ordering::Relaxed);
        if before == 0 && evicted > 0 {
            log::warn!(
                "replay windows reached [limits] replay_memory ({} bytes): the oldest events of all topics are evicted to stay within it (said once; see replay_evicted in /stats)",
                self.budget.limit()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn hub(extra: &str) -> Hub {
        let config = Config::from_text(
            std::path::Path::new("t.toml"),
            &format!("[[listen]]\naddr = \"127.0.0.1:1\"\n[app]\nupstream = \"127.0.0.1:9\"\n{extra}\n[[topic]]\npath = \"/events/{{name}}\"\nupstream = \"/s/{{name}}\"\n"),
        )
        .unwrap();
        Hub::new(&config)
    }

    fn route(hub: &Hub, path: &str) -> TopicMatch {
        hub.find(path).unwrap()
    }

    #[tokio::test]
    async fn a_topic_whose_driver_died_is_replaced_and_its_subscribers_are_ended() {
        let hub = hub("");
        let mut first = hub.subscribe(&route(&hub, "/events/a"), None).unwrap();
        // Every driver dies (as a panic would end one).
        hub.shared.drivers().abort_all();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while first.next(&mut Vec::new()) != Next::Closed(CloseReason::Failed) {
                first.changed().await;
            }
        })
        .await
        .expect("the subscriber of a dead topic is ended");
        let second = hub.subscribe(&route(&hub, "/events/a"), None).unwrap();
        assert!(
            !Arc::ptr_eq(first.topic(), second.topic()),
            "joined the dead topic"
        );
        assert_eq!(hub.snapshot().len(), 1);
    }

    /// Waits for the subscriber's next heartbeat (skipping anything else)
    /// and returns the (paused) clock's time.
    async fn next_heartbeat(sub: &mut Subscription) -> Instant {
        loop {
            let mut out = Vec::new();
            if sub.next(&mut out) == Next::Write && out == [crate::sse::heartbeat_frame()] {
                return Instant::now();
            }
            if out.is_empty() {
                sub.changed().await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_topic_sends_one_heartbeat_per_interval_and_events_postpone_it() {
        let hub = hub("[sse]\nheartbeat = \"15s\"\n");
        let mut sub = hub.subscribe(&route(&hub, "/events/a"), None).unwrap();
        sub.take_opening(&mut Vec::new());
        let start = Instant::now();
        let first = next_heartbeat(&mut sub).await;
        assert_eq!(first - start, Duration::from_secs(15));
        let second = next_heartbeat(&mut sub).await;
        assert_eq!(second - first, Duration::from_secs(15));
        // An event is as good as a heartbeat: the next one waits a full
        // interval after it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        sub.topic()
            .publish(bytes::Bytes::from_static(b"data: x\n\n"), None);
        let published = Instant::now();
        let third = next_heartbeat(&mut sub).await;
        assert_eq!(third - published, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_topic_is_reclaimed_after_its_linger_without_subscribers_and_not_before() {
        let hub = hub("[sse]\nlinger = \"30s\"\n");
        let first = hub.subscribe(&route(&hub, "/events/a"), None).unwrap();
        let topic = first.topic().clone();
        drop(first);
        // 29 s idle, then a subscriber comes back: the same instance.
        tokio::time::sleep(Duration::from_secs(29)).await;
        let back = hub.subscribe(&route(&hub, "/events/a"), None).unwrap();
        assert!(
            Arc::ptr_eq(back.topic(), &topic),
            "reclaimed before its linger"
        );
        drop(back);
        let left = Instant::now();
        // Idle again: reclaimed once a full linger has passed since.
        while hub.snapshot().len() == 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(left.elapsed() >= Duration::from_secs(30));
        assert!(left.elapsed() < Duration::from_secs(31));
        let fresh = hub.subscribe(&route(&hub, "/events/a"), None).unwrap();
        assert!(!Arc::ptr_eq(fresh.topic(), &topic));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_each_subscription_at_its_own_moment_within_the_window() {
        let hub = hub("");
        let mut subs: Vec<Subscription> = (0..100)
            .map(|_| hub.subscribe(&route(&hub, "/events/a"), None).unwrap())
            .collect();
        for sub in &mut subs {
            sub.take_opening(&mut Vec::new());
        }
        let start = Instant::now();
        hub.drain(Duration::from_secs(10));
        assert_eq!(
            hub.subscribe(&route(&hub, "/events/a"), None).err(),
            Some(SubscribeError::Draining),
            "a newcomer is told to come back"
        );
        let mut per_second = [0usize; 10];
        let ends = subs.into_iter().map(|mut sub| async move {
            loop {
                match sub.next(&mut Vec::new()) {
                    Next::Closed(CloseReason::ShuttingDown) => return Instant::now(),
                    Next::Wait => sub.changed().await,
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        for ended in futures_util::future::join_all(ends).await {
            let after = ended.duration_since(start);
            assert!(after <= Duration::from_secs(10), "ended after {after:?}");
            per_second[(after.as_secs() as usize).min(9)] += 1;
        }
        // Uniform over ten seconds: about ten a second, never a crowd.
        assert!(per_second.iter().all(|n| *n <= 33), "{per_second:?}");
        assert!(
            per_second.iter().filter(|n| **n > 0).count() >= 5,
            "{per_second:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_every_stream_and_every_task_the_hub_owns() {
        let hub = hub("");
        hub.start();
        let mut sub = hub.subscribe(&route(&hub, "/events/a"), None).unwrap();
        let _other = hub.subscribe(&route(&hub, "/events/b"), None).unwrap();
        hub.shut_down();
        assert_eq!(
            sub.next(&mut Vec::new()),
            Next::Closed(CloseReason::ShuttingDown)
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while !hub.shared.drivers().is_empty() {
                while hub.shared.drivers().try_join_next().is_some() {}
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("every driver and the trimmer ended");
        assert!(hub.snapshot().is_empty(), "topics left after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_count_per_configured_topic_and_never_go_back_when_instances_are_reclaimed() {
        let hub = hub("[sse]\nlinger = \"1s\"\n");
        for path in ["/events/a", "/events/b"] {
            let sub = hub.subscribe(&route(&hub, path), None).unwrap();
            sub.topic()
                .publish(bytes::Bytes::from_static(b"data: x\n\n"), None);
        }
        let live = hub.metrics();
        assert_eq!(live.len(), 1, "one configured topic: {live:?}");
        assert_eq!(live[0].topic, "/events/{name}");
        assert_eq!(live[0].totals.subscriptions, 2);
        assert_eq!(live[0].totals.events, 2);
        // Both instances are idle (their subscriptions were dropped): reclaimed.
        while !hub.snapshot().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = hub.metrics();
        assert_eq!(after[0].instances, 0);
        assert_eq!(after[0].subscribers, 0);
        assert_eq!(after[0].totals, live[0].totals, "a counter went back");
    }

    #[tokio::test]
    async fn a_clients_last_event_id_never_becomes_the_topics() {
        let hub = hub("");
        let sub = hub
            .subscribe(&route(&hub, "/events/a"), Some("\u{1}".into()))
            .unwrap();
        assert_eq!(sub.topic().last_event_id(), None);
        let other = hub
            .subscribe(&route(&hub, "/events/a"), Some("42".into()))
            .unwrap();
        assert_eq!(other.topic().last_event_id(), None);
    }

    #[tokio::test]
    async fn replay_windows_together_stay_within_replay_memory() {
        let hub = hub("[limits]\nreplay_memory = \"1MiB\"\n");
        let subs: Vec<_> = ["/events/a", "/events/b"]
            .iter()
            .map(|p| hub.subscribe(&route(&hub, p), None).unwrap())
            .collect();
        let frame = bytes::Bytes::from(vec![b'x'; 100 * 1024]);
        for n in 0..8 {
            for sub in &subs {
                sub.topic()
                    .publish(frame.clone(), Some(Arc::from(n.to_string())));
            }
        }
        assert!(hub.shared.budget.held() > 1024 * 1024);
        hub.shared.trim_replay();
        let (held, limit, evicted) = hub.replay_memory();
        assert!(held <= limit - limit / 10, "{held} held");
        assert!(evicted >= 7);
        // the oldest went first, from both topics alike, and the newest stay
        for sub in &subs {
            assert!(sub.topic().has_id("7"));
            assert!(!sub.topic().has_id("0"));
        }
    }
}

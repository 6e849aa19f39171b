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
//!   ├── config: the topics and limits now, swapped whole by a reload
//!   ├── drivers: JoinSet (the hub owns every driver; a driver that ends
//!   │   for any reason, a panic included, takes its topic out of the map)
//!   └── trimmer task: keeps every window together within `replay_memory`
//! ```
//!
//! A reload ([`Hub::reconfigure`]) swaps the configured topics without
//! ending a stream the change does not concern: a topic left as it was keeps
//! its upstream stream; a changed one takes its new settings (and, when its
//! upstream moved, reopens its stream there, subscribers staying); a removed
//! one ends its subscribers' streams spread over the drain window. A route
//! carries the topic config it was found with ([`TopicRoute`]), so a request
//! in flight during a reload is served by one config, whole.
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
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::connectors::http::Connector;
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

/// A request path that is a topic, with the topic's config as it was when
/// the path was found (a reload does not change a request in flight).
#[derive(Debug, Clone)]
pub struct TopicRoute {
    /// The configured topic.
    pub config: Arc<TopicConfig>,
    /// The instance: its key and the template's parameters.
    pub matched: TopicMatch,
}

impl Deref for TopicRoute {
    type Target = TopicMatch;

    fn deref(&self) -> &TopicMatch {
        &self.matched
    }
}

/// What a reload changed in the topics, for its log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicChanges {
    /// Configured topics that are new.
    pub added: Vec<String>,
    /// Configured topics that are gone (their live instances drain).
    pub removed: Vec<String>,
    /// Live instances whose upstream moved (they reopen it there).
    pub moved: Vec<String>,
    /// Configured topics whose settings changed (applied from now on).
    pub changed: Vec<String>,
}

/// The topics of one process. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// The configured topics and the limits the hub applies: swapped whole by a
/// reload, read without a lock.
struct HubConfig {
    /// The configured topics, by index as [`TopicRoutes`] reports them.
    topics: Vec<Arc<TopicConfig>>,
    /// Path matching.
    routes: TopicRoutes,
    /// `max_subscribers_per_topic` and `max_topic_instances`.
    limits: LimitSettings,
    /// How upstreams are reached (from `[app]`).
    connect: ConnectSettings,
}

impl HubConfig {
    fn new(config: &Config) -> HubConfig {
        HubConfig {
            topics: config.topics.iter().cloned().map(Arc::new).collect(),
            routes: TopicRoutes::new(config.topics.iter().map(|t| &t.path)),
            limits: config.limits,
            connect: config.app.connect.clone(),
        }
    }

    /// The configured topic with this path, if there is one.
    fn topic(&self, path: &str) -> Option<&Arc<TopicConfig>> {
        self.topics.iter().find(|t| t.path.as_str() == path)
    }
}

/// The live topic instances.
struct Live {
    /// By key (the request path that names the instance).
    by_key: HashMap<String, Arc<Topic>>,
    /// Live instances per configured topic (by its configured path).
    instances: HashMap<Arc<str>, usize>,
}

impl Live {
    /// Live instances of the configured topic `path`.
    fn count(&self, path: &str) -> usize {
        self.instances.get(path).copied().unwrap_or(0)
    }

    /// Counts one more (or one fewer) live instance of topic `path`.
    fn add(&mut self, path: &Arc<str>, delta: isize) {
        let count = self.instances.entry(path.clone()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.instances.remove(path);
        }
    }

    /// Takes `topic` out of the map if it is the instance registered under
    /// its key; true when it was.
    fn remove(&mut self, topic: &Arc<Topic>) -> bool {
        let is_this_topic = self
            .by_key
            .get(&topic.key)
            .is_some_and(|t| Arc::ptr_eq(t, topic));
        if is_this_topic {
            self.by_key.remove(&topic.key);
            self.add(&topic.config_path, -1);
        }
        is_this_topic
    }
}

/// State shared by the hub's handles and its drivers.
struct Shared {
    /// The configured topics and limits, as the last (re)load left them.
    config: ArcSwap<HubConfig>,
    /// Live topic instances, and how many each configured topic has.
    topics: Mutex<Live>,
    /// Every topic's driver task. Finished ones are reaped whenever a topic
    /// is created, so the set is as large as the live topics.
    drivers: Mutex<JoinSet<()>>,
    /// Pingora's connector for every upstream stream.
    connector: Arc<Connector>,
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
                config: ArcSwap::from_pointee(HubConfig::new(config)),
                topics: Mutex::new(Live {
                    by_key: HashMap::new(),
                    instances: HashMap::new(),
                }),
                drivers: Mutex::new(JoinSet::new()),
                connector: Arc::new(Connector::new(None)),
                budget: Arc::new(ReplayBudget::new(config.limits.replay_memory)),
                retired: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// Whether a request path (or target; without query) is a topic, and
    /// which, with its config as it is now.
    pub fn find(&self, path: &str) -> Option<TopicRoute> {
        let config = self.shared.config.load();
        let matched = config.routes.find(path)?;
        let topic = config.topics.get(matched.index)?.clone();
        Some(TopicRoute {
            config: topic,
            matched,
        })
    }

    /// Subscribes to a topic instance, creating it (and opening its upstream)
    /// if it is not live. `last_event_id` is the subscriber's resume point:
    /// it decides where this subscriber starts, and nothing else.
    pub fn subscribe(
        &self,
        route: &TopicRoute,
        last_event_id: Option<String>,
    ) -> Result<Subscription, SubscribeError> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(SubscribeError::Draining);
        }
        let limits = self.shared.config.load().limits;
        let mut topics = self.shared.topics();
        let topic = match topics.by_key.get(&route.key) {
            Some(topic) => topic.clone(),
            None => {
                if topics.count(route.config.path.as_str()) >= limits.max_topic_instances {
                    return Err(SubscribeError::Full(Limit::Instances));
                }
                self.shared.create(&mut topics, route)
            }
        };
        if topic.closed() == Some(CloseReason::Ended) {
            return Err(SubscribeError::Ended);
        }
        if topic.subscriber_count() >= limits.max_subscribers_per_topic {
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
        self.shared.open_every_eager_topic();
    }

    /// Applies a reloaded config: the configured topics and the limits
    /// change from now on, and every live instance is checked against its
    /// configured topic (see the module doc). Removed topics drain within
    /// `drain`. Returns what changed.
    pub fn reconfigure(&self, config: &Config, drain: Duration) -> TopicChanges {
        let old = self.shared.config.load_full();
        let new = Arc::new(HubConfig::new(config));
        let mut changes = TopicChanges::default();
        for topic in &new.topics {
            match old.topic(topic.path.as_str()) {
                None => changes.added.push(topic.path.as_str().into()),
                Some(before) if **before != **topic => {
                    changes.changed.push(topic.path.as_str().into())
                }
                Some(_) => {}
            }
        }
        for topic in &old.topics {
            if new.topic(topic.path.as_str()).is_none() {
                changes.removed.push(topic.path.as_str().into());
            }
        }
        self.shared.budget.set_limit(config.limits.replay_memory);
        // From here on, new requests find the new topics.
        self.shared.config.store(new.clone());
        let until = Instant::now() + drain;
        let live: Vec<Arc<Topic>> = self.shared.topics().by_key.values().cloned().collect();
        for topic in live {
            match new.topic(&topic.config_path) {
                None => {
                    // Gone from the config: no one new joins it, and its
                    // subscribers leave spread over the drain.
                    let mut topics = self.shared.topics();
                    self.shared.unregister(&mut topics, &topic);
                    drop(topics);
                    topic.drain(CloseReason::Removed, until);
                }
                Some(config) => {
                    let source = self.shared.source_for(config, &topic);
                    let moved = !source.same_stream_as(&topic.source());
                    if moved {
                        changes.moved.push(topic.key.clone());
                    }
                    topic.reconfigure(config.settings, moved.then_some(source));
                }
            }
        }
        self.shared.open_every_eager_topic();
        changes
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
        let config = self.shared.config.load();
        let topics = self.shared.topics();
        let retired = self.shared.retired();
        let mut metrics: Vec<TopicMetrics> = config
            .topics
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

    /// Takes `topic` out of the map if it is still the instance registered
    /// under its key, and retires its figures (under the `topics` lock, so a
    /// metrics reader sees them either live or retired, never both, never
    /// neither); true when it was registered.
    fn unregister(&self, topics: &mut Live, topic: &Arc<Topic>) -> bool {
        let removed = topics.remove(topic);
        if removed {
            self.retired()
                .entry(topic.config_path.clone())
                .or_default()
                .add(&TopicTotals::of(topic));
        }
        removed
    }

    /// Where the instance `topic` of the configured topic `config` reads
    /// its stream, by the config as it is now.
    fn source_for(&self, config: &TopicConfig, topic: &Topic) -> Arc<UpstreamSource> {
        let params = config.path.matches(&topic.key).unwrap_or_default();
        self.source(config, &params)
    }

    fn source(&self, config: &TopicConfig, params: &[(&str, &str)]) -> Arc<UpstreamSource> {
        let path = config.upstream.path.fill(params);
        Arc::new(UpstreamSource {
            url: format!("{}{path}", config.upstream.origin),
            origin: config.upstream.origin.clone(),
            path,
            extra_headers: config.access.upstream_headers.clone(),
            connect: self.config.load().connect.clone(),
            connector: self.connector.clone(),
        })
    }

    /// Creates a topic instance, registers it and starts its driver.
    fn create(self: &Arc<Self>, topics: &mut Live, route: &TopicRoute) -> Arc<Topic> {
        let config = &route.config;
        let source = self.source(config, &route.param_pairs());
        let config_path: Arc<str> = Arc::from(config.path.as_str());
        let topic = Topic::new(
            route.key.clone(),
            config_path.clone(),
            source,
            config.settings,
            self.budget.clone(),
        );
        topics.by_key.insert(route.key.clone(), topic.clone());
        topics.add(&config_path, 1);
        let driver = Driver {
            registration: Registration {
                shared: self.clone(),
                topic: topic.clone(),
            },
            reader: UpstreamReader {
                topic: topic.clone(),
            },
        };
        let mut drivers = self.drivers();
        // Reap drivers that ended, so the set stays as large as the topics.
        while drivers.try_join_next().is_some() {}
        drivers.spawn(driver.run());
        topic
    }

    /// Opens every `eager` topic of the config now that is not live.
    fn open_every_eager_topic(self: &Arc<Self>) {
        let config = self.config.load();
        let mut topics = self.topics();
        for topic in config.topics.iter().filter(|t| t.eager) {
            self.open_eager(&mut topics, topic);
        }
    }

    /// Opens the eager topic `config` unless it is live.
    fn open_eager(self: &Arc<Self>, topics: &mut Live, config: &Arc<TopicConfig>) {
        let key = config.path.as_str().to_string();
        if !topics.by_key.contains_key(&key) && !self.shutting_down.load(Ordering::Acquire) {
            let route = TopicRoute {
                config: config.clone(),
                matched: TopicMatch {
                    index: 0,
                    key,
                    params: Vec::new(),
                },
            };
            self.create(topics, &route);
        }
    }

    /// Whether the configured topic `path` is eager in the config now.
    fn eager_topic(&self, path: &str) -> Option<Arc<TopicConfig>> {
        self.config.load().topic(path).filter(|t| t.eager).cloned()
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

    fn route(hub: &Hub, path: &str) -> TopicRoute {
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
            if sub.next(&mut out) == Next::Write && out == [crate::sse::heartbeat_line()] {
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

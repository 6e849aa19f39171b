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
//!                          │                          (heartbeats, linger)
//!                          └── Subscription (cursor) × N, one per browser stream
//! ```
//!
//! The hub has no HTTP server code: it hands out subscriptions, and
//! `subscriber.rs` writes them to sessions.

mod replay;
pub mod topic;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use pingora::connectors::http::Connector;
use tokio::time::{sleep_until, Instant};

use crate::config::{Config, LimitSettings, TopicConfig};
use crate::limits::Limit;
use crate::origin::ConnectSettings;
use crate::route::{TopicMatch, TopicRoutes};
pub use topic::{CloseReason, Next, Start, Subscription, Topic, TopicSnapshot, UpstreamState};
use upstream::UpstreamReader;

/// Why a subscription was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The topic's upstream answered `204`: tell the browser to stop.
    Ended,
    /// The topic instance is full, or its template has all the live
    /// instances it may (`max_subscribers_per_topic`, `max_topic_instances`).
    Full(Limit),
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

/// State shared by the hub's handles and its drivers.
struct Shared {
    /// The configured topics, by index as [`TopicRoutes`] reports them.
    configs: Vec<TopicConfig>,
    /// Path matching.
    routes: TopicRoutes,
    /// Live topic instances, and how many each configured topic has.
    topics: Mutex<Live>,
    /// `max_subscribers_per_topic` and `max_topic_instances`.
    limits: LimitSettings,
    /// Pingora's connector for every upstream stream.
    connector: Arc<Connector>,
    /// How upstreams are reached (from `[app]`).
    connect: ConnectSettings,
    /// Set once shutdown began: new subscribers are ended at once.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Hub {
    /// A hub for the config's topics; nothing runs until the first subscriber
    /// (or [`start_eager`](Self::start_eager)).
    pub fn new(config: &Config) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                configs: config.topics.clone(),
                routes: TopicRoutes::new(config.topics.iter().map(|t| &t.path)),
                topics: Mutex::new(Live {
                    by_key: HashMap::new(),
                    instances: vec![0; config.topics.len()],
                }),
                limits: config.limits,
                connector: Arc::new(Connector::new(None)),
                connect: config.app.connect.clone(),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn topics(&self) -> MutexGuard<'_, Live> {
        self.shared
            .topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The configuration of the topic a route names.
    pub fn config(&self, route: &TopicMatch) -> &TopicConfig {
        &self.shared.configs[route.index]
    }

    /// Whether a request path (without query) is a topic.
    pub fn find(&self, path: &str) -> Option<TopicMatch> {
        self.shared.routes.find(path)
    }

    /// Subscribes to a topic instance, creating it (and opening its upstream)
    /// if it is not live. `last_event_id` is the subscriber's resume point.
    pub fn subscribe(
        &self,
        route: &TopicMatch,
        last_event_id: Option<String>,
    ) -> Result<Subscription, Refusal> {
        let mut topics = self.topics();
        let (topic, created) = match topics.by_key.get(&route.key) {
            Some(topic) => (topic.clone(), false),
            None => {
                if topics.instances[route.index] >= self.shared.limits.max_topic_instances {
                    return Err(Refusal::Full(Limit::Instances));
                }
                // A new instance resumes upstream where its first subscriber
                // left off (e.g. across a restart of the proxy).
                let topic = self.create(route, last_event_id.clone());
                topics.by_key.insert(route.key.clone(), topic.clone());
                topics.instances[route.index] += 1;
                (topic, true)
            }
        };
        if topic.closed() == Some(CloseReason::Ended) {
            return Err(Refusal::Ended);
        }
        if topic.subscriber_count() >= self.shared.limits.max_subscribers_per_topic {
            return Err(Refusal::Full(Limit::PerTopic));
        }
        let start = match last_event_id {
            Some(_) if created => Start::Oldest,
            Some(id) => Start::After(id),
            None => Start::Live,
        };
        let subscription = topic.subscribe(start);
        drop(topics);
        if self
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            topic.close(CloseReason::ShuttingDown);
        }
        Ok(subscription)
    }

    /// Creates a topic instance and starts its driver.
    fn create(&self, route: &TopicMatch, last_event_id: Option<String>) -> Arc<Topic> {
        let config = &self.shared.configs[route.index];
        let path = config.upstream.path.fill(&route.param_pairs());
        let topic = Topic::new(
            route.key.clone(),
            format!("{}{path}", config.upstream.origin),
            config.settings,
            last_event_id,
        );
        let reader = UpstreamReader {
            topic: topic.clone(),
            origin: config.upstream.origin.clone(),
            path,
            extra_headers: config.access.upstream_headers.clone(),
            connect: self.shared.connect.clone(),
            connector: self.shared.connector.clone(),
        };
        tokio::spawn(drive(
            self.shared.clone(),
            topic.clone(),
            route.index,
            reader,
            config.eager,
        ));
        topic
    }

    /// Opens the upstreams of `eager` topics, which stay open with no subscribers.
    pub fn start_eager(&self) {
        let mut topics = self.topics();
        for (index, config) in self.shared.configs.iter().enumerate() {
            let key = config.path.as_str().to_string();
            if config.eager && !topics.by_key.contains_key(&key) {
                let route = TopicMatch {
                    index,
                    key: key.clone(),
                    params: Vec::new(),
                };
                let topic = self.create(&route, None);
                topics.by_key.insert(key, topic);
                topics.instances[index] += 1;
            }
        }
    }

    /// Ends every subscriber's stream cleanly (they reconnect elsewhere) and
    /// ends new subscriptions at once from now on.
    pub fn shut_down(&self) {
        self.shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        let topics: Vec<Arc<Topic>> = self.topics().by_key.values().cloned().collect();
        for topic in topics {
            topic.close(CloseReason::ShuttingDown);
        }
    }

    /// A snapshot of every live topic, sorted by key.
    pub fn snapshot(&self) -> Vec<TopicSnapshot> {
        let topics: Vec<Arc<Topic>> = self.topics().by_key.values().cloned().collect();
        let mut snapshots: Vec<TopicSnapshot> = topics.iter().map(|t| t.snapshot()).collect();
        snapshots.sort_by(|a, b| a.key.cmp(&b.key));
        snapshots
    }
}

impl Shared {
    /// Removes `topic` if it still has no subscribers; true when removed.
    /// Subscribing happens under the same lock, so no one can join between
    /// the check and the removal.
    fn remove_if_idle(&self, topic: &Arc<Topic>, index: usize) -> bool {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let is_this_topic = topics
            .by_key
            .get(&topic.key)
            .is_some_and(|t| Arc::ptr_eq(t, topic));
        if is_this_topic && topic.subscriber_count() == 0 {
            topics.by_key.remove(&topic.key);
            topics.instances[index] -= 1;
            return true;
        }
        false
    }
}

/// Aborts a task when dropped: the driver owns its topic's upstream reader.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A topic's life: heartbeats while it lives, reclaimed after its linger.
async fn drive(
    shared: Arc<Shared>,
    topic: Arc<Topic>,
    index: usize,
    reader: UpstreamReader,
    eager: bool,
) {
    let _reader = AbortOnDrop(tokio::spawn(reader.run()).abort_handle());
    loop {
        let heartbeat_at = topic.heartbeat_due();
        let linger_until = if eager {
            None
        } else {
            topic
                .idle_since()
                .map(|since| since + topic.settings.linger)
        };
        tokio::select! {
            _ = sleep_until(heartbeat_at) => topic.heartbeat_if_due(),
            _ = sleep_until(linger_until.unwrap_or(heartbeat_at)), if linger_until.is_some() => {
                if linger_until.is_some_and(|until| until <= Instant::now()) && shared.remove_if_idle(&topic, index) {
                    log::info!("topic {}: no subscribers for {:?}; upstream closed", topic.key, topic.settings.linger);
                    return;
                }
            }
            _ = topic.subscribers_changed.notified() => {}
        }
    }
}

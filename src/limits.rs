//! How much one client and the whole process may take.
//!
//! Every subscription passes through [`Limits::admit`] before it is served.
//! The total number of subscriptions is always capped. The number from one
//! client address and the rate of new subscriptions from one address (a
//! token bucket per address) are capped only when configured: behind a load
//! balancer or a large NAT every browser has the same address, and a deploy
//! reconnects them all at once, so per-address caps on by default would
//! refuse legitimate traffic. An admitted subscription holds an [`Admitted`]
//! guard that gives its place back when it ends. The per-topic and
//! per-template caps are the hub's (it knows its topics); this module only
//! counts clients.
//!
//! An address is an IPv4 address, or an IPv6 /64 (one household or phone
//! has a whole /64, and picks addresses in it at will).
//!
//! Both per-address maps are bounded. An address is in `open` only while it
//! has a subscription (at most `max_subscribers` of them). A bucket carries
//! information only until it is full again, at most one second after the
//! address last subscribed (the burst is one second's rate): full buckets are
//! swept whenever the map has doubled since the last sweep (amortized O(1) per
//! subscription), and the map never holds more than `max_subscribers`
//! addresses. Past that, in a flood of that many new addresses within one
//! second, a new address is admitted without a bucket (counted in `/stats`,
//! logged once): refusing it would refuse newcomers for the flood's sake, and
//! a flood from that many addresses is not what a per-address cap stops.
//!
//! Time is tokio's, so tests pause it and step through refills.
//!
//! Why not `pingora-limits`: its `Rate` and `Inflight` keep fixed memory by
//! sharing counters between keys (a count-min sketch), so under a flood from
//! many addresses the estimate for an innocent address grows and it is
//! refused; it counts in fixed windows (twice the rate across a boundary); and
//! it reads the system clock, which tests cannot pause. A cap that refuses a
//! browser must be about that browser, and the exact maps here are bounded
//! anyway.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::admission::STATS;
use crate::client;
use crate::config::LimitSettings;

/// Which cap a subscription request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_subscribers`: the process is full.
    Total,
    /// `max_subscribers_per_ip`: this address has enough streams open.
    PerAddress,
    /// `subscribe_rate_per_ip`: this address opens streams too fast.
    Rate,
    /// `max_subscribers_per_topic`: this topic instance is full.
    PerTopic,
    /// `max_topic_instances`: this template has enough live instances.
    Instances,
}

impl Limit {
    /// Every cap, in the order of [`Limit::index`].
    pub const ALL: [Limit; 5] = [
        Limit::Total,
        Limit::PerAddress,
        Limit::Rate,
        Limit::PerTopic,
        Limit::Instances,
    ];

    /// The config key, for logs and answers.
    pub fn key(self) -> &'static str {
        match self {
            Limit::Total => "max_subscribers",
            Limit::PerAddress => "max_subscribers_per_ip",
            Limit::Rate => "subscribe_rate_per_ip",
            Limit::PerTopic => "max_subscribers_per_topic",
            Limit::Instances => "max_topic_instances",
        }
    }

    /// Its place in [`Limit::ALL`], for per-cap tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The time an empty bucket takes to fill: the burst is one second's rate.
const REFILL: Duration = Duration::from_secs(1);

/// The smallest bucket map that is swept of full buckets.
const MIN_SWEEP: usize = 1024;

/// A token bucket: `subscribe_rate_per_ip` tokens, refilled at that rate per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// Its tokens at `now`.
    fn level(&self, rate: f64, now: Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.refilled).as_secs_f64() * rate).min(rate)
    }
}

/// What the rate cap says about one new subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// A token was taken.
    Taken,
    /// The bucket is empty: refuse.
    Empty,
    /// The map is full of addresses seen within the last second: admitted
    /// without a bucket.
    Untracked,
}

/// New-subscription budgets per address, for `subscribe_rate_per_ip`.
struct Buckets {
    /// Tokens per address; a full bucket is swept away (it says nothing a
    /// new one would not).
    by_address: HashMap<IpAddr, Bucket>,
    /// The map size that triggers the next sweep: twice what the last one
    /// left (at least [`MIN_SWEEP`]), so sweeping is O(1) per subscription
    /// on average.
    sweep_at: usize,
    /// The last sweep; at `capacity` the map is swept at most once per
    /// [`REFILL`] (nothing can have filled up sooner).
    swept: Option<Instant>,
    /// The most addresses tracked (`max_subscribers`).
    capacity: usize,
}

impl Buckets {
    fn new(capacity: usize) -> Buckets {
        Buckets {
            by_address: HashMap::new(),
            sweep_at: MIN_SWEEP,
            swept: None,
            capacity,
        }
    }

    /// Takes a token for `address` at `now`, `rate` a second.
    fn take(&mut self, address: IpAddr, rate: u32, now: Instant) -> Take {
        let rate = f64::from(rate);
        if !self.by_address.contains_key(&address) {
            self.make_room(rate, now);
            if self.by_address.len() >= self.capacity {
                return Take::Untracked;
            }
        }
        let bucket = self.by_address.entry(address).or_insert(Bucket {
            tokens: rate,
            refilled: now,
        });
        bucket.tokens = bucket.level(rate, now);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return Take::Empty;
        }
        bucket.tokens -= 1.0;
        Take::Taken
    }

    /// Forgets full buckets when the map has doubled, or is at capacity and
    /// was not swept within the last [`REFILL`].
    fn make_room(&mut self, rate: f64, now: Instant) {
        let len = self.by_address.len();
        if len < self.sweep_at.min(self.capacity) {
            return;
        }
        let swept_lately = self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < REFILL);
        if len >= self.capacity && swept_lately {
            return;
        }
        self.by_address
            .retain(|_, bucket| bucket.level(rate, now) < rate);
        self.swept = Some(now);
        self.sweep_at = (2 * self.by_address.len()).max(MIN_SWEEP);
    }
}

/// Counts per client address.
struct Clients {
    /// Open subscriptions per address (only with `max_subscribers_per_ip`).
    open: HashMap<IpAddr, usize>,
    /// New-subscription budgets (only with `subscribe_rate_per_ip`).
    buckets: Buckets,
    /// Open subscriptions in all.
    total: usize,
}

/// The caps of one process, shared by every listener.
pub struct Limits {
    /// The caps, replaced whole by a reload; a place taken under the old
    /// caps is kept until it is given back.
    settings: ArcSwap<LimitSettings>,
    clients: Mutex<Clients>,
}

/// A subscription's place under the caps; dropping it gives the place back.
pub struct Admitted {
    limits: Arc<Limits>,
    /// The address its place is counted under, when per-address caps count.
    address: Option<IpAddr>,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Arc<Limits> {
        Arc::new(Limits {
            settings: ArcSwap::from_pointee(settings),
            clients: Mutex::new(Clients {
                open: HashMap::new(),
                buckets: Buckets::new(settings.max_subscribers),
                total: 0,
            }),
        })
    }

    /// The settings these limits enforce now.
    pub fn settings(&self) -> LimitSettings {
        **self.settings.load()
    }

    /// Enforces `settings` from now on (a reload).
    pub fn set_settings(&self, settings: LimitSettings) {
        self.settings.store(Arc::new(settings));
    }

    fn clients(&self) -> MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new subscription from `address` (unknown for
    /// sessions without a peer address, which only the total cap counts).
    /// An IPv6 address is counted by its /64 ([`client::counted_as`]).
    pub fn admit(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Admitted, Limit> {
        let address = address.map(client::counted_as);
        let settings = self.settings();
        let now = Instant::now();
        let mut untracked = false;
        let mut clients = self.clients();
        if clients.total >= settings.max_subscribers {
            return Err(Limit::Total);
        }
        let mut counted = None;
        if let Some(address) = address {
            if let Some(cap) = settings.max_subscribers_per_ip {
                if clients.open.get(&address).copied().unwrap_or(0) >= cap {
                    return Err(Limit::PerAddress);
                }
            }
            if let Some(rate) = settings.subscribe_rate_per_ip {
                match clients.buckets.take(address, rate, now) {
                    Take::Taken => {}
                    Take::Empty => return Err(Limit::Rate),
                    Take::Untracked => untracked = true,
                }
            }
            if settings.max_subscribers_per_ip.is_some() {
                *clients.open.entry(address).or_insert(0) += 1;
                counted = Some(address);
            }
        }
        clients.total += 1;
        drop(clients);
        if untracked && STATS.rate_untracked.occur(now) {
            log::warn!(
                "subscribe_rate_per_ip: {} addresses subscribed within a second; new addresses are admitted without a rate cap until the flood passes (counted in /stats)",
                settings.max_subscribers
            );
        }
        Ok(Admitted {
            limits: self.clone(),
            address: counted,
        })
    }

    fn release(&self, address: Option<IpAddr>) {
        let mut clients = self.clients();
        clients.total = clients.total.saturating_sub(1);
        if let Some(address) = address {
            if let Some(open) = clients.open.get_mut(&address) {
                *open -= 1;
                if *open == 0 {
                    clients.open.remove(&address);
                }
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn settings(total: usize, per_ip: Option<usize>, rate: Option<u32>) -> LimitSettings {
        LimitSettings {
            max_subscribers: total,
            max_subscribers_per_ip: per_ip,
            max_subscribers_per_topic: 100,
            max_topic_instances: 100,
            subscribe_rate_per_ip: rate,
            over_limit: crate::config::OverLimit::Retry,
            max_last_event_id: 256,
            max_param_len: 128,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            auth_cache_size: 100,
            replay_memory: 1 << 20,
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn total_cap_refuses_and_frees_on_drop() {
        let limits = Limits::new(settings(2, Some(10), Some(100)));
        let a = limits.admit(ip(1)).unwrap();
        let _b = limits.admit(ip(2)).unwrap();
        assert_eq!(limits.admit(ip(3)).err(), Some(Limit::Total));
        drop(a);
        assert!(limits.admit(ip(3)).is_ok());
    }

    #[test]
    fn per_address_cap_counts_each_address_apart() {
        let limits = Limits::new(settings(100, Some(1), None));
        let _a = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).err(), Some(Limit::PerAddress));
        assert!(limits.admit(ip(2)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_is_not_capped_by_default() {
        let limits = Limits::new(settings(100_000, None, None));
        let held: Vec<_> = (0..10_000).map(|_| limits.admit(ip(1)).unwrap()).collect();
        assert_eq!(held.len(), 10_000);
        let clients = limits.clients();
        assert!(clients.open.is_empty() && clients.buckets.by_address.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_cap_refuses_a_burst_past_the_bucket_and_refills_with_time() {
        let limits = Limits::new(settings(100, None, Some(3)));
        let held: Vec<_> = (0..3).map(|_| limits.admit(ip(1)).unwrap()).collect();
        assert_eq!(limits.admit(ip(1)).err(), Some(Limit::Rate));
        assert!(limits.admit(ip(2)).is_ok(), "another address has its own");
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(limits.admit(ip(1)).err(), Some(Limit::Rate));
        tokio::time::advance(Duration::from_millis(40)).await;
        let again = limits.admit(ip(1));
        assert!(again.is_ok(), "a third of a second gives one token back");
        assert_eq!(limits.admit(ip(1)).err(), Some(Limit::Rate));
        tokio::time::advance(Duration::from_secs(10)).await;
        let burst: Vec<_> = (0..3).map(|_| limits.admit(ip(1))).collect();
        assert!(
            burst.iter().all(Result::is_ok),
            "the burst never exceeds the rate"
        );
        assert_eq!(limits.admit(ip(1)).err(), Some(Limit::Rate));
        drop((held, again, burst));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_buckets_stay_bounded_under_a_flood_of_distinct_addresses() {
        let limits = Limits::new(settings(5_000, None, Some(10)));
        let looping = ip(7);
        let held: Vec<_> = (0..10).map(|_| limits.admit(looping).unwrap()).collect();
        // 100k new addresses at one instant: no bucket has refilled, yet the
        // map holds at most max_subscribers of them, and no newcomer is refused.
        for n in 0..100_000u32 {
            let admitted = limits.admit(Some(IpAddr::from(Ipv4Addr::from(n))));
            assert!(admitted.is_ok(), "a newcomer was refused in a flood");
        }
        assert!(limits.clients().buckets.by_address.len() <= 5_000);
        // The address that loops keeps its empty bucket through the flood.
        assert_eq!(limits.admit(looping).err(), Some(Limit::Rate));
        // Once the buckets have refilled, the flood's addresses are swept.
        tokio::time::advance(Duration::from_secs(2)).await;
        for n in 0..10_000u32 {
            let _ = limits.admit(Some(IpAddr::from(Ipv4Addr::from(1_000_000 + n))));
        }
        let left = limits.clients().buckets.by_address.len();
        assert!(left <= 5_000, "{left} buckets");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_of_departed_addresses_are_forgotten() {
        let limits = Limits::new(settings(100_000, Some(10), Some(10)));
        for n in 0..(MIN_SWEEP as u32) {
            drop(limits.admit(Some(IpAddr::from(Ipv4Addr::from(n)))));
        }
        tokio::time::advance(REFILL).await;
        drop(limits.admit(ip(1)));
        let clients = limits.clients();
        assert_eq!(clients.buckets.by_address.len(), 1);
        assert!(clients.open.is_empty());
        assert_eq!(clients.total, 0);
    }

    #[test]
    fn ipv6_addresses_in_one_64_are_counted_together() {
        let limits = Limits::new(settings(100, Some(2), None));
        let v6 = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let _a = limits.admit(v6("2001:db8:0:1::1")).unwrap();
        let _b = limits.admit(v6("2001:db8:0:1:ffff::2")).unwrap();
        assert_eq!(
            limits.admit(v6("2001:db8:0:1:1234::3")).err(),
            Some(Limit::PerAddress)
        );
        assert!(limits.admit(v6("2001:db8:0:2::1")).is_ok(), "another /64");
    }

    #[test]
    fn released_places_leave_no_address_behind() {
        let limits = Limits::new(settings(100, Some(100), Some(100)));
        let admitted = limits.admit(ip(9)).unwrap();
        drop(admitted);
        assert_eq!(limits.clients().total, 0);
        assert!(limits.clients().open.is_empty());
    }
}

//! How much one client and the whole process may take.
//!
//! Every subscription passes through [`Limits::admit`] before it is served:
//! the total number of subscriptions, the number from one client address,
//! and the rate of new subscriptions from one address (a token bucket per
//! address) are capped. An admitted subscription holds an [`Admitted`] guard
//! that gives its place back when it ends. The per-topic and per-template
//! caps are the hub's (it knows its topics); this module only counts clients.
//!
//! The per-address maps are bounded by the clients actually connected: an
//! address is forgotten once it has no subscription and a full bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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

/// A token bucket: `subscribe_rate_per_ip` tokens, refilled at that rate per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Counts per client address.
#[derive(Default)]
struct Clients {
    /// Open subscriptions per address.
    open: HashMap<IpAddr, usize>,
    /// New-subscription budget per address.
    buckets: HashMap<IpAddr, Bucket>,
    /// Open subscriptions in all.
    total: usize,
}

/// The caps of one process, shared by every listener.
pub struct Limits {
    settings: LimitSettings,
    clients: Mutex<Clients>,
}

/// A subscription's place under the caps; dropping it gives the place back.
pub struct Admitted {
    limits: Arc<Limits>,
    address: Option<IpAddr>,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Arc<Limits> {
        Arc::new(Limits {
            settings,
            clients: Mutex::new(Clients::default()),
        })
    }

    /// The settings these limits enforce.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    fn clients(&self) -> MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new subscription from `address` (unknown for
    /// sessions without a peer address, which only the rate cap skips).
    pub fn admit(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Admitted, Limit> {
        let settings = self.settings;
        let mut clients = self.clients();
        if clients.total >= settings.max_subscribers {
            return Err(Limit::Total);
        }
        if let Some(address) = address {
            if clients.open.get(&address).copied().unwrap_or(0) >= settings.max_subscribers_per_ip {
                return Err(Limit::PerAddress);
            }
            let rate = f64::from(settings.subscribe_rate_per_ip);
            let now = Instant::now();
            let bucket = clients.buckets.entry(address).or_insert(Bucket {
                tokens: rate,
                refilled: now,
            });
            bucket.tokens = (bucket.tokens
                + now.duration_since(bucket.refilled).as_secs_f64() * rate)
                .min(rate);
            bucket.refilled = now;
            if bucket.tokens < 1.0 {
                return Err(Limit::Rate);
            }
            bucket.tokens -= 1.0;
            *clients.open.entry(address).or_insert(0) += 1;
        }
        clients.total += 1;
        Ok(Admitted {
            limits: self.clone(),
            address,
        })
    }

    fn release(&self, address: Option<IpAddr>) {
        let rate = f64::from(self.settings.subscribe_rate_per_ip);
        let mut clients = self.clients();
        clients.total = clients.total.saturating_sub(1);
        if let Some(address) = address {
            if let Some(open) = clients.open.get_mut(&address) {
                *open -= 1;
                if *open == 0 {
                    clients.open.remove(&address);
                }
            }
            // Forget buckets that have refilled and have no open stream, so
            // the map stays as small as the set of clients present.
            let now = Instant::now();
            let Clients { open, buckets, .. } = &mut *clients;
            if buckets.len() > open.len() * 2 + 64 {
                buckets.retain(|address, bucket| {
                    open.contains_key(address)
                        || bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * rate
                            < rate
                });
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
    use std::time::Duration;

    fn settings(total: usize, per_ip: usize, rate: u32) -> LimitSettings {
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
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn total_cap_refuses_and_frees_on_drop() {
        let limits = Limits::new(settings(2, 10, 100));
        let a = limits.admit(ip(1)).unwrap();
        let _b = limits.admit(ip(2)).unwrap();
        assert_eq!(limits.admit(ip(3)).err(), Some(Limit::Total));
        drop(a);
        assert!(limits.admit(ip(3)).is_ok());
    }

    #[test]
    fn per_address_cap_counts_each_address_apart() {
        let limits = Limits::new(settings(100, 1, 100));
        let _a = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).err(), Some(Limit::PerAddress));
        assert!(limits.admit(ip(2)).is_ok());
    }

    #[test]
    fn rate_cap_refuses_a_burst_past_the_bucket() {
        let limits = Limits::new(settings(100, 100, 3));
        let held: Vec<_> = (0..3).map(|_| limits.admit(ip(1)).unwrap()).collect();
        assert_eq!(limits.admit(ip(1)).err(), Some(Limit::Rate));
        assert_eq!(held.len(), 3);
    }

    #[test]
    fn released_places_leave_no_address_behind() {
        let limits = Limits::new(settings(100, 100, 100));
        let admitted = limits.admit(ip(9)).unwrap();
        drop(admitted);
        assert_eq!(limits.clients().total, 0);
        assert!(limits.clients().open.is_empty());
    }
}

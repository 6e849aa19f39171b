//! Giving freed memory back to the system, so the process shrinks when load
//! leaves and does not creep under churn.
//!
//! The proxy's heap follows its load: heaptrack on the release binary under
//! the churn soak (`sse-bench churn`: 2,000 subscribers, 10 % replaced per
//! second, 56,000 subscriptions in all) shows the bytes in use flat at about
//! 61 MB while subscribers come and go, and back to 1.8 MB once everyone left
//! (the same 1.8 MB after 20,000 subscriptions as after 56,000: nothing
//! leaks). The resident set did not follow: glibc's malloc keeps what is
//! freed in its per-thread arenas, where only the top of each heap is ever
//! returned, so RSS crept up (+4.5 % over six minutes) and stayed at its
//! high-water mark after everyone left (72 MB against 12 MB at start).
//!
//! `malloc_trim(0)` walks every arena and hands each whole free page back to
//! the kernel (`MADV_DONTNEED`). Called every [`TRIM_INTERVAL`], it holds
//! RSS flat under churn (-1.6 % over the same six minutes) and brings it back
//! to 25 MB after load leaves, without changing memory per subscriber. jemalloc with background purging
//! did as well for creep and return but costs more per subscriber and a C
//! build; the figures and commands are in `docs/benchmarks.md` ("Memory
//! under churn").
//!
//! The trimmer is a Pingora background service, so it runs on its own thread
//! (a trim never stalls a worker serving subscribers) and starts after Pingora
//! daemonises (a thread started before the fork would not survive it). On a
//! target without glibc it does nothing.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};

/// How often freed memory is given back. A trim of a 65 MB heap under churn
/// takes 0.3 to 1.5 ms on its own thread; every ten seconds keeps RSS flat
/// under churn and returns memory within seconds of load leaving.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// The background service that trims every [`TRIM_INTERVAL`] until shutdown.
pub struct Trimmer {
    /// Time between trims (a field so tests can use a short one).
    interval: Duration,
}

/// The trimmer as a service to add to the server.
pub fn trimmer() -> GenBackgroundService<Trimmer> {
    background_service(
        "memory trimmer",
        Trimmer {
            interval: TRIM_INTERVAL,
        },
    )
}

#[async_trait]
impl BackgroundService for Trimmer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    let started = Instant::now();
                    let released = give_back_free_memory();
                    log::debug!("memory trim: {:?}, released: {released}", started.elapsed());
                }
            }
        }
    }
}

/// Returns the allocator's whole free pages to the kernel (see the
/// `malloc-trim` crate); true when any were released.
pub fn give_back_free_memory() -> bool {
    malloc_trim::trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_trimmer_trims_until_shutdown_then_ends() {
        let (stop, watch) = tokio::sync::watch::channel(false);
        let trimmer = Trimmer {
            interval: Duration::from_millis(1),
        };
        let running = tokio::spawn(async move { trimmer.start(watch).await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!running.is_finished());
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the trimmer ends on shutdown")
            .unwrap();
    }

    #[test]
    fn freed_memory_can_be_given_back_at_any_time() {
        let blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();
        drop(blocks);
        // Whether pages are released depends on the heap; it must not fail.
        let _ = give_back_free_memory();
    }
}

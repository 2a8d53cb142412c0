//! What the adapter has done, for operators (one log line per outage, not per request) and
//! for tests (wait until another instance's change has been applied, without sleeping).

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// A cheap, cloneable view of one adapter's progress and connection.
#[derive(Debug, Clone)]
pub struct SharedMonitor {
    inner: Arc<MonitorInner>,
}

#[derive(Debug)]
struct MonitorInner {
    instance_id: String,
    /// Changes from other instances applied here (events, and keys read on resynchronisation).
    applied: watch::Sender<u64>,
    /// Changes of this instance written to Redis.
    written: watch::Sender<u64>,
    /// Completed (re)synchronisations: one at start, one after each return of Redis.
    resyncs: watch::Sender<u64>,
    /// Whether Redis was reachable at the last attempt; flips log once per outage.
    reachable: AtomicBool,
    /// Whether the oldest queued changes have been dropped during the current outage.
    dropping: AtomicBool,
    dropped: AtomicU64,
}

impl SharedMonitor {
    pub(crate) fn new(instance_id: String) -> SharedMonitor {
        SharedMonitor {
            inner: Arc::new(MonitorInner {
                instance_id,
                applied: watch::Sender::new(0),
                written: watch::Sender::new(0),
                resyncs: watch::Sender::new(0),
                reachable: AtomicBool::new(true),
                dropping: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// This instance's random id; its own events carry it and are skipped on receipt.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// How many changes from other instances have been applied here.
    pub fn applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Waits until at least `at_least` changes from other instances have been applied.
    pub async fn wait_applied(&self, at_least: u64) {
        wait_at_least(&self.inner.applied, at_least).await;
    }

    /// A receiver that wakes on every applied change: tests check their condition, then await
    /// `changed()`, with no window in which a change could be missed.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// How many of this instance's changes have been written to Redis.
    pub fn written(&self) -> u64 {
        *self.inner.written.borrow()
    }

    pub async fn wait_written(&self, at_least: u64) {
        wait_at_least(&self.inner.written, at_least).await;
    }

    /// How many synchronisations with Redis have completed (the first at start).
    pub fn resyncs(&self) -> u64 {
        *self.inner.resyncs.borrow()
    }

    pub async fn wait_resyncs(&self, at_least: u64) {
        wait_at_least(&self.inner.resyncs, at_least).await;
    }

    /// Whether the last attempt to reach Redis succeeded.
    pub fn is_reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    /// How many queued changes were dropped (oldest first) because Redis was away too long.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn record_applied(&self) {
        self.inner.applied.send_modify(|count| *count += 1);
    }

    pub(crate) fn record_written(&self) {
        self.inner.written.send_modify(|count| *count += 1);
    }

    pub(crate) fn record_resync(&self) {
        self.inner.resyncs.send_modify(|count| *count += 1);
    }

    /// Notes a failure to reach Redis; only the first failure of an outage is logged.
    /// Returns whether this call was that first one.
    pub(crate) fn mark_unreachable(&self, error: &dyn Display) -> bool {
        let first = self.inner.reachable.swap(false, Ordering::Relaxed);
        if first {
            tracing::warn!(%error, "Redis is unreachable: serving on local state until it is back");
        }
        first
    }

    /// Notes a success; the first one after an outage is logged. Returns whether it was.
    pub(crate) fn mark_reachable(&self) -> bool {
        let back = !self.inner.reachable.swap(true, Ordering::Relaxed);
        if back {
            let dropped = self.dropped();
            tracing::info!(
                dropped,
                "Redis is reachable again: resynchronising shared state"
            );
            self.inner.dropping.store(false, Ordering::Relaxed);
        }
        back
    }

    /// Counts a queued change dropped for lack of room; logs once per outage.
    pub(crate) fn record_dropped(&self) {
        self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.inner.dropping.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "too many shared-state changes queued while Redis is away: dropping the oldest"
            );
        }
    }
}

async fn wait_at_least(sender: &watch::Sender<u64>, at_least: u64) {
    let mut receiver = sender.subscribe();
    // The sender lives as long as the monitor, so waiting cannot fail while we hold it.
    let _ = receiver.wait_for(|count| *count >= at_least).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let monitor = SharedMonitor::new("me".to_owned());
        assert!(monitor.is_reachable());
        assert!(monitor.mark_unreachable(&"refused"));
        assert!(!monitor.mark_unreachable(&"refused"));
        assert!(!monitor.mark_unreachable(&"refused"));
        assert!(!monitor.is_reachable());
        assert!(monitor.mark_reachable());
        assert!(!monitor.mark_reachable());
        assert!(monitor.is_reachable());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_when_the_count_is_reached() {
        let monitor = SharedMonitor::new("me".to_owned());
        let waiter = {
            let monitor = monitor.clone();
            tokio::spawn(async move { monitor.wait_applied(2).await })
        };
        monitor.record_applied();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        monitor.record_applied();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(monitor.applied(), 2);
        // Already reached: returns at once.
        tokio::time::timeout(Duration::from_secs(1), monitor.wait_applied(1))
            .await
            .unwrap();
    }
}

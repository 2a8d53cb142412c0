//! The data plane's only source of wall-clock time, injectable so that tests and simulations
//! can run the fallback logic in virtual time (cooldowns, breaker windows, probe schedules).

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

use relay_core::UnixMillis;

pub trait Clock: Send + Sync + Debug {
    fn now_millis(&self) -> UnixMillis;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> UnixMillis {
        crate::now_millis()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    pub fn new(start: UnixMillis) -> Self {
        ManualClock {
            now: AtomicI64::new(start),
        }
    }

    pub fn set(&self, now: UnixMillis) {
        self.now.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: i64) -> UnixMillis {
        self.now.fetch_add(by_ms, Ordering::SeqCst) + by_ms
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> UnixMillis {
        self.now.load(Ordering::SeqCst)
    }
}

//! An account's [`SelectionView`], published for readers that do not take the account's lock.
//!
//! Selection reads every account of a group on every request. Taking each account's mutex and
//! asking its state machine cost more than the strategies themselves, so whoever changes an
//! account's state (always under its lock) publishes what selection needs as of that moment,
//! and selection reads it back without a lock while it holds.
//!
//! The view is several words, published as a sequence lock: the writer makes the sequence odd,
//! stores the words, and makes it even again; a reader that saw the same even sequence before
//! and after reading the words has one consistent view, and any other reader gets nothing and
//! asks the state under its lock instead. Writers are serialised by the account's lock, never
//! by this type.

use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};

use relay_core::health::HealthStatus;
use relay_core::model::ModelFamily;
use relay_core::state::{family_index, DisableReason, Eligibility, FamilyView, SelectionView};
use relay_core::UnixMillis;

const FAMILIES: usize = 4;

#[derive(Debug)]
pub struct PublishedView {
    sequence: AtomicU64,
    valid_from: AtomicI64,
    valid_until: AtomicI64,
    eligibility: [AtomicU64; FAMILIES],
    /// The health status in the low two bits, the window's request count above them.
    health: AtomicU64,
    success_ewma: AtomicU64,
    latency_ewma_ms: AtomicU64,
}

impl Default for PublishedView {
    fn default() -> Self {
        let view = PublishedView {
            sequence: AtomicU64::new(0),
            valid_from: AtomicI64::new(0),
            valid_until: AtomicI64::new(0),
            eligibility: Default::default(),
            health: AtomicU64::new(0),
            success_ewma: AtomicU64::new(0),
            latency_ewma_ms: AtomicU64::new(0),
        };
        view.store(&SelectionView::STALE);
        view
    }
}

impl PublishedView {
    /// Publishes `view`. The caller holds the lock of the state it was taken from, so there is
    /// one writer at a time.
    pub fn store(&self, view: &SelectionView) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.valid_from.store(view.valid_from, Ordering::Relaxed);
        self.valid_until.store(view.valid_until, Ordering::Relaxed);
        for (word, eligibility) in self.eligibility.iter().zip(view.eligibility) {
            word.store(pack_eligibility(eligibility), Ordering::Relaxed);
        }
        self.health.store(
            (view.requests_in_window << 2) | health_code(view.health),
            Ordering::Relaxed,
        );
        self.success_ewma
            .store(view.success_ewma.to_bits(), Ordering::Relaxed);
        self.latency_ewma_ms
            .store(view.latency_ewma_ms.to_bits(), Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// Makes the published view hold at no time, for a change made without a clock at hand.
    pub fn invalidate(&self) {
        self.store(&SelectionView::STALE);
    }

    /// What a request for `family` reads of the published view, when it holds at `now` and was
    /// not being rewritten meanwhile.
    #[inline]
    pub fn load_for(&self, now: UnixMillis, family: ModelFamily) -> Option<FamilyView> {
        let before = self.sequence.load(Ordering::Acquire);
        let valid_from = self.valid_from.load(Ordering::Relaxed);
        let valid_until = self.valid_until.load(Ordering::Relaxed);
        let eligibility = self.eligibility[family_index(family)].load(Ordering::Relaxed);
        let health = self.health.load(Ordering::Relaxed);
        let success_ewma = self.success_ewma.load(Ordering::Relaxed);
        let latency_ewma_ms = self.latency_ewma_ms.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let unchanged = self.sequence.load(Ordering::Relaxed) == before && before & 1 == 0;
        (unchanged && valid_from <= now && now < valid_until).then(|| FamilyView {
            eligibility: unpack_eligibility(eligibility),
            health: health_of(health & 3),
            requests_in_window: health >> 2,
            success_ewma: f64::from_bits(success_ewma),
            latency_ewma_ms: f64::from_bits(latency_ewma_ms),
        })
    }
}

fn health_code(status: HealthStatus) -> u64 {
    match status {
        HealthStatus::Healthy => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unhealthy => 2,
    }
}

fn health_of(code: u64) -> HealthStatus {
    // A table rather than a match: read for every account on every request.
    const BY_CODE: [HealthStatus; 4] = [
        HealthStatus::Healthy,
        HealthStatus::Degraded,
        HealthStatus::Unhealthy,
        HealthStatus::Unhealthy,
    ];
    BY_CODE[(code & 3) as usize]
}

// An eligibility in one word: the kind in bits 0..3, a disable's reason in bits 3..5, the time
// (milliseconds, signed) from bit 8 up.
const ELIGIBLE: u64 = 0;
const COOLING_DOWN: u64 = 1;
const BREAKER_OPEN: u64 = 2;
const DISABLED_UNTIL: u64 = 3;
const DISABLED: u64 = 4;
const AT_CAPACITY: u64 = 5;

fn pack_eligibility(eligibility: Eligibility) -> u64 {
    let with_time = |kind: u64, until: UnixMillis| kind | ((until as u64) << 8);
    match eligibility {
        Eligibility::Eligible => ELIGIBLE,
        Eligibility::AtCapacity => AT_CAPACITY,
        Eligibility::CoolingDown { until } => with_time(COOLING_DOWN, until),
        Eligibility::BreakerOpen { until } => with_time(BREAKER_OPEN, until),
        Eligibility::Disabled { until, reason } => {
            let reason = match reason {
                DisableReason::Manual => 0,
                DisableReason::Temporary => 1,
                DisableReason::Auth => 2,
                DisableReason::Billing => 3,
            } << 3;
            match until {
                Some(until) => with_time(DISABLED_UNTIL | reason, until),
                None => DISABLED | reason,
            }
        }
    }
}

fn unpack_eligibility(word: u64) -> Eligibility {
    if word == ELIGIBLE {
        // Nearly every account, nearly always: nothing to take apart.
        return Eligibility::Eligible;
    }
    // An arithmetic shift gives the signed time back.
    let until = (word as i64) >> 8;
    let reason = match (word >> 3) & 3 {
        0 => DisableReason::Manual,
        1 => DisableReason::Temporary,
        2 => DisableReason::Auth,
        _ => DisableReason::Billing,
    };
    match word & 7 {
        COOLING_DOWN => Eligibility::CoolingDown { until },
        BREAKER_OPEN => Eligibility::BreakerOpen { until },
        DISABLED_UNTIL => Eligibility::Disabled {
            until: Some(until),
            reason,
        },
        DISABLED => Eligibility::Disabled {
            until: None,
            reason,
        },
        AT_CAPACITY => Eligibility::AtCapacity,
        _ => Eligibility::Eligible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn every_eligibility_survives_its_word() {
        let reasons = [
            DisableReason::Manual,
            DisableReason::Temporary,
            DisableReason::Auth,
            DisableReason::Billing,
        ];
        let mut all = vec![
            Eligibility::Eligible,
            Eligibility::AtCapacity,
            Eligibility::CoolingDown { until: T0 },
            Eligibility::BreakerOpen { until: T0 + 1 },
            Eligibility::CoolingDown { until: -5 },
        ];
        for reason in reasons {
            all.push(Eligibility::Disabled {
                until: Some(T0 + 2),
                reason,
            });
            all.push(Eligibility::Disabled {
                until: None,
                reason,
            });
        }
        for eligibility in all {
            assert_eq!(
                unpack_eligibility(pack_eligibility(eligibility)),
                eligibility
            );
        }
    }

    fn view(valid_from: i64, valid_until: i64) -> SelectionView {
        SelectionView {
            valid_from,
            valid_until,
            eligibility: [
                Eligibility::Eligible,
                Eligibility::CoolingDown { until: T0 + 90 },
                Eligibility::BreakerOpen { until: T0 + 40 },
                Eligibility::Disabled {
                    until: Some(T0 + 60),
                    reason: DisableReason::Temporary,
                },
            ],
            health: HealthStatus::Degraded,
            requests_in_window: 123_456,
            success_ewma: 0.625,
            latency_ewma_ms: 812.25,
        }
    }

    const ALL_FAMILIES: [ModelFamily; FAMILIES] = [
        ModelFamily::Opus,
        ModelFamily::Sonnet,
        ModelFamily::Haiku,
        ModelFamily::Other,
    ];

    /// What requests of every family read at `now`, or `None` if any of them reads nothing.
    fn read_back(published: &PublishedView, now: i64) -> Option<Vec<FamilyView>> {
        ALL_FAMILIES
            .iter()
            .map(|family| published.load_for(now, *family))
            .collect()
    }

    fn families_of(view: &SelectionView) -> Vec<FamilyView> {
        ALL_FAMILIES
            .iter()
            .map(|family| view.for_family(*family))
            .collect()
    }

    #[test]
    fn a_view_reads_back_only_while_it_holds() {
        let published = PublishedView::default();
        assert_eq!(read_back(&published, T0), None, "nothing published yet");
        let taken = view(T0, T0 + 40);
        published.store(&taken);
        assert_eq!(read_back(&published, T0), Some(families_of(&taken)));
        assert_eq!(read_back(&published, T0 + 39), Some(families_of(&taken)));
        assert_eq!(read_back(&published, T0 + 40), None);
        assert_eq!(read_back(&published, T0 - 1), None, "the clock went back");
        published.invalidate();
        assert_eq!(read_back(&published, T0), None);
    }

    #[test]
    fn readers_never_see_half_a_view() {
        // Two views whose every word differs; a reader racing the writer gets one of them
        // whole, or nothing.
        let first = view(T0, T0 + 1_000);
        let second = SelectionView {
            eligibility: [Eligibility::BreakerOpen { until: T0 + 7 }; FAMILIES],
            health: HealthStatus::Unhealthy,
            requests_in_window: 7,
            success_ewma: 0.125,
            latency_ewma_ms: 3.5,
            ..view(T0 - 10, T0 + 2_000)
        };
        let published = PublishedView::default();
        published.store(&first);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for round in 0..200_000 {
                    published.store(if round % 2 == 0 { &second } else { &first });
                }
            });
            let mut seen = 0;
            for round in 0..200_000 {
                let family = ALL_FAMILIES[round % FAMILIES];
                if let Some(read) = published.load_for(T0, family) {
                    let whole = [first.for_family(family), second.for_family(family)];
                    assert!(whole.contains(&read), "torn read: {read:?}");
                    seen += 1;
                }
            }
            assert!(seen > 0);
        });
    }
}

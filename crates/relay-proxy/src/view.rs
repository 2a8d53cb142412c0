//! An account's [`SelectionView`], published for readers that do not take the account's lock,
//! beside the settings selection reads of the account: one cache line per member.
//!
//! Selection reads every account of a group on every request. Taking each account's mutex and
//! asking its state machine cost more than the strategies themselves, so whoever changes an
//! account's state (always under its lock) publishes what selection needs as of that moment,
//! and selection reads it back without a lock while it holds. For a group of thousands of
//! accounts the loop is bound by memory traffic, so a member's settings and its view share one
//! 64-byte line and nothing else of the member is read in the common case.
//!
//! The view is several words, published as a sequence lock: the writer makes the sequence odd,
//! stores the words, and makes it even again; a reader that saw the same even sequence before
//! and after reading the words has one consistent view, and any other reader gets nothing and
//! asks the state under its lock instead. Writers are serialised by the account's lock, never
//! by this type.

use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};

use relay_core::health::HealthStatus;
use relay_core::model::ModelFamily;
use relay_core::state::{family_index, DisableReason, Eligibility, FamilyView, SelectionView};
use relay_core::UnixMillis;

/// What selection reads of a member's settings, fixed for the life of a group's table (a
/// change to an account rebuilds the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSettings {
    pub account_id: i64,
    pub priority: i32,
    pub weight: u32,
    /// Disabled, limited to some models or to some concurrency: selection must read the member
    /// itself before it may take the account.
    pub read_member: bool,
}

#[derive(Debug)]
#[repr(C, align(64))]
pub struct PublishedView {
    sequence: AtomicU32,
    /// Requests running on the account, changed under the account's lock (not part of the
    /// sequence lock: a live count that selection reads as it is).
    running: AtomicU32,
    account_id: i64,
    priority: i32,
    weight: u32,
    valid_from: AtomicI64,
    /// See [`Status`]: health, which families are eligible, the window's request count and
    /// how long after `valid_from` the view holds.
    status: AtomicU64,
    /// The eligibility of every family not marked eligible in the status, packed, when they
    /// all share one (else the status says the view must be read under the lock).
    blocked: AtomicU64,
    success_ewma: AtomicU64,
    latency_ewma_ms: AtomicU64,
}

/// The status word: the health status in bits 0..2, one bit per eligible family in bits 2..6,
/// bit 6 set when the ineligible families differ in why, bit 7 set for good when the member's
/// settings say it must be read itself, the window's request count (capped) in bits 8..39, and in bits 39..64 for how many milliseconds from `valid_from` the view
/// holds (capped at about nine hours: a shorter span only makes the view hold for less).
struct Status;

impl Status {
    const ELIGIBLE_SHIFT: u32 = 2;
    const MIXED: u64 = 1 << 6;
    const READ_MEMBER: u64 = 1 << 7;
    const REQUESTS_SHIFT: u32 = 8;
    const REQUESTS_MAX: u64 = (1 << 31) - 1;
    const SPAN_SHIFT: u32 = 39;
    const SPAN_MAX: u64 = (1 << (64 - Self::SPAN_SHIFT)) - 1;
}

/// What selection reads of an account that may take a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EligibleFigures {
    pub health: HealthStatus,
    pub requests_in_window: u64,
    pub success_ewma: f64,
    pub latency_ewma_ms: f64,
}

/// A model family's bit in the status word, worked out once per request.
#[derive(Debug, Clone, Copy)]
pub struct FamilyBit(u64);

impl FamilyBit {
    pub fn of(family: ModelFamily) -> Self {
        FamilyBit(1 << (family_index(family) as u32 + Status::ELIGIBLE_SHIFT))
    }
}

impl PublishedView {
    pub fn new(settings: MemberSettings) -> Self {
        let view = PublishedView {
            sequence: AtomicU32::new(0),
            running: AtomicU32::new(0),
            account_id: settings.account_id,
            priority: settings.priority,
            weight: settings.weight,
            valid_from: AtomicI64::new(0),
            status: AtomicU64::new(if settings.read_member {
                Status::READ_MEMBER
            } else {
                0
            }),
            blocked: AtomicU64::new(0),
            success_ewma: AtomicU64::new(0),
            latency_ewma_ms: AtomicU64::new(0),
        };
        view.store(&SelectionView::STALE);
        view
    }

    /// The account's id, priority and weight, as the table was built with (what
    /// [`PublishedView::settings`] gives, without the status word's flag).
    #[inline(always)]
    pub fn identity(&self) -> (i64, i32, u32) {
        (self.account_id, self.priority, self.weight)
    }

    /// The member's settings, as the table was built with.
    #[inline]
    pub fn settings(&self) -> MemberSettings {
        MemberSettings {
            account_id: self.account_id,
            priority: self.priority,
            weight: self.weight,
            read_member: self.status.load(Ordering::Relaxed) & Status::READ_MEMBER != 0,
        }
    }

    /// Requests running on the account, as counted in this table.
    #[inline]
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Counts a request as started (`true`) or ended on the account. The caller holds the
    /// account's lock, so that moving the count to a new table loses nothing.
    pub fn count_running(&self, started: bool) {
        if started {
            self.running.fetch_add(1, Ordering::Relaxed);
        } else {
            // Never below zero, whatever a caller gets wrong.
            let _ = self
                .running
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Carries the running count over from the table the account leaves (under its lock).
    pub fn take_running_from(&self, old: &PublishedView) {
        self.running.store(old.running(), Ordering::Relaxed);
    }

    /// Publishes `view`. The caller holds the lock of the state it was taken from, so there is
    /// one writer at a time.
    pub fn store(&self, view: &SelectionView) {
        let mut eligible = 0u64;
        let mut blocked: Option<Eligibility> = None;
        let mut mixed = false;
        for (family, eligibility) in view.eligibility.iter().enumerate() {
            if *eligibility == Eligibility::Eligible {
                eligible |= 1 << family;
            } else if blocked.is_some_and(|first| first != *eligibility) {
                mixed = true;
            } else {
                blocked = Some(*eligibility);
            }
        }
        // A view that holds at no time keeps an empty span.
        let span = u64::try_from(view.valid_until.saturating_sub(view.valid_from))
            .unwrap_or(0)
            .min(Status::SPAN_MAX);
        // Only the writer changes the status, and never this bit.
        let read_member = self.status.load(Ordering::Relaxed) & Status::READ_MEMBER;
        let status = read_member
            | health_code(view.health)
            | eligible << Status::ELIGIBLE_SHIFT
            | if mixed { Status::MIXED } else { 0 }
            | view.requests_in_window.min(Status::REQUESTS_MAX) << Status::REQUESTS_SHIFT
            | span << Status::SPAN_SHIFT;

        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.valid_from.store(view.valid_from, Ordering::Relaxed);
        self.status.store(status, Ordering::Relaxed);
        self.blocked.store(
            blocked.map_or(ELIGIBLE, pack_eligibility),
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

    /// The view's words, when it holds at `now` and was not being rewritten meanwhile (the
    /// reader's side of the sequence lock). The word of blocked families is read only with
    /// `BLOCKED`: the fast path never needs it.
    #[inline(always)]
    fn read<const BLOCKED: bool>(&self, now: UnixMillis) -> Option<Words> {
        let before = self.sequence.load(Ordering::Acquire);
        let valid_from = self.valid_from.load(Ordering::Relaxed);
        let status = self.status.load(Ordering::Relaxed);
        let blocked = match BLOCKED {
            true => self.blocked.load(Ordering::Relaxed),
            false => ELIGIBLE,
        };
        let success_ewma = self.success_ewma.load(Ordering::Relaxed);
        let latency_ewma_ms = self.latency_ewma_ms.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let unchanged = self.sequence.load(Ordering::Relaxed) == before && before & 1 == 0;
        // `now - valid_from` below the span: both ends in one unsigned comparison.
        let span = status >> Status::SPAN_SHIFT;
        let holds = (now.wrapping_sub(valid_from) as u64) < span;
        (unchanged & holds).then_some(Words {
            status,
            blocked,
            success_ewma,
            latency_ewma_ms,
        })
    }

    /// The figures of an account that may take a request for `family` at `now`, when the
    /// published view says so, holds at `now` and was not being rewritten meanwhile, and the
    /// member's settings need nothing of the member itself; `None` for anything else, which
    /// [`PublishedView::load_for`] then tells apart. The one read selection makes of nearly
    /// every member, so it decides with as few steps as it can.
    #[inline(always)]
    pub fn eligible(&self, now: UnixMillis, family: FamilyBit) -> Option<EligibleFigures> {
        let words = self.read::<false>(now)?;
        // Eligible for the family, and no need to read the member itself.
        let plain = words.status & (family.0 | Status::READ_MEMBER) == family.0;
        plain.then(|| words.figures())
    }

    /// What a request for `family` reads of the published view, when it holds at `now` and was
    /// not being rewritten meanwhile, and tells the eligibility of `family` on its own.
    pub fn load_for(&self, now: UnixMillis, family: ModelFamily) -> Option<FamilyView> {
        let words = self.read::<true>(now)?;
        let eligibility = if words.status & FamilyBit::of(family).0 != 0 {
            Eligibility::Eligible
        } else if words.status & Status::MIXED != 0 {
            return None;
        } else {
            unpack_eligibility(words.blocked)
        };
        let figures = words.figures();
        Some(FamilyView {
            eligibility,
            health: figures.health,
            requests_in_window: figures.requests_in_window,
            success_ewma: figures.success_ewma,
            latency_ewma_ms: figures.latency_ewma_ms,
        })
    }
}

/// A view's words as one consistent read gave them.
struct Words {
    status: u64,
    blocked: u64,
    success_ewma: u64,
    latency_ewma_ms: u64,
}

impl Words {
    #[inline(always)]
    fn figures(&self) -> EligibleFigures {
        EligibleFigures {
            health: health_of(self.status & 3),
            requests_in_window: (self.status >> Status::REQUESTS_SHIFT) & Status::REQUESTS_MAX,
            success_ewma: f64::from_bits(self.success_ewma),
            latency_ewma_ms: f64::from_bits(self.latency_ewma_ms),
        }
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

    const FAMILIES: usize = 4;

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

    /// A view whose ineligible families share one reason, as almost every view's do.
    fn view(valid_from: i64, valid_until: i64) -> SelectionView {
        SelectionView {
            valid_from,
            valid_until,
            eligibility: [
                Eligibility::Eligible,
                Eligibility::CoolingDown { until: T0 + 90 },
                Eligibility::Eligible,
                Eligibility::CoolingDown { until: T0 + 90 },
            ],
            health: HealthStatus::Degraded,
            requests_in_window: 123_456,
            success_ewma: 0.625,
            latency_ewma_ms: 812.25,
        }
    }

    const SETTINGS: MemberSettings = MemberSettings {
        account_id: 42,
        priority: -3,
        weight: 250,
        read_member: true,
    };

    fn published() -> PublishedView {
        PublishedView::new(SETTINGS)
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
    fn a_member_and_its_view_share_one_cache_line() {
        assert_eq!(std::mem::size_of::<PublishedView>(), 64);
        assert_eq!(std::mem::align_of::<PublishedView>(), 64);
        let published = published();
        assert_eq!(published.settings(), SETTINGS);
        published.store(&view(T0, T0 + 40));
        assert_eq!(
            published.settings(),
            SETTINGS,
            "publishing leaves the settings"
        );
    }

    #[test]
    fn a_view_reads_back_only_while_it_holds() {
        let published = published();
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
    fn a_long_span_is_cut_short_and_huge_figures_are_capped() {
        let published = published();
        let forever = SelectionView {
            requests_in_window: u64::MAX,
            ..view(T0, UnixMillis::MAX)
        };
        published.store(&forever);
        let read = published.load_for(T0 + 1_000, ModelFamily::Opus);
        assert_eq!(
            read.map(|view| view.requests_in_window),
            Some((1 << 31) - 1)
        );
        // The span is capped, so the view holds for less than it could, never for longer.
        let after_the_cap = T0 + Status::SPAN_MAX as i64;
        assert_eq!(
            published.load_for(after_the_cap - 1, ModelFamily::Opus),
            read
        );
        assert_eq!(published.load_for(after_the_cap, ModelFamily::Opus), None);
    }

    #[test]
    fn the_fast_read_takes_only_plain_eligible_members() {
        let plain = PublishedView::new(MemberSettings {
            read_member: false,
            ..SETTINGS
        });
        let limited = published();
        let taken = view(T0, T0 + 40);
        for published in [&plain, &limited] {
            published.store(&taken);
        }
        let opus = FamilyBit::of(ModelFamily::Opus);
        let sonnet = FamilyBit::of(ModelFamily::Sonnet);
        let figures = plain.eligible(T0, opus);
        assert_eq!(
            figures,
            Some(EligibleFigures {
                health: HealthStatus::Degraded,
                requests_in_window: 123_456,
                success_ewma: 0.625,
                latency_ewma_ms: 812.25,
            })
        );
        assert_eq!(plain.eligible(T0, sonnet), None, "cooling down for sonnet");
        assert_eq!(plain.eligible(T0 + 40, opus), None, "lapsed");
        assert_eq!(limited.eligible(T0, opus), None, "the member must be read");
        assert!(
            limited.settings().read_member,
            "publishing keeps the setting"
        );
        assert!(!plain.settings().read_member);
    }

    #[test]
    fn the_running_count_moves_with_the_account_and_never_goes_below_zero() {
        let old = published();
        old.count_running(true);
        old.count_running(true);
        old.count_running(false);
        old.store(&view(T0, T0 + 40));
        assert_eq!(old.running(), 1, "publishing leaves the count");
        let new = published();
        new.take_running_from(&old);
        assert_eq!(new.running(), 1);
        new.count_running(false);
        new.count_running(false);
        assert_eq!(new.running(), 0);
    }

    #[test]
    fn families_blocked_for_different_reasons_are_read_under_the_lock() {
        let published = published();
        let mixed = SelectionView {
            eligibility: [
                Eligibility::Eligible,
                Eligibility::CoolingDown { until: T0 + 90 },
                Eligibility::BreakerOpen { until: T0 + 40 },
                Eligibility::Disabled {
                    until: Some(T0 + 60),
                    reason: DisableReason::Temporary,
                },
            ],
            ..view(T0, T0 + 40)
        };
        published.store(&mixed);
        let read = |family| published.load_for(T0, family);
        assert_eq!(
            read(ModelFamily::Opus),
            Some(mixed.for_family(ModelFamily::Opus))
        );
        for family in &ALL_FAMILIES[1..] {
            assert_eq!(read(*family), None, "{family:?}");
        }
        // One reason for every blocked family reads back whole again.
        let blocked = SelectionView {
            eligibility: [Eligibility::Disabled {
                until: None,
                reason: DisableReason::Auth,
            }; FAMILIES],
            ..mixed
        };
        published.store(&blocked);
        assert_eq!(read_back(&published, T0), Some(families_of(&blocked)));
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
        let published = published();
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

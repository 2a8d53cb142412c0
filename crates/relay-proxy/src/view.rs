//! An account's [`SelectionView`], published for readers that do not take the account's lock,
//! in its group's table: 32 bytes per member that selection reads, the rest beside them.
//!
//! Selection reads every account of a group on every request. Taking each account's mutex and
//! asking its state machine cost more than the strategies themselves, so whoever changes an
//! account's state (always under its lock) publishes what selection needs as of that moment,
//! and selection reads it back without a lock while it holds. For a group of thousands of
//! accounts the loop is bound by how much it reads per member, so what it reads of a member
//! (until when the view holds, a status word with the priority, the two learned figures, the
//! running count and the weight) fills half a cache line, and the member's id and the reasons
//! of its blocked families lie in a second array that only the slow path reads.
//!
//! The view is several words, published as a sequence lock whose sequence word is also the
//! time the view holds until: the writer stores a word that holds at no time, stores the other
//! words, and stores the time it holds until with a sequence number of its own in the low bits.
//! A reader that saw the same word before and after reading the others, and a time after its
//! own, has one consistent view; any other reader gets nothing and asks the state under its
//! lock instead. Writers are serialised by the account's lock, never by this type.

use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};

use relay_core::health::HealthStatus;
use relay_core::model::{AccountId, ModelFamily};
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

/// What selection reads of one member: half a cache line.
#[derive(Debug)]
#[repr(C, align(32))]
pub struct PublishedView {
    /// The sequence lock's word: until when the view holds, shifted up, with the number of
    /// the write in the low bits (see [`Until`]); negative while the words are rewritten and
    /// for a view that holds at no time.
    until: AtomicI64,
    /// See [`Status`]: health, which families are eligible, the window's request count, and
    /// the member's priority.
    status: AtomicU64,
    /// The success rate and the latency, as `f32` bits (low and high half): figures that rank,
    /// where the seventh significant digit never matters.
    figures: AtomicU64,
    /// Requests running on the account, changed under the account's lock (not part of the
    /// sequence lock: a live count that selection reads as it is).
    running: AtomicU32,
    weight: u32,
}

/// A group's table: a [`PublishedView`] per member, in the members' order, and beside them
/// the members' account ids and what only the slow path reads.
#[derive(Debug)]
pub struct ViewTable {
    views: Box<[PublishedView]>,
    account_ids: Box<[AccountId]>,
    /// Per member, the eligibility of every family not marked eligible in the status, packed,
    /// when they all share one (else the status says the view must be read under the lock).
    /// Written under the member's sequence lock.
    blocked: Box<[AtomicU64]>,
}

/// One member's place in a [`ViewTable`].
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    view: &'a PublishedView,
    account_id: AccountId,
    blocked: &'a AtomicU64,
}

/// The status word: the health status in bits 0..2, one bit per eligible family in bits 2..6,
/// bit 6 set when the ineligible families differ in why, bit 7 set for good when the member's
/// settings say it must be read itself, the window's request count (capped) in bits 8..32, and
/// the member's priority in bits 32..64 (fixed with the table; the writer keeps it).
struct Status;

impl Status {
    const ELIGIBLE_SHIFT: u32 = 2;
    const MIXED: u64 = 1 << 6;
    const READ_MEMBER: u64 = 1 << 7;
    const REQUESTS_SHIFT: u32 = 8;
    const REQUESTS_MAX: u64 = (1 << 24) - 1;
    const PRIORITY_SHIFT: u32 = 32;
    /// What a write keeps of the word: the priority and the read-member flag.
    const SETTINGS: u64 = !((1 << Self::PRIORITY_SHIFT) - 1) | Self::READ_MEMBER;
}

/// The sequence word: the time a view holds until, in milliseconds, in bits 21..63 (capped at
/// 2⁴² − 1, the year 2109: a view only holds for less), and the number of the write in bits
/// 0..21. Negative for a view that holds at no time, and while the words are rewritten.
struct Until;

impl Until {
    const SEQUENCE_BITS: u32 = 21;
    const SEQUENCE: i64 = (1 << Self::SEQUENCE_BITS) - 1;
    const TIME_MAX: i64 = (1 << (63 - Self::SEQUENCE_BITS)) - 1;
    const NEVER: i64 = i64::MIN;

    fn word(until: UnixMillis, sequence: i64) -> i64 {
        match until {
            ..=0 => Self::NEVER | sequence,
            _ => until.min(Self::TIME_MAX) << Self::SEQUENCE_BITS | sequence,
        }
    }
}

/// The time a reader reads at, in the form it is compared with the sequence word: `now` holds
/// in a view exactly when this is below the view's word (whatever the word's sequence bits).
#[derive(Debug, Clone, Copy)]
pub struct ReadTime(i64);

impl ReadTime {
    pub fn at(now: UnixMillis) -> Self {
        ReadTime(now.clamp(0, Until::TIME_MAX) << Until::SEQUENCE_BITS | Until::SEQUENCE)
    }

    #[inline(always)]
    fn within(self, word: i64) -> bool {
        self.0 < word
    }
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

impl ViewTable {
    /// A table for members with these settings, in this order; no view holds yet.
    pub fn new(settings: impl IntoIterator<Item = MemberSettings>) -> Self {
        let (views, account_ids): (Vec<_>, Vec<_>) = settings
            .into_iter()
            .map(|settings| {
                let view = PublishedView {
                    until: AtomicI64::new(Until::NEVER),
                    status: AtomicU64::new(
                        u64::from(settings.priority as u32) << Status::PRIORITY_SHIFT
                            | if settings.read_member {
                                Status::READ_MEMBER
                            } else {
                                0
                            },
                    ),
                    figures: AtomicU64::new(0),
                    running: AtomicU32::new(0),
                    weight: settings.weight,
                };
                (view, settings.account_id)
            })
            .unzip();
        ViewTable {
            blocked: views.iter().map(|_| AtomicU64::new(ELIGIBLE)).collect(),
            views: views.into_boxed_slice(),
            account_ids: account_ids.into_boxed_slice(),
        }
    }

    /// What selection reads of every member, in order.
    #[inline(always)]
    pub fn views(&self) -> &[PublishedView] {
        &self.views
    }

    /// The members' account ids, in order.
    #[inline(always)]
    pub fn account_ids(&self) -> &[AccountId] {
        &self.account_ids
    }

    pub fn slot(&self, index: usize) -> Option<Slot<'_>> {
        Some(Slot {
            view: self.views.get(index)?,
            account_id: *self.account_ids.get(index)?,
            blocked: self.blocked.get(index)?,
        })
    }
}

impl PublishedView {
    /// The member's weight, as the table was built with.
    #[inline(always)]
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Requests running on the account, as counted in this table.
    #[inline(always)]
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// The view's words, when it holds at `at` and was not being rewritten meanwhile (the
    /// reader's side of the sequence lock). The word of blocked families is read only with
    /// `blocked`: the fast path never needs it.
    #[inline(always)]
    fn read(&self, at: ReadTime, blocked: Option<&AtomicU64>) -> Option<Words> {
        let before = self.until.load(Ordering::Acquire);
        if !at.within(before) {
            return None;
        }
        let status = self.status.load(Ordering::Relaxed);
        let figures = self.figures.load(Ordering::Relaxed);
        let blocked = blocked.map_or(ELIGIBLE, |word| word.load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        let unchanged = self.until.load(Ordering::Relaxed) == before;
        unchanged.then_some(Words {
            status,
            figures,
            blocked,
        })
    }

    /// The figures and the priority of an account that may take a request for `family` at
    /// `at`, when the published view says so, holds at `at` and was not being rewritten
    /// meanwhile, and the member's settings need nothing of the member itself; `None` for
    /// anything else, which [`Slot::load_for`] then tells apart. The one read selection makes
    /// of nearly every member, so it decides with as few steps as it can.
    #[inline(always)]
    pub fn eligible(&self, at: ReadTime, family: FamilyBit) -> Option<(EligibleFigures, i32)> {
        let words = self.read(at, None)?;
        // Eligible for the family, and no need to read the member itself.
        let plain = words.status & (family.0 | Status::READ_MEMBER) == family.0;
        plain.then(|| (words.figures(), words.priority()))
    }
}

impl Slot<'_> {
    /// The member's settings, as the table was built with.
    pub fn settings(&self) -> MemberSettings {
        let status = self.view.status.load(Ordering::Relaxed);
        MemberSettings {
            account_id: self.account_id,
            priority: (status >> Status::PRIORITY_SHIFT) as u32 as i32,
            weight: self.view.weight,
            read_member: status & Status::READ_MEMBER != 0,
        }
    }

    /// Requests running on the account, as counted in this table.
    pub fn running(&self) -> u32 {
        self.view.running()
    }

    /// Counts a request as started (`true`) or ended on the account. The caller holds the
    /// account's lock, so that moving the count to a new table loses nothing.
    pub fn count_running(&self, started: bool) {
        let running = &self.view.running;
        if started {
            running.fetch_add(1, Ordering::Relaxed);
        } else {
            // Never below zero, whatever a caller gets wrong.
            let _ =
                running.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Carries the running count over from the table the account leaves (under its lock).
    pub fn take_running_from(&self, old: &Slot<'_>) {
        self.view.running.store(old.running(), Ordering::Relaxed);
    }

    /// Publishes `view`. The caller holds the lock of the state it was taken from, so there is
    /// one writer at a time. The view holds from now until `view.valid_until`: selection reads
    /// it with its own clock, which may lag the writer's by a moment, and the newer state is
    /// what it should see then too.
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
        let published = self.view;
        // Only the writer changes the status, and never its settings.
        let settings = published.status.load(Ordering::Relaxed) & Status::SETTINGS;
        let status = settings
            | health_code(view.health)
            | eligible << Status::ELIGIBLE_SHIFT
            | if mixed { Status::MIXED } else { 0 }
            | view.requests_in_window.min(Status::REQUESTS_MAX) << Status::REQUESTS_SHIFT;
        let figures = u64::from((view.success_ewma as f32).to_bits())
            | u64::from((view.latency_ewma_ms as f32).to_bits()) << 32;

        let sequence = published.until.load(Ordering::Relaxed).wrapping_add(1) & Until::SEQUENCE;
        published
            .until
            .store(Until::NEVER | sequence, Ordering::Relaxed);
        fence(Ordering::Release);
        published.status.store(status, Ordering::Relaxed);
        published.figures.store(figures, Ordering::Relaxed);
        self.blocked.store(
            blocked.map_or(ELIGIBLE, pack_eligibility),
            Ordering::Relaxed,
        );
        published
            .until
            .store(Until::word(view.valid_until, sequence), Ordering::Release);
    }

    /// Makes the published view hold at no time, for a change made without a clock at hand.
    pub fn invalidate(&self) {
        self.store(&SelectionView::STALE);
    }

    /// What a request for `family` reads of the published view, when it holds at `now` and was
    /// not being rewritten meanwhile, and tells the eligibility of `family` on its own.
    pub fn load_for(&self, now: UnixMillis, family: ModelFamily) -> Option<FamilyView> {
        let words = self.view.read(ReadTime::at(now), Some(self.blocked))?;
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
    figures: u64,
    blocked: u64,
}

impl Words {
    #[inline(always)]
    fn figures(&self) -> EligibleFigures {
        EligibleFigures {
            health: health_of(self.status & 3),
            requests_in_window: (self.status >> Status::REQUESTS_SHIFT) & Status::REQUESTS_MAX,
            success_ewma: f64::from(f32::from_bits(self.figures as u32)),
            latency_ewma_ms: f64::from(f32::from_bits((self.figures >> 32) as u32)),
        }
    }

    #[inline(always)]
    fn priority(&self) -> i32 {
        (self.status >> Status::PRIORITY_SHIFT) as u32 as i32
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

    fn table(settings: MemberSettings) -> ViewTable {
        ViewTable::new([settings])
    }

    fn slot(table: &ViewTable) -> Slot<'_> {
        table.slot(0).expect("one member")
    }

    const ALL_FAMILIES: [ModelFamily; FAMILIES] = [
        ModelFamily::Opus,
        ModelFamily::Sonnet,
        ModelFamily::Haiku,
        ModelFamily::Other,
    ];

    /// What requests of every family read at `now`, or `None` if any of them reads nothing.
    fn read_back(slot: Slot<'_>, now: i64) -> Option<Vec<FamilyView>> {
        ALL_FAMILIES
            .iter()
            .map(|family| slot.load_for(now, *family))
            .collect()
    }

    fn families_of(view: &SelectionView) -> Vec<FamilyView> {
        ALL_FAMILIES
            .iter()
            .map(|family| view.for_family(*family))
            .collect()
    }

    #[test]
    fn what_selection_reads_of_a_member_is_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<PublishedView>(), 32);
        assert_eq!(std::mem::align_of::<PublishedView>(), 32);
        let table = table(SETTINGS);
        assert_eq!(slot(&table).settings(), SETTINGS);
        assert_eq!(table.account_ids(), [42]);
        slot(&table).store(&view(T0, T0 + 40));
        assert_eq!(
            slot(&table).settings(),
            SETTINGS,
            "publishing leaves the settings"
        );
    }

    #[test]
    fn a_view_reads_back_until_it_lapses() {
        let table = table(SETTINGS);
        let slot = slot(&table);
        assert_eq!(read_back(slot, T0), None, "nothing published yet");
        let taken = view(T0, T0 + 40);
        slot.store(&taken);
        assert_eq!(read_back(slot, T0), Some(families_of(&taken)));
        assert_eq!(read_back(slot, T0 + 39), Some(families_of(&taken)));
        assert_eq!(read_back(slot, T0 + 40), None);
        // A reader whose clock lags the writer's sees the newest state too.
        assert_eq!(read_back(slot, T0 - 1), Some(families_of(&taken)));
        slot.invalidate();
        assert_eq!(read_back(slot, T0), None);
        // Written again with the same time, it holds again.
        slot.store(&taken);
        assert_eq!(read_back(slot, T0), Some(families_of(&taken)));
    }

    #[test]
    fn a_far_end_is_cut_short_and_huge_figures_are_capped() {
        let table = table(SETTINGS);
        let slot = slot(&table);
        let forever = SelectionView {
            requests_in_window: u64::MAX,
            ..view(T0, UnixMillis::MAX)
        };
        slot.store(&forever);
        let read = slot.load_for(T0 + 1_000, ModelFamily::Opus);
        assert_eq!(
            read.map(|view| view.requests_in_window),
            Some((1 << 24) - 1)
        );
        // The end is capped, so the view holds for less than it could, never for longer.
        let cap = Until::TIME_MAX;
        assert_eq!(slot.load_for(cap - 1, ModelFamily::Opus), read);
        assert_eq!(slot.load_for(cap, ModelFamily::Opus), None);
        assert_eq!(slot.load_for(UnixMillis::MAX, ModelFamily::Opus), None);
        // A view ending at or before 1970 holds at no time.
        slot.store(&view(-10, 0));
        assert_eq!(slot.load_for(-20, ModelFamily::Opus), None);
    }

    #[test]
    fn the_fast_read_takes_only_plain_eligible_members() {
        let plain = table(MemberSettings {
            read_member: false,
            ..SETTINGS
        });
        let limited = table(SETTINGS);
        let taken = view(T0, T0 + 40);
        for table in [&plain, &limited] {
            slot(table).store(&taken);
        }
        let opus = FamilyBit::of(ModelFamily::Opus);
        let sonnet = FamilyBit::of(ModelFamily::Sonnet);
        let read =
            |table: &ViewTable, now, family| table.views()[0].eligible(ReadTime::at(now), family);
        assert_eq!(
            read(&plain, T0, opus),
            Some((
                EligibleFigures {
                    health: HealthStatus::Degraded,
                    requests_in_window: 123_456,
                    success_ewma: 0.625,
                    latency_ewma_ms: 812.25,
                },
                -3
            ))
        );
        assert_eq!(read(&plain, T0, sonnet), None, "cooling down for sonnet");
        assert_eq!(read(&plain, T0 + 40, opus), None, "lapsed");
        assert_eq!(read(&limited, T0, opus), None, "the member must be read");
        assert!(
            slot(&limited).settings().read_member,
            "publishing keeps the setting"
        );
        assert!(!slot(&plain).settings().read_member);
        assert_eq!(plain.views()[0].weight(), 250);
    }

    #[test]
    fn the_running_count_moves_with_the_account_and_never_goes_below_zero() {
        let old_table = table(SETTINGS);
        let old = slot(&old_table);
        old.count_running(true);
        old.count_running(true);
        old.count_running(false);
        old.store(&view(T0, T0 + 40));
        assert_eq!(old.running(), 1, "publishing leaves the count");
        let new_table = table(SETTINGS);
        let new = slot(&new_table);
        new.take_running_from(&old);
        assert_eq!(new.running(), 1);
        new.count_running(false);
        new.count_running(false);
        assert_eq!(new.running(), 0);
    }

    #[test]
    fn families_blocked_for_different_reasons_are_read_under_the_lock() {
        let table = table(SETTINGS);
        let slot = slot(&table);
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
        slot.store(&mixed);
        let read = |family| slot.load_for(T0, family);
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
        slot.store(&blocked);
        assert_eq!(read_back(slot, T0), Some(families_of(&blocked)));
    }

    #[test]
    fn readers_never_see_half_a_view() {
        // Two views whose every word but the time they hold until differs: a reader racing
        // the writer gets one of them whole, or nothing.
        let first = view(T0, T0 + 1_000);
        let second = SelectionView {
            eligibility: [Eligibility::BreakerOpen { until: T0 + 7 }; FAMILIES],
            health: HealthStatus::Unhealthy,
            requests_in_window: 7,
            success_ewma: 0.125,
            latency_ewma_ms: 3.5,
            ..view(T0 - 10, T0 + 1_000)
        };
        let table = table(SETTINGS);
        let slot = slot(&table);
        slot.store(&first);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for round in 0..200_000 {
                    slot.store(if round % 2 == 0 { &second } else { &first });
                }
            });
            let mut seen = 0;
            for round in 0..200_000 {
                let family = ALL_FAMILIES[round % FAMILIES];
                if let Some(read) = slot.load_for(T0, family) {
                    let whole = [first.for_family(family), second.for_family(family)];
                    assert!(whole.contains(&read), "torn read: {read:?}");
                    seen += 1;
                }
            }
            assert!(seen > 0);
        });
    }
}

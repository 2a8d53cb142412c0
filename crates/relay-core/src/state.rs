//! One account's whole fallback state, as a pure state machine (PRODUCT.md §5.1, §5.4).
//!
//! [`AccountState`] joins the account's circuit breaker, its health tracker, its rate-limit
//! cooldowns (whole account, or one model family) and its disabled-until time, and applies the
//! effect of each outcome class in one place:
//!
//! | class | effect |
//! |---|---|
//! | success | health success, breaker success |
//! | client_error | none at all (a held half-open trial slot is given back) |
//! | auth | disabled (`Auth`) until a probe or an operator re-enables it |
//! | billing | disabled (`Billing`) until a probe or an operator re-enables it |
//! | rate_limited | cooling down until the upstream's reset (account or family); not the breaker |
//! | overloaded | short cooldown, health failure, breaker failure |
//! | server_error, network, mid_stream | health failure, breaker failure |
//!
//! When the health status becomes unhealthy the account is temporarily disabled until
//! `now + recovery_window`; recovery probes (every `health_check_interval`, run by the caller)
//! re-enable it earlier when they succeed, and push the time back when they fail. Rate-limited
//! accounts are never probed: they come back by themselves at their reset time.
//!
//! Every mutation returns the [`StateEvent`]s it caused, so the caller can write the seed's log
//! lines and publish the change to other instances. Nothing here reads a clock or blocks.

use crate::breaker::{Admission, BreakerPhase, BreakerSettings, BreakerTransition, CircuitBreaker};
use crate::classify::OutcomeClass;
use crate::config::FallbackConfig;
use crate::cooldown::{Cooldown, CooldownScope};
use crate::health::{duration_to_millis, HealthSettings, HealthStatus, HealthTracker};
use crate::model::{Account, ModelFamily};
use crate::strategy::Candidate;
use crate::UnixMillis;

/// How long an overloaded account (529, 503) is skipped when the upstream named no time: short,
/// because overload passes quickly and the breaker handles an account that stays overloaded.
pub const OVERLOADED_COOLDOWN_MS: i64 = 5_000;

/// How long a rate-limited account is skipped when the caller had no cooldown to give.
pub const DEFAULT_RATE_LIMIT_COOLDOWN_MS: i64 = 60_000;

/// Why an account is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// An operator disabled it: never probed, never re-enabled automatically (except when the
    /// operator gave a duration and it has passed).
    Manual,
    /// Its health became unhealthy: disabled until a visible time, probed meanwhile.
    Temporary,
    /// Its credential was refused: disabled until a probe or an operator fixes it.
    Auth,
    /// It cannot pay: disabled until a probe or an operator fixes it.
    Billing,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::Manual => "manual",
            DisableReason::Temporary => "temporary",
            DisableReason::Auth => "auth",
            DisableReason::Billing => "billing",
        }
    }

    /// Whether recovery probes try to bring the account back.
    pub fn is_probed(self) -> bool {
        self != DisableReason::Manual
    }
}

/// Whether an account may serve a request now, and if not, why and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    Eligible,
    CoolingDown {
        until: UnixMillis,
    },
    /// `until: None` means until a probe or an operator re-enables it.
    Disabled {
        until: Option<UnixMillis>,
        reason: DisableReason,
    },
    BreakerOpen {
        until: UnixMillis,
    },
    AtCapacity,
}

impl Eligibility {
    pub fn is_eligible(&self) -> bool {
        *self == Eligibility::Eligible
    }

    /// When the account may be eligible again, if that is known (for `Retry-After`).
    pub fn retry_at(&self) -> Option<UnixMillis> {
        match *self {
            Eligibility::CoolingDown { until } | Eligibility::BreakerOpen { until } => Some(until),
            Eligibility::Disabled { until, .. } => until,
            Eligibility::Eligible | Eligibility::AtCapacity => None,
        }
    }

    /// A short name for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Eligibility::Eligible => "eligible",
            Eligibility::CoolingDown { .. } => "cooling_down",
            Eligibility::Disabled { .. } => "disabled",
            Eligibility::BreakerOpen { .. } => "circuit_open",
            Eligibility::AtCapacity => "at_capacity",
        }
    }
}

/// What selection reads of one account, as of a moment, and how long it stays exactly that:
/// for every `now` in `valid_from..valid_until` the state gives these same answers (nothing
/// in it changes with time alone before `valid_until`: not a cooldown, disable or open breaker
/// ending, nor the health window moving to its next slice). A change to the state makes it
/// stale, so whoever changes the state takes a new view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionView {
    pub valid_from: UnixMillis,
    pub valid_until: UnixMillis,
    /// [`AccountState::eligibility`] for each model family.
    pub eligibility: [Eligibility; FAMILY_COUNT],
    /// The health tracker's status (what an eligible account's health is).
    pub health: HealthStatus,
    pub requests_in_window: u64,
    pub success_ewma: f64,
    pub latency_ewma_ms: f64,
}

impl SelectionView {
    /// A view that holds at no time: what there is before the first one is taken.
    pub const STALE: SelectionView = SelectionView {
        valid_from: UnixMillis::MAX,
        valid_until: UnixMillis::MIN,
        eligibility: [Eligibility::Eligible; FAMILY_COUNT],
        health: HealthStatus::Healthy,
        requests_in_window: 0,
        success_ewma: 1.0,
        latency_ewma_ms: 0.0,
    };

    pub fn holds_at(&self, now: UnixMillis) -> bool {
        self.valid_from <= now && now < self.valid_until
    }

    pub fn eligibility(&self, family: ModelFamily) -> Eligibility {
        self.eligibility[family_slot(family)]
    }

    /// The part of the view a request for `family` reads.
    pub fn for_family(&self, family: ModelFamily) -> FamilyView {
        FamilyView {
            eligibility: self.eligibility(family),
            health: self.health,
            requests_in_window: self.requests_in_window,
            success_ewma: self.success_ewma,
            latency_ewma_ms: self.latency_ewma_ms,
        }
    }
}

/// A [`SelectionView`] as one request reads it: the eligibility for the request's model family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FamilyView {
    pub eligibility: Eligibility,
    pub health: HealthStatus,
    pub requests_in_window: u64,
    pub success_ewma: f64,
    pub latency_ewma_ms: f64,
}

/// Where a family's eligibility sits in [`SelectionView::eligibility`].
pub fn family_index(family: ModelFamily) -> usize {
    family_slot(family)
}

/// Something that changed in an account's state, for log lines and shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    HealthChanged {
        from: HealthStatus,
        to: HealthStatus,
    },
    BreakerOpened {
        until: UnixMillis,
        consecutive_opens: u32,
    },
    BreakerHalfOpen,
    BreakerClosed,
    /// Disabled because its health became unhealthy (or a probe failed again), until `until`.
    TemporarilyDisabled {
        until: UnixMillis,
    },
    Disabled {
        reason: DisableReason,
        until: Option<UnixMillis>,
    },
    CoolingDown {
        until: UnixMillis,
        scope: CooldownScope,
    },
    /// Back to full traffic: a probe succeeded, an operator re-enabled it, or its disabled time
    /// ran out.
    Recovered,
}

/// The part of an account's state that must survive a restart and that instances share in
/// cluster mode: disables, cooldowns and the breaker's phase. Health windows are not kept:
/// they describe recent traffic, which a restarted relay simply observes again.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PersistedAccountState {
    pub disabled_until: Option<UnixMillis>,
    pub disable_reason: Option<DisableReason>,
    pub account_cooldown_until: Option<UnixMillis>,
    pub family_cooldowns: Vec<FamilyCooldown>,
    pub breaker_phase: Option<BreakerPhase>,
    pub breaker_open_until: Option<UnixMillis>,
    pub breaker_consecutive_opens: u32,
}

/// A per-family rate-limit cooldown, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FamilyCooldown {
    pub family: ModelFamily,
    pub until: UnixMillis,
}

const ALL_FAMILIES: [ModelFamily; FAMILY_COUNT] = [
    ModelFamily::Opus,
    ModelFamily::Sonnet,
    ModelFamily::Haiku,
    ModelFamily::Other,
];

/// Index of a family in the per-family cooldown table.
fn family_slot(family: ModelFamily) -> usize {
    match family {
        ModelFamily::Opus => 0,
        ModelFamily::Sonnet => 1,
        ModelFamily::Haiku => 2,
        ModelFamily::Other => 3,
    }
}

const FAMILY_COUNT: usize = 4;

/// One account's breaker, health, cooldowns and disabled state.
#[derive(Debug, Clone)]
pub struct AccountState {
    breaker_enabled: bool,
    recovery_window_ms: i64,
    breaker: CircuitBreaker,
    health: HealthTracker,
    /// The tracker's status when it was last looked at, to report changes once.
    reported_health: HealthStatus,
    account_cooldown_until: Option<UnixMillis>,
    family_cooldown_until: [Option<UnixMillis>; FAMILY_COUNT],
    disabled_until: Option<UnixMillis>,
    disable_reason: Option<DisableReason>,
}

impl AccountState {
    pub fn new(config: &FallbackConfig) -> Self {
        AccountState {
            breaker_enabled: config.enable_circuit_breaker,
            recovery_window_ms: duration_to_millis(config.recovery_window),
            breaker: CircuitBreaker::new(BreakerSettings::from_config(config)),
            health: HealthTracker::new(HealthSettings::from_config(config)),
            reported_health: HealthStatus::Healthy,
            account_cooldown_until: None,
            family_cooldown_until: [None; FAMILY_COUNT],
            disabled_until: None,
            disable_reason: None,
        }
    }

    /// Rebuilds an account's state from what was persisted, dropping whatever has expired by
    /// `now` (a cooldown or disable that ended while the relay was down).
    pub fn restore(
        config: &FallbackConfig,
        persisted: &PersistedAccountState,
        now: UnixMillis,
    ) -> Self {
        let mut state = AccountState::new(config);
        let still_running = |until: &UnixMillis| *until > now;
        if let Some(reason) = persisted.disable_reason {
            if persisted.disabled_until.is_none_or(|until| until > now) {
                state.set_disabled(persisted.disabled_until, reason);
                state.reported_health = HealthStatus::Unhealthy;
            }
        }
        state.account_cooldown_until = persisted.account_cooldown_until.filter(still_running);
        for cooldown in &persisted.family_cooldowns {
            if still_running(&cooldown.until) {
                state.family_cooldown_until[family_slot(cooldown.family)] = Some(cooldown.until);
            }
        }
        if state.breaker_enabled {
            if let Some(phase) = persisted.breaker_phase {
                state.breaker = CircuitBreaker::restore(
                    BreakerSettings::from_config(config),
                    phase,
                    persisted.breaker_open_until,
                    persisted.breaker_consecutive_opens,
                );
            }
        }
        state
    }

    /// Takes another instance's view of the shared parts — disables, cooldowns, breaker
    /// phase — keeping this instance's own health window and learned figures (cluster mode).
    /// A breaker in the same phase on both sides keeps its local failure window.
    pub fn apply_shared(
        &mut self,
        config: &FallbackConfig,
        shared: &PersistedAccountState,
        now: UnixMillis,
    ) {
        let mut next = AccountState::restore(config, shared, now);
        next.health = self.health.clone();
        next.reported_health = if next.active_disable(now).is_some() {
            HealthStatus::Unhealthy
        } else {
            self.reported_health
        };
        if self.breaker.phase(now) == next.breaker.phase(now) {
            next.breaker = self.breaker.clone();
        }
        *self = next;
    }

    /// What must survive a restart (see [`PersistedAccountState`]), as of `now`.
    pub fn persisted(&self, now: UnixMillis) -> PersistedAccountState {
        let (disabled_until, disable_reason) = match self.active_disable(now) {
            Some((until, reason)) => (until, Some(reason)),
            None => (None, None),
        };
        PersistedAccountState {
            disabled_until,
            disable_reason,
            account_cooldown_until: self.account_cooldown_until.filter(|until| *until > now),
            family_cooldowns: ALL_FAMILIES
                .iter()
                .filter_map(|family| {
                    self.family_cooldown_until[family_slot(*family)]
                        .filter(|until| *until > now)
                        .map(|until| FamilyCooldown {
                            family: *family,
                            until,
                        })
                })
                .collect(),
            breaker_phase: Some(self.breaker.phase(now)),
            breaker_open_until: self.breaker.open_until(),
            breaker_consecutive_opens: self.breaker.consecutive_opens(),
        }
    }

    /// Applies a changed configuration. Turning the breaker off resets it to closed, so turning
    /// it back on later starts from a clean slate rather than from a stale open period.
    pub fn apply_config(&mut self, config: &FallbackConfig) {
        self.breaker_enabled = config.enable_circuit_breaker;
        self.recovery_window_ms = duration_to_millis(config.recovery_window);
        let breaker_settings = BreakerSettings::from_config(config);
        if self.breaker_enabled {
            self.breaker.set_settings(breaker_settings);
        } else {
            self.breaker = CircuitBreaker::new(breaker_settings);
        }
        self.health
            .set_settings(HealthSettings::from_config(config));
    }

    /// The disable in force at `now`: (until, reason).
    pub fn active_disable(&self, now: UnixMillis) -> Option<(Option<UnixMillis>, DisableReason)> {
        let reason = self.disable_reason?;
        match self.disabled_until {
            Some(until) if now >= until => None,
            until => Some((until, reason)),
        }
    }

    /// When the cooldown blocking requests for `family` ends, if one does at `now`.
    pub fn cooldown_until(&self, now: UnixMillis, family: ModelFamily) -> Option<UnixMillis> {
        let account = self.account_cooldown_until.filter(|until| *until > now);
        let family = self.family_cooldown_until[family_slot(family)].filter(|until| *until > now);
        account.max(family)
    }

    /// Whether the account may serve a request for `family` at `now`. When several things
    /// block it, the answer is the one that lasts longest, so its `retry_at` is honest.
    pub fn eligibility(&self, now: UnixMillis, family: ModelFamily) -> Eligibility {
        let mut blocker = Eligibility::Eligible;
        let mut blocked_until = UnixMillis::MIN;
        if let Some((until, reason)) = self.active_disable(now) {
            match until {
                None => {
                    return Eligibility::Disabled {
                        until: None,
                        reason,
                    }
                }
                Some(until) => {
                    blocker = Eligibility::Disabled {
                        until: Some(until),
                        reason,
                    };
                    blocked_until = until;
                }
            }
        }
        if self.breaker_enabled {
            if let Some(until) = self.breaker.retry_at(now) {
                if until > blocked_until {
                    blocker = Eligibility::BreakerOpen { until };
                    blocked_until = until;
                }
            }
        }
        if let Some(until) = self.cooldown_until(now, family) {
            if until > blocked_until {
                blocker = Eligibility::CoolingDown { until };
            }
        }
        blocker
    }

    /// Like [`AccountState::eligibility`], and `AtCapacity` when the account already runs
    /// `max_concurrency` requests (the in-flight count lives with the caller).
    pub fn eligibility_under_load(
        &self,
        now: UnixMillis,
        family: ModelFamily,
        in_flight: u32,
        max_concurrency: Option<u32>,
    ) -> Eligibility {
        match self.eligibility(now, family) {
            Eligibility::Eligible if max_concurrency.is_some_and(|max| in_flight >= max) => {
                Eligibility::AtCapacity
            }
            other => other,
        }
    }

    /// Admits a request for `family`, taking the breaker's half-open trial slot when that is
    /// what it is (then the caller must report the outcome, or it stays taken until its lease
    /// runs out).
    pub fn try_admit(
        &mut self,
        now: UnixMillis,
        family: ModelFamily,
    ) -> Result<Admission, Eligibility> {
        let eligibility = self.eligibility(now, family);
        if !eligibility.is_eligible() {
            return Err(eligibility);
        }
        if !self.breaker_enabled {
            return Ok(Admission::Allowed);
        }
        match self.breaker.admit(now) {
            Admission::Rejected { retry_at } => Err(Eligibility::BreakerOpen { until: retry_at }),
            admitted => Ok(admitted),
        }
    }

    /// Applies one attempt's outcome (see the module's table) and reports what changed.
    /// `cooldown` is the rate-limit (or overload) cooldown the upstream's headers gave, if any;
    /// it carries its own scope, so the request's model family is informational here. Without
    /// one, a 429 cools the whole account down for [`DEFAULT_RATE_LIMIT_COOLDOWN_MS`] (the safe
    /// reading when nothing says the limit is per family) and a 529 for
    /// [`OVERLOADED_COOLDOWN_MS`].
    pub fn record_outcome(
        &mut self,
        now: UnixMillis,
        class: OutcomeClass,
        latency_ms: f64,
        _family: ModelFamily,
        cooldown: Option<Cooldown>,
    ) -> Vec<StateEvent> {
        let mut events = Vec::new();
        self.expire_disable(now, &mut events);
        match class {
            OutcomeClass::Success => {
                self.health.record(now, true, latency_ms);
                if self.breaker_enabled {
                    let transition = self.breaker.record_success(now);
                    push_breaker_event(&mut events, transition);
                }
            }
            OutcomeClass::ClientError => {
                self.breaker.release_trial(now);
                return events;
            }
            OutcomeClass::Auth | OutcomeClass::Billing => {
                self.breaker.release_trial(now);
                let reason = if class == OutcomeClass::Auth {
                    DisableReason::Auth
                } else {
                    DisableReason::Billing
                };
                if self.active_disable(now).map(|(_, r)| r) != Some(DisableReason::Manual) {
                    self.set_disabled(None, reason);
                    events.push(StateEvent::Disabled {
                        reason,
                        until: None,
                    });
                }
                return events;
            }
            OutcomeClass::RateLimited => {
                self.breaker.release_trial(now);
                let cooldown = cooldown.unwrap_or(Cooldown {
                    until: now.saturating_add(DEFAULT_RATE_LIMIT_COOLDOWN_MS),
                    scope: CooldownScope::Account,
                    source: crate::cooldown::CooldownSource::Default,
                });
                self.apply_cooldown(cooldown.until, cooldown.scope, &mut events);
                return events;
            }
            OutcomeClass::Overloaded => {
                let (until, scope) = match cooldown {
                    Some(given) => (given.until, given.scope),
                    None => (
                        now.saturating_add(OVERLOADED_COOLDOWN_MS),
                        CooldownScope::Account,
                    ),
                };
                self.apply_cooldown(until, scope, &mut events);
                self.record_service_failure(now, &mut events);
            }
            OutcomeClass::ServerError | OutcomeClass::Network | OutcomeClass::MidStream => {
                self.record_service_failure(now, &mut events);
            }
        }
        self.observe_health(now, &mut events);
        events
    }

    /// Disables the account (an operator, or the caller on the account's behalf). `until: None`
    /// lasts until [`AccountState::enable`] or, unless `Manual`, a successful probe.
    pub fn disable(
        &mut self,
        _now: UnixMillis,
        until: Option<UnixMillis>,
        reason: DisableReason,
    ) -> Vec<StateEvent> {
        self.set_disabled(until, reason);
        match (reason, until) {
            (DisableReason::Temporary, Some(until)) => {
                vec![StateEvent::TemporarilyDisabled { until }]
            }
            _ => vec![StateEvent::Disabled { reason, until }],
        }
    }

    /// Re-enables the account now, whatever disabled it: clears the disable, closes the
    /// breaker, clears every cooldown and starts the failure window afresh.
    pub fn enable(&mut self, now: UnixMillis) -> Vec<StateEvent> {
        self.account_cooldown_until = None;
        self.family_cooldown_until = [None; FAMILY_COUNT];
        self.restore_full_traffic(now)
    }

    /// Whether recovery probes should try the account: it is temporarily disabled, disabled
    /// for auth or billing, or its breaker is open or half-open. Never when an operator
    /// disabled it by hand, and never merely for a rate limit (that ends at its reset time).
    pub fn needs_probe(&self, now: UnixMillis) -> bool {
        if let Some((_, reason)) = self.active_disable(now) {
            return reason.is_probed();
        }
        self.breaker_enabled && self.breaker.phase(now) != BreakerPhase::Closed
    }

    /// A recovery probe succeeded: full traffic again (the breaker closes and the failure
    /// window starts afresh). Rate-limit cooldowns are kept: they end at the upstream's reset
    /// time, which a cheap probe on another model family says nothing about. An account an
    /// operator disabled stays disabled.
    /// Nothing happens (and nothing is reported) when the account did not need a probe.
    pub fn probe_succeeded(&mut self, now: UnixMillis) -> Vec<StateEvent> {
        if !self.needs_probe(now) {
            return Vec::new();
        }
        self.restore_full_traffic(now)
    }

    /// A request admitted with [`Admission::Trial`] ended without an outcome that says anything
    /// about the account (the client went away, or the request never reached it): the
    /// breaker's trial slot is free for the next request.
    pub fn release_trial(&mut self, now: UnixMillis) {
        self.breaker.release_trial(now);
    }

    /// A recovery probe failed: a temporary disable is pushed back by `recovery_window` from
    /// now (so the visible time stays true), and a half-open breaker opens again with a longer
    /// cooldown. Auth and billing disables simply stay.
    pub fn probe_failed(&mut self, now: UnixMillis) -> Vec<StateEvent> {
        let mut events = Vec::new();
        match self.active_disable(now) {
            Some((_, DisableReason::Temporary)) => {
                let until = now.saturating_add(self.recovery_window_ms);
                self.set_disabled(Some(until), DisableReason::Temporary);
                events.push(StateEvent::TemporarilyDisabled { until });
            }
            Some(_) => {}
            None => {
                if self.breaker_enabled && self.breaker.phase(now) != BreakerPhase::Closed {
                    let transition = self.breaker.record_failure(now);
                    push_breaker_event(&mut events, transition);
                }
            }
        }
        events
    }

    /// Lets time-driven changes happen and reports them: a disable whose time ran out ends
    /// (`Recovered`), an open breaker whose time passed becomes half-open, expired cooldowns
    /// are forgotten. Optional: eligibility already reads the clock it is given.
    pub fn tick(&mut self, now: UnixMillis) -> Vec<StateEvent> {
        let mut events = Vec::new();
        self.expire_disable(now, &mut events);
        if self.breaker_enabled {
            push_breaker_event(&mut events, self.breaker.tick(now));
        }
        if self
            .account_cooldown_until
            .is_some_and(|until| until <= now)
        {
            self.account_cooldown_until = None;
        }
        for slot in &mut self.family_cooldown_until {
            if slot.is_some_and(|until| until <= now) {
                *slot = None;
            }
        }
        events
    }

    pub fn health(&self) -> &HealthTracker {
        &self.health
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    pub fn breaker_enabled(&self) -> bool {
        self.breaker_enabled
    }

    /// The stored disabled-until time. A timed disable is cleared lazily once it has passed;
    /// use [`AccountState::active_disable`] for the state at a given time.
    pub fn disabled_until(&self) -> Option<UnixMillis> {
        self.disabled_until
    }

    /// The stored disable reason (cleared lazily like [`AccountState::disabled_until`]).
    pub fn disable_reason(&self) -> Option<DisableReason> {
        self.disable_reason
    }

    /// The health shown to operators and strategies: unhealthy while disabled, else what the
    /// sliding window says.
    pub fn health_status(&self, now: UnixMillis) -> HealthStatus {
        if self.active_disable(now).is_some() {
            HealthStatus::Unhealthy
        } else {
            self.health.status(now)
        }
    }

    /// The account as a selection candidate, with its live figures. The usage and in-flight
    /// counts are kept by the caller.
    pub fn candidate(
        &self,
        now: UnixMillis,
        account: &Account,
        requests_in_window: u64,
        in_flight: u32,
    ) -> Candidate {
        Candidate {
            account_id: account.id,
            priority: account.priority,
            weight: account.weight,
            health: self.health_status(now),
            requests_in_window,
            in_flight,
            success_ewma: self.health.success_ewma(),
            latency_ewma_ms: self.health.latency_ewma_ms(),
            max_concurrency: account.max_concurrency,
        }
    }

    /// What selection reads of the account at `now`, and until when it holds.
    pub fn selection_view(&self, now: UnixMillis) -> SelectionView {
        let eligibility = ALL_FAMILIES.map(|family| self.eligibility(now, family));
        let (health, requests_in_window) = self.health.status_and_requests(now);
        let mut valid_until = self.health.window_changes_at(now);
        for blocked in &eligibility {
            if let Some(until) = blocked.retry_at() {
                valid_until = valid_until.min(until);
            }
        }
        // A half-open breaker whose trial is out answers "retry shortly" counted from the
        // moment asked, so that answer holds only for the moment it was taken.
        if self.breaker_enabled
            && self.breaker.phase(now) == BreakerPhase::HalfOpen
            && self.breaker.retry_at(now).is_some()
        {
            valid_until = valid_until.min(now.saturating_add(1));
        }
        SelectionView {
            valid_from: now,
            valid_until,
            eligibility,
            health,
            requests_in_window,
            success_ewma: self.health.success_ewma(),
            latency_ewma_ms: self.health.latency_ewma_ms(),
        }
    }

    fn set_disabled(&mut self, until: Option<UnixMillis>, reason: DisableReason) {
        self.disabled_until = until;
        self.disable_reason = Some(reason);
    }

    fn clear_disabled(&mut self) {
        self.disabled_until = None;
        self.disable_reason = None;
    }

    /// Ends a timed disable whose time has passed. The failure window restarts too, or the
    /// failures that disabled the account would disable it again on its first request back.
    fn expire_disable(&mut self, now: UnixMillis, events: &mut Vec<StateEvent>) {
        if self.disable_reason.is_some() && self.active_disable(now).is_none() {
            self.clear_disabled();
            self.health.reset_window();
            self.note_health(HealthStatus::Healthy, events);
            events.push(StateEvent::Recovered);
        }
    }

    fn restore_full_traffic(&mut self, now: UnixMillis) -> Vec<StateEvent> {
        let mut events = Vec::new();
        self.clear_disabled();
        push_breaker_event(&mut events, self.breaker.force_close(now));
        self.health.reset_window();
        self.note_health(HealthStatus::Healthy, &mut events);
        events.push(StateEvent::Recovered);
        events
    }

    fn apply_cooldown(
        &mut self,
        until: UnixMillis,
        scope: CooldownScope,
        events: &mut Vec<StateEvent>,
    ) {
        let slot = match scope {
            CooldownScope::Account => &mut self.account_cooldown_until,
            CooldownScope::Family(family) => &mut self.family_cooldown_until[family_slot(family)],
        };
        // A shorter cooldown never cuts a longer one the upstream announced earlier short.
        let until = slot.map_or(until, |current| current.max(until));
        *slot = Some(until);
        events.push(StateEvent::CoolingDown { until, scope });
    }

    fn record_service_failure(&mut self, now: UnixMillis, events: &mut Vec<StateEvent>) {
        self.health.record(now, false, 0.0);
        if self.breaker_enabled {
            let transition = self.breaker.record_failure(now);
            push_breaker_event(events, transition);
        }
    }

    fn note_health(&mut self, status: HealthStatus, events: &mut Vec<StateEvent>) {
        if status != self.reported_health {
            events.push(StateEvent::HealthChanged {
                from: self.reported_health,
                to: status,
            });
            self.reported_health = status;
        }
    }

    /// Reports a change of the window's health, and disables an account that became
    /// unhealthy until `now + recovery_window` (unless something already disabled it).
    fn observe_health(&mut self, now: UnixMillis, events: &mut Vec<StateEvent>) {
        let status = self.health.status(now);
        self.note_health(status, events);
        if status == HealthStatus::Unhealthy && self.active_disable(now).is_none() {
            let until = now.saturating_add(self.recovery_window_ms);
            self.set_disabled(Some(until), DisableReason::Temporary);
            events.push(StateEvent::TemporarilyDisabled { until });
        }
    }
}

fn push_breaker_event(events: &mut Vec<StateEvent>, transition: Option<BreakerTransition>) {
    match transition {
        Some(BreakerTransition::Opened {
            until,
            consecutive_opens,
        }) => events.push(StateEvent::BreakerOpened {
            until,
            consecutive_opens,
        }),
        Some(BreakerTransition::HalfOpened) => events.push(StateEvent::BreakerHalfOpen),
        Some(BreakerTransition::Closed) => events.push(StateEvent::BreakerClosed),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cooldown::CooldownSource;
    use std::time::Duration;

    const T0: i64 = 1_700_000_000_000;
    const SECOND: i64 = 1_000;
    const MINUTE: i64 = 60 * SECOND;
    const SONNET: ModelFamily = ModelFamily::Sonnet;

    fn config() -> FallbackConfig {
        FallbackConfig {
            circuit_breaker_threshold: 3,
            failure_window: Duration::from_secs(5 * 60),
            recovery_window: Duration::from_secs(10 * 60),
            ..FallbackConfig::default()
        }
    }

    fn fresh() -> AccountState {
        AccountState::new(&config())
    }

    fn record(state: &mut AccountState, now: i64, class: OutcomeClass) -> Vec<StateEvent> {
        state.record_outcome(now, class, 1_000.0, SONNET, None)
    }

    /// What a view must agree with at `at`: the state asked afresh.
    fn assert_view_holds(state: &AccountState, view: &SelectionView, at: i64, case: &str) {
        for family in ALL_FAMILIES {
            assert_eq!(
                view.eligibility(family),
                state.eligibility(at, family),
                "{case}: eligibility of {family:?} at +{} ms",
                at - view.valid_from
            );
        }
        assert_eq!(
            (view.health, view.requests_in_window),
            state.health().status_and_requests(at),
            "{case}: health at +{} ms",
            at - view.valid_from
        );
        assert_eq!(view.success_ewma, state.health().success_ewma());
        assert_eq!(view.latency_ewma_ms, state.health().latency_ewma_ms());
    }

    #[test]
    fn a_selection_view_holds_until_something_changes_with_time() {
        let opus_cooldown = Cooldown {
            until: T0 + 90 * SECOND,
            scope: CooldownScope::Family(ModelFamily::Opus),
            source: CooldownSource::Default,
        };
        let mut cases: Vec<(&str, AccountState)> = vec![("fresh", fresh())];
        let mut busy = fresh();
        for k in 0..40 {
            let class = if k % 4 == 0 {
                OutcomeClass::ServerError
            } else {
                OutcomeClass::Success
            };
            record(&mut busy, T0 - 50 * SECOND + k * 1_300, class);
        }
        cases.push(("samples across the window", busy));
        let mut cooling = fresh();
        cooling.record_outcome(
            T0,
            OutcomeClass::RateLimited,
            10.0,
            ModelFamily::Opus,
            Some(opus_cooldown),
        );
        record(&mut cooling, T0, OutcomeClass::RateLimited);
        cases.push(("family and account cooldowns", cooling));
        let mut open = fresh();
        for k in 0..3 {
            record(&mut open, T0 - 3 + k, OutcomeClass::ServerError);
        }
        cases.push(("breaker open", open.clone()));
        let mut trial = open;
        let reopens_at = trial.breaker().open_until().expect("the breaker opened");
        assert_eq!(trial.try_admit(reopens_at, SONNET), Ok(Admission::Trial));
        cases.push(("half-open, trial out", trial));
        let mut manual = fresh();
        manual.disable(T0, Some(T0 + 30 * SECOND), DisableReason::Manual);
        cases.push(("disabled for a while", manual));
        let mut forever = fresh();
        forever.disable(T0, None, DisableReason::Auth);
        cases.push(("disabled until re-enabled", forever));

        for (case, state) in &cases {
            // Step through two minutes: each view must hold over its whole span, and the span
            // must end where the state's answer may next change.
            let mut now = T0 - 2;
            while now < T0 + 2 * MINUTE {
                let view = state.selection_view(now);
                assert!(view.holds_at(now) && view.valid_until > now, "{case}");
                for at in [now, (now + view.valid_until) / 2, view.valid_until - 1] {
                    assert_view_holds(state, &view, at, case);
                }
                assert!(!view.holds_at(view.valid_until) && !view.holds_at(now - 1));
                now = view.valid_until.min(now + 7 * SECOND);
            }
        }
        assert!(!SelectionView::STALE.holds_at(T0));
    }

    #[test]
    fn a_new_account_is_eligible_and_healthy() {
        let mut state = fresh();
        assert_eq!(state.eligibility(T0, SONNET), Eligibility::Eligible);
        assert_eq!(state.try_admit(T0, SONNET), Ok(Admission::Allowed));
        assert_eq!(state.health_status(T0), HealthStatus::Healthy);
        assert!(!state.needs_probe(T0));
        assert_eq!(state.disabled_until(), None);
    }

    #[test]
    fn success_feeds_health_and_breaker() {
        let mut state = fresh();
        record(&mut state, T0, OutcomeClass::ServerError);
        record(&mut state, T0, OutcomeClass::ServerError);
        let events = state.record_outcome(T0 + 1, OutcomeClass::Success, 2_000.0, SONNET, None);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(state.health().success_count(), 1);
        assert_eq!(state.health().latency_ewma_ms(), 2_000.0);
        assert_eq!(state.health().last_success(), Some(T0 + 1));
        assert_eq!(state.breaker().consecutive_failures(), 0);
    }

    #[test]
    fn client_errors_change_nothing_at_all() {
        let mut state = fresh();
        for i in 0..50 {
            assert!(record(&mut state, T0 + i, OutcomeClass::ClientError).is_empty());
        }
        assert_eq!(state.health().failure_count(), 0);
        assert_eq!(state.health().success_count(), 0);
        assert_eq!(state.health().window_counts(T0 + 50), (0, 0));
        assert_eq!(state.breaker().consecutive_failures(), 0);
        assert_eq!(state.eligibility(T0 + 50, SONNET), Eligibility::Eligible);
    }

    #[test]
    fn a_client_error_gives_the_half_open_trial_slot_back() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        let half_open_at = T0 + 30 * SECOND;
        assert_eq!(state.try_admit(half_open_at, SONNET), Ok(Admission::Trial));
        assert!(state.try_admit(half_open_at, SONNET).is_err());
        record(&mut state, half_open_at + 1, OutcomeClass::ClientError);
        assert_eq!(
            state.try_admit(half_open_at + 2, SONNET),
            Ok(Admission::Trial)
        );
    }

    #[test]
    fn auth_disables_until_a_probe_succeeds() {
        let mut state = fresh();
        let events = record(&mut state, T0, OutcomeClass::Auth);
        assert_eq!(
            events,
            vec![StateEvent::Disabled {
                reason: DisableReason::Auth,
                until: None
            }]
        );
        let expected = Eligibility::Disabled {
            until: None,
            reason: DisableReason::Auth,
        };
        assert_eq!(state.eligibility(T0 + 24 * 60 * MINUTE, SONNET), expected);
        assert_eq!(state.try_admit(T0 + 1, SONNET), Err(expected));
        assert_eq!(state.health_status(T0 + 1), HealthStatus::Unhealthy);
        assert_eq!(state.health().failure_count(), 0, "not a health failure");
        assert_eq!(
            state.breaker().consecutive_failures(),
            0,
            "not a breaker failure"
        );
        assert!(state.needs_probe(T0 + 1));
        assert!(state.probe_failed(T0 + 2 * MINUTE).is_empty());
        assert_eq!(state.eligibility(T0 + 2 * MINUTE, SONNET), expected);
        let events = state.probe_succeeded(T0 + 4 * MINUTE);
        assert_eq!(events, vec![StateEvent::Recovered]);
        assert_eq!(
            state.eligibility(T0 + 4 * MINUTE, SONNET),
            Eligibility::Eligible
        );
        assert!(!state.needs_probe(T0 + 4 * MINUTE));
        assert_eq!(state.disable_reason(), None);
    }

    #[test]
    fn billing_disables_and_is_probed() {
        let mut state = fresh();
        let events = record(&mut state, T0, OutcomeClass::Billing);
        assert_eq!(
            events,
            vec![StateEvent::Disabled {
                reason: DisableReason::Billing,
                until: None
            }]
        );
        assert_eq!(state.disable_reason(), Some(DisableReason::Billing));
        assert!(state.needs_probe(T0 + MINUTE));
        assert_eq!(
            state.probe_succeeded(T0 + 2 * MINUTE),
            vec![StateEvent::Recovered]
        );
        assert!(state.eligibility(T0 + 2 * MINUTE, SONNET).is_eligible());
    }

    #[test]
    fn rate_limits_cool_down_the_family_or_account_and_come_back_without_a_probe() {
        let mut state = fresh();
        let family_cooldown = Cooldown {
            until: T0 + 90 * SECOND,
            scope: CooldownScope::Family(ModelFamily::Opus),
            source: CooldownSource::Reset("anthropic-ratelimit-tokens-reset"),
        };
        let events = state.record_outcome(
            T0,
            OutcomeClass::RateLimited,
            100.0,
            ModelFamily::Opus,
            Some(family_cooldown),
        );
        assert_eq!(
            events,
            vec![StateEvent::CoolingDown {
                until: T0 + 90 * SECOND,
                scope: CooldownScope::Family(ModelFamily::Opus)
            }]
        );
        assert_eq!(
            state.eligibility(T0 + 1, ModelFamily::Opus),
            Eligibility::CoolingDown {
                until: T0 + 90 * SECOND
            }
        );
        assert!(state.eligibility(T0 + 1, SONNET).is_eligible());
        assert!(!state.needs_probe(T0 + 1), "rate limits are never probed");
        assert_eq!(state.breaker().consecutive_failures(), 0, "not the breaker");
        assert_eq!(state.health().failure_count(), 0, "not health");
        assert!(state
            .eligibility(T0 + 90 * SECOND, ModelFamily::Opus)
            .is_eligible());

        // Without a cooldown from the headers: the whole account, for the default time.
        let events = record(&mut state, T0 + 100 * SECOND, OutcomeClass::RateLimited);
        let until = T0 + 100 * SECOND + DEFAULT_RATE_LIMIT_COOLDOWN_MS;
        assert_eq!(
            events,
            vec![StateEvent::CoolingDown {
                until,
                scope: CooldownScope::Account
            }]
        );
        assert_eq!(
            state.eligibility(T0 + 101 * SECOND, ModelFamily::Haiku),
            Eligibility::CoolingDown { until }
        );
        assert_eq!(state.cooldown_until(until, SONNET), None);
    }

    #[test]
    fn a_shorter_cooldown_does_not_cut_a_longer_one() {
        let mut state = fresh();
        let long = Cooldown {
            until: T0 + 10 * MINUTE,
            scope: CooldownScope::Account,
            source: CooldownSource::RetryAfter,
        };
        let short = Cooldown {
            until: T0 + MINUTE,
            ..long
        };
        state.record_outcome(T0, OutcomeClass::RateLimited, 0.0, SONNET, Some(long));
        state.record_outcome(T0 + 1, OutcomeClass::RateLimited, 0.0, SONNET, Some(short));
        assert_eq!(
            state.cooldown_until(T0 + 2 * MINUTE, SONNET),
            Some(T0 + 10 * MINUTE)
        );
    }

    #[test]
    fn overload_cools_down_briefly_and_counts_toward_breaker_and_health() {
        let mut state = fresh();
        let events = record(&mut state, T0, OutcomeClass::Overloaded);
        assert_eq!(
            events,
            vec![StateEvent::CoolingDown {
                until: T0 + OVERLOADED_COOLDOWN_MS,
                scope: CooldownScope::Account
            }]
        );
        assert_eq!(state.breaker().consecutive_failures(), 1);
        assert_eq!(state.health().failure_count(), 1);
        assert_eq!(
            state.eligibility(T0 + 4_999, SONNET),
            Eligibility::CoolingDown {
                until: T0 + OVERLOADED_COOLDOWN_MS
            }
        );
        assert!(state.eligibility(T0 + 5_000, SONNET).is_eligible());
        record(&mut state, T0 + 6 * SECOND, OutcomeClass::Overloaded);
        let events = record(&mut state, T0 + 12 * SECOND, OutcomeClass::Overloaded);
        assert!(events.contains(&StateEvent::BreakerOpened {
            until: T0 + 12 * SECOND + 30 * SECOND,
            consecutive_opens: 1
        }));
    }

    #[test]
    fn server_network_and_mid_stream_failures_open_the_breaker() {
        for class in [
            OutcomeClass::ServerError,
            OutcomeClass::Network,
            OutcomeClass::MidStream,
        ] {
            let mut state = fresh();
            assert!(record(&mut state, T0, class).is_empty());
            assert!(record(&mut state, T0 + 1, class).is_empty());
            assert_eq!(
                record(&mut state, T0 + 2, class),
                vec![StateEvent::BreakerOpened {
                    until: T0 + 2 + 30 * SECOND,
                    consecutive_opens: 1
                }],
                "{class:?}"
            );
            assert_eq!(state.health().failure_count(), 3);
            assert_eq!(
                state.eligibility(T0 + 3, SONNET),
                Eligibility::BreakerOpen {
                    until: T0 + 2 + 30 * SECOND
                }
            );
            assert!(state.needs_probe(T0 + 3));
        }
    }

    #[test]
    fn breaker_half_open_trial_then_close() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        let half_open_at = T0 + 30 * SECOND;
        assert_eq!(state.tick(half_open_at - 1), vec![]);
        assert_eq!(state.tick(half_open_at), vec![StateEvent::BreakerHalfOpen]);
        assert!(state.eligibility(half_open_at, SONNET).is_eligible());
        assert_eq!(state.try_admit(half_open_at, SONNET), Ok(Admission::Trial));
        assert_eq!(
            state.try_admit(half_open_at + 1, SONNET),
            Err(Eligibility::BreakerOpen {
                until: half_open_at + 1 + crate::breaker::TRIAL_PENDING_RETRY_MS
            })
        );
        let events =
            state.record_outcome(half_open_at + 2, OutcomeClass::Success, 500.0, SONNET, None);
        assert_eq!(events, vec![StateEvent::BreakerClosed]);
        assert_eq!(
            state.try_admit(half_open_at + 3, SONNET),
            Ok(Admission::Allowed)
        );
    }

    #[test]
    fn breaker_trial_failure_reopens_longer() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::Network);
        }
        let half_open_at = T0 + 30 * SECOND;
        assert_eq!(state.try_admit(half_open_at, SONNET), Ok(Admission::Trial));
        assert_eq!(
            record(&mut state, half_open_at, OutcomeClass::Network),
            vec![StateEvent::BreakerOpened {
                until: half_open_at + 60 * SECOND,
                consecutive_opens: 2
            }]
        );
    }

    #[test]
    fn probes_close_an_open_breaker_or_reopen_a_half_open_one() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        // Open: a failed probe changes nothing yet.
        assert!(state.probe_failed(T0 + 10 * SECOND).is_empty());
        // Half-open: a failed probe reopens with the doubled time.
        assert_eq!(
            state.probe_failed(T0 + 40 * SECOND),
            vec![StateEvent::BreakerOpened {
                until: T0 + 40 * SECOND + 60 * SECOND,
                consecutive_opens: 2
            }]
        );
        // A successful probe closes it at once, even while open.
        assert_eq!(
            state.probe_succeeded(T0 + 50 * SECOND),
            vec![StateEvent::BreakerClosed, StateEvent::Recovered]
        );
        assert_eq!(
            state.try_admit(T0 + 50 * SECOND, SONNET),
            Ok(Admission::Allowed)
        );
        assert!(!state.needs_probe(T0 + 50 * SECOND));
    }

    #[test]
    fn degraded_then_unhealthy_disables_temporarily_for_the_recovery_window() {
        let mut state = fresh();
        for i in 0..4 {
            assert!(record(&mut state, T0 + i, OutcomeClass::Success).is_empty());
        }
        // 1 of 5 failed = 0.2: degraded.
        assert_eq!(
            record(&mut state, T0 + 10, OutcomeClass::ServerError),
            vec![StateEvent::HealthChanged {
                from: HealthStatus::Healthy,
                to: HealthStatus::Degraded
            }]
        );
        assert_eq!(state.health_status(T0 + 11), HealthStatus::Degraded);
        assert!(
            state.eligibility(T0 + 11, SONNET).is_eligible(),
            "degraded still serves"
        );
        // Failures never three in a row (the breaker's threshold), yet the rate climbs.
        let pattern = [
            OutcomeClass::ServerError,
            OutcomeClass::Success,
            OutcomeClass::ServerError,
            OutcomeClass::ServerError,
            OutcomeClass::Success,
            OutcomeClass::ServerError,
        ];
        for (offset, class) in pattern.into_iter().enumerate() {
            let events = record(&mut state, T0 + 20 + offset as i64, class);
            assert!(events.is_empty(), "{events:?}");
        }
        // 5 of 11 failed: still degraded.
        assert_eq!(state.health().window_counts(T0 + 30), (6, 5));
        assert_eq!(state.health_status(T0 + 30), HealthStatus::Degraded);
        let now = T0 + 31;
        let events = record(&mut state, now, OutcomeClass::ServerError);
        // 6 of 12 = 0.5: unhealthy (the breaker's streak is only 2).
        let until = now + 10 * MINUTE;
        assert_eq!(
            events,
            vec![
                StateEvent::HealthChanged {
                    from: HealthStatus::Degraded,
                    to: HealthStatus::Unhealthy
                },
                StateEvent::TemporarilyDisabled { until }
            ]
        );
        assert_eq!(state.disabled_until(), Some(until));
        assert_eq!(state.disable_reason(), Some(DisableReason::Temporary));
        assert_eq!(
            state.eligibility(now + 1, SONNET),
            Eligibility::Disabled {
                until: Some(until),
                reason: DisableReason::Temporary
            }
        );
        assert_eq!(state.health_status(now + 1), HealthStatus::Unhealthy);
        assert!(state.needs_probe(now + 2 * MINUTE));
    }

    fn temporarily_disabled_at(now: i64) -> AccountState {
        let mut state = fresh();
        let events = state.disable(now, Some(now + 10 * MINUTE), DisableReason::Temporary);
        assert_eq!(
            events,
            vec![StateEvent::TemporarilyDisabled {
                until: now + 10 * MINUTE
            }]
        );
        state
    }

    #[test]
    fn a_cancelled_trial_frees_the_slot() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        let half_open_at = T0 + 30 * SECOND;
        assert_eq!(state.try_admit(half_open_at, SONNET), Ok(Admission::Trial));
        assert!(state.try_admit(half_open_at + 1, SONNET).is_err());
        state.release_trial(half_open_at + 2);
        assert_eq!(
            state.try_admit(half_open_at + 3, SONNET),
            Ok(Admission::Trial)
        );
    }

    #[test]
    fn a_probe_of_an_account_that_needs_none_reports_nothing() {
        let mut state = fresh();
        assert!(state.probe_succeeded(T0).is_empty());
        assert!(state.probe_failed(T0).is_empty());
        assert!(state.eligibility(T0, SONNET).is_eligible());
    }

    #[test]
    fn a_failed_probe_pushes_a_temporary_disable_back() {
        let mut state = temporarily_disabled_at(T0);
        assert_eq!(
            state.probe_failed(T0 + 2 * MINUTE),
            vec![StateEvent::TemporarilyDisabled {
                until: T0 + 12 * MINUTE
            }]
        );
        assert_eq!(state.disabled_until(), Some(T0 + 12 * MINUTE));
        assert!(!state.eligibility(T0 + 11 * MINUTE, SONNET).is_eligible());
    }

    #[test]
    fn a_successful_probe_restores_full_traffic_with_a_fresh_window() {
        let mut state = fresh();
        for i in 0..3 {
            record(&mut state, T0 + i, OutcomeClass::Success);
        }
        record(&mut state, T0 + 3, OutcomeClass::ServerError);
        record(&mut state, T0 + 4, OutcomeClass::Success);
        record(&mut state, T0 + 5, OutcomeClass::ServerError);
        record(&mut state, T0 + 6, OutcomeClass::ServerError);
        record(&mut state, T0 + 7, OutcomeClass::Success);
        record(&mut state, T0 + 8, OutcomeClass::ServerError);
        let events = record(&mut state, T0 + 9, OutcomeClass::ServerError);
        assert!(
            events.contains(&StateEvent::TemporarilyDisabled {
                until: T0 + 9 + 10 * MINUTE
            }),
            "{events:?}"
        );
        let events = state.probe_succeeded(T0 + 2 * MINUTE);
        assert_eq!(
            events,
            vec![
                StateEvent::HealthChanged {
                    from: HealthStatus::Unhealthy,
                    to: HealthStatus::Healthy
                },
                StateEvent::Recovered
            ]
        );
        assert_eq!(state.disabled_until(), None);
        assert_eq!(state.health().window_counts(T0 + 2 * MINUTE), (0, 0));
        assert_eq!(state.health().success_ewma(), 1.0);
        assert_eq!(state.health_status(T0 + 2 * MINUTE), HealthStatus::Healthy);
        // One failure now does not bring back the old verdict.
        let events = record(&mut state, T0 + 2 * MINUTE + 1, OutcomeClass::ServerError);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_temporary_disable_ends_by_itself_at_its_time() {
        let mut state = temporarily_disabled_at(T0);
        assert!(!state
            .eligibility(T0 + 10 * MINUTE - 1, SONNET)
            .is_eligible());
        assert!(state.eligibility(T0 + 10 * MINUTE, SONNET).is_eligible());
        assert!(!state.needs_probe(T0 + 10 * MINUTE));
        assert_eq!(state.health_status(T0 + 10 * MINUTE), HealthStatus::Healthy);
        assert_eq!(state.tick(T0 + 10 * MINUTE), vec![StateEvent::Recovered]);
        assert_eq!(state.disabled_until(), None);
    }

    #[test]
    fn an_expired_disable_is_cleared_on_the_next_outcome() {
        let mut state = temporarily_disabled_at(T0);
        let events =
            state.record_outcome(T0 + 11 * MINUTE, OutcomeClass::Success, 10.0, SONNET, None);
        assert_eq!(events, vec![StateEvent::Recovered]);
        assert_eq!(state.disable_reason(), None);
    }

    #[test]
    fn manual_disables_are_never_probed_nor_overridden() {
        let mut state = fresh();
        assert_eq!(
            state.disable(T0, None, DisableReason::Manual),
            vec![StateEvent::Disabled {
                reason: DisableReason::Manual,
                until: None
            }]
        );
        assert!(!state.needs_probe(T0 + MINUTE));
        assert!(state.probe_succeeded(T0 + MINUTE).is_empty());
        // An in-flight request reporting auth failure does not replace the operator's reason.
        assert!(record(&mut state, T0 + 2 * MINUTE, OutcomeClass::Auth).is_empty());
        assert_eq!(state.disable_reason(), Some(DisableReason::Manual));
        for _ in 0..3 {
            record(&mut state, T0 + 3 * MINUTE, OutcomeClass::ServerError);
        }
        assert!(
            !state.needs_probe(T0 + 3 * MINUTE),
            "manual wins over an open breaker"
        );
        assert_eq!(
            state.eligibility(T0 + 3 * MINUTE, SONNET),
            Eligibility::Disabled {
                until: None,
                reason: DisableReason::Manual
            }
        );
    }

    #[test]
    fn a_timed_manual_disable_expires() {
        let mut state = fresh();
        state.disable(T0, Some(T0 + 5 * MINUTE), DisableReason::Manual);
        assert!(!state.needs_probe(T0 + MINUTE));
        assert!(!state.eligibility(T0 + MINUTE, SONNET).is_eligible());
        assert!(state.eligibility(T0 + 5 * MINUTE, SONNET).is_eligible());
    }

    #[test]
    fn enable_clears_disable_breaker_and_cooldowns() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        state.record_outcome(
            T0,
            OutcomeClass::RateLimited,
            0.0,
            SONNET,
            Some(Cooldown {
                until: T0 + 30 * MINUTE,
                scope: CooldownScope::Family(SONNET),
                source: CooldownSource::RetryAfter,
            }),
        );
        state.disable(T0, None, DisableReason::Manual);
        let events = state.enable(T0 + 1);
        assert_eq!(
            events,
            vec![StateEvent::BreakerClosed, StateEvent::Recovered]
        );
        assert_eq!(state.eligibility(T0 + 1, SONNET), Eligibility::Eligible);
        assert_eq!(state.try_admit(T0 + 1, SONNET), Ok(Admission::Allowed));
        assert_eq!(state.health().window_counts(T0 + 1), (0, 0));
        assert_eq!(
            state.health().failure_count(),
            3,
            "lifetime counts are kept"
        );
    }

    #[test]
    fn a_disabled_breaker_is_inert() {
        let mut cfg = config();
        cfg.enable_circuit_breaker = false;
        let mut state = AccountState::new(&cfg);
        for i in 0..4 {
            let events = record(&mut state, T0 + i, OutcomeClass::ServerError);
            assert!(events.is_empty(), "{events:?}");
        }
        assert_eq!(state.breaker().consecutive_failures(), 0);
        assert_eq!(state.breaker().phase(T0 + 4), BreakerPhase::Closed);
        assert_eq!(state.try_admit(T0 + 4, SONNET), Ok(Admission::Allowed));
        assert!(!state.needs_probe(T0 + 4));
        assert!(!state.breaker_enabled());
    }

    #[test]
    fn turning_the_breaker_off_resets_an_open_one() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        assert!(!state.eligibility(T0 + 1, SONNET).is_eligible());
        let mut cfg = config();
        cfg.enable_circuit_breaker = false;
        state.apply_config(&cfg);
        assert!(state.eligibility(T0 + 1, SONNET).is_eligible());
        cfg.enable_circuit_breaker = true;
        cfg.circuit_breaker_threshold = 1;
        state.apply_config(&cfg);
        assert_eq!(state.breaker().phase(T0 + 1), BreakerPhase::Closed);
        assert_eq!(
            record(&mut state, T0 + 2, OutcomeClass::ServerError),
            vec![StateEvent::BreakerOpened {
                until: T0 + 2 + 30 * SECOND,
                consecutive_opens: 1
            }]
        );
    }

    #[test]
    fn eligibility_reports_the_longest_blocker() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        state.record_outcome(
            T0,
            OutcomeClass::RateLimited,
            0.0,
            SONNET,
            Some(Cooldown {
                until: T0 + MINUTE,
                scope: CooldownScope::Account,
                source: CooldownSource::RetryAfter,
            }),
        );
        let eligibility = state.eligibility(T0 + 1, SONNET);
        assert_eq!(eligibility, Eligibility::CoolingDown { until: T0 + MINUTE });
        assert_eq!(eligibility.retry_at(), Some(T0 + MINUTE));
        // Once the breaker's time passes, only the cooldown is left.
        assert_eq!(
            state.eligibility(T0 + 40 * SECOND, SONNET),
            Eligibility::CoolingDown { until: T0 + MINUTE }
        );
        state.disable(T0, Some(T0 + 2 * MINUTE), DisableReason::Temporary);
        assert_eq!(
            state.eligibility(T0 + 1, SONNET).retry_at(),
            Some(T0 + 2 * MINUTE)
        );
    }

    #[test]
    fn at_capacity_under_load() {
        let state = fresh();
        assert_eq!(
            state.eligibility_under_load(T0, SONNET, 2, Some(2)),
            Eligibility::AtCapacity
        );
        assert!(state
            .eligibility_under_load(T0, SONNET, 1, Some(2))
            .is_eligible());
        assert!(state
            .eligibility_under_load(T0, SONNET, 100, None)
            .is_eligible());
    }

    #[test]
    fn candidate_carries_the_live_figures() {
        let mut state = fresh();
        state.record_outcome(T0, OutcomeClass::Success, 1_500.0, SONNET, None);
        state.record_outcome(T0 + 1, OutcomeClass::Network, 0.0, SONNET, None);
        let account = Account {
            id: 42,
            name: "a".into(),
            platform: crate::model::Platform::ClaudeConsole,
            base_url: crate::model::DEFAULT_BASE_URL.into(),
            group_id: 1,
            priority: 7,
            weight: 30,
            enabled: true,
            proxy_url: None,
            model_allowlist: Vec::new(),
            model_mapping: Default::default(),
            max_concurrency: Some(4),
            created_at: T0,
            updated_at: T0,
        };
        let candidate = state.candidate(T0 + 2, &account, 11, 3);
        assert_eq!(candidate.account_id, 42);
        assert_eq!(candidate.priority, 7);
        assert_eq!(candidate.weight, 30);
        assert_eq!(candidate.requests_in_window, 11);
        assert_eq!(candidate.in_flight, 3);
        assert_eq!(candidate.max_concurrency, Some(4));
        assert_eq!(candidate.latency_ewma_ms, 1_500.0);
        assert!((candidate.success_ewma - 0.8).abs() < 1e-12);
        assert_eq!(candidate.health, HealthStatus::Healthy);
    }

    #[test]
    fn persisted_state_survives_a_restart() {
        let mut state = fresh();
        for _ in 0..3 {
            record(&mut state, T0, OutcomeClass::ServerError);
        }
        state.record_outcome(
            T0,
            OutcomeClass::RateLimited,
            0.0,
            ModelFamily::Opus,
            Some(Cooldown {
                until: T0 + 5 * MINUTE,
                scope: CooldownScope::Family(ModelFamily::Opus),
                source: CooldownSource::RetryAfter,
            }),
        );
        record(&mut state, T0 + 1, OutcomeClass::Billing);
        let persisted = state.persisted(T0 + 2);
        assert_eq!(persisted.disable_reason, Some(DisableReason::Billing));
        assert_eq!(persisted.breaker_phase, Some(BreakerPhase::Open));
        assert_eq!(persisted.breaker_open_until, Some(T0 + 30 * SECOND));
        assert_eq!(
            persisted.family_cooldowns,
            vec![FamilyCooldown {
                family: ModelFamily::Opus,
                until: T0 + 5 * MINUTE
            }]
        );
        let json = serde_json::to_string(&persisted).expect("serialises");
        let read_back: PersistedAccountState = serde_json::from_str(&json).expect("parses");
        assert_eq!(read_back, persisted);

        let mut restored = AccountState::restore(&config(), &read_back, T0 + 3);
        assert_eq!(
            restored.eligibility(T0 + 3, ModelFamily::Opus),
            Eligibility::Disabled {
                until: None,
                reason: DisableReason::Billing
            }
        );
        assert_eq!(restored.breaker().open_until(), Some(T0 + 30 * SECOND));
        assert!(restored.needs_probe(T0 + 3));
        restored.probe_succeeded(T0 + 4);
        assert_eq!(
            restored.eligibility(T0 + 4, ModelFamily::Opus),
            Eligibility::CoolingDown {
                until: T0 + 5 * MINUTE
            }
        );
        assert!(restored.eligibility(T0 + 4, SONNET).is_eligible());
    }

    #[test]
    fn restoring_drops_what_expired_while_down() {
        let persisted = PersistedAccountState {
            disabled_until: Some(T0 + MINUTE),
            disable_reason: Some(DisableReason::Temporary),
            account_cooldown_until: Some(T0 + MINUTE),
            family_cooldowns: vec![FamilyCooldown {
                family: SONNET,
                until: T0 + MINUTE,
            }],
            breaker_phase: Some(BreakerPhase::Open),
            breaker_open_until: Some(T0 + MINUTE),
            breaker_consecutive_opens: 1,
        };
        let restored = AccountState::restore(&config(), &persisted, T0 + 2 * MINUTE);
        assert_eq!(restored.disable_reason(), None);
        // The breaker's open time passed: it is half-open, waiting for one trial.
        assert!(restored.eligibility(T0 + 2 * MINUTE, SONNET).is_eligible());
        assert_eq!(
            restored.breaker().phase(T0 + 2 * MINUTE),
            BreakerPhase::HalfOpen
        );
        assert_eq!(
            AccountState::restore(&config(), &PersistedAccountState::default(), T0).persisted(T0),
            PersistedAccountState {
                breaker_phase: Some(BreakerPhase::Closed),
                ..PersistedAccountState::default()
            }
        );
    }

    #[test]
    fn eligibility_names_and_retry_times() {
        assert_eq!(Eligibility::AtCapacity.as_str(), "at_capacity");
        assert_eq!(
            Eligibility::BreakerOpen { until: 5 }.as_str(),
            "circuit_open"
        );
        assert_eq!(Eligibility::Eligible.retry_at(), None);
        assert_eq!(
            Eligibility::Disabled {
                until: None,
                reason: DisableReason::Auth
            }
            .retry_at(),
            None
        );
        assert!(!DisableReason::Manual.is_probed());
        assert!(DisableReason::Temporary.is_probed());
    }

    fn arbitrary_class() -> impl proptest::strategy::Strategy<Value = OutcomeClass> {
        proptest::sample::select(OutcomeClass::ALL.to_vec())
    }

    proptest::proptest! {
        /// The original relay let client errors open breakers: here they must be invisible.
        #[test]
        fn client_errors_never_change_the_account_state(
            steps in proptest::collection::vec((0i64..20_000, arbitrary_class(), 0u8..3), 0..120),
        ) {
            let mut without = fresh();
            let mut with = fresh();
            let mut now = T0;
            for (elapsed, class, client_errors_before) in steps {
                now += elapsed;
                for _ in 0..client_errors_before {
                    proptest::prop_assert!(
                        record(&mut with, now, OutcomeClass::ClientError).is_empty()
                    );
                }
                let class = if class == OutcomeClass::ClientError {
                    OutcomeClass::Success
                } else {
                    class
                };
                let events_without = record(&mut without, now, class);
                let events_with = record(&mut with, now, class);
                proptest::prop_assert_eq!(events_without, events_with);
                for family in [ModelFamily::Opus, SONNET] {
                    proptest::prop_assert_eq!(
                        without.eligibility(now, family),
                        with.eligibility(now, family)
                    );
                }
                proptest::prop_assert_eq!(
                    without.health().window_counts(now),
                    with.health().window_counts(now)
                );
                proptest::prop_assert_eq!(
                    without.breaker().consecutive_failures(),
                    with.breaker().consecutive_failures()
                );
            }
        }

        #[test]
        fn only_service_failures_move_the_breaker(
            steps in proptest::collection::vec(arbitrary_class(), 0..60),
        ) {
            let mut state = fresh();
            let mut now = T0;
            for class in steps {
                now += 1;
                let before = state.breaker().consecutive_failures();
                let events = record(&mut state, now, class);
                let after = state.breaker().consecutive_failures();
                let opened = events
                    .iter()
                    .any(|event| matches!(event, StateEvent::BreakerOpened { .. }));
                if class.counts_toward_breaker() {
                    proptest::prop_assert_eq!(after, before + 1);
                } else if class == OutcomeClass::Success {
                    proptest::prop_assert!(after <= before);
                    proptest::prop_assert!(!opened);
                } else {
                    proptest::prop_assert_eq!(after, before, "{:?}", class);
                    proptest::prop_assert!(!opened);
                }
            }
        }
    }
}

#[cfg(test)]
mod apply_shared_tests {
    use super::*;

    #[test]
    fn shared_disable_and_enable_apply_but_local_health_is_kept() {
        let config = FallbackConfig::default();
        let now = 1_000_000;
        let mut local = AccountState::new(&config);
        local.record_outcome(now, OutcomeClass::Success, 120.0, ModelFamily::Sonnet, None);
        let mut remote = AccountState::new(&config);
        remote.disable(now, Some(now + 60_000), DisableReason::Manual);
        local.apply_shared(&config, &remote.persisted(now), now);
        assert!(matches!(
            local.eligibility(now, ModelFamily::Sonnet),
            Eligibility::Disabled { .. }
        ));
        assert_eq!(local.health().success_count(), 1);
        remote.enable(now + 1);
        local.apply_shared(&config, &remote.persisted(now + 1), now + 1);
        assert!(matches!(
            local.eligibility(now + 1, ModelFamily::Sonnet),
            Eligibility::Eligible
        ));
    }
}

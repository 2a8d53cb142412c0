//! Circuit breakers: one per account, one per group (PRODUCT.md §5.4).
//!
//! A breaker is a small state machine that owns its state (after linkerd's
//! `consecutive_failures` breaker): **closed** lets everything through and counts failures;
//! **open** rejects until its cooldown has passed; then it is **half-open** and admits exactly
//! one trial request. The trial's success closes it; its failure opens it again with a longer
//! cooldown (30 s at first, doubling on each consecutive re-open, capped at `max_open_ms`).
//!
//! It trips on `threshold` consecutive failures, or on an error rate above
//! `error_rate_threshold` over the sliding `failure_window` once at least
//! `min_requests_for_rate` requests were seen there (so a flapping account whose failures
//! never line up in a row still trips). Which outcomes are failures is the caller's decision
//! (see `OutcomeClass::counts_toward_breaker`): a client's bad request must never open it.
//!
//! There is no interior mutability and no clock: callers wrap a breaker in their own lock and
//! pass `now` in, which makes every transition testable with explicit times.

use crate::health::{duration_to_millis, SlidingWindow};
use crate::UnixMillis;

/// How long a rejected caller should wait while another request holds the half-open trial
/// slot: the trial will settle the question shortly, so ask again soon.
pub const TRIAL_PENDING_RETRY_MS: i64 = 1_000;

/// A trial slot held longer than this is presumed abandoned (its owner never reported back)
/// and may be handed out again, so a lost report cannot wedge an account half-open forever.
pub const TRIAL_LEASE_MS: i64 = 10 * 60 * 1000;

/// When an account breaker trips and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (`circuit_breaker_threshold`).
    pub threshold: u32,
    /// The sliding window of the error-rate rule (`failure_window`).
    pub failure_window_ms: i64,
    /// The first open period.
    pub base_open_ms: i64,
    /// The longest open period, reached by doubling (`recovery_window`).
    pub max_open_ms: i64,
    /// The breaker opens when the window's error rate is above this...
    pub error_rate_threshold: f64,
    /// ...and the window holds at least this many requests.
    pub min_requests_for_rate: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            threshold: 5,
            failure_window_ms: 5 * 60 * 1000,
            base_open_ms: BreakerSettings::DEFAULT_BASE_OPEN_MS,
            max_open_ms: 10 * 60 * 1000,
            error_rate_threshold: 0.5,
            min_requests_for_rate: 10,
        }
    }
}

impl BreakerSettings {
    pub const DEFAULT_BASE_OPEN_MS: i64 = 30_000;

    /// The settings the fallback configuration implies: `circuit_breaker_threshold`,
    /// `failure_window`, and `recovery_window` as the longest open period.
    pub fn from_config(config: &crate::config::FallbackConfig) -> Self {
        BreakerSettings {
            threshold: config.circuit_breaker_threshold,
            failure_window_ms: duration_to_millis(config.failure_window),
            max_open_ms: duration_to_millis(config.recovery_window),
            ..BreakerSettings::default()
        }
    }

    /// How long the breaker stays open the `opens_in_a_row`-th time it opens without closing in
    /// between (1 for the first): `base_open_ms · 2^(n−1)`, capped at `max_open_ms`.
    pub fn open_duration_ms(&self, opens_in_a_row: u32) -> i64 {
        let base = self.base_open_ms.max(1);
        let cap = self.max_open_ms.max(base);
        let doublings = opens_in_a_row.saturating_sub(1).min(62);
        base.checked_mul(1i64 << doublings).unwrap_or(cap).min(cap)
    }
}

/// The state of a breaker as reported to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerPhase {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerPhase::Closed => "closed",
            BreakerPhase::Open => "open",
            BreakerPhase::HalfOpen => "half_open",
        }
    }
}

/// The answer to "may this request go through?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The single half-open request: its outcome decides whether the breaker closes. The caller
    /// must report it (`record_success`, `record_failure`) or give the slot back
    /// (`release_trial`).
    Trial,
    Rejected {
        retry_at: UnixMillis,
    },
}

/// A change of phase, for log lines and shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerTransition {
    /// `consecutive_opens` counts the opens since the breaker last closed, 1 for the first.
    Opened {
        until: UnixMillis,
        consecutive_opens: u32,
    },
    HalfOpened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed,
    /// Half-open in effect from `until` on, until a trial is admitted.
    Open {
        until: UnixMillis,
    },
    HalfOpen {
        trial_taken_at: Option<UnixMillis>,
    },
}

/// An account's circuit breaker. Callers wrap it in a mutex; it never blocks.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: BreakerState,
    consecutive_failures: u32,
    /// Opens since the breaker last closed: the exponent of the open period's doubling.
    consecutive_opens: u32,
    window: SlidingWindow,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker {
            settings,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            consecutive_opens: 0,
            window: SlidingWindow::new(settings.failure_window_ms),
        }
    }

    /// Rebuilds a breaker from its persisted or shared figures (after a restart, or from
    /// another instance). A half-open breaker comes back with its trial slot free: whoever held
    /// it is gone. The error-rate window starts empty.
    pub fn restore(
        settings: BreakerSettings,
        phase: BreakerPhase,
        open_until: Option<UnixMillis>,
        consecutive_opens: u32,
    ) -> Self {
        let mut breaker = CircuitBreaker::new(settings);
        breaker.consecutive_opens = consecutive_opens;
        breaker.state = match (phase, open_until) {
            (BreakerPhase::Closed, _) => {
                breaker.consecutive_opens = 0;
                BreakerState::Closed
            }
            (BreakerPhase::Open, Some(until)) => BreakerState::Open { until },
            (BreakerPhase::Open, None) | (BreakerPhase::HalfOpen, _) => BreakerState::HalfOpen {
                trial_taken_at: None,
            },
        };
        breaker
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Applies new settings from now on. The current phase is kept (an open breaker keeps its
    /// time); a different window length starts the error-rate window afresh.
    pub fn set_settings(&mut self, settings: BreakerSettings) {
        if settings.failure_window_ms != self.settings.failure_window_ms {
            self.window = SlidingWindow::new(settings.failure_window_ms);
        }
        self.settings = settings;
    }

    /// The phase at `now`: an open breaker whose time has passed reads as half-open.
    pub fn phase(&self, now: UnixMillis) -> BreakerPhase {
        match self.state {
            BreakerState::Closed => BreakerPhase::Closed,
            BreakerState::Open { until } if now < until => BreakerPhase::Open,
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => BreakerPhase::HalfOpen,
        }
    }

    /// When the current open period ends, while the breaker is (or was last) open and no trial
    /// has been admitted since.
    pub fn open_until(&self) -> Option<UnixMillis> {
        match self.state {
            BreakerState::Open { until } => Some(until),
            BreakerState::Closed | BreakerState::HalfOpen { .. } => None,
        }
    }

    fn trial_slot_free(trial_taken_at: Option<UnixMillis>, now: UnixMillis) -> bool {
        trial_taken_at.is_none_or(|taken_at| now.saturating_sub(taken_at) >= TRIAL_LEASE_MS)
    }

    /// Whether a request would be admitted at `now`: closed, or half-open with the trial slot
    /// free.
    pub fn is_available(&self, now: UnixMillis) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { trial_taken_at } => Self::trial_slot_free(trial_taken_at, now),
        }
    }

    /// When a rejected request could be admitted, `None` when one would be admitted now.
    pub fn retry_at(&self, now: UnixMillis) -> Option<UnixMillis> {
        match self.state {
            BreakerState::Closed => None,
            BreakerState::Open { until } => (now < until).then_some(until),
            BreakerState::HalfOpen { trial_taken_at } => {
                (!Self::trial_slot_free(trial_taken_at, now))
                    .then_some(now.saturating_add(TRIAL_PENDING_RETRY_MS))
            }
        }
    }

    /// Admits a request, taking the single trial slot when half-open.
    pub fn admit(&mut self, now: UnixMillis) -> Admission {
        if let Some(retry_at) = self.retry_at(now) {
            return Admission::Rejected { retry_at };
        }
        match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen {
                    trial_taken_at: Some(now),
                };
                Admission::Trial
            }
        }
    }

    /// The trial was not used (the request was cancelled, or its outcome says nothing about the
    /// account, such as a client error): the slot is free again.
    pub fn release_trial(&mut self, _now: UnixMillis) {
        if let BreakerState::HalfOpen { .. } = self.state {
            self.state = BreakerState::HalfOpen {
                trial_taken_at: None,
            };
        }
    }

    /// Moves an open breaker whose time has passed to half-open, reporting the change; nothing
    /// else. Admission does this by itself: this is for callers that want the log line.
    pub fn tick(&mut self, now: UnixMillis) -> Option<BreakerTransition> {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen {
                    trial_taken_at: None,
                };
                Some(BreakerTransition::HalfOpened)
            }
            _ => None,
        }
    }

    /// A request succeeded. Half-open (or open past its time), that closes the breaker and
    /// resets the doubling; a success that arrives while still open (a request admitted before
    /// it opened) changes nothing.
    pub fn record_success(&mut self, now: UnixMillis) -> Option<BreakerTransition> {
        self.window.record(now, true, 0.0);
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = 0;
                None
            }
            BreakerState::Open { until } if now < until => None,
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => Some(self.close()),
        }
    }

    /// A request failed in a way that counts toward the breaker (the caller decides which).
    pub fn record_failure(&mut self, now: UnixMillis) -> Option<BreakerTransition> {
        self.window.record(now, false, 0.0);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            BreakerState::Closed => self.should_trip(now).then(|| self.open(now)),
            BreakerState::Open { until } if now < until => None,
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => Some(self.open(now)),
        }
    }

    /// Closes the breaker whatever its phase (a recovery probe succeeded, or an operator
    /// re-enabled the account) and starts its counts afresh.
    pub fn force_close(&mut self, _now: UnixMillis) -> Option<BreakerTransition> {
        if self.state == BreakerState::Closed {
            self.consecutive_failures = 0;
            self.consecutive_opens = 0;
            self.window.clear();
            None
        } else {
            Some(self.close())
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Opens since the breaker last closed.
    pub fn consecutive_opens(&self) -> u32 {
        self.consecutive_opens
    }

    fn should_trip(&self, now: UnixMillis) -> bool {
        if self.consecutive_failures >= self.settings.threshold.max(1) {
            return true;
        }
        let totals = self.window.totals(now);
        totals.requests() >= u64::from(self.settings.min_requests_for_rate)
            && totals.error_rate() > self.settings.error_rate_threshold
    }

    fn open(&mut self, now: UnixMillis) -> BreakerTransition {
        self.consecutive_opens = self.consecutive_opens.saturating_add(1);
        let until = now.saturating_add(self.settings.open_duration_ms(self.consecutive_opens));
        self.state = BreakerState::Open { until };
        BreakerTransition::Opened {
            until,
            consecutive_opens: self.consecutive_opens,
        }
    }

    fn close(&mut self) -> BreakerTransition {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.consecutive_opens = 0;
        self.window.clear();
        BreakerTransition::Closed
    }
}

/// When a group breaker trips and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBreakerSettings {
    /// Consecutive requests on which every attempt failed (`circuit_breaker_threshold`).
    pub threshold: u32,
    /// How long the group answers at once with 529 (`recovery_window`).
    pub open_ms: i64,
}

impl Default for GroupBreakerSettings {
    fn default() -> Self {
        GroupBreakerSettings {
            threshold: 5,
            open_ms: 10 * 60 * 1000,
        }
    }
}

impl GroupBreakerSettings {
    /// The settings the fallback configuration implies: `circuit_breaker_threshold` failed
    /// requests open the group for `recovery_window`.
    pub fn from_config(config: &crate::config::FallbackConfig) -> Self {
        GroupBreakerSettings {
            threshold: config.circuit_breaker_threshold,
            open_ms: duration_to_millis(config.recovery_window),
        }
    }

    /// An account breaker that trips on consecutive failures only and always opens for
    /// `open_ms`: exactly the group breaker's behaviour.
    fn as_breaker_settings(self) -> BreakerSettings {
        BreakerSettings {
            threshold: self.threshold,
            failure_window_ms: self.open_ms,
            base_open_ms: self.open_ms,
            max_open_ms: self.open_ms,
            error_rate_threshold: f64::INFINITY,
            min_requests_for_rate: u32::MAX,
        }
    }
}

/// The group breaker of the seed ("分组 N 连续失败次数达到阈值"): it counts consecutive
/// *requests* on which every attempt failed. Once `threshold` is reached the group answers at
/// once for `open_ms`; then one request goes through (half-open); a success, or a successful
/// recovery probe of any of the group's accounts (`force_close`), closes it.
///
/// Which requests count is the caller's decision: a request answered with the upstream's client
/// error, or one for which no account was eligible, is not a request on which every attempt
/// failed.
#[derive(Debug, Clone)]
pub struct GroupBreaker {
    settings: GroupBreakerSettings,
    breaker: CircuitBreaker,
}

impl GroupBreaker {
    pub fn new(settings: GroupBreakerSettings) -> Self {
        GroupBreaker {
            settings,
            breaker: CircuitBreaker::new(settings.as_breaker_settings()),
        }
    }

    /// Rebuilds a group breaker in a given phase (another instance's view, or a restart).
    pub fn restore(
        settings: GroupBreakerSettings,
        phase: BreakerPhase,
        open_until: Option<UnixMillis>,
        consecutive_opens: u32,
    ) -> Self {
        GroupBreaker {
            settings,
            breaker: CircuitBreaker::restore(
                settings.as_breaker_settings(),
                phase,
                open_until,
                consecutive_opens,
            ),
        }
    }

    pub fn consecutive_opens(&self) -> u32 {
        self.breaker.consecutive_opens()
    }

    pub fn settings(&self) -> &GroupBreakerSettings {
        &self.settings
    }

    pub fn set_settings(&mut self, settings: GroupBreakerSettings) {
        self.settings = settings;
        self.breaker.set_settings(settings.as_breaker_settings());
    }

    pub fn phase(&self, now: UnixMillis) -> BreakerPhase {
        self.breaker.phase(now)
    }

    pub fn open_until(&self) -> Option<UnixMillis> {
        self.breaker.open_until()
    }

    pub fn is_available(&self, now: UnixMillis) -> bool {
        self.breaker.is_available(now)
    }

    pub fn retry_at(&self, now: UnixMillis) -> Option<UnixMillis> {
        self.breaker.retry_at(now)
    }

    pub fn admit(&mut self, now: UnixMillis) -> Admission {
        self.breaker.admit(now)
    }

    pub fn release_trial(&mut self, now: UnixMillis) {
        self.breaker.release_trial(now);
    }

    pub fn tick(&mut self, now: UnixMillis) -> Option<BreakerTransition> {
        self.breaker.tick(now)
    }

    /// A request of the group succeeded (on whichever account).
    pub fn record_success(&mut self, now: UnixMillis) -> Option<BreakerTransition> {
        self.breaker.record_success(now)
    }

    /// A request of the group failed on every attempt it made.
    pub fn record_failure(&mut self, now: UnixMillis) -> Option<BreakerTransition> {
        self.breaker.record_failure(now)
    }

    /// A recovery probe of one of the group's accounts succeeded, or an operator intervened.
    pub fn force_close(&mut self, now: UnixMillis) -> Option<BreakerTransition> {
        self.breaker.force_close(now)
    }

    /// Consecutive requests on which every attempt failed.
    pub fn consecutive_failures(&self) -> u32 {
        self.breaker.consecutive_failures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const SECOND: i64 = 1_000;
    const MINUTE: i64 = 60 * SECOND;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            threshold: 3,
            failure_window_ms: 5 * MINUTE,
            base_open_ms: 30 * SECOND,
            max_open_ms: 10 * MINUTE,
            error_rate_threshold: 0.5,
            min_requests_for_rate: 10,
        }
    }

    fn opened_at(now: i64, open_ms: i64, consecutive_opens: u32) -> Option<BreakerTransition> {
        Some(BreakerTransition::Opened {
            until: now + open_ms,
            consecutive_opens,
        })
    }

    #[test]
    fn settings_follow_the_fallback_config() {
        let config = crate::config::FallbackConfig {
            circuit_breaker_threshold: 7,
            failure_window: std::time::Duration::from_secs(120),
            recovery_window: std::time::Duration::from_secs(900),
            ..crate::config::FallbackConfig::default()
        };
        let account = BreakerSettings::from_config(&config);
        assert_eq!(account.threshold, 7);
        assert_eq!(account.failure_window_ms, 120 * SECOND);
        assert_eq!(account.base_open_ms, 30 * SECOND);
        assert_eq!(account.max_open_ms, 15 * MINUTE);
        let group = GroupBreakerSettings::from_config(&config);
        assert_eq!(group.threshold, 7);
        assert_eq!(group.open_ms, 15 * MINUTE);
    }

    #[test]
    fn open_duration_doubles_and_caps() {
        let s = settings();
        assert_eq!(s.open_duration_ms(1), 30 * SECOND);
        assert_eq!(s.open_duration_ms(2), 60 * SECOND);
        assert_eq!(s.open_duration_ms(3), 120 * SECOND);
        assert_eq!(s.open_duration_ms(5), 480 * SECOND);
        assert_eq!(s.open_duration_ms(6), 10 * MINUTE);
        assert_eq!(s.open_duration_ms(200), 10 * MINUTE);
        assert_eq!(s.open_duration_ms(0), 30 * SECOND);
    }

    #[test]
    fn closed_opens_after_threshold_consecutive_failures() {
        let mut breaker = CircuitBreaker::new(settings());
        assert_eq!(breaker.phase(T0), BreakerPhase::Closed);
        assert_eq!(breaker.admit(T0), Admission::Allowed);
        assert_eq!(breaker.record_failure(T0), None);
        assert_eq!(breaker.record_failure(T0 + 1), None);
        assert_eq!(breaker.consecutive_failures(), 2);
        assert_eq!(
            breaker.record_failure(T0 + 2),
            opened_at(T0 + 2, 30 * SECOND, 1)
        );
        assert_eq!(breaker.phase(T0 + 3), BreakerPhase::Open);
        assert_eq!(breaker.open_until(), Some(T0 + 2 + 30 * SECOND));
        assert!(!breaker.is_available(T0 + 3));
        assert_eq!(
            breaker.admit(T0 + 3),
            Admission::Rejected {
                retry_at: T0 + 2 + 30 * SECOND
            }
        );
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let mut breaker = CircuitBreaker::new(settings());
        breaker.record_failure(T0);
        breaker.record_failure(T0 + 1);
        assert_eq!(breaker.record_success(T0 + 2), None);
        assert_eq!(breaker.consecutive_failures(), 0);
        assert_eq!(breaker.record_failure(T0 + 3), None);
        assert_eq!(breaker.record_failure(T0 + 4), None);
        assert_eq!(breaker.phase(T0 + 5), BreakerPhase::Closed);
    }

    #[test]
    fn error_rate_over_the_window_opens_without_a_streak() {
        let mut s = settings();
        s.threshold = 100;
        let mut breaker = CircuitBreaker::new(s);
        // Alternate: never two failures in a row, but 6 of 11 failed (> 0.5).
        let mut transition = None;
        for i in 0..11 {
            let now = T0 + i * SECOND;
            transition = if i % 2 == 0 {
                breaker.record_failure(now)
            } else {
                breaker.record_success(now)
            };
            if i < 10 {
                assert_eq!(transition, None, "at sample {i}");
            }
        }
        assert_eq!(transition, opened_at(T0 + 10 * SECOND, 30 * SECOND, 1));
    }

    #[test]
    fn error_rate_needs_min_requests_and_only_counts_the_window() {
        let mut s = settings();
        s.threshold = 100;
        let mut breaker = CircuitBreaker::new(s);
        // 5 of 9 failed: rate above 0.5 but fewer than 10 requests.
        for i in 0..9 {
            let now = T0 + i;
            let transition = if i % 2 == 0 {
                breaker.record_failure(now)
            } else {
                breaker.record_success(now)
            };
            assert_eq!(transition, None);
        }
        // Much later those have left the window: one more failure is 1 of 1.
        assert_eq!(breaker.record_failure(T0 + 6 * MINUTE), None);
        assert_eq!(breaker.phase(T0 + 6 * MINUTE), BreakerPhase::Closed);
    }

    #[test]
    fn exactly_half_failing_does_not_open() {
        let mut s = settings();
        s.threshold = 100;
        let mut breaker = CircuitBreaker::new(s);
        for i in 0..10 {
            let transition = if i % 2 == 0 {
                breaker.record_success(T0 + i)
            } else {
                breaker.record_failure(T0 + i)
            };
            assert_eq!(transition, None);
        }
    }

    fn opened_breaker() -> CircuitBreaker {
        let mut breaker = CircuitBreaker::new(settings());
        for i in 0..3 {
            breaker.record_failure(T0 + i);
        }
        assert_eq!(breaker.open_until(), Some(T0 + 2 + 30 * SECOND));
        breaker
    }

    #[test]
    fn open_becomes_half_open_and_admits_exactly_one_trial() {
        let mut breaker = opened_breaker();
        let reopen_time = T0 + 2 + 30 * SECOND;
        assert_eq!(breaker.phase(reopen_time - 1), BreakerPhase::Open);
        assert_eq!(breaker.phase(reopen_time), BreakerPhase::HalfOpen);
        assert!(breaker.is_available(reopen_time));
        assert_eq!(breaker.admit(reopen_time), Admission::Trial);
        assert!(!breaker.is_available(reopen_time + 1));
        assert_eq!(
            breaker.admit(reopen_time + 1),
            Admission::Rejected {
                retry_at: reopen_time + 1 + TRIAL_PENDING_RETRY_MS
            }
        );
        assert_eq!(breaker.phase(reopen_time + 1), BreakerPhase::HalfOpen);
    }

    #[test]
    fn trial_success_closes_and_resets_the_doubling() {
        let mut breaker = opened_breaker();
        let reopen_time = T0 + 2 + 30 * SECOND;
        assert_eq!(breaker.admit(reopen_time), Admission::Trial);
        assert_eq!(
            breaker.record_success(reopen_time + 500),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(breaker.phase(reopen_time + 501), BreakerPhase::Closed);
        assert_eq!(breaker.consecutive_opens(), 0);
        assert_eq!(breaker.admit(reopen_time + 501), Admission::Allowed);
        // The next trip starts again at 30 s.
        let later = reopen_time + MINUTE;
        breaker.record_failure(later);
        breaker.record_failure(later);
        assert_eq!(
            breaker.record_failure(later),
            opened_at(later, 30 * SECOND, 1)
        );
    }

    #[test]
    fn trial_failure_reopens_with_a_doubled_cooldown() {
        let mut breaker = opened_breaker();
        let first_reopen = T0 + 2 + 30 * SECOND;
        assert_eq!(breaker.admit(first_reopen), Admission::Trial);
        assert_eq!(
            breaker.record_failure(first_reopen + 100),
            opened_at(first_reopen + 100, 60 * SECOND, 2)
        );
        let second_reopen = first_reopen + 100 + 60 * SECOND;
        assert_eq!(breaker.phase(second_reopen - 1), BreakerPhase::Open);
        assert_eq!(breaker.admit(second_reopen), Admission::Trial);
        assert_eq!(
            breaker.record_failure(second_reopen),
            opened_at(second_reopen, 120 * SECOND, 3)
        );
    }

    #[test]
    fn the_cooldown_is_capped_at_max_open() {
        let mut breaker = opened_breaker();
        let mut now = T0 + 2 + 30 * SECOND;
        let mut open_periods = Vec::new();
        for _ in 0..7 {
            assert_eq!(breaker.admit(now), Admission::Trial);
            match breaker.record_failure(now) {
                Some(BreakerTransition::Opened { until, .. }) => {
                    open_periods.push((until - now) / SECOND);
                    now = until;
                }
                other => panic!("expected Opened, got {other:?}"),
            }
        }
        assert_eq!(open_periods, vec![60, 120, 240, 480, 600, 600, 600]);
    }

    #[test]
    fn failure_after_the_open_time_without_admission_still_reopens() {
        // A request admitted before the breaker opened fails after the open period ended.
        let mut breaker = opened_breaker();
        let reopen_time = T0 + 2 + 30 * SECOND;
        assert_eq!(
            breaker.record_failure(reopen_time + 10),
            opened_at(reopen_time + 10, 60 * SECOND, 2)
        );
    }

    #[test]
    fn late_outcomes_while_open_change_nothing() {
        let mut breaker = opened_breaker();
        let until = breaker.open_until();
        assert_eq!(breaker.record_success(T0 + 10), None);
        assert_eq!(breaker.record_failure(T0 + 20), None);
        assert_eq!(breaker.open_until(), until);
        assert_eq!(breaker.phase(T0 + 30), BreakerPhase::Open);
    }

    #[test]
    fn release_trial_frees_the_slot_without_deciding() {
        let mut breaker = opened_breaker();
        let reopen_time = T0 + 2 + 30 * SECOND;
        assert_eq!(breaker.admit(reopen_time), Admission::Trial);
        breaker.release_trial(reopen_time + 5);
        assert!(breaker.is_available(reopen_time + 6));
        assert_eq!(breaker.phase(reopen_time + 6), BreakerPhase::HalfOpen);
        assert_eq!(breaker.admit(reopen_time + 6), Admission::Trial);
        // Releasing a closed breaker does nothing.
        let mut closed = CircuitBreaker::new(settings());
        closed.release_trial(T0);
        assert_eq!(closed.admit(T0), Admission::Allowed);
    }

    #[test]
    fn an_abandoned_trial_slot_is_handed_out_again_after_its_lease() {
        let mut breaker = opened_breaker();
        let reopen_time = T0 + 2 + 30 * SECOND;
        assert_eq!(breaker.admit(reopen_time), Admission::Trial);
        assert!(!breaker.is_available(reopen_time + TRIAL_LEASE_MS - 1));
        assert_eq!(
            breaker.admit(reopen_time + TRIAL_LEASE_MS),
            Admission::Trial
        );
    }

    #[test]
    fn tick_reports_half_open_once() {
        let mut breaker = opened_breaker();
        let reopen_time = T0 + 2 + 30 * SECOND;
        assert_eq!(breaker.tick(reopen_time - 1), None);
        assert_eq!(
            breaker.tick(reopen_time),
            Some(BreakerTransition::HalfOpened)
        );
        assert_eq!(breaker.tick(reopen_time + 1), None);
        assert_eq!(breaker.open_until(), None);
        assert_eq!(breaker.admit(reopen_time + 1), Admission::Trial);
    }

    #[test]
    fn force_close_from_every_phase() {
        let mut open = opened_breaker();
        assert_eq!(open.force_close(T0 + 5), Some(BreakerTransition::Closed));
        assert_eq!(open.phase(T0 + 5), BreakerPhase::Closed);
        assert_eq!(open.consecutive_failures(), 0);

        let mut half_open = opened_breaker();
        assert_eq!(half_open.admit(T0 + 2 + 30 * SECOND), Admission::Trial);
        assert_eq!(
            half_open.force_close(T0 + MINUTE),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(half_open.admit(T0 + MINUTE), Admission::Allowed);

        let mut closed = CircuitBreaker::new(settings());
        closed.record_failure(T0);
        closed.record_failure(T0);
        assert_eq!(closed.force_close(T0), None);
        assert_eq!(closed.consecutive_failures(), 0);
        assert_eq!(closed.record_failure(T0), None, "the streak started afresh");
    }

    #[test]
    fn closing_forgets_the_window_so_old_failures_do_not_reopen() {
        let mut s = settings();
        s.threshold = 100;
        let mut breaker = CircuitBreaker::new(s);
        for i in 0..10 {
            breaker.record_failure(T0 + i);
        }
        assert_eq!(breaker.phase(T0 + 10), BreakerPhase::Open);
        let reopen_time = breaker.open_until().expect("open");
        assert_eq!(breaker.admit(reopen_time), Admission::Trial);
        assert_eq!(
            breaker.record_success(reopen_time),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(breaker.record_failure(reopen_time + 1), None);
    }

    #[test]
    fn restore_brings_back_each_phase() {
        let closed = CircuitBreaker::restore(settings(), BreakerPhase::Closed, None, 3);
        assert_eq!(closed.phase(T0), BreakerPhase::Closed);
        assert_eq!(closed.consecutive_opens(), 0);

        let mut open =
            CircuitBreaker::restore(settings(), BreakerPhase::Open, Some(T0 + MINUTE), 2);
        assert_eq!(open.phase(T0), BreakerPhase::Open);
        assert_eq!(open.open_until(), Some(T0 + MINUTE));
        assert_eq!(open.admit(T0 + MINUTE), Admission::Trial);
        // The doubling continues from the restored count.
        assert_eq!(
            open.record_failure(T0 + MINUTE),
            opened_at(T0 + MINUTE, 120 * SECOND, 3)
        );

        let mut half_open = CircuitBreaker::restore(settings(), BreakerPhase::HalfOpen, None, 1);
        assert_eq!(half_open.phase(T0), BreakerPhase::HalfOpen);
        assert_eq!(half_open.admit(T0), Admission::Trial);
    }

    #[test]
    fn settings_change_keeps_the_phase() {
        let mut breaker = opened_breaker();
        let until = breaker.open_until();
        let mut s = settings();
        s.threshold = 1;
        breaker.set_settings(s);
        assert_eq!(breaker.open_until(), until);
        assert_eq!(
            breaker.force_close(T0 + 10),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(
            breaker.record_failure(T0 + 11),
            opened_at(T0 + 11, 30 * SECOND, 1)
        );
    }

    fn group_settings() -> GroupBreakerSettings {
        GroupBreakerSettings {
            threshold: 2,
            open_ms: 10 * MINUTE,
        }
    }

    #[test]
    fn group_breaker_opens_after_consecutive_failed_requests_for_the_recovery_window() {
        let mut group = GroupBreaker::new(group_settings());
        assert_eq!(group.admit(T0), Admission::Allowed);
        assert_eq!(group.record_failure(T0), None);
        assert_eq!(group.consecutive_failures(), 1);
        assert_eq!(
            group.record_failure(T0 + SECOND),
            opened_at(T0 + SECOND, 10 * MINUTE, 1)
        );
        assert_eq!(
            group.admit(T0 + 2 * SECOND),
            Admission::Rejected {
                retry_at: T0 + SECOND + 10 * MINUTE
            }
        );
        assert_eq!(
            group.retry_at(T0 + 2 * SECOND),
            Some(T0 + SECOND + 10 * MINUTE)
        );
    }

    #[test]
    fn group_breaker_success_in_between_resets_the_count() {
        let mut group = GroupBreaker::new(group_settings());
        group.record_failure(T0);
        assert_eq!(group.record_success(T0 + 1), None);
        assert_eq!(group.record_failure(T0 + 2), None);
        assert_eq!(group.phase(T0 + 3), BreakerPhase::Closed);
    }

    #[test]
    fn group_breaker_half_open_lets_one_request_through_and_reopens_for_the_same_window() {
        let mut group = GroupBreaker::new(group_settings());
        group.record_failure(T0);
        group.record_failure(T0);
        let half_open_at = T0 + 10 * MINUTE;
        assert_eq!(group.phase(half_open_at), BreakerPhase::HalfOpen);
        assert_eq!(group.admit(half_open_at), Admission::Trial);
        assert!(matches!(
            group.admit(half_open_at + 1),
            Admission::Rejected { .. }
        ));
        // The trial request failed on every account: open again, for the same window.
        assert_eq!(
            group.record_failure(half_open_at + 5 * SECOND),
            opened_at(half_open_at + 5 * SECOND, 10 * MINUTE, 2)
        );
        let again = half_open_at + 5 * SECOND + 10 * MINUTE;
        assert_eq!(group.admit(again), Admission::Trial);
        assert_eq!(
            group.record_success(again + 1),
            Some(BreakerTransition::Closed)
        );
        assert_eq!(group.admit(again + 2), Admission::Allowed);
    }

    #[test]
    fn group_breaker_closes_at_once_on_a_successful_probe() {
        let mut group = GroupBreaker::new(group_settings());
        group.record_failure(T0);
        group.record_failure(T0);
        assert_eq!(group.phase(T0 + MINUTE), BreakerPhase::Open);
        assert_eq!(
            group.force_close(T0 + MINUTE),
            Some(BreakerTransition::Closed)
        );
        assert!(group.is_available(T0 + MINUTE));
    }

    #[test]
    fn group_breaker_ignores_error_rates() {
        let mut group = GroupBreaker::new(GroupBreakerSettings {
            threshold: 3,
            open_ms: MINUTE,
        });
        for i in 0..100 {
            let transition = if i % 3 == 2 {
                group.record_success(T0 + i)
            } else {
                group.record_failure(T0 + i)
            };
            assert_eq!(transition, None);
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Operation {
        Admit,
        Success,
        Failure,
        Release,
        ForceClose,
    }

    fn arbitrary_operation() -> impl proptest::strategy::Strategy<Value = Operation> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Operation::Admit),
            2 => Just(Operation::Success),
            4 => Just(Operation::Failure),
            1 => Just(Operation::Release),
            1 => Just(Operation::ForceClose),
        ]
    }

    proptest::proptest! {
        #[test]
        fn breaker_invariants_hold_for_any_sequence(
            steps in proptest::collection::vec(
                (0i64..40_000, arbitrary_operation()),
                1..200,
            ),
        ) {
            let s = settings();
            let mut breaker = CircuitBreaker::new(s);
            let mut now = T0;
            let mut trial_outstanding = false;
            let mut trial_admitted_at = T0;
            for (elapsed, operation) in steps {
                now += elapsed;
                if now - trial_admitted_at >= TRIAL_LEASE_MS {
                    // An unreported trial's lease ran out: the slot may be handed out again.
                    trial_outstanding = false;
                }
                let transition = match operation {
                    Operation::Admit => {
                        match breaker.admit(now) {
                            Admission::Allowed => {
                                proptest::prop_assert_eq!(breaker.phase(now), BreakerPhase::Closed);
                            }
                            Admission::Trial => {
                                proptest::prop_assert!(!trial_outstanding, "two trials at once");
                                trial_outstanding = true;
                                trial_admitted_at = now;
                            }
                            Admission::Rejected { retry_at } => {
                                proptest::prop_assert!(retry_at > now);
                                proptest::prop_assert!(!breaker.is_available(now));
                            }
                        }
                        None
                    }
                    Operation::Success => breaker.record_success(now),
                    Operation::Failure => breaker.record_failure(now),
                    Operation::Release => {
                        breaker.release_trial(now);
                        None
                    }
                    Operation::ForceClose => breaker.force_close(now),
                };
                if !matches!(operation, Operation::Admit) {
                    // Any report settles or frees the trial slot unless the breaker is still
                    // half-open with the slot taken, which only admit can cause.
                    trial_outstanding = trial_outstanding
                        && breaker.phase(now) == BreakerPhase::HalfOpen
                        && !breaker.is_available(now);
                }
                if let Some(BreakerTransition::Opened { until, consecutive_opens }) = transition {
                    proptest::prop_assert!(until - now >= s.base_open_ms);
                    proptest::prop_assert!(until - now <= s.max_open_ms);
                    proptest::prop_assert_eq!(until - now, s.open_duration_ms(consecutive_opens));
                    proptest::prop_assert_eq!(breaker.phase(now), BreakerPhase::Open);
                }
                if transition == Some(BreakerTransition::Closed) {
                    proptest::prop_assert_eq!(breaker.consecutive_failures(), 0);
                    proptest::prop_assert!(breaker.is_available(now));
                }
                if let Some(until) = breaker.open_until() {
                    proptest::prop_assert!(until <= now + s.max_open_ms);
                }
            }
        }
    }
}

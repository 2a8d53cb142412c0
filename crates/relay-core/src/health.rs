//! Account health: sliding-window error rates, latency, and the learned figures (EWMAs) that
//! feed the `adaptive` and `smart_load_balance` strategies.
//!
//! The window is a ring of [`WINDOW_BUCKETS`] time buckets covering `window_ms` (the
//! `failure_window`), so memory is fixed whatever the traffic: a sample lands in the bucket of
//! its time slice, and a bucket whose slice has slid out of the window is reused. The error rate
//! therefore looks at the last `window_ms` (to within one bucket's width), never at the
//! account's lifetime, which is what lets an account that failed an hour ago count as healthy
//! now. Lifetime counters are kept separately for the admin API's `success_count` and
//! `failure_count`.

pub use crate::strategy::HealthStatus;
use crate::UnixMillis;
use std::cell::Cell;

/// How many time slices the sliding window is cut into: enough that the window slides smoothly
/// (one slice of a 5 minute window is 10 s), few enough to sum in a few nanoseconds.
pub const WINDOW_BUCKETS: usize = 30;

/// One time slice of a [`SlidingWindow`].
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Which slice of time (`now / width`) the counts belong to; `i64::MIN` when empty.
    slice: i64,
    successes: u64,
    failures: u64,
    success_latency_sum_ms: f64,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        slice: i64::MIN,
        successes: 0,
        failures: 0,
        success_latency_sum_ms: 0.0,
    };
}

/// What a [`SlidingWindow`] holds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowTotals {
    pub successes: u64,
    pub failures: u64,
    /// Sum of the latencies of the successful samples (for a windowed average latency).
    pub success_latency_sum_ms: f64,
}

impl WindowTotals {
    pub fn requests(&self) -> u64 {
        self.successes + self.failures
    }

    /// Failures over requests; 0 when there were none.
    pub fn error_rate(&self) -> f64 {
        let requests = self.requests();
        if requests == 0 {
            0.0
        } else {
            self.failures as f64 / requests as f64
        }
    }

    /// Average latency of the successful samples, `None` without any.
    pub fn average_success_latency_ms(&self) -> Option<f64> {
        (self.successes > 0).then(|| self.success_latency_sum_ms / self.successes as f64)
    }
}

/// Success and failure counts over the last `window_ms`, in bounded memory. Used by the health
/// tracker and by the circuit breaker's error-rate rule.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    window_ms: i64,
    bucket_width_ms: i64,
    buckets: [Bucket; WINDOW_BUCKETS],
    /// The totals as of one slice, kept up to date by `record` while time stays in that
    /// slice: selection reads every account's totals on every request, and summing the ring
    /// each time cost more than everything else it reads.
    memo: Cell<Option<(i64, WindowTotals)>>,
}

impl SlidingWindow {
    /// A window of `window_ms` (at least one millisecond per bucket).
    pub fn new(window_ms: i64) -> Self {
        let window_ms = window_ms.max(WINDOW_BUCKETS as i64);
        // Round the width up so the buckets together cover the whole window.
        let bucket_width_ms = (window_ms + WINDOW_BUCKETS as i64 - 1) / WINDOW_BUCKETS as i64;
        SlidingWindow {
            window_ms,
            bucket_width_ms,
            buckets: [Bucket::EMPTY; WINDOW_BUCKETS],
            memo: Cell::new(None),
        }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    fn slice_of(&self, now: UnixMillis) -> i64 {
        now.div_euclid(self.bucket_width_ms)
    }

    fn slot_of(slice: i64) -> usize {
        // rem_euclid of a positive modulus is in 0..WINDOW_BUCKETS, so the cast is lossless.
        slice.rem_euclid(WINDOW_BUCKETS as i64) as usize
    }

    /// The first moment after `now` at which [`SlidingWindow::totals`] may give another answer
    /// without a new sample: the start of the next slice.
    pub fn totals_change_at(&self, now: UnixMillis) -> UnixMillis {
        (self.slice_of(now) + 1).saturating_mul(self.bucket_width_ms)
    }

    /// Counts one sample at `now`. A sample older than what its bucket already holds (a clock
    /// stepping back past a whole window) is dropped rather than mixed into newer counts.
    pub fn record(&mut self, now: UnixMillis, success: bool, latency_ms: f64) {
        let slice = self.slice_of(now);
        let bucket = &mut self.buckets[Self::slot_of(slice)];
        if bucket.slice < slice {
            *bucket = Bucket {
                slice,
                ..Bucket::EMPTY
            };
        } else if bucket.slice > slice {
            return;
        }
        let latency_ms = sane_latency_ms(latency_ms);
        if success {
            bucket.successes += 1;
            bucket.success_latency_sum_ms += latency_ms;
        } else {
            bucket.failures += 1;
        }
        // The memo stays right only for a sample in its own slice; any other is rare (a new
        // slice began, or the clock stepped back) and the next read sums the ring again.
        self.memo.set(match self.memo.get() {
            Some((memo_slice, mut totals)) if memo_slice == slice => {
                if success {
                    totals.successes += 1;
                    totals.success_latency_sum_ms += latency_ms;
                } else {
                    totals.failures += 1;
                }
                Some((memo_slice, totals))
            }
            _ => None,
        });
    }

    /// The counts of the slices that are within the window at `now`.
    pub fn totals(&self, now: UnixMillis) -> WindowTotals {
        let current = self.slice_of(now);
        if let Some((memo_slice, totals)) = self.memo.get() {
            if memo_slice == current {
                return totals;
            }
        }
        let oldest = current - (WINDOW_BUCKETS as i64 - 1);
        let totals = self
            .buckets
            .iter()
            .filter(|bucket| bucket.slice >= oldest && bucket.slice <= current)
            .fold(WindowTotals::default(), |mut totals, bucket| {
                totals.successes += bucket.successes;
                totals.failures += bucket.failures;
                totals.success_latency_sum_ms += bucket.success_latency_sum_ms;
                totals
            });
        self.memo.set(Some((current, totals)));
        totals
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        self.buckets = [Bucket::EMPTY; WINDOW_BUCKETS];
        self.memo.set(None);
    }
}

/// A latency that can be summed: NaN, infinite and negative figures count as zero.
fn sane_latency_ms(latency_ms: f64) -> f64 {
    if latency_ms.is_finite() && latency_ms > 0.0 {
        latency_ms
    } else {
        0.0
    }
}

/// When an account counts as degraded or unhealthy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSettings {
    /// The sliding window error rates are computed over (the config's `failure_window`).
    pub window_ms: i64,
    /// An error rate at or above this makes the account degraded.
    pub degraded_error_rate: f64,
    /// An error rate at or above this makes the account unhealthy.
    pub unhealthy_error_rate: f64,
    /// Fewer samples than this in the window say nothing: the account counts as healthy (the
    /// circuit breaker's consecutive-failure rule covers a few failures in a row).
    pub min_samples: u32,
    /// An average latency of successful requests at or above this makes the account degraded.
    pub degraded_latency_ms: f64,
    /// Weight of the newest sample in the success and latency EWMAs.
    pub ewma_alpha: f64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            window_ms: 5 * 60 * 1000,
            degraded_error_rate: 0.2,
            unhealthy_error_rate: 0.5,
            min_samples: 5,
            degraded_latency_ms: 30_000.0,
            ewma_alpha: 0.2,
        }
    }
}

impl HealthSettings {
    /// The settings the fallback configuration implies: its `failure_window` is the window,
    /// the rest are the defaults.
    pub fn from_config(config: &crate::config::FallbackConfig) -> Self {
        HealthSettings {
            window_ms: duration_to_millis(config.failure_window),
            ..HealthSettings::default()
        }
    }

    /// The EWMA weight, kept in (0, 1] so a mistyped setting can neither freeze nor blow up
    /// the averages.
    fn sane_alpha(&self) -> f64 {
        if self.ewma_alpha.is_finite() && self.ewma_alpha > 0.0 {
            self.ewma_alpha.min(1.0)
        } else {
            HealthSettings::default().ewma_alpha
        }
    }
}

/// A duration as milliseconds, saturating instead of wrapping for absurdly long durations.
pub(crate) fn duration_to_millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One account's health record.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    settings: HealthSettings,
    window: SlidingWindow,
    success_count: u64,
    failure_count: u64,
    success_latency_sum_ms: f64,
    last_success: Option<UnixMillis>,
    last_failure: Option<UnixMillis>,
    success_ewma: f64,
    /// 0.0 until the first successful sample.
    latency_ewma_ms: f64,
}

impl HealthTracker {
    pub fn new(settings: HealthSettings) -> Self {
        HealthTracker {
            settings,
            window: SlidingWindow::new(settings.window_ms),
            success_count: 0,
            failure_count: 0,
            success_latency_sum_ms: 0.0,
            last_success: None,
            last_failure: None,
            success_ewma: 1.0,
            latency_ewma_ms: 0.0,
        }
    }

    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    /// Applies new settings. A new window length starts the window afresh (its buckets have a
    /// different width); everything else is kept.
    pub fn set_settings(&mut self, settings: HealthSettings) {
        if settings.window_ms != self.settings.window_ms {
            self.window = SlidingWindow::new(settings.window_ms);
        }
        self.settings = settings;
    }

    /// Records one request's outcome. Only successful requests contribute latency: a failed
    /// attempt's duration says how fast it failed (a refused connection is instant), not how
    /// fast the account serves.
    pub fn record(&mut self, now: UnixMillis, success: bool, latency_ms: f64) {
        let alpha = self.settings.sane_alpha();
        self.window.record(now, success, latency_ms);
        let outcome = if success { 1.0 } else { 0.0 };
        self.success_ewma = alpha * outcome + (1.0 - alpha) * self.success_ewma;
        if success {
            let latency_ms = sane_latency_ms(latency_ms);
            self.success_count += 1;
            self.success_latency_sum_ms += latency_ms;
            self.last_success = Some(now);
            self.latency_ewma_ms = if self.latency_ewma_ms > 0.0 {
                alpha * latency_ms + (1.0 - alpha) * self.latency_ewma_ms
            } else {
                latency_ms
            };
        } else {
            self.failure_count += 1;
            self.last_failure = Some(now);
        }
    }

    /// Health from the error rate and latency over the sliding window only.
    pub fn status(&self, now: UnixMillis) -> HealthStatus {
        self.status_of(&self.window.totals(now))
    }

    /// The status and the number of requests in the window, from one pass over the window
    /// (what selection reads for every candidate).
    pub fn status_and_requests(&self, now: UnixMillis) -> (HealthStatus, u64) {
        let totals = self.window.totals(now);
        (self.status_of(&totals), totals.requests())
    }

    fn status_of(&self, totals: &WindowTotals) -> HealthStatus {
        if totals.requests() < u64::from(self.settings.min_samples) {
            return HealthStatus::Healthy;
        }
        let error_rate = totals.error_rate();
        if error_rate >= self.settings.unhealthy_error_rate {
            return HealthStatus::Unhealthy;
        }
        let slow = totals
            .average_success_latency_ms()
            .is_some_and(|average| average >= self.settings.degraded_latency_ms);
        if error_rate >= self.settings.degraded_error_rate || slow {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }

    /// Failures over requests within the window; 0 without requests.
    pub fn error_rate(&self, now: UnixMillis) -> f64 {
        self.window.totals(now).error_rate()
    }

    /// (successes, failures) within the window.
    pub fn window_counts(&self, now: UnixMillis) -> (u64, u64) {
        let totals = self.window.totals(now);
        (totals.successes, totals.failures)
    }

    /// Successes since start or the last [`HealthTracker::reset`].
    pub fn success_count(&self) -> u64 {
        self.success_count
    }

    /// Failures since start or the last [`HealthTracker::reset`].
    pub fn failure_count(&self) -> u64 {
        self.failure_count
    }

    /// Average latency of successful requests since start or reset; 0 without any.
    pub fn avg_latency_ms(&self) -> f64 {
        if self.success_count == 0 {
            0.0
        } else {
            self.success_latency_sum_ms / self.success_count as f64
        }
    }

    pub fn last_success(&self) -> Option<UnixMillis> {
        self.last_success
    }

    pub fn last_failure(&self) -> Option<UnixMillis> {
        self.last_failure
    }

    /// The first moment after `now` at which the status and window usage may change without a
    /// new sample.
    pub fn window_changes_at(&self, now: UnixMillis) -> UnixMillis {
        self.window.totals_change_at(now)
    }

    /// Exponentially weighted success rate, 1.0 for an account without history.
    pub fn success_ewma(&self) -> f64 {
        self.success_ewma
    }

    /// Exponentially weighted latency of successful requests; 0.0 while unknown.
    pub fn latency_ewma_ms(&self) -> f64 {
        self.latency_ewma_ms
    }

    /// A probe or an operator re-enabled the account: its failure window starts afresh and its
    /// learned success rate goes back to that of a new account, so `adaptive` gives it full
    /// traffic again. Lifetime counters and the latency estimate are kept.
    pub fn reset_window(&mut self) {
        self.window.clear();
        self.success_ewma = 1.0;
    }

    /// Forgets everything (the admin API's reset-metrics).
    pub fn reset(&mut self) {
        *self = HealthTracker::new(self.settings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    const T0: i64 = 1_700_000_000_000;

    fn tracker() -> HealthTracker {
        HealthTracker::new(HealthSettings::default())
    }

    #[test]
    fn window_forgets_samples_older_than_the_window() {
        let mut window = SlidingWindow::new(5 * MINUTE);
        window.record(T0, false, 0.0);
        window.record(T0 + MINUTE, true, 100.0);
        let totals = window.totals(T0 + 2 * MINUTE);
        assert_eq!((totals.successes, totals.failures), (1, 1));
        assert_eq!(totals.average_success_latency_ms(), Some(100.0));
        // Five minutes and one bucket later the first sample is gone, the second is not.
        let later = window.totals(T0 + 5 * MINUTE + 10_000);
        assert_eq!((later.successes, later.failures), (1, 0));
        let much_later = window.totals(T0 + 7 * MINUTE);
        assert_eq!(much_later.requests(), 0);
    }

    #[test]
    fn memoised_totals_always_equal_a_fresh_sum() {
        // Times move forward in small steps, sometimes jump a slice or the whole window, and
        // now and then step back: the memo must never disagree with summing the ring.
        let mut window = SlidingWindow::new(30_000); // 1 s slices
        let mut now: i64 = 1_000_000;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += match seed % 100 {
                0 => 31_000,
                1..=3 => -1_500,
                4..=20 => 1_000,
                _ => (seed % 300) as i64,
            };
            if seed.is_multiple_of(3) {
                let _ = window.totals(now);
            }
            window.record(now, !seed.is_multiple_of(5), (seed % 900) as f64);
            let memoised = window.totals(now);
            let fresh = SlidingWindow {
                memo: Cell::new(None),
                ..window.clone()
            }
            .totals(now);
            assert_eq!(memoised.successes, fresh.successes, "step {step}");
            assert_eq!(memoised.failures, fresh.failures, "step {step}");
            assert!(
                (memoised.success_latency_sum_ms - fresh.success_latency_sum_ms).abs() < 1e-6,
                "step {step}"
            );
        }
    }

    #[test]
    fn window_reuses_buckets_when_time_wraps_the_ring() {
        let mut window = SlidingWindow::new(30_000); // 1 s buckets
        for second in 0..90 {
            window.record(T0 + second * 1000, second % 3 == 0, 10.0);
        }
        let totals = window.totals(T0 + 89_000);
        assert_eq!(totals.requests(), 30);
        assert_eq!(totals.successes, 10);
    }

    #[test]
    fn window_drops_samples_from_before_a_bucket_was_reused() {
        let mut window = SlidingWindow::new(30_000);
        window.record(T0 + 30_000, true, 1.0);
        // Same slot, one full ring earlier: must not be mixed into the newer bucket.
        window.record(T0, false, 1.0);
        let totals = window.totals(T0 + 30_000);
        assert_eq!((totals.successes, totals.failures), (1, 0));
    }

    #[test]
    fn status_needs_min_samples() {
        let mut health = tracker();
        for i in 0..4 {
            health.record(T0 + i, false, 0.0);
        }
        assert_eq!(health.status(T0 + 10), HealthStatus::Healthy);
        health.record(T0 + 5, false, 0.0);
        assert_eq!(health.status(T0 + 10), HealthStatus::Unhealthy);
    }

    #[test]
    fn status_follows_error_rate_thresholds() {
        let mut health = tracker();
        for i in 0..8 {
            health.record(T0 + i, true, 1_000.0);
        }
        for i in 0..2 {
            health.record(T0 + 10 + i, false, 0.0);
        }
        // 2 of 10 = 0.2: degraded (at the threshold).
        assert!((health.error_rate(T0 + 20) - 0.2).abs() < 1e-12);
        assert_eq!(health.status(T0 + 20), HealthStatus::Degraded);
        health.record(T0 + 21, true, 1_000.0);
        // 2 of 11 < 0.2: healthy.
        assert_eq!(health.status(T0 + 22), HealthStatus::Healthy);
        for i in 0..9 {
            health.record(T0 + 30 + i, false, 0.0);
        }
        // 11 of 20 >= 0.5: unhealthy.
        assert_eq!(health.window_counts(T0 + 40), (9, 11));
        assert_eq!(health.status(T0 + 40), HealthStatus::Unhealthy);
        // Once the window has slid past, the account is healthy again.
        assert_eq!(health.status(T0 + 6 * MINUTE), HealthStatus::Healthy);
        assert_eq!(health.failure_count(), 11, "lifetime counts are kept");
    }

    #[test]
    fn slow_successes_make_an_account_degraded() {
        let mut health = tracker();
        for i in 0..5 {
            health.record(T0 + i, true, 31_000.0);
        }
        assert_eq!(health.status(T0 + 10), HealthStatus::Degraded);
        for i in 0..20 {
            health.record(T0 + 10 + i, true, 1_000.0);
        }
        assert_eq!(health.status(T0 + 40), HealthStatus::Healthy);
    }

    #[test]
    fn lifetime_figures_and_ewmas() {
        let mut health = tracker();
        assert_eq!(health.success_ewma(), 1.0);
        assert_eq!(health.latency_ewma_ms(), 0.0);
        health.record(T0, true, 1_000.0);
        assert_eq!(health.latency_ewma_ms(), 1_000.0, "first sample sets it");
        health.record(T0 + 1, true, 2_000.0);
        assert!((health.latency_ewma_ms() - 1_200.0).abs() < 1e-9);
        health.record(T0 + 2, false, 50.0);
        assert!((health.success_ewma() - 0.8).abs() < 1e-12);
        assert!(
            (health.latency_ewma_ms() - 1_200.0).abs() < 1e-9,
            "failures add no latency"
        );
        assert_eq!(health.success_count(), 2);
        assert_eq!(health.failure_count(), 1);
        assert_eq!(health.avg_latency_ms(), 1_500.0);
        assert_eq!(health.last_success(), Some(T0 + 1));
        assert_eq!(health.last_failure(), Some(T0 + 2));
    }

    #[test]
    fn nonsense_latency_counts_as_zero() {
        let mut health = tracker();
        health.record(T0, true, f64::NAN);
        health.record(T0, true, -5.0);
        assert_eq!(health.avg_latency_ms(), 0.0);
        assert_eq!(health.latency_ewma_ms(), 0.0);
    }

    #[test]
    fn reset_window_starts_afresh_but_keeps_lifetime_counts() {
        let mut health = tracker();
        for i in 0..10 {
            health.record(T0 + i, false, 0.0);
        }
        assert_eq!(health.status(T0 + 20), HealthStatus::Unhealthy);
        health.reset_window();
        assert_eq!(health.status(T0 + 20), HealthStatus::Healthy);
        assert_eq!(health.window_counts(T0 + 20), (0, 0));
        assert_eq!(health.success_ewma(), 1.0);
        assert_eq!(health.failure_count(), 10);
        health.reset();
        assert_eq!(health.failure_count(), 0);
        assert_eq!(health.last_failure(), None);
    }

    #[test]
    fn changing_the_window_length_restarts_the_window() {
        let mut health = tracker();
        for i in 0..10 {
            health.record(T0 + i, false, 0.0);
        }
        let mut settings = *health.settings();
        settings.degraded_latency_ms = 10_000.0;
        health.set_settings(settings);
        assert_eq!(
            health.status(T0 + 20),
            HealthStatus::Unhealthy,
            "same window kept"
        );
        settings.window_ms = 10 * MINUTE;
        health.set_settings(settings);
        assert_eq!(health.status(T0 + 20), HealthStatus::Healthy);
    }
}

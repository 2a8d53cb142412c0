//! Fallback metrics in bounded memory (PRODUCT.md §5.5): per account and per group, requests,
//! successes, failures by class, fallbacks and their success rate, latency (average, p50, p95,
//! p99), time to first byte, tokens, cost and breaker transitions, exported as JSON, CSV and
//! the Prometheus text format.
//!
//! # Time buckets
//!
//! The retention (24 h by default) is cut into [`TIME_BUCKETS_PER_RETENTION`] equal buckets
//! (one hour each by default). Every account and group keeps only the buckets that received
//! data, in time order, and never more than that many: a sample that opens a new bucket pushes
//! the buckets that left the retention out, and [`MetricsRegistry::prune`] does the same for
//! quiet accounts and frees an account or group whose last bucket left, so a scope with no data
//! in the retention window takes no memory at all. The figures of a snapshot cover the buckets
//! still inside the window: data leaves at most one bucket width (1/24 of the retention)
//! earlier than its exact age would say, never later.
//!
//! # Percentiles
//!
//! Each bucket holds a log-scale latency histogram in the manner of HdrHistogram's
//! logarithmic buckets: bin 0 holds latencies under 1 ms, bin `i` holds
//! `[1.2^(i-1), 1.2^i)` ms, and the last bin everything from `1.2^74` ms (about 12 minutes,
//! beyond the longest request timeout) up. A quantile is the nearest-rank sample's bin,
//! estimated by the bin's geometric midpoint and clamped to the smallest and largest latency
//! actually seen, so the estimate is within [`PERCENTILE_RELATIVE_ERROR_BOUND`] (√1.2 − 1,
//! under 9.6 %) of the true nearest-rank value, or within 0.5 ms below 1 ms.
//!
//! # Memory
//!
//! One account bucket is 440 bytes (76 `u32` histogram bins and the counters), so an account
//! with data in all 24 buckets holds about 10.4 KiB; [`MAX_BYTES_PER_ACCOUNT`] is the exact
//! bound, checked at compile time to stay at or under 16 KiB. A group bucket is smaller
//! (368 bytes). Buckets are allocated one at a time, so a quiet account holds only the few
//! it used.
//!
//! # Two kinds of totals
//!
//! The JSON and CSV figures are windowed: they fall when old buckets leave. Prometheus counters
//! must not fall except on a real reset, so every entry also keeps monotonic totals from its
//! creation (its first sample after start, after a reset, or after a quiet retention window);
//! the exposition uses those for `_total` counters and summary `_sum`/`_count`.
//!
//! Pure: time is passed in, nothing here does IO or reads a clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::breaker::BreakerPhase;
use crate::classify::OutcomeClass;
use crate::model::{AccountId, GroupId, Usage};
use crate::{FastMap, UnixMillis};

/// The seed's retention: data older than a day is dropped.
pub const DEFAULT_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// How many time buckets the retention is cut into (one hour each at the default retention).
pub const TIME_BUCKETS_PER_RETENTION: usize = 24;

/// The worst relative error of an estimated percentile against the true nearest-rank value,
/// for latencies of 1 ms and more: √1.2 − 1.
pub const PERCENTILE_RELATIVE_ERROR_BOUND: f64 = 0.0955;

/// The most memory one account's metrics can take: its map slot, its entry and a full set of
/// time buckets.
pub const MAX_BYTES_PER_ACCOUNT: usize = std::mem::size_of::<(AccountId, AccountEntry)>()
    + TIME_BUCKETS_PER_RETENTION * std::mem::size_of::<AccountBucket>();

// The module doc promises at most 16 KiB per account; the build fails if that stops being true.
const _: () = assert!(MAX_BYTES_PER_ACCOUNT <= 16 * 1024);

/// Number of latency histogram bins: bin 0 under 1 ms, 74 log-scale bins, one overflow bin.
const LATENCY_BINS: usize = 76;

/// The ratio between a latency bin's upper and lower bound.
const LATENCY_BIN_RATIO: f64 = 1.2;

/// The classes in the order of [`OutcomeClass::ALL`], used as array indices.
const CLASS_COUNT: usize = OutcomeClass::ALL.len();

/// One attempt on one account, as the attempt loop reports it when the attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptSample {
    pub group_id: GroupId,
    pub account_id: AccountId,
    pub class: OutcomeClass,
    /// The upstream's status, or None when no answer came.
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// Time to the first byte of the answer, when one came.
    pub ttfb_ms: Option<f64>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub at: UnixMillis,
}

/// One client request, reported when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSample {
    pub group_id: GroupId,
    /// Attempts made: 0 when no account was eligible. A request "fell back" when this is
    /// above 1.
    pub attempts: u32,
    pub succeeded: bool,
    pub latency_ms: f64,
    pub at: UnixMillis,
}

/// Whose breaker changed phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerScope {
    Account(AccountId),
    Group(GroupId),
}

/// Which figures a snapshot or a reset is about. Empty means everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsFilter {
    pub group_id: Option<GroupId>,
    pub account_id: Option<AccountId>,
}

impl MetricsFilter {
    pub fn is_empty(&self) -> bool {
        self.group_id.is_none() && self.account_id.is_none()
    }
}

/// What a reset removed, so the admin API can say so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResetOutcome {
    pub groups_reset: usize,
    pub accounts_reset: usize,
}

/// Monotonic per-account totals since the entry was created, for Prometheus counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AccountCounters {
    /// Attempts per class, indexed like [`OutcomeClass::ALL`].
    pub attempts_by_class: [u64; CLASS_COUNT],
    pub usage: Usage,
    pub cost_usd: f64,
    pub latency_sum_ms: f64,
    pub latency_count: u64,
}

/// Monotonic per-group totals since the entry was created, for Prometheus counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupCounters {
    pub requests: u64,
    pub successes: u64,
    pub fallbacks: u64,
    pub fallback_successes: u64,
    pub latency_sum_ms: f64,
}

/// The figures of one group over the retention window since start or the last reset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStats {
    pub group_id: GroupId,
    /// Start of the period these figures cover: the later of start/last reset and the oldest
    /// time bucket still kept.
    #[serde(serialize_with = "serialize_time")]
    pub since: UnixMillis,
    /// Client requests that ended.
    pub requests: u64,
    pub successes: u64,
    /// `requests - successes`.
    pub failures: u64,
    /// Requests that found no eligible account (0 attempts); counted among failures.
    pub requests_without_attempt: u64,
    /// Requests that needed more than one attempt.
    pub fallbacks: u64,
    /// Requests that needed more than one attempt and succeeded.
    pub fallback_successes: u64,
    /// `fallback_successes / fallbacks`; null when no request fell back.
    pub fallback_success_rate: Option<f64>,
    /// `successes / requests`; null without requests.
    pub success_rate: Option<f64>,
    /// Whole-request latency (all attempts included); null without requests.
    pub avg_latency_ms: Option<f64>,
    pub p50_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub p99_latency_ms: Option<f64>,
    pub breaker_transitions: u64,
    /// The phase of the group breaker's last recorded transition in the window, if any.
    pub breaker_state: Option<String>,
    /// Monotonic totals for Prometheus; not part of the JSON answer.
    #[serde(skip)]
    pub lifetime: GroupCounters,
}

/// The figures of one account over the retention window since start or the last reset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountStats {
    pub account_id: AccountId,
    /// The group of the account's latest attempt; null when only breaker transitions (say,
    /// from recovery probes) were recorded.
    pub group_id: Option<GroupId>,
    #[serde(serialize_with = "serialize_time")]
    pub since: UnixMillis,
    /// Attempts on this account.
    pub requests: u64,
    pub successes: u64,
    /// `requests - successes`, client errors included (see `failures_by_class`).
    pub failures: u64,
    /// Every failure class by its snake_case name, zeros included, so the shape is stable.
    pub failures_by_class: BTreeMap<String, u64>,
    /// `successes / requests`; null without attempts.
    pub success_rate: Option<f64>,
    pub avg_latency_ms: Option<f64>,
    pub p50_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub p99_latency_ms: Option<f64>,
    /// Over the attempts that got a first byte; null when none did.
    pub avg_ttfb_ms: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: f64,
    pub breaker_transitions: u64,
    /// Monotonic totals for Prometheus; not part of the JSON answer.
    #[serde(skip)]
    pub lifetime: AccountCounters,
}

/// Every figure at one moment, sorted by id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Start or the last global reset, but never before the oldest time bucket still kept.
    #[serde(serialize_with = "serialize_time")]
    pub since: UnixMillis,
    /// How long data is kept, as a duration string such as `"24h"`.
    #[serde(rename = "retention", serialize_with = "serialize_duration_ms")]
    pub retention_ms: i64,
    pub groups: Vec<GroupStats>,
    pub accounts: Vec<AccountStats>,
}

/// Live per-account state for the Prometheus gauges, read by the caller from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountGauge {
    pub account_id: AccountId,
    pub group_id: GroupId,
    pub account_name: String,
    /// `healthy`, `degraded` or `unhealthy`.
    pub health: &'static str,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    pub in_flight: u32,
}

/// The metrics of every account and group, in bounded memory.
#[derive(Debug)]
pub struct MetricsRegistry {
    retention_ms: i64,
    bucket_width_ms: i64,
    /// Start, or the last global reset; None until the first sample when built with `new`.
    since: Option<UnixMillis>,
    /// Times of scoped resets still inside the retention window.
    scoped_resets: HashMap<BreakerScope, UnixMillis>,
    accounts: FastMap<AccountId, AccountEntry>,
    groups: FastMap<GroupId, GroupEntry>,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        MetricsRegistry::new(DEFAULT_RETENTION_MS)
    }
}

impl MetricsRegistry {
    /// A registry keeping `retention_ms` of data (at least one millisecond per time bucket).
    /// Without [`MetricsRegistry::with_start`], "since" starts at the first recorded sample.
    pub fn new(retention_ms: i64) -> Self {
        let buckets = TIME_BUCKETS_PER_RETENTION as i64;
        let retention_ms = retention_ms.max(buckets);
        MetricsRegistry {
            retention_ms,
            bucket_width_ms: retention_ms / buckets,
            since: None,
            scoped_resets: HashMap::new(),
            accounts: FastMap::default(),
            groups: FastMap::default(),
        }
    }

    /// Sets the start time reported as `since` until the first global reset.
    pub fn with_start(mut self, now: UnixMillis) -> Self {
        self.since = Some(now);
        self
    }

    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// Accounts currently holding data (for memory checks and tests).
    pub fn tracked_accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Groups currently holding data.
    pub fn tracked_groups(&self) -> usize {
        self.groups.len()
    }

    /// The heap and inline bytes held by the entries and their buckets (map overhead aside).
    pub fn approximate_memory_bytes(&self) -> usize {
        let accounts: usize = self
            .accounts
            .values()
            .map(|entry| {
                std::mem::size_of::<(AccountId, AccountEntry)>()
                    + entry.series.buckets.capacity() * std::mem::size_of::<AccountBucket>()
            })
            .sum();
        let groups: usize = self
            .groups
            .values()
            .map(|entry| {
                std::mem::size_of::<(GroupId, GroupEntry)>()
                    + entry.series.buckets.capacity() * std::mem::size_of::<GroupBucket>()
            })
            .sum();
        accounts + groups
    }

    pub fn record_attempt(&mut self, sample: &AttemptSample) {
        self.since.get_or_insert(sample.at);
        let index = self.bucket_index(sample.at);
        let entry = self
            .accounts
            .entry(sample.account_id)
            .or_insert_with(AccountEntry::new);
        entry.group_id = Some(sample.group_id);
        let latency_ms = sanitize_ms(sample.latency_ms);
        let ttfb_ms = sample.ttfb_ms.map(sanitize_ms);
        let cost_usd = if sample.cost_usd.is_finite() && sample.cost_usd > 0.0 {
            sample.cost_usd
        } else {
            0.0
        };
        let class = class_index(sample.class);

        let lifetime = &mut entry.lifetime;
        lifetime.attempts_by_class[class] = lifetime.attempts_by_class[class].saturating_add(1);
        add_usage(&mut lifetime.usage, &sample.usage);
        lifetime.cost_usd += cost_usd;
        lifetime.latency_sum_ms += latency_ms;
        lifetime.latency_count = lifetime.latency_count.saturating_add(1);

        let Some(bucket) = entry.series.bucket_for(index) else {
            return;
        };
        bucket.attempts_by_class[class] = bucket.attempts_by_class[class].saturating_add(1);
        bucket.latency.record(latency_ms);
        if let Some(ttfb_ms) = ttfb_ms {
            bucket.ttfb_sum_ms += ttfb_ms;
            bucket.ttfb_count = bucket.ttfb_count.saturating_add(1);
        }
        add_usage(&mut bucket.usage, &sample.usage);
        bucket.cost_usd += cost_usd;
    }

    pub fn record_request(&mut self, sample: &RequestSample) {
        self.since.get_or_insert(sample.at);
        let index = self.bucket_index(sample.at);
        let entry = self
            .groups
            .entry(sample.group_id)
            .or_insert_with(GroupEntry::new);
        let fell_back = sample.attempts > 1;
        let latency_ms = sanitize_ms(sample.latency_ms);

        let lifetime = &mut entry.lifetime;
        lifetime.requests += 1;
        lifetime.successes += u64::from(sample.succeeded);
        lifetime.fallbacks += u64::from(fell_back);
        lifetime.fallback_successes += u64::from(fell_back && sample.succeeded);
        lifetime.latency_sum_ms += latency_ms;

        let Some(bucket) = entry.series.bucket_for(index) else {
            return;
        };
        bucket.requests = bucket.requests.saturating_add(1);
        bucket.successes = bucket.successes.saturating_add(u32::from(sample.succeeded));
        bucket.without_attempt = bucket
            .without_attempt
            .saturating_add(u32::from(sample.attempts == 0));
        bucket.fallbacks = bucket.fallbacks.saturating_add(u32::from(fell_back));
        bucket.fallback_successes = bucket
            .fallback_successes
            .saturating_add(u32::from(fell_back && sample.succeeded));
        bucket.latency.record(latency_ms);
    }

    pub fn record_breaker_transition(
        &mut self,
        scope: BreakerScope,
        to: BreakerPhase,
        at: UnixMillis,
    ) {
        self.since.get_or_insert(at);
        let index = self.bucket_index(at);
        match scope {
            BreakerScope::Account(account_id) => {
                let entry = self
                    .accounts
                    .entry(account_id)
                    .or_insert_with(AccountEntry::new);
                if let Some(bucket) = entry.series.bucket_for(index) {
                    bucket.breaker_transitions = bucket.breaker_transitions.saturating_add(1);
                }
            }
            BreakerScope::Group(group_id) => {
                let entry = self.groups.entry(group_id).or_insert_with(GroupEntry::new);
                if let Some(bucket) = entry.series.bucket_for(index) {
                    bucket.breaker_transitions = bucket.breaker_transitions.saturating_add(1);
                    entry.last_breaker_phase = Some((to, index));
                }
            }
        }
    }

    /// Drops the time buckets that left the retention window, and every account and group
    /// left without data, returning their memory.
    pub fn prune(&mut self, now: UnixMillis) {
        let oldest_kept = self.oldest_kept_index(now);
        self.accounts.retain(|_, entry| {
            entry.series.drop_older_than(oldest_kept);
            !entry.series.buckets.is_empty()
        });
        self.groups.retain(|_, entry| {
            entry.series.drop_older_than(oldest_kept);
            if entry
                .last_breaker_phase
                .is_some_and(|(_, index)| index < oldest_kept)
            {
                entry.last_breaker_phase = None;
            }
            !entry.series.buckets.is_empty()
        });
        let window_start = oldest_kept.saturating_mul(self.bucket_width_ms);
        self.scoped_resets.retain(|_, at| *at > window_start);
        self.accounts.shrink_to_fit();
        self.groups.shrink_to_fit();
        self.scoped_resets.shrink_to_fit();
    }

    /// Zeroes the figures of the filter's scope: everything when it is empty; a group and its
    /// accounts for `group_id`; one account for `account_id` (only if it belongs to
    /// `group_id` when both are given).
    pub fn reset(&mut self, filter: &MetricsFilter, now: UnixMillis) -> ResetOutcome {
        if filter.is_empty() {
            let outcome = ResetOutcome {
                groups_reset: self.groups.len(),
                accounts_reset: self.accounts.len(),
            };
            self.accounts = FastMap::default();
            self.groups = FastMap::default();
            self.scoped_resets = HashMap::new();
            self.since = Some(now);
            return outcome;
        }
        let mut outcome = ResetOutcome::default();
        let in_group = |entry: &AccountEntry| {
            filter
                .group_id
                .is_none_or(|group_id| entry.group_id == Some(group_id))
        };
        let doomed: Vec<AccountId> = match filter.account_id {
            Some(account_id) => self
                .accounts
                .get(&account_id)
                .filter(|entry| in_group(entry))
                .map(|_| vec![account_id])
                .unwrap_or_default(),
            None => self
                .accounts
                .iter()
                .filter(|(_, entry)| in_group(entry))
                .map(|(id, _)| *id)
                .collect(),
        };
        for account_id in doomed {
            self.accounts.remove(&account_id);
            self.scoped_resets
                .insert(BreakerScope::Account(account_id), now);
            outcome.accounts_reset += 1;
        }
        if let (Some(group_id), None) = (filter.group_id, filter.account_id) {
            if self.groups.remove(&group_id).is_some() {
                outcome.groups_reset += 1;
            }
            self.scoped_resets
                .insert(BreakerScope::Group(group_id), now);
        }
        outcome
    }

    /// The figures of the filter's scope at `now`. A group or account named by the filter is
    /// listed (with zeros) even without data; without `group_id`, an `account_id` filter lists
    /// no groups.
    pub fn snapshot(&self, filter: &MetricsFilter, now: UnixMillis) -> MetricsSnapshot {
        let oldest_kept = self.oldest_kept_index(now);
        let window_start = oldest_kept.saturating_mul(self.bucket_width_ms);
        let since = self.since.unwrap_or(now).max(window_start);
        let scope_since = |scope: BreakerScope| {
            self.scoped_resets
                .get(&scope)
                .map_or(since, |reset_at| since.max(*reset_at))
        };

        let mut groups = Vec::new();
        match (filter.group_id, filter.account_id) {
            (Some(group_id), _) => groups.push(self.group_stats(
                group_id,
                self.groups.get(&group_id),
                oldest_kept,
                scope_since(BreakerScope::Group(group_id)),
            )),
            (None, Some(_)) => {}
            (None, None) => {
                for (group_id, entry) in &self.groups {
                    groups.push(self.group_stats(
                        *group_id,
                        Some(entry),
                        oldest_kept,
                        scope_since(BreakerScope::Group(*group_id)),
                    ));
                }
            }
        }
        groups.sort_by_key(|stats| stats.group_id);

        let mut accounts = Vec::new();
        match filter.account_id {
            Some(account_id) => {
                let entry = self.accounts.get(&account_id);
                let belongs = filter.group_id.is_none_or(|group_id| {
                    entry.is_none_or(|entry| entry.group_id == Some(group_id))
                });
                if belongs {
                    let mut stats = self.account_stats(
                        account_id,
                        entry,
                        oldest_kept,
                        scope_since(BreakerScope::Account(account_id)),
                    );
                    if stats.group_id.is_none() {
                        stats.group_id = filter.group_id;
                    }
                    accounts.push(stats);
                }
            }
            None => {
                for (account_id, entry) in &self.accounts {
                    if filter
                        .group_id
                        .is_none_or(|group_id| entry.group_id == Some(group_id))
                    {
                        accounts.push(self.account_stats(
                            *account_id,
                            Some(entry),
                            oldest_kept,
                            scope_since(BreakerScope::Account(*account_id)),
                        ));
                    }
                }
            }
        }
        accounts.sort_by_key(|stats| stats.account_id);

        MetricsSnapshot {
            since,
            retention_ms: self.retention_ms,
            groups,
            accounts,
        }
    }

    fn bucket_index(&self, at: UnixMillis) -> i64 {
        at.div_euclid(self.bucket_width_ms)
    }

    /// The oldest time bucket inside the retention window ending at `now`.
    fn oldest_kept_index(&self, now: UnixMillis) -> i64 {
        self.bucket_index(now) - (TIME_BUCKETS_PER_RETENTION as i64 - 1)
    }

    fn group_stats(
        &self,
        group_id: GroupId,
        entry: Option<&GroupEntry>,
        oldest_kept: i64,
        since: UnixMillis,
    ) -> GroupStats {
        let mut totals = GroupBucket::new(0);
        let mut latency = LatencySummary::new();
        if let Some(entry) = entry {
            for bucket in entry.series.in_window(oldest_kept) {
                totals.requests = totals.requests.saturating_add(bucket.requests);
                totals.successes = totals.successes.saturating_add(bucket.successes);
                totals.without_attempt = totals
                    .without_attempt
                    .saturating_add(bucket.without_attempt);
                totals.fallbacks = totals.fallbacks.saturating_add(bucket.fallbacks);
                totals.fallback_successes = totals
                    .fallback_successes
                    .saturating_add(bucket.fallback_successes);
                totals.breaker_transitions = totals
                    .breaker_transitions
                    .saturating_add(bucket.breaker_transitions);
                latency.add(&bucket.latency);
            }
        }
        let requests = u64::from(totals.requests);
        let successes = u64::from(totals.successes);
        let fallbacks = u64::from(totals.fallbacks);
        let fallback_successes = u64::from(totals.fallback_successes);
        let breaker_state = entry
            .and_then(|entry| entry.last_breaker_phase)
            .filter(|(_, index)| *index >= oldest_kept)
            .map(|(phase, _)| phase.as_str().to_owned());
        GroupStats {
            group_id,
            since,
            requests,
            successes,
            failures: requests.saturating_sub(successes),
            requests_without_attempt: u64::from(totals.without_attempt),
            fallbacks,
            fallback_successes,
            fallback_success_rate: ratio(fallback_successes, fallbacks),
            success_rate: ratio(successes, requests),
            avg_latency_ms: latency.mean(),
            p50_latency_ms: latency.quantile(0.50),
            p95_latency_ms: latency.quantile(0.95),
            p99_latency_ms: latency.quantile(0.99),
            breaker_transitions: u64::from(totals.breaker_transitions),
            breaker_state,
            lifetime: entry.map(|entry| entry.lifetime).unwrap_or_default(),
        }
    }

    fn account_stats(
        &self,
        account_id: AccountId,
        entry: Option<&AccountEntry>,
        oldest_kept: i64,
        since: UnixMillis,
    ) -> AccountStats {
        let mut by_class = [0u64; CLASS_COUNT];
        let mut latency = LatencySummary::new();
        let mut ttfb_sum_ms = 0.0;
        let mut ttfb_count = 0u64;
        let mut usage = Usage::default();
        let mut cost_usd = 0.0;
        let mut breaker_transitions = 0u64;
        if let Some(entry) = entry {
            for bucket in entry.series.in_window(oldest_kept) {
                for (total, count) in by_class.iter_mut().zip(bucket.attempts_by_class) {
                    *total += u64::from(count);
                }
                latency.add(&bucket.latency);
                ttfb_sum_ms += bucket.ttfb_sum_ms;
                ttfb_count += u64::from(bucket.ttfb_count);
                add_usage(&mut usage, &bucket.usage);
                cost_usd += bucket.cost_usd;
                breaker_transitions += u64::from(bucket.breaker_transitions);
            }
        }
        let requests: u64 = by_class.iter().sum();
        let successes = by_class[class_index(OutcomeClass::Success)];
        let failures_by_class = OutcomeClass::ALL
            .into_iter()
            .filter(|class| *class != OutcomeClass::Success)
            .map(|class| (class.as_str().to_owned(), by_class[class_index(class)]))
            .collect();
        AccountStats {
            account_id,
            group_id: entry.and_then(|entry| entry.group_id),
            since,
            requests,
            successes,
            failures: requests - successes,
            failures_by_class,
            success_rate: ratio(successes, requests),
            avg_latency_ms: latency.mean(),
            p50_latency_ms: latency.quantile(0.50),
            p95_latency_ms: latency.quantile(0.95),
            p99_latency_ms: latency.quantile(0.99),
            avg_ttfb_ms: (ttfb_count > 0).then(|| ttfb_sum_ms / ttfb_count as f64),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_input_tokens: usage.cache_read_input_tokens,
            cache_creation_input_tokens: usage.cache_creation_input_tokens,
            cost_usd,
            breaker_transitions,
            lifetime: entry.map(|entry| entry.lifetime).unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
struct AccountEntry {
    group_id: Option<GroupId>,
    series: TimeSeries<AccountBucket>,
    lifetime: AccountCounters,
}

impl AccountEntry {
    fn new() -> Self {
        AccountEntry {
            group_id: None,
            series: TimeSeries::default(),
            lifetime: AccountCounters::default(),
        }
    }
}

#[derive(Debug)]
struct GroupEntry {
    series: TimeSeries<GroupBucket>,
    /// The phase of the last breaker transition and the time bucket it happened in.
    last_breaker_phase: Option<(BreakerPhase, i64)>,
    lifetime: GroupCounters,
}

impl GroupEntry {
    fn new() -> Self {
        GroupEntry {
            series: TimeSeries::default(),
            last_breaker_phase: None,
            lifetime: GroupCounters::default(),
        }
    }
}

/// One time bucket of one account.
#[derive(Debug, Clone)]
struct AccountBucket {
    index: i64,
    attempts_by_class: [u32; CLASS_COUNT],
    latency: LatencyHistogram,
    ttfb_sum_ms: f64,
    ttfb_count: u32,
    usage: Usage,
    cost_usd: f64,
    breaker_transitions: u32,
}

/// One time bucket of one group.
#[derive(Debug, Clone)]
struct GroupBucket {
    index: i64,
    requests: u32,
    successes: u32,
    without_attempt: u32,
    fallbacks: u32,
    fallback_successes: u32,
    breaker_transitions: u32,
    latency: LatencyHistogram,
}

trait TimeBucket {
    fn new(index: i64) -> Self;
    fn index(&self) -> i64;
}

impl TimeBucket for AccountBucket {
    fn new(index: i64) -> Self {
        AccountBucket {
            index,
            attempts_by_class: [0; CLASS_COUNT],
            latency: LatencyHistogram::new(),
            ttfb_sum_ms: 0.0,
            ttfb_count: 0,
            usage: Usage::default(),
            cost_usd: 0.0,
            breaker_transitions: 0,
        }
    }

    fn index(&self) -> i64 {
        self.index
    }
}

impl TimeBucket for GroupBucket {
    fn new(index: i64) -> Self {
        GroupBucket {
            index,
            requests: 0,
            successes: 0,
            without_attempt: 0,
            fallbacks: 0,
            fallback_successes: 0,
            breaker_transitions: 0,
            latency: LatencyHistogram::new(),
        }
    }

    fn index(&self) -> i64 {
        self.index
    }
}

/// The buckets of one scope that received data, oldest first, at most
/// [`TIME_BUCKETS_PER_RETENTION`] of them and with no spare capacity kept.
#[derive(Debug)]
struct TimeSeries<B> {
    buckets: VecDeque<B>,
}

impl<B> Default for TimeSeries<B> {
    fn default() -> Self {
        TimeSeries {
            buckets: VecDeque::new(),
        }
    }
}

impl<B: TimeBucket> TimeSeries<B> {
    /// The bucket for `index`, created if needed; None when `index` is older than the
    /// retention window that ends at the newest bucket (the sample is too late to count).
    fn bucket_for(&mut self, index: i64) -> Option<&mut B> {
        let span = TIME_BUCKETS_PER_RETENTION as i64;
        let newest = self.buckets.back().map(TimeBucket::index);
        match newest {
            Some(newest) if index <= newest - span => None,
            Some(newest) if index <= newest => {
                match self.buckets.binary_search_by_key(&index, TimeBucket::index) {
                    Ok(position) => self.buckets.get_mut(position),
                    Err(position) => {
                        self.make_room_for_one();
                        self.buckets.insert(position, B::new(index));
                        self.buckets.get_mut(position)
                    }
                }
            }
            _ => {
                self.drop_older_than(index - (span - 1));
                self.make_room_for_one();
                self.buckets.push_back(B::new(index));
                self.buckets.back_mut()
            }
        }
    }

    /// Grows by exactly one slot when full, so capacity never exceeds the bucket bound.
    fn make_room_for_one(&mut self) {
        if self.buckets.len() == self.buckets.capacity() {
            self.buckets.reserve_exact(1);
        }
    }

    fn drop_older_than(&mut self, oldest_kept: i64) {
        let before = self.buckets.len();
        while self
            .buckets
            .front()
            .is_some_and(|bucket| bucket.index() < oldest_kept)
        {
            self.buckets.pop_front();
        }
        if self.buckets.len() != before {
            self.buckets.shrink_to_fit();
        }
    }

    fn in_window(&self, oldest_kept: i64) -> impl Iterator<Item = &B> {
        self.buckets
            .iter()
            .filter(move |bucket| bucket.index() >= oldest_kept)
    }
}

/// The latencies of one time bucket: log-scale bins plus exact count, sum, min and max.
#[derive(Debug, Clone)]
struct LatencyHistogram {
    bins: [u32; LATENCY_BINS],
    count: u32,
    sum_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

impl LatencyHistogram {
    fn new() -> Self {
        LatencyHistogram {
            bins: [0; LATENCY_BINS],
            count: 0,
            sum_ms: 0.0,
            min_ms: f64::INFINITY,
            max_ms: 0.0,
        }
    }

    fn record(&mut self, latency_ms: f64) {
        let bin = latency_bin(latency_ms);
        self.bins[bin] = self.bins[bin].saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum_ms += latency_ms;
        self.min_ms = self.min_ms.min(latency_ms);
        self.max_ms = self.max_ms.max(latency_ms);
    }
}

/// Several histograms merged, for one snapshot.
#[derive(Debug, Clone)]
struct LatencySummary {
    bins: [u64; LATENCY_BINS],
    count: u64,
    sum_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

impl LatencySummary {
    fn new() -> Self {
        LatencySummary {
            bins: [0; LATENCY_BINS],
            count: 0,
            sum_ms: 0.0,
            min_ms: f64::INFINITY,
            max_ms: 0.0,
        }
    }

    fn add(&mut self, histogram: &LatencyHistogram) {
        if histogram.count == 0 {
            return;
        }
        for (total, count) in self.bins.iter_mut().zip(histogram.bins) {
            *total += u64::from(count);
        }
        self.count += u64::from(histogram.count);
        self.sum_ms += histogram.sum_ms;
        self.min_ms = self.min_ms.min(histogram.min_ms);
        self.max_ms = self.max_ms.max(histogram.max_ms);
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }

    /// The nearest-rank `q` quantile, estimated from its bin (see the module doc).
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        let bin = self
            .bins
            .iter()
            .position(|count| {
                seen += count;
                seen >= rank
            })
            .unwrap_or(LATENCY_BINS - 1);
        let estimate = if bin == LATENCY_BINS - 1 {
            self.max_ms
        } else {
            latency_bin_midpoint(bin)
        };
        Some(estimate.clamp(self.min_ms, self.max_ms))
    }
}

fn latency_bin(latency_ms: f64) -> usize {
    if latency_ms < 1.0 || latency_ms.is_nan() {
        return 0;
    }
    let bin = (latency_ms.ln() / LATENCY_BIN_RATIO.ln()).floor() as usize + 1;
    bin.min(LATENCY_BINS - 1)
}

/// The geometric midpoint of a bin: within √1.2 of every value in it.
fn latency_bin_midpoint(bin: usize) -> f64 {
    if bin == 0 {
        0.5
    } else {
        LATENCY_BIN_RATIO.powf(bin as f64 - 0.5)
    }
}

fn sanitize_ms(ms: f64) -> f64 {
    if ms.is_finite() && ms > 0.0 {
        ms
    } else {
        0.0
    }
}

fn class_index(class: OutcomeClass) -> usize {
    OutcomeClass::ALL
        .iter()
        .position(|candidate| *candidate == class)
        .unwrap_or(0)
}

fn add_usage(total: &mut Usage, usage: &Usage) {
    total.input_tokens = total.input_tokens.saturating_add(usage.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(usage.output_tokens);
    total.cache_read_input_tokens = total
        .cache_read_input_tokens
        .saturating_add(usage.cache_read_input_tokens);
    total.cache_creation_input_tokens = total
        .cache_creation_input_tokens
        .saturating_add(usage.cache_creation_input_tokens);
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn serialize_time<S: Serializer>(at: &UnixMillis, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::duration::format_rfc3339(*at))
}

fn serialize_duration_ms<S: Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    let duration = Duration::from_millis(u64::try_from(*ms).unwrap_or(0));
    serializer.serialize_str(&crate::duration::format_duration(duration))
}

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

/// The failure classes, in the order of their CSV columns.
fn failure_classes() -> impl Iterator<Item = OutcomeClass> {
    OutcomeClass::ALL
        .into_iter()
        .filter(|class| *class != OutcomeClass::Success)
}

/// The snapshot as CSV (RFC 4180: CRLF line ends, fields with a comma, quote or line break
/// quoted, quotes doubled): one header line, then one row per group and one per account,
/// told apart by the `scope` column. Cells that do not apply to a row's scope, and figures
/// that are undefined (a percentile without samples), are empty.
pub fn to_csv(snapshot: &MetricsSnapshot) -> String {
    let mut header: Vec<String> = [
        "scope",
        "group_id",
        "account_id",
        "since",
        "requests",
        "successes",
        "failures",
        "success_rate",
    ]
    .iter()
    .map(|name| (*name).to_owned())
    .collect();
    header.extend(failure_classes().map(|class| format!("failures_{}", class.as_str())));
    header.extend(
        [
            "requests_without_attempt",
            "fallbacks",
            "fallback_successes",
            "fallback_success_rate",
            "avg_latency_ms",
            "p50_latency_ms",
            "p95_latency_ms",
            "p99_latency_ms",
            "avg_ttfb_ms",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "cost_usd",
            "breaker_transitions",
            "breaker_state",
        ]
        .iter()
        .map(|name| (*name).to_owned()),
    );

    let mut out = String::new();
    push_csv_row(&mut out, &header);
    for group in &snapshot.groups {
        let mut row = vec![
            "group".to_owned(),
            group.group_id.to_string(),
            String::new(),
            crate::duration::format_rfc3339(group.since),
            group.requests.to_string(),
            group.successes.to_string(),
            group.failures.to_string(),
            optional_number(group.success_rate),
        ];
        row.extend(failure_classes().map(|_| String::new()));
        row.extend([
            group.requests_without_attempt.to_string(),
            group.fallbacks.to_string(),
            group.fallback_successes.to_string(),
            optional_number(group.fallback_success_rate),
            optional_number(group.avg_latency_ms),
            optional_number(group.p50_latency_ms),
            optional_number(group.p95_latency_ms),
            optional_number(group.p99_latency_ms),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            group.breaker_transitions.to_string(),
            group.breaker_state.clone().unwrap_or_default(),
        ]);
        push_csv_row(&mut out, &row);
    }
    for account in &snapshot.accounts {
        let mut row = vec![
            "account".to_owned(),
            account
                .group_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            account.account_id.to_string(),
            crate::duration::format_rfc3339(account.since),
            account.requests.to_string(),
            account.successes.to_string(),
            account.failures.to_string(),
            optional_number(account.success_rate),
        ];
        row.extend(failure_classes().map(|class| {
            account
                .failures_by_class
                .get(class.as_str())
                .copied()
                .unwrap_or(0)
                .to_string()
        }));
        row.extend([
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            optional_number(account.avg_latency_ms),
            optional_number(account.p50_latency_ms),
            optional_number(account.p95_latency_ms),
            optional_number(account.p99_latency_ms),
            optional_number(account.avg_ttfb_ms),
            account.input_tokens.to_string(),
            account.output_tokens.to_string(),
            account.cache_read_input_tokens.to_string(),
            account.cache_creation_input_tokens.to_string(),
            account.cost_usd.to_string(),
            account.breaker_transitions.to_string(),
            String::new(),
        ]);
        push_csv_row(&mut out, &row);
    }
    out
}

fn optional_number(value: Option<f64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn push_csv_row(out: &mut String, fields: &[String]) {
    for (position, field) in fields.iter().enumerate() {
        if position > 0 {
            out.push(',');
        }
        push_csv_field(out, field);
    }
    out.push_str("\r\n");
}

fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/// The snapshot and the live gauges in the Prometheus text exposition format 0.0.4.
///
/// Counters (`_total`) and the summaries' `_sum`/`_count` are the monotonic totals (see the
/// module doc); summary quantiles are over the retention window. Accounts and groups are
/// labelled by id (`relay_account_info` maps an account id to its name). Every metric family
/// is announced by `# HELP` and `# TYPE` before its samples, even when it has none.
pub fn to_prometheus(snapshot: &MetricsSnapshot, gauges: &[AccountGauge]) -> String {
    let mut exposition = Exposition::default();
    let gauge_group: HashMap<AccountId, GroupId> = gauges
        .iter()
        .map(|gauge| (gauge.account_id, gauge.group_id))
        .collect();
    let account_group = |account: &AccountStats| {
        account
            .group_id
            .or_else(|| gauge_group.get(&account.account_id).copied())
            .map(|id| id.to_string())
            .unwrap_or_default()
    };

    exposition.family(
        "relay_requests_total",
        "counter",
        "Client requests that ended, per group.",
    );
    for group in &snapshot.groups {
        let id = group.group_id.to_string();
        exposition.sample(
            "relay_requests_total",
            &[("group", &id)],
            group.lifetime.requests,
        );
    }
    exposition.family(
        "relay_request_successes_total",
        "counter",
        "Client requests that succeeded, per group.",
    );
    for group in &snapshot.groups {
        let id = group.group_id.to_string();
        exposition.sample(
            "relay_request_successes_total",
            &[("group", &id)],
            group.lifetime.successes,
        );
    }
    exposition.family(
        "relay_fallbacks_total",
        "counter",
        "Client requests that needed more than one attempt, per group.",
    );
    for group in &snapshot.groups {
        let id = group.group_id.to_string();
        exposition.sample(
            "relay_fallbacks_total",
            &[("group", &id)],
            group.lifetime.fallbacks,
        );
    }
    exposition.family(
        "relay_fallback_successes_total",
        "counter",
        "Client requests that needed more than one attempt and succeeded, per group.",
    );
    for group in &snapshot.groups {
        let id = group.group_id.to_string();
        exposition.sample(
            "relay_fallback_successes_total",
            &[("group", &id)],
            group.lifetime.fallback_successes,
        );
    }
    exposition.family(
        "relay_request_latency_ms",
        "summary",
        "Whole-request latency in milliseconds, all attempts included, per group.",
    );
    for group in &snapshot.groups {
        let id = group.group_id.to_string();
        for (quantile, value) in [
            ("0.5", group.p50_latency_ms),
            ("0.95", group.p95_latency_ms),
            ("0.99", group.p99_latency_ms),
        ] {
            if let Some(value) = value {
                exposition.sample(
                    "relay_request_latency_ms",
                    &[("group", &id), ("quantile", quantile)],
                    PromFloat(value),
                );
            }
        }
        exposition.sample(
            "relay_request_latency_ms_sum",
            &[("group", &id)],
            PromFloat(group.lifetime.latency_sum_ms),
        );
        exposition.sample(
            "relay_request_latency_ms_count",
            &[("group", &id)],
            group.lifetime.requests,
        );
    }

    exposition.family(
        "relay_attempts_total",
        "counter",
        "Attempts per account and outcome class.",
    );
    for account in &snapshot.accounts {
        let id = account.account_id.to_string();
        let group = account_group(account);
        for (class, count) in OutcomeClass::ALL
            .iter()
            .zip(account.lifetime.attempts_by_class)
        {
            exposition.sample(
                "relay_attempts_total",
                &[
                    ("group", &group),
                    ("account", &id),
                    ("class", class.as_str()),
                ],
                count,
            );
        }
    }
    exposition.family(
        "relay_latency_ms",
        "summary",
        "Attempt latency in milliseconds, per account.",
    );
    for account in &snapshot.accounts {
        let id = account.account_id.to_string();
        let group = account_group(account);
        for (quantile, value) in [
            ("0.5", account.p50_latency_ms),
            ("0.95", account.p95_latency_ms),
            ("0.99", account.p99_latency_ms),
        ] {
            if let Some(value) = value {
                exposition.sample(
                    "relay_latency_ms",
                    &[("group", &group), ("account", &id), ("quantile", quantile)],
                    PromFloat(value),
                );
            }
        }
        exposition.sample(
            "relay_latency_ms_sum",
            &[("group", &group), ("account", &id)],
            PromFloat(account.lifetime.latency_sum_ms),
        );
        exposition.sample(
            "relay_latency_ms_count",
            &[("group", &group), ("account", &id)],
            account.lifetime.latency_count,
        );
    }
    exposition.family(
        "relay_tokens_total",
        "counter",
        "Tokens per account and kind, as reported by the upstream.",
    );
    for account in &snapshot.accounts {
        let id = account.account_id.to_string();
        let usage = &account.lifetime.usage;
        for (kind, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read_input", usage.cache_read_input_tokens),
            ("cache_creation_input", usage.cache_creation_input_tokens),
        ] {
            exposition.sample(
                "relay_tokens_total",
                &[("account", &id), ("kind", kind)],
                count,
            );
        }
    }
    exposition.family(
        "relay_cost_usd_total",
        "counter",
        "Cost in US dollars per account.",
    );
    for account in &snapshot.accounts {
        let id = account.account_id.to_string();
        exposition.sample(
            "relay_cost_usd_total",
            &[("account", &id)],
            PromFloat(account.lifetime.cost_usd),
        );
    }

    exposition.family(
        "relay_account_info",
        "gauge",
        "Always 1: maps an account id to its name and group.",
    );
    for gauge in gauges {
        let id = gauge.account_id.to_string();
        let group = gauge.group_id.to_string();
        exposition.sample(
            "relay_account_info",
            &[
                ("account", &id),
                ("group", &group),
                ("name", &gauge.account_name),
            ],
            1u8,
        );
    }
    exposition.family(
        "relay_account_health",
        "gauge",
        "1 for the account's current health status, 0 for the others.",
    );
    for gauge in gauges {
        let id = gauge.account_id.to_string();
        let group = gauge.group_id.to_string();
        let mut statuses = vec!["healthy", "degraded", "unhealthy"];
        if !statuses.contains(&gauge.health) {
            statuses.push(gauge.health);
        }
        for status in statuses {
            exposition.sample(
                "relay_account_health",
                &[("account", &id), ("group", &group), ("status", status)],
                u8::from(status == gauge.health),
            );
        }
    }
    exposition.family(
        "relay_breaker_open",
        "gauge",
        "1 while the account's breaker is open (rejecting requests), else 0.",
    );
    for gauge in gauges {
        let id = gauge.account_id.to_string();
        exposition.sample(
            "relay_breaker_open",
            &[("account", &id)],
            u8::from(gauge.breaker == BreakerPhase::Open.as_str()),
        );
    }
    exposition.family(
        "relay_in_flight",
        "gauge",
        "Requests running on the account now.",
    );
    for gauge in gauges {
        let id = gauge.account_id.to_string();
        exposition.sample("relay_in_flight", &[("account", &id)], gauge.in_flight);
    }
    exposition.out
}

/// A float written the way Prometheus reads it.
struct PromFloat(f64);

impl std::fmt::Display for PromFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_nan() {
            f.write_str("NaN")
        } else if self.0 == f64::INFINITY {
            f.write_str("+Inf")
        } else if self.0 == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (position, (label, value)) in labels.iter().enumerate() {
                if position > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                push_escaped_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Escapes a label value as the text format requires: backslash, double quote and line feed.
fn push_escaped_label_value(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 60 * 60 * 1000;
    /// An arbitrary hour-aligned start, so bucket boundaries are easy to reason about.
    const T0: UnixMillis = 1_700_000_000_000 / HOUR * HOUR;

    fn attempt(account_id: AccountId, class: OutcomeClass, latency_ms: f64) -> AttemptSample {
        AttemptSample {
            group_id: 1,
            account_id,
            class,
            status: None,
            latency_ms,
            ttfb_ms: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            at: T0,
        }
    }

    fn request(group_id: GroupId, attempts: u32, succeeded: bool) -> RequestSample {
        RequestSample {
            group_id,
            attempts,
            succeeded,
            latency_ms: 100.0,
            at: T0,
        }
    }

    fn all() -> MetricsFilter {
        MetricsFilter::default()
    }

    fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn assert_close(estimate: Option<f64>, truth: f64) {
        let estimate = estimate.unwrap_or(f64::NAN);
        let tolerance = if truth < 1.0 {
            0.5
        } else {
            truth * PERCENTILE_RELATIVE_ERROR_BOUND
        };
        assert!(
            (estimate - truth).abs() <= tolerance + 1e-9,
            "estimate {estimate} too far from {truth}"
        );
    }

    #[test]
    fn attempts_are_counted_by_class() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        for class in [
            OutcomeClass::Success,
            OutcomeClass::Success,
            OutcomeClass::RateLimited,
            OutcomeClass::ServerError,
            OutcomeClass::RateLimited,
            OutcomeClass::ClientError,
        ] {
            metrics.record_attempt(&attempt(7, class, 50.0));
        }
        metrics.record_attempt(&attempt(8, OutcomeClass::Network, 50.0));
        let snapshot = metrics.snapshot(&all(), T0);
        assert_eq!(snapshot.accounts.len(), 2);
        let seven = &snapshot.accounts[0];
        assert_eq!(seven.account_id, 7);
        assert_eq!(seven.group_id, Some(1));
        assert_eq!((seven.requests, seven.successes, seven.failures), (6, 2, 4));
        assert_eq!(seven.failures_by_class["rate_limited"], 2);
        assert_eq!(seven.failures_by_class["server_error"], 1);
        assert_eq!(seven.failures_by_class["client_error"], 1);
        assert_eq!(seven.failures_by_class["network"], 0);
        assert_eq!(
            seven.failures_by_class.len(),
            8,
            "every failure class listed"
        );
        assert!(!seven.failures_by_class.contains_key("success"));
        assert_eq!(seven.success_rate, Some(2.0 / 6.0));
        assert_eq!(snapshot.accounts[1].failures_by_class["network"], 1);
        assert_eq!(snapshot.accounts[1].lifetime.attempts_by_class[7], 1);
    }

    #[test]
    fn tokens_cost_and_ttfb_add_up() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        for (ttfb, input) in [(Some(100.0), 10), (Some(300.0), 20), (None, 30)] {
            metrics.record_attempt(&AttemptSample {
                ttfb_ms: ttfb,
                usage: Usage {
                    input_tokens: input,
                    output_tokens: 5,
                    cache_read_input_tokens: 2,
                    cache_creation_input_tokens: 1,
                },
                cost_usd: 0.25,
                ..attempt(3, OutcomeClass::Success, 400.0)
            });
        }
        let account = &metrics.snapshot(&all(), T0).accounts[0];
        assert_eq!(account.input_tokens, 60);
        assert_eq!(account.output_tokens, 15);
        assert_eq!(account.cache_read_input_tokens, 6);
        assert_eq!(account.cache_creation_input_tokens, 3);
        assert_eq!(account.cost_usd, 0.75);
        assert_eq!(account.avg_ttfb_ms, Some(200.0));
        assert_eq!(account.avg_latency_ms, Some(400.0));
    }

    #[test]
    fn fallback_success_rate_counts_only_requests_that_fell_back() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        metrics.record_request(&request(1, 1, true));
        metrics.record_request(&request(1, 1, false));
        metrics.record_request(&request(1, 2, true));
        metrics.record_request(&request(1, 3, true));
        metrics.record_request(&request(1, 4, true));
        metrics.record_request(&request(1, 2, false));
        metrics.record_request(&request(1, 0, false));
        metrics.record_request(&request(2, 1, true));
        let snapshot = metrics.snapshot(&all(), T0);
        let group = &snapshot.groups[0];
        assert_eq!(group.group_id, 1);
        assert_eq!((group.requests, group.successes, group.failures), (7, 4, 3));
        assert_eq!((group.fallbacks, group.fallback_successes), (4, 3));
        assert_eq!(group.fallback_success_rate, Some(0.75));
        assert_eq!(group.requests_without_attempt, 1);
        let other = &snapshot.groups[1];
        assert_eq!(other.fallbacks, 0);
        assert_eq!(other.fallback_success_rate, None, "undefined, not 0%");
    }

    #[test]
    fn percentiles_of_a_uniform_distribution_are_within_the_bound() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        for ms in 1..=1000 {
            metrics.record_attempt(&attempt(1, OutcomeClass::Success, f64::from(ms)));
        }
        let account = &metrics.snapshot(&all(), T0).accounts[0];
        assert_close(account.p50_latency_ms, 500.0);
        assert_close(account.p95_latency_ms, 950.0);
        assert_close(account.p99_latency_ms, 990.0);
        assert_eq!(account.avg_latency_ms, Some(500.5));
    }

    #[test]
    fn percentiles_of_a_constant_distribution_are_exact_and_of_a_bimodal_one_close() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        for _ in 0..100 {
            metrics.record_attempt(&attempt(1, OutcomeClass::Success, 250.0));
        }
        for _ in 0..90 {
            metrics.record_attempt(&attempt(2, OutcomeClass::Success, 100.0));
        }
        for _ in 0..10 {
            metrics.record_attempt(&attempt(2, OutcomeClass::Success, 5_000.0));
        }
        let snapshot = metrics.snapshot(&all(), T0);
        let constant = &snapshot.accounts[0];
        assert_eq!(constant.p50_latency_ms, Some(250.0));
        assert_eq!(constant.p99_latency_ms, Some(250.0));
        let bimodal = &snapshot.accounts[1];
        assert_close(bimodal.p50_latency_ms, 100.0);
        assert_close(bimodal.p95_latency_ms, 5_000.0);
        assert_close(bimodal.p99_latency_ms, 5_000.0);
        assert_eq!(bimodal.avg_latency_ms, Some(590.0));
    }

    #[test]
    fn latencies_beyond_the_last_bin_and_below_one_millisecond_are_handled() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 0.2));
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 0.4));
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 2_000_000.0));
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, f64::NAN));
        let account = &metrics.snapshot(&all(), T0).accounts[0];
        assert_eq!(account.p99_latency_ms, Some(2_000_000.0));
        // A NaN counts as 0 ms; the median is then rank 2 of [0, 0.2, 0.4, 2e6].
        assert_close(account.p50_latency_ms, 0.2);
        assert_eq!(account.requests, 4);
    }

    proptest::proptest! {
        #[test]
        fn percentiles_stay_within_the_documented_bound(
            latencies in proptest::collection::vec(0.0f64..700_000.0, 1..400)
        ) {
            let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
            for (position, latency) in latencies.iter().enumerate() {
                // Spread the samples over several time buckets to exercise merging.
                let at = T0 - (position as i64 % 5) * HOUR;
                metrics.record_attempt(&AttemptSample {
                    at,
                    ..attempt(1, OutcomeClass::Success, *latency)
                });
            }
            let mut sorted = latencies.clone();
            sorted.sort_by(f64::total_cmp);
            let account = &metrics.snapshot(&all(), T0).accounts[0];
            for (q, estimate) in [
                (0.5, account.p50_latency_ms),
                (0.95, account.p95_latency_ms),
                (0.99, account.p99_latency_ms),
            ] {
                assert_close(estimate, nearest_rank(&sorted, q));
            }
        }
    }

    #[test]
    fn data_older_than_the_retention_is_pruned_and_its_memory_released() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS).with_start(T0);
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 10.0));
        metrics.record_request(&request(1, 1, true));
        metrics.record_attempt(&AttemptSample {
            at: T0 + 20 * HOUR,
            ..attempt(2, OutcomeClass::Success, 10.0)
        });
        assert_eq!(metrics.tracked_accounts(), 2);
        let used = metrics.approximate_memory_bytes();
        assert!(used > 0);

        // 23 h 59 min later the first hour is still inside the window.
        let almost = T0 + 24 * HOUR - 60_000;
        metrics.prune(almost);
        assert_eq!(metrics.snapshot(&all(), almost).accounts[0].requests, 1);

        // A day later it is gone, and so is its memory; account 2 keeps its data.
        let later = T0 + 24 * HOUR;
        metrics.prune(later);
        let snapshot = metrics.snapshot(&all(), later);
        assert_eq!(snapshot.accounts.len(), 1);
        assert_eq!(snapshot.accounts[0].account_id, 2);
        assert!(snapshot.groups.is_empty());
        assert_eq!(metrics.tracked_accounts(), 1);
        assert_eq!(metrics.tracked_groups(), 0);
        assert!(metrics.approximate_memory_bytes() < used);
        assert_eq!(snapshot.since, T0 + HOUR, "since moves with the window");

        metrics.prune(T0 + 45 * HOUR);
        assert_eq!(metrics.tracked_accounts(), 0);
        assert_eq!(metrics.approximate_memory_bytes(), 0);
    }

    #[test]
    fn a_snapshot_ignores_old_buckets_even_before_prune() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 10.0));
        let snapshot = metrics.snapshot(&all(), T0 + 30 * HOUR);
        assert_eq!(snapshot.accounts[0].requests, 0);
        assert_eq!(snapshot.accounts[0].lifetime.latency_count, 1);
    }

    #[test]
    fn memory_per_account_is_bounded_even_under_constant_traffic() {
        assert_eq!(
            std::mem::size_of::<AccountBucket>(),
            440,
            "the module doc states this size"
        );
        assert_eq!(std::mem::size_of::<GroupBucket>(), 368);
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        for hour in 0..100 {
            for minute in [0, 30] {
                metrics.record_attempt(&AttemptSample {
                    at: T0 + hour * HOUR + minute * 60_000,
                    ..attempt(1, OutcomeClass::Success, 10.0)
                });
            }
        }
        assert!(metrics.approximate_memory_bytes() <= MAX_BYTES_PER_ACCOUNT);
        let account = &metrics.snapshot(&all(), T0 + 99 * HOUR).accounts[0];
        assert_eq!(
            account.requests, 48,
            "two samples in each of the last 24 hours"
        );
        assert_eq!(account.lifetime.latency_count, 200);
    }

    #[test]
    fn a_late_sample_lands_in_its_own_bucket_or_is_dropped_when_too_old() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        metrics.record_attempt(&AttemptSample {
            at: T0 + 10 * HOUR,
            ..attempt(1, OutcomeClass::Success, 10.0)
        });
        metrics.record_attempt(&AttemptSample {
            at: T0 + 2 * HOUR,
            ..attempt(1, OutcomeClass::Success, 10.0)
        });
        metrics.record_attempt(&AttemptSample {
            at: T0 - 20 * HOUR,
            ..attempt(1, OutcomeClass::Success, 10.0)
        });
        let snapshot = metrics.snapshot(&all(), T0 + 10 * HOUR);
        assert_eq!(snapshot.accounts[0].requests, 2);
        metrics.prune(T0 + 27 * HOUR);
        assert_eq!(
            metrics.snapshot(&all(), T0 + 27 * HOUR).accounts[0].requests,
            1
        );
    }

    #[test]
    fn a_global_reset_zeroes_everything_and_moves_since() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS).with_start(T0);
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 10.0));
        metrics.record_request(&request(1, 1, true));
        let outcome = metrics.reset(&all(), T0 + 1_000);
        assert_eq!(
            outcome,
            ResetOutcome {
                groups_reset: 1,
                accounts_reset: 1
            }
        );
        let snapshot = metrics.snapshot(&all(), T0 + 2_000);
        assert!(snapshot.groups.is_empty() && snapshot.accounts.is_empty());
        assert_eq!(snapshot.since, T0 + 1_000);
        assert_eq!(metrics.approximate_memory_bytes(), 0);
    }

    #[test]
    fn a_scoped_reset_zeroes_only_its_scope() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS).with_start(T0);
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 10.0));
        metrics.record_attempt(&attempt(2, OutcomeClass::Success, 10.0));
        metrics.record_attempt(&AttemptSample {
            group_id: 2,
            ..attempt(3, OutcomeClass::Success, 10.0)
        });
        metrics.record_request(&request(1, 1, true));
        metrics.record_request(&request(2, 1, true));

        // One account.
        let outcome = metrics.reset(
            &MetricsFilter {
                group_id: None,
                account_id: Some(1),
            },
            T0 + 5,
        );
        assert_eq!(outcome.accounts_reset, 1);
        let snapshot = metrics.snapshot(&all(), T0 + 10);
        let ids: Vec<_> = snapshot.accounts.iter().map(|a| a.account_id).collect();
        assert_eq!(ids, vec![2, 3]);
        assert_eq!(snapshot.groups.len(), 2);
        let one = metrics.snapshot(
            &MetricsFilter {
                group_id: None,
                account_id: Some(1),
            },
            T0 + 10,
        );
        assert_eq!(one.accounts[0].requests, 0);
        assert_eq!(one.accounts[0].since, T0 + 5);

        // An account of another group is left alone when both are named.
        let outcome = metrics.reset(
            &MetricsFilter {
                group_id: Some(1),
                account_id: Some(3),
            },
            T0 + 6,
        );
        assert_eq!(outcome, ResetOutcome::default());

        // A whole group: the group and its accounts, not the other group.
        let outcome = metrics.reset(
            &MetricsFilter {
                group_id: Some(1),
                account_id: None,
            },
            T0 + 7,
        );
        assert_eq!(
            outcome,
            ResetOutcome {
                groups_reset: 1,
                accounts_reset: 1
            }
        );
        let snapshot = metrics.snapshot(&all(), T0 + 10);
        let ids: Vec<_> = snapshot.accounts.iter().map(|a| a.account_id).collect();
        assert_eq!(ids, vec![3]);
        assert_eq!(snapshot.groups.len(), 1);
        assert_eq!(snapshot.groups[0].group_id, 2);
        assert_eq!(snapshot.groups[0].requests, 1);
        assert_eq!(
            snapshot.since, T0,
            "a scoped reset leaves the global since alone"
        );
    }

    #[test]
    fn a_filter_selects_a_group_and_its_accounts() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 10.0));
        metrics.record_attempt(&AttemptSample {
            group_id: 2,
            ..attempt(2, OutcomeClass::Success, 10.0)
        });
        metrics.record_request(&request(1, 1, true));
        let filter = MetricsFilter {
            group_id: Some(2),
            account_id: None,
        };
        let snapshot = metrics.snapshot(&filter, T0);
        assert_eq!(snapshot.groups.len(), 1);
        assert_eq!(snapshot.groups[0].group_id, 2);
        assert_eq!(snapshot.groups[0].requests, 0, "listed with zeros");
        assert_eq!(snapshot.accounts.len(), 1);
        assert_eq!(snapshot.accounts[0].account_id, 2);
    }

    #[test]
    fn breaker_transitions_are_counted_and_the_group_state_reported() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        metrics.record_breaker_transition(BreakerScope::Group(4), BreakerPhase::Open, T0);
        metrics.record_breaker_transition(BreakerScope::Group(4), BreakerPhase::HalfOpen, T0 + 1);
        metrics.record_breaker_transition(BreakerScope::Account(9), BreakerPhase::Open, T0);
        let snapshot = metrics.snapshot(&all(), T0 + 2);
        assert_eq!(snapshot.groups[0].breaker_transitions, 2);
        assert_eq!(
            snapshot.groups[0].breaker_state.as_deref(),
            Some("half_open")
        );
        assert_eq!(snapshot.accounts[0].breaker_transitions, 1);
        assert_eq!(snapshot.accounts[0].group_id, None);
    }

    #[test]
    fn the_snapshot_serialises_times_and_durations_as_strings() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS).with_start(0);
        metrics.record_attempt(&AttemptSample {
            at: 1_000,
            ..attempt(1, OutcomeClass::Success, 10.0)
        });
        let json = serde_json::to_value(metrics.snapshot(&all(), 2_000)).unwrap_or_default();
        assert_eq!(json["since"], "1970-01-01T00:00:00Z");
        assert_eq!(json["retention"], "24h");
        assert_eq!(json["accounts"][0]["requests"], 1);
        assert!(json["accounts"][0].get("lifetime").is_none());
        assert!(json["groups"].as_array().is_some_and(Vec::is_empty));
    }

    fn sample_snapshot() -> MetricsSnapshot {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS).with_start(T0);
        metrics.record_attempt(&AttemptSample {
            usage: Usage {
                input_tokens: 12,
                output_tokens: 34,
                cache_read_input_tokens: 5,
                cache_creation_input_tokens: 6,
            },
            cost_usd: 0.5,
            ..attempt(1, OutcomeClass::Success, 120.0)
        });
        metrics.record_attempt(&attempt(1, OutcomeClass::RateLimited, 30.0));
        metrics.record_request(&request(1, 2, true));
        metrics.snapshot(&all(), T0)
    }

    #[test]
    fn csv_has_a_header_a_row_per_scope_and_quotes_per_rfc_4180() {
        let mut snapshot = sample_snapshot();
        snapshot.groups[0].breaker_state = Some("open, \"really\"\nyes".to_owned());
        let csv = to_csv(&snapshot);
        assert!(csv.ends_with("\r\n"));
        let header = csv.split("\r\n").next().unwrap_or_default();
        let columns: Vec<&str> = header.split(',').collect();
        assert_eq!(columns[0], "scope");
        assert!(columns.contains(&"failures_rate_limited"));
        assert!(columns.contains(&"p99_latency_ms"));
        assert!(csv.contains("\"open, \"\"really\"\"\nyes\"\r\n"));
        let account_row = csv
            .split("\r\n")
            .find(|line| line.starts_with("account,"))
            .unwrap_or_default();
        let cells: Vec<&str> = account_row.split(',').collect();
        assert_eq!(cells.len(), columns.len(), "every row has every column");
        let cell = |name: &str| {
            let position = columns
                .iter()
                .position(|c| *c == name)
                .unwrap_or(usize::MAX);
            cells.get(position).copied().unwrap_or("?")
        };
        assert_eq!(cell("account_id"), "1");
        assert_eq!(cell("requests"), "2");
        assert_eq!(cell("failures_rate_limited"), "1");
        assert_eq!(cell("input_tokens"), "12");
        assert_eq!(
            cell("fallbacks"),
            "",
            "a group figure is empty on an account row"
        );
        assert_eq!(cell("since"), crate::duration::format_rfc3339(T0));
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = String::new();
        push_csv_row(
            &mut out,
            &[
                "plain".to_owned(),
                "a,b".to_owned(),
                "say \"hi\"".to_owned(),
                "x\ry".to_owned(),
            ],
        );
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\",\"x\ry\"\r\n");
    }

    /// Checks the text format line by line: comments are HELP/TYPE, every sample's family was
    /// announced by a TYPE line before it, label sets parse, values are numbers.
    fn check_exposition(text: &str) -> HashMap<String, String> {
        let mut types: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(
                    ["counter", "gauge", "summary"].contains(&kind),
                    "bad type in {line}"
                );
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let family = ["_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| types.get(*base).is_some_and(|k| k == "summary"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "no # TYPE before {line}");
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(
                value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                "bad value in {line}"
            );
            if line[name_end..].starts_with('{') {
                let close = line.rfind('}').unwrap_or(0);
                assert!(close > name_end, "unclosed labels in {line}");
                let labels = &line[name_end + 1..close];
                // Walk label="value" pairs, honouring escapes.
                let mut chars = labels.chars().peekable();
                while chars.peek().is_some() {
                    let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(
                        !label.is_empty()
                            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name in {line}"
                    );
                    assert_eq!(chars.next(), Some('"'), "label value not quoted in {line}");
                    loop {
                        match chars.next() {
                            Some('\\') => {
                                let escaped = chars.next();
                                assert!(
                                    matches!(escaped, Some('\\' | '"' | 'n')),
                                    "bad escape in {line}"
                                );
                            }
                            Some('"') => break,
                            Some(_) => {}
                            None => panic!("unterminated label value in {line}"),
                        }
                    }
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
            }
        }
        types
    }

    fn gauge() -> AccountGauge {
        AccountGauge {
            account_id: 1,
            group_id: 1,
            account_name: "team \"a\"\\main\nline".to_owned(),
            health: "degraded",
            breaker: "open",
            in_flight: 3,
        }
    }

    #[test]
    fn prometheus_output_is_well_formed_and_complete() {
        let text = to_prometheus(&sample_snapshot(), &[gauge()]);
        let types = check_exposition(&text);
        for (name, kind) in [
            ("relay_requests_total", "counter"),
            ("relay_attempts_total", "counter"),
            ("relay_fallbacks_total", "counter"),
            ("relay_latency_ms", "summary"),
            ("relay_tokens_total", "counter"),
            ("relay_cost_usd_total", "counter"),
            ("relay_account_health", "gauge"),
            ("relay_breaker_open", "gauge"),
            ("relay_in_flight", "gauge"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        for expected in [
            "relay_requests_total{group=\"1\"} 1\n",
            "relay_fallbacks_total{group=\"1\"} 1\n",
            "relay_attempts_total{group=\"1\",account=\"1\",class=\"rate_limited\"} 1\n",
            "relay_attempts_total{group=\"1\",account=\"1\",class=\"success\"} 1\n",
            "relay_latency_ms{group=\"1\",account=\"1\",quantile=\"0.99\"} 120\n",
            "relay_latency_ms_count{group=\"1\",account=\"1\"} 2\n",
            "relay_latency_ms_sum{group=\"1\",account=\"1\"} 150\n",
            "relay_tokens_total{account=\"1\",kind=\"output\"} 34\n",
            "relay_cost_usd_total{account=\"1\"} 0.5\n",
            "relay_account_health{account=\"1\",group=\"1\",status=\"degraded\"} 1\n",
            "relay_account_health{account=\"1\",group=\"1\",status=\"healthy\"} 0\n",
            "relay_breaker_open{account=\"1\"} 1\n",
            "relay_in_flight{account=\"1\"} 3\n",
            "relay_account_info{account=\"1\",group=\"1\",name=\"team \\\"a\\\"\\\\main\\nline\"} 1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn prometheus_counters_do_not_fall_when_old_buckets_leave() {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS);
        metrics.record_attempt(&attempt(1, OutcomeClass::Success, 10.0));
        metrics.record_attempt(&AttemptSample {
            at: T0 + 23 * HOUR,
            ..attempt(1, OutcomeClass::Success, 10.0)
        });
        let now = T0 + 25 * HOUR;
        metrics.prune(now);
        let snapshot = metrics.snapshot(&all(), now);
        assert_eq!(snapshot.accounts[0].requests, 1, "windowed");
        let text = to_prometheus(&snapshot, &[]);
        assert!(
            text.contains("relay_attempts_total{group=\"1\",account=\"1\",class=\"success\"} 2\n")
        );
        check_exposition(&text);
    }

    #[test]
    fn an_empty_exposition_still_announces_its_families() {
        let text = to_prometheus(&MetricsRegistry::default().snapshot(&all(), T0), &[]);
        let types = check_exposition(&text);
        assert!(types.contains_key("relay_requests_total"));
        assert!(text.lines().all(|line| line.starts_with('#')));
    }
}

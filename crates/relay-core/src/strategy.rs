//! Account selection: seven strategies behind one trait, over an immutable snapshot.
//!
//! A group's eligible accounts are handed to a strategy as a slice of [`Candidate`]s with their
//! live figures (usage, in-flight requests, learned success rate and latency). The strategy
//! answers with indices into that slice in preference order: the first is tried first, the rest
//! are the fallback order of the attempt loop. Time and randomness come in through
//! [`SelectionContext`], so every strategy is deterministic under a seeded generator.
//!
//! The attempt loop rarely needs more than `max_retries + 1` (at most 11) candidates, so every
//! strategy does only partial work when `limit` is small: one pass computes each candidate's
//! key and keeps the best `limit` in a small sorted buffer (no map, no allocation proportional
//! to the group). Longer rankings collect the keys and use a linear-time selection
//! (`select_nth_unstable`) before sorting the winners; `weighted` draws from a Fenwick tree;
//! `round_robin` indexes a snapshot sorted by account id directly. A full permutation is
//! available with `limit >= candidates.len()`.
//!
//! Snapshots are cheapest when built sorted by account id (round robin then needs no
//! selection at all); any order is correct.
//!
//! Health is taken into account everywhere it does not contradict the strategy's promise:
//! degraded accounts get less traffic than healthy ones (see [`HealthStatus::traffic_factor`]),
//! except in `round_robin`, whose promise is strict rotation (unhealthy accounts are
//! temporarily disabled and so are not in the snapshot at all).
//!
//! A custom strategy is a type implementing [`SelectionStrategy`] plus one line:
//! `registry.register(Arc::new(MyStrategy))`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use rand::Rng;

use crate::model::AccountId;
use crate::UnixMillis;

/// An account's health as the selection strategies and the admin API see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }

    /// How much of a healthy account's traffic an account in this state should get, so that
    /// degraded accounts keep serving (and can prove they recovered) without carrying a full
    /// share while they misbehave.
    pub fn traffic_factor(self) -> f64 {
        match self {
            HealthStatus::Healthy => 1.0,
            HealthStatus::Degraded => 0.25,
            HealthStatus::Unhealthy => 0.05,
        }
    }

    /// The reciprocal of [`HealthStatus::traffic_factor`]: how much more a unit of load or
    /// cost weighs on an account in this state (a multiplication is cheaper than a division in
    /// the selection loop).
    pub fn load_penalty(self) -> f64 {
        match self {
            HealthStatus::Healthy => 1.0,
            HealthStatus::Degraded => 4.0,
            HealthStatus::Unhealthy => 20.0,
        }
    }

    /// The `status` term of the seed's hybrid score.
    pub fn hybrid_score(self) -> f64 {
        match self {
            HealthStatus::Healthy => 1.0,
            HealthStatus::Degraded => 0.5,
            HealthStatus::Unhealthy => 0.0,
        }
    }

    /// Ordering key where smaller is better, for tie-breaking.
    fn badness(self) -> u8 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Unhealthy => 2,
        }
    }
}

/// One eligible account in a group snapshot, with its live figures.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub account_id: AccountId,
    /// Smaller is preferred.
    pub priority: i32,
    /// Larger gets more traffic.
    pub weight: u32,
    pub health: HealthStatus,
    /// Usage in the current usage window.
    pub requests_in_window: u64,
    /// Requests currently running on the account.
    pub in_flight: u32,
    /// Exponentially weighted success rate, 0..1; 1.0 for a new account.
    pub success_ewma: f64,
    /// Exponentially weighted latency of successful requests; 0.0 when unknown.
    pub latency_ewma_ms: f64,
    pub max_concurrency: Option<u32>,
}

impl Candidate {
    /// A fresh, healthy, idle candidate: the figures a new account starts with.
    pub fn new(account_id: AccountId, priority: i32, weight: u32) -> Self {
        Candidate {
            account_id,
            priority,
            weight,
            health: HealthStatus::Healthy,
            requests_in_window: 0,
            in_flight: 0,
            success_ewma: 1.0,
            latency_ewma_ms: 0.0,
            max_concurrency: None,
        }
    }

    /// True when the account already runs as many requests as it is allowed to.
    pub fn is_at_capacity(&self) -> bool {
        self.max_concurrency
            .is_some_and(|max_concurrency| self.in_flight >= max_concurrency)
    }

    /// The success rate clamped to 0..1, with garbage (NaN) read as the worst case so a broken
    /// figure can never make an account look better than it is.
    fn sane_success_rate(&self) -> f64 {
        if self.success_ewma.is_nan() {
            0.0
        } else {
            self.success_ewma.clamp(0.0, 1.0)
        }
    }

    /// The latency, or `None` when it is unknown (no sample yet, or a nonsensical figure).
    fn known_latency_ms(&self) -> Option<f64> {
        (self.latency_ewma_ms.is_finite() && self.latency_ewma_ms > 0.0)
            .then_some(self.latency_ewma_ms)
    }
}

/// What a strategy may use besides the snapshot: time, randomness and the group's cursor.
pub struct SelectionContext<'a> {
    pub now: UnixMillis,
    pub rng: &'a mut dyn rand::RngCore,
    /// A per-group counter the caller increments once per request (round robin's cursor;
    /// shared across instances in cluster mode later).
    pub cursor: u64,
}

impl<'a> SelectionContext<'a> {
    pub fn new(now: UnixMillis, rng: &'a mut dyn rand::RngCore, cursor: u64) -> Self {
        SelectionContext { now, rng, cursor }
    }
}

/// A way of ordering a group's accounts for one request.
pub trait SelectionStrategy: Send + Sync + std::fmt::Debug {
    /// The name operators write in `FALLBACK_STRATEGY` and group overrides.
    fn name(&self) -> &str;

    /// Up to `limit` distinct indices into `candidates`, in preference order (first = try first).
    /// With `limit >= candidates.len()` the result is a full permutation.
    fn rank(
        &self,
        candidates: &[Candidate],
        ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize>;
}

/// The strategies known by name. Built-in ones are registered by [`StrategyRegistry::with_builtin`];
/// a custom one takes a single [`StrategyRegistry::register`] call.
#[derive(Debug, Clone, Default)]
pub struct StrategyRegistry {
    strategies_by_name: BTreeMap<String, Arc<dyn SelectionStrategy>>,
}

impl StrategyRegistry {
    /// A registry with no strategy at all (for tests and fully custom set-ups).
    pub fn empty() -> Self {
        StrategyRegistry::default()
    }

    /// A registry with all seven strategies of the seed registered under their names.
    pub fn with_builtin() -> Self {
        let mut registry = StrategyRegistry::empty();
        registry.register(Arc::new(PriorityFirst));
        registry.register(Arc::new(Weighted));
        registry.register(Arc::new(RoundRobin));
        registry.register(Arc::new(LeastUsed));
        registry.register(Arc::new(Hybrid));
        registry.register(Arc::new(Adaptive));
        registry.register(Arc::new(SmartLoadBalance));
        registry
    }

    /// Registers a strategy under its own name; a later registration with the same name
    /// replaces the earlier one, so a built-in can be overridden deliberately.
    pub fn register(&mut self, strategy: Arc<dyn SelectionStrategy>) {
        self.strategies_by_name
            .insert(strategy.name().to_owned(), strategy);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn SelectionStrategy>> {
        self.strategies_by_name.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.strategies_by_name.contains_key(name)
    }

    /// Registered names in alphabetical order.
    pub fn names(&self) -> Vec<String> {
        self.strategies_by_name.keys().cloned().collect()
    }
}

/// Up to this many picks, the best keys are kept in a small sorted buffer during a single pass
/// (about one comparison per candidate, no allocation proportional to the group); for longer
/// rankings every key is collected and partially selected.
const STREAMING_TOP_K_MAX: usize = 16;

/// The indices of the `limit` smallest keys under `compare` (a total order), best first.
/// `key_count` is how many keys `keys` yields at most.
fn best_indices<T>(
    keys: impl Iterator<Item = T>,
    key_count: usize,
    limit: usize,
    compare: impl Fn(&T, &T) -> Ordering,
    index_of: impl Fn(&T) -> usize,
) -> Vec<usize> {
    let take = limit.min(key_count);
    if take == 0 {
        return Vec::new();
    }
    if take <= STREAMING_TOP_K_MAX {
        let mut best: Vec<T> = Vec::with_capacity(take);
        for key in keys {
            if best.len() == take {
                match best.last() {
                    Some(worst) if compare(&key, worst) == Ordering::Less => {
                        best.pop();
                    }
                    _ => continue,
                }
            }
            let position = best.partition_point(|held| compare(held, &key) == Ordering::Less);
            best.insert(position, key);
        }
        return best.iter().map(index_of).collect();
    }
    let mut keyed: Vec<T> = keys.collect();
    let take = take.min(keyed.len());
    if take == 0 {
        return Vec::new();
    }
    if take < keyed.len() {
        keyed.select_nth_unstable_by(take - 1, &compare);
        keyed.truncate(take);
    }
    keyed.sort_unstable_by(&compare);
    keyed.iter().map(index_of).collect()
}

/// Puts candidate `first` in front of the best `limit - 1` of the others.
fn first_then_best<T>(
    first: usize,
    candidate_count: usize,
    limit: usize,
    key_of: impl Fn(usize) -> T,
    compare: impl Fn(&T, &T) -> Ordering,
    index_of: impl Fn(&T) -> usize,
) -> Vec<usize> {
    if limit == 0 || first >= candidate_count {
        return best_indices(
            (0..candidate_count).map(key_of),
            candidate_count,
            limit,
            compare,
            index_of,
        );
    }
    let mut ranked = Vec::with_capacity(limit.min(candidate_count));
    ranked.push(first);
    ranked.extend(best_indices(
        (0..candidate_count)
            .filter(|index| *index != first)
            .map(key_of),
        candidate_count - 1,
        limit - 1,
        compare,
        index_of,
    ));
    ranked
}

/// `priority_first`: the smallest priority first. Within one priority, healthy accounts come
/// before degraded ones (so degraded accounts only serve when their healthy peers cannot), then
/// the least used in the current window (which spreads a tier's load), then the account id so
/// the order is total and reproducible.
#[derive(Debug, Clone, Copy, Default)]
pub struct PriorityFirst;

impl PriorityFirst {
    pub const NAME: &'static str = "priority_first";
}

impl SelectionStrategy for PriorityFirst {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        _ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let keys = candidates.iter().enumerate().map(|(index, c)| {
            (
                c.priority,
                c.health.badness(),
                c.requests_in_window,
                c.account_id,
                index,
            )
        });
        best_indices(keys, candidates.len(), limit, Ord::cmp, |key| key.4)
    }
}

/// `weighted`: weighted random choice by `weight × health factor` (healthy 1.0, degraded 0.25,
/// unhealthy 0.05); the fallback order is also weighted random, without replacement
/// (successive draws, each among the candidates not drawn yet).
///
/// The weights live in a Fenwick tree (P. M. Fenwick, "A new data structure for cumulative
/// frequency tables", Software: Practice and Experience 24(3), 1994): building it is linear,
/// and each draw — find the candidate whose cumulative-weight interval holds a uniform point,
/// then remove its weight — takes O(log n). A ranking of `limit` over `n` accounts therefore
/// costs O(n + limit · log n), instead of a full pass per draw. Accounts of weight 0 only come
/// after every positive-weight account, in uniform random order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Weighted;

impl Weighted {
    pub const NAME: &'static str = "weighted";

    fn effective_weight(candidate: &Candidate) -> f64 {
        f64::from(candidate.weight) * candidate.health.traffic_factor()
    }
}

impl SelectionStrategy for Weighted {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let take = limit.min(candidates.len());
        if take == 0 {
            return Vec::new();
        }
        let mut weights: Vec<f64> = candidates.iter().map(Self::effective_weight).collect();
        let mut ranked = Vec::with_capacity(take);
        let mut positive_left = weights.iter().filter(|w| **w > 0.0).count();
        if positive_left > 0 {
            let mut tree = CumulativeWeights::new(&weights);
            let mut remaining_total: f64 = weights.iter().sum();
            while ranked.len() < take && positive_left > 0 {
                let point = ctx.rng.gen::<f64>() * remaining_total;
                // Rounding in the running sums can, very rarely, point at a drawn candidate or
                // past the end: then take the first candidate still holding weight.
                let Some(index) = tree
                    .find(point)
                    .filter(|index| weights[*index] > 0.0)
                    .or_else(|| weights.iter().position(|w| *w > 0.0))
                else {
                    break;
                };
                tree.add(index, -weights[index]);
                remaining_total -= weights[index];
                weights[index] = WEIGHT_DRAWN;
                positive_left -= 1;
                ranked.push(index);
            }
        }
        if ranked.len() < take {
            // Only zero-weight candidates are left: a partial Fisher–Yates shuffle of them.
            let mut zero_weight: Vec<usize> = (0..weights.len())
                .filter(|index| weights[*index] == 0.0)
                .collect();
            let wanted = (take - ranked.len()).min(zero_weight.len());
            for slot in 0..wanted {
                let chosen = ctx.rng.gen_range(slot..zero_weight.len());
                zero_weight.swap(slot, chosen);
                ranked.push(zero_weight[slot]);
            }
        }
        ranked
    }
}

/// Marks a candidate already drawn by `weighted` (real weights are never negative).
const WEIGHT_DRAWN: f64 = -1.0;

/// A Fenwick (binary indexed) tree over non-negative weights: prefix sums and point updates in
/// O(log n), and the search for the element whose cumulative interval holds a point.
struct CumulativeWeights {
    /// 1-based: `tree[i]` holds the sum of the `i & -i` weights ending at element `i - 1`.
    tree: Vec<f64>,
}

impl CumulativeWeights {
    fn new(weights: &[f64]) -> Self {
        let count = weights.len();
        let mut tree = Vec::with_capacity(count + 1);
        tree.push(0.0);
        tree.extend(weights.iter().map(|w| w.max(0.0)));
        for node in 1..=count {
            let parent = node + (node & node.wrapping_neg());
            if parent <= count {
                tree[parent] += tree[node];
            }
        }
        CumulativeWeights { tree }
    }

    fn add(&mut self, index: usize, delta: f64) {
        let mut node = index + 1;
        while node < self.tree.len() {
            self.tree[node] += delta;
            node += node & node.wrapping_neg();
        }
    }

    /// The element whose interval `[sum before it, sum through it)` holds `point`; `None` when
    /// `point` is at or past the total.
    fn find(&self, point: f64) -> Option<usize> {
        let count = self.tree.len() - 1;
        let mut position = 0;
        let mut remaining = point;
        let mut step = if count == 0 {
            0
        } else {
            1 << (usize::BITS - 1 - count.leading_zeros())
        };
        while step > 0 {
            let next = position + step;
            if next <= count && self.tree[next] <= remaining {
                position = next;
                remaining -= self.tree[next];
            }
            step >>= 1;
        }
        (position < count).then_some(position)
    }
}

/// `round_robin`: the candidates sorted by account id form a ring; request number `cursor`
/// starts at position `cursor % n` and falls back along the ring. Over any `n` consecutive
/// cursors every account is tried first exactly once. The caller increments the cursor once per
/// request (in cluster mode the counter is shared, so the rotation spans instances).
///
/// A snapshot already sorted by account id (the cheapest to build it as) is used as the ring
/// directly. Otherwise only the needed part of the ring is ordered: the start is found by
/// linear-time selection, and the following `limit - 1` positions by partial selection on
/// either side of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl RoundRobin {
    pub const NAME: &'static str = "round_robin";
}

impl SelectionStrategy for RoundRobin {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let count = candidates.len();
        let take = limit.min(count);
        if take == 0 {
            return Vec::new();
        }
        // `count` fits in u64 on every supported platform, and the remainder is below `count`.
        let start = (ctx.cursor % count as u64) as usize;
        let already_sorted = candidates
            .windows(2)
            .all(|pair| pair[0].account_id < pair[1].account_id);
        if already_sorted {
            return (start..count).chain(0..start).take(take).collect();
        }
        let mut ring: Vec<(AccountId, usize)> = candidates
            .iter()
            .enumerate()
            .map(|(index, c)| (c.account_id, index))
            .collect();
        if take == count {
            ring.sort_unstable();
            ring.rotate_left(start);
            return ring.into_iter().map(|(_, index)| index).collect();
        }
        ring.select_nth_unstable(start);
        let (before_start, from_start) = ring.split_at_mut(start);
        let (start_entry, after_start) = from_start.split_at_mut(1);
        let mut ranked = Vec::with_capacity(take);
        ranked.push(start_entry[0].1);
        let from_after = (take - 1).min(after_start.len());
        ranked.extend(smallest_sorted(after_start, from_after));
        let from_before = take - ranked.len();
        ranked.extend(smallest_sorted(before_start, from_before));
        ranked
    }
}

/// The indices of the `take` smallest entries of `ring`, in ascending order.
fn smallest_sorted(ring: &mut [(AccountId, usize)], take: usize) -> Vec<usize> {
    let take = take.min(ring.len());
    if take == 0 {
        return Vec::new();
    }
    if take < ring.len() {
        ring.select_nth_unstable(take - 1);
    }
    let head = &mut ring[..take];
    head.sort_unstable();
    head.iter().map(|(_, index)| *index).collect()
}

/// `least_used`: the fewest requests in the current usage window first, ties by priority then
/// account id. Usage is divided by the health factor before comparing, so a degraded account
/// looks four times as used as it is and settles at about a quarter of a healthy peer's load;
/// with every account healthy this is exactly "fewest requests". Equal usage (for example all
/// zero) puts healthy accounts before degraded ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastUsed;

impl LeastUsed {
    pub const NAME: &'static str = "least_used";
}

impl SelectionStrategy for LeastUsed {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        _ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let keys = candidates.iter().enumerate().map(|(index, c)| {
            (
                c.requests_in_window as f64 * c.health.load_penalty(),
                c.health.badness(),
                c.priority,
                c.account_id,
                index,
            )
        });
        best_indices(
            keys,
            candidates.len(),
            limit,
            |a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| a.1.cmp(&b.1))
                    .then_with(|| a.2.cmp(&b.2))
                    .then_with(|| a.3.cmp(&b.3))
                    .then_with(|| a.4.cmp(&b.4))
            },
            |key| key.4,
        )
    }
}

/// `hybrid`: the seed's score `0.4·weight + 0.3·usage + 0.3·status`, highest first, with every
/// term normalised to 0..1 (the seed multiplied the raw weight, which drowned the other terms):
/// weight is divided by the group's largest weight; usage is `1 − requests / most requests`, so
/// the least used account scores 1; status is 1 for healthy, 0.5 degraded, 0 unhealthy. Ties go
/// to the smaller priority, then the smaller account id.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hybrid;

impl Hybrid {
    pub const NAME: &'static str = "hybrid";
    pub const WEIGHT_SHARE: f64 = 0.4;
    pub const USAGE_SHARE: f64 = 0.3;
    pub const STATUS_SHARE: f64 = 0.3;

    /// The score of one candidate given the group's largest weight and usage.
    pub fn score(candidate: &Candidate, max_weight: u32, max_requests: u64) -> f64 {
        HybridNormaliser::new(max_weight, max_requests).score(candidate)
    }
}

/// The group-wide figures of the hybrid score, inverted once so that scoring each candidate
/// needs no division.
#[derive(Debug, Clone, Copy)]
struct HybridNormaliser {
    weight_scale: f64,
    usage_scale: f64,
}

impl HybridNormaliser {
    fn new(max_weight: u32, max_requests: u64) -> Self {
        HybridNormaliser {
            weight_scale: if max_weight == 0 {
                0.0
            } else {
                Hybrid::WEIGHT_SHARE / f64::from(max_weight)
            },
            usage_scale: if max_requests == 0 {
                0.0
            } else {
                Hybrid::USAGE_SHARE / max_requests as f64
            },
        }
    }

    fn score(&self, candidate: &Candidate) -> f64 {
        f64::from(candidate.weight) * self.weight_scale
            + (Hybrid::USAGE_SHARE - candidate.requests_in_window as f64 * self.usage_scale)
            + Hybrid::STATUS_SHARE * candidate.health.hybrid_score()
    }
}

impl SelectionStrategy for Hybrid {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        _ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let max_weight = candidates.iter().map(|c| c.weight).max().unwrap_or(0);
        let max_requests = candidates
            .iter()
            .map(|c| c.requests_in_window)
            .max()
            .unwrap_or(0);
        let normaliser = HybridNormaliser::new(max_weight, max_requests);
        let keys = candidates
            .iter()
            .enumerate()
            .map(|(index, c)| (normaliser.score(c), c.priority, c.account_id, index));
        best_indices(
            keys,
            candidates.len(),
            limit,
            |a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| a.1.cmp(&b.1))
                    .then_with(|| a.2.cmp(&b.2))
                    .then_with(|| a.3.cmp(&b.3))
            },
            |key| key.3,
        )
    }
}

/// `adaptive`: learns from what it observed. Each account scores
/// `success_ewma × health factor / (1 + latency_ewma / 10 s)` (an unknown latency counts as
/// zero, so a new account is tried optimistically) and the best score goes first; ties go to
/// the less used, then the smaller priority and id.
///
/// Greedy choice alone would starve an account whose EWMA dropped during an outage even after
/// it recovered, because it would never be tried again. So with probability
/// [`Adaptive::EXPLORATION_PROBABILITY`] (an ε-greedy policy, Sutton & Barto, "Reinforcement
/// Learning", §2.2) a uniformly random candidate is tried first; its successes then raise its
/// score back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Adaptive;

impl Adaptive {
    pub const NAME: &'static str = "adaptive";
    pub const EXPLORATION_PROBABILITY: f64 = 0.05;
    /// The latency at which the score halves: Claude answers take seconds, so 10 s separates a
    /// fast account from a slow one without letting latency dominate the success rate.
    pub const LATENCY_HALVING_MS: f64 = 10_000.0;

    pub fn score(candidate: &Candidate) -> f64 {
        let latency_ms = candidate.known_latency_ms().unwrap_or(0.0);
        candidate.sane_success_rate() * candidate.health.traffic_factor()
            / (1.0 + latency_ms / Self::LATENCY_HALVING_MS)
    }
}

impl SelectionStrategy for Adaptive {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let key_of = |index: usize| {
            let c = &candidates[index];
            (
                Self::score(c),
                c.requests_in_window,
                c.priority,
                c.account_id,
                index,
            )
        };
        let compare = |a: &(f64, u64, i32, AccountId, usize),
                       b: &(f64, u64, i32, AccountId, usize)| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.cmp(&b.1))
                .then_with(|| a.2.cmp(&b.2))
                .then_with(|| a.3.cmp(&b.3))
                .then_with(|| a.4.cmp(&b.4))
        };
        let count = candidates.len();
        let explore = count > 1 && ctx.rng.gen::<f64>() < Self::EXPLORATION_PROBABILITY;
        if explore {
            let explored = ctx.rng.gen_range(0..count);
            first_then_best(explored, count, limit, key_of, compare, |key| key.4)
        } else {
            best_indices((0..count).map(key_of), count, limit, compare, |key| key.4)
        }
    }
}

/// `smart_load_balance`: power of two choices over a peak-EWMA load estimate.
///
/// Each account's cost is `latency_ewma × (in_flight + 1) / health factor`: the expected wait
/// of one more request, the load metric of Finagle's "peak EWMA" balancer (Twitter, 2016;
/// also tower's `load::PeakEwma`). An account with no latency yet borrows the group's mean
/// known latency, so it is neither shunned nor flooded. Accounts already at `max_concurrency`
/// come after every account with room.
///
/// The first candidate is the cheaper of two picked uniformly at random (Mitzenmacher, "The
/// Power of Two Choices in Randomized Load Balancing", 2001; tower's `balance::p2c`): nearly as
/// good as the global minimum, yet it does not send every concurrent request to the same
/// account while the figures are stale. The fallback order is by ascending cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmartLoadBalance;

impl SmartLoadBalance {
    pub const NAME: &'static str = "smart_load_balance";

    /// The cost of one candidate; `latency_when_unknown_ms` stands in for a missing latency.
    pub fn cost(candidate: &Candidate, latency_when_unknown_ms: f64) -> f64 {
        let latency_ms = candidate
            .known_latency_ms()
            .unwrap_or(latency_when_unknown_ms);
        latency_ms * (f64::from(candidate.in_flight) + 1.0) * candidate.health.load_penalty()
    }
}

impl SelectionStrategy for SmartLoadBalance {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let (known_latency_sum, known_latency_count) = candidates
            .iter()
            .filter_map(Candidate::known_latency_ms)
            .fold((0.0, 0u32), |(sum, count), latency| {
                (sum + latency, count + 1)
            });
        let latency_when_unknown_ms = if known_latency_count == 0 {
            1.0
        } else {
            known_latency_sum / f64::from(known_latency_count)
        };
        // (at capacity, cost, account id, index); smaller is better.
        let key_of = |index: usize| {
            let c = &candidates[index];
            (
                c.is_at_capacity(),
                Self::cost(c, latency_when_unknown_ms),
                c.account_id,
                index,
            )
        };
        let compare = |a: &(bool, f64, AccountId, usize), b: &(bool, f64, AccountId, usize)| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.total_cmp(&b.1))
                .then_with(|| a.2.cmp(&b.2))
                .then_with(|| a.3.cmp(&b.3))
        };
        let count = candidates.len();
        if count < 2 || limit == 0 {
            return best_indices((0..count).map(key_of), count, limit, compare, |key| key.3);
        }
        let first_pick = ctx.rng.gen_range(0..count);
        let mut second_pick = ctx.rng.gen_range(0..count - 1);
        if second_pick >= first_pick {
            second_pick += 1;
        }
        let winner = if compare(&key_of(first_pick), &key_of(second_pick)) == Ordering::Greater {
            second_pick
        } else {
            first_pick
        };
        first_then_best(winner, count, limit, key_of, compare, |key| key.3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn rank_with(
        strategy: &dyn SelectionStrategy,
        candidates: &[Candidate],
        seed: u64,
        cursor: u64,
        limit: usize,
    ) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut ctx = SelectionContext::new(0, &mut rng, cursor);
        strategy.rank(candidates, &mut ctx, limit)
    }

    fn ids(candidates: &[Candidate], ranked: &[usize]) -> Vec<AccountId> {
        ranked.iter().map(|i| candidates[*i].account_id).collect()
    }

    fn builtin() -> Vec<Arc<dyn SelectionStrategy>> {
        let registry = StrategyRegistry::with_builtin();
        registry
            .names()
            .iter()
            .filter_map(|name| registry.get(name))
            .collect()
    }

    #[test]
    fn registry_knows_all_seven_builtin_names() {
        let registry = StrategyRegistry::with_builtin();
        let mut expected = vec![
            "adaptive",
            "hybrid",
            "least_used",
            "priority_first",
            "round_robin",
            "smart_load_balance",
            "weighted",
        ];
        expected.sort_unstable();
        assert_eq!(registry.names(), expected);
        for name in expected {
            let strategy = registry.get(name).expect("registered");
            assert_eq!(strategy.name(), name);
            assert!(registry.contains(name));
        }
    }

    #[test]
    fn unknown_strategy_names_are_absent() {
        let registry = StrategyRegistry::with_builtin();
        assert!(registry.get("random").is_none());
        assert!(!registry.contains("Priority_First"));
        assert!(StrategyRegistry::empty().get("priority_first").is_none());
    }

    /// A custom strategy: the largest account id first.
    #[derive(Debug)]
    struct NewestAccountFirst;

    impl SelectionStrategy for NewestAccountFirst {
        fn name(&self) -> &str {
            "newest_first"
        }

        fn rank(
            &self,
            candidates: &[Candidate],
            _ctx: &mut SelectionContext<'_>,
            limit: usize,
        ) -> Vec<usize> {
            let mut order: Vec<usize> = (0..candidates.len()).collect();
            order.sort_by_key(|i| std::cmp::Reverse(candidates[*i].account_id));
            order.truncate(limit);
            order
        }
    }

    #[test]
    fn custom_strategy_registers_in_one_line_and_is_used_through_the_registry() {
        let mut registry = StrategyRegistry::with_builtin();
        registry.register(Arc::new(NewestAccountFirst));
        assert!(registry.contains("newest_first"));
        assert_eq!(registry.names().len(), 8);
        let candidates = vec![
            Candidate::new(3, 1, 1),
            Candidate::new(9, 1, 1),
            Candidate::new(5, 1, 1),
        ];
        let strategy = registry.get("newest_first").expect("registered");
        assert_eq!(
            ids(
                &candidates,
                &rank_with(strategy.as_ref(), &candidates, 1, 0, 3)
            ),
            vec![9, 5, 3]
        );
    }

    #[test]
    fn priority_first_orders_by_priority_then_health_then_usage_then_id() {
        let mut degraded_top = Candidate::new(1, 1, 100);
        degraded_top.health = HealthStatus::Degraded;
        let mut busy_top = Candidate::new(2, 1, 100);
        busy_top.requests_in_window = 50;
        let mut idle_top = Candidate::new(3, 1, 100);
        idle_top.requests_in_window = 10;
        let idle_top_twin = {
            let mut c = Candidate::new(0, 1, 100);
            c.requests_in_window = 10;
            c
        };
        let low = Candidate::new(4, 5, 100);
        let candidates = vec![low, degraded_top, busy_top, idle_top, idle_top_twin];
        let ranked = rank_with(&PriorityFirst, &candidates, 0, 0, 10);
        assert_eq!(ids(&candidates, &ranked), vec![0, 3, 2, 1, 4]);
        let first_two = rank_with(&PriorityFirst, &candidates, 0, 0, 2);
        assert_eq!(ids(&candidates, &first_two), vec![0, 3]);
    }

    #[test]
    fn priority_first_negative_and_large_priorities_order_numerically() {
        let candidates = vec![
            Candidate::new(1, 100, 1),
            Candidate::new(2, -5, 1),
            Candidate::new(3, 7, 1),
        ];
        let ranked = rank_with(&PriorityFirst, &candidates, 0, 0, 3);
        assert_eq!(ids(&candidates, &ranked), vec![2, 3, 1]);
    }

    fn first_pick_shares(
        strategy: &dyn SelectionStrategy,
        candidates: &[Candidate],
        draws: u32,
        limit: usize,
    ) -> Vec<f64> {
        let mut rng = SmallRng::seed_from_u64(42);
        let mut firsts = vec![0u32; candidates.len()];
        for cursor in 0..draws {
            let mut ctx = SelectionContext::new(0, &mut rng, u64::from(cursor));
            let ranked = strategy.rank(candidates, &mut ctx, limit);
            firsts[ranked[0]] += 1;
        }
        firsts
            .iter()
            .map(|count| f64::from(*count) / f64::from(draws))
            .collect()
    }

    #[test]
    fn weighted_first_pick_follows_weights_with_roulette_and_with_keys() {
        let candidates = vec![
            Candidate::new(1, 1, 10),
            Candidate::new(2, 1, 20),
            Candidate::new(3, 1, 30),
            Candidate::new(4, 1, 40),
        ];
        // A short ranking of a small group...
        let shares = first_pick_shares(&Weighted, &candidates, 40_000, 2);
        for (share, expected) in shares.iter().zip([0.1, 0.2, 0.3, 0.4]) {
            assert!((share - expected).abs() < 0.015, "{shares:?}");
        }

        // ...and a long ranking of a larger group.
        let mut large_group: Vec<Candidate> = (0..20).map(|id| Candidate::new(id, 1, 1)).collect();
        large_group[0].weight = 20; // 20 of a total weight of 39
        let shares = first_pick_shares(&Weighted, &large_group, 40_000, 20);
        assert!((shares[0] - 20.0 / 39.0).abs() < 0.015, "{}", shares[0]);
        assert!((shares[7] - 1.0 / 39.0).abs() < 0.01, "{}", shares[7]);
    }

    #[test]
    fn weighted_second_pick_is_weighted_without_replacement() {
        // Weights 1 and 3 and 6 (total 10). P(second = a | first = c) = 1/4; overall
        // P(second = a) = P(first=b)·1/7 + P(first=c)·1/4 = 0.3/7 + 0.6/4 ≈ 0.19286.
        let candidates = vec![
            Candidate::new(1, 1, 1),
            Candidate::new(2, 1, 3),
            Candidate::new(3, 1, 6),
        ];
        for limit in [2usize, 3] {
            let mut rng = SmallRng::seed_from_u64(7);
            let mut second_is_a = 0u32;
            let draws = 60_000u32;
            for _ in 0..draws {
                let mut ctx = SelectionContext::new(0, &mut rng, 0);
                let ranked = Weighted.rank(&candidates, &mut ctx, limit);
                if ranked[1] == 0 {
                    second_is_a += 1;
                }
            }
            let share = f64::from(second_is_a) / f64::from(draws);
            assert!((share - 0.192_86).abs() < 0.01, "limit {limit}: {share}");
        }
        // The same holds in a long ranking where zero-weight accounts follow.
        let mut long: Vec<Candidate> = vec![
            Candidate::new(1, 1, 1),
            Candidate::new(2, 1, 3),
            Candidate::new(3, 1, 6),
        ];
        long.extend((10..20).map(|id| Candidate::new(id, 1, 0)));
        let mut rng = SmallRng::seed_from_u64(9);
        let mut second_is_a = 0u32;
        for _ in 0..60_000 {
            let mut ctx = SelectionContext::new(0, &mut rng, 0);
            let ranked = Weighted.rank(&long, &mut ctx, long.len());
            assert!(ranked[..3].iter().all(|i| *i < 3), "zero weights come last");
            if ranked[1] == 0 {
                second_is_a += 1;
            }
        }
        let share = f64::from(second_is_a) / 60_000.0;
        assert!((share - 0.192_86).abs() < 0.01, "{share}");
    }

    #[test]
    fn cumulative_weights_find_the_interval_holding_a_point() {
        let mut tree = CumulativeWeights::new(&[1.0, 0.0, 2.0, 3.0]);
        assert_eq!(tree.find(0.0), Some(0));
        assert_eq!(tree.find(0.999), Some(0));
        assert_eq!(tree.find(1.0), Some(2), "zero weights own no interval");
        assert_eq!(tree.find(2.999), Some(2));
        assert_eq!(tree.find(3.0), Some(3));
        assert_eq!(tree.find(5.999), Some(3));
        assert_eq!(tree.find(6.0), None);
        tree.add(2, -2.0);
        assert_eq!(tree.find(1.0), Some(3));
        assert_eq!(tree.find(3.999), Some(3));
        assert_eq!(CumulativeWeights::new(&[]).find(0.0), None);
    }

    #[test]
    fn weighted_degraded_account_gets_a_quarter_of_the_traffic() {
        let mut degraded = Candidate::new(2, 1, 100);
        degraded.health = HealthStatus::Degraded;
        let candidates = vec![Candidate::new(1, 1, 100), degraded];
        let shares = first_pick_shares(&Weighted, &candidates, 40_000, 1);
        // 100 vs 25: the degraded one is first 20% of the time.
        assert!((shares[1] - 0.2).abs() < 0.015, "{shares:?}");
    }

    #[test]
    fn weighted_zero_weights_only_after_positive_ones_and_still_ranked() {
        let candidates = vec![
            Candidate::new(1, 1, 0),
            Candidate::new(2, 1, 5),
            Candidate::new(3, 1, 0),
        ];
        for seed in 0..50 {
            let ranked = rank_with(&Weighted, &candidates, seed, 0, 3);
            assert_eq!(ranked[0], 1);
            let mut rest = ranked[1..].to_vec();
            rest.sort_unstable();
            assert_eq!(rest, vec![0, 2]);
        }
    }

    #[test]
    fn round_robin_rotates_over_account_ids() {
        let candidates = vec![
            Candidate::new(30, 1, 1),
            Candidate::new(10, 1, 1),
            Candidate::new(20, 1, 1),
        ];
        let order = |cursor, limit| {
            ids(
                &candidates,
                &rank_with(&RoundRobin, &candidates, 0, cursor, limit),
            )
        };
        assert_eq!(order(0, 3), vec![10, 20, 30]);
        assert_eq!(order(1, 3), vec![20, 30, 10]);
        assert_eq!(order(2, 3), vec![30, 10, 20]);
        assert_eq!(order(3, 3), vec![10, 20, 30]);
        assert_eq!(order(2, 2), vec![30, 10]);
        assert_eq!(order(4, 1), vec![20]);
        assert_eq!(order(u64::MAX, 3), order(u64::MAX % 3, 3));
    }

    #[test]
    fn round_robin_partial_ranking_matches_full_rotation() {
        let candidates: Vec<Candidate> = [17, 3, 99, 42, 8, 61, 5]
            .iter()
            .map(|id| Candidate::new(*id, 1, 1))
            .collect();
        for cursor in 0..14 {
            let full = rank_with(&RoundRobin, &candidates, 0, cursor, 7);
            for limit in 0..=7 {
                let partial = rank_with(&RoundRobin, &candidates, 0, cursor, limit);
                assert_eq!(partial, full[..limit], "cursor {cursor}, limit {limit}");
            }
        }
    }

    #[test]
    fn round_robin_sorted_snapshot_fast_path_agrees_with_the_general_path() {
        let scrambled: Vec<Candidate> = [17, 3, 99, 42, 8, 61, 5]
            .iter()
            .map(|id| Candidate::new(*id, 1, 1))
            .collect();
        let mut sorted = scrambled.clone();
        sorted.sort_by_key(|c| c.account_id);
        for cursor in 0..14 {
            for limit in 0..=8 {
                let from_scrambled = rank_with(&RoundRobin, &scrambled, 0, cursor, limit);
                let from_sorted = rank_with(&RoundRobin, &sorted, 0, cursor, limit);
                assert_eq!(
                    ids(&scrambled, &from_scrambled),
                    ids(&sorted, &from_sorted),
                    "cursor {cursor}, limit {limit}"
                );
            }
        }
    }

    #[test]
    fn least_used_orders_by_usage_then_priority_then_id() {
        let mut a = Candidate::new(1, 5, 1);
        a.requests_in_window = 3;
        let mut b = Candidate::new(2, 1, 1);
        b.requests_in_window = 3;
        let mut c = Candidate::new(3, 9, 1);
        c.requests_in_window = 1;
        let mut d = Candidate::new(0, 1, 1);
        d.requests_in_window = 3;
        let candidates = vec![a, b, c, d];
        let ranked = rank_with(&LeastUsed, &candidates, 0, 0, 4);
        assert_eq!(ids(&candidates, &ranked), vec![3, 0, 2, 1]);
    }

    #[test]
    fn least_used_counts_a_degraded_account_as_more_used() {
        let mut degraded = Candidate::new(1, 1, 1);
        degraded.health = HealthStatus::Degraded;
        degraded.requests_in_window = 10; // looks like 40
        let mut healthy = Candidate::new(2, 1, 1);
        healthy.requests_in_window = 30;
        let candidates = vec![degraded.clone(), healthy];
        assert_eq!(rank_with(&LeastUsed, &candidates, 0, 0, 2), vec![1, 0]);
        // With no usage at all the healthy one still goes first.
        degraded.requests_in_window = 0;
        let idle = vec![degraded, Candidate::new(2, 1, 1)];
        assert_eq!(rank_with(&LeastUsed, &idle, 0, 0, 2), vec![1, 0]);
    }

    #[test]
    fn hybrid_scores_as_the_seed_with_normalised_terms() {
        let mut heavy = Candidate::new(1, 1, 200);
        heavy.requests_in_window = 100;
        let mut light = Candidate::new(2, 1, 100);
        light.requests_in_window = 0;
        let mut degraded = Candidate::new(3, 1, 200);
        degraded.health = HealthStatus::Degraded;
        degraded.requests_in_window = 40;
        // heavy: 0.4·1 + 0.3·0 + 0.3·1 = 0.70; light: 0.4·0.5 + 0.3·1 + 0.3 = 0.80;
        // degraded: 0.4 + 0.3·0.6 + 0.3·0.5 = 0.73.
        assert!((Hybrid::score(&heavy, 200, 100) - 0.70).abs() < 1e-12);
        assert!((Hybrid::score(&light, 200, 100) - 0.80).abs() < 1e-12);
        assert!((Hybrid::score(&degraded, 200, 100) - 0.73).abs() < 1e-12);
        let candidates = vec![heavy, degraded, light];
        let ranked = rank_with(&Hybrid, &candidates, 0, 0, 3);
        assert_eq!(ids(&candidates, &ranked), vec![2, 3, 1]);
    }

    #[test]
    fn hybrid_breaks_equal_scores_by_priority_then_id() {
        let candidates = vec![
            Candidate::new(5, 2, 100),
            Candidate::new(9, 1, 100),
            Candidate::new(4, 2, 100),
        ];
        let ranked = rank_with(&Hybrid, &candidates, 0, 0, 3);
        assert_eq!(ids(&candidates, &ranked), vec![9, 4, 5]);
    }

    #[test]
    fn hybrid_handles_all_zero_weights_and_usage() {
        let candidates = vec![Candidate::new(2, 1, 0), Candidate::new(1, 1, 0)];
        assert!((Hybrid::score(&candidates[0], 0, 0) - 0.6).abs() < 1e-12);
        assert_eq!(rank_with(&Hybrid, &candidates, 0, 0, 2), vec![1, 0]);
    }

    #[test]
    fn adaptive_prefers_reliable_fast_accounts_and_explores_a_little() {
        let mut flaky = Candidate::new(1, 1, 1);
        flaky.success_ewma = 0.3;
        flaky.latency_ewma_ms = 1_000.0;
        let mut slow = Candidate::new(2, 1, 1);
        slow.success_ewma = 1.0;
        slow.latency_ewma_ms = 30_000.0;
        let mut good = Candidate::new(3, 1, 1);
        good.success_ewma = 0.95;
        good.latency_ewma_ms = 2_000.0;
        let candidates = vec![flaky, slow, good];
        // good 0.79 > flaky 0.27 > slow 0.25.
        let shares = first_pick_shares(&Adaptive, &candidates, 40_000, 3);
        let exploration_share = Adaptive::EXPLORATION_PROBABILITY / 3.0;
        assert!(
            (shares[2] - (1.0 - 2.0 * exploration_share)).abs() < 0.01,
            "{shares:?}"
        );
        assert!((shares[0] - exploration_share).abs() < 0.005, "{shares:?}");
        assert!((shares[1] - exploration_share).abs() < 0.005, "{shares:?}");
        // Without exploration the order is by score.
        let mut rng = SmallRng::seed_from_u64(3);
        let mut full_orders = std::collections::BTreeMap::new();
        for _ in 0..1_000 {
            let mut ctx = SelectionContext::new(0, &mut rng, 0);
            *full_orders
                .entry(Adaptive.rank(&candidates, &mut ctx, 3))
                .or_insert(0u32) += 1;
        }
        let most_common = full_orders
            .iter()
            .max_by_key(|(_, count)| **count)
            .map(|(order, _)| order.clone());
        assert_eq!(most_common, Some(vec![2, 0, 1]));
    }

    #[test]
    fn adaptive_treats_nan_figures_as_worst() {
        let mut broken = Candidate::new(1, 1, 1);
        broken.success_ewma = f64::NAN;
        broken.latency_ewma_ms = f64::NAN;
        assert_eq!(Adaptive::score(&broken), 0.0);
        let fresh = Candidate::new(2, 1, 1);
        assert_eq!(Adaptive::score(&fresh), 1.0);
    }

    #[test]
    fn smart_load_balance_first_is_the_cheaper_of_two_and_the_rest_by_cost() {
        let make = |id, latency, in_flight| {
            let mut c = Candidate::new(id, 1, 1);
            c.latency_ewma_ms = latency;
            c.in_flight = in_flight;
            c
        };
        // costs: 1000·1 = 1000, 500·4 = 2000, 3000·1 = 3000
        let candidates = vec![make(1, 3_000.0, 0), make(2, 1_000.0, 0), make(3, 500.0, 3)];
        assert_eq!(SmartLoadBalance::cost(&candidates[2], 1.0), 2_000.0);
        let shares = first_pick_shares(&SmartLoadBalance, &candidates, 30_000, 3);
        // p2c over 3: the cheapest wins whenever it is one of the two (2 of 3 pairs), the
        // middle one wins the single pair without the cheapest; the most expensive never wins.
        assert!((shares[1] - 2.0 / 3.0).abs() < 0.015, "{shares:?}");
        assert!((shares[2] - 1.0 / 3.0).abs() < 0.015, "{shares:?}");
        assert_eq!(shares[0], 0.0);
        for seed in 0..20 {
            let ranked = rank_with(&SmartLoadBalance, &candidates, seed, 0, 3);
            let rest: Vec<usize> = ranked[1..].to_vec();
            let mut sorted_rest = rest.clone();
            sorted_rest.sort_by(|a, b| {
                SmartLoadBalance::cost(&candidates[*a], 1.0)
                    .total_cmp(&SmartLoadBalance::cost(&candidates[*b], 1.0))
            });
            assert_eq!(rest, sorted_rest);
        }
    }

    #[test]
    fn smart_load_balance_puts_accounts_at_capacity_last_and_fills_unknown_latency() {
        let mut full = Candidate::new(1, 1, 1);
        full.latency_ewma_ms = 10.0;
        full.in_flight = 2;
        full.max_concurrency = Some(2);
        let mut known = Candidate::new(2, 1, 1);
        known.latency_ewma_ms = 4_000.0;
        let unknown = Candidate::new(3, 1, 1);
        let candidates = vec![full, known, unknown];
        for seed in 0..30 {
            let ranked = rank_with(&SmartLoadBalance, &candidates, seed, 0, 3);
            assert_eq!(ranked[2], 0, "at capacity is last (seed {seed})");
        }
        // The unknown account borrows the mean known latency (4010 / 2 = 2005 ms).
        assert_eq!(SmartLoadBalance::cost(&candidates[2], 2_005.0), 2_005.0);
    }

    #[test]
    fn smart_load_balance_degraded_costs_more() {
        let mut degraded = Candidate::new(1, 1, 1);
        degraded.latency_ewma_ms = 1_000.0;
        degraded.health = HealthStatus::Degraded;
        let mut healthy = Candidate::new(2, 1, 1);
        healthy.latency_ewma_ms = 2_000.0;
        assert!(SmartLoadBalance::cost(&degraded, 1.0) > SmartLoadBalance::cost(&healthy, 1.0));
        let candidates = vec![degraded, healthy];
        assert_eq!(
            rank_with(&SmartLoadBalance, &candidates, 5, 0, 2),
            vec![1, 0]
        );
    }

    #[test]
    fn every_strategy_handles_empty_and_zero_limit() {
        for strategy in builtin() {
            assert!(rank_with(strategy.as_ref(), &[], 1, 0, 5).is_empty());
            let one = vec![Candidate::new(1, 1, 1)];
            assert!(rank_with(strategy.as_ref(), &one, 1, 0, 0).is_empty());
            assert_eq!(rank_with(strategy.as_ref(), &one, 1, 7, 3), vec![0]);
        }
    }

    #[test]
    fn degraded_gets_less_first_picks_than_healthy_in_every_health_aware_strategy() {
        let mut degraded = Candidate::new(1, 1, 100);
        degraded.health = HealthStatus::Degraded;
        degraded.latency_ewma_ms = 1_000.0;
        let mut healthy = Candidate::new(2, 1, 100);
        healthy.latency_ewma_ms = 1_000.0;
        let candidates = vec![degraded, healthy];
        for strategy in builtin() {
            if strategy.name() == RoundRobin::NAME {
                continue;
            }
            let shares = first_pick_shares(strategy.as_ref(), &candidates, 4_000, 2);
            assert!(
                shares[0] < shares[1],
                "{}: degraded {} vs healthy {}",
                strategy.name(),
                shares[0],
                shares[1]
            );
        }
    }

    fn arbitrary_candidate() -> impl Strategy<Value = Candidate> {
        (
            -5i32..5,
            0u32..4,
            0u8..3,
            0u64..6,
            0u32..4,
            prop_oneof![Just(f64::NAN), 0.0f64..=1.0],
            prop_oneof![Just(0.0f64), 1.0f64..5_000.0],
            proptest::option::of(0u32..4),
        )
            .prop_map(
                |(priority, weight, health, requests, in_flight, success, latency, max)| {
                    Candidate {
                        account_id: 0,
                        priority,
                        weight,
                        health: match health {
                            0 => HealthStatus::Healthy,
                            1 => HealthStatus::Degraded,
                            _ => HealthStatus::Unhealthy,
                        },
                        requests_in_window: requests,
                        in_flight,
                        success_ewma: success,
                        latency_ewma_ms: latency,
                        max_concurrency: max,
                    }
                },
            )
    }

    fn arbitrary_group() -> impl Strategy<Value = Vec<Candidate>> {
        proptest::collection::vec(arbitrary_candidate(), 0..24).prop_map(|mut group| {
            // Distinct ids in a scrambled order, as a real snapshot might have them.
            for (position, candidate) in group.iter_mut().enumerate() {
                candidate.account_id = ((position as i64) * 7919) % 1009 + 1;
            }
            group
        })
    }

    proptest! {
        #[test]
        fn every_strategy_returns_distinct_in_range_indices(
            group in arbitrary_group(),
            limit in 0usize..30,
            seed in any::<u64>(),
            cursor in any::<u64>(),
        ) {
            for strategy in builtin() {
                let ranked = rank_with(strategy.as_ref(), &group, seed, cursor, limit);
                prop_assert_eq!(ranked.len(), limit.min(group.len()), "{}", strategy.name());
                let mut seen = vec![false; group.len()];
                for index in &ranked {
                    prop_assert!(*index < group.len(), "{}", strategy.name());
                    prop_assert!(!seen[*index], "{} repeats {}", strategy.name(), index);
                    seen[*index] = true;
                }
                if limit >= group.len() {
                    prop_assert!(seen.iter().all(|s| *s), "{}: not a permutation", strategy.name());
                }
            }
        }

        #[test]
        fn weighted_never_ranks_a_zero_weight_before_a_positive_one(
            group in arbitrary_group(),
            limit in 0usize..30,
            seed in any::<u64>(),
        ) {
            let ranked = rank_with(&Weighted, &group, seed, 0, limit);
            let positive = |index: &usize| group[*index].weight > 0;
            let first_zero = ranked.iter().position(|index| !positive(index));
            if let Some(first_zero) = first_zero {
                prop_assert!(ranked[first_zero..].iter().all(|index| !positive(index)));
                // And no positive-weight account was left out in favour of a zero-weight one.
                prop_assert_eq!(
                    ranked[..first_zero].len(),
                    group.iter().filter(|c| c.weight > 0).count()
                );
            }
        }

        #[test]
        fn cumulative_weights_agree_with_a_linear_scan(
            weights in proptest::collection::vec(0u32..5, 0..40),
            removals in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
            point_share in 0.0f64..1.0,
        ) {
            // Integer weights keep every sum exact, so the comparison is exact too.
            let mut weights: Vec<f64> = weights.into_iter().map(f64::from).collect();
            let mut tree = CumulativeWeights::new(&weights);
            if !weights.is_empty() {
                for removal in removals {
                    let index = removal.index(weights.len());
                    tree.add(index, -weights[index]);
                    weights[index] = 0.0;
                }
            }
            let total: f64 = weights.iter().sum();
            let point = (point_share * total).floor();
            let mut before = 0.0;
            let mut expected = None;
            for (index, weight) in weights.iter().enumerate() {
                if point < before + weight {
                    expected = Some(index);
                    break;
                }
                before += weight;
            }
            prop_assert_eq!(tree.find(point), expected);
        }

        #[test]
        fn priority_first_never_ranks_a_larger_priority_first(
            group in arbitrary_group(),
            limit in 0usize..30,
        ) {
            let ranked = rank_with(&PriorityFirst, &group, 0, 0, limit);
            prop_assert!(ranked
                .windows(2)
                .all(|pair| group[pair[0]].priority <= group[pair[1]].priority));
            if let Some(first) = ranked.first() {
                let smallest = group.iter().map(|c| c.priority).min();
                prop_assert_eq!(Some(group[*first].priority), smallest);
            }
        }

        #[test]
        fn deterministic_strategies_give_prefixes_of_their_full_order(
            group in arbitrary_group(),
            limit in 0usize..30,
            cursor in any::<u64>(),
        ) {
            for strategy in [&PriorityFirst as &dyn SelectionStrategy, &RoundRobin, &LeastUsed, &Hybrid] {
                let full = rank_with(strategy, &group, 0, cursor, group.len());
                let partial = rank_with(strategy, &group, 0, cursor, limit);
                prop_assert_eq!(&partial[..], &full[..limit.min(group.len())], "{}", strategy.name());
            }
        }

        #[test]
        fn round_robin_puts_each_account_first_equally_often(
            size in 1usize..12,
            rounds in 1u64..5,
            offset in any::<u32>(),
        ) {
            let group: Vec<Candidate> = (0..size)
                .map(|position| Candidate::new(((position as i64) * 37) % 101, 1, 1))
                .collect();
            let mut firsts = vec![0u64; size];
            let total = size as u64 * rounds;
            for cursor in u64::from(offset)..u64::from(offset) + total {
                firsts[rank_with(&RoundRobin, &group, 0, cursor, 1)[0]] += 1;
            }
            prop_assert!(firsts.iter().all(|count| *count == rounds), "{:?}", firsts);
        }
    }
}

//! Account selection: seven strategies behind one trait, over an immutable snapshot.
//!
//! A group's eligible accounts are handed to a strategy as a slice of [`Candidate`]s with their
//! live figures (usage, in-flight requests, learned success rate and latency). The strategy
//! answers with indices into that slice in preference order: the first is tried first, the rest
//! are the fallback order of the attempt loop. Time and randomness come in through
//! [`SelectionContext`], so every strategy is deterministic under a seeded generator.
//!
//! The attempt loop rarely needs more than `max_retries + 1` (at most 11) candidates, so every
//! strategy does only partial work when `limit` is small: a pass or two over the group, with no
//! allocation but the answer (and `weighted`'s running sums in a large group). The orders of
//! `priority_first`, `least_used`, `hybrid` and the fallback lists of `adaptive` and
//! `smart_load_balance` pack each candidate's sort key, tie-breakers included, into a few
//! 64-bit words with order-preserving transforms (an `f64` becomes the integer that orders as
//! `total_cmp`), keep the best `limit` in a sorted buffer on the stack, and screen every other
//! candidate by comparing its main figure with the worst kept one's, so that most of a large
//! group costs a few arithmetic instructions and one well-predicted branch each. Longer
//! rankings collect the keys and use a linear-time selection (`select_nth_unstable`) before
//! sorting the winners. `weighted` draws from running sums of the weights (a Fenwick tree for
//! long rankings); `round_robin` indexes a snapshot sorted by account id directly. A full
//! permutation is available with `limit >= candidates.len()`.
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

use std::cell::Cell;
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
        // Above 0 and at most f64::MAX (NaN is neither). Written with a subtraction so that it
        // compiles to two float comparisons, not a bit-pattern classification.
        let latency_ms = self.latency_ewma_ms;
        (latency_ms > 0.0 && latency_ms - f64::MAX <= 0.0).then_some(latency_ms)
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

    /// A [`Screen`] that ranks candidates offered one at a time exactly as `rank` ranks them
    /// given all at once (the same candidates in the same order, the same context, the same
    /// `limit`), so that a caller reading a large group need not write its candidates out.
    /// `None` (the default) when the strategy needs them all at once.
    fn screen(&self, limit: usize) -> Option<Screen> {
        let _ = limit;
        None
    }

    /// Whether `rank` reads [`Candidate::in_flight`] of accounts without a `max_concurrency`
    /// (the caller leaves it 0 otherwise): it is the one figure that selection cannot read
    /// from the group's own table, so strategies that ignore it say so.
    fn reads_in_flight(&self) -> bool {
        true
    }
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

/// Up to this many picks, the best candidates are kept in a fixed-size sorted buffer on the
/// stack during a single pass; longer rankings collect every key and partially select them.
const STREAMING_TOP_K_MAX: usize = 16;

/// The unsigned image of an `f64` that orders exactly as [`f64::total_cmp`]: negative numbers
/// have every bit flipped (a larger magnitude is smaller), the others only the sign bit.
fn ascending_f64(value: f64) -> u64 {
    let bits = value.to_bits();
    let negative_mask = ((bits as i64) >> 63) as u64;
    bits ^ (negative_mask | (1 << 63))
}

/// The `f64` whose [`ascending_f64`] image is `image`, to the bit.
fn f64_from_ascending(image: u64) -> f64 {
    let non_negative_mask = ((image as i64) >> 63) as u64;
    f64::from_bits(image ^ (!non_negative_mask | (1 << 63)))
}

/// The unsigned image of an `f64` that orders as [`f64::total_cmp`] reversed (largest first).
fn descending_f64(value: f64) -> u64 {
    !ascending_f64(value)
}

/// The unsigned image of an `i32` that keeps its order (the sign bit flipped).
fn ascending_i32(value: i32) -> u32 {
    (value as u32) ^ (1 << 31)
}

/// The unsigned image of an `i64` that keeps its order (the sign bit flipped).
fn ascending_i64(value: i64) -> u64 {
    (value as u64) ^ (1 << 63)
}

/// An unsigned integer of `64 × N` bits, most significant word first: the packed form of a
/// candidate's whole sort key. The first word (the strategy's main figure) almost always
/// decides, so it is compared alone first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WideKey<const N: usize>([u64; N]);

impl<const N: usize> Default for WideKey<N> {
    fn default() -> Self {
        WideKey([0; N])
    }
}

impl<const N: usize> WideKey<N> {
    /// `self < other`.
    #[inline(always)]
    fn is_below(&self, other: &Self) -> bool {
        match (self.0.first(), other.0.first()) {
            (Some(mine), Some(theirs)) if mine != theirs => mine < theirs,
            _ => self.0 < other.0,
        }
    }
}

impl<const N: usize> Ord for WideKey<N> {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.is_below(other) {
            Ordering::Less
        } else if other.is_below(self) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}

impl<const N: usize> PartialOrd for WideKey<N> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }

    #[inline(always)]
    fn lt(&self, other: &Self) -> bool {
        self.is_below(other)
    }

    #[inline(always)]
    fn le(&self, other: &Self) -> bool {
        !other.is_below(self)
    }

    #[inline(always)]
    fn gt(&self, other: &Self) -> bool {
        other.is_below(self)
    }

    #[inline(always)]
    fn ge(&self, other: &Self) -> bool {
        !self.is_below(other)
    }
}

/// A deterministic strategy's order, in the form the selection below runs fastest on.
///
/// A candidate's whole place is one wide integer key (its fields and tie-breakers packed with
/// order-preserving transforms), whose first word settles almost every comparison in one
/// instruction instead of a chain of field comparisons. Most candidates of a large group never
/// need a key: once `limit` candidates are kept, a screen compares the figure that usually
/// decides (a score, a cost, a load) with the worst kept candidate's, and only a candidate that
/// may beat it gets its key built.
trait CandidateOrder {
    /// Smaller is better; equal keys go to the smaller index.
    type Key: Copy + Ord + Default;
    /// What the screen looks at, computed once per candidate.
    type Figures: Copy;
    /// What the screen compares against, taken from the worst kept candidate's key.
    type Bar: Copy;

    fn figures(&self, candidate: &Candidate) -> Self::Figures;

    /// The key of the candidate whose figures are `figures`.
    fn key(&self, candidate: &Candidate, figures: Self::Figures) -> Self::Key;

    fn bar(&self, worst_kept: &Self::Key) -> Self::Bar;

    /// `false` only when the candidate certainly orders after the one `bar` was taken from.
    fn may_beat(&self, figures: Self::Figures, bar: Self::Bar) -> bool;

    fn full_key(&self, candidate: &Candidate) -> Self::Key {
        self.key(candidate, self.figures(candidate))
    }
}

/// The best `take` keys offered so far (smallest first) with their candidate indices, in a
/// fixed-size buffer. Candidates are offered in increasing index order, so a key equal to one
/// already kept goes after it: that is the index tie-break, without the index in the key.
struct StreamingTopK<K> {
    keys: [K; STREAMING_TOP_K_MAX],
    indices: [usize; STREAMING_TOP_K_MAX],
    len: usize,
    take: usize,
}

impl<K: Copy + Ord + Default> StreamingTopK<K> {
    /// `take` is at least 1 and at most [`STREAMING_TOP_K_MAX`].
    fn new(take: usize) -> Self {
        debug_assert!((1..=STREAMING_TOP_K_MAX).contains(&take));
        StreamingTopK {
            keys: [K::default(); STREAMING_TOP_K_MAX],
            indices: [0; STREAMING_TOP_K_MAX],
            len: 0,
            take: take.clamp(1, STREAMING_TOP_K_MAX),
        }
    }

    /// The key of the worst kept candidate (the buffer is not empty).
    fn worst_key(&self) -> &K {
        &self.keys[self.len.saturating_sub(1)]
    }

    /// Keeps `key` if it is among the best `take` so far; true when it was kept.
    #[inline(always)]
    fn offer(&mut self, key: K, index: usize) -> bool {
        if self.len == self.take {
            if key >= self.keys[self.take - 1] {
                return false;
            }
            self.len -= 1;
        }
        // One insertion-sort step: shift the worse keys up by one.
        let mut position = self.len;
        while position > 0 && key < self.keys[position - 1] {
            self.keys[position] = self.keys[position - 1];
            self.indices[position] = self.indices[position - 1];
            position -= 1;
        }
        self.keys[position] = key;
        self.indices[position] = index;
        self.len += 1;
        true
    }

    fn indices(&self) -> &[usize] {
        &self.indices[..self.len]
    }
}

/// `rank_by` for candidates offered one at a time: the same keys, the same screen against
/// the worst kept one, so the same result for the same candidates in the same order.
struct StreamingRank<O: CandidateOrder> {
    order: O,
    best: StreamingTopK<O::Key>,
    bar: Option<O::Bar>,
    offered: usize,
}

impl<O: CandidateOrder> StreamingRank<O> {
    /// `take` is at least 1 and at most [`STREAMING_TOP_K_MAX`].
    fn new(order: O, take: usize) -> Self {
        StreamingRank {
            order,
            best: StreamingTopK::new(take),
            bar: None,
            offered: 0,
        }
    }

    #[inline(always)]
    fn offer(&mut self, candidate: &Candidate) {
        let index = self.offered;
        self.offered += 1;
        self.offer_at(candidate, index);
    }

    /// Offers the candidate at `index`, counted among the offered already. Out of order, a
    /// key equal to a kept one would not go after the smaller index: keys must be distinct.
    #[inline(always)]
    fn offer_at(&mut self, candidate: &Candidate, index: usize) {
        match self.bar {
            // Until `take` candidates are kept, every one is kept.
            None => {
                self.best.offer(self.order.full_key(candidate), index);
                if self.best.len == self.best.take {
                    self.bar = Some(self.order.bar(self.best.worst_key()));
                }
            }
            Some(bar) => {
                let figures = self.order.figures(candidate);
                if self.order.may_beat(figures, bar)
                    && self.best.offer(self.order.key(candidate, figures), index)
                {
                    self.bar = Some(self.order.bar(self.best.worst_key()));
                }
            }
        }
    }

    fn ranked(&self) -> Vec<usize> {
        self.best.indices().to_vec()
    }
}

/// Ranks a group's candidates as they are offered, one at a time and in order
/// ([`SelectionStrategy::screen`]): a candidate that cannot beat the worst one kept costs its
/// screening figure and one comparison, and nothing is kept of it.
///
/// hybrid, whose order depends on the group's largest weight and usage, asks for a
/// [`Survey`] first ([`Screen::needs_survey`]): the same candidates offered once before, in
/// the same order, then given to [`Screen::begin`]. smart_load_balance screens the candidates
/// with a known latency as they come and the others once the group's mean latency is known,
/// and reads its two random picks again when it finishes.
///
/// Candidates are offered in increasing account id order, as a group's table holds them
/// (round_robin's screen takes that order as its ring), and no two share an account id.
pub struct Screen {
    kind: ScreenKind,
    limit: usize,
}

enum ScreenKind {
    PriorityFirst(StreamingRank<PriorityFirst>),
    LeastUsed(StreamingRank<LeastUsed>),
    /// Greedy as above; whether to explore is drawn at the end, as `Adaptive::rank` draws it.
    Adaptive(StreamingRank<Adaptive>),
    /// Counts the candidates; the ring's start is the cursor's place among them.
    RoundRobin {
        offered: usize,
    },
    /// Ranks once the survey gave the group's largest weight and usage.
    Hybrid(Surveyed<HybridNormaliser>),
    SmartLoadBalance(LoadScreen),
}

/// smart_load_balance's screen: the candidates with a known latency ranked by cost as they
/// come, the others kept until the group's mean known latency is (their keys, with distinct
/// account ids, are distinct, so the order they are offered in does not matter).
struct LoadScreen {
    rank: StreamingRank<LoadOrder<'static>>,
    /// The candidates without a known latency, by index.
    unknown: Vec<(usize, Candidate)>,
    known_latency_sum: f64,
    known_latency_count: u32,
}

impl ScreenStep for LoadScreen {
    #[inline(always)]
    fn offer(&mut self, candidate: &Candidate) {
        match candidate.known_latency_ms() {
            Some(latency_ms) => {
                // Summed in index order, as `LoadOrder` sums them.
                self.known_latency_sum += latency_ms;
                self.known_latency_count += 1;
                self.rank.offer(candidate);
            }
            None => {
                self.unknown.push((self.rank.offered, candidate.clone()));
                self.rank.offered += 1;
            }
        }
    }
}

impl LoadScreen {
    /// The picks, best first, once every candidate was offered; `reread` gives candidate
    /// `index` again (the two random picks).
    fn finish(
        mut self,
        limit: usize,
        ctx: &mut SelectionContext<'_>,
        reread: impl Fn(usize) -> Option<Candidate>,
    ) -> Vec<usize> {
        let mean = if self.known_latency_count == 0 {
            1.0
        } else {
            self.known_latency_sum / f64::from(self.known_latency_count)
        };
        self.rank.order.latency_when_unknown_ms.set(Some(mean));
        for (index, candidate) in std::mem::take(&mut self.unknown) {
            self.rank.offer_at(&candidate, index);
        }
        let mut ranked = self.rank.ranked();
        if limit == 0 {
            return ranked;
        }
        let Some([first, second]) = SmartLoadBalance::picks(self.rank.offered, ctx) else {
            return ranked;
        };
        let key = |index: usize| reread(index).map(|c| self.rank.order.full_key(&c));
        let winner = match (key(first), key(second)) {
            (Some(first_key), Some(second_key)) => Some(SmartLoadBalance::better(
                first, first_key, second, second_key,
            )),
            // A pick that may no longer take the request (its state changed since it was
            // read) leaves the other.
            (Some(_), None) => Some(first),
            (None, Some(_)) => Some(second),
            (None, None) => None,
        };
        if let Some(winner) = winner.filter(|_| !ranked.is_empty()) {
            place_first(&mut ranked, winner);
        }
        ranked
    }
}

/// The candidates for a [`Screen`], in order: a caller's read loop, which gives each
/// candidate to the screen's step.
pub trait CandidateFeed {
    /// Runs the loop with `step`, and gives it back. The loop owns the step meanwhile: as a
    /// local of the loop, its counters can live in registers, where behind a reference every
    /// atomic read of the loop would make them go through memory.
    fn feed<S: ScreenStep>(&mut self, step: S) -> S;
}

/// One kind of screen's work for one candidate (see [`Screen::offer_all`]).
pub trait ScreenStep {
    fn offer(&mut self, candidate: &Candidate);
}

impl<'a, I: Iterator<Item = &'a Candidate>> CandidateFeed for I {
    fn feed<S: ScreenStep>(&mut self, mut step: S) -> S {
        for candidate in self.by_ref() {
            step.offer(candidate);
        }
        step
    }
}

impl<O: CandidateOrder> ScreenStep for StreamingRank<O> {
    #[inline(always)]
    fn offer(&mut self, candidate: &Candidate) {
        StreamingRank::offer(self, candidate);
    }
}

/// round_robin's step: a count.
struct Counting(usize);

impl ScreenStep for Counting {
    #[inline(always)]
    fn offer(&mut self, _candidate: &Candidate) {
        self.0 += 1;
    }
}

/// A ranking that starts once the survey is in: until then, nothing is offered to it.
enum Surveyed<O: CandidateOrder> {
    Waiting { take: usize },
    Ranking(StreamingRank<O>),
}

impl<O: CandidateOrder> Surveyed<O> {
    fn begin(&mut self, order: O) {
        if let Surveyed::Waiting { take } = *self {
            *self = Surveyed::Ranking(StreamingRank::new(order, take));
        }
    }

    /// The ranking, begun with `order` if the survey was left out (a caller's mistake that
    /// still ranks every candidate offered, if not as the whole list would be).
    fn into_ranking(self, order: impl FnOnce() -> O) -> StreamingRank<O> {
        match self {
            Surveyed::Waiting { take } => StreamingRank::new(order(), take),
            Surveyed::Ranking(rank) => rank,
        }
    }

    fn offered(&self) -> usize {
        match self {
            Surveyed::Waiting { .. } => 0,
            Surveyed::Ranking(rank) => rank.offered,
        }
    }

    fn ranked(&self) -> Vec<usize> {
        match self {
            Surveyed::Waiting { .. } => Vec::new(),
            Surveyed::Ranking(rank) => rank.ranked(),
        }
    }
}

/// What hybrid's screen must know before candidates are offered: the group's largest weight
/// and usage, over the candidates offered to [`Survey::offer`] once before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Survey {
    count: usize,
    max_weight: u32,
    max_requests: u64,
}

impl Survey {
    #[inline(always)]
    pub fn offer(&mut self, candidate: &Candidate) {
        self.count += 1;
        self.max_weight = self.max_weight.max(candidate.weight);
        self.max_requests = self.max_requests.max(candidate.requests_in_window);
    }

    /// How many candidates were offered.
    pub fn count(&self) -> usize {
        self.count
    }
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen")
            .field("offered", &self.offered())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Screen {
    /// For `limit` picks; `None` where `rank` would not rank in one pass.
    fn for_limit(limit: usize, kind: impl FnOnce(usize) -> ScreenKind) -> Option<Screen> {
        (1..=STREAMING_TOP_K_MAX).contains(&limit).then(|| Screen {
            kind: kind(limit),
            limit,
        })
    }

    /// Whether the candidates must be surveyed, and the survey given to [`Screen::begin`],
    /// before they are offered.
    pub fn needs_survey(&self) -> bool {
        matches!(self.kind, ScreenKind::Hybrid(_))
    }

    /// Takes the survey of the candidates about to be offered.
    pub fn begin(&mut self, survey: &Survey) {
        if let ScreenKind::Hybrid(rank) = &mut self.kind {
            rank.begin(HybridNormaliser::new(
                survey.max_weight,
                survey.max_requests,
            ));
        }
    }

    /// Offers the next candidate (its index is the number offered before it).
    pub fn offer(&mut self, candidate: &Candidate) {
        self.offer_all(&mut std::iter::once(candidate));
    }

    /// Offers every candidate `feed` gives, in order: the feed's loop runs with this kind of
    /// screen's own step, so that a large group's loop decides the kind once, not once per
    /// candidate.
    pub fn offer_all(&mut self, feed: &mut impl CandidateFeed) {
        let kind = std::mem::replace(&mut self.kind, ScreenKind::RoundRobin { offered: 0 });
        self.kind = match kind {
            ScreenKind::PriorityFirst(rank) => ScreenKind::PriorityFirst(feed.feed(rank)),
            ScreenKind::LeastUsed(rank) => ScreenKind::LeastUsed(feed.feed(rank)),
            ScreenKind::Adaptive(rank) => ScreenKind::Adaptive(feed.feed(rank)),
            ScreenKind::RoundRobin { offered } => ScreenKind::RoundRobin {
                offered: feed.feed(Counting(offered)).0,
            },
            ScreenKind::Hybrid(rank) => {
                let rank = rank.into_ranking(|| HybridNormaliser::new(u32::MAX, u64::MAX));
                ScreenKind::Hybrid(Surveyed::Ranking(feed.feed(rank)))
            }
            ScreenKind::SmartLoadBalance(screen) => ScreenKind::SmartLoadBalance(feed.feed(screen)),
        };
    }

    /// How many candidates were offered.
    pub fn offered(&self) -> usize {
        match &self.kind {
            ScreenKind::PriorityFirst(rank) => rank.offered,
            ScreenKind::LeastUsed(rank) => rank.offered,
            ScreenKind::Adaptive(rank) => rank.offered,
            ScreenKind::RoundRobin { offered } => *offered,
            ScreenKind::Hybrid(rank) => rank.offered(),
            ScreenKind::SmartLoadBalance(screen) => screen.rank.offered,
        }
    }

    /// The indices (in offer order) of the picks, best first: what `rank` returns for the
    /// candidates offered, drawing from `ctx` what it would draw. `reread` gives a candidate
    /// again by index, as it is now (smart_load_balance's random picks).
    pub fn finish(
        self,
        ctx: &mut SelectionContext<'_>,
        reread: impl Fn(usize) -> Option<Candidate>,
    ) -> Vec<usize> {
        match self.kind {
            ScreenKind::PriorityFirst(rank) => rank.ranked(),
            ScreenKind::LeastUsed(rank) => rank.ranked(),
            ScreenKind::Adaptive(rank) => {
                let count = rank.offered;
                let mut ranked = rank.ranked();
                if let Some(explored) = Adaptive::explored(count, ctx) {
                    place_first(&mut ranked, explored);
                }
                ranked
            }
            ScreenKind::RoundRobin { offered } => {
                let take = self.limit.min(offered);
                if take == 0 {
                    return Vec::new();
                }
                let start = RoundRobin::start(offered, ctx.cursor);
                (start..offered).chain(0..start).take(take).collect()
            }
            ScreenKind::Hybrid(rank) => rank.ranked(),
            ScreenKind::SmartLoadBalance(screen) => screen.finish(self.limit, ctx, reread),
        }
    }
}

/// The indices of the `limit` best candidates under `order`, best first.
fn rank_by<O: CandidateOrder>(order: &O, candidates: &[Candidate], limit: usize) -> Vec<usize> {
    let take = limit.min(candidates.len());
    if take == 0 {
        return Vec::new();
    }
    if take <= STREAMING_TOP_K_MAX {
        let mut best = StreamingTopK::new(take);
        let (filling, screened) = candidates.split_at(take);
        for (index, candidate) in filling.iter().enumerate() {
            best.offer(order.full_key(candidate), index);
        }
        let mut bar = order.bar(best.worst_key());
        for (index, candidate) in (take..).zip(screened) {
            let figures = order.figures(candidate);
            if order.may_beat(figures, bar) && best.offer(order.key(candidate, figures), index) {
                bar = order.bar(best.worst_key());
            }
        }
        return best.indices().to_vec();
    }
    let mut keyed: Vec<(O::Key, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(index, candidate)| (order.full_key(candidate), index))
        .collect();
    if take < keyed.len() {
        keyed.select_nth_unstable(take - 1);
        keyed.truncate(take);
    }
    keyed.sort_unstable();
    keyed.iter().map(|(_, index)| *index).collect()
}

/// Candidate `first` in front of the best `limit - 1` of the others under `order`.
fn rank_after<O: CandidateOrder>(
    first: usize,
    order: &O,
    candidates: &[Candidate],
    limit: usize,
) -> Vec<usize> {
    let mut ranked = rank_by(order, candidates, limit);
    if limit == 0 || first >= candidates.len() {
        return ranked;
    }
    place_first(&mut ranked, first);
    ranked
}

/// Puts `first` in front of the best of the others, `ranked` being the best `limit` of all
/// (`limit` at least 1, `first` a candidate).
fn place_first(ranked: &mut Vec<usize>, first: usize) {
    // The best `limit` of all, less `first` (or less the last when `first` is not among them),
    // are the best `limit - 1` of the others.
    match ranked.iter().position(|index| *index == first) {
        Some(position) => {
            ranked.remove(position);
        }
        None => {
            ranked.pop();
        }
    }
    ranked.insert(0, first);
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

impl CandidateOrder for PriorityFirst {
    /// (priority, health, usage capped at 2³⁰ − 1), usage, account id. The first word alone
    /// decides unless two candidates share a priority, a health and a usage (or both have used
    /// more than a billion requests).
    type Key = WideKey<3>;
    /// The key's first word, and the usage.
    type Figures = (u64, u64);
    /// The worst kept candidate's first word.
    type Bar = u64;

    fn figures(&self, candidate: &Candidate) -> Self::Figures {
        const USAGE_CAP: u64 = (1 << 30) - 1;
        let usage = candidate.requests_in_window;
        (
            u64::from(ascending_i32(candidate.priority)) << 32
                | u64::from(candidate.health.badness()) << 30
                | usage.min(USAGE_CAP),
            usage,
        )
    }

    fn key(&self, candidate: &Candidate, (first_word, usage): Self::Figures) -> Self::Key {
        WideKey([first_word, usage, ascending_i64(candidate.account_id)])
    }

    fn bar(&self, worst_kept: &Self::Key) -> Self::Bar {
        worst_kept.0[0]
    }

    fn may_beat(&self, (first_word, _): Self::Figures, bar: Self::Bar) -> bool {
        first_word <= bar
    }
}

impl SelectionStrategy for PriorityFirst {
    fn reads_in_flight(&self) -> bool {
        false
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        _ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        rank_by(self, candidates, limit)
    }

    fn screen(&self, limit: usize) -> Option<Screen> {
        Screen::for_limit(limit, |take| {
            ScreenKind::PriorityFirst(StreamingRank::new(PriorityFirst, take))
        })
    }
}

/// `weighted`: weighted random choice by `weight × health factor` (healthy 1.0, degraded 0.25,
/// unhealthy 0.05); the fallback order is also weighted random, without replacement
/// (successive draws, each among the candidates not drawn yet).
///
/// Each draw takes a uniform point below the weight not drawn yet and picks the candidate whose
/// cumulative-weight interval holds it. The weights live in a Fenwick tree (P. M. Fenwick, "A
/// new data structure for cumulative frequency tables", Software: Practice and Experience
/// 24(3), 1994): each draw, and the removal of the drawn weight, takes O(log n). Building the
/// tree is linear but slow per account (every node is added into its parent), so a short
/// ranking (the attempt loop's) of a larger group lays out only the running sums of the
/// weights, in one pass, and finds each point by binary search, stepping over the few
/// candidates already drawn by subtracting their weights from the sums after them. Either way
/// a ranking of `limit` over `n` accounts costs O(n + limit · log n) (plus `limit²` for the
/// running sums), instead of a full pass per draw. Accounts of weight 0 only come after every
/// positive-weight account, in uniform random order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Weighted;

impl Weighted {
    pub const NAME: &'static str = "weighted";

    fn effective_weight(candidate: &Candidate) -> f64 {
        f64::from(candidate.weight) * candidate.health.traffic_factor()
    }

    /// Up to this many accounts the tree's build is cheap, and its draws are cheaper than the
    /// running sums' (whose cost grows with the number of candidates drawn).
    const SMALL_GROUP_MAX: usize = 64;

    /// Successive draws for a short ranking (`take` ≤ [`STREAMING_TOP_K_MAX`]) over running sums.
    fn rank_over_running_sums(
        candidates: &[Candidate],
        rng: &mut dyn rand::RngCore,
        take: usize,
    ) -> Vec<usize> {
        /// Groups up to this size keep their running sums on the stack.
        const ON_STACK: usize = 128;
        let mut positive_left = 0usize;
        let mut running_total = 0.0;
        // running_sums[i] = weights[0] + … + weights[i], summed in index order.
        let mut running_sum_through = |candidate: &Candidate| {
            let weight = Self::effective_weight(candidate);
            positive_left += usize::from(weight > 0.0);
            running_total += weight;
            running_total
        };
        let mut sums_on_stack = [0.0; ON_STACK];
        let mut block_ends_on_stack = [0.0; ON_STACK / SUM_BLOCK];
        let sums_on_heap: Vec<f64>;
        let block_ends_on_heap: Vec<f64>;
        let running_sums = if candidates.len() <= ON_STACK {
            let sums = &mut sums_on_stack[..candidates.len()];
            for (sum, candidate) in sums.iter_mut().zip(candidates) {
                *sum = running_sum_through(candidate);
            }
            let block_ends = &mut block_ends_on_stack[..sums.len() / SUM_BLOCK];
            for (end, block) in block_ends.iter_mut().zip(sums.chunks_exact(SUM_BLOCK)) {
                *end = block[SUM_BLOCK - 1];
            }
            RunningSums { sums, block_ends }
        } else {
            sums_on_heap = candidates.iter().map(running_sum_through).collect();
            block_ends_on_heap = sums_on_heap
                .chunks_exact(SUM_BLOCK)
                .map(|block| block[SUM_BLOCK - 1])
                .collect();
            RunningSums {
                sums: &sums_on_heap,
                block_ends: &block_ends_on_heap,
            }
        };
        let mut ranked = Vec::with_capacity(take);
        // The drawn candidates by increasing index, with their weights.
        let mut drawn = [(0usize, 0.0f64); STREAMING_TOP_K_MAX];
        let mut drawn_count = 0;
        let mut remaining_total = running_total;
        while ranked.len() < take && positive_left > 0 {
            let point = rng.gen::<f64>() * remaining_total;
            let drawn_so_far = &drawn[..drawn_count];
            // The search never lands on a drawn or zero-weight candidate, but rounding in the
            // sums can, very rarely, point past the end: then take the first candidate still
            // holding weight.
            let holds_weight = |index: usize| {
                Self::effective_weight(&candidates[index]) > 0.0
                    && !drawn_so_far
                        .iter()
                        .any(|(drawn_index, _)| *drawn_index == index)
            };
            let Some(index) = running_sums
                .find(drawn_so_far, point)
                .filter(|index| holds_weight(*index))
                .or_else(|| (0..candidates.len()).find(|index| holds_weight(*index)))
            else {
                break;
            };
            let weight = Self::effective_weight(&candidates[index]);
            remaining_total -= weight;
            positive_left -= 1;
            // Keep `drawn` sorted: shift the larger indices up by one.
            let mut slot = drawn_count;
            while slot > 0 && drawn[slot - 1].0 > index {
                drawn[slot] = drawn[slot - 1];
                slot -= 1;
            }
            drawn[slot] = (index, weight);
            drawn_count += 1;
            ranked.push(index);
        }
        Self::append_zero_weights(candidates, rng, take, ranked)
    }

    /// Successive draws over a Fenwick tree.
    fn rank_over_tree(
        candidates: &[Candidate],
        rng: &mut dyn rand::RngCore,
        take: usize,
    ) -> Vec<usize> {
        let count = candidates.len();
        let mut leaves = Vec::with_capacity(count + 1);
        leaves.push(0.0);
        let mut total = 0.0;
        let mut positive_left = 0usize;
        leaves.extend(candidates.iter().map(|candidate| {
            let weight = Self::effective_weight(candidate);
            total += weight;
            positive_left += usize::from(weight > 0.0);
            weight
        }));
        let mut ranked = Vec::with_capacity(take);
        let mut drawn = vec![false; count];
        let holds_weight = |index: usize, drawn: &[bool]| {
            !drawn[index] && Self::effective_weight(&candidates[index]) > 0.0
        };
        if positive_left > 0 {
            let mut tree = CumulativeWeights::from_leaves(leaves);
            let mut remaining_total = total;
            while ranked.len() < take && positive_left > 0 {
                let point = rng.gen::<f64>() * remaining_total;
                // Rounding in the tree's sums can, very rarely, point at a drawn candidate or
                // past the end: then take the first candidate still holding weight.
                let Some(index) = tree
                    .find(point)
                    .filter(|index| holds_weight(*index, &drawn))
                    .or_else(|| (0..count).find(|index| holds_weight(*index, &drawn)))
                else {
                    break;
                };
                let weight = Self::effective_weight(&candidates[index]);
                tree.add(index, -weight);
                remaining_total -= weight;
                drawn[index] = true;
                positive_left -= 1;
                ranked.push(index);
            }
        }
        Self::append_zero_weights(candidates, rng, take, ranked)
    }

    /// Fills `ranked` up to `take` with zero-weight candidates (once no positive weight is
    /// left): a partial Fisher–Yates shuffle of them.
    fn append_zero_weights(
        candidates: &[Candidate],
        rng: &mut dyn rand::RngCore,
        take: usize,
        mut ranked: Vec<usize>,
    ) -> Vec<usize> {
        if ranked.len() < take {
            let mut zero_weight: Vec<usize> = (0..candidates.len())
                .filter(|index| Self::effective_weight(&candidates[*index]) == 0.0)
                .collect();
            let wanted = (take - ranked.len()).min(zero_weight.len());
            for slot in 0..wanted {
                let chosen = rng.gen_range(slot..zero_weight.len());
                zero_weight.swap(slot, chosen);
                ranked.push(zero_weight[slot]);
            }
        }
        ranked
    }
}

/// The running sums are searched in blocks of this many.
const SUM_BLOCK: usize = 8;

/// `sums[i]` is the sum of the weights of candidates `0..=i` (so the sums never decrease);
/// `block_ends[b]` is the last sum of block `b`, `sums[SUM_BLOCK * b + SUM_BLOCK - 1]`.
///
/// A binary search over the sums is a chain of dependent loads and comparisons. Searching the
/// block ends instead, then comparing the sums of one block all at once, shortens that chain
/// by three steps.
struct RunningSums<'a> {
    sums: &'a [f64],
    block_ends: &'a [f64],
}

impl RunningSums<'_> {
    /// The candidate whose interval `[sum before it, sum through it)` holds `point` once the
    /// `drawn` candidates (increasing indices, with their weights) are taken out; `None` when
    /// `point` is at or past the remaining total.
    fn find(&self, drawn: &[(usize, f64)], point: f64) -> Option<usize> {
        // The drawn candidates cut the sums into segments; within one, the sums of the
        // remaining weights are the running sums less the weight drawn before the segment.
        let mut segment_start = 0;
        let mut segment_end = self.sums.len();
        let mut drawn_before = 0.0;
        for (drawn_index, weight) in drawn {
            let drawn_through = drawn_before + weight;
            // The remaining weight through the end of this segment.
            if self.sums[*drawn_index] - drawn_through > point {
                segment_end = *drawn_index;
                break;
            }
            drawn_before = drawn_through;
            segment_start = drawn_index + 1;
        }
        // `sum - drawn_before <= point` holds for a prefix of all the sums (they never
        // decrease), so its length, clamped to the segment, is where the point falls in it.
        let position = self
            .count_at_or_below(drawn_before, point)
            .clamp(segment_start, segment_end);
        (position < segment_end).then_some(position)
    }

    /// How many sums are at or below `point` once `offset` is taken off each.
    fn count_at_or_below(&self, offset: f64, point: f64) -> usize {
        let at_or_below = |sum: &f64| sum - offset <= point;
        let start = self.block_ends.partition_point(at_or_below) * SUM_BLOCK;
        let block = &self.sums[start..self.sums.len().min(start + SUM_BLOCK)];
        start + block.iter().filter(|sum| at_or_below(sum)).count()
    }
}

impl SelectionStrategy for Weighted {
    fn reads_in_flight(&self) -> bool {
        false
    }

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
            Vec::new()
        } else if take <= STREAMING_TOP_K_MAX && candidates.len() > Self::SMALL_GROUP_MAX {
            Self::rank_over_running_sums(candidates, ctx.rng, take)
        } else {
            Self::rank_over_tree(candidates, ctx.rng, take)
        }
    }
}

/// A Fenwick (binary indexed) tree over non-negative weights: prefix sums and point updates in
/// O(log n), and the search for the element whose cumulative interval holds a point.
struct CumulativeWeights {
    /// 1-based: `tree[i]` holds the sum of the `i & -i` weights ending at element `i - 1`.
    tree: Vec<f64>,
}

impl CumulativeWeights {
    #[cfg(test)]
    fn new(weights: &[f64]) -> Self {
        let mut leaves = Vec::with_capacity(weights.len() + 1);
        leaves.push(0.0);
        leaves.extend(weights.iter().map(|w| w.max(0.0)));
        CumulativeWeights::from_leaves(leaves)
    }

    /// Builds the tree in place from `[0.0, w0, w1, …]` (non-negative weights after a zero).
    fn from_leaves(mut tree: Vec<f64>) -> Self {
        let count = tree.len().saturating_sub(1);
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

    /// The ring's position of request number `cursor` among `count` candidates (at least 1).
    fn start(count: usize, cursor: u64) -> usize {
        // `count` fits in u64 on every supported platform, and the remainder is below `count`.
        (cursor % count as u64) as usize
    }
}

impl SelectionStrategy for RoundRobin {
    fn reads_in_flight(&self) -> bool {
        false
    }

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
        let start = Self::start(count, ctx.cursor);
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

    fn screen(&self, limit: usize) -> Option<Screen> {
        Screen::for_limit(limit, |_| ScreenKind::RoundRobin { offered: 0 })
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

impl CandidateOrder for LeastUsed {
    /// Load, (health, priority), account id.
    type Key = WideKey<3>;
    /// The load: usage divided by the health factor (multiplied by its reciprocal).
    type Figures = f64;
    /// The worst kept load.
    type Bar = f64;

    fn figures(&self, candidate: &Candidate) -> Self::Figures {
        candidate.requests_in_window as f64 * candidate.health.load_penalty()
    }

    fn key(&self, candidate: &Candidate, load: Self::Figures) -> Self::Key {
        WideKey([
            ascending_f64(load),
            u64::from(candidate.health.badness()) << 32
                | u64::from(ascending_i32(candidate.priority)),
            ascending_i64(candidate.account_id),
        ])
    }

    fn bar(&self, worst_kept: &Self::Key) -> Self::Bar {
        f64_from_ascending(worst_kept.0[0])
    }

    fn may_beat(&self, load: Self::Figures, bar: Self::Bar) -> bool {
        // Loads are never NaN, and where `<=` and `total_cmp` disagree (0 and -0) the screen
        // only lets one more candidate through.
        load <= bar
    }
}

impl SelectionStrategy for LeastUsed {
    fn reads_in_flight(&self) -> bool {
        false
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        _ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        rank_by(self, candidates, limit)
    }

    fn screen(&self, limit: usize) -> Option<Screen> {
        Screen::for_limit(limit, |take| {
            ScreenKind::LeastUsed(StreamingRank::new(LeastUsed, take))
        })
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

impl CandidateOrder for HybridNormaliser {
    /// Score descending, priority, account id.
    type Key = WideKey<3>;
    /// The score.
    type Figures = f64;
    /// The worst kept score.
    type Bar = f64;

    fn figures(&self, candidate: &Candidate) -> Self::Figures {
        self.score(candidate)
    }

    fn key(&self, candidate: &Candidate, score: Self::Figures) -> Self::Key {
        WideKey([
            descending_f64(score),
            u64::from(ascending_i32(candidate.priority)),
            ascending_i64(candidate.account_id),
        ])
    }

    fn bar(&self, worst_kept: &Self::Key) -> Self::Bar {
        f64_from_ascending(!worst_kept.0[0])
    }

    fn may_beat(&self, score: Self::Figures, bar: Self::Bar) -> bool {
        // Scores are never NaN, and where `>=` and `total_cmp` disagree (0 and -0) the screen
        // only lets one more candidate through.
        score >= bar
    }
}

impl SelectionStrategy for Hybrid {
    fn reads_in_flight(&self) -> bool {
        false
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        _ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        let (max_weight, max_requests) = candidates.iter().fold((0, 0), |(weight, requests), c| {
            (weight.max(c.weight), requests.max(c.requests_in_window))
        });
        rank_by(
            &HybridNormaliser::new(max_weight, max_requests),
            candidates,
            limit,
        )
    }

    fn screen(&self, limit: usize) -> Option<Screen> {
        Screen::for_limit(limit, |take| ScreenKind::Hybrid(Surveyed::Waiting { take }))
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

    /// The screen's scale: 10 s with a relative margin of 1e-9, far above the few units in the
    /// last place between the division-free comparison and the score's own rounding.
    /// The candidate to try first instead of the best, when this request explores (drawn
    /// from `ctx`: whether, then which).
    fn explored(count: usize, ctx: &mut SelectionContext<'_>) -> Option<usize> {
        let explore = count > 1 && ctx.rng.gen::<f64>() < Self::EXPLORATION_PROBABILITY;
        explore.then(|| ctx.rng.gen_range(0..count))
    }

    const SCREEN_SCALE: f64 = Self::LATENCY_HALVING_MS * (1.0 + 1e-9);
    /// Below this bar the screen lets every candidate through: its relative margin needs
    /// normal (not subnormal) numbers on both sides.
    const SCREEN_MIN_BAR: f64 = 1e-300;
}

impl CandidateOrder for Adaptive {
    /// Score descending, usage, priority, account id.
    type Key = WideKey<4>;
    /// The score's two parts: `success × health factor`, and the latency (0 when unknown).
    type Figures = (f64, f64);
    /// The worst kept score, or 0 when it is too small to screen against.
    type Bar = f64;

    fn figures(&self, candidate: &Candidate) -> Self::Figures {
        (
            candidate.sane_success_rate() * candidate.health.traffic_factor(),
            candidate.known_latency_ms().unwrap_or(0.0),
        )
    }

    fn key(&self, candidate: &Candidate, (reliability, latency_ms): Self::Figures) -> Self::Key {
        // The same operations as `Adaptive::score`, so the same value to the last bit.
        let score = reliability / (1.0 + latency_ms / Self::LATENCY_HALVING_MS);
        WideKey([
            descending_f64(score),
            candidate.requests_in_window,
            u64::from(ascending_i32(candidate.priority)),
            ascending_i64(candidate.account_id),
        ])
    }

    fn bar(&self, worst_kept: &Self::Key) -> Self::Bar {
        let score = f64_from_ascending(!worst_kept.0[0]);
        if score >= Self::SCREEN_MIN_BAR {
            score
        } else {
            0.0
        }
    }

    /// The score compared without its two divisions: `r / (1 + l / 10 s) < bar` exactly when
    /// `r · 10 s < bar · (10 s + l)`, checked with a margin that covers every rounding on both
    /// sides, so a candidate is only turned away when its score is certainly below the bar.
    /// A bar of 0 turns nobody away (the right side is then 0).
    fn may_beat(&self, (reliability, latency_ms): Self::Figures, bar: Self::Bar) -> bool {
        // Neither side is ever NaN: every figure is finite, the latency term at least 10 s.
        reliability * Self::SCREEN_SCALE >= bar * (Self::LATENCY_HALVING_MS + latency_ms)
    }
}

impl SelectionStrategy for Adaptive {
    fn reads_in_flight(&self) -> bool {
        false
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn rank(
        &self,
        candidates: &[Candidate],
        ctx: &mut SelectionContext<'_>,
        limit: usize,
    ) -> Vec<usize> {
        match Adaptive::explored(candidates.len(), ctx) {
            Some(explored) => rank_after(explored, self, candidates, limit),
            None => rank_by(self, candidates, limit),
        }
    }

    fn screen(&self, limit: usize) -> Option<Screen> {
        Screen::for_limit(limit, |take| {
            ScreenKind::Adaptive(StreamingRank::new(Adaptive, take))
        })
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
        Self::cost_with_latency(candidate, latency_ms)
    }

    fn cost_with_latency(candidate: &Candidate, latency_ms: f64) -> f64 {
        latency_ms * (f64::from(candidate.in_flight) + 1.0) * candidate.health.load_penalty()
    }
}

/// The order of `smart_load_balance`'s fallback list: by cost, accounts at capacity last.
struct LoadOrder<'a> {
    candidates: &'a [Candidate],
    /// The group's mean known latency, computed on first use: a group whose latencies are all
    /// known never needs it.
    latency_when_unknown_ms: Cell<Option<f64>>,
}

impl<'a> LoadOrder<'a> {
    fn new(candidates: &'a [Candidate]) -> Self {
        LoadOrder {
            candidates,
            latency_when_unknown_ms: Cell::new(None),
        }
    }
}

impl LoadOrder<'static> {
    /// The order for candidates offered one at a time: only those with a known latency
    /// until the mean is set (with no candidates, it would be 1 ms).
    fn waiting_for_mean() -> Self {
        LoadOrder {
            candidates: &[],
            latency_when_unknown_ms: Cell::new(None),
        }
    }
}

impl LoadOrder<'_> {
    #[cold]
    fn latency_when_unknown_ms(&self) -> f64 {
        if let Some(latency_ms) = self.latency_when_unknown_ms.get() {
            return latency_ms;
        }
        let (known_latency_sum, known_latency_count) = self
            .candidates
            .iter()
            .filter_map(Candidate::known_latency_ms)
            .fold((0.0, 0u32), |(sum, count), latency| {
                (sum + latency, count + 1)
            });
        let latency_ms = if known_latency_count == 0 {
            1.0
        } else {
            known_latency_sum / f64::from(known_latency_count)
        };
        self.latency_when_unknown_ms.set(Some(latency_ms));
        latency_ms
    }
}

impl LoadOrder<'_> {
    /// Whether at capacity, then the cost's top 63 bits: the key's first word, which alone
    /// decides unless two costs are equal or next to each other.
    fn first_word(at_capacity: bool, cost: f64) -> u64 {
        u64::from(at_capacity) << 63 | ascending_f64(cost) >> 1
    }
}

impl CandidateOrder for LoadOrder<'_> {
    /// (at capacity, cost's top bits), cost, account id.
    type Key = WideKey<3>;
    /// Whether the candidate is at capacity, and its cost.
    type Figures = (bool, f64);
    /// The worst kept candidate's first word.
    type Bar = u64;

    fn figures(&self, candidate: &Candidate) -> Self::Figures {
        let latency_ms = candidate
            .known_latency_ms()
            .unwrap_or_else(|| self.latency_when_unknown_ms());
        (
            candidate.is_at_capacity(),
            SmartLoadBalance::cost_with_latency(candidate, latency_ms),
        )
    }

    fn key(&self, candidate: &Candidate, (at_capacity, cost): Self::Figures) -> Self::Key {
        WideKey([
            Self::first_word(at_capacity, cost),
            ascending_f64(cost),
            ascending_i64(candidate.account_id),
        ])
    }

    fn bar(&self, worst_kept: &Self::Key) -> Self::Bar {
        worst_kept.0[0]
    }

    fn may_beat(&self, (at_capacity, cost): Self::Figures, bar: Self::Bar) -> bool {
        Self::first_word(at_capacity, cost) <= bar
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
        let order = LoadOrder::new(candidates);
        if limit == 0 {
            return Vec::new();
        }
        let Some([first, second]) = Self::picks(candidates.len(), ctx) else {
            return rank_by(&order, candidates, limit);
        };
        let winner = Self::better(
            first,
            order.full_key(&candidates[first]),
            second,
            order.full_key(&candidates[second]),
        );
        rank_after(winner, &order, candidates, limit)
    }

    fn screen(&self, limit: usize) -> Option<Screen> {
        Screen::for_limit(limit, |take| {
            ScreenKind::SmartLoadBalance(LoadScreen {
                rank: StreamingRank::new(LoadOrder::waiting_for_mean(), take),
                unknown: Vec::new(),
                known_latency_sum: 0.0,
                known_latency_count: 0,
            })
        })
    }
}

impl SmartLoadBalance {
    /// Two distinct candidates drawn uniformly among `count`, when there are two.
    fn picks(count: usize, ctx: &mut SelectionContext<'_>) -> Option<[usize; 2]> {
        if count < 2 {
            return None;
        }
        let first = ctx.rng.gen_range(0..count);
        let mut second = ctx.rng.gen_range(0..count - 1);
        if second >= first {
            second += 1;
        }
        Some([first, second])
    }

    /// The cheaper of two picks; equal keys go to the smaller index, as everywhere else.
    fn better<K: Ord>(first: usize, first_key: K, second: usize, second_key: K) -> usize {
        if (first_key, first) > (second_key, second) {
            second
        } else {
            first
        }
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

    /// A generated health code (0, 1, 2) as a status.
    fn health_of(code: u8) -> HealthStatus {
        match code {
            0 => HealthStatus::Healthy,
            1 => HealthStatus::Degraded,
            _ => HealthStatus::Unhealthy,
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
                        priority,
                        weight,
                        health: health_of(health),
                        requests_in_window: requests,
                        in_flight,
                        success_ewma: success,
                        latency_ewma_ms: latency,
                        max_concurrency: max,
                        ..Candidate::new(0, 0, 0)
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

    /// What a strategy's screen ranks for `candidates` offered one at a time (surveyed
    /// first when the screen asks).
    fn screened(
        strategy: &dyn SelectionStrategy,
        candidates: &[Candidate],
        seed: u64,
        cursor: u64,
        limit: usize,
    ) -> Option<Vec<usize>> {
        let mut screen = strategy.screen(limit)?;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut ctx = SelectionContext::new(0, &mut rng, cursor);
        if screen.needs_survey() {
            let mut survey = Survey::default();
            for candidate in candidates {
                survey.offer(candidate);
            }
            assert_eq!(survey.count(), candidates.len());
            screen.begin(&survey);
        }
        for candidate in candidates {
            screen.offer(candidate);
        }
        assert_eq!(screen.offered(), candidates.len());
        Some(screen.finish(&mut ctx, |index| candidates.get(index).cloned()))
    }

    #[test]
    fn every_strategy_but_weighted_screens() {
        let screening: Vec<String> = builtin()
            .iter()
            .filter(|strategy| strategy.screen(2).is_some())
            .map(|strategy| strategy.name().to_owned())
            .collect();
        assert_eq!(
            screening,
            [
                "adaptive",
                "hybrid",
                "least_used",
                "priority_first",
                "round_robin",
                "smart_load_balance"
            ]
        );
        let surveying: Vec<String> = builtin()
            .iter()
            .filter(|strategy| strategy.screen(2).is_some_and(|s| s.needs_survey()))
            .map(|strategy| strategy.name().to_owned())
            .collect();
        assert_eq!(surveying, ["hybrid"]);
        for strategy in builtin() {
            assert!(strategy.screen(0).is_none(), "{}", strategy.name());
            assert!(strategy.screen(STREAMING_TOP_K_MAX + 1).is_none());
        }
        assert!(
            NewestAccountFirst.screen(2).is_none(),
            "a custom strategy ranks whole lists"
        );
    }

    proptest! {
        #[test]
        fn a_screen_ranks_exactly_as_the_strategy_ranks_the_whole_list(
            group in arbitrary_group(),
            wild in proptest::collection::vec(wild_candidate(), 0..6),
            limit in 1usize..=STREAMING_TOP_K_MAX,
            seed in any::<u64>(),
            cursor in any::<u64>(),
        ) {
            let mut group = group;
            let first_wild_id = group.len() as AccountId + 1_000;
            for (offset, mut candidate) in wild.into_iter().enumerate() {
                candidate.account_id = first_wild_id + offset as AccountId;
                group.push(candidate);
            }
            // Round robin's screen takes candidates offered as a group's table holds them, by
            // account id; the other screens rank any order as their strategy does.
            let mut by_id = group.clone();
            by_id.sort_by_key(|candidate| candidate.account_id);
            for strategy in builtin() {
                let group = match strategy.name() {
                    RoundRobin::NAME => &by_id,
                    _ => &group,
                };
                if let Some(screened) = screened(strategy.as_ref(), group, seed, cursor, limit) {
                    let ranked = rank_with(strategy.as_ref(), group, seed, cursor, limit);
                    prop_assert_eq!(screened, ranked, "{}", strategy.name());
                }
            }
        }
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
        fn strategies_that_ignore_running_counts_rank_the_same_without_them(
            group in arbitrary_group(),
            limit in 0usize..30,
            seed in any::<u64>(),
            cursor in any::<u64>(),
        ) {
            // Selection leaves the running count 0 for accounts without a concurrency limit
            // when the strategy says it does not read it.
            let unread: Vec<Candidate> = group
                .iter()
                .map(|candidate| Candidate {
                    in_flight: if candidate.max_concurrency.is_some() {
                        candidate.in_flight
                    } else {
                        0
                    },
                    ..*candidate
                })
                .collect();
            for strategy in builtin().into_iter().filter(|s| !s.reads_in_flight()) {
                prop_assert_eq!(
                    rank_with(strategy.as_ref(), &group, seed, cursor, limit),
                    rank_with(strategy.as_ref(), &unread, seed, cursor, limit),
                    "{}", strategy.name()
                );
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

    /// Any figures at all, garbage included (NaN, infinities, negative and subnormal numbers).
    fn wild_candidate() -> impl Strategy<Value = Candidate> {
        let wild_f64 = prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(-0.0f64),
            Just(0.0f64),
            Just(f64::MIN_POSITIVE / 4.0),
            Just(f64::INFINITY),
            0.0f64..=1.0,
            1.0f64..5_000.0,
        ];
        (
            (
                any::<i64>(),
                -3i32..3,
                any::<i32>(),
                prop_oneof![0u32..3, any::<u32>()],
            ),
            (0u8..3, prop_oneof![0u64..3, any::<u64>()], 0u32..3),
            (wild_f64.clone(), wild_f64, proptest::option::of(0u32..3)),
        )
            .prop_map(
                |(
                    (account_id, small_priority, priority, weight),
                    (health, requests, in_flight),
                    (success, latency, max),
                )| Candidate {
                    account_id: account_id % 4,
                    priority: if priority % 2 == 0 {
                        small_priority
                    } else {
                        priority
                    },
                    weight,
                    health: health_of(health),
                    requests_in_window: requests,
                    in_flight,
                    success_ewma: success,
                    latency_ewma_ms: latency,
                    max_concurrency: max,
                },
            )
    }

    /// The screen may only turn `candidate` away when it orders after `worst_kept`.
    fn screen_is_sound<O: CandidateOrder>(
        order: &O,
        candidate: &Candidate,
        worst_kept: &Candidate,
    ) -> bool {
        order.may_beat(
            order.figures(candidate),
            order.bar(&order.full_key(worst_kept)),
        ) || order.full_key(candidate) > order.full_key(worst_kept)
    }

    proptest! {
        #[test]
        fn ascending_f64_orders_as_total_cmp(a in any::<f64>(), b in any::<f64>()) {
            prop_assert_eq!(f64_from_ascending(ascending_f64(a)).to_bits(), a.to_bits());
            prop_assert_eq!(ascending_f64(a).cmp(&ascending_f64(b)), a.total_cmp(&b));
            prop_assert_eq!(descending_f64(a).cmp(&descending_f64(b)), b.total_cmp(&a));
            prop_assert_eq!(ascending_f64(a).cmp(&ascending_f64(-0.0)), a.total_cmp(&-0.0));
        }

        #[test]
        fn wide_keys_order_word_by_word(
            a in proptest::array::uniform3(0u64..3),
            b in proptest::array::uniform3(0u64..3),
        ) {
            prop_assert_eq!(WideKey(a).cmp(&WideKey(b)), a.cmp(&b));
            prop_assert_eq!(WideKey(a) < WideKey(b), a < b);
            prop_assert_eq!(WideKey(a) <= WideKey(b), a <= b);
            prop_assert_eq!(WideKey(a) > WideKey(b), a > b);
            prop_assert_eq!(WideKey(a) >= WideKey(b), a >= b);
        }

        #[test]
        fn packed_keys_order_as_the_documented_comparisons(
            a in wild_candidate(),
            b in wild_candidate(),
        ) {
            let priority_first = |c: &Candidate| {
                (c.priority, c.health.badness(), c.requests_in_window, c.account_id)
            };
            prop_assert_eq!(
                PriorityFirst.full_key(&a).cmp(&PriorityFirst.full_key(&b)),
                priority_first(&a).cmp(&priority_first(&b))
            );
            let load = |c: &Candidate| c.requests_in_window as f64 * c.health.load_penalty();
            prop_assert_eq!(
                LeastUsed.full_key(&a).cmp(&LeastUsed.full_key(&b)),
                load(&a)
                    .total_cmp(&load(&b))
                    .then(a.health.badness().cmp(&b.health.badness()))
                    .then(a.priority.cmp(&b.priority))
                    .then(a.account_id.cmp(&b.account_id))
            );
            let hybrid = HybridNormaliser::new(
                a.weight.max(b.weight),
                a.requests_in_window.max(b.requests_in_window),
            );
            prop_assert_eq!(
                hybrid.full_key(&a).cmp(&hybrid.full_key(&b)),
                hybrid
                    .score(&b)
                    .total_cmp(&hybrid.score(&a))
                    .then(a.priority.cmp(&b.priority))
                    .then(a.account_id.cmp(&b.account_id))
            );
            prop_assert_eq!(
                Adaptive.full_key(&a).cmp(&Adaptive.full_key(&b)),
                Adaptive::score(&b)
                    .total_cmp(&Adaptive::score(&a))
                    .then(a.requests_in_window.cmp(&b.requests_in_window))
                    .then(a.priority.cmp(&b.priority))
                    .then(a.account_id.cmp(&b.account_id))
            );
            let pair = [a.clone(), b.clone()];
            let load_order = LoadOrder::new(&pair);
            let latency_when_unknown_ms = load_order.latency_when_unknown_ms();
            let cost = |c: &Candidate| SmartLoadBalance::cost(c, latency_when_unknown_ms);
            prop_assert_eq!(
                load_order.full_key(&a).cmp(&load_order.full_key(&b)),
                a.is_at_capacity()
                    .cmp(&b.is_at_capacity())
                    .then(cost(&a).total_cmp(&cost(&b)))
                    .then(a.account_id.cmp(&b.account_id))
            );
        }

        #[test]
        fn screens_only_turn_away_candidates_that_order_after_the_bar(
            candidate in wild_candidate(),
            worst_kept in wild_candidate(),
        ) {
            prop_assert!(screen_is_sound(&PriorityFirst, &candidate, &worst_kept));
            prop_assert!(screen_is_sound(&LeastUsed, &candidate, &worst_kept));
            let hybrid = HybridNormaliser::new(
                candidate.weight.max(worst_kept.weight),
                candidate.requests_in_window.max(worst_kept.requests_in_window),
            );
            prop_assert!(screen_is_sound(&hybrid, &candidate, &worst_kept));
            prop_assert!(screen_is_sound(&Adaptive, &candidate, &worst_kept));
            let pair = [candidate.clone(), worst_kept.clone()];
            prop_assert!(screen_is_sound(&LoadOrder::new(&pair), &candidate, &worst_kept));
        }

        #[test]
        fn adaptive_screen_lets_through_every_score_at_or_above_the_bar(
            (success, latency) in (0.0f64..=1.0, prop_oneof![Just(0.0f64), 1e-9f64..1e12]),
            bar_success in 0.0f64..=1.0,
            bar_latency in prop_oneof![Just(0.0f64), 1e-9f64..1e12],
            nudge in -2i64..=2,
        ) {
            // The candidate's score within a few units in the last place of the bar's: the
            // division-free screen must not turn away a tie or a win.
            let mut worst_kept = Candidate::new(1, 1, 1);
            worst_kept.success_ewma = bar_success;
            worst_kept.latency_ewma_ms = bar_latency;
            let mut candidate = Candidate::new(2, 1, 1);
            candidate.latency_ewma_ms = latency;
            let bar_score = Adaptive::score(&worst_kept);
            // Solve the success rate that gives about the bar's score, then nudge it.
            let wanted = (bar_score * (1.0 + latency / Adaptive::LATENCY_HALVING_MS)).min(1.0);
            let nudged =
                f64::from_bits(wanted.to_bits().saturating_add_signed(nudge)).clamp(0.0, 1.0);
            candidate.success_ewma = if success < 0.5 { nudged } else { success };
            if Adaptive::score(&candidate) >= bar_score {
                let bar = Adaptive.bar(&Adaptive.full_key(&worst_kept));
                prop_assert!(Adaptive.may_beat(Adaptive.figures(&candidate), bar));
            }
        }

        #[test]
        fn weighted_ranks_alike_over_running_sums_and_over_the_tree(
            weights in proptest::collection::vec(0u32..4, 65..200),
            degraded in proptest::collection::vec(any::<bool>(), 200),
            limit in 0usize..=STREAMING_TOP_K_MAX,
            seed in any::<u64>(),
        ) {
            // Healthy and degraded weights (multiples of 1/4) keep every sum exact, so both
            // ways of drawing see the same intervals and make the same draws.
            let group: Vec<Candidate> = weights
                .iter()
                .zip(&degraded)
                .enumerate()
                .map(|(index, (weight, degraded))| {
                    let mut candidate = Candidate::new(index as i64, 1, *weight);
                    if *degraded {
                        candidate.health = HealthStatus::Degraded;
                    }
                    candidate
                })
                .collect();
            let take = limit.min(group.len());
            let mut rng = SmallRng::seed_from_u64(seed);
            let over_running_sums = Weighted::rank_over_running_sums(&group, &mut rng, take);
            let mut rng = SmallRng::seed_from_u64(seed);
            let over_tree = Weighted::rank_over_tree(&group, &mut rng, take);
            prop_assert_eq!(over_running_sums, over_tree);
        }

        #[test]
        fn running_sums_find_agrees_with_a_linear_scan(
            weights in proptest::collection::vec(0u32..5, 1..60),
            drawn_picks in proptest::collection::vec(any::<proptest::sample::Index>(), 0..16),
            point_share in 0.0f64..1.0,
        ) {
            // Integer weights keep every sum exact, so the comparison is exact too.
            let weights: Vec<f64> = weights.into_iter().map(f64::from).collect();
            let mut drawn: Vec<usize> =
                drawn_picks.iter().map(|pick| pick.index(weights.len())).collect();
            drawn.sort_unstable();
            drawn.dedup();
            let sums: Vec<f64> = weights
                .iter()
                .scan(0.0, |total, weight| {
                    *total += weight;
                    Some(*total)
                })
                .collect();
            let block_ends: Vec<f64> =
                sums.chunks_exact(SUM_BLOCK).map(|block| block[SUM_BLOCK - 1]).collect();
            let running_sums = RunningSums { sums: &sums, block_ends: &block_ends };
            let drawn_with_weights: Vec<(usize, f64)> =
                drawn.iter().map(|index| (*index, weights[*index])).collect();
            let remaining: Vec<f64> = weights
                .iter()
                .enumerate()
                .map(|(index, weight)| if drawn.contains(&index) { 0.0 } else { *weight })
                .collect();
            let total: f64 = remaining.iter().sum();
            let point = (point_share * total).floor();
            let mut before = 0.0;
            let mut expected = None;
            for (index, weight) in remaining.iter().enumerate() {
                if point < before + weight {
                    expected = Some(index);
                    break;
                }
                before += weight;
            }
            prop_assert_eq!(running_sums.find(&drawn_with_weights, point), expected);
        }
    }
}

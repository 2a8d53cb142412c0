//! The live view of groups, accounts and API keys that the hot path reads.
//!
//! The store is the source of truth; the registry is rebuilt from it at start and after every
//! admin change, and published with `ArcSwap`, so a request reads one consistent snapshot
//! without locks. What the store does not hold — breaker, health, cooldowns, in-flight counts,
//! round-robin cursors — lives in per-account and per-group runtime objects that survive
//! rebuilds: a rebuild swaps the configuration under them, never their state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use relay_core::breaker::{Admission, GroupBreaker, GroupBreakerSettings};
use relay_core::config::{FallbackConfig, FallbackConfigPatch};
use relay_core::model::{
    Account, AccountId, ApiKey, ApiKeyId, Credential, Group, GroupId, ModelFamily,
};
use relay_core::openai::Refusals;
use relay_core::state::{AccountState, Eligibility, SelectionView};
use relay_core::strategy::{SelectionStrategy, StrategyRegistry};
use relay_core::{FastMap, UnixMillis};

use crate::view::{MemberSettings, Slot, ViewTable};

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the state machines
/// stay internally consistent between calls, so the data is still good.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One upstream account at run time.
#[derive(Debug)]
pub struct AccountRuntime {
    pub id: AccountId,
    account: ArcSwap<Account>,
    /// Changed only through [`AccountRuntime::update_state`] and [`AccountRuntime::try_admit`],
    /// which keep the published view true. Boxed, like `rest`, to keep the runtime small.
    state: Box<Mutex<Locked>>,
    /// Requests running on the account: what its concurrency limit is checked against.
    /// Selection reads the count its group's table keeps beside the view.
    pub in_flight: AtomicU32,
    rest: Box<Rarely>,
}

/// What the account's lock guards: its state, and where selection reads what it publishes.
#[derive(Debug)]
struct Locked {
    state: AccountState,
    slot: Option<ViewSlot>,
}

/// The account's place in its group's table of views ([`GroupRuntime::views`]).
#[derive(Debug)]
struct ViewSlot {
    table: Arc<ViewTable>,
    index: usize,
}

impl Locked {
    /// Where this account's view is published, if it is in a group.
    fn published(&self) -> Option<Slot<'_>> {
        self.slot
            .as_ref()
            .and_then(|slot| slot.table.slot(slot.index))
    }

    fn publish(&self, view: &SelectionView) {
        if let Some(published) = self.published() {
            published.store(view);
        }
    }

    fn move_to(&mut self, slot: Option<ViewSlot>) {
        // Whoever still reads the old table (a request on the previous snapshot) must not
        // trust a view that is no longer kept up to date there.
        let old = self.published();
        if let Some(old) = old {
            old.invalidate();
        }
        // The requests running now end under the new table: they are counted there.
        let new = slot.as_ref().and_then(|slot| slot.table.slot(slot.index));
        if let (Some(old), Some(new)) = (old, new) {
            new.take_running_from(&old);
        }
        self.slot = slot;
    }
}

/// The parts of an account's runtime that requests read once, or not at all.
#[derive(Debug)]
struct Rarely {
    /// Shared with the requests that use it: each takes a reference, not a copy of its text.
    credential: Mutex<Arc<Credential>>,
    /// Held while an OAuth refresh runs: one refresh in flight per account, others wait.
    oauth_refresh: tokio::sync::Mutex<()>,
    /// What an `openai` account's server refused, per model it was asked for (a few): left
    /// out of its requests for that model from then on (until its `base_url` changes).
    refusals: Mutex<Vec<(String, Refusals)>>,
}

impl AccountRuntime {
    fn new(account: Account, credential: Credential, config: &FallbackConfig) -> Self {
        AccountRuntime {
            id: account.id,
            account: ArcSwap::from_pointee(account),

            state: Box::new(Mutex::new(Locked {
                state: AccountState::new(config),
                slot: None,
            })),
            in_flight: AtomicU32::new(0),
            rest: Box::new(Rarely {
                credential: Mutex::new(Arc::new(credential)),
                oauth_refresh: tokio::sync::Mutex::new(()),
                refusals: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn account(&self) -> Arc<Account> {
        self.account.load_full()
    }

    pub fn credential(&self) -> Arc<Credential> {
        Arc::clone(&lock(&self.rest.credential))
    }

    pub fn set_credential(&self, credential: Credential) {
        *lock(&self.rest.credential) = Arc::new(credential);
    }

    /// What the account's server has refused of requests for `model` (see `Rarely`).
    pub fn refusals(&self, model: &str) -> Refusals {
        lock(&self.rest.refusals)
            .iter()
            .find(|(refused_for, _)| refused_for == model)
            .map_or(Refusals::NONE, |(_, refusals)| *refusals)
    }

    /// Notes that the account's server refuses `refusals` for `model`; answers what was not
    /// known yet.
    pub fn note_refusals(&self, model: &str, refusals: Refusals) -> Refusals {
        let mut known = lock(&self.rest.refusals);
        match known
            .iter_mut()
            .find(|(refused_for, _)| refused_for == model)
        {
            Some((_, before)) => {
                let learned = refusals.without(*before);
                *before = before.with(refusals);
                learned
            }
            None => {
                known.push((model.to_owned(), refusals));
                refusals
            }
        }
    }

    /// Held while an OAuth refresh runs: one refresh in flight per account, others wait.
    pub fn oauth_refresh(&self) -> &tokio::sync::Mutex<()> {
        &self.rest.oauth_refresh
    }

    /// Reads the account's fallback state under its lock.
    pub fn read_state<R>(&self, read: impl FnOnce(&AccountState) -> R) -> R {
        read(&lock(&self.state).state)
    }

    /// Changes the account's fallback state under its lock, and publishes what selection
    /// reads of it as of `now`.
    pub fn update_state<R>(
        &self,
        now: UnixMillis,
        change: impl FnOnce(&mut AccountState) -> R,
    ) -> R {
        let mut locked = lock(&self.state);
        let result = change(&mut locked.state);
        if locked.slot.is_some() {
            locked.publish(&locked.state.selection_view(now));
        }
        result
    }

    /// Admits a request for `family` (see [`AccountState::try_admit`]). Only taking a
    /// half-open breaker's trial slot changes the state, so only that publishes a new view.
    pub fn try_admit(
        &self,
        now: UnixMillis,
        family: ModelFamily,
    ) -> Result<Admission, Eligibility> {
        let mut locked = lock(&self.state);
        let admission = locked.state.try_admit(now, family);
        if admission == Ok(Admission::Trial) {
            locked.publish(&locked.state.selection_view(now));
        }
        admission
    }

    /// What selection reads of the account at `now`, taken under the lock and published for
    /// the next reader: for when the published view has lapsed.
    #[cold]
    pub fn refresh_view(&self, now: UnixMillis) -> SelectionView {
        let locked = lock(&self.state);
        let view = locked.state.selection_view(now);
        locked.publish(&view);
        view
    }

    /// Applies a changed configuration; the published view lapses with it.
    fn apply_config(&self, config: &FallbackConfig) {
        let locked = &mut *lock(&self.state);
        locked.state.apply_config(config);
        if let Some(published) = locked.published() {
            published.invalidate();
        }
    }

    fn count_running_in_table(&self, started: bool) {
        if let Some(published) = lock(&self.state).published() {
            published.count_running(started);
        }
    }

    /// Publishes into `slot` of a (new) group table from now on, or nowhere.
    fn move_view(&self, slot: Option<ViewSlot>) {
        lock(&self.state).move_to(slot);
    }

    /// Counts a request as running on this account until the guard drops: in the account,
    /// and in its group's table for the strategies that rank by it (under the account's lock,
    /// so that a rebuild that moves the account to a new table carries the count over).
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.count_running_in_table(true);
        InFlightGuard {
            account: Arc::clone(self),
        }
    }
}

#[derive(Debug)]
pub struct InFlightGuard {
    account: Arc<AccountRuntime>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.account.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.account.count_running_in_table(false);
    }
}

/// A group at run time: its effective config, its strategy and its accounts.
#[derive(Debug)]
pub struct GroupRuntime {
    pub group: Group,
    pub config: Arc<FallbackConfig>,
    pub strategy: Arc<dyn SelectionStrategy>,
    /// Enabled and disabled accounts alike, sorted by id (eligibility is decided per request),
    /// with what selection reads of their settings laid out side by side.
    pub members: Vec<Member>,
    /// What selection reads of the members, in the same order: each one's settings, and the
    /// view of its state that the account publishes into its slot here whenever the state
    /// changes, so a request reads one contiguous table (half a cache line per member) instead of
    /// visiting every account.
    pub views: Arc<ViewTable>,
    pub breaker: Arc<Mutex<GroupBreaker>>,
    pub cursor: Arc<AtomicU64>,
}

/// One account of a group as selection reads it: its settings as of the snapshot (a change
/// to an account rebuilds the snapshot), beside its runtime.
#[derive(Debug)]
pub struct Member {
    pub runtime: Arc<AccountRuntime>,
    pub id: AccountId,
    pub enabled: bool,
    pub priority: i32,
    pub weight: u32,
    pub max_concurrency: Option<u32>,
    /// `None` when every model is allowed.
    model_allowlist: Option<Box<[String]>>,
}

impl Member {
    pub fn new(runtime: Arc<AccountRuntime>) -> Self {
        let account = runtime.account();
        Member {
            id: account.id,
            enabled: account.enabled,
            priority: account.priority,
            weight: account.weight,
            max_concurrency: account.max_concurrency,
            model_allowlist: (!account.model_allowlist.is_empty())
                .then(|| account.model_allowlist.clone().into_boxed_slice()),
            runtime,
        }
    }

    /// What selection reads of the member beside its view, in its group's table.
    pub fn settings(&self) -> MemberSettings {
        MemberSettings {
            account_id: self.id,
            priority: self.priority,
            weight: self.weight,
            read_member: !self.enabled
                || self.model_allowlist.is_some()
                || self.max_concurrency.is_some(),
        }
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.model_allowlist
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }
}

/// Per-key counters that the store does not hold in real time.
#[derive(Debug, Default)]
pub struct KeyRuntime {
    pub limits: Mutex<KeyLimits>,
}

#[derive(Debug, Default)]
pub struct KeyLimits {
    /// UTC day number the cost below belongs to, and whether it was seeded from the store.
    pub cost_day: i64,
    pub cost_seeded: bool,
    pub cost_today_usd: f64,
    /// `rpm_limit`'s counts: the requests of the UTC `minute` (minutes since the epoch) and
    /// of the minute before it (see [`KeyLimits::admit_request`]).
    pub minute: i64,
    pub requests_this_minute: u32,
    pub requests_previous_minute: u32,
}

/// One minute in milliseconds: `rpm_limit`'s window.
pub const MINUTE_MS: i64 = 60_000;

impl KeyLimits {
    /// Moves the request counts on to `minute` if it is later: the count of the minute just
    /// before it is kept, an older one is forgotten.
    pub fn roll_to_minute(&mut self, minute: i64) {
        if minute <= self.minute {
            return;
        }
        self.requests_previous_minute = if minute == self.minute + 1 {
            self.requests_this_minute
        } else {
            0
        };
        self.minute = minute;
        self.requests_this_minute = 0;
    }

    /// Counts a request at `now` against `rpm` requests per minute, over a sliding minute:
    /// this minute's requests plus the previous minute's, weighted by the share of that
    /// minute still within the last sixty seconds (the sliding-window counter, as in
    /// Cloudflare's rate limiting). A fixed window would let a client send twice the limit
    /// within a second across a minute's boundary. When the request may not go, the answer
    /// is how long until it may (in ms), if no other request comes meanwhile.
    pub fn admit_request(&mut self, now: UnixMillis, rpm: u32) -> Result<(), i64> {
        self.roll_to_minute(now.div_euclid(MINUTE_MS));
        // A clock behind the window (another instance's minute) counts as its start.
        let elapsed = (now - self.minute * MINUTE_MS).clamp(0, MINUTE_MS);
        let previous = f64::from(self.requests_previous_minute);
        let current = f64::from(self.requests_this_minute);
        let limit = f64::from(rpm);
        let still_counted = (MINUTE_MS - elapsed) as f64 / MINUTE_MS as f64;
        if previous * still_counted + current < limit {
            self.requests_this_minute = self.requests_this_minute.saturating_add(1);
            return Ok(());
        }
        // When the previous minute's weight has fallen far enough (this minute), or else
        // when this minute's count, become the previous, has (the next one).
        // The weight must fall below a share of the minute: strictly past that point.
        let past = |share: f64| (MINUTE_MS as f64 * share).floor() as i64 + 1;
        let wait_ms = if current < limit {
            past(1.0 - (limit - current) / previous) - elapsed
        } else {
            let share = if current > 0.0 {
                1.0 - limit / current
            } else {
                0.0
            };
            MINUTE_MS - elapsed + past(share)
        };
        Err(wait_ms.max(1))
    }
}

#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    pub groups: FastMap<GroupId, Arc<GroupRuntime>>,
    pub accounts: FastMap<AccountId, Arc<AccountRuntime>>,
    pub keys_by_hash: FastMap<String, Arc<ApiKey>>,
    pub key_runtime: FastMap<ApiKeyId, Arc<KeyRuntime>>,
}

/// Everything needed to build a snapshot, as read from the store.
#[derive(Debug, Default)]
pub struct RegistrySource {
    pub groups: Vec<Group>,
    pub accounts: Vec<(Account, Credential)>,
    pub keys: Vec<ApiKey>,
}

pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Builds the effective config of a group: the global config with the group's overrides.
/// An override that no longer validates (say, a strategy that was unregistered) is ignored
/// field by field rather than taking the group down.
pub fn effective_config(
    global: &FallbackConfig,
    group: &Group,
    strategies: &StrategyRegistry,
) -> FallbackConfig {
    if group.fallback.is_null() {
        return global.clone();
    }
    let is_known = |name: &str| strategies.contains(name);
    match serde_json::from_value::<FallbackConfigPatch>(group.fallback.clone()) {
        Ok(patch) => match global.apply_patch(&patch, &is_known) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(group_id = group.id, %error, "group override ignored");
                global.clone()
            }
        },
        Err(error) => {
            tracing::warn!(group_id = group.id, %error, "group override unreadable, ignored");
            global.clone()
        }
    }
}

/// The registry: a published snapshot plus the rebuild logic.
#[derive(Debug)]
pub struct Registry {
    snapshot: ArcSwap<RegistrySnapshot>,
    /// Serialises rebuilds so two admin changes never interleave their swaps.
    rebuild_lock: Mutex<()>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            snapshot: ArcSwap::from_pointee(RegistrySnapshot::default()),
            rebuild_lock: Mutex::new(()),
        }
    }
}

impl Registry {
    pub fn load(&self) -> arc_swap::Guard<Arc<RegistrySnapshot>> {
        self.snapshot.load()
    }

    pub fn load_full(&self) -> Arc<RegistrySnapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a new snapshot built from `source`, keeping the runtime state of accounts,
    /// groups and keys that still exist.
    pub fn rebuild(
        &self,
        source: RegistrySource,
        global: &FallbackConfig,
        strategies: &StrategyRegistry,
    ) {
        let _serialised = lock(&self.rebuild_lock);
        let previous = self.snapshot.load_full();

        let mut accounts: FastMap<AccountId, Arc<AccountRuntime>> = FastMap::default();
        let mut group_configs: HashMap<GroupId, FallbackConfig> = HashMap::new();
        for group in &source.groups {
            group_configs.insert(group.id, effective_config(global, group, strategies));
        }
        for (account, credential) in source.accounts {
            let config = group_configs
                .get(&account.group_id)
                .cloned()
                .unwrap_or_else(|| global.clone());
            let runtime = match previous.accounts.get(&account.id) {
                Some(existing) => {
                    if existing.account.load().base_url != account.base_url {
                        // Another server: what the old one refused says nothing about it.
                        lock(&existing.rest.refusals).clear();
                    }
                    existing.account.store(Arc::new(account));
                    existing.set_credential(credential);
                    existing.apply_config(&config);
                    Arc::clone(existing)
                }
                None => Arc::new(AccountRuntime::new(account, credential, &config)),
            };
            accounts.insert(runtime.id, runtime);
        }

        let mut groups = FastMap::default();
        let mut in_a_group = HashSet::new();
        for group in source.groups {
            let config = group_configs
                .remove(&group.id)
                .unwrap_or_else(|| global.clone());
            let strategy = strategies
                .get(&config.strategy)
                .or_else(|| strategies.get("priority_first"));
            let Some(strategy) = strategy else {
                tracing::error!(group_id = group.id, "no selection strategy registered");
                continue;
            };
            let mut members: Vec<Arc<AccountRuntime>> = accounts
                .values()
                .filter(|a| a.account().group_id == group.id)
                .cloned()
                .collect();
            members.sort_by_key(|a| a.id);
            let members: Vec<Member> = members.into_iter().map(Member::new).collect();
            let views = Arc::new(ViewTable::new(members.iter().map(Member::settings)));
            for (index, member) in members.iter().enumerate() {
                member.runtime.move_view(Some(ViewSlot {
                    table: Arc::clone(&views),
                    index,
                }));
                in_a_group.insert(member.id);
            }
            let (breaker, cursor) = match previous.groups.get(&group.id) {
                Some(existing) => {
                    lock(&existing.breaker)
                        .set_settings(GroupBreakerSettings::from_config(&config));
                    (Arc::clone(&existing.breaker), Arc::clone(&existing.cursor))
                }
                None => (
                    Arc::new(Mutex::new(GroupBreaker::new(
                        GroupBreakerSettings::from_config(&config),
                    ))),
                    Arc::new(AtomicU64::new(0)),
                ),
            };
            groups.insert(
                group.id,
                Arc::new(GroupRuntime {
                    group,
                    config: Arc::new(config),
                    strategy,
                    members,
                    views,
                    breaker,
                    cursor,
                }),
            );
        }

        for runtime in accounts.values() {
            if !in_a_group.contains(&runtime.id) {
                runtime.move_view(None);
            }
        }

        let mut keys_by_hash = FastMap::default();
        let mut key_runtime = FastMap::default();
        for key in source.keys {
            let runtime = previous
                .key_runtime
                .get(&key.id)
                .cloned()
                .unwrap_or_default();
            key_runtime.insert(key.id, runtime);
            keys_by_hash.insert(key.key_hash.clone(), Arc::new(key));
        }

        self.snapshot.store(Arc::new(RegistrySnapshot {
            groups,
            accounts,
            keys_by_hash,
            key_runtime,
        }));
    }
}

#[cfg(test)]
mod key_limit_tests {
    use super::*;

    const M: i64 = 1_000 * MINUTE_MS;

    #[test]
    fn a_quiet_key_gets_its_whole_limit_and_waits_for_the_next_minute_after() {
        let mut limits = KeyLimits::default();
        for _ in 0..3 {
            assert_eq!(limits.admit_request(M + 10_000, 3), Ok(()));
        }
        // The fourth in the same minute: the next minute starts in 50 s, where this minute's
        // three weigh 3 at its first instant and less right after.
        assert_eq!(limits.admit_request(M + 10_000, 3), Err(50_001));
        assert_eq!(limits.admit_request(M + MINUTE_MS, 3), Err(1));
        assert_eq!(limits.admit_request(M + MINUTE_MS + 1, 3), Ok(()));
        // Two minutes after the last request nothing is left of any.
        assert_eq!(limits.admit_request(M + 3 * MINUTE_MS + 1, 3), Ok(()));
        assert_eq!(limits.requests_previous_minute, 0);
        assert_eq!(limits.requests_this_minute, 1);
    }

    #[test]
    fn a_burst_across_a_minute_boundary_counts_against_one_limit() {
        let mut limits = KeyLimits::default();
        for _ in 0..10 {
            assert_eq!(limits.admit_request(M + 59_000, 10), Ok(()));
        }
        // Half a second into the next minute the previous minute's ten still weigh 9.92:
        // one more request fits, the next does not (a fixed window would take ten).
        assert_eq!(limits.admit_request(M + MINUTE_MS + 500, 10), Ok(()));
        // 10 · (1 − f) + 1 < 10 once f > 0.1, 6 s into the minute: 5.5 s from now.
        assert_eq!(limits.admit_request(M + MINUTE_MS + 500, 10), Err(5_500));
        assert_eq!(limits.admit_request(M + MINUTE_MS + 5_999, 10), Err(1));
        assert_eq!(limits.admit_request(M + MINUTE_MS + 6_000, 10), Err(1));
        assert_eq!(limits.admit_request(M + MINUTE_MS + 6_001, 10), Ok(()));
        assert_eq!(limits.requests_this_minute, 2);
        assert_eq!(limits.requests_previous_minute, 10);
    }

    #[test]
    fn counts_never_move_back_to_an_earlier_minute() {
        let mut limits = KeyLimits::default();
        limits.roll_to_minute(M / MINUTE_MS + 1);
        limits.requests_this_minute = 2;
        // A clock a little behind the window counts as the window's start.
        assert_eq!(limits.admit_request(M + 59_999, 3), Ok(()));
        assert_eq!(limits.minute, M / MINUTE_MS + 1);
        assert_eq!(limits.admit_request(M + 59_999, 3), Err(MINUTE_MS + 1));
        // A limit of 0 admits nothing and never divides by zero.
        assert!(KeyLimits::default().admit_request(M, 0).is_err());
    }
}

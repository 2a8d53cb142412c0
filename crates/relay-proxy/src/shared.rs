//! The boundary to state shared between relay instances (cluster mode).
//!
//! The data plane reports what other instances must know through `SharedState` — every call
//! is fire-and-forget and must return at once: the hot path never waits for Redis. A cluster
//! adapter (the `relay-shared` crate) implements it and, in the other direction, applies what
//! other instances published through the `apply_*` methods of `RelayState` below.
//! A single instance uses `LocalOnly`, which does nothing.

use std::fmt::Debug;
use std::sync::Arc;

use relay_core::breaker::{BreakerPhase, GroupBreaker, GroupBreakerSettings};
use relay_core::model::{AccountId, ApiKeyId, GroupId};
use relay_core::state::PersistedAccountState;
use relay_core::UnixMillis;
use serde::{Deserialize, Serialize};

use crate::registry::lock;
use crate::state::RelayState;

/// A group breaker's phase as other instances see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedGroupBreaker {
    pub phase: BreakerPhase,
    pub open_until: Option<UnixMillis>,
    pub consecutive_opens: u32,
}

/// What changed in the store, for other instances to re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadKind {
    /// Groups, accounts or API keys.
    Resources,
    /// The fallback configuration (a `PUT /api/v1/admin/fallback/config`).
    FallbackConfig,
}

pub trait SharedState: Send + Sync + Debug {
    /// An account's shared state changed: disabled or enabled, a cooldown, a breaker phase.
    fn account_changed(&self, account_id: AccountId, state: PersistedAccountState);
    /// A group breaker changed phase.
    fn group_breaker_changed(&self, group_id: GroupId, breaker: SharedGroupBreaker);
    /// A session was bound to an account (first time, or rebound elsewhere).
    fn session_bound(&self, session_key: &str, account_id: AccountId);
    /// A key spent money or made a request (for cluster-wide daily cost and rpm limits).
    fn key_used(&self, key_id: ApiKeyId, cost_usd: f64, requests: u32, at: UnixMillis);
    /// Something in the store changed that other instances must re-read.
    fn reload(&self, kind: ReloadKind);
}

/// A single instance: nothing is shared.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalOnly;

impl SharedState for LocalOnly {
    fn account_changed(&self, _: AccountId, _: PersistedAccountState) {}
    fn group_breaker_changed(&self, _: GroupId, _: SharedGroupBreaker) {}
    fn session_bound(&self, _: &str, _: AccountId) {}
    fn key_used(&self, _: ApiKeyId, _: f64, _: u32, _: UnixMillis) {}
    fn reload(&self, _: ReloadKind) {}
}

impl RelayState {
    /// The cluster adapter, or `LocalOnly`.
    pub fn shared(&self) -> &Arc<dyn SharedState> {
        self.shared.get().unwrap_or(&self.local_only)
    }

    /// Installs the cluster adapter (once, at start).
    pub fn set_shared(&self, shared: Arc<dyn SharedState>) {
        if self.shared.set(shared).is_err() {
            tracing::warn!("the shared-state adapter was already installed");
        }
    }

    /// Publishes an account's current shared state.
    pub fn publish_account(&self, account_id: AccountId) {
        if self.shared.get().is_none() {
            return;
        }
        let snapshot = self.registry.load();
        if let Some(runtime) = snapshot.accounts.get(&account_id) {
            let persisted = runtime.read_state(|state| state.persisted(self.now()));
            self.shared().account_changed(account_id, persisted);
        }
    }

    /// Publishes a group breaker's current phase.
    pub fn publish_group_breaker(&self, group_id: GroupId) {
        if self.shared.get().is_none() {
            return;
        }
        let snapshot = self.registry.load();
        if let Some(group) = snapshot.groups.get(&group_id) {
            let now = self.now();
            let breaker = lock(&group.breaker);
            let shared = SharedGroupBreaker {
                phase: breaker.phase(now),
                open_until: breaker.open_until(),
                consecutive_opens: breaker.consecutive_opens(),
            };
            drop(breaker);
            self.shared().group_breaker_changed(group_id, shared);
        }
    }

    /// Applies another instance's view of an account.
    pub fn apply_shared_account(&self, account_id: AccountId, shared: &PersistedAccountState) {
        let snapshot = self.registry.load();
        let Some(runtime) = snapshot.accounts.get(&account_id) else {
            return;
        };
        let config = snapshot
            .groups
            .get(&runtime.account().group_id)
            .map(|g| Arc::clone(&g.config))
            .unwrap_or_else(|| self.global_config());
        let now = self.now();
        runtime.update_state(now, |state| state.apply_shared(&config, shared, now));
    }

    /// Applies another instance's view of a group breaker.
    pub fn apply_shared_group_breaker(&self, group_id: GroupId, shared: &SharedGroupBreaker) {
        let snapshot = self.registry.load();
        let Some(group) = snapshot.groups.get(&group_id) else {
            return;
        };
        let now = self.now();
        let mut breaker = lock(&group.breaker);
        if breaker.phase(now) != shared.phase {
            *breaker = GroupBreaker::restore(
                GroupBreakerSettings::from_config(&group.config),
                shared.phase,
                shared.open_until,
                shared.consecutive_opens,
            );
        }
    }

    /// Applies a session binding made on another instance.
    pub fn apply_shared_session(&self, session_key: &str, account_id: AccountId) {
        let _ = self.sticky.bind(session_key, account_id, self.now());
    }

    /// Applies cluster-wide totals of a key's spending today (UTC `day`) and requests in
    /// `minute` (this one or the one before), as counted in the shared store. Local figures
    /// only ever go up.
    pub fn apply_shared_key_usage(
        &self,
        key_id: ApiKeyId,
        day: i64,
        cost_today_usd: f64,
        minute: i64,
        requests_this_minute: u32,
    ) {
        let snapshot = self.registry.load();
        let Some(runtime) = snapshot.key_runtime.get(&key_id) else {
            return;
        };
        let mut limits = lock(&runtime.limits);
        if limits.cost_day == day && limits.cost_seeded {
            limits.cost_today_usd = limits.cost_today_usd.max(cost_today_usd);
        } else if limits.cost_day < day {
            limits.cost_day = day;
            limits.cost_seeded = true;
            limits.cost_today_usd = cost_today_usd;
        }
        limits.roll_to_minute(minute);
        if limits.minute == minute {
            limits.requests_this_minute = limits.requests_this_minute.max(requests_this_minute);
        } else if limits.minute == minute + 1 {
            // The cluster's count of the minute this instance has just left.
            limits.requests_previous_minute =
                limits.requests_previous_minute.max(requests_this_minute);
        }
    }
}

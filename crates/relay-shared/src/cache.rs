//! The newest known state of each account and group breaker, with its stamp.
//!
//! It decides which of two views is newer (the higher stamp), gives local changes a stamp
//! above anything seen for that account, and is what an instance republishes after an outage.

use std::collections::HashMap;
use std::sync::Mutex;

use relay_core::model::{AccountId, GroupId};
use relay_core::state::PersistedAccountState;
use relay_core::UnixMillis;
use relay_proxy::registry::lock;
use relay_proxy::shared::SharedGroupBreaker;

#[derive(Debug, Default)]
pub struct StampCache {
    accounts: Mutex<HashMap<AccountId, (UnixMillis, PersistedAccountState)>>,
    groups: Mutex<HashMap<GroupId, (UnixMillis, SharedGroupBreaker)>>,
}

impl StampCache {
    /// Records a change made on this instance and returns its stamp: `now`, or one more than
    /// the newest stamp known for the account, so a local change always supersedes what this
    /// instance has seen (even from an instance whose clock runs ahead).
    pub fn stamp_local_account(
        &self,
        account_id: AccountId,
        state: &PersistedAccountState,
        now: UnixMillis,
    ) -> UnixMillis {
        stamp_local(&self.accounts, account_id, state, now)
    }

    pub fn stamp_local_group(
        &self,
        group_id: GroupId,
        breaker: &SharedGroupBreaker,
        now: UnixMillis,
    ) -> UnixMillis {
        stamp_local(&self.groups, group_id, breaker, now)
    }

    /// Records another instance's view when it is newer than what is known; true when it is
    /// (and so must be applied).
    pub fn accept_remote_account(
        &self,
        account_id: AccountId,
        stamp: UnixMillis,
        state: &PersistedAccountState,
    ) -> bool {
        accept_remote(&self.accounts, account_id, stamp, state)
    }

    pub fn accept_remote_group(
        &self,
        group_id: GroupId,
        stamp: UnixMillis,
        breaker: &SharedGroupBreaker,
    ) -> bool {
        accept_remote(&self.groups, group_id, stamp, breaker)
    }

    /// Every known account state with its stamp (republished after an outage).
    pub fn accounts(&self) -> Vec<(AccountId, UnixMillis, PersistedAccountState)> {
        lock(&self.accounts)
            .iter()
            .map(|(id, (stamp, state))| (*id, *stamp, state.clone()))
            .collect()
    }

    pub fn groups(&self) -> Vec<(GroupId, UnixMillis, SharedGroupBreaker)> {
        lock(&self.groups)
            .iter()
            .map(|(id, (stamp, breaker))| (*id, *stamp, *breaker))
            .collect()
    }
}

fn stamp_local<T: Clone>(
    map: &Mutex<HashMap<i64, (UnixMillis, T)>>,
    id: i64,
    value: &T,
    now: UnixMillis,
) -> UnixMillis {
    let mut map = lock(map);
    let stamp = match map.get(&id) {
        Some((known, _)) if *known >= now => known.saturating_add(1),
        _ => now,
    };
    map.insert(id, (stamp, value.clone()));
    stamp
}

fn accept_remote<T: Clone>(
    map: &Mutex<HashMap<i64, (UnixMillis, T)>>,
    id: i64,
    stamp: UnixMillis,
    value: &T,
) -> bool {
    let mut map = lock(map);
    if map.get(&id).is_some_and(|(known, _)| *known >= stamp) {
        return false;
    }
    map.insert(id, (stamp, value.clone()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disabled() -> PersistedAccountState {
        PersistedAccountState {
            disable_reason: Some(relay_core::state::DisableReason::Manual),
            ..Default::default()
        }
    }

    #[test]
    fn newer_remote_views_win_and_older_ones_are_ignored() {
        let cache = StampCache::default();
        assert!(cache.accept_remote_account(1, 100, &disabled()));
        assert!(!cache.accept_remote_account(1, 100, &PersistedAccountState::default()));
        assert!(!cache.accept_remote_account(1, 50, &PersistedAccountState::default()));
        assert!(cache.accept_remote_account(1, 101, &PersistedAccountState::default()));
        assert_eq!(
            cache.accounts(),
            vec![(1, 101, PersistedAccountState::default())]
        );
    }

    #[test]
    fn a_local_change_is_stamped_above_everything_seen() {
        let cache = StampCache::default();
        assert_eq!(cache.stamp_local_account(1, &disabled(), 10), 10);
        // Another instance's clock runs ahead.
        assert!(cache.accept_remote_account(1, 500, &PersistedAccountState::default()));
        assert_eq!(cache.stamp_local_account(1, &disabled(), 20), 501);
        // Two changes in the same millisecond still order.
        assert_eq!(cache.stamp_local_account(1, &disabled(), 20), 502);
        // The local change is what a replay of the older remote view loses against.
        assert!(!cache.accept_remote_account(1, 500, &PersistedAccountState::default()));
        assert_eq!(cache.stamp_local_account(2, &disabled(), 7), 7);
    }
}

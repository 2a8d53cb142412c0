//! Key names and expiries in Redis. Every key lives under `relay:` so the relay can share a
//! Redis with other applications, and every key that describes something temporary expires.

use relay_core::model::{AccountId, ApiKeyId, GroupId};
use relay_core::state::PersistedAccountState;
use relay_core::UnixMillis;

use relay_proxy::shared::SharedGroupBreaker;

/// The one pub/sub channel every instance publishes its changes on.
pub const EVENTS_CHANNEL: &str = "relay:events";
/// The pattern matching every account state key (read on resynchronisation).
pub const ACCOUNT_PATTERN: &str = "relay:acct:*";
/// The pattern matching every group breaker key (read on resynchronisation).
pub const GROUP_PATTERN: &str = "relay:group:*";

const ACCOUNT_PREFIX: &str = "relay:acct:";
const GROUP_PREFIX: &str = "relay:group:";

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// How long a state is kept after the latest time it names: long enough for an instance that
/// was away briefly to learn that a cooldown or disable has ended, short enough not to pile up.
const STATE_GRACE_MS: i64 = 60 * 60 * 1000;
/// Sticky bindings live as long as an idle session is remembered locally (one hour).
pub const SESSION_TTL_SECS: u64 = 60 * 60;
/// A day's cost total is read during that day only; two days covers any clock skew.
pub const COST_TTL_MS: i64 = 2 * DAY_MS;
/// A minute's request count is read during that minute only; two minutes covers clock skew.
pub const RPM_TTL_SECS: u64 = 120;

pub fn account_key(account_id: AccountId) -> String {
    format!("{ACCOUNT_PREFIX}{account_id}")
}

pub fn group_key(group_id: GroupId) -> String {
    format!("{GROUP_PREFIX}{group_id}")
}

pub fn session_key(session: &str) -> String {
    format!("relay:sess:{session}")
}

pub fn cost_key(key_id: ApiKeyId, day: i64) -> String {
    format!("relay:key:{key_id}:cost:{day}")
}

pub fn rpm_key(key_id: ApiKeyId, minute: i64) -> String {
    format!("relay:key:{key_id}:rpm:{minute}")
}

/// The account id named by an account state key, if it is one.
pub fn account_id_of(key: &str) -> Option<AccountId> {
    key.strip_prefix(ACCOUNT_PREFIX)?.parse().ok()
}

/// The group id named by a group breaker key, if it is one.
pub fn group_id_of(key: &str) -> Option<GroupId> {
    key.strip_prefix(GROUP_PREFIX)?.parse().ok()
}

/// How long an account's state key lives, in milliseconds; `None` when it must not expire
/// (an operator's disable without an end holds until someone enables the account).
pub fn account_ttl_ms(state: &PersistedAccountState, now: UnixMillis) -> Option<i64> {
    if state.disable_reason.is_some() && state.disabled_until.is_none() {
        return None;
    }
    let latest = [
        state.disabled_until,
        state.account_cooldown_until,
        state.breaker_open_until,
    ]
    .into_iter()
    .flatten()
    .chain(state.family_cooldowns.iter().map(|cooldown| cooldown.until))
    .max();
    Some(ttl_after(latest, now))
}

/// How long a group breaker's key lives, in milliseconds.
pub fn group_ttl_ms(breaker: &SharedGroupBreaker, now: UnixMillis) -> i64 {
    ttl_after(breaker.open_until, now)
}

fn ttl_after(latest: Option<UnixMillis>, now: UnixMillis) -> i64 {
    latest
        .map(|until| until.saturating_sub(now).max(0))
        .unwrap_or(0)
        .saturating_add(STATE_GRACE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::breaker::BreakerPhase;
    use relay_core::model::ModelFamily;
    use relay_core::state::{DisableReason, FamilyCooldown};

    #[test]
    fn keys_are_namespaced_and_round_trip() {
        assert_eq!(account_key(7), "relay:acct:7");
        assert_eq!(group_key(3), "relay:group:3");
        assert_eq!(account_id_of(&account_key(42)), Some(42));
        assert_eq!(group_id_of(&group_key(9)), Some(9));
        assert_eq!(account_id_of("relay:group:1"), None);
        assert_eq!(account_id_of("relay:acct:x"), None);
        assert_eq!(session_key("s-1"), "relay:sess:s-1");
        assert_eq!(cost_key(5, 20_000), "relay:key:5:cost:20000");
        assert_eq!(rpm_key(5, 99), "relay:key:5:rpm:99");
    }

    #[test]
    fn account_ttl_follows_the_latest_time_it_names() {
        let now = 1_000_000;
        let state = PersistedAccountState {
            account_cooldown_until: Some(now + 5_000),
            family_cooldowns: vec![FamilyCooldown {
                family: ModelFamily::Opus,
                until: now + 90_000,
            }],
            ..Default::default()
        };
        assert_eq!(account_ttl_ms(&state, now), Some(90_000 + STATE_GRACE_MS));
        assert_eq!(
            account_ttl_ms(&PersistedAccountState::default(), now),
            Some(STATE_GRACE_MS)
        );
        let past = PersistedAccountState {
            breaker_open_until: Some(now - 10),
            ..Default::default()
        };
        assert_eq!(account_ttl_ms(&past, now), Some(STATE_GRACE_MS));
    }

    #[test]
    fn an_open_ended_disable_never_expires() {
        let state = PersistedAccountState {
            disable_reason: Some(DisableReason::Manual),
            ..Default::default()
        };
        assert_eq!(account_ttl_ms(&state, 0), None);
        let timed = PersistedAccountState {
            disable_reason: Some(DisableReason::Manual),
            disabled_until: Some(60_000),
            ..Default::default()
        };
        assert_eq!(account_ttl_ms(&timed, 0), Some(60_000 + STATE_GRACE_MS));
    }

    #[test]
    fn group_ttl_follows_open_until() {
        let breaker = SharedGroupBreaker {
            phase: BreakerPhase::Open,
            open_until: Some(30_000),
            consecutive_opens: 1,
        };
        assert_eq!(group_ttl_ms(&breaker, 10_000), 20_000 + STATE_GRACE_MS);
    }
}

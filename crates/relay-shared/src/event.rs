//! What instances tell each other on the `relay:events` channel.

use relay_core::model::{AccountId, ApiKeyId, GroupId};
use relay_core::state::PersistedAccountState;
use relay_core::UnixMillis;
use relay_proxy::shared::{ReloadKind, SharedGroupBreaker};
use serde::{Deserialize, Serialize};

/// One message on the channel: the event and the instance that sent it, so each instance
/// skips its own echoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub origin: String,
    pub event: Event,
}

/// A change another instance must apply.
///
/// Account and group states carry a `stamp` (milliseconds, monotonic per account or group on
/// the instance that made the change): the newest stamp wins everywhere, so a replay after an
/// outage never undoes a later change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Account {
        account_id: AccountId,
        stamp: UnixMillis,
        state: PersistedAccountState,
    },
    GroupBreaker {
        group_id: GroupId,
        stamp: UnixMillis,
        breaker: SharedGroupBreaker,
    },
    Session {
        session_key: String,
        account_id: AccountId,
    },
    /// Cluster totals of a key's usage, as counted in Redis right after the sender's update.
    KeyUsage {
        key_id: ApiKeyId,
        day: i64,
        cost_today_usd: f64,
        minute: i64,
        requests_this_minute: u32,
    },
    Reload {
        what: ReloadKind,
    },
}

impl Envelope {
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail; an empty message is ignored.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(payload: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// The start of a key-usage envelope, up to the cost total. The Lua script appends the totals
/// it counted (see `writer::KEY_USAGE_SCRIPT`), so the event carries cluster figures without a
/// second round trip.
pub fn key_usage_prefix(origin: &str, key_id: ApiKeyId, day: i64, minute: i64) -> String {
    let origin = serde_json::to_string(origin).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        r#"{{"origin":{origin},"event":{{"kind":"key_usage","key_id":{key_id},"day":{day},"minute":{minute},"cost_today_usd":"#
    )
}

/// What the Lua script puts between the cost total and the request count.
pub const KEY_USAGE_MIDDLE: &str = r#","requests_this_minute":"#;
/// What closes a key-usage envelope.
pub const KEY_USAGE_SUFFIX: &str = "}}";

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::breaker::BreakerPhase;

    #[test]
    fn envelopes_round_trip() {
        let events = [
            Event::Account {
                account_id: 3,
                stamp: 1_700_000_000_000,
                state: PersistedAccountState {
                    breaker_phase: Some(BreakerPhase::Open),
                    breaker_open_until: Some(1_700_000_060_000),
                    breaker_consecutive_opens: 1,
                    ..Default::default()
                },
            },
            Event::GroupBreaker {
                group_id: 1,
                stamp: 5,
                breaker: SharedGroupBreaker {
                    phase: BreakerPhase::Open,
                    open_until: Some(10),
                    consecutive_opens: 2,
                },
            },
            Event::Session {
                session_key: "s".to_owned(),
                account_id: 4,
            },
            Event::Reload {
                what: ReloadKind::FallbackConfig,
            },
        ];
        for event in events {
            let envelope = Envelope {
                origin: "me".to_owned(),
                event,
            };
            let parsed = Envelope::parse(envelope.to_json().as_bytes()).unwrap();
            assert_eq!(parsed, envelope);
        }
    }

    #[test]
    fn the_key_usage_text_the_script_builds_parses() {
        // What the script produces: prefix, INCRBYFLOAT's reply, middle, INCRBY's reply, suffix.
        let text = format!(
            "{}{}{}{}{}",
            key_usage_prefix("inst\"1", 9, 20_000, 1_728_000),
            "12.5",
            KEY_USAGE_MIDDLE,
            "3",
            KEY_USAGE_SUFFIX
        );
        let parsed = Envelope::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.origin, "inst\"1");
        assert_eq!(
            parsed.event,
            Event::KeyUsage {
                key_id: 9,
                day: 20_000,
                cost_today_usd: 12.5,
                minute: 1_728_000,
                requests_this_minute: 3,
            }
        );
    }
}

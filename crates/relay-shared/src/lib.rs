//! The shared-state adapter (Redis): in cluster mode (`REDIS_URL`), relay instances share
//! account states (breakers, cooldowns, disables), group breakers, sticky-session bindings,
//! per-key usage (daily cost, requests per minute) and config changes.
//!
//! The invariant: the hot path never awaits Redis. Every `SharedState` call stamps the change
//! and pushes it onto an unbounded channel; a writer task applies the queue to Redis (atomic
//! Lua scripts: stamp check, write, expiry, publish) and a subscriber task applies what other
//! instances publish on `relay:events`. Decisions are always taken from the local state.
//!
//! Conflicts: account and group states carry a stamp; the newest wins in Redis and on every
//! instance, so replaying queued changes after an outage never undoes a later change.
//!
//! Outage: both tasks catch every error, log one warning when Redis goes away and one line
//! when it is back, keep at most `writer::MAX_PENDING` queued changes (dropping the oldest),
//! retry within a second, and resynchronise on return: republish what this instance knows
//! and apply the newer states found in Redis.
//!
//! Round robin is not shared: each instance's cursor is fair over its own traffic, so the sum
//! of the instances' traffic is fair too, and no request waits on a shared counter.

mod cache;
mod event;
mod keys;
mod monitor;
#[cfg(test)]
mod script_tests;
mod subscriber;
mod writer;

use std::sync::Arc;

use relay_core::model::{AccountId, ApiKeyId, GroupId};
use relay_core::state::PersistedAccountState;
use relay_core::UnixMillis;
use relay_proxy::clock::Clock;
use relay_proxy::shared::{ReloadKind, SharedGroupBreaker, SharedState};
use relay_proxy::RelayState;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::event::{Envelope, Event};
pub use crate::keys::EVENTS_CHANNEL;
pub use crate::monitor::SharedMonitor;
pub use crate::writer::MAX_PENDING;

use crate::cache::StampCache;
use crate::subscriber::Subscriber;
use crate::writer::{Op, Writer};

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("REDIS_URL is not a usable Redis address: {0}")]
    InvalidUrl(#[source] redis::RedisError),
}

/// A started adapter: install `adapter` with `RelayState::set_shared`, join `tasks` on
/// shutdown (they stop on the token given to `start`), keep `monitor` to observe progress.
#[derive(Debug)]
pub struct SharedHandle {
    pub adapter: Arc<dyn SharedState>,
    pub tasks: Vec<JoinHandle<()>>,
    pub monitor: SharedMonitor,
}

/// Starts the writer and subscriber tasks for the Redis at `redis_url`.
///
/// Fails only when the address is unusable; an unreachable Redis is not an error (the relay
/// serves on local state and the tasks keep trying).
pub async fn start(
    redis_url: &str,
    relay: Arc<RelayState>,
    shutdown: CancellationToken,
) -> Result<SharedHandle, SharedError> {
    let client = redis::Client::open(redis_url).map_err(SharedError::InvalidUrl)?;
    let monitor = SharedMonitor::new(uuid::Uuid::new_v4().simple().to_string());
    let cache = Arc::new(StampCache::default());
    let (sender, receiver) = unbounded_channel();
    let adapter = RedisShared {
        sender: sender.clone(),
        cache: Arc::clone(&cache),
        clock: Arc::clone(&relay.clock),
    };
    let writer = Writer::new(client.clone(), Arc::clone(&relay), monitor.clone());
    let subscriber = Subscriber {
        client,
        relay,
        monitor: monitor.clone(),
        cache,
        writer: sender,
    };
    let tasks = vec![
        tokio::spawn(writer.run(receiver, shutdown.clone())),
        tokio::spawn(subscriber.run(shutdown)),
    ];
    tracing::info!(
        instance = monitor.instance_id(),
        "cluster mode: sharing fallback state through Redis"
    );
    Ok(SharedHandle {
        adapter: Arc::new(adapter),
        tasks,
        monitor,
    })
}

/// The `SharedState` the data plane calls: stamps and queues, never waits.
#[derive(Debug)]
pub struct RedisShared {
    sender: UnboundedSender<Op>,
    cache: Arc<StampCache>,
    clock: Arc<dyn Clock>,
}

impl RedisShared {
    fn send(&self, op: Op) {
        // After shutdown the writer is gone; there is nothing left to share with.
        let _ = self.sender.send(op);
    }
}

impl SharedState for RedisShared {
    fn account_changed(&self, account_id: AccountId, state: PersistedAccountState) {
        let stamp = self
            .cache
            .stamp_local_account(account_id, &state, self.clock.now_millis());
        self.send(Op::Account {
            account_id,
            stamp,
            state,
        });
    }

    fn group_breaker_changed(&self, group_id: GroupId, breaker: SharedGroupBreaker) {
        let stamp = self
            .cache
            .stamp_local_group(group_id, &breaker, self.clock.now_millis());
        self.send(Op::Group {
            group_id,
            stamp,
            breaker,
        });
    }

    fn session_bound(&self, session_key: &str, account_id: AccountId) {
        self.send(Op::Session {
            session_key: session_key.to_owned(),
            account_id,
        });
    }

    fn key_used(&self, key_id: ApiKeyId, cost_usd: f64, requests: u32, at: UnixMillis) {
        self.send(Op::KeyUsage {
            key_id,
            cost_usd,
            requests,
            day: at.div_euclid(keys::DAY_MS),
            minute: at.div_euclid(keys::MINUTE_MS),
        });
    }

    fn reload(&self, kind: ReloadKind) {
        self.send(Op::Reload(kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct FixedClock(UnixMillis);

    impl Clock for FixedClock {
        fn now_millis(&self) -> UnixMillis {
            self.0
        }
    }

    fn adapter() -> (RedisShared, tokio::sync::mpsc::UnboundedReceiver<Op>) {
        let (sender, receiver) = unbounded_channel();
        let adapter = RedisShared {
            sender,
            cache: Arc::new(StampCache::default()),
            clock: Arc::new(FixedClock(1_000)),
        };
        (adapter, receiver)
    }

    #[test]
    fn calls_only_queue_and_stamp() {
        let (adapter, mut receiver) = adapter();
        let state = PersistedAccountState {
            account_cooldown_until: Some(5_000),
            ..Default::default()
        };
        adapter.account_changed(4, state.clone());
        adapter.account_changed(4, state.clone());
        adapter.key_used(9, 0.5, 1, 2 * keys::DAY_MS + 3 * keys::MINUTE_MS + 7);
        adapter.session_bound("s", 4);
        adapter.reload(ReloadKind::FallbackConfig);
        let ops: Vec<Op> = std::iter::from_fn(|| receiver.try_recv().ok()).collect();
        assert_eq!(
            ops,
            vec![
                Op::Account {
                    account_id: 4,
                    stamp: 1_000,
                    state: state.clone()
                },
                Op::Account {
                    account_id: 4,
                    stamp: 1_001,
                    state
                },
                Op::KeyUsage {
                    key_id: 9,
                    cost_usd: 0.5,
                    requests: 1,
                    day: 2,
                    minute: 2 * 24 * 60 + 3,
                },
                Op::Session {
                    session_key: "s".to_owned(),
                    account_id: 4
                },
                Op::Reload(ReloadKind::FallbackConfig),
            ]
        );
    }

    #[test]
    fn calls_after_the_writer_is_gone_do_not_fail() {
        let (adapter, receiver) = adapter();
        drop(receiver);
        adapter.reload(ReloadKind::Resources);
        adapter.session_bound("s", 1);
    }
}

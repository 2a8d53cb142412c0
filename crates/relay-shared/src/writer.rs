//! The writer task: applies this instance's changes to Redis and publishes them, one after the
//! other in the order they were made, surviving outages with a bounded queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use relay_core::model::{AccountId, ApiKeyId, GroupId};
use relay_core::state::PersistedAccountState;
use relay_core::UnixMillis;
use relay_proxy::shared::{ReloadKind, SharedGroupBreaker};
use relay_proxy::RelayState;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::event::{self, Envelope, Event};
use crate::keys;
use crate::monitor::SharedMonitor;

/// How many changes are kept while Redis is away; beyond it the oldest are dropped (a newer
/// change of the same account supersedes them anyway).
pub const MAX_PENDING: usize = 100_000;
/// The longest wait between two attempts to reach Redis, so it is noticed within a second.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Bounds on one connection attempt and one command, so an unresponsive Redis is noticed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits to write the changes still queued.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(1);

/// Stores a stamped state (account or group breaker) unless Redis already holds a newer or
/// equal one, sets its expiry and publishes the event: the check, the write and the publish
/// are one atomic step, so every instance sees the same winner.
///
/// KEYS[1] the state key; ARGV: stamp, state JSON, expiry in ms (0: none), channel, event.
pub(crate) const STATE_SCRIPT: &str = r"
local stored = redis.call('HGET', KEYS[1], 'stamp')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'stamp', ARGV[1], 'state', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// Adds a key's cost to its UTC day's total and its requests to the minute's count, sets both
/// expiries, publishes the new totals and returns them: one atomic step.
///
/// KEYS: the day's cost key, the minute's request key. ARGV: cost, requests, cost expiry (ms),
/// request expiry (s), channel, then the three pieces of the event text around the totals.
pub(crate) const KEY_USAGE_SCRIPT: &str = r"
local cost = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local requests = redis.call('INCRBY', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. cost .. ARGV[7] .. requests .. ARGV[8])
return {cost, requests}
";

/// One change of this instance, waiting to be written.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Account {
        account_id: AccountId,
        stamp: UnixMillis,
        state: PersistedAccountState,
    },
    Group {
        group_id: GroupId,
        stamp: UnixMillis,
        breaker: SharedGroupBreaker,
    },
    Session {
        session_key: String,
        account_id: AccountId,
    },
    KeyUsage {
        key_id: ApiKeyId,
        cost_usd: f64,
        requests: u32,
        day: i64,
        minute: i64,
    },
    Reload(ReloadKind),
}

/// Changes waiting for Redis, oldest first, bounded by dropping the oldest.
#[derive(Debug)]
pub struct PendingQueue {
    ops: VecDeque<Op>,
    capacity: usize,
}

impl PendingQueue {
    pub fn new(capacity: usize) -> PendingQueue {
        PendingQueue {
            ops: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a change; returns whether the oldest one had to be dropped to make room.
    pub fn push(&mut self, op: Op) -> bool {
        let dropped = if self.ops.len() >= self.capacity {
            self.ops.pop_front();
            true
        } else {
            false
        };
        self.ops.push_back(op);
        dropped
    }

    pub fn front(&self) -> Option<&Op> {
        self.ops.front()
    }

    pub fn pop_front(&mut self) -> Option<Op> {
        self.ops.pop_front()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Doubling waits between attempts to reach Redis, capped at one second.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

/// Waits `duration` unless shutdown comes first; false on shutdown.
pub async fn pause(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

/// Whether an error means the connection is unusable (retry on a new one) rather than that
/// Redis refused this one command (which retrying would not fix).
pub fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

pub async fn connect(client: &Client) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

pub struct Writer {
    pub client: Client,
    pub relay: Arc<RelayState>,
    pub monitor: SharedMonitor,
    state_script: Script,
    key_usage_script: Script,
}

impl Writer {
    pub fn new(client: Client, relay: Arc<RelayState>, monitor: SharedMonitor) -> Writer {
        Writer {
            client,
            relay,
            monitor,
            state_script: Script::new(STATE_SCRIPT),
            key_usage_script: Script::new(KEY_USAGE_SCRIPT),
        }
    }

    /// Runs until shutdown: drains the channel into the bounded queue and writes the queue
    /// to Redis in order, reconnecting with backoff when Redis is away.
    pub async fn run(self, mut receiver: UnboundedReceiver<Op>, shutdown: CancellationToken) {
        let mut pending = PendingQueue::new(MAX_PENDING);
        let mut connection: Option<MultiplexedConnection> = None;
        let mut backoff = Backoff::default();
        loop {
            while let Ok(op) = receiver.try_recv() {
                self.queue(&mut pending, op);
            }
            if pending.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    op = receiver.recv() => match op {
                        Some(op) => self.queue(&mut pending, op),
                        None => break,
                    },
                }
                continue;
            }
            if shutdown.is_cancelled() {
                break;
            }
            let attempt = match connection.as_mut() {
                Some(connection) => self.write_front(connection, &mut pending).await,
                None => match connect(&self.client).await {
                    Ok(new) => {
                        let connection = connection.insert(new);
                        self.write_front(connection, &mut pending).await
                    }
                    Err(error) => Err(error),
                },
            };
            match attempt {
                Ok(()) => backoff.reset(),
                Err(error) => {
                    connection = None;
                    self.monitor.mark_unreachable(&error);
                    if !pause(&shutdown, backoff.next_wait()).await {
                        break;
                    }
                }
            }
        }
        self.flush_on_shutdown(connection, &mut receiver, pending)
            .await;
    }

    fn queue(&self, pending: &mut PendingQueue, op: Op) {
        if pending.push(op) {
            self.monitor.record_dropped();
        }
    }

    /// Writes the oldest queued change. A connection failure leaves it queued (and is
    /// returned); a command Redis refuses is logged and dropped, since retrying cannot help.
    async fn write_front(
        &self,
        connection: &mut MultiplexedConnection,
        pending: &mut PendingQueue,
    ) -> Result<(), RedisError> {
        let Some(op) = pending.front() else {
            return Ok(());
        };
        match self.write(connection, op).await {
            Ok(()) => {
                pending.pop_front();
                self.monitor.mark_reachable();
                self.monitor.record_written();
                Ok(())
            }
            Err(error) if is_connection_error(&error) => Err(error),
            Err(error) => {
                tracing::error!(%error, ?op, "Redis refused a shared-state change; it is dropped");
                pending.pop_front();
                Ok(())
            }
        }
    }

    async fn flush_on_shutdown(
        &self,
        connection: Option<MultiplexedConnection>,
        receiver: &mut UnboundedReceiver<Op>,
        mut pending: PendingQueue,
    ) {
        while let Ok(op) = receiver.try_recv() {
            self.queue(&mut pending, op);
        }
        let Some(mut connection) = connection else {
            return;
        };
        let flush = async {
            while !pending.is_empty() {
                if self
                    .write_front(&mut connection, &mut pending)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        if tokio::time::timeout(FLUSH_ON_SHUTDOWN, flush)
            .await
            .is_err()
        {
            tracing::warn!("shutdown: some shared-state changes were not written to Redis");
        }
    }

    fn envelope(&self, event: Event) -> String {
        Envelope {
            origin: self.monitor.instance_id().to_owned(),
            event,
        }
        .to_json()
    }

    async fn write(
        &self,
        connection: &mut MultiplexedConnection,
        op: &Op,
    ) -> Result<(), RedisError> {
        let now = self.relay.now();
        match op {
            Op::Account {
                account_id,
                stamp,
                state,
            } => {
                let ttl = keys::account_ttl_ms(state, now).unwrap_or(0);
                let event = self.envelope(Event::Account {
                    account_id: *account_id,
                    stamp: *stamp,
                    state: state.clone(),
                });
                let state_json = serde_json::to_string(state).unwrap_or_default();
                self.write_state(
                    connection,
                    keys::account_key(*account_id),
                    *stamp,
                    state_json,
                    ttl,
                    event,
                )
                .await
            }
            Op::Group {
                group_id,
                stamp,
                breaker,
            } => {
                let ttl = keys::group_ttl_ms(breaker, now);
                let event = self.envelope(Event::GroupBreaker {
                    group_id: *group_id,
                    stamp: *stamp,
                    breaker: *breaker,
                });
                let state_json = serde_json::to_string(breaker).unwrap_or_default();
                self.write_state(
                    connection,
                    keys::group_key(*group_id),
                    *stamp,
                    state_json,
                    ttl,
                    event,
                )
                .await
            }
            Op::Session {
                session_key,
                account_id,
            } => {
                let event = self.envelope(Event::Session {
                    session_key: session_key.clone(),
                    account_id: *account_id,
                });
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(keys::session_key(session_key))
                    .arg(*account_id)
                    .arg("EX")
                    .arg(keys::SESSION_TTL_SECS)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(keys::EVENTS_CHANNEL)
                    .arg(event)
                    .ignore()
                    .query_async::<()>(connection)
                    .await
            }
            Op::KeyUsage {
                key_id,
                cost_usd,
                requests,
                day,
                minute,
            } => {
                let (cost_today, requests_this_minute): (String, i64) = self
                    .key_usage_script
                    .key(keys::cost_key(*key_id, *day))
                    .key(keys::rpm_key(*key_id, *minute))
                    .arg(*cost_usd)
                    .arg(*requests)
                    .arg(keys::COST_TTL_MS)
                    .arg(keys::RPM_TTL_SECS)
                    .arg(keys::EVENTS_CHANNEL)
                    .arg(event::key_usage_prefix(
                        self.monitor.instance_id(),
                        *key_id,
                        *day,
                        *minute,
                    ))
                    .arg(event::KEY_USAGE_MIDDLE)
                    .arg(event::KEY_USAGE_SUFFIX)
                    .invoke_async(connection)
                    .await?;
                let cost_today = cost_today.parse::<f64>().unwrap_or(0.0);
                let requests_this_minute = u32::try_from(requests_this_minute).unwrap_or(u32::MAX);
                self.relay.apply_shared_key_usage(
                    *key_id,
                    *day,
                    cost_today,
                    *minute,
                    requests_this_minute,
                );
                Ok(())
            }
            Op::Reload(what) => {
                let event = self.envelope(Event::Reload { what: *what });
                redis::cmd("PUBLISH")
                    .arg(keys::EVENTS_CHANNEL)
                    .arg(event)
                    .query_async::<()>(connection)
                    .await
            }
        }
    }

    async fn write_state(
        &self,
        connection: &mut MultiplexedConnection,
        key: String,
        stamp: UnixMillis,
        state_json: String,
        ttl_ms: i64,
        event: String,
    ) -> Result<(), RedisError> {
        let _stored: i64 = self
            .state_script
            .key(key)
            .arg(stamp)
            .arg(state_json)
            .arg(ttl_ms)
            .arg(keys::EVENTS_CHANNEL)
            .arg(event)
            .invoke_async(connection)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reload() -> Op {
        Op::Reload(ReloadKind::Resources)
    }

    fn session(n: i64) -> Op {
        Op::Session {
            session_key: format!("s{n}"),
            account_id: n,
        }
    }

    #[test]
    fn the_queue_drops_the_oldest_beyond_its_capacity() {
        let mut queue = PendingQueue::new(2);
        assert!(!queue.push(session(1)));
        assert!(!queue.push(session(2)));
        assert!(queue.push(session(3)));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop_front(), Some(session(2)));
        assert_eq!(queue.front(), Some(&session(3)));
        assert!(!queue.push(reload()));
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn backoff_doubles_up_to_one_second_and_resets() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert_eq!(waits[1], FIRST_BACKOFF * 2);
        assert!(waits.iter().all(|wait| *wait <= MAX_BACKOFF));
        assert_eq!(waits[7], MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.next_wait(), FIRST_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_early_on_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!pause(&shutdown, Duration::from_secs(60)).await);
        let running = CancellationToken::new();
        assert!(pause(&running, Duration::from_millis(10)).await);
    }
}

//! The subscriber task: applies other instances' changes as they are published, and
//! resynchronises with Redis at start and after every outage.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{Client, RedisError};
use relay_core::state::PersistedAccountState;
use relay_proxy::shared::{ReloadKind, SharedGroupBreaker};
use relay_proxy::RelayState;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::cache::StampCache;
use crate::event::{Envelope, Event};
use crate::keys;
use crate::monitor::SharedMonitor;
use crate::writer::{connect, pause, Backoff, Op, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// Keys read per SCAN step during resynchronisation.
const SCAN_COUNT: usize = 500;
/// How often an idle subscription is checked with a PING: a Redis that hangs without closing
/// the connection is noticed, and resynchronised with, within this plus the response bound.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(3);

pub struct Subscriber {
    pub client: Client,
    pub relay: Arc<RelayState>,
    pub monitor: SharedMonitor,
    pub cache: Arc<StampCache>,
    /// The writer's queue, for republishing this instance's known states after an outage.
    pub writer: UnboundedSender<Op>,
}

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

async fn bounded<T>(
    limit: Duration,
    step: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, SubscribeError> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SubscribeError::Timeout(limit)),
    }
}

impl Subscriber {
    /// Runs until shutdown: subscribe, resynchronise, apply events; on a lost connection, retry
    /// with backoff and resynchronise again once Redis is back.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let subscribed = tokio::select! {
                _ = shutdown.cancelled() => return,
                subscribed = self.subscribe_and_resync() => subscribed,
            };
            match subscribed {
                Ok((sink, stream)) => {
                    backoff.reset();
                    if !self.listen(sink, stream, &shutdown).await {
                        return;
                    }
                    self.monitor
                        .mark_unreachable(&"the subscription to relay:events was closed");
                }
                Err(error) => {
                    self.monitor.mark_unreachable(&error);
                    if !pause(&shutdown, backoff.next_wait()).await {
                        return;
                    }
                }
            }
        }
    }

    async fn subscribe_and_resync(&self) -> Result<(PubSubSink, PubSubStream), SubscribeError> {
        let mut pubsub = bounded(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await?;
        bounded(RESPONSE_TIMEOUT, pubsub.subscribe(keys::EVENTS_CHANNEL)).await?;
        // Subscribed first, then read: nothing published in between is missed.
        let mut connection =
            bounded(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, connect(&self.client)).await?;
        self.monitor.mark_reachable();
        self.resync(&mut connection).await?;
        Ok(pubsub.split())
    }

    /// Applies events until the connection ends or stops answering (true) or shutdown (false).
    async fn listen(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        liveness.reset();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = liveness.tick() => {
                    let answered = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        return true;
                    }
                    continue;
                }
                message = stream.next() => message,
            };
            let Some(message) = message else {
                return true;
            };
            match Envelope::parse(message.get_payload_bytes()) {
                Ok(envelope) if envelope.origin == self.monitor.instance_id() => {}
                Ok(envelope) => self.apply(envelope.event).await,
                Err(error) => tracing::debug!(%error, "ignored an unreadable shared-state event"),
            }
        }
    }

    async fn apply(&self, event: Event) {
        let kind = match &event {
            Event::Account { .. } => "account",
            Event::GroupBreaker { .. } => "group_breaker",
            Event::Session { .. } => "session",
            Event::KeyUsage { .. } => "key_usage",
            Event::Reload { .. } => "reload",
        };
        self.apply_event(event).await;
        tracing::debug!(
            event = kind,
            "applied a shared-state event from another instance"
        );
    }

    async fn apply_event(&self, event: Event) {
        match event {
            Event::Account {
                account_id,
                stamp,
                state,
            } => self.apply_account(account_id, stamp, &state),
            Event::GroupBreaker {
                group_id,
                stamp,
                breaker,
            } => self.apply_group(group_id, stamp, &breaker),
            Event::Session {
                session_key,
                account_id,
            } => {
                self.relay.apply_shared_session(&session_key, account_id);
                self.monitor.record_applied();
            }
            Event::KeyUsage {
                key_id,
                day,
                cost_today_usd,
                minute,
                requests_this_minute,
            } => {
                self.relay.apply_shared_key_usage(
                    key_id,
                    day,
                    cost_today_usd,
                    minute,
                    requests_this_minute,
                );
                self.monitor.record_applied();
            }
            Event::Reload { what } => {
                let result = match what {
                    ReloadKind::Resources => self.relay.reload().await,
                    ReloadKind::FallbackConfig => self.relay.reload_fallback_config().await,
                };
                if let Err(error) = result {
                    tracing::error!(%error, ?what, "could not re-read a change another instance made");
                }
                self.monitor.record_applied();
            }
        }
    }

    fn apply_account(&self, account_id: i64, stamp: i64, state: &PersistedAccountState) {
        if self.cache.accept_remote_account(account_id, stamp, state) {
            self.relay.apply_shared_account(account_id, state);
            self.monitor.record_applied();
        }
    }

    fn apply_group(&self, group_id: i64, stamp: i64, breaker: &SharedGroupBreaker) {
        if self.cache.accept_remote_group(group_id, stamp, breaker) {
            self.relay.apply_shared_group_breaker(group_id, breaker);
            self.monitor.record_applied();
        }
    }

    /// Brings this instance and Redis back in step: re-reads the store (another instance may
    /// have changed resources or config meanwhile), republishes every state this instance
    /// knows with its original stamp (Redis keeps whichever is newest), and applies every
    /// newer state found in Redis.
    async fn resync(&self, connection: &mut MultiplexedConnection) -> Result<(), RedisError> {
        if let Err(error) = self.relay.reload_fallback_config().await {
            tracing::error!(%error, "resynchronising: could not re-read the store");
        }
        for (account_id, stamp, state) in self.cache.accounts() {
            let _ = self.writer.send(Op::Account {
                account_id,
                stamp,
                state,
            });
        }
        for (group_id, stamp, breaker) in self.cache.groups() {
            let _ = self.writer.send(Op::Group {
                group_id,
                stamp,
                breaker,
            });
        }
        for key in scan(connection, keys::ACCOUNT_PATTERN).await? {
            let Some(account_id) = keys::account_id_of(&key) else {
                continue;
            };
            if let Some((stamp, state)) =
                read_state::<PersistedAccountState>(connection, &key).await?
            {
                self.apply_account(account_id, stamp, &state);
            }
        }
        for key in scan(connection, keys::GROUP_PATTERN).await? {
            let Some(group_id) = keys::group_id_of(&key) else {
                continue;
            };
            if let Some((stamp, breaker)) =
                read_state::<SharedGroupBreaker>(connection, &key).await?
            {
                self.apply_group(group_id, stamp, &breaker);
            }
        }
        self.monitor.record_resync();
        Ok(())
    }
}

async fn scan(
    connection: &mut MultiplexedConnection,
    pattern: &str,
) -> Result<Vec<String>, RedisError> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(connection)
            .await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// A stamped state key's stamp and state; `None` when it vanished or is unreadable.
async fn read_state<T: serde::de::DeserializeOwned>(
    connection: &mut MultiplexedConnection,
    key: &str,
) -> Result<Option<(i64, T)>, RedisError> {
    let (stamp, state): (Option<i64>, Option<String>) = redis::cmd("HMGET")
        .arg(key)
        .arg("stamp")
        .arg("state")
        .query_async(connection)
        .await?;
    let (Some(stamp), Some(state)) = (stamp, state) else {
        return Ok(None);
    };
    match serde_json::from_str(&state) {
        Ok(state) => Ok(Some((stamp, state))),
        Err(error) => {
            tracing::debug!(%error, key, "ignored an unreadable shared state");
            Ok(None)
        }
    }
}

//! Recovery probes and account tests: one real, minimal request (`max_tokens: 1`) through an
//! account, outside the attempt loop.
//!
//! Every `health_check_interval`, each account that needs it (temporarily disabled,
//! auth- or billing-failed, or breaker open; never one an operator disabled by hand) is
//! probed; a success gives it full traffic again, closes its breaker and closes its group's
//! breaker. Rate-limited accounts are not probed: they come back at their reset time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::classify::{classify_response, OutcomeClass};
use relay_core::model::Platform;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::forward::log_state_events;
use crate::http_clients::UpstreamBody;
use crate::logs;
use crate::oauth;
use crate::registry::{lock, AccountRuntime};
use crate::state::RelayState;
use crate::upstream::{upstream_headers, upstream_uri};

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub account_id: i64,
    pub success: bool,
    pub status: Option<u16>,
    pub class: &'static str,
    pub latency_ms: u64,
    pub model: String,
    pub message: String,
}

/// The probe's model for an account: the configured cheap model, or the first model the
/// account allows when the cheap one is not among them.
fn probe_model(state: &RelayState, runtime: &AccountRuntime) -> String {
    let account = runtime.account();
    let configured = &state.settings.probe_model;
    if account.allows_model(configured) {
        account
            .model_mapping
            .get(configured)
            .cloned()
            .unwrap_or_else(|| configured.clone())
    } else {
        account
            .model_allowlist
            .first()
            .cloned()
            .unwrap_or_else(|| configured.clone())
    }
}

/// Sends one minimal request through the account and reports what happened. Does not
/// change the account's state: callers decide.
pub async fn send_probe(state: &RelayState, runtime: &Arc<AccountRuntime>) -> ProbeResult {
    let account = runtime.account();
    let model = probe_model(state, runtime);
    let started = Instant::now();
    let outcome =
        |success: bool, status: Option<u16>, class: OutcomeClass, message: String| ProbeResult {
            account_id: account.id,
            success,
            status,
            class: class.as_str(),
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            model: model.clone(),
            message,
        };
    let secret = match oauth::account_secret(state, runtime).await {
        Ok(secret) => secret,
        Err(error) => return outcome(false, None, OutcomeClass::Auth, error.to_string()),
    };
    let client = match state.clients.client_for(account.proxy_url.as_deref()) {
        Ok(client) => client,
        Err(error) => return outcome(false, None, OutcomeClass::Network, error.to_string()),
    };
    let messages_body = serde_json::json!({
        "model": model,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
    });
    let (path, body) = if account.platform == Platform::Openai {
        // The same question in the account's own protocol.
        match relay_core::openai::chat_request(&messages_body, &model) {
            Ok(chat) => ("/chat/completions", chat.to_string()),
            Err(error) => return outcome(false, None, OutcomeClass::ClientError, error.0),
        }
    } else {
        ("/v1/messages", messages_body.to_string())
    };
    let mut headers = upstream_headers(&http::HeaderMap::new(), &account, &secret);
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let mut request = http::Request::new(UpstreamBody::new(bytes::Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = match upstream_uri(&account.base_url, path, None) {
        Ok(uri) => uri,
        Err(reason) => return outcome(false, None, OutcomeClass::Network, reason),
    };
    *request.headers_mut() = headers;
    match client.fetch(request, Duration::from_secs(60)).await {
        Err(error) => outcome(
            false,
            None,
            OutcomeClass::Network,
            format!("upstream unreachable: {error}"),
        ),
        Ok((status, bytes)) => {
            let status = status.as_u16();
            let class = classify_response(status, &bytes);
            let message = if class.is_success() {
                "ok".to_owned()
            } else {
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
            };
            outcome(class.is_success(), Some(status), class, message)
        }
    }
}

/// Probes one account that needs it and applies the result to its state (and its group's
/// breaker on success).
pub async fn probe_and_apply(state: &RelayState, runtime: &Arc<AccountRuntime>) -> ProbeResult {
    let result = send_probe(state, runtime).await;
    let now = state.now();
    let account = runtime.account();
    let lang = state.settings.log_lang;
    if result.success {
        let events = runtime.update_state(now, |state| state.probe_succeeded(now));
        log_state_events(state, &account, &events);
        tracing::info!(account = %account.name, "{}", logs::recovered(lang, &account.name));
        if let Some(group) = state.registry.load().groups.get(&account.group_id) {
            if lock(&group.breaker).force_close(now).is_some() {
                lock(&state.metrics).record_breaker_transition(
                    relay_core::metrics::BreakerScope::Group(group.group.id),
                    relay_core::breaker::BreakerPhase::Closed,
                    now,
                );
                state.publish_group_breaker(group.group.id);
                tracing::info!(group = %group.group.name, "{}", logs::breaker_closed(lang, &group.group.name));
            }
        }
    } else {
        let events = runtime.update_state(now, |state| state.probe_failed(now));
        log_state_events(state, &account, &events);
        tracing::warn!(account = %account.name, class = result.class, "{}", logs::probe_failed(lang, &account.name, &result.message));
    }
    result
}

/// One round: probe every account that needs it, concurrently.
pub async fn probe_round(state: &Arc<RelayState>) -> Vec<ProbeResult> {
    let now = state.now();
    let snapshot = state.registry.load_full();
    let due: Vec<Arc<AccountRuntime>> = snapshot
        .groups
        .values()
        .filter(|group| group.config.enable_health_check)
        .flat_map(|group| group.members.iter().map(|member| &member.runtime))
        .filter(|runtime| {
            runtime.account().enabled && runtime.read_state(|state| state.needs_probe(now))
        })
        .cloned()
        .collect();
    let probes = due.iter().map(|runtime| probe_and_apply(state, runtime));
    futures_util::future::join_all(probes).await
}

/// Runs probe rounds every `health_check_interval` until shutdown. A change of the interval
/// (through the admin API of this instance or, in cluster mode, of another) restarts the
/// timer from the change.
pub async fn run_probe_loop(state: Arc<RelayState>, shutdown: CancellationToken) {
    every_interval(state.health_check_interval(), &shutdown, || async {
        if state.global_config().enable_health_check {
            probe_round(&state).await;
        }
        lock(&state.metrics).prune(state.now());
        state.clients.close_expired(tokio::time::Instant::now());
        if let Err(error) = state.save_account_states().await {
            tracing::warn!(%error, "could not save account states");
        }
    })
    .await;
}

/// Runs `round` each time `interval` has passed since the last round, or since `interval`
/// last changed, until `shutdown`.
async fn every_interval<Round, Done>(
    mut interval: watch::Receiver<Duration>,
    shutdown: &CancellationToken,
    mut round: Round,
) where
    Round: FnMut() -> Done,
    Done: std::future::Future<Output = ()>,
{
    loop {
        let wait = *interval.borrow_and_update();
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = interval.changed() => {
                if changed.is_err() {
                    // The state is gone: nothing is left to probe.
                    return;
                }
            }
            () = tokio::time::sleep(wait) => round().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    /// Rounds come every interval; a new interval counts from the moment it is set, not from
    /// the last round; shutdown ends the loop.
    #[tokio::test(start_paused = true)]
    async fn a_new_interval_restarts_the_timer_from_the_change() {
        let started = Instant::now();
        let (interval, schedule) = watch::channel(Duration::from_secs(120));
        let shutdown = CancellationToken::new();
        let rounds = Mutex::new(Vec::new());
        let probing = every_interval(schedule, &shutdown, || async {
            rounds.lock().unwrap().push(started.elapsed().as_secs());
        });
        let operator = async {
            tokio::time::sleep(Duration::from_secs(300)).await;
            // Rounds at 120 s and 240 s; the next would be at 360 s.
            interval.send_replace(Duration::from_secs(100));
            tokio::time::sleep(Duration::from_secs(250)).await;
            // Rounds at 400 s and 500 s; the same interval again changes nothing.
            interval.send_if_modified(|_| false);
            tokio::time::sleep(Duration::from_secs(100)).await;
            shutdown.cancel();
        };
        tokio::join!(probing, operator);
        assert_eq!(*rounds.lock().unwrap(), vec![120, 240, 400, 500, 600]);
    }
}

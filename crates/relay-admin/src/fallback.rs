//! The seed's fallback routes: config (GET/PUT), disable/enable an account, account health.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use relay_core::config::FallbackConfigPatch;
use relay_core::duration::{format_rfc3339, format_seconds_one_decimal, parse_duration};
use relay_core::state::DisableReason;
use relay_core::UnixMillis;
use relay_proxy::forward::log_state_events;
use relay_proxy::registry::AccountRuntime;
use relay_store::SettingsStore;
use serde_json::{json, Value};

use crate::error::AdminError;
use crate::input::{query_id, Payload};
use crate::AdminState;

/// The settings key holding the config changes made through the API (a `FallbackConfigPatch`).
pub const CONFIG_SETTING: &str = relay_proxy::state::FALLBACK_CONFIG_SETTING;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/fallback/config", get(get_config).put(put_config))
        .route("/fallback/disable-account", post(disable_account))
        .route("/fallback/enable-account", post(enable_account))
        .route("/fallback/account-health", get(account_health))
}

async fn get_config(State(state): State<AdminState>) -> Json<Value> {
    Json(serde_json::to_value(state.relay.global_config().as_ref()).unwrap_or(Value::Null))
}

async fn put_config(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let patch: FallbackConfigPatch = serde_json::from_slice(&body)
        .map_err(|e| AdminError::Invalid(format!("invalid config: {e}")))?;
    let _serialised = state.config_lock.lock().await;
    let strategies = &state.relay.strategies;
    let current = state.relay.global_config();
    let updated = current
        .apply_patch(&patch, &|name| strategies.contains(name))
        .map_err(|e| AdminError::Invalid(e.for_field()))?;
    let persisted = match state.relay.store.get_setting(CONFIG_SETTING).await? {
        Some(text) => serde_json::from_str::<FallbackConfigPatch>(&text).unwrap_or_default(),
        None => FallbackConfigPatch::default(),
    };
    let merged = persisted.merge(&patch);
    let text = serde_json::to_string(&merged).map_err(|e| AdminError::Internal(e.to_string()))?;
    state.relay.store.put_setting(CONFIG_SETTING, &text).await?;
    state.relay.set_global_config(updated.clone()).await?;
    state
        .relay
        .shared()
        .reload(relay_proxy::shared::ReloadKind::FallbackConfig);
    tracing::info!(config = %text, "fallback config changed through the admin API");
    Ok(Json(serde_json::to_value(&updated).unwrap_or(Value::Null)))
}

fn find_account(
    state: &AdminState,
    group_id: Option<i64>,
    account_id: i64,
) -> Result<std::sync::Arc<AccountRuntime>, AdminError> {
    let snapshot = state.relay.registry.load();
    let runtime = snapshot
        .accounts
        .get(&account_id)
        .cloned()
        .ok_or_else(|| AdminError::NotFound(format!("account {account_id} not found")))?;
    if let Some(group_id) = group_id {
        if runtime.account().group_id != group_id {
            return Err(AdminError::Invalid(format!(
                "group_id: account {account_id} is not in group {group_id}"
            )));
        }
    }
    Ok(runtime)
}

async fn disable_account(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let payload = Payload::parse(&body, &["group_id", "account_id", "duration", "reason"])?;
    let group_id = payload.optional::<i64>("group_id", "a group id")?;
    let account_id: i64 = payload.required("account_id", "an account id")?;
    let duration = match payload.optional::<String>("duration", "a duration such as \"30m\"")? {
        Some(raw) => {
            Some(parse_duration(&raw).map_err(|e| AdminError::Invalid(format!("duration: {e}")))?)
        }
        None => None,
    };
    if duration.is_some_and(|d| d.is_zero() || d > Duration::from_secs(365 * 86_400)) {
        return Err(AdminError::Invalid(
            "duration: must be between 1s and 365 days".to_owned(),
        ));
    }
    let reason = payload
        .optional::<String>("reason", "a string")?
        .unwrap_or_default();
    let runtime = find_account(&state, group_id, account_id)?;
    let now = state.relay.now();
    let until = duration.map(|d| now + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
    let events = runtime.update_state(now, |state| {
        state.disable(now, until, DisableReason::Manual)
    });
    let name = runtime.account().name.clone();
    log_state_events(&state.relay, &runtime.account(), &events);
    tracing::warn!(account = %name, reason = %reason, "account disabled through the admin API");
    state.relay.save_account_states().await?;
    Ok(Json(json!({
        "account_id": account_id,
        "disabled_until": until.map(format_rfc3339),
        "reason": reason,
        "health": account_health_json(&runtime, now),
    })))
}

async fn enable_account(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let payload = Payload::parse(&body, &["group_id", "account_id"])?;
    let group_id = payload.optional::<i64>("group_id", "a group id")?;
    let account_id: i64 = payload.required("account_id", "an account id")?;
    let runtime = find_account(&state, group_id, account_id)?;
    let now = state.relay.now();
    let events = runtime.update_state(now, |state| state.enable(now));
    log_state_events(&state.relay, &runtime.account(), &events);
    state.relay.save_account_states().await?;
    Ok(Json(json!({
        "account_id": account_id,
        "enabled": true,
        "health": account_health_json(&runtime, now),
    })))
}

fn time_or_null(time: Option<UnixMillis>) -> Value {
    time.map(|t| Value::String(format_rfc3339(t)))
        .unwrap_or(Value::Null)
}

/// The seed's account-health object, plus `disabled_until` and `breaker`.
pub fn account_health_json(runtime: &AccountRuntime, now: UnixMillis) -> Value {
    let account = runtime.account();
    runtime.read_state(|state| {
    let health = state.health();
    let avg_ms = health.avg_latency_ms();
    json!({
        "account_id": account.id,
        "account_name": account.name,
        "group_id": account.group_id,
        "status": state.health_status(now),
        "success_count": health.success_count(),
        "failure_count": health.failure_count(),
        "error_rate": health.error_rate(now),
        "avg_response_time": format_seconds_one_decimal(Duration::from_micros((avg_ms.max(0.0) * 1000.0) as u64)),
        "avg_response_time_ms": avg_ms,
        "last_success": time_or_null(health.last_success()),
        "last_failure": time_or_null(health.last_failure()),
        "disabled_until": time_or_null(state.disabled_until()),
        "disable_reason": state.disable_reason().map(|r| format!("{r:?}").to_lowercase()),
        "breaker": state.breaker().phase(now),
        "breaker_open_until": time_or_null(state.breaker().open_until()),
        "success_ewma": health.success_ewma(),
        "latency_ewma_ms": health.latency_ewma_ms(),
        "in_flight": runtime.in_flight.load(std::sync::atomic::Ordering::Relaxed),
    })
    })
}

/// The short live status shown inside an account's admin answer.
pub fn account_status_json(runtime: &AccountRuntime, now: UnixMillis) -> Value {
    runtime.read_state(|state| {
        json!({
            "health": state.health_status(now),
            "disabled_until": time_or_null(state.disabled_until()),
            "breaker": state.breaker().phase(now),
        })
    })
}

async fn account_health(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AdminError> {
    let group_id = query_id(query.get("group_id"), "group_id")?;
    let account_id = query_id(query.get("account_id"), "account_id")?;
    let now = state.relay.now();
    if let Some(account_id) = account_id {
        let runtime = find_account(&state, group_id, account_id)?;
        return Ok(Json(account_health_json(&runtime, now)));
    }
    let snapshot = state.relay.registry.load();
    let mut runtimes: Vec<_> = snapshot
        .accounts
        .values()
        .filter(|r| group_id.is_none_or(|g| r.account().group_id == g))
        .cloned()
        .collect();
    runtimes.sort_by_key(|r| r.id);
    let items: Vec<Value> = runtimes
        .iter()
        .map(|r| account_health_json(r, now))
        .collect();
    Ok(Json(json!({ "items": items, "total": items.len() })))
}

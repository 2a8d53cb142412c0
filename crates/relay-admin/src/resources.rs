//! Groups, accounts and API keys (create, list, read, partial update, delete), account tests,
//! request logs and usage totals.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use rand::RngCore;
use relay_core::config::FallbackConfigPatch;
use relay_core::duration::format_rfc3339;
use relay_core::model::{
    Account, ApiKey, Credential, Group, OAuthCredential, Platform, DEFAULT_BASE_URL,
    DEFAULT_PRIORITY, DEFAULT_WEIGHT,
};
use relay_store::{
    AccountStore, AccountUpdate, ApiKeyStore, ApiKeyUpdate, GroupStore, GroupUpdate, NewAccount,
    NewApiKey, NewGroup, UsageFilter, UsageRow, UsageStore,
};
use serde_json::{json, Value};

use crate::error::AdminError;
use crate::fallback::account_status_json;
use crate::input::{check_name, path_id, query_id, Payload};
use crate::AdminState;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/groups", post(create_group).get(list_groups))
        .route(
            "/groups/{id}",
            get(get_group).put(update_group).delete(delete_group),
        )
        .route("/accounts", post(create_account).get(list_accounts))
        .route(
            "/accounts/{id}",
            get(get_account).put(update_account).delete(delete_account),
        )
        .route("/accounts/{id}/test", post(test_account))
        .route("/api-keys", post(create_api_key).get(list_api_keys))
        .route(
            "/api-keys/{id}",
            get(get_api_key).put(update_api_key).delete(delete_api_key),
        )
        .route("/logs", get(list_logs))
        .route("/usage", get(usage_totals))
}

fn created(value: Value) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn items(values: Vec<Value>) -> Json<Value> {
    let total = values.len();
    Json(json!({ "items": values, "total": total }))
}

async fn reload(state: &AdminState) -> Result<(), AdminError> {
    state.relay.reload().await.map_err(AdminError::from)?;
    // Other instances re-read the store too (cluster mode).
    state
        .relay
        .shared()
        .reload(relay_proxy::shared::ReloadKind::Resources);
    Ok(())
}

// ---------------------------------------------------------------- groups

fn group_json(state: &AdminState, group: &Group) -> Value {
    let snapshot = state.relay.registry.load();
    let effective = snapshot
        .groups
        .get(&group.id)
        .map(|g| g.config.as_ref().clone());
    let fallback = if group.fallback.is_null() {
        json!({})
    } else {
        group.fallback.clone()
    };
    json!({
        "id": group.id,
        "name": group.name,
        "strategy": effective.as_ref().map(|c| c.strategy.clone()),
        "fallback": fallback,
        "effective_fallback": effective,
        "created_at": format_rfc3339(group.created_at),
        "updated_at": format_rfc3339(group.updated_at),
    })
}

/// Validates a group's overrides (and its `strategy` shorthand) into the stored JSON.
fn group_overrides(
    state: &AdminState,
    strategy: Option<String>,
    fallback: Option<&Value>,
) -> Result<Value, AdminError> {
    let mut patch = match fallback {
        None | Some(Value::Null) => FallbackConfigPatch::default(),
        Some(value) => serde_json::from_value::<FallbackConfigPatch>(value.clone())
            .map_err(|e| AdminError::Invalid(format!("fallback: {e}")))?,
    };
    if let Some(strategy) = strategy {
        patch.strategy = Some(strategy);
    }
    let strategies = &state.relay.strategies;
    state
        .relay
        .global_config()
        .apply_patch(&patch, &|name| strategies.contains(name))
        .map_err(|e| AdminError::Invalid(format!("fallback.{}", e.for_field())))?;
    if patch.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::to_value(&patch).map_err(|e| AdminError::Internal(e.to_string()))
}

async fn create_group(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let payload = Payload::parse(&body, &["name", "strategy", "fallback"])?;
    let name = check_name("name", &payload.required::<String>("name", "a string")?)?;
    let strategy = payload.optional::<String>("strategy", "a strategy name")?;
    let fallback = group_overrides(&state, strategy, payload.raw("fallback"))?;
    let group = state
        .relay
        .store
        .create_group(NewGroup { name, fallback })
        .await?;
    reload(&state).await?;
    Ok(created(group_json(&state, &group)))
}

async fn list_groups(State(state): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let groups = state.relay.store.list_groups().await?;
    Ok(items(
        groups.iter().map(|g| group_json(&state, g)).collect(),
    ))
}

async fn get_group(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = path_id(&id, "group")?;
    let group = state
        .relay
        .store
        .get_group(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("group {id} not found")))?;
    Ok(Json(group_json(&state, &group)))
}

async fn update_group(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let id = path_id(&id, "group")?;
    let payload = Payload::parse(&body, &["name", "strategy", "fallback"])?;
    let existing = state
        .relay
        .store
        .get_group(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("group {id} not found")))?;
    let name = match payload.optional::<String>("name", "a string")? {
        Some(name) => Some(check_name("name", &name)?),
        None => None,
    };
    let fallback = if payload.has("strategy") || payload.has("fallback") {
        // A PUT's `fallback` replaces the overrides; `strategy` alone changes only that one.
        let base = if payload.has("fallback") {
            payload.raw("fallback").cloned()
        } else {
            Some(existing.fallback.clone())
        };
        let strategy = payload.optional::<String>("strategy", "a strategy name")?;
        Some(group_overrides(&state, strategy, base.as_ref())?)
    } else {
        None
    };
    let group = state
        .relay
        .store
        .update_group(id, GroupUpdate { name, fallback })
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("group {id} not found")))?;
    reload(&state).await?;
    Ok(Json(group_json(&state, &group)))
}

async fn delete_group(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id = path_id(&id, "group")?;
    if !state.relay.store.delete_group(id).await? {
        return Err(AdminError::NotFound(format!("group {id} not found")));
    }
    reload(&state).await?;
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}

// ---------------------------------------------------------------- accounts

/// A proxy URL with any password replaced, for answers.
fn redact_proxy(proxy_url: &str) -> String {
    match (proxy_url.find("://"), proxy_url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &proxy_url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}{}:***@{}",
                &proxy_url[..scheme_end + 3],
                user,
                &proxy_url[at + 1..]
            )
        }
        _ => proxy_url.to_owned(),
    }
}

fn account_json(state: &AdminState, account: &Account, credential: Option<&Credential>) -> Value {
    let snapshot = state.relay.registry.load();
    let status = snapshot
        .accounts
        .get(&account.id)
        .map(|runtime| account_status_json(runtime, state.relay.now()));
    let (credential_type, oauth_expires_at) = match credential {
        Some(Credential::ApiKey(_)) => (Some("api_key"), None),
        Some(Credential::OAuth(o)) => (Some("oauth"), Some(format_rfc3339(o.expires_at))),
        None => (None, None),
    };
    json!({
        "id": account.id,
        "name": account.name,
        "platform": account.platform.as_str(),
        "base_url": account.base_url,
        "group_id": account.group_id,
        "priority": account.priority,
        "weight": account.weight,
        "enabled": account.enabled,
        "proxy_url": account.proxy_url.as_deref().map(redact_proxy),
        "model_allowlist": account.model_allowlist,
        "model_mapping": account.model_mapping,
        "max_concurrency": account.max_concurrency,
        "credential_type": credential_type,
        "oauth_expires_at": oauth_expires_at,
        "status": status,
        "created_at": format_rfc3339(account.created_at),
        "updated_at": format_rfc3339(account.updated_at),
    })
}

const ACCOUNT_FIELDS: [&str; 14] = [
    "name",
    "platform",
    "group_id",
    "base_url",
    "api_key",
    "oauth",
    "priority",
    "weight",
    "enabled",
    "proxy_url",
    "model_allowlist",
    "model_mapping",
    "max_concurrency",
    "id",
];

/// Where an `openai` account without a `base_url` goes (what `OPENAI_BASE_URL` defaults to).
const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

fn parse_platform(raw: &str) -> Result<Platform, AdminError> {
    match Platform::parse(raw) {
        Some(platform) => Ok(platform),
        None => Err(AdminError::Invalid(
            "platform: must be one of claude, claude_console, openai".to_owned(),
        )),
    }
}

fn check_base_url(raw: &str) -> Result<String, AdminError> {
    let trimmed = raw.trim().trim_end_matches('/');
    let valid = (trimmed.starts_with("http://") || trimmed.starts_with("https://"))
        && trimmed.len() > "https://".len()
        && !trimmed.contains(char::is_whitespace);
    if !valid {
        return Err(AdminError::Invalid(
            "base_url: must be an http:// or https:// URL such as https://api.anthropic.com"
                .to_owned(),
        ));
    }
    Ok(trimmed.to_owned())
}

fn check_proxy(raw: Option<String>) -> Result<Option<String>, AdminError> {
    match raw.filter(|p| !p.trim().is_empty()) {
        None => Ok(None),
        Some(proxy) => {
            relay_proxy::http_clients::validate_proxy_url(proxy.trim())
                .map_err(|e| AdminError::Invalid(format!("proxy_url: {e}")))?;
            Ok(Some(proxy.trim().to_owned()))
        }
    }
}

fn parse_oauth(payload: &Payload) -> Result<Option<OAuthCredential>, AdminError> {
    let Some(value) = payload.raw("oauth") else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(None);
    }
    let inner = Payload::parse(
        &Bytes::from(value.to_string()),
        &["access_token", "refresh_token", "expires_at"],
    )
    .map_err(|e| AdminError::Invalid(format!("oauth.{e}")))?;
    let access_token = inner
        .required::<String>("access_token", "a string")
        .map_err(|e| AdminError::Invalid(format!("oauth.{e}")))?;
    let refresh_token = inner
        .required::<String>("refresh_token", "a string")
        .map_err(|e| AdminError::Invalid(format!("oauth.{e}")))?;
    let expires_at = inner
        .time("expires_at")
        .map_err(|e| AdminError::Invalid(format!("oauth.{e}")))?
        .flatten()
        .unwrap_or(0);
    if access_token.trim().is_empty() || refresh_token.trim().is_empty() {
        return Err(AdminError::Invalid(
            "oauth: access_token and refresh_token must not be empty".to_owned(),
        ));
    }
    Ok(Some(OAuthCredential {
        access_token,
        refresh_token,
        expires_at,
    }))
}

fn check_weight(weight: u32) -> Result<u32, AdminError> {
    if weight > 1_000_000 {
        return Err(AdminError::Invalid(
            "weight: must be between 0 and 1000000".to_owned(),
        ));
    }
    Ok(weight)
}

fn check_concurrency(max: Option<u32>) -> Result<Option<u32>, AdminError> {
    if max == Some(0) {
        return Err(AdminError::Invalid(
            "max_concurrency: must be at least 1, or null".to_owned(),
        ));
    }
    Ok(max)
}

async fn require_group(state: &AdminState, group_id: i64) -> Result<(), AdminError> {
    if state.relay.store.get_group(group_id).await?.is_none() {
        return Err(AdminError::Invalid(format!(
            "group_id: group {group_id} does not exist"
        )));
    }
    Ok(())
}

async fn create_account(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let payload = Payload::parse(&body, &ACCOUNT_FIELDS[..13])?;
    let name = check_name("name", &payload.required::<String>("name", "a string")?)?;
    let platform = parse_platform(
        &payload.required::<String>("platform", "claude, claude_console or openai")?,
    )?;
    let group_id: i64 = payload.required("group_id", "a group id")?;
    require_group(&state, group_id).await?;
    let base_url = match payload.optional::<String>("base_url", "a URL")? {
        Some(url) => check_base_url(&url)?,
        None if platform == Platform::Openai => OPENAI_DEFAULT_BASE_URL.to_owned(),
        None => DEFAULT_BASE_URL.to_owned(),
    };
    let api_key = payload.optional::<String>("api_key", "a string")?;
    let oauth = parse_oauth(&payload)?;
    let credential = match (platform, api_key, oauth) {
        (Platform::ClaudeConsole, Some(key), None) if !key.trim().is_empty() => {
            Credential::ApiKey(key.trim().to_owned())
        }
        (Platform::ClaudeConsole, _, _) => {
            return Err(AdminError::Invalid(
                "api_key: is required for platform claude_console (and oauth is not accepted)".to_owned(),
            ))
        }
        (Platform::Claude, None, Some(oauth)) => Credential::OAuth(oauth),
        (Platform::Claude, _, _) => {
            return Err(AdminError::Invalid(
                "oauth: {access_token, refresh_token, expires_at} is required for platform claude (and api_key is not accepted)".to_owned(),
            ))
        }
        (Platform::Openai, Some(key), None) if !key.trim().is_empty() => {
            Credential::ApiKey(key.trim().to_owned())
        }
        (Platform::Openai, _, _) => {
            return Err(AdminError::Invalid(
                "api_key: is required for platform openai (and oauth is not accepted)".to_owned(),
            ))
        }
    };
    let new_account = NewAccount {
        name,
        platform,
        base_url,
        group_id,
        priority: payload
            .optional("priority", "an integer")?
            .unwrap_or(DEFAULT_PRIORITY),
        weight: check_weight(
            payload
                .optional("weight", "a non-negative integer")?
                .unwrap_or(DEFAULT_WEIGHT),
        )?,
        enabled: payload.optional("enabled", "a boolean")?.unwrap_or(true),
        proxy_url: check_proxy(payload.optional("proxy_url", "a proxy URL")?)?,
        model_allowlist: payload
            .optional("model_allowlist", "an array of model names")?
            .unwrap_or_default(),
        model_mapping: payload
            .optional::<BTreeMap<String, String>>(
                "model_mapping",
                "an object of model name to model name",
            )?
            .unwrap_or_default(),
        max_concurrency: check_concurrency(
            payload.optional("max_concurrency", "a positive integer")?,
        )?,
        credential: credential.clone(),
    };
    let account = state.relay.store.create_account(new_account).await?;
    reload(&state).await?;
    Ok(created(account_json(&state, &account, Some(&credential))))
}

async fn list_accounts(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AdminError> {
    let group_id = query_id(query.get("group_id"), "group_id")?;
    let accounts = state.relay.store.list_accounts(group_id).await?;
    let snapshot = state.relay.registry.load();
    let values = accounts
        .iter()
        .map(|account| {
            let credential = snapshot.accounts.get(&account.id).map(|r| r.credential());
            account_json(&state, account, credential.as_deref())
        })
        .collect();
    Ok(items(values))
}

async fn get_account(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = path_id(&id, "account")?;
    let account = state
        .relay
        .store
        .get_account(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("account {id} not found")))?;
    let credential = state.relay.store.get_credential(id).await?;
    Ok(Json(account_json(&state, &account, credential.as_ref())))
}

async fn update_account(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let id = path_id(&id, "account")?;
    let payload = Payload::parse(&body, &ACCOUNT_FIELDS[..13])?;
    let existing = state
        .relay
        .store
        .get_account(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("account {id} not found")))?;
    let platform =
        match payload.optional::<String>("platform", "claude, claude_console or openai")? {
            Some(raw) => Some(parse_platform(&raw)?),
            None => None,
        };
    let effective_platform = platform.unwrap_or(existing.platform);
    let credential = match (
        payload.optional::<String>("api_key", "a string")?,
        parse_oauth(&payload)?,
    ) {
        (Some(key), None)
            if matches!(
                effective_platform,
                Platform::ClaudeConsole | Platform::Openai
            ) && !key.trim().is_empty() =>
        {
            Some(Credential::ApiKey(key.trim().to_owned()))
        }
        (None, Some(oauth)) if effective_platform == Platform::Claude => {
            Some(Credential::OAuth(oauth))
        }
        (None, None) => {
            if platform.is_some_and(|p| p != existing.platform) {
                return Err(AdminError::Invalid(
                    "platform: changing the platform needs the new platform's credential (api_key or oauth)".to_owned(),
                ));
            }
            None
        }
        _ => {
            return Err(AdminError::Invalid(format!(
                "{}: does not match platform {}",
                if payload.has("api_key") {
                    "api_key"
                } else {
                    "oauth"
                },
                effective_platform.as_str()
            )))
        }
    };
    if let Some(group_id) = payload.optional::<i64>("group_id", "a group id")? {
        require_group(&state, group_id).await?;
    }
    let update = AccountUpdate {
        name: match payload.optional::<String>("name", "a string")? {
            Some(name) => Some(check_name("name", &name)?),
            None => None,
        },
        platform,
        base_url: match payload.optional::<String>("base_url", "a URL")? {
            Some(url) => Some(check_base_url(&url)?),
            None => None,
        },
        group_id: payload.optional("group_id", "a group id")?,
        priority: payload.optional("priority", "an integer")?,
        weight: match payload.optional("weight", "a non-negative integer")? {
            Some(w) => Some(check_weight(w)?),
            None => None,
        },
        enabled: payload.optional("enabled", "a boolean")?,
        proxy_url: match payload.nullable::<String>("proxy_url", "a proxy URL")? {
            Some(value) => Some(check_proxy(value)?),
            None => None,
        },
        model_allowlist: payload.optional("model_allowlist", "an array of model names")?,
        model_mapping: payload
            .optional("model_mapping", "an object of model name to model name")?,
        max_concurrency: match payload.nullable::<u32>("max_concurrency", "a positive integer")? {
            Some(value) => Some(check_concurrency(value)?),
            None => None,
        },
        credential,
    };
    let account = state
        .relay
        .store
        .update_account(id, update)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("account {id} not found")))?;
    reload(&state).await?;
    let credential = state.relay.store.get_credential(id).await?;
    Ok(Json(account_json(&state, &account, credential.as_ref())))
}

async fn delete_account(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id = path_id(&id, "account")?;
    if !state.relay.store.delete_account(id).await? {
        return Err(AdminError::NotFound(format!("account {id} not found")));
    }
    reload(&state).await?;
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}

async fn test_account(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = path_id(&id, "account")?;
    let runtime = state
        .relay
        .registry
        .load()
        .accounts
        .get(&id)
        .cloned()
        .ok_or_else(|| AdminError::NotFound(format!("account {id} not found")))?;
    let result = relay_proxy::probe::send_probe(&state.relay, &runtime).await;
    serde_json::to_value(result)
        .map(Json)
        .map_err(|e| AdminError::Internal(e.to_string()))
}

// ---------------------------------------------------------------- api keys

fn api_key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "group_id": key.group_id,
        "key_prefix": key.key_prefix,
        "enabled": key.enabled,
        "expires_at": key.expires_at.map(format_rfc3339),
        "model_allowlist": key.model_allowlist,
        "daily_cost_limit_usd": key.daily_cost_limit_usd,
        "rpm_limit": key.rpm_limit,
        "created_at": format_rfc3339(key.created_at),
        "updated_at": format_rfc3339(key.updated_at),
    })
}

const API_KEY_FIELDS: [&str; 7] = [
    "name",
    "group_id",
    "enabled",
    "expires_at",
    "model_allowlist",
    "daily_cost_limit_usd",
    "rpm_limit",
];

fn check_cost_limit(limit: Option<f64>) -> Result<Option<f64>, AdminError> {
    match limit {
        Some(l) if !l.is_finite() || l < 0.0 => Err(AdminError::Invalid(
            "daily_cost_limit_usd: must be a non-negative number of US dollars".to_owned(),
        )),
        other => Ok(other),
    }
}

fn check_rpm(rpm: Option<u32>) -> Result<Option<u32>, AdminError> {
    if rpm == Some(0) {
        return Err(AdminError::Invalid(
            "rpm_limit: must be at least 1, or null".to_owned(),
        ));
    }
    Ok(rpm)
}

async fn create_api_key(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let payload = Payload::parse(&body, &API_KEY_FIELDS)?;
    let name = check_name("name", &payload.required::<String>("name", "a string")?)?;
    let group_id: i64 = payload.required("group_id", "a group id")?;
    require_group(&state, group_id).await?;
    let mut secret = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut secret);
    let plain = format!("sk-relay-{}", hex::encode(secret));
    let new_key = NewApiKey {
        name,
        group_id,
        key_hash: relay_proxy::auth::hash_key(&plain),
        key_prefix: plain.chars().take(14).collect(),
        enabled: payload.optional("enabled", "a boolean")?.unwrap_or(true),
        expires_at: payload.time("expires_at")?.flatten(),
        model_allowlist: payload
            .optional("model_allowlist", "an array of model names")?
            .unwrap_or_default(),
        daily_cost_limit_usd: check_cost_limit(
            payload.optional("daily_cost_limit_usd", "a number")?,
        )?,
        rpm_limit: check_rpm(payload.optional("rpm_limit", "a positive integer")?)?,
    };
    let key = state.relay.store.create_api_key(new_key).await?;
    reload(&state).await?;
    let mut value = api_key_json(&key);
    value["key"] = Value::String(plain);
    Ok(created(value))
}

async fn list_api_keys(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AdminError> {
    let group_id = query_id(query.get("group_id"), "group_id")?;
    let keys = state.relay.store.list_api_keys(group_id).await?;
    Ok(items(keys.iter().map(api_key_json).collect()))
}

async fn get_api_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = path_id(&id, "api key")?;
    let key = state
        .relay
        .store
        .get_api_key(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("api key {id} not found")))?;
    Ok(Json(api_key_json(&key)))
}

async fn update_api_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let id = path_id(&id, "api key")?;
    let payload = Payload::parse(&body, &API_KEY_FIELDS)?;
    if let Some(group_id) = payload.optional::<i64>("group_id", "a group id")? {
        require_group(&state, group_id).await?;
    }
    let update = ApiKeyUpdate {
        name: match payload.optional::<String>("name", "a string")? {
            Some(name) => Some(check_name("name", &name)?),
            None => None,
        },
        enabled: payload.optional("enabled", "a boolean")?,
        group_id: payload.optional("group_id", "a group id")?,
        expires_at: payload.time("expires_at")?,
        daily_cost_limit_usd: match payload.nullable::<f64>("daily_cost_limit_usd", "a number")? {
            Some(value) => Some(check_cost_limit(value)?),
            None => None,
        },
        rpm_limit: match payload.nullable::<u32>("rpm_limit", "a positive integer")? {
            Some(value) => Some(check_rpm(value)?),
            None => None,
        },
        model_allowlist: payload.optional("model_allowlist", "an array of model names")?,
    };
    let key = state
        .relay
        .store
        .update_api_key(id, update)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("api key {id} not found")))?;
    reload(&state).await?;
    Ok(Json(api_key_json(&key)))
}

async fn delete_api_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id = path_id(&id, "api key")?;
    if !state.relay.store.delete_api_key(id).await? {
        return Err(AdminError::NotFound(format!("api key {id} not found")));
    }
    reload(&state).await?;
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}

// ---------------------------------------------------------------- logs and usage

fn usage_filter(
    query: &HashMap<String, String>,
    default_limit: u32,
) -> Result<UsageFilter, AdminError> {
    const KNOWN: [&str; 6] = [
        "api_key_id",
        "group_id",
        "account_id",
        "limit",
        "offset",
        "since",
    ];
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(AdminError::Invalid(format!(
            "{unknown}: unknown query parameter (allowed: {})",
            KNOWN.join(", ")
        )));
    }
    let number = |name: &str, default: u32, max: u32| -> Result<u32, AdminError> {
        match query.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| {
                    AdminError::Invalid(format!("{name}: must be an integer between 0 and {max}"))
                }),
        }
    };
    let since = match query.get("since") {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .map(|s| s * 1000)
                .or_else(|_| relay_core::duration::parse_time(raw))
                .map_err(|_| {
                    AdminError::Invalid(
                        "since: must be an RFC 3339 time or unix seconds".to_owned(),
                    )
                })?,
        ),
    };
    Ok(UsageFilter {
        api_key_id: query_id(query.get("api_key_id"), "api_key_id")?,
        group_id: query_id(query.get("group_id"), "group_id")?,
        account_id: query_id(query.get("account_id"), "account_id")?,
        since,
        limit: number("limit", default_limit, 1000)?,
        offset: number("offset", 0, u32::MAX)?,
    })
}

fn usage_row_json(row: &UsageRow) -> Value {
    json!({
        "request_id": row.request_id,
        "attempt": row.attempt,
        "api_key_id": row.api_key_id,
        "group_id": row.group_id,
        "account_id": row.account_id,
        "model": row.model,
        "stream": row.stream,
        "status": row.status,
        "class": row.class,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_read_input_tokens": row.cache_read_input_tokens,
        "cache_creation_input_tokens": row.cache_creation_input_tokens,
        "cost_usd": row.cost_usd,
        "duration_ms": row.duration_ms,
        "ttfb_ms": row.ttfb_ms,
        "created_at": format_rfc3339(row.created_at),
    })
}

async fn list_logs(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AdminError> {
    let filter = usage_filter(&query, 100)?;
    // Read-your-writes: rows still queued for the batch writer are written first.
    state.relay.usage.flush().await;
    let (rows, total) = state.relay.store.list_usage(&filter).await?;
    Ok(Json(json!({
        "items": rows.iter().map(usage_row_json).collect::<Vec<_>>(),
        "total": total,
    })))
}

async fn usage_totals(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AdminError> {
    let filter = usage_filter(&query, 0)?;
    state.relay.usage.flush().await;
    let totals = state.relay.store.usage_totals(&filter).await?;
    Ok(Json(json!({
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_input_tokens": totals.cache_read_input_tokens,
        "cache_creation_input_tokens": totals.cache_creation_input_tokens,
        "cost_usd": totals.cost_usd,
    })))
}

//! OAuth access tokens of `claude` (subscription) accounts: refreshed a minute before they
//! expire, with exactly one refresh in flight per account — concurrent requests wait for it
//! and then use its result. The rotated refresh token is stored before it is used again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use relay_core::model::{Credential, OAuthCredential};
use relay_store::AccountStore;
use serde::Deserialize;

use crate::http_clients::UpstreamBody;
use crate::logs;
use crate::registry::AccountRuntime;
use crate::state::RelayState;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The token endpoint refused the refresh token: the account needs an operator.
    #[error("the token endpoint refused the refresh token (HTTP {status})")]
    Refused { status: u16 },
    /// The endpoint could not be reached or answered something unusable: try again later.
    #[error("token refresh failed: {0}")]
    Unavailable(String),
    #[error("account has no OAuth credential")]
    NotOAuth,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The secret to send for an account: its API key, or a fresh OAuth access token.
pub async fn account_secret(
    state: &RelayState,
    account: &Arc<AccountRuntime>,
) -> Result<Secret, OAuthError> {
    let credential = account.credential();
    let usable = match &*credential {
        Credential::ApiKey(_) => true,
        Credential::OAuth(oauth) => {
            let margin = crate::registry::millis(state.settings.oauth_refresh_margin);
            oauth.expires_at - margin > state.now()
        }
    };
    if usable {
        return Ok(Secret::Held(credential));
    }
    // Boxed: a refresh (an HTTP exchange with the token endpoint) needs a future of ~6.5 KB,
    // which every attempt's would otherwise carry and copy.
    Box::pin(refresh(state, account, None))
        .await
        .map(Secret::Fresh)
}

/// An account's secret for one request: the account's credential itself, shared, or a token
/// just refreshed.
pub enum Secret {
    Held(Arc<Credential>),
    Fresh(String),
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Secret::Held(credential) => match &**credential {
                Credential::ApiKey(key) => key,
                Credential::OAuth(oauth) => &oauth.access_token,
            },
            Secret::Fresh(token) => token,
        }
    }
}

/// Refreshes the account's token. With `rejected_token`, the refresh is forced unless another
/// request already replaced that token (after a 401), so N concurrent 401s make one refresh.
pub async fn refresh(
    state: &RelayState,
    account: &Arc<AccountRuntime>,
    rejected_token: Option<&str>,
) -> Result<String, OAuthError> {
    let _single_flight = account.oauth_refresh().lock().await;
    let credential = account.credential();
    let Credential::OAuth(current) = &*credential else {
        return Err(OAuthError::NotOAuth);
    };
    let margin = crate::registry::millis(state.settings.oauth_refresh_margin);
    let now = state.now();
    match rejected_token {
        Some(rejected) if rejected != current.access_token => {
            return Ok(current.access_token.clone())
        }
        None if current.expires_at - margin > now => return Ok(current.access_token.clone()),
        _ => {}
    }

    let name = account.account().name.clone();
    let client = state
        .clients
        .client_for(account.account().proxy_url.as_deref())
        .map_err(|e| OAuthError::Unavailable(e.to_string()))?;
    let body = serde_json::json!({
        "grant_type": "refresh_token",
        "refresh_token": current.refresh_token,
        "client_id": state.settings.oauth_client_id,
    });
    let mut request = http::Request::new(UpstreamBody::new(Bytes::from(body.to_string())));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = state
        .settings
        .oauth_token_url
        .parse()
        .map_err(|error| OAuthError::Unavailable(format!("invalid token URL: {error}")))?;
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let (status, bytes) = client
        .fetch(request, Duration::from_secs(30))
        .await
        .map_err(|e| OAuthError::Unavailable(e.to_string()))?;
    let status = status.as_u16();
    if status == 400 || status == 401 || status == 403 {
        let error = OAuthError::Refused { status };
        tracing::warn!(account = %name, status, "{}", logs::token_refresh_failed(state.settings.log_lang, &name, &error.to_string()));
        return Err(error);
    }
    if !(200..300).contains(&status) {
        return Err(OAuthError::Unavailable(format!("HTTP {status}")));
    }
    let token: TokenAnswer = serde_json::from_slice(&bytes)
        .map_err(|e| OAuthError::Unavailable(format!("unreadable token answer: {e}")))?;
    let expires_in_ms = i64::try_from(token.expires_in.unwrap_or(3600)).unwrap_or(3600) * 1000;
    let renewed = OAuthCredential {
        access_token: token.access_token,
        refresh_token: token
            .refresh_token
            .unwrap_or_else(|| current.refresh_token.clone()),
        expires_at: state.now() + expires_in_ms,
    };
    // Store the rotated refresh token first: the old one is already spent upstream.
    if let Err(error) = state.store.save_oauth_tokens(account.id, &renewed).await {
        tracing::error!(account = %name, %error, "could not store the rotated OAuth tokens");
    }
    let access = renewed.access_token.clone();
    account.set_credential(Credential::OAuth(renewed));
    tracing::info!(account = %name, "{}", logs::token_refreshed(state.settings.log_lang, &name));
    Ok(access)
}

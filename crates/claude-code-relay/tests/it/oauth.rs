//! `claude` (subscription) accounts: OAuth bearer tokens refreshed with one refresh in flight.

use std::time::Duration;

use relay_core::model::Credential;
use relay_mock::Behavior;
use relay_store::{AccountStore, SqlStore};
use serde_json::json;

use crate::support::*;

async fn oauth_account(
    h: &Harness,
    group: i64,
    name: &str,
    access: &str,
    refresh: &str,
    expires_at: i64,
    priority: i32,
) -> i64 {
    h.post_admin(
        "/accounts",
        json!({
            "name": name, "platform": "claude", "group_id": group, "base_url": h.mock.base_url(),
            "oauth": {"access_token": access, "refresh_token": refresh, "expires_at": expires_at},
            "priority": priority,
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn expired_token_is_refreshed_once_under_concurrency_and_rotation_is_stored() {
    let h = Harness::start().await;
    let group = h.group("subs", None).await;
    let account = oauth_account(&h, group, "sub", "at-old", "rt-1", unix_now() - 10, 1).await;
    let key = h.key(group).await;
    h.mock.oauth_issue("rt-1", "at-new", "rt-2", 3600);
    // The refresh takes a while, so every concurrent request arrives while it is in flight.
    h.mock.set_oauth_delay(Duration::from_millis(300));

    let requests = (0..10).map(|_| h.messages(&key, message_body(false)));
    let responses = futures_util::future::join_all(requests).await;
    for response in responses {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        h.mock.oauth_refresh_count(),
        1,
        "more than one refresh in flight"
    );
    let sent = h.mock.requests_for("at-new");
    assert_eq!(sent.len(), 10);
    assert_eq!(h.mock.count_for("at-old"), 0);
    let beta = sent[0].header("anthropic-beta").unwrap();
    assert!(
        beta.split(',').any(|f| f == "oauth-2025-04-20"),
        "beta {beta}"
    );
    assert_eq!(sent[0].header("x-api-key"), None);

    // The rotated refresh token is in the store.
    let store = SqlStore::connect(Some(&h.env["DATABASE_URL"]))
        .await
        .unwrap();
    match store.get_credential(account).await.unwrap().unwrap() {
        Credential::OAuth(oauth) => {
            assert_eq!(oauth.refresh_token, "rt-2");
            assert_eq!(oauth.access_token, "at-new");
            assert!(oauth.expires_at > (unix_now() + 3000) * 1000);
        }
        other => panic!("unexpected credential {other:?}"),
    }
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries_the_same_account() {
    let h = Harness::start().await;
    let group = h.group("subs", None).await;
    oauth_account(&h, group, "sub", "at-1", "rt-1", unix_now() + 3600, 1).await;
    h.console_account(group, "backup", "sk-backup", 2).await;
    let key = h.key(group).await;
    h.mock.push("at-1", Behavior::Unauthorized);
    h.mock.oauth_issue("rt-1", "at-2", "rt-2", 3600);
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.mock.oauth_refresh_count(), 1);
    assert_eq!(h.mock.count_for("at-1"), 1);
    assert_eq!(h.mock.count_for("at-2"), 1);
    assert_eq!(h.mock.count_for("sk-backup"), 0);
}

#[tokio::test]
async fn a_refused_refresh_token_disables_the_account_and_fails_over() {
    let h = Harness::start().await;
    let group = h.group("subs", None).await;
    let sub = oauth_account(&h, group, "sub", "at-1", "rt-revoked", unix_now() - 10, 1).await;
    h.console_account(group, "backup", "sk-backup", 2).await;
    let key = h.key(group).await;
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.mock.count_for("sk-backup"), 1);
    let (_, health) = h
        .admin(
            reqwest::Method::GET,
            &format!("/fallback/account-health?account_id={sub}"),
            None,
        )
        .await;
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["disable_reason"], "auth");
    // The disabled account is not tried again.
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.oauth_refresh_count(), 1);
}

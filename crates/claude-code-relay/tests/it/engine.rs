//! The fallback engine end to end: classification rows, strategies, stickiness, per-family
//! cooldowns, account and group breakers, recovery probes.

use relay_mock::Behavior;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

fn status(code: u16, error_type: &str) -> Behavior {
    Behavior::Status {
        status: code,
        headers: vec![],
        body: format!(
            r#"{{"type":"error","error":{{"type":"{error_type}","message":"scripted"}}}}"#
        ),
    }
}

/// Every row of PRODUCT.md §5.1 against the mock: the class recorded, whether the request
/// failed over, and what the client saw.
#[tokio::test]
async fn classification_table_row_by_row() {
    let rows: Vec<(Behavior, &str, bool)> = vec![
        (status(400, "invalid_request_error"), "client_error", false),
        (status(404, "not_found_error"), "client_error", false),
        (status(413, "request_too_large"), "client_error", false),
        (status(422, "invalid_request_error"), "client_error", false),
        (status(401, "authentication_error"), "auth", true),
        (status(403, "permission_error"), "auth", true),
        (status(402, "billing_error"), "billing", true),
        (
            status(400, "invalid_request_error").with_body(
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
            ),
            "billing",
            true,
        ),
        (status(429, "rate_limit_error"), "rate_limited", true),
        (status(529, "overloaded_error"), "overloaded", true),
        (status(503, "overloaded_error"), "overloaded", true),
        (status(500, "api_error"), "server_error", true),
        (status(502, "api_error"), "server_error", true),
        (status(504, "api_error"), "server_error", true),
    ];
    let h = Harness::start().await;
    for (i, (behavior, class, fails_over)) in rows.into_iter().enumerate() {
        // A fresh group per row, so one row's cooldown or disable does not affect the next.
        let group = h.group(&format!("row{i}"), None).await;
        let first = format!("sk-row{i}-first");
        let second = format!("sk-row{i}-second");
        let first_id = h.console_account(group, "first", &first, 1).await;
        h.console_account(group, "second", &second, 2).await;
        let key = h.key(group).await;
        h.mock.push(&first, behavior.clone());
        let response = h.messages(&key, message_body(false)).await;
        let got = response.status().as_u16();
        let logs = h.logs(&format!("group_id={group}")).await;
        let first_row = logs.iter().find(|l| l["account_id"] == first_id).unwrap();
        assert_eq!(first_row["class"], class, "row {behavior:?}");
        if fails_over {
            assert_eq!(got, 200, "row {behavior:?} did not fail over");
            assert_eq!(h.mock.count_for(&second), 1);
        } else {
            assert_ne!(got, 200, "row {behavior:?}");
            assert_eq!(h.mock.count_for(&second), 0, "row {behavior:?} failed over");
        }
    }
}

trait WithBody {
    fn with_body(self, body: &str) -> Behavior;
}

impl WithBody for Behavior {
    fn with_body(self, body: &str) -> Behavior {
        match self {
            Behavior::Status {
                status, headers, ..
            } => Behavior::Status {
                status,
                headers,
                body: body.to_owned(),
            },
            other => other,
        }
    }
}

/// All seven strategies are reachable through a group's configuration and serve traffic.
#[tokio::test]
async fn every_strategy_is_reachable_and_serves() {
    let h = Harness::start().await;
    for strategy in [
        "priority_first",
        "weighted",
        "round_robin",
        "least_used",
        "hybrid",
        "adaptive",
        "smart_load_balance",
    ] {
        let group = h.group(strategy, Some(strategy)).await;
        let credentials: Vec<String> = (0..3).map(|i| format!("sk-{strategy}-{i}")).collect();
        for (i, credential) in credentials.iter().enumerate() {
            h.console_account(group, &format!("a{i}"), credential, 1)
                .await;
        }
        let key = h.key(group).await;
        // The first account is down: every strategy must route around it.
        h.mock.set_default(&credentials[0], Behavior::Overloaded);
        for _ in 0..12 {
            let response = h.messages(&key, message_body(false)).await;
            assert_eq!(response.status(), 200, "{strategy}");
        }
        let served: usize = credentials[1..].iter().map(|c| h.mock.count_for(c)).sum();
        assert_eq!(served, 12, "{strategy}");
        let (_, group_json) = h
            .admin(Method::GET, &format!("/groups/{group}"), None)
            .await;
        assert_eq!(group_json["strategy"], strategy);
    }
}

#[tokio::test]
async fn round_robin_rotates_across_requests() {
    let h = Harness::start().await;
    let group = h.group("rr", Some("round_robin")).await;
    for name in ["a", "b", "c"] {
        h.console_account(group, name, &format!("sk-{name}"), 1)
            .await;
    }
    let key = h.key(group).await;
    for _ in 0..9 {
        assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    }
    for name in ["a", "b", "c"] {
        assert_eq!(h.mock.count_for(&format!("sk-{name}")), 3, "{name}");
    }
}

async fn send_with_user_id(h: &Harness, key: &str, user_id: &str) -> u16 {
    let mut body = message_body(false);
    body["metadata"] = json!({ "user_id": user_id });
    h.messages(key, body).await.status().as_u16()
}

#[tokio::test]
async fn sticky_sessions_from_metadata_user_id_and_rebinding() {
    let h = Harness::start().await;
    let group = h.group("sticky", Some("round_robin")).await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(
            h.console_account(group, name, &format!("sk-{name}"), 1)
                .await,
        );
    }
    let key = h.key(group).await;
    let old_form = "user_abc123_account_11111111-2222-3333-4444-555555555555_session_aaaaaaaa-0000-0000-0000-000000000001";
    let json_form = r#"{"device_id":"dev","account_uuid":"acc","session_id":"bbbbbbbb-0000-0000-0000-000000000002"}"#;
    for user_id in [old_form, json_form] {
        h.mock.clear();
        for _ in 0..4 {
            assert_eq!(send_with_user_id(&h, &key, user_id).await, 200);
        }
        let counts = h.counts(&["sk-a", "sk-b", "sk-c"]);
        assert!(counts.contains(&4), "{user_id}: {counts:?}");
    }
    // The bound account becomes unusable: the session moves and stays on its new account.
    h.mock.clear();
    assert_eq!(send_with_user_id(&h, &key, json_form).await, 200);
    let bound = ["a", "b", "c"]
        .iter()
        .position(|n| h.mock.count_for(&format!("sk-{n}")) == 1)
        .unwrap();
    h.admin(
        Method::POST,
        "/fallback/disable-account",
        Some(json!({"account_id": ids[bound], "duration": "10m"})),
    )
    .await;
    h.mock.clear();
    for _ in 0..3 {
        assert_eq!(send_with_user_id(&h, &key, json_form).await, 200);
    }
    let counts = h.counts(&["sk-a", "sk-b", "sk-c"]);
    assert_eq!(counts[bound], 0);
    assert!(counts.contains(&3), "rebound session spread: {counts:?}");
}

#[tokio::test]
async fn a_family_rate_limit_leaves_other_families_usable() {
    let h = Harness::start().await;
    let group = h.group("family", None).await;
    h.console_account(group, "first", "sk-first", 1).await;
    h.console_account(group, "second", "sk-second", 2).await;
    let key = h.key(group).await;
    h.mock.push(
        "sk-first",
        Behavior::Status {
            status: 429,
            headers: vec![
                (
                    "anthropic-ratelimit-tokens-remaining".to_owned(),
                    "0".to_owned(),
                ),
                (
                    "anthropic-ratelimit-tokens-reset".to_owned(),
                    relay_core::duration::format_rfc3339(relay_proxy::now_millis() + 600_000),
                ),
            ],
            body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"opus tokens"}}"#
                .to_owned(),
        },
    );
    let mut opus = message_body(false);
    opus["model"] = json!("claude-opus-4-1");
    assert_eq!(h.messages(&key, opus.clone()).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-second"), 1);
    // Opus keeps avoiding the first account; Sonnet still uses it.
    assert_eq!(h.messages(&key, opus).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-second"), 2);
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-first"), 2);
}

#[tokio::test]
async fn account_breaker_opens_after_threshold_and_a_probe_recovers_it() {
    let h = Harness::start().await;
    let group = h.group("breaker", None).await;
    let broken = h.console_account(group, "broken", "sk-broken", 1).await;
    h.console_account(group, "backup", "sk-backup", 2).await;
    let key = h.key(group).await;
    h.mock.set_default("sk-broken", Behavior::ServerError(500));
    for _ in 0..10 {
        assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    }
    // Threshold 5: after five failures the account gets no more client traffic.
    assert_eq!(h.mock.count_for("sk-broken"), 5);
    let (_, health) = h
        .admin(
            Method::GET,
            &format!("/fallback/account-health?account_id={broken}"),
            None,
        )
        .await;
    assert_eq!(health["breaker"], "open", "{health}");

    // Still failing: a probe leaves it out.
    let results = relay_proxy::probe::probe_round(&h.relay.as_ref().unwrap().state).await;
    assert!(results.iter().any(|r| r.account_id == broken && !r.success));
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-broken"), 6);

    // Fixed: the next probe brings it back with full traffic at once.
    h.mock.set_default("sk-broken", Behavior::Ok);
    let results = relay_proxy::probe::probe_round(&h.relay.as_ref().unwrap().state).await;
    assert!(results.iter().any(|r| r.account_id == broken && r.success));
    let (_, health) = h
        .admin(
            Method::GET,
            &format!("/fallback/account-health?account_id={broken}"),
            None,
        )
        .await;
    assert_eq!(health["breaker"], "closed", "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-broken"), 8);
}

#[tokio::test]
async fn group_breaker_answers_529_at_once_after_consecutive_failed_requests() {
    let h = Harness::start_with(Default::default(), |env| {
        env.insert(
            "FALLBACK_CIRCUIT_BREAKER_THRESHOLD".to_owned(),
            "3".to_owned(),
        );
    })
    .await;
    let group = h.group("doomed", None).await;
    // Five accounts that all fail with 500: each request fails every attempt. Account
    // breakers need three failures each, so the group breaker trips first.
    for i in 0..5 {
        h.console_account(group, &format!("a{i}"), &format!("sk-doomed-{i}"), i)
            .await;
        h.mock
            .set_default(&format!("sk-doomed-{i}"), Behavior::ServerError(500));
    }
    let key = h.key(group).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = h.messages(&key, message_body(false)).await;
        statuses.push(response.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s != 200), "{statuses:?}");
    let upstream_before = h.mock.total_count();
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 529);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 60, "retry-after {retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_type(&body), "overloaded_error");
    assert_eq!(body["fallback_info"]["attempt_count"], 0);
    assert_eq!(body["fallback_info"]["failure_reason"], "circuit_open");
    assert_eq!(
        h.mock.total_count(),
        upstream_before,
        "an open group still sent upstream"
    );

    // A successful probe of any account closes the group at once.
    h.mock.set_default("sk-doomed-0", Behavior::Ok);
    relay_proxy::probe::probe_round(&h.relay.as_ref().unwrap().state).await;
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
}

#[tokio::test]
async fn skipped_accounts_do_not_use_up_attempts() {
    let h = Harness::start_with(Default::default(), |env| {
        env.insert("FALLBACK_MAX_RETRIES".to_owned(), "1".to_owned());
    })
    .await;
    let group = h.group("skips", None).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            h.console_account(group, &format!("a{i}"), &format!("sk-skip-{i}"), i)
                .await,
        );
    }
    let key = h.key(group).await;
    // The two preferred accounts are disabled: they are not attempts.
    for id in &ids[..2] {
        h.admin(
            Method::POST,
            "/fallback/disable-account",
            Some(json!({"account_id": id, "duration": "1h"})),
        )
        .await;
    }
    h.mock.push("sk-skip-2", Behavior::ServerError(500));
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.mock.count_for("sk-skip-3"), 1);
    // max_retries 1 = two attempts at most.
    h.mock.push("sk-skip-2", Behavior::ServerError(500));
    h.mock.push("sk-skip-3", Behavior::ServerError(500));
    let response = h.messages(&key, message_body(false)).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["fallback_info"]["attempt_count"], 2, "{body}");
}

#[tokio::test]
async fn group_overrides_apply_to_that_group_only() {
    let h = Harness::start().await;
    let strict = h
        .post_admin(
            "/groups",
            json!({"name": "strict", "fallback": {"max_retries": 0}}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let lenient = h.group("lenient", None).await;
    for (group, prefix) in [(strict, "strict"), (lenient, "lenient")] {
        for i in 0..3 {
            let credential = format!("sk-{prefix}-{i}");
            h.console_account(group, &format!("a{i}"), &credential, i)
                .await;
            h.mock.set_default(&credential, Behavior::ServerError(500));
        }
    }
    let strict_key = h.key(strict).await;
    let lenient_key = h.key(lenient).await;
    let body: Value = h
        .messages(&strict_key, message_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["fallback_info"]["attempt_count"], 1);
    let body: Value = h
        .messages(&lenient_key, message_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["fallback_info"]["attempt_count"], 3);
    let (_, group) = h
        .admin(Method::GET, &format!("/groups/{strict}"), None)
        .await;
    assert_eq!(group["fallback"]["max_retries"], 0);
    assert_eq!(group["effective_fallback"]["max_retries"], 0);
}

//! Failover across accounts, decided before the first byte reaches the client.

use relay_mock::Behavior;
use serde_json::Value;

use crate::support::*;

async fn two_accounts(h: &Harness) -> (i64, i64, i64, String) {
    let group = h.group("pool", None).await;
    let first = h.console_account(group, "first", "sk-first", 1).await;
    let second = h.console_account(group, "second", "sk-second", 2).await;
    let key = h.key(group).await;
    (group, first, second, key)
}

async fn assert_fails_over(behavior: Behavior, stream: bool) {
    let h = Harness::start().await;
    let (_, first, second, key) = two_accounts(&h).await;
    h.mock.push("sk-first", behavior.clone());
    let response = h.messages(&key, message_body(stream)).await;
    assert_eq!(response.status(), 200, "{behavior:?} did not fail over");
    let body = response.text().await.unwrap();
    if stream {
        assert_eq!(event_names(&body), relay_mock::expected_event_names(4));
    }
    assert_eq!(h.mock.count_for("sk-first"), 1);
    assert_eq!(h.mock.count_for("sk-second"), 1);
    let attempts = h.attempts().await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].0, first);
    assert_ne!(attempts[0].1, "success");
    assert_eq!(attempts[1], (second, "success".to_owned()));
}

#[tokio::test]
async fn rate_limited_account_fails_over() {
    assert_fails_over(
        Behavior::RateLimited {
            retry_after_secs: Some(30),
            reset_in_secs: Some(30),
        },
        false,
    )
    .await;
}

#[tokio::test]
async fn overloaded_account_fails_over_for_streams() {
    assert_fails_over(Behavior::Overloaded, true).await;
}

#[tokio::test]
async fn server_error_fails_over() {
    assert_fails_over(Behavior::ServerError(502), false).await;
}

#[tokio::test]
async fn revoked_key_fails_over() {
    assert_fails_over(Behavior::Unauthorized, true).await;
}

#[tokio::test]
async fn error_event_as_first_stream_event_fails_over() {
    assert_fails_over(
        Behavior::StreamErrorEvent {
            error_type: "overloaded_error".to_owned(),
        },
        true,
    )
    .await;
}

#[tokio::test]
async fn connection_refused_fails_over() {
    let h = Harness::start().await;
    let group = h.group("pool", None).await;
    // A port nobody listens on: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    h.post_admin(
        "/accounts",
        serde_json::json!({"name": "dead", "platform": "claude_console", "group_id": group,
            "base_url": dead_url, "api_key": "sk-dead", "priority": 1}),
    )
    .await;
    h.console_account(group, "alive", "sk-alive", 2).await;
    let key = h.key(group).await;
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    let logs = h.logs("").await;
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[1]["class"], "network");
    assert!(logs[1]["status"].is_null());
}

#[tokio::test]
async fn client_error_goes_back_unchanged_without_failover() {
    let h = Harness::start().await;
    let (_, _, _, key) = two_accounts(&h).await;
    h.mock.push("sk-first", Behavior::BadRequest);
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_type(&body), "invalid_request_error");
    assert!(body.get("fallback_info").is_none());
    assert_eq!(h.mock.count_for("sk-second"), 0);
    // A client error is not the account's fault: it stays healthy and first in line.
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.mock.count_for("sk-first"), 2);
    assert_eq!(h.mock.count_for("sk-second"), 0);
}

#[tokio::test]
async fn all_accounts_failing_gives_fallback_info_and_retry_after() {
    let h = Harness::start().await;
    let (_, first, second, key) = two_accounts(&h).await;
    let limited = Behavior::RateLimited {
        retry_after_secs: Some(42),
        reset_in_secs: None,
    };
    h.mock.push("sk-first", limited.clone());
    h.mock.push("sk-second", limited);
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (40..=42).contains(&retry_after),
        "retry-after {retry_after}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_type(&body), "rate_limit_error");
    let info = &body["fallback_info"];
    assert_eq!(info["attempt_count"], 2);
    assert_eq!(info["strategy_used"], "priority_first");
    assert_eq!(info["failure_reason"], "all_accounts_failed");
    assert!(info["duration"].as_str().unwrap().ends_with('s'));
    let attempts = info["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["account_id"], first);
    assert_eq!(attempts[1]["account_id"], second);
    assert_eq!(attempts[0]["status"], 429);
    assert_eq!(attempts[0]["class"], "rate_limited");
    assert!(attempts[0]["duration_ms"].is_number());

    // Both are cooling down now: no attempt at all, an immediate answer.
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["fallback_info"]["attempt_count"], 0);
    assert_eq!(h.mock.count_for("sk-first"), 1);
    assert_eq!(h.mock.count_for("sk-second"), 1);
}

#[tokio::test]
async fn rate_limited_account_is_skipped_while_cooling_down() {
    let h = Harness::start().await;
    let (_, _, _, key) = two_accounts(&h).await;
    h.mock.push(
        "sk-first",
        Behavior::RateLimited {
            retry_after_secs: Some(600),
            reset_in_secs: None,
        },
    );
    for _ in 0..3 {
        assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    }
    assert_eq!(h.mock.count_for("sk-first"), 1);
    assert_eq!(h.mock.count_for("sk-second"), 3);
}

#[tokio::test]
async fn broken_stream_after_first_byte_ends_with_an_error_event() {
    let h = Harness::start().await;
    let (_, _, _, key) = two_accounts(&h).await;
    h.mock
        .push("sk-first", Behavior::DropMidStream { after_events: 4 });
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let names = event_names(&body);
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("error"));
    // Committed: no second account was tried for this request.
    assert_eq!(h.mock.count_for("sk-second"), 0);
    let logs = h.logs("").await;
    assert_eq!(logs[0]["class"], "mid_stream");
}

#[tokio::test]
async fn sticky_session_keeps_its_account_while_usable() {
    let h = Harness::start().await;
    let group = h.group("rr", Some("round_robin")).await;
    for (name, credential) in [("a", "sk-a"), ("b", "sk-b"), ("c", "sk-c")] {
        h.console_account(group, name, credential, 1).await;
    }
    let key = h.key(group).await;
    let send = |session: &'static str| {
        let h = &h;
        let key = key.clone();
        async move {
            h.client
                .post(h.url("/v1/messages"))
                .header("x-api-key", key)
                .header("x-claude-code-session-id", session)
                .json(&message_body(false))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..6 {
        assert_eq!(send("session-1").await, 200);
    }
    let counts = h.counts(&["sk-a", "sk-b", "sk-c"]);
    assert!(
        counts.contains(&6),
        "a sticky session spread over accounts: {counts:?}"
    );
}

#[tokio::test]
async fn slow_first_byte_fails_over_after_first_byte_timeout() {
    let h = Harness::start_with(Default::default(), |env| {
        env.insert("FALLBACK_FIRST_BYTE_TIMEOUT".to_owned(), "1s".to_owned());
    })
    .await;
    let (_, _, _, key) = two_accounts(&h).await;
    h.mock.push("sk-first", Behavior::Hang);
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(event_names(&body), relay_mock::expected_event_names(4));
    let logs = h.logs("").await;
    assert_eq!(logs[1]["class"], "network");
    assert_eq!(logs[0]["class"], "success");
}

#[tokio::test]
async fn silence_mid_stream_ends_with_an_error_event_after_idle_timeout() {
    let h = Harness::start_with(Default::default(), |env| {
        env.insert("RELAY_IDLE_TIMEOUT".to_owned(), "1s".to_owned());
    })
    .await;
    let (_, _, _, key) = two_accounts(&h).await;
    h.mock
        .push("sk-first", Behavior::StallMidStream { after_events: 4 });
    let response = h.messages(&key, message_body(true)).await;
    let body = response.text().await.unwrap();
    let names = event_names(&body);
    assert_eq!(names.last().map(String::as_str), Some("error"), "{body}");
    assert!(body.contains("no data from the upstream"));
    assert_eq!(h.mock.count_for("sk-second"), 0);
}

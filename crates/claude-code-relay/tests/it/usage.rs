//! Usage rows, token accounting, cost, counters and the daily cost limit.

use relay_mock::{MockConfig, MockUsage};
use serde_json::json;

use crate::support::*;

fn mock_with_usage() -> MockConfig {
    MockConfig {
        usage: MockUsage {
            input_tokens: 1000,
            output_tokens: 500,
            cache_read_input_tokens: 2000,
            cache_creation_input_tokens: 100,
        },
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn stream_usage_is_parsed_once_and_costed() {
    let h = Harness::start_with(mock_with_usage(), |_| {}).await;
    let (group, account, key) = h.simple_setup().await;
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let _ = response.text().await.unwrap();
    let logs = h.logs("").await;
    assert_eq!(logs.len(), 1);
    let row = &logs[0];
    assert_eq!(row["class"], "success");
    assert_eq!(row["status"], 200);
    assert_eq!(row["stream"], true);
    assert_eq!(row["account_id"], account);
    assert_eq!(row["group_id"], group);
    assert_eq!(row["model"], "claude-sonnet-4-5");
    assert_eq!(row["input_tokens"], 1000);
    // message_delta carries the cumulative count: 500, never 1 + 500.
    assert_eq!(row["output_tokens"], 500);
    assert_eq!(row["cache_read_input_tokens"], 2000);
    assert_eq!(row["cache_creation_input_tokens"], 100);
    // Sonnet: $3 in, $15 out, $0.30 cache read, $3.75 cache write per million tokens.
    let expected = (1000.0 * 3.0 + 500.0 * 15.0 + 2000.0 * 0.3 + 100.0 * 3.75) / 1e6;
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected).abs() < 1e-9,
        "cost {cost} expected {expected}"
    );
    assert!(row["ttfb_ms"].is_number());
    assert!(row["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(row["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn non_stream_usage_and_totals() {
    let h = Harness::start_with(mock_with_usage(), |_| {}).await;
    let (_, account, key) = h.simple_setup().await;
    for _ in 0..3 {
        assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    }
    let (status, totals) = h
        .admin(
            reqwest::Method::GET,
            &format!("/usage?account_id={account}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(totals["requests"], 3);
    assert_eq!(totals["input_tokens"], 3000);
    assert_eq!(totals["output_tokens"], 1500);
    assert_eq!(totals["cache_read_input_tokens"], 6000);
}

#[tokio::test]
async fn concurrent_requests_lose_no_usage() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let requests = (0..60).map(|i| h.messages(&key, message_body(i % 2 == 0)));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.unwrap();
    }
    let (_, totals) = h.admin(reqwest::Method::GET, "/usage", None).await;
    assert_eq!(totals["requests"], 60);
    assert_eq!(totals["input_tokens"], 60 * 12);
    assert_eq!(totals["output_tokens"], 60 * 7);
    let (_, logs) = h.admin(reqwest::Method::GET, "/logs?limit=5", None).await;
    assert_eq!(logs["total"], 60);
    assert_eq!(logs["items"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn daily_cost_limit_is_enforced() {
    let h = Harness::start_with(mock_with_usage(), |_| {}).await;
    let (group, _, _) = h.simple_setup().await;
    // One request costs about $0.0115; the limit allows the first only.
    let key = h
        .key_with(json!({"name": "budget", "group_id": group, "daily_cost_limit_usd": 0.01}))
        .await;
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_type(&body), "rate_limit_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("daily cost limit"));
    assert_eq!(h.mock.total_count(), 1);
}

#[tokio::test]
async fn rpm_limit_is_enforced() {
    let h = Harness::start().await;
    let (group, _, _) = h.simple_setup().await;
    let key = h
        .key_with(json!({"name": "slow", "group_id": group, "rpm_limit": 2}))
        .await;
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
}

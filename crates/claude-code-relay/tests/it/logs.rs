//! The fallback log lines: Chinese by default, English and JSON on request, structured
//! fields always, never a secret. Runs the real binary and reads its output.

use relay_mock::{Behavior, MockConfig, MockUpstream};
use serde_json::{json, Value};

use crate::support::*;

const ACCOUNT_SECRET: &str = "sk-secret-first-account";

/// Starts the binary, makes one request that fails over, stops it, returns its output.
async fn run_and_capture(lang: &str, format: &str) -> String {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let env: std::collections::HashMap<String, String> = [
        ("RELAY_ADMIN_TOKEN", ADMIN_TOKEN),
        ("RELAY_LOG_LANG", lang),
        ("RELAY_LOG_FORMAT", format),
        ("FALLBACK_RETRY_DELAY", "0s"),
        ("RUST_LOG", "info,relay_proxy=debug"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let process = RelayProcess::start(&env).await;
    let mut output = process.startup.clone();
    let h = Harness {
        relay: None,
        mock,
        client: reqwest::Client::new(),
        base: process.base.clone(),
        env: Default::default(),
    };
    let group = h.group("logged", None).await;
    h.post_admin(
        "/accounts",
        json!({"name": "first", "platform": "claude_console", "group_id": group,
               "base_url": h.mock.base_url(), "api_key": ACCOUNT_SECRET, "priority": 1}),
    )
    .await;
    h.console_account(group, "second", "sk-second", 2).await;
    let key = h.key(group).await;
    h.mock.push(
        ACCOUNT_SECRET,
        Behavior::RateLimited {
            retry_after_secs: Some(30),
            reset_in_secs: None,
        },
    );
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    output.push_str(&process.stop().await);
    assert!(
        !output.contains(ACCOUNT_SECRET),
        "the account's key is in the log"
    );
    assert!(!output.contains(&key), "the relay key is in the log");
    assert!(
        !output.contains(ADMIN_TOKEN),
        "the admin token is in the log"
    );
    output
}

#[tokio::test]
async fn chinese_text_lines_by_default() {
    let output = run_and_capture("zh", "text").await;
    for expected in [
        "🚀 开始处理fallback请求，账号数量: 2，策略: priority_first",
        "🔄 尝试使用账号 [1/2]: first (平台: claude_console, 优先级: 1)",
        "❌ 账号 first 请求失败: HTTP 429",
        "🔄 切换到下一个账号进行重试...",
        "✅ 账号 second 请求成功，耗时:",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    assert!(output.contains("request_id="));
}

#[tokio::test]
async fn english_json_lines_with_structured_fields() {
    let output = run_and_capture("en", "json").await;
    let events: Vec<Value> = output
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("❌ Account first failed"))
        })
        .unwrap_or_else(|| panic!("no failure line in:\n{output}"));
    assert_eq!(failed["class"], "rate_limited");
    assert_eq!(failed["status"], 429);
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["account"], "first");
    assert!(failed["request_id"].as_str().is_some_and(|r| r.len() == 32));
    assert!(failed["duration_ms"].is_number());
    assert!(events.iter().any(|e| e["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("✅ Account second succeeded"))));
    assert!(!output.contains("开始处理"));
}

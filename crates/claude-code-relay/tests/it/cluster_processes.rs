//! Cluster mode with two real relay processes (the built binary, twice) sharing one database
//! and one private Redis. Propagation is awaited by reading instance B's log for the line it
//! writes when it applies another instance's change — no sleeping, a deadline per step.

use std::time::Duration;

use relay_mock::{MockConfig, MockUpstream};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cluster::RedisServer;
use crate::support::*;

/// Waits for the line instance B writes when it applies another instance's change.
async fn applied(process: &mut RelayProcess, kind: &str, limit: Duration) {
    // Text logs print a string field quoted: event="account".
    let wanted = format!("event=\"{kind}\"");
    let seen = process
        .wait_for_line(limit, |line| {
            line.contains("applied a shared-state event") && line.contains(&wanted)
        })
        .await;
    assert!(seen, "no {kind} event applied within {limit:?}");
}

async fn admin(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client
        .request(method, format!("{base}/api/v1/admin{path}"))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn message(client: &reqwest::Client, base: &str, key: &str) -> u16 {
    client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", key)
        .json(&message_body(false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn two_relay_processes_share_disables_and_config_through_redis() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = temp_dir();
    let mut env = base_env(&dir, &mock);
    env.insert("REDIS_URL".to_owned(), redis.url());
    env.insert("RUST_LOG".to_owned(), "info,relay_shared=debug".to_owned());
    let a = RelayProcess::start(&env).await;
    let mut b = RelayProcess::start(&env).await;
    let client = reqwest::Client::new();
    let second = Duration::from_secs(1);

    // Resources created through A reach B.
    let (_, group) = admin(
        &client,
        &a.base,
        Method::POST,
        "/groups",
        Some(json!({"name": "shared"})),
    )
    .await;
    let group = group["id"].as_i64().unwrap();
    applied(&mut b, "reload", second).await;
    let mut ids = Vec::new();
    for (name, credential, priority) in [("first", "sk-first", 1), ("second", "sk-second", 2)] {
        let (status, account) = admin(
            &client,
            &a.base,
            Method::POST,
            "/accounts",
            Some(
                json!({"name": name, "platform": "claude_console", "group_id": group,
                        "base_url": mock.base_url(), "api_key": credential, "priority": priority}),
            ),
        )
        .await;
        assert_eq!(status, 201);
        ids.push(account["id"].as_i64().unwrap());
        applied(&mut b, "reload", second).await;
    }
    let (_, key) = admin(
        &client,
        &a.base,
        Method::POST,
        "/api-keys",
        Some(json!({"name": "k", "group_id": group})),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();
    applied(&mut b, "reload", second).await;
    assert_eq!(message(&client, &b.base, &key).await, 200);
    assert_eq!(mock.count_for("sk-first"), 1);

    // disable-account on A holds on B within a second.
    let (status, _) = admin(
        &client,
        &a.base,
        Method::POST,
        "/fallback/disable-account",
        Some(json!({"account_id": ids[0], "duration": "30m"})),
    )
    .await;
    assert_eq!(status, 200);
    applied(&mut b, "account", second).await;
    for _ in 0..3 {
        assert_eq!(message(&client, &b.base, &key).await, 200);
    }
    assert_eq!(
        mock.count_for("sk-first"),
        1,
        "B still sent traffic to the disabled account"
    );
    assert_eq!(mock.count_for("sk-second"), 3);

    // A config PUT on A applies on B.
    let (status, _) = admin(
        &client,
        &a.base,
        Method::PUT,
        "/fallback/config",
        Some(json!({"max_retries": 0})),
    )
    .await;
    assert_eq!(status, 200);
    applied(&mut b, "reload", second).await;
    let (_, config) = admin(&client, &b.base, Method::GET, "/fallback/config", None).await;
    assert_eq!(config["max_retries"], 0);

    a.stop().await;
    b.stop().await;
    drop(redis);
}

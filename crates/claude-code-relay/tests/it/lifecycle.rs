//! Restarts lose nothing; shutdown is graceful; the binary validates config and exits 0 on SIGTERM.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use relay_mock::MockConfig;
use relay_store::{SqlStore, UsageFilter, UsageStore};
use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn restart_on_the_same_store_loses_nothing() {
    let mut h = Harness::start().await;
    let (group, account, key) = h.simple_setup().await;
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    let (status, _) = h
        .admin(
            Method::PUT,
            "/fallback/config",
            Some(json!({"max_retries": 7})),
        )
        .await;
    assert_eq!(status, 200);
    h.restart().await;

    let (_, groups) = h.admin(Method::GET, "/groups", None).await;
    assert_eq!(groups["items"][0]["id"], group);
    let (_, accounts) = h.admin(Method::GET, "/accounts", None).await;
    assert_eq!(accounts["items"][0]["id"], account);
    let (_, config) = h.admin(Method::GET, "/fallback/config", None).await;
    assert_eq!(config["max_retries"], 7);
    let logs = h.logs("").await;
    assert_eq!(logs.len(), 1);
    // The key still works, with the account's stored credential.
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-a"), 2);
    let (_, totals) = h.admin(Method::GET, "/usage", None).await;
    assert_eq!(totals["requests"], 2);
}

#[tokio::test]
async fn shutdown_lets_a_running_stream_finish_and_flushes_its_usage() {
    let mut h = Harness::start_with(
        MockConfig {
            chunk_delay: Duration::from_millis(150),
            ..MockConfig::default()
        },
        |_| {},
    )
    .await;
    let (_, _, key) = h.simple_setup().await;
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first)
        .unwrap()
        .contains("message_start"));

    let relay = h.relay.take().unwrap();
    let stopping = tokio::spawn(relay.shutdown());
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(rest.contains("message_stop"), "stream was cut: {rest}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown finishes once the stream is done")
        .unwrap();

    let store = SqlStore::connect(Some(&h.env["DATABASE_URL"]))
        .await
        .unwrap();
    let (rows, total) = store
        .list_usage(&UsageFilter {
            limit: 10,
            ..UsageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 1);
    assert_eq!(rows[0].class, "success");
    assert_eq!(rows[0].output_tokens, 7);
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_shutdown() {
    let mut h = Harness::start_with(MockConfig::default(), |env| {
        env.insert("RELAY_SHUTDOWN_GRACE".to_owned(), "60s".to_owned());
    })
    .await;
    let (_, _, key) = h.simple_setup().await;
    // The client keeps this connection alive and idle in its pool.
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    let relay = h.relay.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), relay.shutdown())
        .await
        .expect("an idle connection held shutdown until the grace period");
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_claude-code-relay"))
}

#[test]
fn check_config_refuses_invalid_values_naming_the_variable() {
    let output = binary()
        .arg("check-config")
        .env("FALLBACK_MAX_RETRIES", "42")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FALLBACK_MAX_RETRIES"), "{stderr}");
    assert!(stderr.contains("0") && stderr.contains("10"), "{stderr}");

    let output = binary()
        .arg("check-config")
        .env("FALLBACK_STRATEGY", "fastest")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("FALLBACK_STRATEGY"));

    let output = binary()
        .arg("check-config")
        .env("FALLBACK_STRATEGY", "weighted")
        .env("FALLBACK_HEALTH_CHECK_INTERVAL", "5m")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly_with_exit_0() {
    // No admin token and no DATABASE_URL: the first start generates one and creates the
    // embedded store under ./data.
    let env = [("RELAY_LOG_LANG".to_owned(), "en".to_owned())]
        .into_iter()
        .collect();
    let process = RelayProcess::start(&env).await;
    assert!(
        process.startup.contains("Generated admin token"),
        "first start did not print the generated admin token"
    );
    assert!(process.dir.join("data").join("relay.db").exists());
    process.stop().await;
}

//! Restarts lose nothing; shutdown is graceful; the binary validates config and exits 0 on SIGTERM.

use std::process::Command;
use std::time::Duration;

use claude_code_relay::config::{Overrides, ServerConfig};
use futures_util::StreamExt;
use relay_mock::MockConfig;
use relay_store::{AccountStore, SqlStore, UsageFilter, UsageRow, UsageStore};
use reqwest::Method;
use serde_json::json;

use crate::support::*;

/// Opens a stream and reads its first chunk (`message_start`).
async fn open_stream(
    h: &Harness,
    key: &str,
) -> impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin {
    let response = h.messages(key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    stream
}

/// Opens a stream, shuts the relay down while it runs, and checks that the stream still
/// ends complete and the shutdown finishes once it has.
async fn stream_through_shutdown(h: &mut Harness, key: &str) {
    let mut stream = open_stream(h, key).await;
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
}

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

/// With `RELAY_ENCRYPTION_KEY`, accounts already stored are sealed at start, new ones are
/// written sealed, and the relay serves with them across restarts; a relay without the key,
/// or with another, refuses to start and says why.
#[tokio::test]
async fn credentials_are_sealed_with_the_encryption_key_and_need_it_to_start() {
    let mut h = Harness::start().await;
    let (group, _, key) = h.simple_setup().await;
    const KEY: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
    h.env
        .insert("RELAY_ENCRYPTION_KEY".to_owned(), KEY.to_owned());
    h.restart().await;
    h.console_account(group, "second", "sk-second", 2).await;
    let store = SqlStore::connect(h.env.get("DATABASE_URL").map(String::as_str))
        .await
        .unwrap();
    let mut raw = Vec::new();
    for account in store.list_accounts(None).await.unwrap() {
        // Without the key the store can read an account but not its secret.
        let error = store.get_credential(account.id).await.unwrap_err();
        raw.push(error.to_string());
    }
    assert_eq!(raw.len(), 2);
    assert!(
        raw.iter()
            .all(|e| e.contains("RELAY_ENCRYPTION_KEY is not set")),
        "{raw:?}"
    );
    store.close().await;
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-a"), 1);

    h.restart().await;
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-a"), 2);

    let relay = h.relay.take().unwrap();
    relay.shutdown().await;
    for (value, expected) in [
        (None, "RELAY_ENCRYPTION_KEY is not set"),
        (
            Some(KEY.replace('c', "d")),
            "does not open with RELAY_ENCRYPTION_KEY",
        ),
    ] {
        let mut env = h.env.clone();
        match value {
            Some(value) => env.insert("RELAY_ENCRYPTION_KEY".to_owned(), value),
            None => env.remove("RELAY_ENCRYPTION_KEY"),
        };
        let config = ServerConfig::load(&env, &Overrides::default()).unwrap();
        let Err(error) = claude_code_relay::app::start(config, None).await else {
            panic!("the relay started with credentials it cannot read");
        };
        let message = format!("{error:#}");
        assert!(message.contains(expected), "{message}");
    }
    let mut env = h.env.clone();
    env.insert("RELAY_ENCRYPTION_KEY".to_owned(), "too-short".to_owned());
    let error = ServerConfig::load(&env, &Overrides::default()).unwrap_err();
    assert!(
        error.to_string().contains("RELAY_ENCRYPTION_KEY"),
        "{error}"
    );
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
    stream_through_shutdown(&mut h, &key).await;

    let (rows, total) = usage_rows(&h, 10).await;
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

    for workers in ["0", "many"] {
        let output = binary()
            .arg("check-config")
            .env("RELAY_WORKERS", workers)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&output.stderr).contains("RELAY_WORKERS"));
    }

    let output = binary()
        .arg("check-config")
        .env("RELAY_WORKERS", "3")
        .env("FALLBACK_STRATEGY", "weighted")
        .env("FALLBACK_HEALTH_CHECK_INTERVAL", "5m")
        .env(
            "DATABASE_URL",
            "postgres://relay:pg-secret@db.internal/relay",
        )
        .env("RELAY_ENCRYPTION_KEY", "a".repeat(64))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("postgres://relay:***@db.internal/relay"),
        "{stdout}"
    );
    assert!(!stdout.contains("pg-secret"), "{stdout}");
    assert!(stdout.contains("sealed at rest"), "{stdout}");
    assert!(!stdout.contains(&"a".repeat(64)), "{stdout}");

    let output = binary()
        .arg("check-config")
        .env("RELAY_ENCRYPTION_KEY", "0123")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RELAY_ENCRYPTION_KEY"));
}

#[test]
fn client_connection_timeouts_are_settings() {
    let load = |pairs: &[(&str, &str)]| {
        let env: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        ServerConfig::load(&env, &Overrides::default()).map(|config| config.relay.client_limits())
    };
    let defaults = load(&[]).unwrap();
    assert_eq!(defaults.head_timeout, Duration::from_secs(75));
    assert_eq!(defaults.body_timeout, Duration::from_secs(60));
    assert_eq!(defaults.body_bytes, 32 * 1024 * 1024);

    let set = load(&[
        ("RELAY_CLIENT_HEADER_TIMEOUT", "20s"),
        ("RELAY_CLIENT_BODY_TIMEOUT", "1m30s"),
        ("RELAY_BODY_LIMIT_BYTES", "4096"),
    ])
    .unwrap();
    assert_eq!(set.head_timeout, Duration::from_secs(20));
    assert_eq!(set.body_timeout, Duration::from_secs(90));
    assert_eq!(set.body_bytes, 4096);

    for name in ["RELAY_CLIENT_HEADER_TIMEOUT", "RELAY_CLIENT_BODY_TIMEOUT"] {
        for value in ["0s", "soon"] {
            let error = load(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name), "{name}={value}: {error}");
        }
    }
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

fn two_workers() -> claude_code_relay::app::Serving {
    claude_code_relay::app::Serving::Workers(std::num::NonZeroUsize::new(2).unwrap())
}

/// The newest `limit` usage rows in the relay's store, and how many there are in all.
async fn usage_rows(h: &Harness, limit: u32) -> (Vec<UsageRow>, u64) {
    let store = SqlStore::connect(Some(&h.env["DATABASE_URL"]))
        .await
        .unwrap();
    store
        .list_usage(&UsageFilter {
            limit,
            ..UsageFilter::default()
        })
        .await
        .unwrap()
}

async fn usage_total(h: &Harness) -> u64 {
    usage_rows(h, 1).await.1
}

/// The binary's way of serving: worker threads with runtimes of their own, one listening
/// socket. Many connections at once are all served, a running stream finishes during the
/// shutdown, and the final writes reach the store (its connections may have been opened by
/// the workers while they served the admin API).
#[tokio::test]
async fn worker_threads_serve_every_connection_and_shut_down_gracefully() {
    let mut h = Harness::start_serving(
        MockConfig {
            chunk_delay: Duration::from_millis(100),
            ..MockConfig::default()
        },
        |_| {},
        two_workers(),
    )
    .await;
    let (_, _, key) = h.simple_setup().await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..24 {
        // A client each: 24 connections, passed between the workers to even them out.
        let client = reqwest::Client::new();
        let url = h.url("/v1/messages");
        let key = key.clone();
        requests.spawn(async move {
            let response = client
                .post(url)
                .header("x-api-key", key)
                .json(&message_body(false))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        });
    }
    while let Some(result) = requests.join_next().await {
        let (status, body) = result.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["type"], "message");
    }

    stream_through_shutdown(&mut h, &key).await;
    assert_eq!(usage_total(&h).await, 25);
}

/// After the grace period the workers drop the connections still open: the client sees its
/// stream end early, the shutdown completes, and the cut stream's usage row is still written.
#[tokio::test]
async fn worker_threads_close_what_is_left_after_the_grace_period() {
    let mut h = Harness::start_serving(
        MockConfig {
            chunk_delay: Duration::from_secs(5),
            ..MockConfig::default()
        },
        |env| {
            env.insert("RELAY_SHUTDOWN_GRACE".to_owned(), "200ms".to_owned());
        },
        two_workers(),
    )
    .await;
    let (_, _, key) = h.simple_setup().await;
    let mut stream = open_stream(&h, &key).await;
    let relay = h.relay.take().unwrap();
    tokio::time::timeout(Duration::from_secs(4), relay.shutdown())
        .await
        .expect("the grace period bounds the shutdown");
    let mut rest = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!rest.contains("message_stop"), "{rest}");
    assert_eq!(usage_total(&h).await, 1);
}

//! Cluster mode with two real relay processes (the built binary, twice) sharing one database
//! and one private Redis. Propagation is awaited by reading instance B's log for the line it
//! writes when it applies another instance's change — no sleeping, a deadline per step.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use relay_mock::{MockConfig, MockUpstream};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::cluster::RedisServer;
use crate::support::*;

struct RelayProcess {
    child: Child,
    base: String,
    lines: mpsc::UnboundedReceiver<String>,
}

impl RelayProcess {
    async fn start(env: &HashMap<String, String>) -> RelayProcess {
        let dir = temp_dir();
        let mut child = Command::new(env!("CARGO_BIN_EXE_claude-code-relay"))
            .current_dir(&dir)
            .envs(env)
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_LOG_LANG", "en")
            .env("RUST_LOG", "info,relay_shared=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let line = lines.recv().await.expect("relay exited before listening");
                if line.contains("listening") {
                    let at = line.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
                    let digits: String = line[at..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    return digits.parse::<u16>().unwrap();
                }
            }
        })
        .await
        .expect("relay listening within 30 s");
        RelayProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            lines,
        }
    }

    /// Waits for the next log line saying this process applied another instance's change of
    /// the given kind.
    async fn applied(&mut self, kind: &str, limit: Duration) {
        // Text logs print a string field quoted: event="account".
        let wanted = format!("event=\"{kind}\"");
        let seen = tokio::time::timeout(limit, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains("applied a shared-state event") && line.contains(&wanted) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(seen, Ok(true)),
            "no {kind} event applied within {limit:?}"
        );
    }

    fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
    }
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
    env.remove("RELAY_LISTEN");
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
    b.applied("reload", second).await;
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
        b.applied("reload", second).await;
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
    b.applied("reload", second).await;
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
    b.applied("account", second).await;
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
    b.applied("reload", second).await;
    let (_, config) = admin(&client, &b.base, Method::GET, "/fallback/config", None).await;
    assert_eq!(config["max_retries"], 0);

    a.stop();
    b.stop();
    drop(redis);
}

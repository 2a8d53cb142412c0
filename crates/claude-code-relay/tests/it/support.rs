//! The test harness: a relay, a mock upstream, and helpers to set up groups, accounts and keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use claude_code_relay::app::{self, RunningRelay};
use claude_code_relay::config::{Overrides, ServerConfig};
use relay_mock::{MockConfig, MockUpstream};
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, unique to this test.
pub fn temp_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("ccr-it-{}-{nanos}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Harness {
    pub relay: Option<RunningRelay>,
    pub mock: MockUpstream,
    pub client: reqwest::Client,
    pub base: String,
    pub env: HashMap<String, String>,
}

/// The environment a test relay starts with; tests add or replace entries.
pub fn base_env(dir: &std::path::Path, mock: &MockUpstream) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert(
        "DATABASE_URL".to_owned(),
        format!("sqlite://{}", dir.join("relay.db").display()),
    );
    env.insert("RELAY_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned());
    env.insert("RELAY_LISTEN".to_owned(), "127.0.0.1:0".to_owned());
    env.insert(
        "RELAY_OAUTH_TOKEN_URL".to_owned(),
        format!("{}/v1/oauth/token", mock.base_url()),
    );
    // Failover tests must not wait for backoff in real time; backoff has its own unit test.
    env.insert("FALLBACK_RETRY_DELAY".to_owned(), "0s".to_owned());
    env.insert("RELAY_LOG_LANG".to_owned(), "en".to_owned());
    env
}

pub async fn start_relay(env: &HashMap<String, String>) -> RunningRelay {
    let config = ServerConfig::load(env, &Overrides::default()).expect("valid test config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    app::start(config, Some(listener))
        .await
        .expect("relay starts")
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(MockConfig::default(), |_| {}).await
    }

    pub async fn start_with(
        mock_config: MockConfig,
        adjust: impl FnOnce(&mut HashMap<String, String>),
    ) -> Harness {
        let mock = MockUpstream::start(mock_config).await.unwrap();
        let dir = temp_dir();
        let mut env = base_env(&dir, &mock);
        adjust(&mut env);
        let relay = start_relay(&env).await;
        let base = relay.base_url();
        Harness {
            relay: Some(relay),
            mock,
            client: reqwest::Client::new(),
            base,
            env,
        }
    }

    /// Stops the relay gracefully and starts a new one on the same store.
    pub async fn restart(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
        let relay = start_relay(&self.env).await;
        self.base = relay.base_url();
        self.relay = Some(relay);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.url(&format!("/api/v1/admin{path}")))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn post_admin(&self, path: &str, body: Value) -> Value {
        let (status, value) = self
            .admin(reqwest::Method::POST, path, Some(body.clone()))
            .await;
        assert!(
            status == 200 || status == 201,
            "POST {path} {body} -> {status} {value}"
        );
        value
    }

    pub async fn group(&self, name: &str, strategy: Option<&str>) -> i64 {
        let mut body = json!({ "name": name });
        if let Some(strategy) = strategy {
            body["strategy"] = json!(strategy);
        }
        self.post_admin("/groups", body).await["id"]
            .as_i64()
            .unwrap()
    }

    /// A `claude_console` account pointed at the mock, authenticated with `api_key`.
    pub async fn console_account(
        &self,
        group: i64,
        name: &str,
        api_key: &str,
        priority: i32,
    ) -> i64 {
        self.post_admin(
            "/accounts",
            json!({
                "name": name,
                "platform": "claude_console",
                "group_id": group,
                "base_url": self.mock.base_url(),
                "api_key": api_key,
                "priority": priority,
            }),
        )
        .await["id"]
            .as_i64()
            .unwrap()
    }

    pub async fn key(&self, group: i64) -> String {
        self.key_with(json!({ "name": "test key", "group_id": group }))
            .await
    }

    pub async fn key_with(&self, body: Value) -> String {
        self.post_admin("/api-keys", body).await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A group with one account (credential `sk-a`) and a key for it.
    pub async fn simple_setup(&self) -> (i64, i64, String) {
        let group = self.group("main", None).await;
        let account = self.console_account(group, "a", "sk-a", 1).await;
        let key = self.key(group).await;
        (group, account, key)
    }

    pub async fn messages(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn logs(&self, query: &str) -> Vec<Value> {
        let (status, value) = self
            .admin(reqwest::Method::GET, &format!("/logs?{query}"), None)
            .await;
        assert_eq!(status, 200, "{value}");
        value["items"].as_array().unwrap().clone()
    }
}

pub fn message_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

/// The names of the SSE events in a full stream body, in order.
pub fn event_names(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .map(str::to_owned)
        .collect()
}

/// Asserts an Anthropic error envelope and returns its error type.
pub fn error_type(value: &Value) -> String {
    assert_eq!(value["type"], "error", "not an error envelope: {value}");
    value["error"]["type"].as_str().unwrap().to_owned()
}

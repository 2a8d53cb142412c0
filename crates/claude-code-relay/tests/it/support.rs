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

/// The store the end-to-end suite runs on: `RELAY_TEST_DATABASE=sqlite` (default),
/// `mariadb` or `postgres`. On a server each test gets a database of its own.
fn test_backend() -> &'static str {
    static BACKEND: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BACKEND.get_or_init(|| {
        let backend = std::env::var("RELAY_TEST_DATABASE").unwrap_or_else(|_| "sqlite".to_owned());
        assert!(
            ["sqlite", "mariadb", "postgres"].contains(&backend.as_str()),
            "RELAY_TEST_DATABASE must be sqlite, mariadb or postgres (got {backend})"
        );
        backend
    })
}

fn server_base_url(backend: &str) -> String {
    match backend {
        "mariadb" => std::env::var("RELAY_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned()),
        _ => std::env::var("RELAY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
    }
}

/// `base_url` with its database replaced by `database`.
fn with_database(base_url: &str, database: &str) -> String {
    let authority_start = base_url.find("://").map_or(0, |i| i + 3);
    let path_start = base_url[authority_start..]
        .find('/')
        .map_or(base_url.len(), |i| authority_start + i);
    format!("{}/{database}", &base_url[..path_start])
}

/// Creates a fresh database on the test server and returns its URL. The first call of a
/// test process also drops what earlier runs left behind (databases named `relay_it_*`
/// with another process id), so leftovers never pile up.
fn server_database_url(backend: &str) -> String {
    use sqlx::Connection;
    static CLEANED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    sqlx::any::install_default_drivers();
    let base = server_base_url(backend);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let name = format!("relay_it_{pid}_{n}");
    let backend = backend.to_owned();
    let base_for_thread = base.clone();
    let name_for_thread = name.clone();
    // A thread of its own with a small runtime: this is called from inside the tests' runtime.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut admin = sqlx::AnyConnection::connect(&base_for_thread)
                .await
                .unwrap_or_else(|e| panic!("the {backend} test server is not reachable ({e}); start it with .ci/services.sh"));
            if CLEANED.set(()).is_ok() {
                let list = if backend == "mariadb" {
                    "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata WHERE schema_name LIKE 'relay\\_it\\_%'"
                } else {
                    "SELECT datname::text FROM pg_database WHERE datname LIKE 'relay\\_it\\_%'"
                };
                let old: Vec<String> = sqlx::query_scalar(list).fetch_all(&mut admin).await.unwrap_or_default();
                for database in old.iter().filter(|d| !d.starts_with(&format!("relay_it_{pid}_"))) {
                    let force = if backend == "postgres" { " WITH (FORCE)" } else { "" };
                    let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {database}{force}"))
                        .execute(&mut admin)
                        .await;
                }
            }
            sqlx::raw_sql(&format!("CREATE DATABASE {name_for_thread}"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("cannot create {name_for_thread}: {e}"));
            let _ = admin.close().await;
        });
    })
    .join()
    .unwrap();
    with_database(&base, &name)
}

/// The environment a test relay starts with; tests add or replace entries.
pub fn base_env(dir: &std::path::Path, mock: &MockUpstream) -> HashMap<String, String> {
    let mut env = HashMap::new();
    let database_url = match test_backend() {
        "sqlite" => format!("sqlite://{}", dir.join("relay.db").display()),
        server => server_database_url(server),
    };
    env.insert("DATABASE_URL".to_owned(), database_url);
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
    start_relay_serving(env, app::Serving::CallerRuntime).await
}

/// A relay serving as `serving` says (worker threads, as the binary does, or the test's own
/// runtime).
pub async fn start_relay_serving(
    env: &HashMap<String, String>,
    serving: app::Serving,
) -> RunningRelay {
    // The relay's warnings and errors appear in a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let config = ServerConfig::load(env, &Overrides::default()).expect("valid test config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock = std::sync::Arc::new(relay_proxy::clock::SystemClock);
    app::start_serving(config, Some(listener), clock, serving)
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
        Harness::start_serving(mock_config, adjust, app::Serving::CallerRuntime).await
    }

    pub async fn start_serving(
        mock_config: MockConfig,
        adjust: impl FnOnce(&mut HashMap<String, String>),
        serving: app::Serving,
    ) -> Harness {
        let mock = MockUpstream::start(mock_config).await.unwrap();
        let dir = temp_dir();
        let mut env = base_env(&dir, &mock);
        adjust(&mut env);
        let relay = start_relay_serving(&env, serving).await;
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
        self.console_account_at(group, name, api_key, priority, &self.mock.base_url())
            .await
    }

    /// A `claude_console` account pointed at `base_url`.
    pub async fn console_account_at(
        &self,
        group: i64,
        name: &str,
        api_key: &str,
        priority: i32,
        base_url: &str,
    ) -> i64 {
        self.post_admin(
            "/accounts",
            json!({
                "name": name,
                "platform": "claude_console",
                "group_id": group,
                "base_url": base_url,
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

    /// How many requests the mock received for each credential, in order.
    pub fn counts(&self, credentials: &[&str]) -> Vec<usize> {
        credentials.iter().map(|c| self.mock.count_for(c)).collect()
    }

    /// Every attempt recorded, oldest first: (account id, outcome class).
    pub async fn attempts(&self) -> Vec<(i64, String)> {
        self.logs("")
            .await
            .iter()
            .rev()
            .map(|row| {
                (
                    row["account_id"].as_i64().unwrap(),
                    row["class"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
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

/// Asserts that `response` is an SSE stream and returns its body.
pub async fn sse_body(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    response.text().await.unwrap()
}

/// Asserts an Anthropic error envelope and returns its error type.
pub fn error_type(value: &Value) -> String {
    assert_eq!(value["type"], "error", "not an error envelope: {value}");
    value["error"]["type"].as_str().unwrap().to_owned()
}

/// The built binary running as a process of its own, its stdout read line by line.
pub struct RelayProcess {
    child: std::process::Child,
    pub base: String,
    /// Its working directory (where the default SQLite store goes).
    pub dir: PathBuf,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// What it printed up to and including its "listening" line.
    pub startup: String,
}

impl RelayProcess {
    /// Starts `claude-code-relay` on a free port with `env` (nothing else of the relay's
    /// settings is inherited) and returns once it listens.
    pub async fn start(env: &HashMap<String, String>) -> RelayProcess {
        use std::io::{BufRead, BufReader};
        let dir = temp_dir();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_claude-code-relay"))
            .current_dir(&dir)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .env_remove("RELAY_ADMIN_TOKEN")
            .envs(env)
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut startup = String::new();
        let port = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                let line = lines.recv().await.expect("relay exited before listening");
                startup.push_str(&line);
                startup.push('\n');
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
            dir,
            lines,
            startup,
        }
    }

    /// Waits up to `limit` for a line for which `wanted` holds; lines before it are skipped.
    pub async fn wait_for_line(
        &mut self,
        limit: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> bool {
        let found = tokio::time::timeout(limit, async {
            while let Some(line) = self.lines.recv().await {
                if wanted(&line) {
                    return true;
                }
            }
            false
        })
        .await;
        matches!(found, Ok(true))
    }

    /// Stops it with SIGTERM, checks it exits 0, and returns what it printed after startup.
    pub async fn stop(mut self) -> String {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            self.child.wait().unwrap().code(),
            Some(0),
            "the relay did not exit 0"
        );
        let mut rest = String::new();
        while let Some(line) = self.lines.recv().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    }
}

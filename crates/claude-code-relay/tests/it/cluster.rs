//! Cluster mode: two relays on one SQLite file and one private `redis-server`, in front of the
//! in-process mock. Propagation is awaited through the adapters' applied counts, each wait
//! bounded by a timeout; nothing sleeps.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use claude_code_relay::app::RunningRelay;
use relay_core::model::AccountId;
use relay_core::state::{DisableReason, PersistedAccountState};
use relay_mock::{Behavior, MockConfig};
use relay_proxy::registry::lock;
use relay_shared::SharedMonitor;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{message_body, start_relay, Harness, ADMIN_TOKEN};

/// A private Redis without persistence, killed when dropped.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    pub(crate) async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer::start_on(port).await
    }

    /// Starts redis-server and returns once it logs that it accepts connections.
    async fn start_on(port: u16) -> RedisServer {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            // Keep reading to the end so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("redis-server ready within 10 s")
            .expect("redis-server started");
        RedisServer {
            child: Some(child),
            port,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Instance A (a full harness, which owns the mock) and instance B on the same env.
struct Cluster {
    redis: RedisServer,
    a: Harness,
    b: RunningRelay,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = RedisServer::start().await;
        let url = redis.url();
        let a = Harness::start_with(MockConfig::default(), |env| {
            env.insert("REDIS_URL".to_owned(), url);
            // The breaker opens before the health monitor's temporary disable would step in.
            env.insert(
                "FALLBACK_CIRCUIT_BREAKER_THRESHOLD".to_owned(),
                "2".to_owned(),
            );
        })
        .await;
        let b = start_relay(&a.env).await;
        let cluster = Cluster { redis, a, b };
        // Both have read Redis once before the test changes anything.
        within(Duration::from_secs(5), "first synchronisation", async {
            cluster.a_monitor().wait_resyncs(1).await;
            cluster.b_monitor().wait_resyncs(1).await;
        })
        .await;
        cluster
    }

    fn a_relay(&self) -> &RunningRelay {
        self.a.relay.as_ref().unwrap()
    }

    fn a_monitor(&self) -> &SharedMonitor {
        self.a_relay().shared.as_ref().unwrap()
    }

    fn b_monitor(&self) -> &SharedMonitor {
        self.b.shared.as_ref().unwrap()
    }

    /// A request through B, optionally in a sticky session.
    async fn send_b(&self, key: &str, session: Option<&str>) -> u16 {
        send(&self.a.client, &self.b.base_url(), key, session).await
    }

    async fn send_a(&self, key: &str, session: Option<&str>) -> u16 {
        send(&self.a.client, &self.a.base, key, session).await
    }

    async fn admin_b(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .a
            .client
            .request(method, format!("{}/api/v1/admin{path}", self.b.base_url()))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// B's view of an account's shared state.
    fn b_account(&self, account: AccountId) -> Option<PersistedAccountState> {
        relay_account(&self.b, account)
    }

    async fn shutdown(mut self) {
        if let Some(relay) = self.a.relay.take() {
            relay.shutdown().await;
        }
        self.b.shutdown().await;
        self.redis.kill();
    }
}

fn relay_account(relay: &RunningRelay, account: AccountId) -> Option<PersistedAccountState> {
    let snapshot = relay.state.registry.load();
    let runtime = snapshot.accounts.get(&account)?;
    let now = relay.state.now();
    let persisted = runtime.read_state(|state| state.persisted(now));
    Some(persisted)
}

async fn send(client: &reqwest::Client, base: &str, key: &str, session: Option<&str>) -> u16 {
    let mut request = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&message_body(false));
    if let Some(session) = session {
        request = request.header("x-claude-code-session-id", session);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn within<T>(limit: Duration, what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not within {limit:?}"),
    }
}

/// Waits until `condition` holds on the instance watched by `monitor`, re-checking after each
/// change it applies from other instances.
async fn eventually(
    monitor: &SharedMonitor,
    limit: Duration,
    what: &str,
    condition: impl Fn() -> bool,
) {
    let mut applied = monitor.subscribe_applied();
    within(limit, what, async {
        while !condition() {
            applied.changed().await.unwrap();
        }
    })
    .await;
}

fn is_disabled(state: &Option<PersistedAccountState>) -> bool {
    state
        .as_ref()
        .is_some_and(|state| state.disable_reason == Some(DisableReason::Manual))
}

fn breaker_open(state: &Option<PersistedAccountState>) -> bool {
    state
        .as_ref()
        .is_some_and(|state| state.breaker_phase == Some(relay_core::breaker::BreakerPhase::Open))
}

/// Three round-robin accounts created on A, seen by B.
async fn setup(cluster: &Cluster) -> (HashMap<&'static str, AccountId>, String) {
    let group = cluster.a.group("rr", Some("round_robin")).await;
    let mut accounts = HashMap::new();
    for (name, credential) in [("a", "sk-a"), ("b", "sk-b"), ("c", "sk-c")] {
        let id = cluster.a.console_account(group, name, credential, 1).await;
        accounts.insert(credential, id);
    }
    let key = cluster.a.key(group).await;
    let b_state = &cluster.b.state;
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(5),
        "B sees the resources created on A",
        || {
            let snapshot = b_state.registry.load();
            snapshot.accounts.len() == 3 && snapshot.key_runtime.len() == 1
        },
    )
    .await;
    (accounts, key)
}

fn group_of(cluster: &Cluster, account: AccountId) -> i64 {
    cluster.b.state.registry.load().accounts[&account]
        .account()
        .group_id
}

fn key_id(cluster: &Cluster, secret: &str) -> i64 {
    let snapshot = cluster.b.state.registry.load();
    let hash = relay_proxy::auth::hash_key(secret);
    snapshot.keys_by_hash[&hash].id
}

fn counts(cluster: &Cluster) -> [usize; 3] {
    ["sk-a", "sk-b", "sk-c"].map(|credential| cluster.a.mock.count_for(credential))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_fallback_state_sessions_and_config() {
    let cluster = Cluster::start().await;
    let (accounts, key) = setup(&cluster).await;

    // Round robin stays fair across both: each instance's cursor is fair over its own share.
    for _ in 0..6 {
        assert_eq!(cluster.send_a(&key, None).await, 200);
        assert_eq!(cluster.send_b(&key, None).await, 200);
    }
    assert_eq!(
        counts(&cluster),
        [4, 4, 4],
        "unfair spread across instances"
    );

    // A sticky session bound on A keeps its account on B.
    cluster.a.mock.clear();
    assert_eq!(cluster.send_a(&key, Some("cluster-session")).await, 200);
    let bound = counts(&cluster)
        .iter()
        .position(|count| *count == 1)
        .unwrap();
    let b_state = &cluster.b.state;
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(1),
        "B learns the session binding",
        || !b_state.sticky.is_empty(),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(cluster.send_b(&key, Some("cluster-session")).await, 200);
    }
    assert_eq!(cluster.send_a(&key, Some("cluster-session")).await, 200);
    let mut expected = [0; 3];
    expected[bound] = 6;
    assert_eq!(counts(&cluster), expected, "the session left its account");

    // An account whose breaker opens on A receives no traffic from B.
    cluster
        .a
        .mock
        .set_default("sk-a", Behavior::ServerError(500));
    let a_relay = cluster.a_relay();
    let mut sent = 0;
    while !breaker_open(&relay_account(a_relay, accounts["sk-a"])) {
        assert_eq!(cluster.send_a(&key, None).await, 200);
        sent += 1;
        assert!(
            sent < 60,
            "the breaker never opened on A: {:?} {:?}",
            relay_account(a_relay, accounts["sk-a"]),
            counts(&cluster)
        );
    }
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(1),
        "B sees the open breaker",
        || breaker_open(&cluster.b_account(accounts["sk-a"])),
    )
    .await;
    cluster.a.mock.clear();
    for _ in 0..6 {
        assert_eq!(cluster.send_b(&key, None).await, 200);
    }
    assert_eq!(
        cluster.a.mock.count_for("sk-a"),
        0,
        "B sent traffic to an open breaker"
    );

    // disable-account on A holds on B within a second.
    cluster
        .a
        .post_admin(
            "/fallback/disable-account",
            json!({ "account_id": accounts["sk-b"], "duration": "30m", "reason": "cluster test" }),
        )
        .await;
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(1),
        "B sees the disable",
        || is_disabled(&cluster.b_account(accounts["sk-b"])),
    )
    .await;
    cluster.a.mock.clear();
    for _ in 0..4 {
        assert_eq!(cluster.send_b(&key, None).await, 200);
    }
    assert_eq!(
        counts(&cluster),
        [0, 0, 4],
        "B used a disabled or broken account"
    );

    // A config PUT on A applies on B.
    let a_probe_timer = cluster.a_relay().state.health_check_interval();
    let mut b_probe_timer = b_state.health_check_interval();
    let (status, body) = cluster
        .a
        .admin(
            Method::PUT,
            "/fallback/config",
            Some(json!({ "circuit_breaker_threshold": 7 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(1),
        "B applies the config change",
        || b_state.global_config().circuit_breaker_threshold == 7,
    )
    .await;
    let (status, config) = cluster.admin_b(Method::GET, "/fallback/config", None).await;
    assert_eq!(status, 200);
    assert_eq!(config["circuit_breaker_threshold"], 7);
    // The probe interval did not change: neither instance restarts its probe timer.
    assert!(!a_probe_timer.has_changed().unwrap());
    assert!(!b_probe_timer.has_changed().unwrap());
    // A new interval restarts the probe timer on both, from the change.
    let (status, body) = cluster
        .a
        .admin(
            Method::PUT,
            "/fallback/config",
            Some(json!({ "health_check_interval": "5m" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(a_probe_timer.has_changed().unwrap());
    within(
        Duration::from_secs(1),
        "B restarts its probe timer",
        b_probe_timer.changed(),
    )
    .await
    .unwrap();
    assert_eq!(*b_probe_timer.borrow(), Duration::from_secs(300));

    // A per-key rate limit counts the requests of both instances.
    let limited = cluster
        .a
        .key_with(json!({ "name": "limited", "group_id": group_of(&cluster, accounts["sk-c"]), "rpm_limit": 3 }))
        .await;
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(1),
        "B sees the new key",
        || b_state.registry.load().key_runtime.len() == 2,
    )
    .await;
    assert_eq!(cluster.send_a(&limited, None).await, 200);
    assert_eq!(cluster.send_a(&limited, None).await, 200);
    let limited_id = key_id(&cluster, &limited);
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(1),
        "B learns the cluster's request count",
        || {
            let snapshot = b_state.registry.load();
            snapshot
                .key_runtime
                .get(&limited_id)
                .is_some_and(|runtime| lock(&runtime.limits).requests_this_minute >= 2)
        },
    )
    .await;
    assert_eq!(cluster.send_b(&limited, None).await, 200);
    assert_eq!(
        cluster.send_b(&limited, None).await,
        429,
        "B ignored the requests made through A"
    );

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_serve_through_a_redis_outage_and_converge_after_it() {
    let mut cluster = Cluster::start().await;
    let (accounts, key) = setup(&cluster).await;
    let resyncs_a = cluster.a_monitor().resyncs();
    let resyncs_b = cluster.b_monitor().resyncs();

    cluster.redis.kill();
    // No client request fails because Redis is gone.
    for _ in 0..5 {
        assert_eq!(cluster.send_a(&key, Some("outage-session")).await, 200);
        assert_eq!(cluster.send_b(&key, None).await, 200);
    }
    // A change made on A during the outage stays local for now.
    cluster
        .a
        .post_admin(
            "/fallback/disable-account",
            json!({ "account_id": accounts["sk-a"], "duration": "30m" }),
        )
        .await;
    assert!(!is_disabled(&cluster.b_account(accounts["sk-a"])));
    for _ in 0..4 {
        assert_eq!(cluster.send_b(&key, None).await, 200);
        assert_eq!(cluster.send_a(&key, None).await, 200);
    }

    // Redis returns: both resynchronise and B learns the change within 5 s.
    let port = cluster.redis.port;
    cluster.redis = RedisServer::start_on(port).await;
    within(Duration::from_secs(5), "both resynchronise", async {
        cluster.a_monitor().wait_resyncs(resyncs_a + 1).await;
        cluster.b_monitor().wait_resyncs(resyncs_b + 1).await;
    })
    .await;
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(5),
        "B converges on the change made during the outage",
        || is_disabled(&cluster.b_account(accounts["sk-a"])),
    )
    .await;

    // A change after the return reaches B too.
    cluster
        .a
        .post_admin(
            "/fallback/disable-account",
            json!({ "account_id": accounts["sk-c"], "duration": "10m" }),
        )
        .await;
    eventually(
        cluster.b_monitor(),
        Duration::from_secs(5),
        "B converges after Redis came back",
        || is_disabled(&cluster.b_account(accounts["sk-c"])),
    )
    .await;
    cluster.a.mock.clear();
    for _ in 0..3 {
        assert_eq!(cluster.send_b(&key, None).await, 200);
        assert_eq!(cluster.send_a(&key, None).await, 200);
    }
    assert_eq!(
        counts(&cluster),
        [0, 6, 0],
        "a disabled account got traffic"
    );

    cluster.shutdown().await;
}

#[tokio::test]
async fn an_unusable_redis_url_stops_the_start() {
    let mock = relay_mock::MockUpstream::start(MockConfig::default())
        .await
        .unwrap();
    let mut env = crate::support::base_env(&crate::support::temp_dir(), &mock);
    env.insert("REDIS_URL".to_owned(), "not a redis address".to_owned());
    let config = claude_code_relay::config::ServerConfig::load(
        &env,
        &claude_code_relay::config::Overrides::default(),
    )
    .unwrap();
    let Err(error) = claude_code_relay::app::start(config, None).await else {
        panic!("the start succeeded with an unusable REDIS_URL");
    };
    assert!(format!("{error:#}").contains("REDIS_URL"), "{error:#}");
}

#[tokio::test]
async fn an_unreachable_redis_does_not_stop_the_start_or_the_traffic() {
    // A port with nothing listening: cluster mode waits for Redis in the background.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::start_with(MockConfig::default(), |env| {
        env.insert("REDIS_URL".to_owned(), format!("redis://127.0.0.1:{port}/"));
    })
    .await;
    let (_, _, key) = h.simple_setup().await;
    for _ in 0..3 {
        assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    }
    let monitor = h.relay.as_ref().unwrap().shared.clone().unwrap();
    assert_eq!(monitor.resyncs(), 0);
    assert_eq!(monitor.written(), 0);
}

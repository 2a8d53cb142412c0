//! The Lua scripts against a real, private `redis-server` (no persistence, a free port).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::Script;

use crate::event::{self, Envelope, Event};
use crate::keys;
use crate::writer::{KEY_USAGE_SCRIPT, STATE_SCRIPT};

struct RedisServer {
    child: Child,
    port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server and returns once it logs that it accepts connections.
async fn redis_server() -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
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
        .unwrap()
        .unwrap();
    RedisServer { child, port }
}

fn client(server: &RedisServer) -> redis::Client {
    redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).unwrap()
}

async fn write_state(
    connection: &mut MultiplexedConnection,
    stamp: i64,
    state: &str,
    ttl_ms: i64,
) -> i64 {
    Script::new(STATE_SCRIPT)
        .key("relay:acct:1")
        .arg(stamp)
        .arg(state)
        .arg(ttl_ms)
        .arg(keys::EVENTS_CHANNEL)
        .arg(format!("event {stamp}"))
        .invoke_async(connection)
        .await
        .unwrap()
}

async fn stored(connection: &mut MultiplexedConnection) -> (Option<i64>, Option<String>, i64) {
    let (stamp, state): (Option<i64>, Option<String>) = redis::cmd("HMGET")
        .arg("relay:acct:1")
        .arg("stamp")
        .arg("state")
        .query_async(connection)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("relay:acct:1")
        .query_async(connection)
        .await
        .unwrap();
    (stamp, state, ttl)
}

#[tokio::test]
async fn the_state_script_keeps_the_newest_stamp_and_publishes_only_what_it_stored() {
    let server = redis_server().await;
    let client = client(&server);
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys::EVENTS_CHANNEL).await.unwrap();
    let mut messages = pubsub.into_on_message();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();

    assert_eq!(write_state(&mut connection, 10, "ten", 60_000).await, 1);
    assert_eq!(write_state(&mut connection, 5, "five", 60_000).await, 0);
    assert_eq!(
        write_state(&mut connection, 10, "ten again", 60_000).await,
        0
    );
    let (stamp, state, ttl) = stored(&mut connection).await;
    assert_eq!((stamp, state.as_deref()), (Some(10), Some("ten")));
    assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl}");

    // No expiry asked: the key persists.
    assert_eq!(write_state(&mut connection, 11, "eleven", 0).await, 1);
    let (stamp, state, ttl) = stored(&mut connection).await;
    assert_eq!(
        (stamp, state.as_deref(), ttl),
        (Some(11), Some("eleven"), -1)
    );

    // Only the two stored states were published: the next message is the marker.
    let _: () = redis::cmd("PUBLISH")
        .arg(keys::EVENTS_CHANNEL)
        .arg("marker")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut published = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        published.push(message.get_payload::<String>().unwrap());
    }
    assert_eq!(published, ["event 10", "event 11", "marker"]);
}

#[tokio::test]
async fn the_key_usage_script_counts_expires_and_publishes_cluster_totals() {
    let server = redis_server().await;
    let client = client(&server);
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys::EVENTS_CHANNEL).await.unwrap();
    let mut messages = pubsub.into_on_message();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let (day, minute) = (20_000, 28_800_000);
    let script = Script::new(KEY_USAGE_SCRIPT);
    let mut totals = Vec::new();
    for (cost, requests) in [(0.25, 1), (0.0, 1), (1.5, 0)] {
        let total: (String, i64) = script
            .key(keys::cost_key(7, day))
            .key(keys::rpm_key(7, minute))
            .arg(cost)
            .arg(requests)
            .arg(keys::COST_TTL_MS)
            .arg(keys::RPM_TTL_SECS)
            .arg(keys::EVENTS_CHANNEL)
            .arg(event::key_usage_prefix("other", 7, day, minute))
            .arg(event::KEY_USAGE_MIDDLE)
            .arg(event::KEY_USAGE_SUFFIX)
            .invoke_async(&mut connection)
            .await
            .unwrap();
        totals.push((total.0.parse::<f64>().unwrap(), total.1));
    }
    assert_eq!(totals, [(0.25, 1), (0.25, 2), (1.75, 2)]);

    let cost_ttl: i64 = redis::cmd("PTTL")
        .arg(keys::cost_key(7, day))
        .query_async(&mut connection)
        .await
        .unwrap();
    let rpm_ttl: i64 = redis::cmd("TTL")
        .arg(keys::rpm_key(7, minute))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        cost_ttl > keys::DAY_MS && cost_ttl <= keys::COST_TTL_MS,
        "{cost_ttl}"
    );
    assert!(rpm_ttl > 60 && rpm_ttl <= 120, "{rpm_ttl}");

    let mut events = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        events.push(Envelope::parse(message.get_payload_bytes()).unwrap());
    }
    assert_eq!(events[2].origin, "other");
    assert_eq!(
        events[2].event,
        Event::KeyUsage {
            key_id: 7,
            day,
            cost_today_usd: 1.75,
            minute,
            requests_this_minute: 2,
        }
    );
}

/// The subscriber's liveness check: a PING on a subscribed connection is answered and does not
/// swallow the messages around it.
#[tokio::test]
async fn a_subscribed_connection_answers_pings_and_keeps_its_messages() {
    let server = redis_server().await;
    let client = client(&server);
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys::EVENTS_CHANNEL).await.unwrap();
    let (mut sink, mut stream) = pubsub.split();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    for text in ["before", "after"] {
        let _: () = redis::cmd("PUBLISH")
            .arg(keys::EVENTS_CHANNEL)
            .arg(text)
            .query_async(&mut connection)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), sink.ping::<redis::Value>())
            .await
            .unwrap()
            .unwrap();
    }
    let mut received = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        received.push(message.get_payload::<String>().unwrap());
    }
    assert_eq!(received, ["before", "after"]);

    // Redis gone: the ping fails (or times out) instead of hanging the subscriber.
    drop(server);
    let answered = tokio::time::timeout(Duration::from_secs(5), sink.ping::<redis::Value>()).await;
    assert!(!matches!(answered, Ok(Ok(_))));
}

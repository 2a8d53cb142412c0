//! The client API: messages (JSON and SSE), count_tokens, models, prefixes, headers.

use futures_util::StreamExt;
use relay_mock::{Behavior, MockConfig};
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn non_stream_message_is_relayed_with_headers_and_query() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let response = h
        .client
        .post(h.url("/v1/messages?beta=true"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,fine-grained-tool-streaming-2025-05-14",
        )
        .header("x-app", "cli")
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-relay-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], relay_mock::DEFAULT_MOCK_TEXT);

    let seen = h.mock.requests_for("sk-a");
    assert_eq!(seen.len(), 1);
    let upstream = &seen[0];
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.query.as_deref(), Some("beta=true"));
    assert_eq!(upstream.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        upstream.header("anthropic-beta"),
        Some("claude-code-20250219,fine-grained-tool-streaming-2025-05-14")
    );
    assert_eq!(upstream.header("x-app"), Some("cli"));
    // The relay key never goes upstream; the account's key does.
    assert_eq!(upstream.header("x-api-key"), Some("sk-a"));
    assert!(!upstream.headers.iter().any(|(_, v)| v == &key));
    // The body goes upstream byte for byte.
    assert_eq!(
        upstream.body,
        serde_json::to_vec(&message_body(false)).unwrap()
    );
}

#[tokio::test]
async fn bearer_authorization_is_accepted_like_x_api_key() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let response = h
        .client
        .post(h.url("/v1/messages"))
        .bearer_auth(&key)
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(h.mock.requests_for("sk-a")[0].header("authorization"), None);
}

#[tokio::test]
async fn stream_passes_the_exact_event_sequence_through() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let body = sse_body(h.messages(&key, message_body(true)).await).await;
    assert_eq!(event_names(&body), relay_mock::expected_event_names(4));
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .map(|v| v["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, relay_mock::DEFAULT_MOCK_TEXT);
}

/// The first text delta reaches the client while the upstream is still streaming: the
/// upstream stops after its first delta and never ends, so a relay that buffered would
/// deliver nothing.
#[tokio::test]
async fn first_text_delta_arrives_before_the_stream_ends() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    // message_start, content_block_start, ping, first content_block_delta; then silence.
    h.mock
        .set_default("sk-a", Behavior::StallMidStream { after_events: 4 });
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = String::new();
    while !received.contains("content_block_delta") {
        let chunk = stream.next().await.expect("stream open").unwrap();
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(received.contains("message_start"));
    assert!(!received.contains("message_stop"));
}

#[tokio::test]
async fn count_tokens_and_models_are_relayed() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let response = h
        .client
        .post(h.url("/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .json(
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        h.mock.requests_for("sk-a")[0].path,
        "/v1/messages/count_tokens"
    );

    let response = h
        .client
        .get(h.url("/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["data"].as_array().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn claude_code_prefix_serves_the_same_routes() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let response = h
        .client
        .post(h.url("/claude-code/v1/messages?beta=true"))
        .header("x-api-key", &key)
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = h
        .client
        .get(h.url("/claude-code/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        h.mock.requests_for("sk-a")[0].query.as_deref(),
        Some("beta=true")
    );
}

#[tokio::test]
async fn health_and_readiness_need_no_credentials() {
    let h = Harness::start().await;
    let response = h.client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = h.client.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
}

#[tokio::test]
async fn model_mapping_rewrites_only_that_accounts_body() {
    let h = Harness::start().await;
    let group = h.group("mapped", None).await;
    h.post_admin(
        "/accounts",
        json!({
            "name": "glm", "platform": "claude_console", "group_id": group,
            "base_url": h.mock.base_url(), "api_key": "sk-glm",
            "model_mapping": {"claude-sonnet-4-5": "glm-4.6"}
        }),
    )
    .await;
    let key = h.key(group).await;
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    let sent = h.mock.requests_for("sk-glm")[0].json_body().unwrap();
    assert_eq!(sent["model"], "glm-4.6");
    assert_eq!(sent["messages"][0]["content"], "hello");
}

/// The answer of a mapped model is priced as the model that served it; the usage row keeps
/// the model the client asked for.
#[tokio::test]
async fn a_mapped_model_is_priced_as_the_model_that_served() {
    let h = Harness::start().await;
    let group = h.group("mapped", None).await;
    h.post_admin(
        "/accounts",
        json!({
            "name": "cheap", "platform": "claude_console", "group_id": group,
            "base_url": h.mock.base_url(), "api_key": "sk-cheap",
            "model_mapping": {"claude-sonnet-4-5": "claude-haiku-4-5"}
        }),
    )
    .await;
    let key = h.key(group).await;
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    let _ = response.text().await.unwrap();
    let row = &h.logs("").await[0];
    assert_eq!(row["model"], "claude-sonnet-4-5");
    let (input, output) = (
        row["input_tokens"].as_f64().unwrap(),
        row["output_tokens"].as_f64().unwrap(),
    );
    // Haiku 4.5: $1 in, $5 out per million tokens (Sonnet would be $3 and $15).
    let expected = (input * 1.0 + output * 5.0) / 1e6;
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!(
        expected > 0.0 && (cost - expected).abs() < 1e-12,
        "cost {cost}, expected {expected}"
    );
}

/// An account's HTTP proxy is used: the account's base URL names a host that does not
/// exist, and the mock, acting as the proxy, receives the request in absolute form.
#[tokio::test]
async fn account_proxy_is_used_for_upstream_requests() {
    let h = Harness::start().await;
    let group = h.group("proxied", None).await;
    h.post_admin(
        "/accounts",
        json!({
            "name": "via-proxy", "platform": "claude_console", "group_id": group,
            "base_url": "http://upstream.invalid", "api_key": "sk-proxied",
            "proxy_url": h.mock.base_url(),
        }),
    )
    .await;
    let key = h.key(group).await;
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.mock.count_for("sk-proxied"), 1);
}

/// A streamed answer's body, and in how many chunks it arrived.
async fn read_chunks(response: reqwest::Response) -> (usize, String) {
    let mut stream = response.bytes_stream();
    let mut chunks = 0;
    let mut body = String::new();
    while let Some(chunk) = stream.next().await {
        chunks += 1;
        body.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    (chunks, body)
}

#[tokio::test]
async fn slow_chunks_are_not_held_back() {
    // With a delay between upstream events, every event still arrives as its own chunk
    // in order; the whole stream is intact.
    let h = Harness::start_with(
        MockConfig {
            chunk_delay: std::time::Duration::from_millis(20),
            ..MockConfig::default()
        },
        |_| {},
    )
    .await;
    let (_, _, key) = h.simple_setup().await;
    let response = h.messages(&key, message_body(true)).await;
    let (chunks, body) = read_chunks(response).await;
    assert!(chunks >= 5, "events were merged into {chunks} chunks");
    assert_eq!(event_names(&body), relay_mock::expected_event_names(4));
}

/// Events that reach the relay together leave together: a zero-delay stream, which the mock
/// writes in one go, reaches the client in fewer HTTP chunks than it has events (one chunk
/// per event, as the upstream framed them, costs a client one decoded chunk per event before
/// it sees the first text delta).
#[tokio::test]
async fn a_burst_of_events_leaves_in_fewer_chunks_than_events() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let (chunks, body) = read_chunks(response).await;
    let events = relay_mock::expected_event_names(4);
    assert_eq!(event_names(&body), events);
    assert!(
        chunks < events.len(),
        "{} events arrived in {chunks} chunks",
        events.len()
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_once_closed() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    // Answers of every shape, one after another: each leaves its connection ready for the
    // next, so one connection carries them all.
    for stream in [false, true, false, true, false, false] {
        let response = h.messages(&key, message_body(stream)).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let complete = if stream {
            text.contains("event: message_stop")
        } else {
            text.contains(relay_mock::DEFAULT_MOCK_TEXT)
        };
        assert!(complete, "{text}");
    }
    h.mock.push("sk-a", Behavior::BadRequest);
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 400);
    assert_eq!(h.mock.total_count(), 7);
    assert_eq!(h.mock.connections_accepted(), 1);

    // The upstream closes the connection after this answer: the next request gets a new one.
    h.mock.push(
        "sk-a",
        Behavior::Status {
            status: 200,
            headers: vec![
                ("connection".to_owned(), "close".to_owned()),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
            body: json!({
                "id": "msg_closing", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "bye"}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 3, "output_tokens": 1}
            })
            .to_string(),
        },
    );
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["id"], "msg_closing");
    for _ in 0..3 {
        assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    }
    assert_eq!(h.mock.connections_accepted(), 2);

    // A body cut short takes its connection with it.
    h.mock
        .push("sk-a", Behavior::DropMidStream { after_events: 2 });
    let response = h.messages(&key, message_body(true)).await;
    let _ = response.text().await;
    for _ in 0..2 {
        assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    }
    assert_eq!(h.mock.connections_accepted(), 3);
}

/// Upstream connections left idle past their timeout are closed by the periodic sweep even
/// when their origin gets no more requests; the next request opens a new one.
#[tokio::test]
async fn idle_upstream_connections_past_their_timeout_are_closed() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(h.messages(&key, body.clone()).await.status(), 200);
    let clients = &h.relay.as_ref().unwrap().state.clients;
    let now = tokio::time::Instant::now();
    assert_eq!(clients.close_expired(now), 1, "the connection is pooled");
    assert_eq!(
        clients.close_expired(now + std::time::Duration::from_secs(91)),
        0,
        "past the idle timeout it is closed"
    );
    let response = h.messages(&key, body).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    assert_eq!(clients.close_expired(tokio::time::Instant::now()), 1);
}

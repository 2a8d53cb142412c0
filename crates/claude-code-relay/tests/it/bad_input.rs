//! Bad input always gets a clear Anthropic-format error, and the relay keeps serving.

use serde_json::{json, Value};

use crate::support::*;

async fn assert_error(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_type(&body), kind, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    body
}

#[tokio::test]
async fn malformed_json_is_400_invalid_request_error() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    for body in [
        "{\"model\": ",
        "not json",
        "[1,2]",
        "{\"model\": 5, \"max_tokens\": 1}",
        "{\"model\":\"m\",\"stream\":\"yes\"}",
    ] {
        let response = h
            .client
            .post(h.url("/v1/messages"))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "invalid_request_error").await;
    }
    assert_eq!(h.mock.total_count(), 0);
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
}

#[tokio::test]
async fn oversized_body_gets_a_413_the_client_reads() {
    let h = Harness::start_with(Default::default(), |env| {
        env.insert("RELAY_BODY_LIMIT_BYTES".to_owned(), "4096".to_owned());
    })
    .await;
    let (_, _, key) = h.simple_setup().await;
    let big = "x".repeat(4 * 1024 * 1024);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": big}]});
    let response = h
        .client
        .post(h.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "request_too_large").await;
    // Also without a content-length (chunked upload).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![b'x'; 64 * 1024])).collect();
    let response = h
        .client
        .post(h.url("/v1/messages"))
        .header("x-api-key", &key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "request_too_large").await;
    assert_eq!(h.mock.total_count(), 0);
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
}

#[tokio::test]
async fn missing_unknown_and_deleted_keys_are_401() {
    let h = Harness::start().await;
    let (group, _, _) = h.simple_setup().await;
    let response = h
        .client
        .post(h.url("/v1/messages"))
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "authentication_error").await;
    let response = h.messages("sk-relay-unknown", message_body(false)).await;
    assert_error(response, 401, "authentication_error").await;

    let created = h
        .post_admin("/api-keys", json!({"name": "doomed", "group_id": group}))
        .await;
    let plain = created["key"].as_str().unwrap().to_owned();
    assert_eq!(h.messages(&plain, message_body(false)).await.status(), 200);
    // A key already seen is recognised without hashing it again; disabling it still counts
    // at once, and so does enabling it again.
    for (enabled, status) in [(false, 403), (true, 200)] {
        let path = format!("/api-keys/{}", created["id"]);
        let body = json!({ "enabled": enabled });
        assert_eq!(
            h.admin(reqwest::Method::PUT, &path, Some(body)).await.0,
            200
        );
        for _ in 0..3 {
            let response = h.messages(&plain, message_body(false)).await;
            assert_eq!(response.status(), status, "enabled={enabled}");
        }
    }
    let (status, _) = h
        .admin(
            reqwest::Method::DELETE,
            &format!("/api-keys/{}", created["id"]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let response = h.messages(&plain, message_body(false)).await;
    assert_error(response, 401, "authentication_error").await;
}

#[tokio::test]
async fn disabled_expired_and_disallowed_model_are_403() {
    let h = Harness::start().await;
    let (group, _, _) = h.simple_setup().await;
    let disabled = h
        .key_with(json!({"name": "off", "group_id": group, "enabled": false}))
        .await;
    assert_error(
        h.messages(&disabled, message_body(false)).await,
        403,
        "permission_error",
    )
    .await;
    let expired = h
        .key_with(json!({"name": "old", "group_id": group, "expires_at": "2020-01-01T00:00:00Z"}))
        .await;
    assert_error(
        h.messages(&expired, message_body(false)).await,
        403,
        "permission_error",
    )
    .await;
    let haiku_only = h
        .key_with(
            json!({"name": "haiku", "group_id": group, "model_allowlist": ["claude-haiku-4-5"]}),
        )
        .await;
    assert_error(
        h.messages(&haiku_only, message_body(false)).await,
        403,
        "permission_error",
    )
    .await;
    let mut haiku = message_body(false);
    haiku["model"] = json!("claude-haiku-4-5");
    assert_eq!(h.messages(&haiku_only, haiku).await.status(), 200);
    assert_eq!(h.mock.total_count(), 1);
}

#[tokio::test]
async fn unknown_route_is_a_404_envelope() {
    let h = Harness::start().await;
    let response = h.client.get(h.url("/v2/nothing")).send().await.unwrap();
    assert_error(response, 404, "not_found_error").await;
    let response = h
        .client
        .get(h.url("/api/v1/admin/nothing"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found_error").await;
}

/// `POST /v1/messages` is recognised before the router; its neighbours still get the router's
/// answers, and the same handler serves the route under `/claude-code`.
#[tokio::test]
async fn the_messages_route_and_its_neighbours() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let response = h.client.get(h.url("/v1/messages")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let response = h
        .client
        .post(h.url("/v1/messages/"))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found_error").await;
    assert_eq!(h.mock.total_count(), 0);
    for path in [
        "/v1/messages",
        "/v1/messages?beta=true",
        "/claude-code/v1/messages",
    ] {
        let response = h
            .client
            .post(h.url(path))
            .header("x-api-key", &key)
            .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        assert!(
            response.headers().contains_key("x-relay-request-id"),
            "{path}"
        );
    }
    assert_eq!(h.mock.total_count(), 3);
    let response = h
        .client
        .post(h.url("/v1/messages"))
        .body("{not json")
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request_error").await;
}

#[tokio::test]
async fn admin_token_is_required_and_a_relay_key_is_not_one() {
    let h = Harness::start().await;
    let (_, _, key) = h.simple_setup().await;
    let response = h
        .client
        .get(h.url("/api/v1/admin/groups"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "authentication_error").await;
    let response = h
        .client
        .get(h.url("/api/v1/admin/groups"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "authentication_error").await;
    let response = h
        .client
        .get(h.url("/api/v1/admin/groups"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "authentication_error").await;
}

#[tokio::test]
async fn invalid_admin_payloads_name_the_field() {
    let h = Harness::start().await;
    let group = h.group("g", None).await;
    let cases = [
        ("/groups", json!({"name": "x", "bogus": 1}), "bogus"),
        ("/groups", json!({"name": ""}), "name"),
        (
            "/groups",
            json!({"name": "y", "strategy": "fastest"}),
            "strategy",
        ),
        (
            "/groups",
            json!({"name": "z", "fallback": {"max_retries": 99}}),
            "max_retries",
        ),
        (
            "/accounts",
            json!({"name": "a", "platform": "nope", "group_id": group}),
            "platform",
        ),
        (
            "/accounts",
            json!({"name": "a", "platform": "claude_console", "group_id": group}),
            "api_key",
        ),
        (
            "/accounts",
            json!({"name": "a", "platform": "claude_console", "group_id": group, "api_key": "k", "weight": "heavy"}),
            "weight",
        ),
        (
            "/accounts",
            json!({"name": "a", "platform": "claude_console", "group_id": 999, "api_key": "k"}),
            "group_id",
        ),
        (
            "/accounts",
            json!({"name": "a", "platform": "claude_console", "group_id": group, "api_key": "k", "proxy_url": "ftp://x"}),
            "proxy_url",
        ),
        (
            "/accounts",
            json!({"name": "a", "platform": "claude_console", "group_id": group, "api_key": "k", "base_url": "api.anthropic.com"}),
            "base_url",
        ),
        (
            "/api-keys",
            json!({"name": "k", "group_id": group, "daily_cost_limit_usd": -1}),
            "daily_cost_limit_usd",
        ),
        (
            "/api-keys",
            json!({"name": "k", "group_id": group, "expires_at": "tomorrow"}),
            "expires_at",
        ),
        ("/api-keys", json!({"name": "k"}), "group_id"),
    ];
    for (path, body, field) in cases {
        let (status, value) = h
            .admin(reqwest::Method::POST, path, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{path} {body} -> {value}");
        assert_eq!(error_type(&value), "invalid_request_error");
        let message = value["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{path} {body}: message {message:?} does not name {field}"
        );
    }
    let response = h
        .client
        .post(h.url("/api/v1/admin/groups"))
        .bearer_auth(ADMIN_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request_error").await;
    let response = h.client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

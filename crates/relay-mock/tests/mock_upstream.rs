//! The mock over real HTTP on loopback, as the relay's tests and benchmarks will use it.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on purpose: a panic there is a failed assertion"
)]

use std::time::Duration;

use relay_mock::{
    expected_event_names, Behavior, MockConfig, MockUpstream, MockUsage, DEFAULT_MOCK_MODEL,
    DEFAULT_MOCK_TEXT,
};
use serde_json::{json, Value};
use tokio::time::Instant;

const MESSAGES_BODY: &str =
    r#"{"model":"claude-test-model","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str = r#"{"model":"claude-test-model","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

async fn start_mock(config: MockConfig) -> MockUpstream {
    MockUpstream::start(config).await.unwrap()
}

fn http_client() -> reqwest::Client {
    // No proxy: a proxy variable in the environment must not reroute loopback traffic.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post_messages(mock: &MockUpstream, api_key: &str, body: &str) -> reqwest::Response {
    http_client()
        .post(format!("{}/v1/messages?beta=true", mock.base_url()))
        .header("x-api-key", api_key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text:?}"))
}

fn json_body(value: Value) -> String {
    value.to_string()
}

/// Splits an SSE body into (event name, data JSON) pairs, insisting on the exact framing.
fn parse_sse_events(text: &str) -> Vec<(String, Value)> {
    assert!(
        text.ends_with("\n\n"),
        "the stream ends after a whole event"
    );
    text.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|block| {
            let mut lines = block.lines();
            let event_name = lines
                .next()
                .and_then(|line| line.strip_prefix("event: "))
                .unwrap();
            let data = lines
                .next()
                .and_then(|line| line.strip_prefix("data: "))
                .unwrap();
            assert_eq!(lines.next(), None, "one data line per event");
            (event_name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

async fn error_type_of(response: reqwest::Response) -> String {
    let body: Value = response.text().await.map(|text| parse_json(&text)).unwrap();
    assert_eq!(body["type"], "error", "Anthropic's envelope: {body}");
    assert!(body["error"]["message"].is_string());
    body["error"]["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn non_stream_answer_has_the_messages_shape() {
    let mock = start_mock(MockConfig {
        usage: MockUsage {
            input_tokens: 30,
            output_tokens: 9,
            cache_read_input_tokens: 5,
            cache_creation_input_tokens: 2,
        },
        ..MockConfig::default()
    })
    .await;
    let response = post_messages(&mock, "sk-plain", MESSAGES_BODY).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.text().await.map(|text| parse_json(&text)).unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-test-model");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": DEFAULT_MOCK_TEXT}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 30, "output_tokens": 9,
               "cache_creation_input_tokens": 2, "cache_read_input_tokens": 5})
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn model_echo_off_names_the_default_model() {
    let mock = start_mock(MockConfig {
        model_echo: false,
        ..MockConfig::default()
    })
    .await;
    let body: Value = post_messages(&mock, "sk", MESSAGES_BODY)
        .await
        .text()
        .await
        .map(|text| parse_json(&text))
        .unwrap();
    assert_eq!(body["model"], DEFAULT_MOCK_MODEL);
}

#[tokio::test]
async fn stream_follows_anthropics_exact_event_sequence() {
    let mock = start_mock(MockConfig::default()).await;
    let response = post_messages(&mock, "sk-plain", STREAM_BODY).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(response.headers().contains_key("request-id"));
    let events = parse_sse_events(&response.text().await.unwrap());

    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, expected_event_names(4));
    for (name, data) in &events {
        assert_eq!(
            data["type"],
            name.as_str(),
            "data.type repeats the event name"
        );
    }

    let message = &events[0].1["message"];
    assert_eq!(message["model"], "claude-test-model");
    assert_eq!(message["content"], json!([]));
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 12, "output_tokens": 1,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    );
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let streamed_text: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| {
            assert_eq!(data["delta"]["type"], "text_delta");
            data["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(streamed_text, DEFAULT_MOCK_TEXT);
    let message_delta = &events[events.len() - 2].1;
    assert_eq!(message_delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(
        message_delta["usage"]["output_tokens"], 7,
        "final cumulative output tokens"
    );
}

#[tokio::test(start_paused = true)]
async fn stream_events_arrive_as_separate_chunks_paced_by_chunk_delay() {
    let chunk_delay = Duration::from_millis(250);
    let mock = start_mock(MockConfig {
        text_chunks: 3,
        chunk_delay,
        ..MockConfig::default()
    })
    .await;
    let mut response = post_messages(&mock, "sk-plain", STREAM_BODY).await;
    let mut arrivals = Vec::new();
    let mut chunks = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        arrivals.push(Instant::now());
        chunks.push(String::from_utf8(chunk.to_vec()).unwrap());
    }
    assert_eq!(chunks.len(), expected_event_names(3).len());
    for chunk in &chunks {
        assert_eq!(
            parse_sse_events(chunk).len(),
            1,
            "one event per chunk: {chunk:?}"
        );
    }
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= chunk_delay,
            "events are paced by chunk_delay"
        );
    }
    let total = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(total >= chunk_delay * (chunks.len() as u32 - 1));
}

#[tokio::test]
async fn malformed_json_is_refused_like_anthropic() {
    let mock = start_mock(MockConfig::default()).await;
    let response = post_messages(&mock, "sk", "{not json").await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_type_of(response).await, "invalid_request_error");

    let response = http_client()
        .post(format!("{}/v1/messages/count_tokens", mock.base_url()))
        .header("x-api-key", "sk")
        .body("[1,")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        mock.count_for("sk"),
        2,
        "refused requests are still recorded"
    );
}

#[tokio::test]
async fn count_tokens_and_models_answer_like_anthropic() {
    let mock = start_mock(MockConfig::default()).await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hello there"}]}"#;
    let counted: Value = http_client()
        .post(format!("{}/v1/messages/count_tokens", mock.base_url()))
        .header("x-api-key", "sk")
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| parse_json(&text))
        .unwrap();
    assert_eq!(
        counted,
        json!({"input_tokens": (body.len() as u64).div_ceil(4)})
    );

    let models: Value = http_client()
        .get(format!("{}/v1/models", mock.base_url()))
        .header("x-api-key", "sk")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| parse_json(&text))
        .unwrap();
    let data = models["data"].as_array().unwrap();
    assert!(!data.is_empty());
    assert!(data.iter().all(|model| model["type"] == "model"));
    assert_eq!(models["has_more"], false);
    assert_eq!(models["first_id"], data[0]["id"]);
    assert_eq!(models["last_id"], data[data.len() - 1]["id"]);
}

#[tokio::test]
async fn rate_limited_answer_carries_retry_and_reset_headers() {
    let mock = start_mock(MockConfig::default()).await;
    mock.push(
        "sk-a",
        Behavior::RateLimited {
            retry_after_secs: Some(17),
            reset_in_secs: Some(60),
        },
    );
    let response = post_messages(&mock, "sk-a", MESSAGES_BODY).await;
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    assert_eq!(headers["retry-after"], "17");
    assert_eq!(headers["anthropic-ratelimit-requests-remaining"], "0");
    assert_eq!(headers["anthropic-ratelimit-tokens-remaining"], "0");
    for reset in [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
    ] {
        let reset_at = headers[reset].to_str().unwrap();
        let shape: Vec<bool> = reset_at.chars().map(|c| c.is_ascii_digit()).collect();
        assert_eq!(reset_at.len(), 20, "RFC 3339 in UTC: {reset_at}");
        assert!(reset_at.ends_with('Z') && &reset_at[10..11] == "T");
        assert!(shape[..4].iter().all(|digit| *digit));
    }
    assert_eq!(error_type_of(response).await, "rate_limit_error");

    mock.push(
        "sk-a",
        Behavior::RateLimited {
            retry_after_secs: None,
            reset_in_secs: None,
        },
    );
    let response = post_messages(&mock, "sk-a", MESSAGES_BODY).await;
    assert_eq!(response.status(), 429);
    assert!(!response.headers().contains_key("retry-after"));
    assert!(!response
        .headers()
        .contains_key("anthropic-ratelimit-requests-reset"));
}

#[tokio::test]
async fn error_behaviours_answer_their_status_in_anthropics_envelope() {
    let mock = start_mock(MockConfig::default()).await;
    let cases = [
        (Behavior::Overloaded, 529, "overloaded_error"),
        (Behavior::ServerError(502), 502, "api_error"),
        (Behavior::ServerError(504), 504, "api_error"),
        (Behavior::Unauthorized, 401, "authentication_error"),
        (Behavior::BadRequest, 400, "invalid_request_error"),
    ];
    for (behavior, status, error_type) in cases {
        mock.push("sk", behavior);
        let response = post_messages(&mock, "sk", STREAM_BODY).await;
        assert_eq!(response.status(), status);
        assert!(response.headers().contains_key("request-id"));
        assert_eq!(error_type_of(response).await, error_type);
    }
}

#[tokio::test]
async fn status_behaviour_answers_exactly_what_was_scripted() {
    let mock = start_mock(MockConfig::default()).await;
    mock.push(
        "sk",
        Behavior::Status {
            status: 402,
            headers: vec![("x-billing".to_owned(), "exhausted".to_owned())],
            body: "no credit".to_owned(),
        },
    );
    let response = post_messages(&mock, "sk", MESSAGES_BODY).await;
    assert_eq!(response.status(), 402);
    assert_eq!(response.headers()["x-billing"], "exhausted");
    assert_eq!(response.text().await.unwrap(), "no credit");
}

#[tokio::test(start_paused = true)]
async fn slow_first_byte_waits_before_the_headers() {
    let mock = start_mock(MockConfig::default()).await;
    mock.push("sk", Behavior::SlowFirstByte(Duration::from_secs(3)));
    let started = Instant::now();
    let response = post_messages(&mock, "sk", MESSAGES_BODY).await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(response.status(), 200);

    let started = Instant::now();
    let response = post_messages(&mock, "sk", MESSAGES_BODY).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the slow answer was one-shot"
    );
    assert_eq!(response.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn hang_is_recorded_and_never_answers_until_shutdown() {
    let mock = start_mock(MockConfig::default()).await;
    mock.set_default("sk-hang", Behavior::Hang);
    let url = format!("{}/v1/messages", mock.base_url());
    let pending_request = tokio::spawn(async move {
        http_client()
            .post(url)
            .header("x-api-key", "sk-hang")
            .body(MESSAGES_BODY)
            .send()
            .await
    });
    mock.wait_for_count("sk-hang", 1).await;
    assert_eq!(mock.requests_for("sk-hang").len(), 1);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!pending_request.is_finished(), "a hang never answers");

    mock.shutdown().await;
    let outcome = pending_request.await.unwrap();
    if let Ok(response) = outcome {
        assert_eq!(
            response.status(),
            503,
            "shutdown releases the hanging request"
        );
    }
}

#[tokio::test]
async fn drop_mid_stream_sends_some_events_then_breaks_the_connection() {
    let mock = start_mock(MockConfig::default()).await;
    mock.push("sk", Behavior::DropMidStream { after_events: 3 });
    let mut response = post_messages(&mock, "sk", STREAM_BODY).await;
    assert_eq!(response.status(), 200);
    let mut received = String::new();
    let transfer_error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.push_str(std::str::from_utf8(&chunk).unwrap()),
            Ok(None) => panic!("the stream ended cleanly after {received:?}"),
            Err(error) => break error,
        }
    };
    assert!(
        transfer_error.is_body() || transfer_error.is_decode(),
        "{transfer_error:?}"
    );
    let names: Vec<String> = parse_sse_events(&received)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["message_start", "content_block_start", "ping"]);

    mock.push("sk", Behavior::DropMidStream { after_events: 3 });
    let response = post_messages(&mock, "sk", MESSAGES_BODY).await;
    assert!(
        response.bytes().await.is_err(),
        "a JSON answer is cut as well"
    );

    let response = post_messages(&mock, "sk", STREAM_BODY).await;
    assert!(
        response.text().await.unwrap().contains("message_stop"),
        "one-shot"
    );
}

#[tokio::test(start_paused = true)]
async fn stall_mid_stream_keeps_the_connection_open_without_sending() {
    let mock = start_mock(MockConfig::default()).await;
    mock.push("sk", Behavior::StallMidStream { after_events: 2 });
    let mut response = post_messages(&mock, "sk", STREAM_BODY).await;
    let mut received = String::new();
    while received.matches("\n\n").count() < 2 {
        let chunk = response.chunk().await.unwrap().unwrap();
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let names: Vec<String> = parse_sse_events(&received)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["message_start", "content_block_start"]);
    let next_chunk = tokio::time::timeout(Duration::from_secs(3600), response.chunk()).await;
    assert!(
        next_chunk.is_err(),
        "nothing more arrives, and the connection stays open"
    );

    mock.shutdown().await;
    assert!(
        response.chunk().await.is_err(),
        "shutdown breaks the stalled stream"
    );
}

#[tokio::test]
async fn stream_error_event_comes_first_with_status_200() {
    let mock = start_mock(MockConfig::default()).await;
    mock.push(
        "sk",
        Behavior::StreamErrorEvent {
            error_type: "overloaded_error".to_owned(),
        },
    );
    let response = post_messages(&mock, "sk", STREAM_BODY).await;
    assert_eq!(response.status(), 200);
    let events = parse_sse_events(&response.text().await.unwrap());
    assert_eq!(events[0].0, "error");
    assert_eq!(events[0].1["error"]["type"], "overloaded_error");

    mock.push(
        "sk",
        Behavior::StreamErrorEvent {
            error_type: "overloaded_error".to_owned(),
        },
    );
    let response = post_messages(&mock, "sk", MESSAGES_BODY).await;
    assert_eq!(response.status(), 529, "non-stream requests get the status");
    assert_eq!(error_type_of(response).await, "overloaded_error");
}

#[tokio::test]
async fn scripts_are_per_credential_and_one_shots_are_fifo() {
    let mock = start_mock(MockConfig::default()).await;
    mock.set_default("sk-a", Behavior::ServerError(500));
    mock.push("sk-a", Behavior::Unauthorized);
    mock.push("sk-a", Behavior::Overloaded);
    mock.push("sk-b", Behavior::BadRequest);

    let mut statuses_a = Vec::new();
    for _ in 0..4 {
        statuses_a.push(post_messages(&mock, "sk-a", MESSAGES_BODY).await.status());
    }
    assert_eq!(statuses_a, [401, 529, 500, 500]);
    assert_eq!(
        post_messages(&mock, "sk-b", MESSAGES_BODY).await.status(),
        400
    );
    assert_eq!(
        post_messages(&mock, "sk-b", MESSAGES_BODY).await.status(),
        200
    );
    assert_eq!(
        post_messages(&mock, "sk-c", MESSAGES_BODY).await.status(),
        200
    );
    assert_eq!(mock.count_for("sk-a"), 4);
    assert_eq!(mock.count_for("sk-b"), 2);
    assert_eq!(mock.count_for("sk-never"), 0);
}

#[tokio::test]
async fn bearer_tokens_are_credentials_too() {
    let mock = start_mock(MockConfig::default()).await;
    mock.push("oauth-access-1", Behavior::Unauthorized);
    let response = http_client()
        .post(format!("{}/v1/messages", mock.base_url()))
        .bearer_auth("oauth-access-1")
        .body(MESSAGES_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(mock.count_for("oauth-access-1"), 1);
    assert_eq!(
        mock.requests()[0].credential.as_deref(),
        Some("oauth-access-1")
    );
}

#[tokio::test]
async fn global_default_covers_credentials_without_scripts() {
    let mock = start_mock(MockConfig::default()).await;
    mock.set_global_default(Behavior::ServerError(503));
    mock.set_default("sk-healthy", Behavior::Ok);
    assert_eq!(
        post_messages(&mock, "sk-other", MESSAGES_BODY)
            .await
            .status(),
        503
    );
    assert_eq!(
        post_messages(&mock, "sk-healthy", MESSAGES_BODY)
            .await
            .status(),
        200
    );
    assert_eq!(
        post_messages(&mock, "sk-mock-529", MESSAGES_BODY)
            .await
            .status(),
        529,
        "a credential named to fail keeps its convention"
    );
    mock.clear_scripts();
    assert_eq!(
        post_messages(&mock, "sk-other", MESSAGES_BODY)
            .await
            .status(),
        200
    );
}

#[tokio::test(start_paused = true)]
async fn credential_conventions_demo_faults_without_scripts() {
    let mock = start_mock(MockConfig::default()).await;
    let response = post_messages(&mock, "sk-ant-mock-429-x", MESSAGES_BODY).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "30");
    for (credential, status) in [
        ("key-mock-529", 529),
        ("key-mock-500", 500),
        ("key-mock-401", 401),
    ] {
        assert_eq!(
            post_messages(&mock, credential, MESSAGES_BODY)
                .await
                .status(),
            status
        );
    }

    let started = Instant::now();
    let response = post_messages(&mock, "key-mock-slow", MESSAGES_BODY).await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(response.status(), 200);

    let response = post_messages(&mock, "key-mock-drop", STREAM_BODY).await;
    assert!(response.text().await.is_err());

    mock.set_default("key-mock-529", Behavior::Ok);
    assert_eq!(
        post_messages(&mock, "key-mock-529", MESSAGES_BODY)
            .await
            .status(),
        200,
        "scripts override conventions"
    );
}

#[tokio::test]
async fn requests_are_recorded_faithfully_in_order() {
    let mock = start_mock(MockConfig::default()).await;
    post_messages(&mock, "sk-a", MESSAGES_BODY).await;
    post_messages(&mock, "sk-b", STREAM_BODY).await;
    post_messages(&mock, "sk-a", STREAM_BODY).await;

    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.query.as_deref(), Some("beta=true"));
    assert_eq!(first.credential.as_deref(), Some("sk-a"));
    assert_eq!(first.body, MESSAGES_BODY.as_bytes());
    assert_eq!(first.header("Anthropic-Version"), Some("2023-06-01"));
    assert!(first
        .headers
        .iter()
        .all(|(name, _)| *name == name.to_lowercase()));
    assert_eq!(first.json_body().unwrap()["model"], "claude-test-model");
    assert_eq!(requests[1].credential.as_deref(), Some("sk-b"));

    let for_a = mock.requests_for("sk-a");
    assert_eq!(for_a.len(), 2);
    assert_eq!(for_a[1].body, STREAM_BODY.as_bytes());

    mock.clear();
    assert!(mock.requests().is_empty());
    assert_eq!(mock.count_for("sk-a"), 0);
}

#[tokio::test]
async fn recording_can_be_switched_off_while_counts_remain() {
    let mock = start_mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    post_messages(&mock, "sk-a", MESSAGES_BODY).await;
    post_messages(&mock, "sk-a", MESSAGES_BODY).await;
    assert!(mock.requests().is_empty());
    assert_eq!(mock.count_for("sk-a"), 2);
    assert_eq!(mock.total_count(), 2);
}

async fn refresh(mock: &MockUpstream, form: &str) -> reqwest::Response {
    http_client()
        .post(format!("{}/v1/oauth/token", mock.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn oauth_refresh_tokens_rotate_and_are_single_use() {
    let mock = start_mock(MockConfig::default()).await;
    mock.oauth_issue("refresh-1", "access-2", "refresh-2", 28_800);
    mock.oauth_issue("refresh-2", "access-3", "refresh-3", 28_800);

    let response = refresh(
        &mock,
        "grant_type=refresh_token&refresh_token=refresh-1&client_id=client-x",
    )
    .await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.text().await.map(|text| parse_json(&text)).unwrap();
    assert_eq!(tokens["access_token"], "access-2");
    assert_eq!(tokens["refresh_token"], "refresh-2");
    assert_eq!(tokens["expires_in"], 28_800);
    assert_eq!(tokens["token_type"], "Bearer");

    let reused = refresh(&mock, "grant_type=refresh_token&refresh_token=refresh-1").await;
    assert_eq!(reused.status(), 400);
    let reused: Value = reused.text().await.map(|text| parse_json(&text)).unwrap();
    assert_eq!(reused["error"], "invalid_grant");

    let rotated: Value = http_client()
        .post(format!("{}/v1/oauth/token", mock.base_url()))
        .header("content-type", "application/json")
        .body(json_body(
            json!({"grant_type": "refresh_token", "refresh_token": "refresh-2",
                               "client_id": "client-x"}),
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| parse_json(&text))
        .unwrap();
    assert_eq!(rotated["access_token"], "access-3");

    let unknown = refresh(&mock, "grant_type=refresh_token&refresh_token=never-issued").await;
    assert_eq!(unknown.status(), 400);
    assert_eq!(mock.oauth_refresh_count(), 4);

    let recorded = mock.requests();
    assert_eq!(recorded[0].path, "/v1/oauth/token");
    assert!(String::from_utf8_lossy(&recorded[0].body).contains("client_id=client-x"));
}

#[tokio::test(start_paused = true)]
async fn oauth_delay_makes_concurrent_refreshes_overlap() {
    let mock = start_mock(MockConfig::default()).await;
    mock.oauth_issue("refresh-1", "access-2", "refresh-2", 3600);
    mock.set_oauth_delay(Duration::from_secs(2));
    let started = Instant::now();
    let form = "grant_type=refresh_token&refresh_token=refresh-1";
    let (first, second) = tokio::join!(refresh(&mock, form), refresh(&mock, form));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2));
    assert!(
        elapsed < Duration::from_secs(4),
        "the two refreshes were in flight together"
    );
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 400],
        "only one refresh may redeem the token"
    );
    assert_eq!(mock.oauth_refresh_count(), 2);
}

#[tokio::test]
async fn control_api_scripts_and_counts_over_http() {
    let mock = start_mock(MockConfig::default()).await;
    let client = http_client();
    let scripted = client
        .post(format!("{}/_mock/script", mock.base_url()))
        .header("content-type", "application/json")
        .body(json_body(
            json!({"credential": "sk-demo", "behavior": "rate_limited", "count": 2}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(scripted.status(), 200);
    let statuses = [
        post_messages(&mock, "sk-demo", MESSAGES_BODY)
            .await
            .status(),
        post_messages(&mock, "sk-demo", MESSAGES_BODY)
            .await
            .status(),
        post_messages(&mock, "sk-demo", MESSAGES_BODY)
            .await
            .status(),
    ];
    assert_eq!(statuses, [429, 429, 200]);

    let refused = client
        .post(format!("{}/_mock/script", mock.base_url()))
        .header("content-type", "application/json")
        .body(json_body(
            json!({"credential": "sk-demo", "behavior": "explode"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    client
        .post(format!("{}/_mock/script", mock.base_url()))
        .header("content-type", "application/json")
        .body(json_body(
            json!({"credential": "sk-demo", "behavior": "overloaded"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        post_messages(&mock, "sk-demo", MESSAGES_BODY)
            .await
            .status(),
        529
    );

    let counts: Value = client
        .get(format!("{}/_mock/requests", mock.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| parse_json(&text))
        .unwrap();
    assert_eq!(counts, json!({"total": 4, "by_credential": {"sk-demo": 4}}));
}

#[tokio::test]
async fn unknown_routes_get_a_not_found_envelope() {
    let mock = start_mock(MockConfig::default()).await;
    let response = http_client()
        .get(format!("{}/v1/nowhere", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_type_of(response).await, "not_found_error");
    assert_eq!(mock.requests()[0].path, "/v1/nowhere");
}

#[tokio::test]
async fn standalone_serve_runs_until_its_shutdown_future_resolves() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay_mock::serve(
        listener,
        MockConfig::default(),
        async move {
            let _ = stop_receiver.await;
        },
    ));
    let response = http_client()
        .post(format!("http://{address}/v1/messages"))
        .header("x-api-key", "demo-mock-529")
        .body(MESSAGES_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 529);
    stop_sender.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        http_client()
            .get(format!("http://{address}/v1/models"))
            .send()
            .await
            .is_err(),
        "the listener is closed after shutdown"
    );
}

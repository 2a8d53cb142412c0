//! Accounts of the `openai` platform: Anthropic's API in front, an OpenAI-compatible Chat
//! Completions server behind (the mock's `/v1/chat/completions`).

use relay_mock::{Behavior, MockConfig, MockUsage};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

fn mock_with_usage() -> MockConfig {
    MockConfig {
        usage: MockUsage {
            input_tokens: 1000,
            output_tokens: 500,
            cache_read_input_tokens: 200,
            cache_creation_input_tokens: 0,
        },
        ..MockConfig::default()
    }
}

/// An `openai` account on the mock that serves `claude-sonnet-4-5` as `gpt-4o`.
async fn openai_account(h: &Harness, group: i64, name: &str, api_key: &str, priority: i32) -> i64 {
    h.post_admin(
        "/accounts",
        json!({
            "name": name,
            "platform": "openai",
            "group_id": group,
            "base_url": format!("{}/v1", h.mock.base_url()),
            "api_key": api_key,
            "priority": priority,
            "model_mapping": { "claude-sonnet-4-5": "gpt-4o" },
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap()
}

async fn openai_setup(h: &Harness) -> (i64, i64, String) {
    let group = h.group("openai", None).await;
    let account = openai_account(h, group, "oa", "sk-oa", 1).await;
    let key = h.key(group).await;
    (group, account, key)
}

/// The server's 400 in OpenAI's error shape, saying `message`.
fn refused(message: &str) -> Behavior {
    Behavior::Status {
        status: 400,
        headers: vec![],
        body: json!({ "error": { "message": message, "type": "invalid_request_error",
                                 "param": null, "code": null } })
        .to_string(),
    }
}

/// The server's whole Chat Completions `answer`.
fn chat_answer(answer: Value) -> Behavior {
    Behavior::Status {
        status: 200,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: answer.to_string(),
    }
}

fn header<'a>(request: &'a relay_mock::RecordedRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn a_request_goes_out_as_chat_completions_and_comes_back_as_a_message() {
    let h = Harness::start_with(mock_with_usage(), |_| {}).await;
    let (_, account, key) = openai_setup(&h).await;
    let response = h
        .client
        .post(h.url("/v1/messages?beta=true"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(&json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "system": "Be brief.",
            // What Claude Code 2.1 sends: a system turn among the messages, adaptive
            // thinking, an effort setting.
            "messages": [{ "role": "user", "content": "hello" },
                         { "role": "system", "content": "Agents are available." }],
            "thinking": { "type": "adaptive" },
            "output_config": { "effort": "high" },
            "tools": [{ "name": "ls", "input_schema": { "type": "object" } }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["content"][0]["type"], "text");
    assert_eq!(message["content"][0]["text"], MockConfig::default().text);
    assert_eq!(
        message["usage"],
        json!({ "input_tokens": 1000, "output_tokens": 500,
                "cache_read_input_tokens": 200, "cache_creation_input_tokens": 0 })
    );

    // What the upstream received: its own protocol, its own credential scheme, nothing of
    // Anthropic's headers or Claude Code's query string.
    let sent = h.mock.requests_for("sk-oa");
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.query, None);
    assert_eq!(header(sent, "authorization"), Some("Bearer sk-oa"));
    assert_eq!(header(sent, "x-api-key"), None);
    assert_eq!(header(sent, "anthropic-version"), None);
    assert_eq!(header(sent, "anthropic-beta"), None);
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(
        body["messages"],
        json!([{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "hello" },
               { "role": "system", "content": "Agents are available." }])
    );
    assert_eq!(body["tools"][0]["function"]["name"], "ls");
    assert!(body.get("thinking").is_none() && body.get("output_config").is_none());

    // Usage is accounted from the translated answer.
    let logs = h.logs("").await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["account_id"], account);
    assert_eq!(logs[0]["class"], "success");
    assert_eq!(logs[0]["input_tokens"], 1000);
    assert_eq!(logs[0]["output_tokens"], 500);
    assert_eq!(logs[0]["cache_read_input_tokens"], 200);
}

#[tokio::test]
async fn a_stream_comes_back_as_anthropics_events_with_its_usage() {
    let h = Harness::start_with(mock_with_usage(), |_| {}).await;
    let (_, _, key) = openai_setup(&h).await;
    let body = sse_body(h.messages(&key, message_body(true)).await).await;
    assert_eq!(
        event_names(&body),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let text: String = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|event| event["type"] == "content_block_delta")
        .map(|event| event["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, MockConfig::default().text);
    let sent: Value = serde_json::from_slice(&h.mock.requests_for("sk-oa")[0].body).unwrap();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({ "include_usage": true }));

    let logs = h.logs("").await;
    assert_eq!(logs[0]["class"], "success");
    assert_eq!(logs[0]["stream"], true);
    assert_eq!(logs[0]["input_tokens"], 1000);
    assert_eq!(logs[0]["output_tokens"], 500);
}

#[tokio::test]
async fn a_rate_limited_openai_account_fails_over_to_a_claude_one_and_back() {
    let h = Harness::start().await;
    let group = h.group("mixed", None).await;
    let openai = openai_account(&h, group, "oa", "sk-oa", 1).await;
    let console = h.console_account(group, "console", "sk-console", 2).await;
    let key = h.key(group).await;

    h.mock.push(
        "sk-oa",
        Behavior::Status {
            status: 429,
            headers: vec![("retry-after".to_owned(), "30".to_owned())],
            body: json!({ "error": { "message": "Rate limit reached", "type": "requests",
                                     "code": "rate_limit_exceeded" } })
            .to_string(),
        },
    );
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        event_names(&response.text().await.unwrap()),
        relay_mock::expected_event_names(4)
    );
    assert_eq!(
        h.attempts().await,
        [
            (openai, "rate_limited".to_owned()),
            (console, "success".to_owned())
        ]
    );

    // The other way round: the Claude account is overloaded, the OpenAI one serves.
    let group = h.group("mixed-2", None).await;
    h.console_account(group, "console-2", "sk-console-2", 1)
        .await;
    openai_account(&h, group, "oa-2", "sk-oa-2", 2).await;
    let key = h.key(group).await;
    h.mock.push("sk-console-2", Behavior::Overloaded);
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["content"][0]["text"], MockConfig::default().text);
    assert_eq!(h.counts(&["sk-console-2", "sk-oa-2"]), [1, 1]);
}

#[tokio::test]
async fn upstream_errors_and_what_cannot_be_translated_come_back_in_anthropics_envelope() {
    let h = Harness::start().await;
    let (_, _, key) = openai_setup(&h).await;

    // A client error goes back (no failover), in Anthropic's envelope.
    h.mock.push("sk-oa", refused("max_tokens is too large"));
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error_type(&error), "invalid_request_error");
    assert_eq!(error["error"]["message"], "max_tokens is too large");

    // A document block has no counterpart: refused before anything is sent.
    let before = h.mock.count_for("sk-oa");
    let response = h
        .messages(
            &key,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 8,
                "messages": [{ "role": "user", "content": [
                    { "type": "document", "source": { "type": "text", "media_type": "text/plain", "data": "x" } }
                ] }],
            }),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error_type(&error), "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("document block"));

    // count_tokens has no counterpart either: the account is passed over, and with no other
    // account in the group the client is told why.
    let response = h
        .client
        .post(h.url("/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .json(&json!({ "model": "claude-sonnet-4-5", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("count_tokens"));
    assert_eq!(h.mock.count_for("sk-oa"), before);
}

#[tokio::test]
async fn a_spent_quota_disables_the_account_and_a_probe_speaks_its_protocol() {
    let h = Harness::start().await;
    let group = h.group("quota", None).await;
    let openai = openai_account(&h, group, "oa", "sk-oa", 1).await;
    h.console_account(group, "console", "sk-console", 2).await;
    let key = h.key(group).await;
    h.mock.set_default(
        "sk-oa",
        Behavior::Status {
            status: 429,
            headers: vec![],
            body: json!({ "error": { "message": "You exceeded your current quota",
                                     "type": "insufficient_quota", "code": "insufficient_quota" } })
            .to_string(),
        },
    );
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    let logs = h.logs("").await;
    assert_eq!(logs.last().unwrap()["class"], "billing");
    let (_, health) = h
        .admin(
            Method::GET,
            &format!("/fallback/account-health?account_id={openai}"),
            None,
        )
        .await;
    assert_eq!(health["disable_reason"], "billing", "{health}");

    // Paid again: the recovery probe asks in Chat Completions and brings the account back.
    h.mock.set_default("sk-oa", Behavior::Ok);
    let results = relay_proxy::probe::probe_round(&h.relay.as_ref().unwrap().state).await;
    assert!(
        results.iter().any(|r| r.account_id == openai && r.success),
        "{results:?}"
    );
    let probe = h.mock.requests_for("sk-oa").pop().unwrap();
    assert_eq!(probe.path, "/v1/chat/completions");
    let body: Value = serde_json::from_slice(&probe.body).unwrap();
    assert_eq!(body["max_tokens"], 1);
    let before = h.mock.count_for("sk-oa");
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-oa"), before + 1);
}

#[tokio::test]
async fn models_are_listed_anthropics_way_and_accounts_default_to_openais_url() {
    let h = Harness::start().await;
    let (_, _, key) = openai_setup(&h).await;
    let response = h
        .client
        .get(h.url("/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let models: Value = response.json().await.unwrap();
    assert_eq!(models["data"][0]["type"], "model");
    assert_eq!(models["data"][0]["id"], "gpt-4o");
    assert_eq!(models["first_id"], "gpt-4o");
    assert_eq!(models["has_more"], false);

    let group = h.group("defaults", None).await;
    let account = h
        .post_admin(
            "/accounts",
            json!({ "name": "default-url", "platform": "openai", "group_id": group, "api_key": "sk-x" }),
        )
        .await;
    assert_eq!(account["base_url"], "https://api.openai.com/v1");
    let (status, error) = h
        .admin(
            Method::POST,
            "/accounts",
            Some(json!({ "name": "no-key", "platform": "openai", "group_id": group })),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(error.to_string().contains("api_key"), "{error}");
}

#[tokio::test]
async fn a_stream_that_fails_at_once_fails_over_and_one_cut_short_ends_with_an_error_event() {
    let h = Harness::start().await;
    let group = h.group("streams", None).await;
    let openai = openai_account(&h, group, "oa", "sk-oa", 1).await;
    let console = h.console_account(group, "console", "sk-console", 2).await;
    let key = h.key(group).await;

    // An error before anything reached the client: the next account serves.
    h.mock.push(
        "sk-oa",
        Behavior::StreamErrorEvent {
            error_type: "overloaded_error".to_owned(),
        },
    );
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        event_names(&response.text().await.unwrap()),
        relay_mock::expected_event_names(4)
    );
    assert_eq!(h.counts(&["sk-oa", "sk-console"]), [1, 1]);
    assert_eq!(h.logs("").await[1]["class"], "overloaded");

    // Cut after the role and two text pieces: what came is relayed, then an error event.
    // (A group of its own: the first account cools down after its overload.)
    let group = h.group("cut", None).await;
    let cut = openai_account(&h, group, "oa-cut", "sk-oa-cut", 1).await;
    let key = h.key(group).await;
    h.mock
        .push("sk-oa-cut", Behavior::DropMidStream { after_events: 3 });
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let names = event_names(&response.text().await.unwrap());
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("error"));
    assert!(
        !names.iter().any(|name| name == "message_stop"),
        "{names:?}"
    );
    let logs = h.logs("").await;
    assert_eq!(logs[0]["account_id"], cut);
    assert_eq!(logs[0]["class"], "mid_stream");
    assert_eq!(logs[1]["account_id"], console);
    assert_eq!(logs[2]["account_id"], openai);
}

#[tokio::test]
async fn count_tokens_in_a_mixed_group_goes_to_an_account_that_can_count() {
    let h = Harness::start().await;
    let group = h.group("mixed", None).await;
    openai_account(&h, group, "oa", "sk-oa", 1).await;
    h.console_account(group, "console", "sk-console", 2).await;
    let key = h.key(group).await;
    let response = h
        .client
        .post(h.url("/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({ "model": "claude-sonnet-4-5", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let counted: Value = response.json().await.unwrap();
    assert!(counted["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(h.counts(&["sk-oa", "sk-console"]), [0, 1]);
    // Passing the openai account over cost it nothing.
    let (_, health) = h
        .admin(Method::GET, "/fallback/account-health?account_id=1", None)
        .await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["failure_count"], 0, "{health}");
}

#[tokio::test]
async fn tool_calls_come_back_as_tool_use_blocks_whole_and_streamed() {
    let h = Harness::start().await;
    let (_, _, key) = openai_setup(&h).await;
    let tools_request = |stream: bool| {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "stream": stream,
            "messages": [{ "role": "user", "content": "What is in this folder?" }],
            "tools": [{ "name": "ls", "description": "Lists a folder",
                        "input_schema": { "type": "object", "properties": { "path": { "type": "string" } } } }],
        })
    };

    h.mock.push(
        "sk-oa",
        chat_answer(json!({
            "id": "chatcmpl-tools", "object": "chat.completion",
            "choices": [{ "index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{ "id": "call_ls", "type": "function",
                                 "function": { "name": "ls", "arguments": "{\"path\":\".\"}" } }] } }],
            "usage": { "prompt_tokens": 30, "completion_tokens": 9 }
        })),
    );
    let response = h.messages(&key, tools_request(false)).await;
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["content"],
        json!([{ "type": "tool_use", "id": "call_ls", "name": "ls", "input": { "path": "." } }])
    );

    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({ "id": "chatcmpl-s", "object": "chat.completion.chunk",
                    "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
        )
    };
    let stream = [
        chunk(json!({ "role": "assistant", "content": null }), Value::Null),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "id": "call_ls", "type": "function",
                                     "function": { "name": "ls", "arguments": "" } }] }),
            Value::Null,
        ),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"path\":" } }] }),
            Value::Null,
        ),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "\".\"}" } }] }),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    h.mock.push(
        "sk-oa",
        Behavior::Status {
            status: 200,
            headers: vec![("content-type".to_owned(), "text/event-stream".to_owned())],
            body: stream,
        },
    );
    let response = h.messages(&key, tools_request(true)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(
        event_names(&body),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let events: Vec<Value> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(
        events[1]["content_block"],
        json!({ "type": "tool_use", "id": "call_ls", "name": "ls", "input": {} })
    );
    let arguments: String = events[2..4]
        .iter()
        .map(|event| event["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({ "path": "." })
    );
    assert_eq!(events[5]["delta"]["stop_reason"], "tool_use");
    let logs = h.logs("").await;
    assert!(logs.iter().all(|row| row["class"] == "success"), "{logs:?}");
}

#[tokio::test]
async fn a_max_tokens_over_the_servers_limit_is_asked_again_within_it() {
    let h = Harness::start().await;
    let (_, account, key) = openai_setup(&h).await;
    let refusal = |limit: u64| {
        refused(&format!("max_tokens is too large: 64000. This model supports at most {limit} completion tokens, whereas you provided 64000."))
    };
    h.mock.push("sk-oa", refusal(16384));
    let mut body = message_body(false);
    body["max_tokens"] = json!(64000);
    let response = h.messages(&key, body.clone()).await;
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    let sent = h.mock.requests_for("sk-oa");
    assert_eq!(sent.len(), 2);
    let asked = |index: usize| {
        serde_json::from_slice::<Value>(&sent[index].body).unwrap()["max_tokens"].clone()
    };
    assert_eq!((asked(0), asked(1)), (json!(64000), json!(16384)));
    // One attempt, recorded as the success it became.
    let logs = h.logs("").await;
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["account_id"], account);
    assert_eq!(logs[0]["class"], "success");

    // A server that refuses the lower figure too: its refusal goes back, asked only twice.
    h.mock.push("sk-oa", refusal(16384));
    h.mock.push("sk-oa", refusal(8192));
    let response = h.messages(&key, body).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error_type(&error), "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 8192"));
    assert_eq!(h.mock.count_for("sk-oa"), 4);
}

#[tokio::test]
async fn a_whole_answer_to_a_stream_request_still_reaches_the_client_as_a_stream() {
    let h = Harness::start().await;
    let (_, _, key) = openai_setup(&h).await;
    h.mock.push(
        "sk-oa",
        chat_answer(json!({
            "id": "chatcmpl-whole", "object": "chat.completion",
            "choices": [{ "index": 0, "finish_reason": "stop",
                          "message": { "role": "assistant", "content": "All at once." } }],
            "usage": { "prompt_tokens": 21, "completion_tokens": 4 }
        })),
    );
    let body = sse_body(h.messages(&key, message_body(true)).await).await;
    assert_eq!(
        event_names(&body),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert!(body.contains(r#""text":"All at once.""#), "{body}");
    let logs = h.logs("").await;
    assert_eq!(logs[0]["class"], "success");
    assert_eq!(logs[0]["input_tokens"], 21);
    assert_eq!(logs[0]["output_tokens"], 4);
}

#[tokio::test]
async fn a_server_that_refuses_stream_options_is_asked_without_it() {
    let h = Harness::start().await;
    let (_, account, key) = openai_setup(&h).await;
    let refusal = || refused("Unrecognized request argument supplied: stream_options");
    let sent_stream_options = |index: usize| {
        let sent: Value =
            serde_json::from_slice(&h.mock.requests_for("sk-oa")[index].body).unwrap();
        assert_eq!(sent["stream"], true);
        sent.get("stream_options").cloned()
    };

    // Refused once: asked again at once without it, and the client gets its stream.
    h.mock.push("sk-oa", refusal());
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    let body = sse_body(response).await;
    assert_eq!(
        event_names(&body).last().map(String::as_str),
        Some("message_stop")
    );
    assert_eq!(h.mock.count_for("sk-oa"), 2);
    assert_eq!(
        sent_stream_options(0),
        Some(json!({ "include_usage": true }))
    );
    assert_eq!(sent_stream_options(1), None);
    let logs = h.logs("").await;
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["class"], "success");

    // Remembered: the account's next streams go without it from the start.
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    sse_body(response).await;
    assert_eq!(h.mock.count_for("sk-oa"), 3);
    assert_eq!(sent_stream_options(2), None);

    // A request without a stream never carried it: such a refusal is the client's answer.
    h.mock.push("sk-oa", refusal());
    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error_type(&error), "invalid_request_error");
    assert_eq!(h.mock.count_for("sk-oa"), 4);

    // Another base_url is another server: it is asked with stream_options again.
    let (status, updated) = h
        .admin(
            Method::PUT,
            &format!("/accounts/{account}"),
            Some(json!({
                "base_url": format!("{}/v1", h.mock.base_url().replace("127.0.0.1", "localhost"))
            })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert!(updated["base_url"].as_str().unwrap().contains("localhost"));
    let response = h.messages(&key, message_body(true)).await;
    assert_eq!(response.status(), 200);
    sse_body(response).await;
    assert_eq!(h.mock.count_for("sk-oa"), 5);
    assert_eq!(
        sent_stream_options(4),
        Some(json!({ "include_usage": true }))
    );
}

#[tokio::test]
async fn reasoning_comes_back_as_thinking_that_never_reaches_an_anthropic_account() {
    let h = Harness::start().await;
    let (_, _, openai_key) = openai_setup(&h).await;
    h.mock.push(
        "sk-oa",
        chat_answer(json!({
            "id": "chatcmpl-r", "object": "chat.completion",
            "choices": [{ "index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "reasoning_content": "Six times seven.", "content": "42" } }],
            "usage": { "prompt_tokens": 9, "completion_tokens": 30 }
        })),
    );
    let response = h.messages(&openai_key, message_body(false)).await;
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(
        message["content"],
        json!([{ "type": "thinking", "thinking": "Six times seven.", "signature": "" },
               { "type": "text", "text": "42" }])
    );

    // The conversation goes on, as clients keep it (the thinking block included), first on
    // the OpenAI-compatible account, then on an Anthropic one.
    let mut follow_up = message_body(false);
    follow_up["messages"] = json!([
        { "role": "user", "content": "hello" },
        { "role": "assistant", "content": message["content"] },
        { "role": "user", "content": "and?" }
    ]);
    let response = h.messages(&openai_key, follow_up.clone()).await;
    assert_eq!(response.status(), 200);
    let sent: Value = serde_json::from_slice(&h.mock.requests_for("sk-oa")[1].body).unwrap();
    assert_eq!(
        sent["messages"][1],
        json!({ "role": "assistant", "content": "42" })
    );

    let anthropic = h.group("anthropic", None).await;
    h.console_account(anthropic, "cc", "sk-cc", 1).await;
    let anthropic_key = h.key(anthropic).await;
    let response = h.messages(&anthropic_key, follow_up).await;
    assert_eq!(response.status(), 200);
    let sent: Value = serde_json::from_slice(&h.mock.requests_for("sk-cc")[0].body).unwrap();
    assert_eq!(
        sent["messages"],
        json!([
            { "role": "user", "content": "hello" },
            { "role": "assistant", "content": [{ "type": "text", "text": "42" }] },
            { "role": "user", "content": "and?" }
        ])
    );
    assert_eq!(sent["model"], "claude-sonnet-4-5");
}

#[tokio::test]
async fn fields_a_reasoning_model_refuses_are_left_out_for_that_model_only() {
    let h = Harness::start().await;
    let (_, _, key) = openai_setup(&h).await;
    h.mock.push(
        "sk-oa",
        refused("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."),
    );
    h.mock.push(
        "sk-oa",
        refused("Unsupported value: 'temperature' does not support 0.5 with this model. Only the default (1) value is supported."),
    );
    let mut body = message_body(false);
    body["temperature"] = json!(0.5);
    let response = h.messages(&key, body.clone()).await;
    assert_eq!(response.status(), 200);
    let sent = |index: usize| -> Value {
        let sent: Value =
            serde_json::from_slice(&h.mock.requests_for("sk-oa")[index].body).unwrap();
        json!([
            sent["model"],
            sent.get("max_tokens"),
            sent.get("max_completion_tokens"),
            sent.get("temperature")
        ])
    };
    assert_eq!(h.mock.count_for("sk-oa"), 3);
    assert_eq!(sent(0), json!(["gpt-4o", 64, null, 0.5]));
    assert_eq!(sent(1), json!(["gpt-4o", null, 64, 0.5]));
    assert_eq!(sent(2), json!(["gpt-4o", null, 64, null]));
    let logs = h.logs("").await;
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["class"], "success");

    // Remembered for that model: asked within what it takes at once.
    let response = h.messages(&key, body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.mock.count_for("sk-oa"), 4);
    assert_eq!(sent(3), json!(["gpt-4o", null, 64, null]));

    // Another model on the same server is asked as before.
    body["model"] = json!("claude-haiku-4-5");
    let response = h.messages(&key, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(sent(4), json!(["claude-haiku-4-5", 64, null, 0.5]));
}

#[tokio::test]
async fn enabled_thinking_asks_for_a_reasoning_effort_unless_the_model_refuses_it() {
    let h = Harness::start().await;
    let (_, _, key) = openai_setup(&h).await;
    let mut body = message_body(false);
    body["thinking"] = json!({ "type": "enabled", "budget_tokens": 31999 });
    let effort = |index: usize| {
        let sent: Value =
            serde_json::from_slice(&h.mock.requests_for("sk-oa")[index].body).unwrap();
        sent.get("reasoning_effort").cloned()
    };
    assert_eq!(h.messages(&key, body.clone()).await.status(), 200);
    assert_eq!(effort(0), Some(json!("high")));

    // A model that does not reason refuses it: asked again without, and from then on.
    h.mock.push(
        "sk-oa",
        refused("Unsupported parameter: 'reasoning_effort' is not supported with this model."),
    );
    assert_eq!(h.messages(&key, body.clone()).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-oa"), 3);
    assert_eq!((effort(1), effort(2)), (Some(json!("high")), None));
    assert_eq!(h.messages(&key, body).await.status(), 200);
    assert_eq!(effort(3), None);
}

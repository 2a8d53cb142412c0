//! The data plane's side of `openai` accounts: where a route goes, the request rebuilt as a
//! Chat Completions request, and the answer rebuilt as Anthropic's (the translation itself
//! is `relay_core::openai`). Only the attempts on such an account pay for any of it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use relay_core::envelope::{error_json, ErrorKind};
use relay_core::openai::{self, Refusals, StreamTranslator};

use crate::forward::Endpoint;
use crate::http_clients::{ChunkTransform, UpstreamAnswer};

/// The largest answer read whole to be translated (a long answer is a few hundred KiB).
const MAX_TRANSLATED_ANSWER: usize = 32 * 1024 * 1024;

/// The route of `endpoint` on an OpenAI-compatible server, under its `base_url` (written like
/// `OPENAI_BASE_URL`, ending in `/v1`); `None` when it has none.
pub fn upstream_path(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::Messages => Some("/chat/completions"),
        Endpoint::Models => Some("/models"),
        Endpoint::CountTokens => None,
    }
}

/// The answer for a route an OpenAI-compatible account cannot serve.
pub fn unsupported_route() -> (StatusCode, Bytes) {
    invalid_request(
        "count_tokens is not available on an OpenAI-compatible account: \
         it has no way to count tokens without answering",
    )
}

/// A 400 `invalid_request_error` with `message`.
pub fn invalid_request(message: &str) -> (StatusCode, Bytes) {
    (
        StatusCode::BAD_REQUEST,
        Bytes::from(error_json::<()>(ErrorKind::InvalidRequest, message, None)),
    )
}

/// The Chat Completions request for a Messages request `body`, for `model` (the account's
/// name for it), its `max_tokens` at most `max_tokens_cap` when given (the limit the server
/// named), without the fields the server refused; the message says what cannot be
/// translated.
pub fn chat_request_body(
    body: &[u8],
    model: &str,
    max_tokens_cap: Option<u64>,
    refusals: Refusals,
) -> Result<Bytes, String> {
    let request: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| format!("the request body is not valid JSON: {error}"))?;
    let mut chat = openai::chat_request(&request, model).map_err(|error| error.0)?;
    if let Some(cap) = max_tokens_cap {
        let asked = chat.get("max_tokens").and_then(serde_json::Value::as_u64);
        chat["max_tokens"] = serde_json::Value::from(asked.map_or(cap, |asked| asked.min(cap)));
    }
    refusals.apply(&mut chat);
    Ok(Bytes::from(chat.to_string()))
}

/// Anthropic's envelope for an error answer.
pub fn error_body(status: StatusCode, body: &[u8]) -> Bytes {
    Bytes::from(openai::error_envelope(status.as_u16(), body))
}

/// The JSON content type of every translated answer.
pub fn json_content_type() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

/// Reads a JSON answer whole and translates it: a Messages answer naming `client_model`
/// (as the events of a stream when `as_events`: a server answered a stream request whole),
/// or the model list. The message says why it could not be.
pub async fn translate_json_answer(
    endpoint: Endpoint,
    answer: &mut UpstreamAnswer,
    idle: Duration,
    client_model: &str,
    as_events: bool,
) -> Result<Bytes, String> {
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(idle, crate::forward::next_chunk(answer))
            .await
            .map_err(|_| "the upstream's answer stalled".to_owned())?
            .map_err(|error| format!("the upstream's answer broke off: {error}"))?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > MAX_TRANSLATED_ANSWER {
            return Err("the upstream's answer is too large to translate".to_owned());
        }
        body.extend_from_slice(&chunk);
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| format!("the upstream's answer is not JSON: {error}"))?;
    let translated = match endpoint {
        Endpoint::Models => openai::models(&answer),
        Endpoint::Messages | Endpoint::CountTokens => openai::message(&answer, client_model),
    }
    .map_err(|error| error.0)?;
    if as_events {
        return Ok(Bytes::from(openai::message_events(&translated)));
    }
    Ok(Bytes::from(translated.to_string()))
}

/// The content type of a translated stream.
pub fn event_stream_content_type() -> HeaderValue {
    HeaderValue::from_static("text/event-stream; charset=utf-8")
}

/// A streamed Chat Completions answer, handed on as Anthropic's events.
pub struct StreamTransform(StreamTranslator);

impl StreamTransform {
    pub fn new(client_model: &str) -> Box<Self> {
        Box::new(StreamTransform(StreamTranslator::new(client_model)))
    }
}

impl ChunkTransform for StreamTransform {
    fn chunk(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.0.feed(chunk, &mut out);
        out
    }

    fn end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.0.end_of_input(&mut out);
        out
    }
}

//! The mock's OpenAI-compatible routes, for accounts of the `openai` platform: Chat
//! Completions (whole or streamed) and the model list, with the same text and token counts
//! as the Anthropic answers (the prompt's cached tokens counted inside `prompt_tokens`, as
//! OpenAI counts them).

use bytes::Bytes;
use serde_json::json;

use crate::answers::split_text;
use crate::config::MockConfig;

/// The `usage` of every answer.
fn usage(config: &MockConfig) -> serde_json::Value {
    let usage = &config.usage;
    let prompt = usage.input_tokens + usage.cache_read_input_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": { "cached_tokens": usage.cache_read_input_tokens },
    })
}

/// A whole `chat.completion`.
pub(crate) fn chat_completion(config: &MockConfig, id: &str, model: &str) -> Bytes {
    Bytes::from(
        json!({
            "id": id,
            "object": "chat.completion",
            "created": 1_760_000_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": config.text },
                "finish_reason": "stop",
            }],
            "usage": usage(config),
        })
        .to_string(),
    )
}

/// A streamed answer: a `data:` line per `chat.completion.chunk` (the role, the text in
/// `text_chunks` pieces, the finish reason, the usage), then `data: [DONE]`.
pub(crate) fn chat_completion_chunks(config: &MockConfig, id: &str, model: &str) -> Vec<Bytes> {
    let chunk = |choices: serde_json::Value, usage: Option<serde_json::Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": 1_760_000_000,
            "model": model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    };
    let mut chunks = vec![chunk(
        json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]),
        None,
    )];
    for piece in split_text(&config.text, config.text_chunks) {
        chunks.push(chunk(
            json!([{ "index": 0, "delta": { "content": piece }, "finish_reason": null }]),
            None,
        ));
    }
    chunks.push(chunk(
        json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
        None,
    ));
    chunks.push(chunk(json!([]), Some(usage(config))));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

/// `GET /v1/models` as OpenAI answers it.
pub(crate) fn models_list() -> Bytes {
    Bytes::from(
        json!({
            "object": "list",
            "data": [
                { "id": "gpt-4o", "object": "model", "created": 1_715_367_049, "owned_by": "system" },
                { "id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system" },
            ],
        })
        .to_string(),
    )
}

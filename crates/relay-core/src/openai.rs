//! Translation between Anthropic Messages and OpenAI Chat Completions, for accounts of the
//! `openai` platform (PRODUCT §4): a Messages request becomes a Chat Completions request, and
//! a Chat Completions answer becomes a Messages answer, so a client of the relay never sees
//! that the account speaks another protocol.
//!
//! What carries over: the system prompt, text, images (base64 or URL), tools and the choice
//! among them, tool calls and their results, sampling settings, stop sequences, the end
//! user's id, stop reasons and token usage. What the other side has no place for is left out
//! where leaving it out changes nothing the model is asked (thinking blocks a client sends
//! back, `top_k`, cache-control marks), and refused with [`TranslateError`] where it would
//! (documents, server tools), so a request is never answered as if it were another.
//!
//! Enabled thinking asks for a `reasoning_effort` by its budget. A reasoning model's reasoning
//! (`reasoning_content`, or OpenRouter's `reasoning`) comes back as a `thinking` block with
//! an empty signature: only Anthropic can sign one. The relay leaves such blocks out of what
//! it sends on (`body::without_unsigned_thinking`): an Anthropic account would refuse them.
//!
//! Streamed answers go through [`StreamTranslator`], which turns `chat.completion.chunk`
//! events into Messages events as they arrive.
//!
//! Errors and the model list are translated too ([`error_envelope`], [`models`]).

use serde_json::{json, Map, Value};

use crate::envelope::ErrorKind;

/// A request the other protocol cannot express, or an answer that is not what it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TranslateError(pub String);

fn refuse(message: impl Into<String>) -> TranslateError {
    TranslateError(message.into())
}

/// The refusal of a block of type `kind` that Chat Completions has no place for, where
/// `context` says.
fn no_counterpart(context: &str, kind: Option<&str>) -> TranslateError {
    refuse(format!(
        "{context}a {} block cannot be sent to an OpenAI-compatible account",
        kind.unwrap_or("typeless")
    ))
}

/// The Chat Completions request for a Messages request `body`, sent to `model` (the
/// account's model name, after any mapping).
pub fn chat_request(body: &Value, model: &str) -> Result<Value, TranslateError> {
    let request = body
        .as_object()
        .ok_or_else(|| refuse("the request body is not a JSON object"))?;
    let mut chat = Map::new();
    chat.insert("model".into(), Value::from(model));

    let mut messages = Vec::new();
    if let Some(system) = request.get("system") {
        let text = system_text(system)?;
        if !text.is_empty() {
            messages.push(json!({ "role": "system", "content": text }));
        }
    }
    let turns = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| refuse("messages: an array is required"))?;
    for (index, turn) in turns.iter().enumerate() {
        translate_turn(turn, &mut messages)
            .map_err(|error| refuse(format!("messages.{index}: {}", error.0)))?;
    }
    chat.insert("messages".into(), Value::Array(messages));

    if let Some(max_tokens) = request.get("max_tokens") {
        chat.insert("max_tokens".into(), max_tokens.clone());
    }
    for name in ["temperature", "top_p"] {
        if let Some(value) = request.get(name) {
            chat.insert(name.into(), value.clone());
        }
    }
    if let Some(effort) = request.get("thinking").and_then(reasoning_effort) {
        chat.insert("reasoning_effort".into(), Value::from(effort));
    }
    if let Some(stop) = request.get("stop_sequences") {
        chat.insert("stop".into(), stop.clone());
    }
    if let Some(user) = request
        .get("metadata")
        .and_then(|metadata| metadata.get("user_id"))
        .filter(|user| user.is_string())
    {
        chat.insert("user".into(), user.clone());
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let tools = tools
            .iter()
            .enumerate()
            .map(|(index, tool)| {
                function_tool(tool).map_err(|error| refuse(format!("tools.{index}: {}", error.0)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = request.get("tool_choice") {
        let (choice, parallel) = tool_choice(choice)?;
        if let Some(choice) = choice {
            chat.insert("tool_choice".into(), choice);
        }
        if let Some(parallel) = parallel {
            chat.insert("parallel_tool_calls".into(), Value::Bool(parallel));
        }
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), Value::Bool(true));
        // Without it a streamed answer carries no token counts.
        chat.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    Ok(Value::Object(chat))
}

/// The `reasoning_effort` for Anthropic's `thinking` setting: none unless thinking is
/// enabled, then by its token budget (Claude Code's "think", "think hard" and "ultrathink"
/// ask for 4,000, 10,000 and 31,999: low, medium and high). A server that does not know the
/// field refuses it, and the request is asked again without it ([`Refusals`]).
fn reasoning_effort(thinking: &Value) -> Option<&'static str> {
    if thinking.get("type").and_then(Value::as_str) != Some("enabled") {
        return None;
    }
    let budget = thinking
        .get("budget_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(match budget {
        0..8_000 => "low",
        8_000..24_000 => "medium",
        _ => "high",
    })
}

/// The system prompt as one text: a string, or text blocks joined by blank lines.
fn system_text(system: &Value) -> Result<String, TranslateError> {
    match system {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let texts = blocks
                .iter()
                .map(|block| match block_type(block) {
                    Some("text") => Ok(text_of(block)),
                    other => Err(no_counterpart("system: ", other)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(texts.join("\n\n"))
        }
        Value::Null => Ok(String::new()),
        _ => Err(refuse(
            "system: a string or an array of text blocks is required",
        )),
    }
}

fn block_type(block: &Value) -> Option<&str> {
    block.get("type").and_then(Value::as_str)
}

fn text_of(block: &Value) -> &str {
    block.get("text").and_then(Value::as_str).unwrap_or("")
}

/// Appends the Chat Completions messages of one Messages turn.
fn translate_turn(turn: &Value, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let role = turn
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("role: user or assistant is required"))?;
    let content = turn.get("content").unwrap_or(&Value::Null);
    match (role, content) {
        // Claude Code sends instructions mid-conversation as `system` turns; Chat Completions
        // takes a system message anywhere.
        ("system", content) => {
            messages.push(json!({ "role": "system", "content": system_text(content)? }));
            Ok(())
        }
        ("user" | "assistant", Value::String(text)) => {
            messages.push(json!({ "role": role, "content": text }));
            Ok(())
        }
        ("user", Value::Array(blocks)) => user_turn(blocks, messages),
        ("assistant", Value::Array(blocks)) => assistant_turn(blocks, messages),
        ("user" | "assistant", _) => Err(refuse("content: a string or an array is required")),
        (other, _) => Err(refuse(format!(
            "role: {other} is not one of user, assistant and system"
        ))),
    }
}

/// A user turn: its tool results become `tool` messages (which must directly follow the
/// assistant's calls), the rest one user message. A `tool` message holds text only, so the
/// images of a tool result (Claude Code's Read of a picture) go in that user message.
fn user_turn(blocks: &[Value], messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    let mut has_image = false;
    for block in blocks {
        match block_type(block) {
            Some("text") => parts.push(json!({ "type": "text", "text": text_of(block) })),
            Some("image") => {
                parts.push(image_part(block)?);
                has_image = true;
            }
            Some("tool_result") => {
                let (message, images) = tool_message(block)?;
                messages.push(message);
                has_image |= !images.is_empty();
                parts.extend(images);
            }
            other => return Err(no_counterpart("", other)),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = if has_image {
        Value::Array(parts)
    } else {
        // Text only: one string, which every OpenAI-compatible server accepts.
        Value::from(parts.iter().map(text_of).collect::<Vec<_>>().join("\n\n"))
    };
    messages.push(json!({ "role": "user", "content": content }));
    Ok(())
}

fn image_part(block: &Value) -> Result<Value, TranslateError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = source
                .get("media_type")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("image.source.media_type is required"))?;
            let data = source
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("image.source.data is required"))?;
            format!("data:{media_type};base64,{data}")
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse("image.source.url is required"))?
            .to_owned(),
        _ => return Err(refuse("image.source: base64 or url is required")),
    };
    Ok(json!({ "type": "image_url", "image_url": { "url": url } }))
}

/// A tool result as a `tool` message; an error result says so in its text, which is all
/// the other side has for it.
fn tool_message(block: &Value) -> Result<(Value, Vec<Value>), TranslateError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("tool_result.tool_use_id is required"))?;
    let mut images = Vec::new();
    let text = match block.get("content").unwrap_or(&Value::Null) {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for part in parts {
                match block_type(part) {
                    Some("text") => texts.push(text_of(part)),
                    Some("image") => images.push(image_part(part)?),
                    other => return Err(no_counterpart("tool_result: ", other)),
                }
            }
            if texts.is_empty() && !images.is_empty() {
                texts.push("(the result is the image that follows)");
            }
            texts.join("\n\n")
        }
        Value::Null => String::new(),
        _ => {
            return Err(refuse(
                "tool_result.content: a string or an array is required",
            ))
        }
    };
    let text = if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        format!("Error: {text}")
    } else {
        text
    };
    Ok((
        json!({ "role": "tool", "tool_call_id": id, "content": text }),
        images,
    ))
}

/// An assistant turn: its text as the content, its tool uses as tool calls. Thinking blocks
/// (sent back by clients that keep them) have no counterpart and are left out.
fn assistant_turn(blocks: &[Value], messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block_type(block) {
            Some("text") => texts.push(text_of(block)),
            Some("tool_use") => {
                let id = block.get("id").and_then(Value::as_str);
                let name = block.get("name").and_then(Value::as_str);
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(refuse("tool_use: id and name are required"));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": { "name": name, "arguments": input.to_string() },
                }));
            }
            Some("thinking" | "redacted_thinking") => {}
            other => return Err(no_counterpart("", other)),
        }
    }
    if texts.is_empty() && calls.is_empty() {
        // Only thinking: nothing the other side can be shown (and an assistant message
        // without content or calls is refused there).
        return Ok(());
    }
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    message.insert(
        "content".into(),
        if texts.is_empty() {
            Value::Null
        } else {
            Value::from(texts.join("\n\n"))
        },
    );
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    messages.push(Value::Object(message));
    Ok(())
}

/// A client tool as a function; server tools (web search, code execution) run at Anthropic
/// and have no counterpart.
fn function_tool(tool: &Value) -> Result<Value, TranslateError> {
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("name is required"))?;
    let Some(schema) = tool.get("input_schema") else {
        return Err(refuse(format!(
            "{name} is a server tool, which an OpenAI-compatible account cannot run"
        )));
    };
    let mut function = Map::new();
    function.insert("name".into(), Value::from(name));
    if let Some(description) = tool.get("description").filter(|d| d.is_string()) {
        function.insert("description".into(), description.clone());
    }
    function.insert("parameters".into(), schema.clone());
    Ok(json!({ "type": "function", "function": function }))
}

/// `tool_choice` and whether calls may run in parallel.
fn tool_choice(choice: &Value) -> Result<(Option<Value>, Option<bool>), TranslateError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    let translated = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Value::from("auto"),
        Some("any") => Value::from("required"),
        Some("none") => Value::from("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("tool_choice.name is required"))?;
            json!({ "type": "function", "function": { "name": name } })
        }
        _ => {
            return Err(refuse(
                "tool_choice.type: auto, any, tool or none is required",
            ))
        }
    };
    // `parallel_tool_calls` means nothing without tools to call.
    let parallel = parallel.filter(|_| translated != "none");
    Ok((Some(translated), parallel))
}

/// Anthropic's `stop_reason` for a Chat Completions `finish_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        // "stop", and whatever a server says that Anthropic has no word for.
        _ => "end_turn",
    }
}

/// Anthropic's usage for Chat Completions `usage`: cached prompt tokens are counted apart,
/// as Anthropic counts cache reads apart from `input_tokens`.
pub fn usage(usage: &Value) -> Value {
    let count = |value: Option<&Value>| value.and_then(Value::as_u64).unwrap_or(0);
    let prompt = count(usage.get("prompt_tokens"));
    let cached = count(
        usage
            .get("prompt_tokens_details")
            .and_then(|details| details.get("cached_tokens")),
    )
    .min(prompt);
    json!({
        "input_tokens": prompt - cached,
        "output_tokens": count(usage.get("completion_tokens")),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// The Messages answer for a Chat Completions answer `body`; `model` is the model the client
/// asked for, which the answer names (as Anthropic's answers do).
pub fn message(body: &Value, model: &str) -> Result<Value, TranslateError> {
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| refuse("the upstream's answer has no choices"))?;
    let answer = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(reasoning) = reasoning_of(answer) {
        content.push(json!({ "type": "thinking", "thinking": reasoning, "signature": "" }));
    }
    if let Some(text) = answer.get("content").and_then(Value::as_str) {
        if !text.is_empty() {
            content.push(json!({ "type": "text", "text": text }));
        }
    }
    if let Some(refusal) = answer.get("refusal").and_then(Value::as_str) {
        content.push(json!({ "type": "text", "text": refusal }));
    }
    for call in answer
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(tool_use(call)?);
    }
    let id = body.get("id").and_then(Value::as_str).unwrap_or("");
    Ok(json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage(body.get("usage").unwrap_or(&Value::Null)),
    }))
}

/// The reasoning a Chat Completions message or delta carries, if any: `reasoning_content`
/// (DeepSeek, vLLM, SGLang and most servers of open reasoning models) or `reasoning`
/// (OpenRouter).
fn reasoning_of(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .into_iter()
        .filter_map(|name| message.get(name).and_then(Value::as_str))
        .find(|reasoning| !reasoning.is_empty())
}

/// A whole Messages answer as the events of a streamed one, for a server that answered a
/// stream request with one JSON answer: each block opened, given in one delta, and closed.
pub fn message_events(message: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    event(
        &mut out,
        "message_start",
        &json!({ "type": "message_start", "message": start }),
    );
    let blocks = message.get("content").and_then(Value::as_array);
    for (index, block) in blocks.into_iter().flatten().enumerate() {
        let (opened, delta) = match block_type(block) {
            Some("tool_use") => {
                let mut opened = block.clone();
                opened["input"] = json!({});
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                (
                    opened,
                    json!({ "type": "input_json_delta", "partial_json": input.to_string() }),
                )
            }
            Some("thinking") => (
                json!({ "type": "thinking", "thinking": "", "signature": "" }),
                json!({
                    "type": "thinking_delta",
                    "thinking": block.get("thinking").and_then(Value::as_str).unwrap_or(""),
                }),
            ),
            _ => (
                json!({ "type": "text", "text": "" }),
                json!({ "type": "text_delta", "text": text_of(block) }),
            ),
        };
        event(
            &mut out,
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index, "content_block": opened }),
        );
        event(
            &mut out,
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        );
        event(
            &mut out,
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": index }),
        );
    }
    event(
        &mut out,
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": { "stop_reason": message.get("stop_reason"), "stop_sequence": null },
            "usage": message.get("usage"),
        }),
    );
    event(&mut out, "message_stop", &json!({ "type": "message_stop" }));
    out
}

/// A tool call as a `tool_use` block. Arguments that are not a JSON object (a model can write
/// anything there) are passed on as `{"arguments": "<what it wrote>"}` rather than lost.
fn tool_use(call: &Value) -> Result<Value, TranslateError> {
    let function = call.get("function").unwrap_or(&Value::Null);
    let id = call.get("id").and_then(Value::as_str);
    let name = function.get("name").and_then(Value::as_str);
    let (Some(id), Some(name)) = (id, name) else {
        return Err(refuse(
            "a tool call of the upstream's answer has no id or name",
        ));
    };
    Ok(json!({
        "type": "tool_use",
        "id": id,
        "name": name,
        "input": tool_input(function.get("arguments").and_then(Value::as_str).unwrap_or("")),
    }))
}

/// A tool call's arguments as the `input` object.
pub fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => input,
        _ => json!({ "arguments": arguments }),
    }
}

/// Anthropic's error envelope for an error answer of an OpenAI-compatible upstream: the
/// type Anthropic gives that status, and the upstream's own message.
pub fn error_envelope(status: u16, body: &[u8]) -> Vec<u8> {
    let kind = match status {
        400 | 422 => ErrorKind::InvalidRequest,
        401 => ErrorKind::Authentication,
        403 => ErrorKind::Permission,
        404 => ErrorKind::NotFound,
        413 => ErrorKind::RequestTooLarge,
        429 => ErrorKind::RateLimit,
        503 | 529 => ErrorKind::Overloaded,
        _ => ErrorKind::Api,
    };
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|body| {
            let error = body.get("error")?;
            error
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| error.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
    crate::envelope::error_json::<()>(kind, &message, None)
}

/// The most output tokens an OpenAI-compatible server says it accepts, from its 400 for a
/// `max_tokens` over its limit: OpenAI's "supports at most 16384 completion tokens", or a
/// "valid range of max_tokens is [1, 8192]". Claude Code asks for 32,000 or 64,000, more
/// than most such models give; the relay then asks again within the limit.
pub fn max_tokens_limit(error_body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(error_body).ok()?;
    if !text.contains("max_tokens") && !text.contains("completion tokens") {
        return None;
    }
    // The number that follows `marker` (after blanks), found after `anchor`.
    let number_after = |anchor: &str, marker: &str| {
        let rest = &text[text.find(anchor)?..];
        let rest = rest[rest.find(marker)? + marker.len()..].trim_start();
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse::<u64>().ok().filter(|limit| *limit > 0)
    };
    number_after("supports at most", "at most")
        .or_else(|| number_after("range of max_tokens is", ","))
}

/// Optional parts of a Chat Completions request that a server refused, as a set. A request
/// is asked again without them (`max_tokens` then goes as `max_completion_tokens`), and what
/// an account's server refused once is left out of its later requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals(u8);

impl Refusals {
    pub const NONE: Refusals = Refusals(0);
    /// `stream_options`: unknown to older servers. Streams then carry no token counts.
    pub const STREAM_OPTIONS: Refusals = Refusals(1);
    /// `max_tokens`: OpenAI's reasoning models take the limit as `max_completion_tokens`.
    pub const MAX_TOKENS: Refusals = Refusals(1 << 1);
    /// `temperature`: reasoning models take only their default.
    pub const TEMPERATURE: Refusals = Refusals(1 << 2);
    /// `top_p`: likewise.
    pub const TOP_P: Refusals = Refusals(1 << 3);
    /// `parallel_tool_calls`: unknown to some servers, refused by reasoning models.
    pub const PARALLEL_TOOL_CALLS: Refusals = Refusals(1 << 4);
    /// `reasoning_effort` (from `thinking`): refused by models that do not reason.
    pub const REASONING_EFFORT: Refusals = Refusals(1 << 5);

    /// The request fields, as named in refusals, of each member.
    const FIELDS: [(&'static str, Refusals); 6] = [
        ("stream_options", Refusals::STREAM_OPTIONS),
        ("max_tokens", Refusals::MAX_TOKENS),
        ("temperature", Refusals::TEMPERATURE),
        ("top_p", Refusals::TOP_P),
        ("parallel_tool_calls", Refusals::PARALLEL_TOOL_CALLS),
        ("reasoning_effort", Refusals::REASONING_EFFORT),
    ];

    pub fn contains(self, other: Refusals) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Refusals) -> Refusals {
        Refusals(self.0 | other.0)
    }

    /// The members of `self` that are not in `other`.
    pub fn without(self, other: Refusals) -> Refusals {
        Refusals(self.0 & !other.0)
    }

    /// The names of the refused fields, for logs.
    pub fn names(self) -> Vec<&'static str> {
        Refusals::FIELDS
            .into_iter()
            .filter(|(_, member)| self.contains(*member))
            .map(|(name, _)| name)
            .collect()
    }

    /// `chat` (a Chat Completions request) without the refused fields.
    pub fn apply(self, chat: &mut Value) {
        let Some(fields) = chat.as_object_mut() else {
            return;
        };
        for (name, member) in Refusals::FIELDS {
            if !self.contains(member) {
                continue;
            }
            let removed = fields.remove(name);
            if member == Refusals::MAX_TOKENS {
                if let Some(limit) = removed {
                    fields.insert("max_completion_tokens".into(), limit);
                }
            }
        }
    }
}

/// What a 400 answer's body says the server refuses of the fields `sent` (of a request
/// already without `known`): the first field it names as unsupported or unknown, if it is
/// one the request can do without. A message that only finds fault with a value (a
/// temperature out of range, say) names no refusal: that request is the client's to fix.
pub fn refusal_in(error_body: &[u8], sent: &Value, known: Refusals) -> Option<Refusals> {
    let text = std::str::from_utf8(error_body).ok()?;
    // OpenAI: "Unsupported parameter: 'max_tokens' is not supported with this model. Use
    // 'max_completion_tokens' instead." and "Unsupported value: 'temperature' does not
    // support 0.7 with this model. Only the default (1) value is supported."; Azure:
    // "Unrecognized request argument supplied: stream_options"; servers validating with
    // pydantic: "extra_forbidden", "Extra inputs are not permitted".
    const MARKERS: [&str; 6] = [
        "Unsupported parameter",
        "Unsupported value",
        "Unrecognized request argument",
        "extra_forbidden",
        "Extra inputs are not permitted",
        "not supported",
    ];
    if !MARKERS.iter().any(|marker| text.contains(marker)) {
        return None;
    }
    Refusals::FIELDS
        .into_iter()
        .find(|(name, member)| {
            !known.contains(*member) && sent.get(*name).is_some() && text.contains(name)
        })
        .map(|(_, member)| member)
}

/// Anthropic's model list for an OpenAI-compatible `GET /models` answer. OpenAI gives no
/// display name, so the id stands in for it; `created` (Unix seconds) becomes `created_at`.
pub fn models(body: &Value) -> Result<Value, TranslateError> {
    let listed = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| refuse("the upstream's model list has no data"))?;
    let data: Vec<Value> = listed
        .iter()
        .filter_map(|model| {
            let id = model.get("id").and_then(Value::as_str)?;
            let created = model.get("created").and_then(Value::as_i64).unwrap_or(0);
            Some(json!({
                "type": "model",
                "id": id,
                "display_name": id,
                "created_at": crate::duration::format_rfc3339(created.saturating_mul(1000)),
            }))
        })
        .collect();
    let first_id = data.first().map(|model| model["id"].clone());
    let last_id = data.last().map(|model| model["id"].clone());
    Ok(json!({ "data": data, "has_more": false, "first_id": first_id, "last_id": last_id }))
}

/// Turns a streamed Chat Completions answer (`data: {chunk}` lines, then `data: [DONE]`)
/// into the events of a streamed Messages answer, chunk by chunk: `message_start` with the
/// first chunk, a content block per run of text and per tool call (opened, its deltas,
/// closed), then `message_delta` with the stop reason and the usage, and `message_stop`.
/// The usage comes last in a Chat Completions stream (`stream_options.include_usage`), so
/// `message_delta` carries all of it, input tokens included.
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    started: bool,
    finished: bool,
    /// The open content block: its index, and for a tool call the upstream's index of it.
    open: Option<(usize, Open)>,
    next_index: usize,
    finish_reason: Option<String>,
    usage: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
    Tool(u64),
}

impl StreamTranslator {
    /// A translator for an answer to a request for `model` (the model the client asked for).
    pub fn new(model: &str) -> Self {
        StreamTranslator {
            model: model.to_owned(),
            partial: Vec::new(),
            started: false,
            finished: false,
            open: None,
            next_index: 0,
            finish_reason: None,
            usage: None,
        }
    }

    /// Whether the answer is complete: `[DONE]` was read, or [`StreamTranslator::finish`]
    /// was called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Translates the complete lines of `bytes` (with what an earlier call left of a line)
    /// and appends the events to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.partial.extend_from_slice(bytes);
        let mut consumed = 0;
        while let Some(end) = self.partial[consumed..].iter().position(|b| *b == b'\n') {
            let line = self.partial[consumed..consumed + end].to_vec();
            consumed += end + 1;
            self.line(&line, out);
        }
        self.partial.drain(..consumed);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(data) = line.strip_prefix(b"data:") else {
            // Blank lines, comments, `event:` and `id:` lines carry nothing here.
            return;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.finish(out);
            return;
        }
        if self.finished {
            return;
        }
        match serde_json::from_slice::<Value>(data) {
            Ok(chunk) => self.chunk(&chunk, out),
            Err(error) => self.error(
                "api_error",
                &format!("the upstream sent a malformed event: {error}"),
                out,
            ),
        }
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the upstream failed during the answer");
            // Servers that speak both protocols may name Anthropic's type; keep it then.
            let kind = error
                .get("type")
                .and_then(Value::as_str)
                .filter(|kind| {
                    matches!(*kind, "overloaded_error" | "rate_limit_error" | "api_error")
                })
                .unwrap_or("api_error");
            self.error(kind, message, out);
            return;
        }
        if !self.started {
            self.started = true;
            let id = chunk.get("id").and_then(Value::as_str).unwrap_or("");
            event(
                out,
                "message_start",
                &json!({
                    "type": "message_start",
                    "message": {
                        "id": format!("msg_{id}"),
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": { "input_tokens": 0, "output_tokens": 0 },
                    },
                }),
            );
        }
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
        else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(reasoning) = reasoning_of(delta) {
            let index = self.open_block(
                Open::Thinking,
                out,
                || json!({ "type": "thinking", "thinking": "", "signature": "" }),
            );
            event(
                out,
                "content_block_delta",
                &json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": { "type": "thinking_delta", "thinking": reasoning },
                }),
            );
        }
        for text in ["content", "refusal"] {
            if let Some(text) = delta
                .get(text)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                let index =
                    self.open_block(Open::Text, out, || json!({ "type": "text", "text": "" }));
                event(
                    out,
                    "content_block_delta",
                    &json!({
                        "type": "content_block_delta",
                        "index": index,
                        "delta": { "type": "text_delta", "text": text },
                    }),
                );
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let function = call.get("function").unwrap_or(&Value::Null);
            let index = self.open_block(Open::Tool(tool), out, || {
                json!({
                    "type": "tool_use",
                    "id": call.get("id").and_then(Value::as_str).unwrap_or(""),
                    "name": function.get("name").and_then(Value::as_str).unwrap_or(""),
                    "input": {},
                })
            });
            if let Some(arguments) = function
                .get("arguments")
                .and_then(Value::as_str)
                .filter(|arguments| !arguments.is_empty())
            {
                event(
                    out,
                    "content_block_delta",
                    &json!({
                        "type": "content_block_delta",
                        "index": index,
                        "delta": { "type": "input_json_delta", "partial_json": arguments },
                    }),
                );
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
    }

    /// The index of the block `kind`, opened (after closing another) if it is not open.
    fn open_block(
        &mut self,
        kind: Open,
        out: &mut Vec<u8>,
        block: impl FnOnce() -> Value,
    ) -> usize {
        if let Some((index, open)) = self.open {
            if open == kind {
                return index;
            }
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        event(
            out,
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": index,
                "content_block": block(),
            }),
        );
        index
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": index }),
            );
        }
    }

    /// Ends the answer: closes the open block and sends the stop reason, the usage and
    /// `message_stop`. Does nothing once the answer ended, or if it never started (the caller
    /// then has an empty answer to report as a failure).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished || !self.started {
            self.finished = true;
            return;
        }
        self.finished = true;
        self.close_block(out);
        event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(self.finish_reason.as_deref()),
                    "stop_sequence": null,
                },
                "usage": usage(self.usage.as_ref().unwrap_or(&Value::Null)),
            }),
        );
        event(out, "message_stop", &json!({ "type": "message_stop" }));
    }

    /// The upstream's body ended without `[DONE]`: a stream that said why it stopped is
    /// complete and ends as usual; one that did not was cut short, and is left without
    /// `message_stop` so that the relay reports it broken.
    pub fn end_of_input(&mut self, out: &mut Vec<u8>) {
        if self.finish_reason.is_some() {
            self.finish(out);
        } else {
            self.finished = true;
        }
    }

    /// Ends the answer with an `error` event, as the relay ends a stream that broke.
    fn error(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        self.finished = true;
        event(
            out,
            "error",
            &json!({
                "type": "error",
                "error": { "type": kind, "message": message },
            }),
        );
    }
}

fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claude_code_shaped_request_becomes_a_chat_request() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{ "type": "text", "text": "You are terse." },
                       { "type": "text", "text": "Answer in English.", "cache_control": { "type": "ephemeral" } }],
            "messages": [
                { "role": "user", "content": "List the files." },
                { "role": "system", "content": "Tools are available." },
                { "role": "assistant", "content": [
                    { "type": "thinking", "thinking": "…", "signature": "s" },
                    { "type": "text", "text": "Let me look." },
                    { "type": "tool_use", "id": "toolu_1", "name": "ls", "input": { "path": "." } }
                ] },
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "toolu_1", "content": [{ "type": "text", "text": "a.rs" }] },
                    { "type": "text", "text": "And now?" }
                ] }
            ],
            "tools": [{ "name": "ls", "description": "Lists files", "input_schema": { "type": "object" } }],
            "tool_choice": { "type": "auto", "disable_parallel_tool_use": true },
            "temperature": 0.2,
            "top_k": 5,
            "stop_sequences": ["END"],
            "metadata": { "user_id": "user-1" },
            "stream": true
        });
        let chat = chat_request(&body, "gpt-4o").unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "gpt-4o",
                "messages": [
                    { "role": "system", "content": "You are terse.\n\nAnswer in English." },
                    { "role": "user", "content": "List the files." },
                    { "role": "system", "content": "Tools are available." },
                    { "role": "assistant", "content": "Let me look.", "tool_calls": [
                        { "id": "toolu_1", "type": "function",
                          "function": { "name": "ls", "arguments": "{\"path\":\".\"}" } }
                    ] },
                    { "role": "tool", "tool_call_id": "toolu_1", "content": "a.rs" },
                    { "role": "user", "content": "And now?" }
                ],
                "max_tokens": 1024,
                "temperature": 0.2,
                "stop": ["END"],
                "user": "user-1",
                "tools": [{ "type": "function", "function": {
                    "name": "ls", "description": "Lists files", "parameters": { "type": "object" } } }],
                "tool_choice": "auto",
                "parallel_tool_calls": false,
                "stream": true,
                "stream_options": { "include_usage": true }
            })
        );
    }

    #[test]
    fn enabled_thinking_asks_for_a_reasoning_effort_by_its_budget() {
        let effort = |thinking: Value| {
            let body = json!({ "max_tokens": 10, "thinking": thinking,
                               "messages": [{ "role": "user", "content": "hi" }] });
            chat_request(&body, "o3")
                .unwrap()
                .get("reasoning_effort")
                .cloned()
        };
        assert_eq!(
            effort(json!({ "type": "enabled", "budget_tokens": 4000 })),
            Some(json!("low"))
        );
        assert_eq!(
            effort(json!({ "type": "enabled", "budget_tokens": 10000 })),
            Some(json!("medium"))
        );
        assert_eq!(
            effort(json!({ "type": "enabled", "budget_tokens": 31999 })),
            Some(json!("high"))
        );
        assert_eq!(effort(json!({ "type": "disabled" })), None);
        assert_eq!(effort(Value::Null), None);
        let mut chat = json!({ "model": "gpt-4o", "reasoning_effort": "low" });
        let refused = refusal_in(
            br#"{"error":{"message":"Unsupported parameter: 'reasoning_effort' is not supported with this model."}}"#,
            &chat,
            Refusals::NONE,
        );
        assert_eq!(refused, Some(Refusals::REASONING_EFFORT));
        Refusals::REASONING_EFFORT.apply(&mut chat);
        assert_eq!(chat, json!({ "model": "gpt-4o" }));
    }

    #[test]
    fn images_become_image_parts_and_error_results_say_so() {
        let body = json!({
            "max_tokens": 10,
            "messages": [{ "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "t", "content": "no such file", "is_error": true },
                { "type": "text", "text": "What is this?" },
                { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBO" } },
                { "type": "image", "source": { "type": "url", "url": "https://example.com/a.png" } }
            ] }]
        });
        let chat = chat_request(&body, "m").unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                { "role": "tool", "tool_call_id": "t", "content": "Error: no such file" },
                { "role": "user", "content": [
                    { "type": "text", "text": "What is this?" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBO" } },
                    { "type": "image_url", "image_url": { "url": "https://example.com/a.png" } }
                ] }
            ])
        );
        assert!(chat.get("stream").is_none());
    }

    #[test]
    fn tool_choices_map_to_their_counterparts() {
        let choice = |value: Value| tool_choice(&value).unwrap();
        assert_eq!(
            choice(json!({ "type": "any" })),
            (Some(json!("required")), None)
        );
        assert_eq!(
            choice(json!({ "type": "none" })),
            (Some(json!("none")), None)
        );
        assert_eq!(
            choice(json!({ "type": "tool", "name": "ls", "disable_parallel_tool_use": false })),
            (
                Some(json!({ "type": "function", "function": { "name": "ls" } })),
                Some(true)
            )
        );
        assert!(tool_choice(&json!({ "type": "sometimes" })).is_err());
    }

    #[test]
    fn what_has_no_counterpart_is_refused_with_where_it_is() {
        let refused = |body: Value| chat_request(&body, "m").unwrap_err().0;
        assert_eq!(
            refused(json!({ "messages": [{ "role": "user", "content": [
                { "type": "document", "source": {} }] }] })),
            "messages.0: a document block cannot be sent to an OpenAI-compatible account"
        );
        assert_eq!(
            refused(
                json!({ "messages": [], "tools": [{ "type": "web_search_20250305", "name": "web_search" }] })
            ),
            "tools.0: web_search is a server tool, which an OpenAI-compatible account cannot run"
        );
        assert_eq!(
            refused(json!({ "max_tokens": 1 })),
            "messages: an array is required"
        );
        assert_eq!(
            refused(json!({ "messages": [{ "role": "tool", "content": "x" }] })),
            "messages.0: role: tool is not one of user, assistant and system"
        );
        assert_eq!(refused(json!([])), "the request body is not a JSON object");
    }

    #[test]
    fn a_chat_answer_becomes_a_message_with_usage_counted_the_anthropic_way() {
        let answer = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{ "index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "ls", "arguments": "{\"path\":\".\"}" } },
                    { "id": "call_2", "type": "function", "function": { "name": "cat", "arguments": "not json" } }
                ]
            } }],
            "usage": { "prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                       "prompt_tokens_details": { "cached_tokens": 60 } }
        });
        assert_eq!(
            message(&answer, "claude-sonnet-4-5").unwrap(),
            json!({
                "id": "msg_chatcmpl-1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [
                    { "type": "text", "text": "Looking." },
                    { "type": "tool_use", "id": "call_1", "name": "ls", "input": { "path": "." } },
                    { "type": "tool_use", "id": "call_2", "name": "cat", "input": { "arguments": "not json" } }
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": { "input_tokens": 40, "output_tokens": 7,
                           "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0 }
            })
        );
    }

    #[test]
    fn finish_reasons_become_stop_reasons() {
        assert_eq!(stop_reason(Some("stop")), "end_turn");
        assert_eq!(stop_reason(Some("length")), "max_tokens");
        assert_eq!(stop_reason(Some("tool_calls")), "tool_use");
        assert_eq!(stop_reason(Some("content_filter")), "refusal");
        assert_eq!(stop_reason(None), "end_turn");
    }

    #[test]
    fn an_answer_without_choices_is_an_error_and_empty_usage_counts_zero() {
        assert!(message(&json!({ "choices": [] }), "m").is_err());
        let answer = json!({ "id": "x", "choices": [{ "finish_reason": "length",
                              "message": { "content": null } }] });
        let translated = message(&answer, "m").unwrap();
        assert_eq!(translated["content"], json!([]));
        assert_eq!(translated["stop_reason"], "max_tokens");
        assert_eq!(translated["usage"]["input_tokens"], 0);
    }

    /// The events of a translated stream, as (name, data) pairs.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let (name, data) = event.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_owned();
                let data = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                (name, data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn a_stream_of_text_then_a_tool_call_becomes_messages_events_even_when_cut_anywhere() {
        let chunks = [
            r#"{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"ls","arguments":""}}]}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"path\":"}}]}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\".\"}"}}]}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        ];
        let mut upstream = String::new();
        for chunk in chunks {
            upstream.push_str(&format!("data: {chunk}\n\n"));
        }
        upstream.push_str("data: [DONE]\n\n");

        let whole = {
            let mut translator = StreamTranslator::new("claude-sonnet-4-5");
            let mut out = Vec::new();
            translator.feed(upstream.as_bytes(), &mut out);
            assert!(translator.is_finished());
            out
        };
        // Fed in pieces of every size, the events are the same.
        for size in [1, 7, 64] {
            let mut translator = StreamTranslator::new("claude-sonnet-4-5");
            let mut out = Vec::new();
            for piece in upstream.as_bytes().chunks(size) {
                translator.feed(piece, &mut out);
            }
            assert_eq!(out, whole, "pieces of {size} bytes");
        }

        let events = events(&whole);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "msg_c1");
        assert_eq!(events[0].1["message"]["model"], "claude-sonnet-4-5");
        assert_eq!(
            events[2].1["delta"],
            json!({ "type": "text_delta", "text": "Hel" })
        );
        assert_eq!(
            events[5].1,
            json!({ "type": "content_block_start", "index": 1, "content_block":
                    { "type": "tool_use", "id": "call_1", "name": "ls", "input": {} } })
        );
        let arguments: String = events[6..8]
            .iter()
            .map(|(_, data)| data["delta"]["partial_json"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(arguments, r#"{"path":"."}"#);
        assert_eq!(
            events[9].1,
            json!({ "type": "message_delta",
                    "delta": { "stop_reason": "tool_use", "stop_sequence": null },
                    "usage": { "input_tokens": 10, "output_tokens": 9,
                               "cache_read_input_tokens": 2, "cache_creation_input_tokens": 0 } })
        );
    }

    #[test]
    fn an_error_in_the_stream_ends_it_with_an_error_event() {
        let mut translator = StreamTranslator::new("m");
        let mut out = Vec::new();
        translator.feed(
            b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\"}}\n\ndata: [DONE]\n\n",
            &mut out,
        );
        let events = events(&out);
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(
            data["error"],
            json!({ "type": "api_error", "message": "overloaded" })
        );
        assert!(translator.is_finished());
    }

    #[test]
    fn a_stream_that_never_started_ends_with_nothing_and_one_cut_short_is_closed() {
        let mut translator = StreamTranslator::new("m");
        let mut out = Vec::new();
        translator.finish(&mut out);
        assert!(out.is_empty());

        let mut translator = StreamTranslator::new("m");
        translator.feed(
            b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            &mut out,
        );
        translator.finish(&mut out);
        let names: Vec<String> = events(&out).into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
    }

    #[test]
    fn openai_errors_become_anthropic_envelopes_with_the_statuss_type() {
        let envelope = |status, body: &str| {
            serde_json::from_slice::<Value>(&error_envelope(status, body.as_bytes())).unwrap()
        };
        assert_eq!(
            envelope(
                429,
                r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#
            ),
            json!({ "type": "error", "error": { "type": "rate_limit_error", "message": "Rate limit reached" } })
        );
        assert_eq!(
            envelope(400, r#"{"error":"bad model"}"#)["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(
            envelope(400, r#"{"error":"bad model"}"#)["error"]["message"],
            "bad model"
        );
        assert_eq!(
            envelope(502, "Bad Gateway")["error"],
            json!({ "type": "api_error", "message": "Bad Gateway" })
        );
        assert_eq!(envelope(401, "{}")["error"]["type"], "authentication_error");
    }

    #[test]
    fn an_openai_model_list_becomes_anthropics() {
        let list = json!({ "object": "list", "data": [
            { "id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system" },
            { "id": "o3", "object": "model", "created": 0, "owned_by": "system" }
        ] });
        assert_eq!(
            models(&list).unwrap(),
            json!({
                "data": [
                    { "type": "model", "id": "gpt-4o", "display_name": "gpt-4o", "created_at": "2024-05-10T18:50:49Z" },
                    { "type": "model", "id": "o3", "display_name": "o3", "created_at": "1970-01-01T00:00:00Z" }
                ],
                "has_more": false, "first_id": "gpt-4o", "last_id": "o3"
            })
        );
        assert!(models(&json!({ "object": "list" })).is_err());
    }

    #[test]
    fn a_stream_that_ends_without_done_is_complete_only_if_it_said_why_it_stopped() {
        let said_why = b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\n";
        let mut translator = StreamTranslator::new("m");
        let mut out = Vec::new();
        translator.feed(said_why, &mut out);
        translator.end_of_input(&mut out);
        assert_eq!(events(&out).last().unwrap().0, "message_stop");

        let cut = b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
        let mut translator = StreamTranslator::new("m");
        let mut out = Vec::new();
        translator.feed(cut, &mut out);
        translator.end_of_input(&mut out);
        assert!(translator.is_finished());
        assert_eq!(events(&out).last().unwrap().0, "content_block_delta");
    }

    #[test]
    fn a_tool_results_images_follow_the_tool_messages_and_thinking_alone_is_left_out() {
        let body = json!({ "messages": [
            { "role": "assistant", "content": [{ "type": "thinking", "thinking": "hm", "signature": "s" }] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "t1", "content": [
                    { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "AAAA" } }
                ] },
                { "type": "text", "text": "What is in it?" }
            ] }
        ] });
        let chat = chat_request(&body, "m").unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                { "role": "tool", "tool_call_id": "t1", "content": "(the result is the image that follows)" },
                { "role": "user", "content": [
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } },
                    { "type": "text", "text": "What is in it?" }
                ] }
            ])
        );
    }

    #[test]
    fn the_servers_output_limit_is_read_from_its_refusal() {
        let openai = br#"{"error":{"message":"max_tokens is too large: 64000. This model supports at most 16384 completion tokens, whereas you provided 64000.","type":"invalid_request_error","param":"max_tokens","code":"invalid_value"}}"#;
        assert_eq!(max_tokens_limit(openai), Some(16384));
        let deepseek = br#"{"error":{"message":"Invalid max_tokens value, the valid range of max_tokens is [1, 8192]","type":"invalid_request_error"}}"#;
        assert_eq!(max_tokens_limit(deepseek), Some(8192));
        assert_eq!(
            max_tokens_limit(br#"{"error":{"message":"bad model"}}"#),
            None
        );
        assert_eq!(max_tokens_limit(b"max_tokens: supports at most lots"), None);
    }

    #[test]
    fn refused_fields_are_read_from_refusals_and_left_out() {
        let sent = json!({ "model": "o3", "max_tokens": 32000, "temperature": 0.7,
                           "stream": true, "stream_options": { "include_usage": true },
                           "parallel_tool_calls": false });
        let refusal = |message: &str| json!({ "error": { "message": message } }).to_string();
        let read = |message: &str, known| refusal_in(refusal(message).as_bytes(), &sent, known);
        assert_eq!(
            read("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", Refusals::NONE),
            Some(Refusals::MAX_TOKENS)
        );
        assert_eq!(
            read("Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported.", Refusals::NONE),
            Some(Refusals::TEMPERATURE)
        );
        assert_eq!(
            read(
                "Unrecognized request argument supplied: stream_options",
                Refusals::NONE
            ),
            Some(Refusals::STREAM_OPTIONS)
        );
        let strict = br#"{"object":"error","message":"[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), 'msg': 'Extra inputs are not permitted'}]","code":400}"#;
        assert_eq!(
            refusal_in(strict, &sent, Refusals::NONE),
            Some(Refusals::STREAM_OPTIONS)
        );
        // Known already, not sent, or a value at fault: nothing to leave out.
        assert_eq!(
            read(
                "Unrecognized request argument supplied: stream_options",
                Refusals::STREAM_OPTIONS
            ),
            None
        );
        assert_eq!(
            read(
                "Unsupported parameter: 'top_p' is not supported with this model.",
                Refusals::NONE
            ),
            None
        );
        assert_eq!(read("temperature must be at most 2", Refusals::NONE), None);
        assert_eq!(read("max_tokens is too large: 64000. This model supports at most 16384 completion tokens", Refusals::NONE), None);

        let mut chat = sent.clone();
        Refusals::MAX_TOKENS
            .with(Refusals::STREAM_OPTIONS)
            .with(Refusals::TEMPERATURE)
            .apply(&mut chat);
        assert_eq!(
            chat,
            json!({ "model": "o3", "max_completion_tokens": 32000, "stream": true,
                    "parallel_tool_calls": false })
        );
        assert_eq!(
            Refusals::MAX_TOKENS.with(Refusals::TOP_P).names(),
            ["max_tokens", "top_p"]
        );
    }

    #[test]
    fn a_whole_answer_becomes_the_events_of_a_stream() {
        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{ "type": "text", "text": "Hi" },
                        { "type": "tool_use", "id": "t", "name": "ls", "input": { "path": "." } }],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": { "input_tokens": 3, "output_tokens": 4,
                       "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0 }
        });
        let events = events(&message_events(&message));
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["content"], json!([]));
        assert_eq!(
            events[2].1["delta"],
            json!({ "type": "text_delta", "text": "Hi" })
        );
        assert_eq!(events[4].1["content_block"]["input"], json!({}));
        assert_eq!(events[5].1["delta"]["partial_json"], r#"{"path":"."}"#);
        assert_eq!(events[7].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[7].1["usage"]["output_tokens"], 4);
    }

    #[test]
    fn reasoning_comes_back_as_an_unsigned_thinking_block_first() {
        let answer = json!({ "id": "x", "choices": [{ "finish_reason": "stop", "message": {
            "reasoning_content": "Let me think.", "content": "42" } }] });
        let translated = message(&answer, "m").unwrap();
        assert_eq!(
            translated["content"],
            json!([{ "type": "thinking", "thinking": "Let me think.", "signature": "" },
                   { "type": "text", "text": "42" }])
        );
        // OpenRouter's name for it; an empty one is no block.
        let answer = json!({ "choices": [{ "message": { "reasoning": "Hm.", "content": "ok" } }] });
        assert_eq!(
            message(&answer, "m").unwrap()["content"][0]["thinking"],
            "Hm."
        );
        let answer =
            json!({ "choices": [{ "message": { "reasoning_content": "", "content": "ok" } }] });
        assert_eq!(message(&answer, "m").unwrap()["content"][0]["type"], "text");

        let streamed = events(&message_events(&translated));
        assert_eq!(
            streamed[1].1["content_block"],
            json!({ "type": "thinking", "thinking": "", "signature": "" })
        );
        assert_eq!(
            streamed[2].1["delta"],
            json!({ "type": "thinking_delta", "thinking": "Let me think." })
        );
        assert_eq!(streamed[5].1["delta"]["text"], "42");
    }

    #[test]
    fn streamed_reasoning_is_a_thinking_block_before_the_text() {
        let chunks = [
            r#"{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":"Let"}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"reasoning_content":" me think."}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"42","reasoning_content":null}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ];
        let mut translator = StreamTranslator::new("claude-sonnet-4-5");
        let mut out = Vec::new();
        for chunk in chunks {
            translator.feed(format!("data: {chunk}\n\n").as_bytes(), &mut out);
        }
        translator.feed(b"data: [DONE]\n\n", &mut out);
        let events = events(&out);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[1].1["content_block"],
            json!({ "type": "thinking", "thinking": "", "signature": "" })
        );
        let thinking: String = events[2..4]
            .iter()
            .map(|(_, data)| data["delta"]["thinking"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(thinking, "Let me think.");
        assert_eq!(events[5].1["content_block"]["type"], "text");
        assert_eq!(events[5].1["index"], 1);
        assert_eq!(events[6].1["delta"]["text"], "42");
    }
}

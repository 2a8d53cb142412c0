//! The bodies the mock sends, shaped exactly like Anthropic's.
//!
//! The stream follows Anthropic's documented event order: `message_start`,
//! `content_block_start`, `ping`, one `content_block_delta` per text chunk,
//! `content_block_stop`, `message_delta` (stop reason and the final cumulative
//! `output_tokens`), `message_stop`. Everything that does not depend on the request is rendered
//! once per mock, so a streamed answer costs one small JSON render (`message_start`, which names
//! the message id and model) plus reference-counted clones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::json;

use crate::config::MockConfig;

/// The event names of a normal stream, in order, for a given number of text chunks.
pub fn expected_event_names(text_chunks: usize) -> Vec<&'static str> {
    let mut names = vec!["message_start", "content_block_start", "ping"];
    names.extend(std::iter::repeat_n("content_block_delta", text_chunks));
    names.extend(["content_block_stop", "message_delta", "message_stop"]);
    names
}

/// Anthropic's error envelope: `{"type":"error","error":{"type":..,"message":..}}`, keys in
/// Anthropic's order.
pub(crate) fn error_envelope(error_type: &str, message: &str) -> Bytes {
    let mut rendered = String::with_capacity(48 + error_type.len() + message.len());
    rendered.push_str(r#"{"type":"error","error":{"type":"#);
    push_json_string(&mut rendered, error_type);
    rendered.push_str(r#","message":"#);
    push_json_string(&mut rendered, message);
    rendered.push_str("}}");
    Bytes::from(rendered)
}

/// The in-band `event: error` Anthropic sends once a stream has started.
pub(crate) fn stream_error_event(error_type: &str, message: &str) -> Bytes {
    let envelope = error_envelope(error_type, message);
    sse_event("error", &String::from_utf8_lossy(&envelope))
}

/// One SSE event on the wire: `event: NAME\ndata: JSON\n\n`.
pub(crate) fn sse_event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Appends `value` as a JSON string literal (quotes and escapes included).
pub(crate) fn push_json_string(output: &mut String, value: &str) {
    output.push('"');
    for character in value.chars() {
        match character {
            '"' => output.push_str("\\\""),
            '\\' => output.push_str("\\\\"),
            '\n' => output.push_str("\\n"),
            '\r' => output.push_str("\\r"),
            '\t' => output.push_str("\\t"),
            control if u32::from(control) < 0x20 => {
                output.push_str(&format!("\\u{:04x}", u32::from(control)));
            }
            other => output.push(other),
        }
    }
    output.push('"');
}

/// The status Anthropic uses for an error type, for answering a non-stream request whose script
/// asks for an in-band stream error.
pub(crate) fn status_for_error_type(error_type: &str) -> u16 {
    match error_type {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// Splits `text` into at most `chunk_count` pieces of nearly equal length on character
/// boundaries. At least one piece is returned and no piece is empty unless `text` is.
pub(crate) fn split_text(text: &str, chunk_count: usize) -> Vec<&str> {
    let char_count = text.chars().count();
    if char_count == 0 {
        return vec![text];
    }
    let piece_count = chunk_count.clamp(1, char_count);
    let base_length = char_count / piece_count;
    let longer_pieces = char_count % piece_count;
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(byte_index, _)| byte_index)
        .chain(std::iter::once(text.len()))
        .collect();
    let mut pieces = Vec::with_capacity(piece_count);
    let mut start_char = 0;
    for piece_index in 0..piece_count {
        let length = base_length + usize::from(piece_index < longer_pieces);
        let end_char = start_char + length;
        pieces.push(&text[boundaries[start_char]..boundaries[end_char]]);
        start_char = end_char;
    }
    pieces
}

/// The deterministic token count the mock claims for a `count_tokens` body: one token per four
/// bytes, at least one.
pub(crate) fn count_tokens_for_body(body: &[u8]) -> u64 {
    (body.len() as u64).div_ceil(4).max(1)
}

/// Everything of a successful answer that does not depend on the request, rendered once with
/// keys in Anthropic's order (some clients and relays scan for `{"type":"message_start"` as a
/// prefix, so the order is part of the imitation).
#[derive(Debug)]
pub(crate) struct PreparedAnswers {
    /// `message_start` from its `"usage"` to the end: everything after the model.
    message_start_tail: String,
    /// `content_block_start` … `message_stop`: every stream event after `message_start`.
    stream_events_after_start: Vec<Bytes>,
    /// The non-stream Messages JSON from its `"content"` to the end: everything after the model.
    message_json_tail: String,
}

impl PreparedAnswers {
    pub(crate) fn new(config: &MockConfig) -> PreparedAnswers {
        let usage = &config.usage;
        let message_start_tail = format!(
            concat!(
                r#","content":[],"stop_reason":null,"stop_sequence":null,"#,
                r#""usage":{{"input_tokens":{},"cache_creation_input_tokens":{},"#,
                r#""cache_read_input_tokens":{},"output_tokens":1}}}}}}"#
            ),
            usage.input_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens,
        );
        let mut events = vec![
            sse_event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            sse_event("ping", r#"{"type": "ping"}"#),
        ];
        for piece in split_text(&config.text, config.text_chunks) {
            let mut delta = String::from(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#,
            );
            push_json_string(&mut delta, piece);
            delta.push_str("}}");
            events.push(sse_event("content_block_delta", &delta));
        }
        events.push(sse_event(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ));
        events.push(sse_event(
            "message_delta",
            &format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{}}}}}"#,
                usage.output_tokens
            ),
        ));
        events.push(sse_event("message_stop", r#"{"type":"message_stop"}"#));

        let mut message_json_tail = String::from(r#","content":[{"type":"text","text":"#);
        push_json_string(&mut message_json_tail, &config.text);
        message_json_tail.push_str(&format!(
            concat!(
                r#"}}],"stop_reason":"end_turn","stop_sequence":null,"#,
                r#""usage":{{"input_tokens":{},"cache_creation_input_tokens":{},"#,
                r#""cache_read_input_tokens":{},"output_tokens":{}}}}}"#
            ),
            usage.input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
            usage.output_tokens,
        ));
        PreparedAnswers {
            message_start_tail,
            stream_events_after_start: events,
            message_json_tail,
        }
    }

    /// The full SSE event sequence of one streamed answer.
    pub(crate) fn stream_events(&self, message_id: &str, model: &str) -> Vec<Bytes> {
        let mut message_start = String::with_capacity(160 + self.message_start_tail.len());
        message_start.push_str("event: message_start\ndata: ");
        message_start.push_str(r#"{"type":"message_start","message":{"id":"#);
        push_json_string(&mut message_start, message_id);
        message_start.push_str(r#","type":"message","role":"assistant","model":"#);
        push_json_string(&mut message_start, model);
        message_start.push_str(&self.message_start_tail);
        message_start.push_str("\n\n");
        let mut events = Vec::with_capacity(1 + self.stream_events_after_start.len());
        events.push(Bytes::from(message_start));
        events.extend(self.stream_events_after_start.iter().cloned());
        events
    }

    /// The Messages JSON of one non-streamed answer.
    pub(crate) fn message_json(&self, message_id: &str, model: &str) -> Bytes {
        let mut rendered = String::with_capacity(96 + self.message_json_tail.len());
        rendered.push_str(r#"{"id":"#);
        push_json_string(&mut rendered, message_id);
        rendered.push_str(r#","type":"message","role":"assistant","model":"#);
        push_json_string(&mut rendered, model);
        rendered.push_str(&self.message_json_tail);
        Bytes::from(rendered)
    }
}

/// The `GET /v1/models` page, shaped like Anthropic's list answer.
pub(crate) fn models_page() -> Bytes {
    let models = [
        (
            "claude-opus-4-1-20250805",
            "Claude Opus 4.1",
            "2025-08-05T00:00:00Z",
        ),
        (
            "claude-sonnet-4-5-20250929",
            "Claude Sonnet 4.5",
            "2025-09-29T00:00:00Z",
        ),
        (
            "claude-haiku-4-5-20251001",
            "Claude Haiku 4.5",
            "2025-10-01T00:00:00Z",
        ),
    ];
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|(id, display_name, created_at)| {
            json!({"type": "model", "id": id, "display_name": display_name,
                   "created_at": created_at})
        })
        .collect();
    let first_id = models.first().map(|(id, _, _)| *id);
    let last_id = models.last().map(|(id, _, _)| *id);
    Bytes::from(
        json!({"data": data, "has_more": false, "first_id": first_id, "last_id": last_id})
            .to_string(),
    )
}

/// The wall-clock time `offset` from now as RFC 3339 in UTC (`2026-01-02T03:04:05Z`), the form
/// of Anthropic's `anthropic-ratelimit-*-reset` headers.
pub(crate) fn rfc3339_from_now(offset: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    format_rfc3339_utc((now + offset).as_secs())
}

/// Formats unix seconds as RFC 3339 in UTC, using the days-to-civil algorithm of Howard
/// Hinnant's "chrono-Compatible Low-Level Date Algorithms" (the mock has no date crate).
pub(crate) fn format_rfc3339_utc(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let second_of_day = unix_seconds % 86_400;
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of each 400-year era.
    let shifted_days = days + 719_468;
    let era = shifted_days / 146_097;
    let day_of_era = shifted_days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_split_into_the_requested_number_of_non_empty_pieces() {
        let pieces = split_text("Hello from the mock upstream.", 4);
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|piece| !piece.is_empty()));
        assert_eq!(pieces.concat(), "Hello from the mock upstream.");

        assert_eq!(split_text("héé", 10), vec!["h", "é", "é"]);
        assert_eq!(split_text("abc", 0), vec!["abc"]);
        assert_eq!(split_text("", 3), vec![""]);
        assert_eq!(split_text("abcde", 2), vec!["abc", "de"]);
    }

    #[test]
    fn rfc3339_formatting_matches_known_instants() {
        assert_eq!(format_rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339_utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn count_tokens_is_deterministic_from_body_length() {
        assert_eq!(count_tokens_for_body(b""), 1);
        assert_eq!(count_tokens_for_body(b"abcd"), 1);
        assert_eq!(count_tokens_for_body(b"abcde"), 2);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut rendered = String::new();
        push_json_string(&mut rendered, "a\"b\\c\nd\u{1}é");
        assert_eq!(rendered, r#""a\"b\\c\nd\u0001é""#);
        assert_eq!(
            serde_json::from_str::<String>(&rendered).unwrap(),
            "a\"b\\c\nd\u{1}é"
        );
    }

    #[test]
    fn prepared_answers_are_valid_json_in_anthropics_key_order() {
        let config = MockConfig {
            text: "quote \" and\nnewline".to_owned(),
            ..MockConfig::default()
        };
        let answers = PreparedAnswers::new(&config);
        let message = answers.message_json("msg_1", "claude-\"x");
        let message_text = std::str::from_utf8(&message).unwrap();
        assert!(message_text.starts_with(r#"{"id":"msg_1","type":"message""#));
        let parsed: serde_json::Value = serde_json::from_str(message_text).unwrap();
        assert_eq!(
            parsed,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-\"x",
                   "content": [{"type": "text", "text": "quote \" and\nnewline"}],
                   "stop_reason": "end_turn", "stop_sequence": null,
                   "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 7}})
        );
        for event in answers.stream_events("msg_1", "claude-\"x") {
            let text = std::str::from_utf8(&event).unwrap();
            let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
            assert!(data.starts_with(r#"{"type":"#), "type comes first: {data}");
            serde_json::from_str::<serde_json::Value>(data).unwrap();
        }
        let envelope = error_envelope("api_error", "bad \"thing\"");
        assert_eq!(
            std::str::from_utf8(&envelope).unwrap(),
            r#"{"type":"error","error":{"type":"api_error","message":"bad \"thing\""}}"#
        );
    }

    #[test]
    fn prepared_stream_has_anthropics_event_order() {
        let answers = PreparedAnswers::new(&MockConfig::default());
        let events = answers.stream_events("msg_1", "claude-x");
        let names: Vec<String> = events
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                assert!(text.ends_with("\n\n"));
                text.lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_owned()
            })
            .collect();
        assert_eq!(names, expected_event_names(4));
    }
}

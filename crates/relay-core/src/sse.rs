//! Usage and stream facts parsed on the side of a passing Anthropic SSE stream.
//!
//! The data plane forwards every chunk to the client untouched and also hands it to
//! [`SseUsageParser::feed`]. The parser is incremental: it keeps only the unfinished line and
//! the `data` of the current event when that event matters, never the stream. It finds line
//! ends with `memchr`, reads the event name from the `event:` line, and parses JSON only for
//! the three events that carry facts the relay needs — `message_start` (model, input and cache
//! tokens), `message_delta` (cumulative output tokens) and `error`. `content_block_delta`
//! payloads, which are nearly all of a stream's bytes, are skipped without being copied or
//! parsed.
//!
//! The SSE rules followed (WHATWG HTML §9.2 "Server-sent events"): lines end with `\n` or
//! `\r\n`; a blank line ends an event; `field: value` with one optional space after the
//! colon; several `data` lines of one event join with `\n`; lines starting with `:` are
//! comments. A lone `\r` as a line end is not supported (no Anthropic-compatible upstream sends
//! it). An event without an `event:` line is recognised by the `type` field of its data, as
//! some compatible providers omit the name.
//!
//! A line longer than 1 MiB is dropped, not buffered, and [`SseUsageParser::overflowed`] says
//! so; the stream itself is unaffected because the parser only observes it.

use memchr::{memchr, memmem};
use serde::Deserialize;

use crate::json_scan::{last_member, Members};
use crate::model::Usage;

/// The longest line (or event data) the parser buffers. Anthropic's usage-bearing events are
/// a few hundred bytes; anything near this size is not one of them.
const MAX_BUFFERED_BYTES: usize = 1 << 20;

/// The first complete event of a stream: what decides whether a 200 stream actually started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstEvent {
    /// `message_start`, or any other event that is not an error.
    Message,
    /// An `event: error` arrived before anything else: nothing useful was streamed yet, so the
    /// attempt can still fail over (see `classify::classify_stream_error_event`).
    Error { error_type: String, message: String },
}

/// Which event the current lines belong to, as far as the parser cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    /// No `event:` line yet: the data's `type` decides at the end of the event.
    Unnamed,
    MessageStart,
    MessageDelta,
    Error,
    ContentBlockDelta,
    MessageStop,
    Other,
}

impl EventKind {
    fn from_name(name: &[u8]) -> EventKind {
        match name {
            b"message_start" => EventKind::MessageStart,
            b"message_delta" => EventKind::MessageDelta,
            b"error" => EventKind::Error,
            b"content_block_delta" => EventKind::ContentBlockDelta,
            b"message_stop" => EventKind::MessageStop,
            _ => EventKind::Other,
        }
    }

    /// Whether the event's data must be kept until the event ends.
    fn keeps_data(self) -> bool {
        matches!(
            self,
            EventKind::Unnamed
                | EventKind::MessageStart
                | EventKind::MessageDelta
                | EventKind::Error
        )
    }
}

/// Incremental observer of an Anthropic Messages SSE stream.
#[derive(Debug, Clone)]
pub struct SseUsageParser {
    /// The unfinished last line of the bytes fed so far.
    partial_line: Vec<u8>,
    /// The rest of the current line is of no interest (or too long): skip to the next `\n`.
    discarding_line: bool,
    /// A line or an event's data exceeded [`MAX_BUFFERED_BYTES`] and was dropped.
    overflowed: bool,
    current_kind: EventKind,
    current_data: Vec<u8>,
    current_data_dropped: bool,
    current_has_fields: bool,
    usage: Usage,
    model: Option<String>,
    first_event: Option<FirstEvent>,
    error_type: Option<String>,
    saw_message_stop: bool,
    saw_text_delta: bool,
}

impl Default for SseUsageParser {
    fn default() -> Self {
        SseUsageParser::new()
    }
}

impl SseUsageParser {
    pub fn new() -> Self {
        SseUsageParser {
            partial_line: Vec::new(),
            discarding_line: false,
            overflowed: false,
            current_kind: EventKind::Unnamed,
            current_data: Vec::new(),
            current_data_dropped: false,
            current_has_fields: false,
            usage: Usage::default(),
            model: None,
            first_event: None,
            error_type: None,
            saw_message_stop: false,
            saw_text_delta: false,
        }
    }

    /// Observes the next bytes of the stream; chunk boundaries may fall anywhere.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(newline) = memchr(b'\n', rest) {
            let piece = &rest[..newline];
            rest = &rest[newline + 1..];
            if self.discarding_line {
                self.discarding_line = false;
            } else if self.partial_line.is_empty() {
                self.process_line(piece);
            } else if self.partial_line.len() + piece.len() > MAX_BUFFERED_BYTES {
                self.partial_line.clear();
                self.overflowed = true;
            } else {
                let mut line = std::mem::take(&mut self.partial_line);
                line.extend_from_slice(piece);
                self.process_line(&line);
                line.clear();
                self.partial_line = line;
            }
        }
        if rest.is_empty() || self.discarding_line {
            return;
        }
        if self.partial_line.len() + rest.len() > MAX_BUFFERED_BYTES {
            self.partial_line.clear();
            self.discarding_line = true;
            self.overflowed = true;
            return;
        }
        self.partial_line.extend_from_slice(rest);
        // A `data:` line of an event whose data is not needed is skipped as soon as that is
        // known, so that long `content_block_delta` lines split across chunks are never copied.
        if self.partial_line.starts_with(b"data:") && !self.current_kind.keeps_data() {
            self.partial_line.clear();
            self.discarding_line = true;
            self.current_has_fields = true;
        }
    }

    /// Token counts seen so far: input and cache tokens from `message_start`, output tokens
    /// from the last `message_delta` (its count is cumulative, so it replaces, never adds).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Set once the first complete (blank-line terminated) event has been seen.
    pub fn first_event(&self) -> Option<&FirstEvent> {
        self.first_event.as_ref()
    }

    pub fn saw_message_stop(&self) -> bool {
        self.saw_message_stop
    }

    /// Whether a `content_block_delta` (text, thinking or tool input) has been seen.
    pub fn saw_text_delta(&self) -> bool {
        self.saw_text_delta
    }

    /// The `error.type` of an `event: error`, if one came (first or later).
    pub fn error_event(&self) -> Option<&str> {
        self.error_type.as_deref()
    }

    /// `message.model` of `message_start`.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whether a line longer than 1 MiB had to be dropped; usage may then be incomplete.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn process_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.finish_event();
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.current_has_fields = true;
                self.current_kind = EventKind::from_name(value);
            }
            b"data" => {
                self.current_has_fields = true;
                if !self.current_kind.keeps_data() || self.current_data_dropped {
                    return;
                }
                let separator = usize::from(!self.current_data.is_empty());
                if self.current_data.len() + separator + value.len() > MAX_BUFFERED_BYTES {
                    self.current_data.clear();
                    self.current_data_dropped = true;
                    self.overflowed = true;
                    return;
                }
                if separator == 1 {
                    self.current_data.push(b'\n');
                }
                self.current_data.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn finish_event(&mut self) {
        if !self.current_has_fields {
            return;
        }
        let kind = match self.current_kind {
            EventKind::Unnamed => sniff_event_type(&self.current_data)
                .map(EventKind::from_name)
                .unwrap_or(EventKind::Other),
            named => named,
        };
        let data = std::mem::take(&mut self.current_data);
        let data_usable = !self.current_data_dropped;
        match kind {
            EventKind::MessageStart if data_usable => self.read_message_start(&data),
            EventKind::MessageDelta if data_usable => self.read_message_delta(&data),
            EventKind::Error => {
                let (error_type, message) = if data_usable {
                    read_error(&data)
                } else {
                    (None, None)
                };
                let error_type = error_type.unwrap_or_else(|| "api_error".to_string());
                if self.first_event.is_none() {
                    self.first_event = Some(FirstEvent::Error {
                        error_type: error_type.clone(),
                        message: message.unwrap_or_default(),
                    });
                }
                self.error_type.get_or_insert(error_type);
            }
            EventKind::ContentBlockDelta => self.saw_text_delta = true,
            EventKind::MessageStop => self.saw_message_stop = true,
            _ => {}
        }
        if self.first_event.is_none() {
            self.first_event = Some(FirstEvent::Message);
        }
        self.current_data = data;
        self.current_data.clear();
        self.current_data_dropped = false;
        self.current_has_fields = false;
        self.current_kind = EventKind::Unnamed;
    }

    fn read_message_start(&mut self, data: &[u8]) {
        let Ok(payload) = serde_json::from_slice::<MessageStartPayload>(data) else {
            return;
        };
        if let Some(model) = payload.message.model {
            self.model = Some(model);
        }
        if let Some(usage) = payload.message.usage {
            self.usage.input_tokens = usage.input_tokens.unwrap_or(0);
            self.usage.cache_read_input_tokens = usage.cache_read_input_tokens.unwrap_or(0);
            self.usage.cache_creation_input_tokens = usage.cache_creation_input_tokens.unwrap_or(0);
            self.usage.output_tokens = usage.output_tokens.unwrap_or(0);
        }
    }

    fn read_message_delta(&mut self, data: &[u8]) {
        let Ok(payload) = serde_json::from_slice::<MessageDeltaPayload>(data) else {
            return;
        };
        let Some(usage) = payload.usage else {
            return;
        };
        if let Some(output) = usage.output_tokens {
            self.usage.output_tokens = output;
        }
        let take_nonzero = |slot: &mut u64, value: Option<u64>| {
            if let Some(value) = value.filter(|v| *v > 0) {
                *slot = value;
            }
        };
        take_nonzero(&mut self.usage.input_tokens, usage.input_tokens);
        take_nonzero(
            &mut self.usage.cache_read_input_tokens,
            usage.cache_read_input_tokens,
        );
        take_nonzero(
            &mut self.usage.cache_creation_input_tokens,
            usage.cache_creation_input_tokens,
        );
    }
}

/// The value of the first `"type"` key of an event's data, read without parsing the JSON.
/// Anthropic writes `type` first in every event object.
fn sniff_event_type(data: &[u8]) -> Option<&[u8]> {
    // Built once: `memmem::find` builds its searcher on every call, which cost more than the
    // search over an event's few hundred bytes.
    static TYPE_KEY: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(b"\"type\""));
    let key = TYPE_KEY.find(data)?;
    let mut rest = data[key + 6..].trim_ascii_start();
    rest = rest.strip_prefix(b":")?.trim_ascii_start();
    rest = rest.strip_prefix(b"\"")?;
    let end = memchr(b'"', rest)?;
    Some(&rest[..end])
}

fn read_error(data: &[u8]) -> (Option<String>, Option<String>) {
    match serde_json::from_slice::<ErrorPayload>(data) {
        Ok(ErrorPayload { error: Some(body) }) => (body.error_type, body.message),
        _ => (None, None),
    }
}

#[derive(Deserialize)]
struct MessageStartPayload {
    message: MessageStartBody,
}

#[derive(Deserialize)]
struct MessageStartBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<UsagePayload>,
}

#[derive(Deserialize)]
struct MessageDeltaPayload {
    #[serde(default)]
    usage: Option<UsagePayload>,
}

#[derive(Deserialize)]
struct ErrorPayload {
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    error_type: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Anthropic's usage object. Counts are read leniently (a compatible provider may send a
/// float or a negative number); a count that is not a number counts as absent.
#[derive(Deserialize, Default)]
struct UsagePayload {
    #[serde(default, deserialize_with = "lenient_count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_count")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_count")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_count")]
    cache_creation_input_tokens: Option<u64>,
}

fn lenient_count<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(match value {
        serde_json::Value::Number(number) => number
            .as_u64()
            .or_else(|| number.as_i64().map(|signed| signed.max(0) as u64))
            .or_else(|| number.as_f64().map(|float| float.max(0.0) as u64)),
        _ => None,
    })
}

#[derive(Deserialize)]
struct JsonAnswer {
    #[serde(default)]
    usage: Option<UsagePayload>,
}

/// Usage of a non-stream JSON answer (`{"usage": {...}, ...}`); `None` when the body is not
/// a JSON object or has no usage.
///
/// Only the `usage` member is parsed: the answer's other members (its content, nearly all of
/// its bytes) are stepped over by the top-level reader of `json_scan`, which jumps from quote
/// to quote with `memchr` instead of decoding every string.
pub fn usage_from_json(body: &[u8]) -> Option<Usage> {
    // Anthropic writes `usage` last: then it is found from the end, and the content before
    // it (kilobytes of text and tool input in a long answer) is not even stepped over.
    if let Some(value) = last_member(body, br#""usage""#) {
        return usage_in(&body[value]);
    }
    let mut escaped_names = false;
    let mut found = None;
    for (name, value) in Members::of(body) {
        if name == br#""usage""# {
            found = Some(&body[value]);
            break;
        }
        escaped_names |= memchr(b'\\', name).is_some();
    }
    let Some(value) = found else {
        // A member name written with escapes could be `usage`: let the full parser decide.
        return if escaped_names {
            usage_of(serde_json::from_slice::<JsonAnswer>(body).ok()?.usage?)
        } else {
            None
        };
    };
    usage_in(value)
}

/// The counts of a usage member's value; `None` for `null` or anything but an object.
fn usage_in(value: &[u8]) -> Option<Usage> {
    if value.first() != Some(&b'{') {
        // `null`, or not an object at all.
        return None;
    }
    let mut usage = Usage::default();
    for (name, count) in Members::of(value) {
        let slot = match name {
            br#""input_tokens""# => &mut usage.input_tokens,
            br#""output_tokens""# => &mut usage.output_tokens,
            br#""cache_read_input_tokens""# => &mut usage.cache_read_input_tokens,
            br#""cache_creation_input_tokens""# => &mut usage.cache_creation_input_tokens,
            name if memchr(b'\\', name).is_some() => {
                return usage_of(serde_json::from_slice::<UsagePayload>(value).ok()?);
            }
            _ => continue,
        };
        *slot = lenient_count_of(&value[count]);
    }
    Some(usage)
}

fn usage_of(payload: UsagePayload) -> Option<Usage> {
    Some(Usage {
        input_tokens: payload.input_tokens.unwrap_or(0),
        output_tokens: payload.output_tokens.unwrap_or(0),
        cache_read_input_tokens: payload.cache_read_input_tokens.unwrap_or(0),
        cache_creation_input_tokens: payload.cache_creation_input_tokens.unwrap_or(0),
    })
}

/// A token count as [`lenient_count`] reads it: negative counts are 0, fractions are cut, and
/// anything but a number is 0.
fn lenient_count_of(raw: &[u8]) -> u64 {
    let Ok(text) = std::str::from_utf8(raw) else {
        return 0;
    };
    if let Ok(count) = text.parse::<u64>() {
        return count;
    }
    if text.parse::<i64>().is_ok() {
        return 0;
    }
    match text.parse::<f64>() {
        Ok(float) if float.is_finite() && float > 0.0 => float as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real-shaped Anthropic stream: message_start with cache usage, a ping, a text block,
    /// a message_delta with cumulative output tokens, message_stop.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"cache_creation\":{\"ephemeral_5m_input_tokens\":100,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n",
        "\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"! \\\"usage\\\":{\\\"output_tokens\\\":999}\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n",
        "\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n",
        "\n",
    );

    const EXPECTED_USAGE: Usage = Usage {
        input_tokens: 25,
        output_tokens: 15,
        cache_read_input_tokens: 2000,
        cache_creation_input_tokens: 100,
    };

    fn feed_all(chunks: &[&[u8]]) -> SseUsageParser {
        let mut parser = SseUsageParser::new();
        for chunk in chunks {
            parser.feed(chunk);
        }
        parser
    }

    fn assert_complete(parser: &SseUsageParser, context: &str) {
        assert_eq!(parser.usage(), EXPECTED_USAGE, "{context}");
        assert_eq!(
            parser.model(),
            Some("claude-sonnet-4-5-20250929"),
            "{context}"
        );
        assert_eq!(
            parser.first_event(),
            Some(&FirstEvent::Message),
            "{context}"
        );
        assert!(parser.saw_message_stop(), "{context}");
        assert!(parser.saw_text_delta(), "{context}");
        assert_eq!(parser.error_event(), None, "{context}");
        assert!(!parser.overflowed(), "{context}");
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_complete(&feed_all(&[STREAM.as_bytes()]), "one chunk");
    }

    #[test]
    fn split_at_every_offset() {
        let crlf = STREAM.replace('\n', "\r\n");
        for stream in [STREAM, crlf.as_str()] {
            let bytes = stream.as_bytes();
            for offset in 0..=bytes.len() {
                let (head, tail) = bytes.split_at(offset);
                assert_complete(&feed_all(&[head, tail]), &format!("split at {offset}"));
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let crlf = STREAM.replace('\n', "\r\n");
        for stream in [STREAM, crlf.as_str()] {
            let chunks: Vec<&[u8]> = stream.as_bytes().chunks(1).collect();
            assert_complete(&feed_all(&chunks), "byte by byte");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_chunking(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
            let bytes = STREAM.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut parser = SseUsageParser::new();
            let mut start = 0;
            for cut in cuts {
                parser.feed(&bytes[start..cut]);
                start = cut;
            }
            parser.feed(&bytes[start..]);
            proptest::prop_assert_eq!(parser.usage(), EXPECTED_USAGE);
            proptest::prop_assert!(parser.saw_message_stop());
        }
    }

    #[test]
    fn first_event_needs_its_blank_line() {
        let mut parser = SseUsageParser::new();
        parser.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":3}}}\n");
        assert_eq!(parser.first_event(), None);
        assert_eq!(parser.model(), None);
        parser.feed(b"\n");
        assert_eq!(parser.first_event(), Some(&FirstEvent::Message));
        assert_eq!(parser.model(), Some("m"));
        assert_eq!(parser.usage().input_tokens, 3);
        assert!(!parser.saw_text_delta());
        assert!(!parser.saw_message_stop());
    }

    #[test]
    fn error_as_first_event() {
        let parser = feed_all(&[b"event: error\r\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\r\n\r\n"]);
        assert_eq!(
            parser.first_event(),
            Some(&FirstEvent::Error {
                error_type: "overloaded_error".to_string(),
                message: "Overloaded".to_string()
            })
        );
        assert_eq!(parser.error_event(), Some("overloaded_error"));
    }

    #[test]
    fn error_after_the_stream_started() {
        let mut stream = STREAM.as_bytes().to_vec();
        stream.extend_from_slice(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n");
        let parser = feed_all(&[&stream]);
        assert_eq!(parser.first_event(), Some(&FirstEvent::Message));
        assert_eq!(parser.error_event(), Some("api_error"));
    }

    #[test]
    fn unparsable_error_event_is_still_an_error() {
        let parser = feed_all(&[b"event: error\ndata: oops\n\n"]);
        assert_eq!(parser.error_event(), Some("api_error"));
        assert!(matches!(
            parser.first_event(),
            Some(FirstEvent::Error { .. })
        ));
    }

    #[test]
    fn events_without_names_are_recognised_by_type() {
        let parser = feed_all(&[
            b"data: {\"type\": \"message_start\",\"message\":{\"model\":\"glm-4.6\",\"usage\":{\"input_tokens\":9,\"output_tokens\":0}}}\n\n",
            b"data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"x\"}}\n\n",
            b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\n",
            b"data: {\"type\":\"message_stop\"}\n\n",
        ]);
        assert_eq!(parser.model(), Some("glm-4.6"));
        assert_eq!(parser.usage().input_tokens, 9);
        assert_eq!(parser.usage().output_tokens, 4);
        assert!(parser.saw_text_delta());
        assert!(parser.saw_message_stop());
    }

    #[test]
    fn message_delta_input_counts_replace_only_when_nonzero() {
        let parser = feed_all(&[
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":0,\"cache_read_input_tokens\":0,\"cache_creation_input_tokens\":30,\"output_tokens\":20}}\n\n",
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":12,\"output_tokens\":21}}\n\n",
        ]);
        assert_eq!(
            parser.usage(),
            Usage {
                input_tokens: 12,
                output_tokens: 21,
                cache_read_input_tokens: 5,
                cache_creation_input_tokens: 30
            }
        );
    }

    #[test]
    fn multi_line_data_and_comments() {
        let parser = feed_all(&[
            b": keep-alive\n",
            b"event: message_start\ndata: {\"type\":\"message_start\",\n",
            b"data: \"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":4}}}\n\n",
        ]);
        assert_eq!(parser.model(), Some("m"));
        assert_eq!(parser.usage().input_tokens, 4);
    }

    #[test]
    fn overlong_lines_are_dropped_with_a_flag() {
        let mut parser = SseUsageParser::new();
        parser.feed(b"event: message_start\ndata: ");
        let filler = vec![b'x'; 64 * 1024];
        for _ in 0..20 {
            parser.feed(&filler);
        }
        assert!(parser.overflowed());
        assert!(parser.partial_line.capacity() <= 2 * MAX_BUFFERED_BYTES);
        parser.feed(b"\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n");
        assert_eq!(parser.usage().output_tokens, 3);
        assert_eq!(parser.first_event(), Some(&FirstEvent::Message));
    }

    #[test]
    fn long_delta_lines_are_not_buffered() {
        let mut parser = SseUsageParser::new();
        parser.feed(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"");
        parser.feed(&vec![b'y'; 4096]);
        assert!(parser.partial_line.is_empty());
        parser.feed(b"\"}}\n\n");
        assert!(parser.saw_text_delta());
        assert!(!parser.overflowed());
    }

    #[test]
    fn usage_of_json_answers() {
        let body = br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":11,"output_tokens":22,"cache_read_input_tokens":33,"cache_creation_input_tokens":44}}"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage {
                input_tokens: 11,
                output_tokens: 22,
                cache_read_input_tokens: 33,
                cache_creation_input_tokens: 44
            })
        );
        assert_eq!(
            usage_from_json(br#"{"usage":{"input_tokens":1,"output_tokens":2.0}}"#),
            Some(Usage {
                input_tokens: 1,
                output_tokens: 2,
                ..Usage::default()
            })
        );
        assert_eq!(usage_from_json(br#"{"id":"x"}"#), None);
        assert_eq!(usage_from_json(b"not json"), None);
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
        assert_eq!(
            usage_from_json(br#"["usage",{"usage":{"input_tokens":1}}]"#),
            None
        );
    }

    #[test]
    fn only_the_answers_own_usage_counts() {
        let usage = |input| Usage {
            input_tokens: input,
            ..Usage::default()
        };
        // In text, in a nested object, after escaped quotes and backslashes: not the answer's.
        let body = br#" { "content" : [ {"type":"text","text":"a \\\\\" \"usage\":{\"input_tokens\":9} \\\\"},
            {"usage":{"input_tokens":8}} ], "meta": {"usage": {"input_tokens": 7}},
            "n": -1.5e3, "ok": true, "none": null, "usage" : {"input_tokens" : 5, "cache_creation": {"x": [1, {"y": "}"}]}} } "#;
        assert_eq!(usage_from_json(body), Some(usage(5)));
        // Strings short and long, with escapes at either end.
        for (before, after) in [(5, 100), (40, 3), (31, 31), (32, 33), (200, 200)] {
            let text = format!(
                "{}\\\\\\\"usage\\\":{{}}{}\\\\",
                "a".repeat(before),
                "b".repeat(after)
            );
            let body =
                format!(r#"{{"content":[{{"text":"{text}"}}],"usage":{{"input_tokens":6}}}}"#);
            assert_eq!(usage_from_json(body.as_bytes()), Some(usage(6)), "{body}");
        }
        // A member name written with escapes is still found, by the full parser.
        assert_eq!(
            usage_from_json(br#"{"us\u0061ge":{"input_tokens":4}}"#),
            Some(usage(4))
        );
        // A body cut short after its usage still tells it; before, it does not.
        assert_eq!(
            usage_from_json(br#"{"usage":{"input_tokens":3},"content":[{"te"#),
            Some(usage(3))
        );
        assert_eq!(usage_from_json(br#"{"content":[{"text":"usage\"#), None);
    }

    /// A token count as upstreams may write it: usually a whole number, sometimes not.
    fn count() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..1_000_000).prop_map(serde_json::Value::from),
            1 => any::<u64>().prop_map(serde_json::Value::from),
            1 => any::<i64>().prop_map(serde_json::Value::from),
            1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            1 => ".{0,4}".prop_map(serde_json::Value::from),
            1 => Just(serde_json::Value::Null),
        ]
    }

    #[test]
    fn counts_are_read_leniently() {
        let body = br#"{"usage":{"input_tokens":-3,"output_tokens":2.9,"cache_read_input_tokens":"7","cache_creation_input_tokens":1e2}}"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage {
                input_tokens: 0,
                output_tokens: 2,
                cache_read_input_tokens: 0,
                cache_creation_input_tokens: 100
            })
        );
    }

    proptest::proptest! {
        /// Whatever the text around it, the scanner reads the same usage as a full parse.
        #[test]
        fn the_scanner_agrees_with_a_full_parse(
            texts in proptest::collection::vec(".*", 0..4),
            before in proptest::bool::ANY,
            input in count(),
            output in count(),
        ) {
            let content: Vec<_> = texts
                .iter()
                .map(|text| serde_json::json!({"type": "text", "text": text, "usage": {"input_tokens": 1}}))
                .collect();
            let usage = serde_json::json!({"input_tokens": input, "output_tokens": output});
            let answer = if before {
                serde_json::json!({"usage": usage, "id": texts.first(), "content": content})
            } else {
                serde_json::json!({"id": texts.first(), "content": content, "usage": usage})
            };
            let body = serde_json::to_vec_pretty(&answer).unwrap();
            let full: JsonAnswer = serde_json::from_slice(&body).unwrap();
            let expected = full.usage.map(|usage| Usage {
                input_tokens: usage.input_tokens.unwrap_or(0),
                output_tokens: usage.output_tokens.unwrap_or(0),
                cache_read_input_tokens: usage.cache_read_input_tokens.unwrap_or(0),
                cache_creation_input_tokens: usage.cache_creation_input_tokens.unwrap_or(0),
            });
            proptest::prop_assert_eq!(usage_from_json(&body), expected);
        }
    }
}

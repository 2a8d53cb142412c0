//! Request body inspection for `POST /v1/messages`, without building the document.
//!
//! The relay forwards the client's bytes unchanged, so it needs from the body only a few
//! facts: `model` (routing, allowlists, prices), `stream`, `metadata.user_id` (sticky
//! sessions) and `max_tokens`. [`inspect_request`] runs serde_json over the whole body — so a
//! malformed document is refused before any upstream sees it — but with a visitor that
//! deserialises every other field as [`serde::de::IgnoredAny`], so the messages, tools and
//! images of a large Claude Code request are validated and skipped, never allocated.
//!
//! [`rewrite_model`] is the one rewrite the core offers (for accounts with a `model_mapping`):
//! it splices the new value over the old one's bytes and leaves everything else as sent.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::json_scan::{object_start, Members};

/// What the relay needs to know about a Messages request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInspection {
    pub model: Option<String>,
    /// `stream: true`; absent means false.
    pub stream: bool,
    /// `metadata.user_id` when it is a string.
    pub metadata_user_id: Option<String>,
    /// `max_tokens` when it is a non-negative integer.
    pub max_tokens: Option<u64>,
}

/// Why a body was refused; each maps to a 400 `invalid_request_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
}

/// Checks that the whole body is valid JSON and reads only `model`, `stream`,
/// `metadata.user_id` and `max_tokens`. `model` must be a string and `stream` a boolean when
/// present; the other two are read when they have the expected type and ignored otherwise,
/// leaving their validation to the upstream.
pub fn inspect_request(body: &[u8]) -> Result<RequestInspection, BodyError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let outcome = deserializer
        .deserialize_any(TopLevelVisitor)
        .map_err(|error| BodyError::NotJson(error.to_string()))?;
    deserializer
        .end()
        .map_err(|error| BodyError::NotJson(error.to_string()))?;
    outcome
}

/// The top-level visitor returns the body error inside `Ok`, so that serde_json keeps its own
/// errors for syntax only and field problems keep their field name.
struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = Result<RequestInspection, BodyError>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut inspection = RequestInspection::default();
        let mut problem = None;
        while let Some(key) = map.next_key::<KeyName>()? {
            match key {
                KeyName::Model => match map.next_value::<Loose>()? {
                    Loose::Text(model) => inspection.model = Some(model),
                    other => {
                        problem.get_or_insert(BodyError::InvalidField {
                            field: "model",
                            message: format!("must be a string, got {}", other.describe()),
                        });
                    }
                },
                KeyName::Stream => match map.next_value::<Loose>()? {
                    Loose::Bool(stream) => inspection.stream = stream,
                    other => {
                        problem.get_or_insert(BodyError::InvalidField {
                            field: "stream",
                            message: format!("must be a boolean, got {}", other.describe()),
                        });
                    }
                },
                KeyName::MaxTokens => {
                    if let Loose::Unsigned(max_tokens) = map.next_value::<Loose>()? {
                        inspection.max_tokens = Some(max_tokens);
                    }
                }
                KeyName::Metadata => {
                    let metadata = map.next_value::<MetadataFields>()?;
                    inspection.metadata_user_id = metadata.user_id;
                }
                KeyName::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(match problem {
            Some(problem) => Err(problem),
            None => Ok(inspection),
        })
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(BodyError::NotObject))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(BodyError::NotObject))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(BodyError::NotObject))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(BodyError::NotObject))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(BodyError::NotObject))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(BodyError::NotObject))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(BodyError::NotObject))
    }
}

/// The top-level keys of interest, matched without allocating for the others.
enum KeyName {
    Model,
    Stream,
    MaxTokens,
    Metadata,
    Other,
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyName;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<KeyName, E> {
                Ok(match key {
                    "model" => KeyName::Model,
                    "stream" => KeyName::Stream,
                    "max_tokens" => KeyName::MaxTokens,
                    "metadata" => KeyName::Metadata,
                    _ => KeyName::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A field value whose type is checked by hand; compound values are skipped.
enum Loose {
    Text(String),
    Bool(bool),
    Unsigned(u64),
    OtherNumber,
    Null,
    Array,
    Object,
}

impl Loose {
    fn describe(&self) -> &'static str {
        match self {
            Loose::Text(_) => "a string",
            Loose::Bool(_) => "a boolean",
            Loose::Unsigned(_) | Loose::OtherNumber => "a number",
            Loose::Null => "null",
            Loose::Array => "an array",
            Loose::Object => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LooseVisitor;
        impl<'de> Visitor<'de> for LooseVisitor {
            type Value = Loose;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Loose, E> {
                Ok(Loose::Text(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Loose, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Loose, E> {
                Ok(Loose::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Loose, E> {
                Ok(u64::try_from(v).map_or(Loose::OtherNumber, Loose::Unsigned))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Loose, E> {
                Ok(Loose::OtherNumber)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Loose, E> {
                Ok(Loose::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Object)
            }
        }
        deserializer.deserialize_any(LooseVisitor)
    }
}

/// `metadata`: only `user_id` is read, and only when `metadata` is an object.
struct MetadataFields {
    user_id: Option<String>,
}

impl<'de> Deserialize<'de> for MetadataFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetadataVisitor;
        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = MetadataFields;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetadataFields, A::Error> {
                let mut user_id = None;
                while let Some(key) = map.next_key::<MetadataKey>()? {
                    match key {
                        MetadataKey::UserId => {
                            if let Loose::Text(text) = map.next_value::<Loose>()? {
                                user_id = Some(text);
                            }
                        }
                        MetadataKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(MetadataFields { user_id })
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MetadataFields, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MetadataFields { user_id: None })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MetadataFields, E> {
                Ok(MetadataFields { user_id: None })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MetadataFields, E> {
                Ok(MetadataFields { user_id: None })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MetadataFields, E> {
                Ok(MetadataFields { user_id: None })
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MetadataFields, E> {
                Ok(MetadataFields { user_id: None })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MetadataFields, E> {
                Ok(MetadataFields { user_id: None })
            }
            fn visit_unit<E: de::Error>(self) -> Result<MetadataFields, E> {
                Ok(MetadataFields { user_id: None })
            }
        }
        deserializer.deserialize_any(MetadataVisitor)
    }
}

enum MetadataKey {
    UserId,
    Other,
}

impl<'de> Deserialize<'de> for MetadataKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = MetadataKey;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<MetadataKey, E> {
                Ok(if key == "user_id" {
                    MetadataKey::UserId
                } else {
                    MetadataKey::Other
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The sticky-session key inside `metadata.user_id`. Claude Code writes either the old string
/// form `user_<hash>_account_<uuid>_session_<uuid>` or, in newer versions, a JSON object in a
/// string: `{"device_id":"..","account_uuid":"..","session_id":".."}`. Returns the session id
/// when one is found, else the whole (non-empty) user id, so that other clients that put a
/// stable id there still get sticky sessions.
pub fn session_key_from_user_id(user_id: &str) -> Option<String> {
    let trimmed = user_id.trim();
    if trimmed.is_empty() {
        return None;
    }
    if trimmed.starts_with('{') {
        #[derive(Deserialize)]
        struct NewForm {
            #[serde(default)]
            session_id: Option<String>,
        }
        if let Ok(NewForm {
            session_id: Some(session),
        }) = serde_json::from_str::<NewForm>(trimmed)
        {
            if !session.trim().is_empty() {
                return Some(session.trim().to_string());
            }
        }
    } else if let Some(position) = trimmed.rfind("_session_") {
        let session = &trimmed[position + "_session_".len()..];
        if !session.is_empty() {
            return Some(session.to_string());
        }
    }
    Some(trimmed.to_string())
}

/// Rebuilds a body with another `"model"` value (only for accounts with a `model_mapping`).
/// The new value is spliced over the old one's bytes, so every other byte stays as the client
/// sent it; a body without `model` gets one as its first field.
pub fn rewrite_model(body: &[u8], new_model: &str) -> Result<Bytes, BodyError> {
    inspect_request(body)?;
    let encoded_model =
        serde_json::to_string(new_model).map_err(|error| BodyError::NotJson(error.to_string()))?;
    let Some(object_start) = object_start(body) else {
        return Err(BodyError::NotObject);
    };
    // serde_json, like Anthropic, keeps the last of duplicate keys.
    let is_model = |name: &[u8]| {
        name == br#""model""#
            || (name.contains(&b'\\')
                && serde_json::from_slice::<String>(name).is_ok_and(|name| name == "model"))
    };
    let model_value = Members::of(body)
        .filter(|(name, _)| is_model(name))
        .last()
        .map(|(_, value)| value);
    let mut rewritten = Vec::with_capacity(body.len() + encoded_model.len() + 12);
    match model_value {
        Some(value) => {
            rewritten.extend_from_slice(&body[..value.start]);
            rewritten.extend_from_slice(encoded_model.as_bytes());
            rewritten.extend_from_slice(&body[value.end..]);
        }
        None => {
            let after_brace = object_start + 1;
            let is_empty_object = body[after_brace..].trim_ascii_start().starts_with(b"}");
            rewritten.extend_from_slice(&body[..after_brace]);
            rewritten.extend_from_slice(b"\"model\":");
            rewritten.extend_from_slice(encoded_model.as_bytes());
            if !is_empty_object {
                rewritten.push(b',');
            }
            rewritten.extend_from_slice(&body[after_brace..]);
        }
    }
    Ok(Bytes::from(rewritten))
}

/// `body` without the `thinking` blocks of its messages whose signature is empty, and
/// without the assistant turns that held nothing else; `None` when it has none, and the body
/// goes on as it is.
///
/// The relay writes such blocks for the reasoning of an `openai` account's model (only
/// Anthropic can sign one), and a client sends them back with the conversation; Anthropic
/// refuses a thinking block it did not sign, so they must not reach an Anthropic account. A
/// scan for an empty `"signature"` answers for nearly every body; only a body that has one
/// is parsed and written again (its members then in another order, the same JSON).
pub fn without_unsigned_thinking(body: &[u8]) -> Option<Bytes> {
    if !has_empty_signature(body) {
        return None;
    }
    let mut request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = request.get_mut("messages")?.as_array_mut()?;
    let mut removed = false;
    messages.retain_mut(|message| {
        let Some(content) = message
            .get_mut("content")
            .and_then(serde_json::Value::as_array_mut)
        else {
            return true;
        };
        let before = content.len();
        content.retain(|block| !is_unsigned_thinking(block));
        if content.len() == before {
            return true;
        }
        removed = true;
        // A turn left empty would be refused; the turns around it are then joined, as
        // Anthropic joins consecutive turns of one role.
        !content.is_empty()
    });
    if !removed {
        return None;
    }
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

fn is_unsigned_thinking(block: &serde_json::Value) -> bool {
    block.get("type").and_then(serde_json::Value::as_str) == Some("thinking")
        && block
            .get("signature")
            .and_then(serde_json::Value::as_str)
            .is_some_and(str::is_empty)
}

/// Whether `body` has a member `"signature"` whose value is `""`, however spaced.
fn has_empty_signature(body: &[u8]) -> bool {
    const NAME: &[u8] = br#""signature""#;
    // Built once: `memmem::find` builds its searcher on every call.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(NAME));
    let mut rest = body;
    while let Some(at) = FINDER.find(rest) {
        rest = &rest[at + NAME.len()..];
        let value = rest.trim_ascii_start();
        if let Some(value) = value.strip_prefix(b":") {
            if value.trim_ascii_start().starts_with(br#""""#) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_thinking_is_left_out_and_everything_else_kept() {
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[
            {"role":"user","content":"why?"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":""},{"type":"text","text":"because"}]},
            {"role":"user","content":"and?"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"so", "signature" : ""}]},
            {"role":"user","content":[{"type":"text","text":"a \"signature\": \"\" in text stays"}]},
            {"role":"assistant","content":[{"type":"thinking","thinking":"signed","signature":"EqQBCkgIARABGAIiQL"}]}
        ]}"#;
        let rewritten = without_unsigned_thinking(body).unwrap();
        let request: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(
            request["messages"],
            serde_json::json!([
                { "role": "user", "content": "why?" },
                { "role": "assistant", "content": [{ "type": "text", "text": "because" }] },
                { "role": "user", "content": "and?" },
                { "role": "user", "content": [{ "type": "text", "text": "a \"signature\": \"\" in text stays" }] },
                { "role": "assistant", "content": [
                    { "type": "thinking", "thinking": "signed", "signature": "EqQBCkgIARABGAIiQL" }
                ] }
            ])
        );
        assert_eq!(request["max_tokens"], 64);

        // Signed thinking only, or an empty signature in text alone: the body goes on as is.
        assert_eq!(
            without_unsigned_thinking(
                br#"{"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"a","signature":"Eq"}]}]}"#
            ),
            None
        );
        assert_eq!(
            without_unsigned_thinking(
                br#"{"messages":[{"role":"user","content":"\"signature\": \"\""}]}"#
            ),
            None
        );
        assert_eq!(
            without_unsigned_thinking(b"not json \"signature\":\"\""),
            None
        );
    }

    #[test]
    fn reads_the_four_fields_and_skips_the_rest() {
        let body = br#"{
            "model": "claude-sonnet-4-5",
            "max_tokens": 32000,
            "messages": [{"role":"user","content":[{"type":"text","text":"hi \"model\": \"x\""}]}],
            "system": [{"type":"text","text":"You are Claude Code","cache_control":{"type":"ephemeral"}}],
            "tools": [{"name":"Bash","input_schema":{"type":"object","properties":{"stream":{"type":"boolean"}}}}],
            "metadata": {"user_id": "user_abc_account_123_session_456"},
            "stream": true
        }"#;
        let inspection = inspect_request(body).unwrap();
        assert_eq!(
            inspection,
            RequestInspection {
                model: Some("claude-sonnet-4-5".to_string()),
                stream: true,
                metadata_user_id: Some("user_abc_account_123_session_456".to_string()),
                max_tokens: Some(32000),
            }
        );
    }

    #[test]
    fn absent_fields_are_defaults() {
        assert_eq!(
            inspect_request(b"{}").unwrap(),
            RequestInspection::default()
        );
        let inspection =
            inspect_request(br#"{"stream":false,"metadata":null,"max_tokens":-1}"#).unwrap();
        assert!(!inspection.stream);
        assert_eq!(inspection.metadata_user_id, None);
        assert_eq!(inspection.max_tokens, None);
        let inspection =
            inspect_request(br#"{"metadata":{"user_id":5},"max_tokens":1.5}"#).unwrap();
        assert_eq!(inspection.metadata_user_id, None);
        assert_eq!(inspection.max_tokens, None);
    }

    #[test]
    fn model_escapes_are_decoded() {
        let inspection = inspect_request(br#"{"model":"claude-\u0073onnet"}"#).unwrap();
        assert_eq!(inspection.model.as_deref(), Some("claude-sonnet"));
    }

    #[test]
    fn refuses_malformed_json() {
        for body in [
            &b""[..],
            b"{",
            b"{\"model\":}",
            b"{\"model\":\"x\"} trailing",
            b"{\"messages\":[1,2,}",
            b"\xff",
        ] {
            assert!(
                matches!(inspect_request(body), Err(BodyError::NotJson(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn refuses_non_objects() {
        for body in [
            &b"[]"[..],
            b"[1,{\"a\":2}]",
            b"\"model\"",
            b"42",
            b"null",
            b"true",
        ] {
            assert_eq!(inspect_request(body), Err(BodyError::NotObject));
        }
    }

    #[test]
    fn refuses_wrong_types_naming_the_field() {
        let error = inspect_request(br#"{"model":42}"#).unwrap_err();
        assert_eq!(
            error,
            BodyError::InvalidField {
                field: "model",
                message: "must be a string, got a number".to_string()
            }
        );
        assert_eq!(error.to_string(), "model: must be a string, got a number");
        let error = inspect_request(br#"{"model":"m","stream":"true"}"#).unwrap_err();
        assert!(matches!(
            error,
            BodyError::InvalidField {
                field: "stream",
                ..
            }
        ));
        // A syntax error later in the document wins over a field problem.
        assert!(matches!(
            inspect_request(br#"{"model":42,"x":}"#),
            Err(BodyError::NotJson(_))
        ));
    }

    #[test]
    fn session_keys() {
        assert_eq!(
            session_key_from_user_id(
                "user_0123abcd_account_11111111-2222-3333-4444-555555555555_session_aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
            )
            .as_deref(),
            Some("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
        );
        assert_eq!(
            session_key_from_user_id("user_0123abcd_account__session_s-1").as_deref(),
            Some("s-1")
        );
        assert_eq!(
            session_key_from_user_id(
                r#"{"device_id":"dev","account_uuid":"acc","session_id":"sess-42"}"#
            )
            .as_deref(),
            Some("sess-42")
        );
        assert_eq!(
            session_key_from_user_id(r#"{"device_id":"dev","session_id":""}"#).as_deref(),
            Some(r#"{"device_id":"dev","session_id":""}"#)
        );
        assert_eq!(
            session_key_from_user_id("customer-7").as_deref(),
            Some("customer-7")
        );
        assert_eq!(
            session_key_from_user_id("user_x_session_").as_deref(),
            Some("user_x_session_")
        );
        assert_eq!(session_key_from_user_id("   "), None);
        assert_eq!(session_key_from_user_id(""), None);
    }

    #[test]
    fn rewrites_only_the_model_bytes() {
        let body = br#"{ "messages":[{"role":"user","content":"say \"model\":1"}], "model" : "claude-opus-4-5", "stream":true }"#;
        let rewritten = rewrite_model(body, "glm-4.6").unwrap();
        assert_eq!(
            &rewritten[..],
            &br#"{ "messages":[{"role":"user","content":"say \"model\":1"}], "model" : "glm-4.6", "stream":true }"#[..]
        );
        let nested = br#"{"metadata":{"model":"keep"},"model":"a"}"#;
        assert_eq!(
            &rewrite_model(nested, "b").unwrap()[..],
            &br#"{"metadata":{"model":"keep"},"model":"b"}"#[..]
        );
    }

    #[test]
    fn rewrite_escapes_and_inserts() {
        let rewritten = rewrite_model(br#"{"max_tokens":1}"#, "we\"ird").unwrap();
        assert_eq!(
            &rewritten[..],
            &br#"{"model":"we\"ird","max_tokens":1}"#[..]
        );
        assert_eq!(
            inspect_request(&rewritten).unwrap().model.as_deref(),
            Some("we\"ird")
        );
        assert_eq!(
            &rewrite_model(b" { } ", "m").unwrap()[..],
            &b" {\"model\":\"m\" } "[..]
        );
        let escaped_key = br#"{"mod\u0065l":"old","x":[1,{"y":"}"}]}"#;
        let rewritten = rewrite_model(escaped_key, "new").unwrap();
        assert_eq!(
            &rewritten[..],
            &br#"{"mod\u0065l":"new","x":[1,{"y":"}"}]}"#[..]
        );
        let after_numbers =
            rewrite_model(br#"{"n":-1.5e3,"t":true,"z":null,"model":"a"}"#, "m").unwrap();
        assert_eq!(
            &after_numbers[..],
            &br#"{"n":-1.5e3,"t":true,"z":null,"model":"m"}"#[..]
        );
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let text = proptest::string::string_regex(r#"[a-z"\\{}\[\]:, \u{e9}\u{1F600}]{0,8}"#)
            .unwrap()
            .boxed();
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            text.clone().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(text.clone(), inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The byte scanner of `rewrite_model` agrees with serde_json on any document: only
        /// the top-level `model` changes, whatever strings and nesting surround it.
        #[test]
        fn rewrite_matches_a_full_parse(
            fields in proptest::collection::btree_map(
                proptest::sample::select(vec!["model", "metadata", "messages", "mod\"el", "x"]),
                arbitrary_json(),
                0..5,
            ),
            model in proptest::option::of("[a-z0-9\\-\"]{0,12}"),
            pretty in proptest::bool::ANY,
        ) {
            let mut object: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            match &model {
                Some(name) => { object.insert("model".to_string(), serde_json::Value::from(name.clone())); }
                None => { object.remove("model"); }
            }
            let document = serde_json::Value::Object(object);
            let body = if pretty {
                serde_json::to_vec_pretty(&document).unwrap()
            } else {
                serde_json::to_vec(&document).unwrap()
            };
            let inspection = inspect_request(&body).unwrap();
            proptest::prop_assert_eq!(inspection.model, model);
            let rewritten = rewrite_model(&body, "new-\"model").unwrap();
            let reparsed: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
            // Compared with a re-parse of the same bytes: serde_json does not round-trip every
            // float exactly, which is not what this test is about.
            let mut expected: serde_json::Value = serde_json::from_slice(&body).unwrap();
            expected["model"] = serde_json::Value::from("new-\"model");
            proptest::prop_assert_eq!(reparsed, expected);
        }
    }

    #[test]
    fn rewrite_refuses_what_inspection_refuses() {
        assert!(matches!(
            rewrite_model(b"{", "m"),
            Err(BodyError::NotJson(_))
        ));
        assert_eq!(rewrite_model(b"[]", "m"), Err(BodyError::NotObject));
    }
}

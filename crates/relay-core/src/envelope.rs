//! Anthropic's error envelope: `{"type":"error","error":{"type":"...","message":"..."}}`.

use serde::Serialize;

/// The error types Anthropic clients understand, with the HTTP status each goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RequestTooLarge,
    RateLimit,
    Api,
    Overloaded,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::RateLimit => 429,
            ErrorKind::Api => 500,
            ErrorKind::Overloaded => 529,
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Api => "api_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }
}

#[derive(Debug, Serialize)]
struct EnvelopeBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

#[derive(Debug, Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: EnvelopeBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback_info: Option<&'a T>,
}

/// Serialises the envelope, with `fallback_info` beside `error` when given.
pub fn error_json<T: Serialize>(
    kind: ErrorKind,
    message: &str,
    fallback_info: Option<&T>,
) -> Vec<u8> {
    let envelope = Envelope {
        kind: "error",
        error: EnvelopeBody {
            kind: kind.type_name(),
            message,
        },
        fallback_info,
    };
    // Serialising plain strings and numbers cannot fail; fall back to a fixed body if it ever did.
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let body = error_json::<()>(ErrorKind::Authentication, "invalid x-api-key", None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["message"], "invalid x-api-key");
        assert!(v.get("fallback_info").is_none());
    }
}

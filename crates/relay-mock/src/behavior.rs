//! What the mock does with one request: answer normally, or fail in one of the ways a real
//! upstream fails.
//!
//! The failures mirror what the relay must classify (PRODUCT.md §5.1): statuses before the first
//! byte (429, 529, 5xx, 401, 400), slowness before the first byte, and breaks after it (a dropped
//! connection, a stall, an in-band `event: error`).

use std::time::Duration;

use serde::Deserialize;

/// One scripted behaviour of the mock upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// A normal answer: the Messages JSON, or the SSE sequence when the request asks to stream.
    Ok,
    /// Exactly this status, these headers and this body, for cases no other variant covers.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// 429 `rate_limit_error` with `retry-after` (when given), the
    /// `anthropic-ratelimit-{requests,tokens}-reset` times (RFC 3339, when given) and
    /// `-remaining: 0`.
    RateLimited {
        retry_after_secs: Option<u64>,
        reset_in_secs: Option<u64>,
    },
    /// 529 `overloaded_error`.
    Overloaded,
    /// This status (500, 502, 503, 504, …) with an `api_error` body.
    ServerError(u16),
    /// 401 `authentication_error`.
    Unauthorized,
    /// 400 `invalid_request_error`.
    BadRequest,
    /// Waits this long before sending any byte, then answers normally.
    SlowFirstByte(Duration),
    /// Never answers; the request stays open until the client leaves or the mock shuts down.
    Hang,
    /// Sends the headers and the first `after_events` stream events, then closes the connection
    /// without ending the body, so the client sees a broken transfer. A JSON answer is cut in
    /// the middle instead.
    DropMidStream { after_events: usize },
    /// 200 whose stream starts with `event: error` of this type (Anthropic does this for
    /// `overloaded_error` once a stream has begun). A non-stream request gets the matching
    /// status and error body instead.
    StreamErrorEvent { error_type: String },
    /// Sends the headers and the first `after_events` stream events, then sends nothing more
    /// while keeping the connection open. A JSON answer stalls in its middle instead.
    StallMidStream { after_events: usize },
}

impl Behavior {
    /// The behaviour a credential asks for by its name, so that the standalone mock demonstrates
    /// faults without any scripting. A script for the credential always takes precedence.
    pub fn from_credential_convention(credential: &str) -> Option<Behavior> {
        if credential.contains("mock-429") {
            Some(Behavior::RateLimited {
                retry_after_secs: Some(30),
                reset_in_secs: Some(30),
            })
        } else if credential.contains("mock-529") {
            Some(Behavior::Overloaded)
        } else if credential.contains("mock-500") {
            Some(Behavior::ServerError(500))
        } else if credential.contains("mock-401") {
            Some(Behavior::Unauthorized)
        } else if credential.contains("mock-slow") {
            Some(Behavior::SlowFirstByte(Duration::from_secs(2)))
        } else if credential.contains("mock-drop") {
            Some(Behavior::DropMidStream { after_events: 3 })
        } else {
            None
        }
    }
}

/// The body of `POST /_mock/script`: a behaviour by name plus the parameters it needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlScript {
    /// The credential to script; absent means the default for credentials with no script.
    #[serde(default)]
    pub credential: Option<String>,
    /// `ok`, `status`, `rate_limited`, `overloaded`, `server_error`, `unauthorized`,
    /// `bad_request`, `slow_first_byte`, `hang`, `drop_mid_stream`, `stream_error_event` or
    /// `stall_mid_stream`.
    pub behavior: String,
    /// Queue the behaviour for this many requests instead of making it the default.
    #[serde(default)]
    pub count: Option<usize>,
    /// For `status` and `server_error`.
    #[serde(default)]
    pub status: Option<u16>,
    /// For `status`.
    #[serde(default)]
    pub body: Option<String>,
    /// For `rate_limited`; absent means 30 seconds.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// For `rate_limited`; absent means the same as `retry_after_secs`.
    #[serde(default)]
    pub reset_in_secs: Option<u64>,
    /// For `slow_first_byte`; absent means 2000.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// For `drop_mid_stream` and `stall_mid_stream`; absent means 3.
    #[serde(default)]
    pub after_events: Option<usize>,
    /// For `stream_error_event`; absent means `overloaded_error`.
    #[serde(default)]
    pub error_type: Option<String>,
}

impl ControlScript {
    /// Turns the named behaviour into a [`Behavior`], or explains why the name is unknown.
    pub(crate) fn behavior(&self) -> Result<Behavior, String> {
        let after_events = self.after_events.unwrap_or(3);
        let behavior = match self.behavior.as_str() {
            "ok" => Behavior::Ok,
            "status" => Behavior::Status {
                status: self.status.unwrap_or(500),
                headers: Vec::new(),
                body: self.body.clone().unwrap_or_default(),
            },
            "rate_limited" => {
                let retry_after_secs = self.retry_after_secs.unwrap_or(30);
                Behavior::RateLimited {
                    retry_after_secs: Some(retry_after_secs),
                    reset_in_secs: Some(self.reset_in_secs.unwrap_or(retry_after_secs)),
                }
            }
            "overloaded" => Behavior::Overloaded,
            "server_error" => Behavior::ServerError(self.status.unwrap_or(500)),
            "unauthorized" => Behavior::Unauthorized,
            "bad_request" => Behavior::BadRequest,
            "slow_first_byte" => {
                Behavior::SlowFirstByte(Duration::from_millis(self.delay_ms.unwrap_or(2000)))
            }
            "hang" => Behavior::Hang,
            "drop_mid_stream" => Behavior::DropMidStream { after_events },
            "stream_error_event" => Behavior::StreamErrorEvent {
                error_type: self
                    .error_type
                    .clone()
                    .unwrap_or_else(|| "overloaded_error".to_owned()),
            },
            "stall_mid_stream" => Behavior::StallMidStream { after_events },
            unknown => return Err(format!("unknown behavior `{unknown}`")),
        };
        Ok(behavior)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_conventions_name_their_fault() {
        assert_eq!(
            Behavior::from_credential_convention("sk-ant-mock-429-a"),
            Some(Behavior::RateLimited {
                retry_after_secs: Some(30),
                reset_in_secs: Some(30)
            })
        );
        assert_eq!(
            Behavior::from_credential_convention("mock-529"),
            Some(Behavior::Overloaded)
        );
        assert_eq!(
            Behavior::from_credential_convention("x-mock-500"),
            Some(Behavior::ServerError(500))
        );
        assert_eq!(
            Behavior::from_credential_convention("mock-401"),
            Some(Behavior::Unauthorized)
        );
        assert_eq!(
            Behavior::from_credential_convention("mock-slow"),
            Some(Behavior::SlowFirstByte(Duration::from_secs(2)))
        );
        assert_eq!(
            Behavior::from_credential_convention("mock-drop"),
            Some(Behavior::DropMidStream { after_events: 3 })
        );
        assert_eq!(Behavior::from_credential_convention("sk-ant-plain"), None);
    }

    #[test]
    fn control_script_names_map_to_behaviours() {
        let script: ControlScript = serde_json::from_str(
            r#"{"credential":"k","behavior":"rate_limited","retry_after_secs":5,"count":2}"#,
        )
        .unwrap();
        assert_eq!(
            script.behavior(),
            Ok(Behavior::RateLimited {
                retry_after_secs: Some(5),
                reset_in_secs: Some(5)
            })
        );
        assert_eq!(script.count, Some(2));

        let script: ControlScript =
            serde_json::from_str(r#"{"behavior":"stall_mid_stream","after_events":1}"#).unwrap();
        assert_eq!(script.credential, None);
        assert_eq!(
            script.behavior(),
            Ok(Behavior::StallMidStream { after_events: 1 })
        );

        let script: ControlScript = serde_json::from_str(r#"{"behavior":"explode"}"#).unwrap();
        assert!(script.behavior().is_err());

        assert!(serde_json::from_str::<ControlScript>(r#"{"behavior":"ok","bogus":1}"#).is_err());
    }
}

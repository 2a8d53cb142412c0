//! Error classification: the single place that turns an upstream answer into an
//! [`OutcomeClass`] (PRODUCT.md §5.1).
//!
//! Everything else in the fallback mechanism — whether to fail over, whether to wait before
//! the next attempt, whether the account's breaker and health are charged — is decided from
//! the class alone, so the rules live here and are tested row by row.
//!
//! The body is looked at only for the few cases where the status alone lies:
//! Anthropic answers an exhausted credit balance with `400 invalid_request_error` ("Your credit
//! balance is too low ..."), some accounts get `billing_error` bodies, and an overload may
//! arrive under an unusual status with an `overloaded_error` body. The search is a byte scan
//! of the body's start, so a truncated or non-JSON body is still classified.

use memchr::memmem;
use serde::{Deserialize, Serialize};

/// What one attempt on one account came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// A 2xx answer.
    Success,
    /// The client's request is at fault (400, 404, 413, 422, other 4xx): the upstream answer
    /// goes back unchanged and the account is not charged.
    ClientError,
    /// 401 or 403: the account's credential was refused.
    Auth,
    /// 402 or a billing body: the account cannot pay.
    Billing,
    /// 429: the account is cooling down until its reset.
    RateLimited,
    /// 529, 503 or an `overloaded_error` body.
    Overloaded,
    /// 500, 502, 504 and other 5xx.
    ServerError,
    /// Connect error, TLS error or timeout before the answer's headers.
    Network,
    /// The stream broke after its first byte reached the client.
    MidStream,
}

impl OutcomeClass {
    /// Every class, in declaration order (for metrics tables and exhaustive tests).
    pub const ALL: [OutcomeClass; 9] = [
        OutcomeClass::Success,
        OutcomeClass::ClientError,
        OutcomeClass::Auth,
        OutcomeClass::Billing,
        OutcomeClass::RateLimited,
        OutcomeClass::Overloaded,
        OutcomeClass::ServerError,
        OutcomeClass::Network,
        OutcomeClass::MidStream,
    ];

    /// The snake_case name used in logs, JSON, metrics labels and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Success => "success",
            OutcomeClass::ClientError => "client_error",
            OutcomeClass::Auth => "auth",
            OutcomeClass::Billing => "billing",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::Overloaded => "overloaded",
            OutcomeClass::ServerError => "server_error",
            OutcomeClass::Network => "network",
            OutcomeClass::MidStream => "mid_stream",
        }
    }

    /// The inverse of [`OutcomeClass::as_str`], for rows read back from the store.
    pub fn parse(name: &str) -> Option<OutcomeClass> {
        OutcomeClass::ALL
            .into_iter()
            .find(|class| class.as_str() == name)
    }

    /// Whether another account may serve the request after this outcome. A client error is
    /// the request's own fault and would fail everywhere; a mid-stream break cannot be
    /// retried because bytes already reached the client.
    pub fn fails_over(self) -> bool {
        matches!(
            self,
            OutcomeClass::Auth
                | OutcomeClass::Billing
                | OutcomeClass::RateLimited
                | OutcomeClass::Overloaded
                | OutcomeClass::ServerError
                | OutcomeClass::Network
        )
    }

    /// Whether the attempt loop should wait `retry_delay` (with jitter) before the next
    /// attempt. Waiting helps only when the trouble may be shared upstream capacity; after a
    /// 429 or an auth error the next account is tried at once.
    pub fn backoff_before_next_attempt(self) -> bool {
        matches!(
            self,
            OutcomeClass::Overloaded | OutcomeClass::ServerError | OutcomeClass::Network
        )
    }

    /// Whether the outcome is a failure of the account's service that the circuit breaker
    /// and the health window count. Rate limits, auth and billing have their own, more
    /// precise treatment (cooldown until reset, disabling), and client errors are not the
    /// account's fault.
    pub fn counts_toward_breaker(self) -> bool {
        matches!(
            self,
            OutcomeClass::Overloaded
                | OutcomeClass::ServerError
                | OutcomeClass::Network
                | OutcomeClass::MidStream
        )
    }

    pub fn is_success(self) -> bool {
        self == OutcomeClass::Success
    }
}

impl std::fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an upstream answer from its status and (the start of) its body.
///
/// Billing bodies are recognised under any 4xx except 429 (where only OpenAI's
/// `insufficient_quota` is), because they mean the same thing
/// whatever status a provider chose: this account cannot serve anyone until it is paid for.
pub fn classify_response(status: u16, body_prefix: &[u8]) -> OutcomeClass {
    if (200..300).contains(&status) {
        return OutcomeClass::Success;
    }
    if body_mentions_overloaded(body_prefix) {
        return OutcomeClass::Overloaded;
    }
    match status {
        402 => OutcomeClass::Billing,
        // OpenAI answers a spent quota with 429 `insufficient_quota`: no wait fixes that.
        429 if memmem::find(body_prefix, b"\"insufficient_quota\"").is_some() => {
            OutcomeClass::Billing
        }
        429 => OutcomeClass::RateLimited,
        400..=499 if body_mentions_billing(body_prefix) => OutcomeClass::Billing,
        401 | 403 => OutcomeClass::Auth,
        400..=499 => OutcomeClass::ClientError,
        503 | 529 => OutcomeClass::Overloaded,
        500..=599 => OutcomeClass::ServerError,
        // 1xx and 3xx are not answers the relay can forward as a Messages response: treat them
        // as a broken upstream so that another account is tried.
        _ => OutcomeClass::ServerError,
    }
}

/// Classifies an SSE `event: error` that arrived as the first event of a 200 stream, from its
/// `error.type`. Nothing has reached the client yet, so the class decides failover just as a
/// status would.
pub fn classify_stream_error_event(error_type: &str) -> OutcomeClass {
    match error_type {
        "overloaded_error" => OutcomeClass::Overloaded,
        "rate_limit_error" => OutcomeClass::RateLimited,
        "api_error" => OutcomeClass::ServerError,
        "authentication_error" | "permission_error" => OutcomeClass::Auth,
        "billing_error" => OutcomeClass::Billing,
        "invalid_request_error" => OutcomeClass::ClientError,
        _ => OutcomeClass::ServerError,
    }
}

fn body_mentions_overloaded(body: &[u8]) -> bool {
    memmem::find(body, b"\"overloaded_error\"").is_some()
}

fn body_mentions_billing(body: &[u8]) -> bool {
    memmem::find(body, b"\"billing_error\"").is_some()
        || contains_ascii_case_insensitive(body, b"credit balance")
}

/// A case-insensitive search for an ASCII needle; bodies are short prefixes, so the simple
/// window scan is enough.
fn contains_ascii_case_insensitive(haystack: &[u8], needle_lowercase: &[u8]) -> bool {
    haystack
        .windows(needle_lowercase.len())
        .any(|window| window.eq_ignore_ascii_case(needle_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDIT_BALANCE_BODY: &[u8] = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    const BILLING_ERROR_BODY: &[u8] =
        br#"{"type":"error","error":{"type":"billing_error","message":"payment required"}}"#;
    const OVERLOADED_BODY: &[u8] =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    const PLAIN_INVALID_BODY: &[u8] = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}"#;

    #[test]
    fn success_statuses() {
        for status in [200, 201, 204, 299] {
            assert_eq!(classify_response(status, b""), OutcomeClass::Success);
        }
        // A successful answer that talks about overloads or billing is still a success.
        assert_eq!(
            classify_response(200, OVERLOADED_BODY),
            OutcomeClass::Success
        );
        assert_eq!(
            classify_response(200, CREDIT_BALANCE_BODY),
            OutcomeClass::Success
        );
    }

    #[test]
    fn client_error_statuses() {
        for status in [400, 404, 413, 422] {
            assert_eq!(
                classify_response(status, PLAIN_INVALID_BODY),
                OutcomeClass::ClientError,
                "{status}"
            );
        }
        for status in [405, 409, 411, 415, 418, 499] {
            assert_eq!(
                classify_response(status, b""),
                OutcomeClass::ClientError,
                "{status}"
            );
        }
    }

    #[test]
    fn billing_bodies_and_402() {
        assert_eq!(
            classify_response(400, CREDIT_BALANCE_BODY),
            OutcomeClass::Billing
        );
        assert_eq!(
            classify_response(400, BILLING_ERROR_BODY),
            OutcomeClass::Billing
        );
        assert_eq!(
            classify_response(403, BILLING_ERROR_BODY),
            OutcomeClass::Billing
        );
        assert_eq!(
            classify_response(400, b"Your CREDIT BALANCE is too low"),
            OutcomeClass::Billing
        );
        assert_eq!(classify_response(402, b""), OutcomeClass::Billing);
        // OpenAI's spent quota comes as a 429.
        assert_eq!(
            classify_response(
                429,
                br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#
            ),
            OutcomeClass::Billing
        );
        // A billing word never turns a 429 or a 5xx into billing.
        assert_eq!(
            classify_response(429, CREDIT_BALANCE_BODY),
            OutcomeClass::RateLimited
        );
        assert_eq!(
            classify_response(500, BILLING_ERROR_BODY),
            OutcomeClass::ServerError
        );
    }

    #[test]
    fn auth_statuses() {
        assert_eq!(classify_response(401, b""), OutcomeClass::Auth);
        assert_eq!(classify_response(403, b""), OutcomeClass::Auth);
    }

    #[test]
    fn rate_limited() {
        assert_eq!(classify_response(429, b""), OutcomeClass::RateLimited);
    }

    #[test]
    fn overloaded_statuses_and_bodies() {
        assert_eq!(classify_response(529, b""), OutcomeClass::Overloaded);
        assert_eq!(classify_response(503, b""), OutcomeClass::Overloaded);
        for status in [500, 502, 400, 429] {
            assert_eq!(
                classify_response(status, OVERLOADED_BODY),
                OutcomeClass::Overloaded,
                "{status}"
            );
        }
        // The bare word without quotes (for example inside a message) is not enough.
        assert_eq!(
            classify_response(500, b"upstream overloaded_error-ish"),
            OutcomeClass::ServerError
        );
    }

    #[test]
    fn server_error_statuses() {
        for status in [500, 502, 504, 501, 505, 520, 599] {
            assert_eq!(
                classify_response(status, b"<html>bad gateway</html>"),
                OutcomeClass::ServerError,
                "{status}"
            );
        }
        assert_eq!(classify_response(302, b""), OutcomeClass::ServerError);
        assert_eq!(classify_response(100, b""), OutcomeClass::ServerError);
    }

    #[test]
    fn stream_error_events() {
        let rows = [
            ("overloaded_error", OutcomeClass::Overloaded),
            ("rate_limit_error", OutcomeClass::RateLimited),
            ("api_error", OutcomeClass::ServerError),
            ("authentication_error", OutcomeClass::Auth),
            ("permission_error", OutcomeClass::Auth),
            ("billing_error", OutcomeClass::Billing),
            ("invalid_request_error", OutcomeClass::ClientError),
            ("something_new", OutcomeClass::ServerError),
            ("", OutcomeClass::ServerError),
        ];
        for (error_type, class) in rows {
            assert_eq!(
                classify_stream_error_event(error_type),
                class,
                "{error_type}"
            );
        }
    }

    #[test]
    fn class_properties_match_the_table() {
        use OutcomeClass::*;
        let fails_over = [Auth, Billing, RateLimited, Overloaded, ServerError, Network];
        let backs_off = [Overloaded, ServerError, Network];
        let counts = [Overloaded, ServerError, Network, MidStream];
        for class in OutcomeClass::ALL {
            assert_eq!(class.fails_over(), fails_over.contains(&class), "{class}");
            assert_eq!(
                class.backoff_before_next_attempt(),
                backs_off.contains(&class),
                "{class}"
            );
            assert_eq!(
                class.counts_toward_breaker(),
                counts.contains(&class),
                "{class}"
            );
            assert_eq!(class.is_success(), class == Success, "{class}");
        }
    }

    #[test]
    fn names_round_trip_through_str_and_serde() {
        let names = [
            "success",
            "client_error",
            "auth",
            "billing",
            "rate_limited",
            "overloaded",
            "server_error",
            "network",
            "mid_stream",
        ];
        for (class, name) in OutcomeClass::ALL.into_iter().zip(names) {
            assert_eq!(class.as_str(), name);
            assert_eq!(OutcomeClass::parse(name), Some(class));
            assert_eq!(
                serde_json::to_string(&class).unwrap(),
                format!("\"{name}\"")
            );
            let back: OutcomeClass = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, class);
        }
        assert_eq!(OutcomeClass::parse("Success"), None);
    }
}

//! The OAuth token endpoint (`POST /v1/oauth/token`) of the `claude` platform.
//!
//! A test states up front what each refresh token yields. A refresh token works once: using it
//! consumes it, as Anthropic rotates refresh tokens, so a relay that refreshes twice with the
//! same token (no single flight) or forgets to store the rotated token is caught by an
//! `invalid_grant` answer.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::json;

/// What a refresh with one refresh token answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in_secs: u64,
}

/// Refresh tokens that are still valid, and what each yields.
#[derive(Debug, Default)]
pub(crate) struct OAuthBook {
    unused_refresh_tokens: HashMap<String, IssuedTokens>,
}

impl OAuthBook {
    pub(crate) fn issue(&mut self, refresh_token: &str, tokens: IssuedTokens) {
        self.unused_refresh_tokens
            .insert(refresh_token.to_owned(), tokens);
    }

    /// Consumes the refresh token; `None` when it is unknown or already used.
    pub(crate) fn redeem(&mut self, refresh_token: &str) -> Option<IssuedTokens> {
        self.unused_refresh_tokens.remove(refresh_token)
    }
}

/// The fields of a token request, from a form or a JSON body.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct TokenRequest {
    #[serde(default)]
    pub grant_type: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
}

impl TokenRequest {
    /// Parses a JSON body when the content type says so or the body looks like JSON, else an
    /// `application/x-www-form-urlencoded` body; `None` when the body is neither.
    pub(crate) fn parse(content_type: Option<&str>, body: &[u8]) -> Option<TokenRequest> {
        let looks_like_json = content_type.is_some_and(|value| value.contains("json"))
            || body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{');
        if looks_like_json {
            return serde_json::from_slice(body).ok();
        }
        let body = std::str::from_utf8(body).ok()?;
        let mut request = TokenRequest::default();
        for pair in body.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = Some(percent_decode_form_value(value)?);
            match percent_decode_form_value(name)?.as_str() {
                "grant_type" => request.grant_type = value,
                "refresh_token" => request.refresh_token = value,
                "client_id" => request.client_id = value,
                _ => {}
            }
        }
        Some(request)
    }
}

/// Decodes one form-urlencoded component (`+` is a space, `%XX` a byte); `None` when the
/// escapes are malformed or the result is not UTF-8.
fn percent_decode_form_value(encoded: &str) -> Option<String> {
    let mut decoded = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'+' => decoded.push(b' '),
            b'%' => {
                let high = char::from(bytes.next()?).to_digit(16)?;
                let low = char::from(bytes.next()?).to_digit(16)?;
                decoded.push(u8::try_from(high * 16 + low).ok()?);
            }
            other => decoded.push(other),
        }
    }
    String::from_utf8(decoded).ok()
}

/// The success body of a refresh, shaped like Anthropic's token endpoint answer.
pub(crate) fn token_answer(tokens: &IssuedTokens) -> String {
    json!({
        "token_type": "Bearer",
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_in": tokens.expires_in_secs,
        "scope": "user:inference user:profile",
    })
    .to_string()
}

/// An OAuth error body (`{"error": .., "error_description": ..}`, RFC 6749 §5.2).
pub(crate) fn oauth_error(error: &str, description: &str) -> String {
    json!({"error": error, "error_description": description}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_json_token_requests_parse_alike() {
        let expected = TokenRequest {
            grant_type: Some("refresh_token".to_owned()),
            refresh_token: Some("rt a/b".to_owned()),
            client_id: Some("client-1".to_owned()),
        };
        let form = b"grant_type=refresh_token&refresh_token=rt+a%2Fb&client_id=client-1";
        assert_eq!(
            TokenRequest::parse(Some("application/x-www-form-urlencoded"), form),
            Some(expected)
        );
        let json_body =
            br#"{"grant_type":"refresh_token","refresh_token":"rt a/b","client_id":"client-1"}"#;
        assert_eq!(
            TokenRequest::parse(None, json_body).and_then(|request| request.refresh_token),
            Some("rt a/b".to_owned())
        );
        assert_eq!(
            TokenRequest::parse(None, b"refresh_token=%zz"),
            None,
            "a malformed escape is refused"
        );
    }

    #[test]
    fn a_refresh_token_is_single_use() {
        let mut book = OAuthBook::default();
        let tokens = IssuedTokens {
            access_token: "a2".to_owned(),
            refresh_token: "r2".to_owned(),
            expires_in_secs: 3600,
        };
        book.issue("r1", tokens.clone());
        assert_eq!(book.redeem("r1"), Some(tokens));
        assert_eq!(book.redeem("r1"), None);
        assert_eq!(book.redeem("r2"), None);
    }
}

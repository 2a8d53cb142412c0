//! Accounts, groups and API keys as the rest of the relay sees them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

pub type AccountId = i64;
pub type GroupId = i64;
pub type ApiKeyId = i64;

/// How the relay talks to an account's upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Claude subscription: OAuth bearer token, refreshed before expiry.
    Claude,
    /// Anthropic API key, or any Anthropic-compatible endpoint: `base_url` + `x-api-key`.
    ClaudeConsole,
    /// OpenAI-compatible Chat Completions upstream.
    Openai,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Claude => "claude",
            Platform::ClaudeConsole => "claude_console",
            Platform::Openai => "openai",
        }
    }

    pub fn parse(name: &str) -> Option<Platform> {
        match name {
            "claude" => Some(Platform::Claude),
            "claude_console" => Some(Platform::ClaudeConsole),
            "openai" => Some(Platform::Openai),
            _ => None,
        }
    }
}

/// The default upstream root for accounts that do not name one.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_PRIORITY: i32 = 100;
pub const DEFAULT_WEIGHT: u32 = 100;

/// An upstream account, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub platform: Platform,
    /// Written as a client's `ANTHROPIC_BASE_URL` would be; the relay appends `/v1/messages`.
    pub base_url: String,
    pub group_id: GroupId,
    /// Smaller is preferred.
    pub priority: i32,
    /// Larger gets more traffic.
    pub weight: u32,
    /// False when an operator disabled the account by hand (never probed back).
    pub enabled: bool,
    pub proxy_url: Option<String>,
    /// Empty means every model is allowed.
    pub model_allowlist: Vec<String>,
    /// Client model name -> upstream model name.
    pub model_mapping: BTreeMap<String, String>,
    pub max_concurrency: Option<u32>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Account {
    pub fn allows_model(&self, model: &str) -> bool {
        self.model_allowlist.is_empty() || self.model_allowlist.iter().any(|m| m == model)
    }
}

/// An account's secret. Write-only through the API: never serialised into an answer or a log.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey(String),
    OAuth(OAuthCredential),
}

#[derive(Clone, PartialEq, Eq)]
pub struct OAuthCredential {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: UnixMillis,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ApiKey(_) => f.write_str("Credential::ApiKey(<redacted>)"),
            Credential::OAuth(o) => f
                .debug_struct("Credential::OAuth")
                .field("expires_at", &o.expires_at)
                .finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Debug for OAuthCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthCredential")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A pool of accounts with optional overrides of the fallback configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    /// Per-group overrides, as a JSON object in the shape of `config::FallbackConfigPatch`.
    /// `strategy` given at group creation is stored here too.
    pub fallback: serde_json::Value,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A relay API key: what a client presents. The plain key is shown once; only its hash is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub group_id: GroupId,
    /// Hex SHA-256 of the plain key.
    #[serde(skip_serializing)]
    pub key_hash: String,
    /// The first characters of the key, so operators can tell keys apart.
    pub key_prefix: String,
    pub enabled: bool,
    pub expires_at: Option<UnixMillis>,
    pub model_allowlist: Vec<String>,
    pub daily_cost_limit_usd: Option<f64>,
    pub rpm_limit: Option<u32>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl ApiKey {
    pub fn allows_model(&self, model: &str) -> bool {
        self.model_allowlist.is_empty() || self.model_allowlist.iter().any(|m| m == model)
    }
}

/// Token counts of one attempt, as reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

/// The model family a model belongs to, for prices and per-family rate-limit cooldowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    Opus,
    Sonnet,
    Haiku,
    Other,
}

impl ModelFamily {
    /// The family a model name names, ignoring ASCII case (`claude-Sonnet-4-5` is Sonnet).
    pub fn of(model: &str) -> ModelFamily {
        // Read on every request: compared in place rather than lowercased into a new string.
        let contains = |needle: &[u8]| {
            model
                .as_bytes()
                .windows(needle.len())
                .any(|window| window.eq_ignore_ascii_case(needle))
        };
        if contains(b"opus") {
            ModelFamily::Opus
        } else if contains(b"sonnet") {
            ModelFamily::Sonnet
        } else if contains(b"haiku") {
            ModelFamily::Haiku
        } else {
            ModelFamily::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::Opus => "opus",
            ModelFamily::Sonnet => "sonnet",
            ModelFamily::Haiku => "haiku",
            ModelFamily::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_found_whatever_the_case() {
        for (model, family) in [
            ("claude-opus-4-1-20250805", ModelFamily::Opus),
            ("claude-sonnet-4-5", ModelFamily::Sonnet),
            ("Claude-SONNET-4", ModelFamily::Sonnet),
            ("claude-3-5-haiku-latest", ModelFamily::Haiku),
            ("us.anthropic.claude-Haiku-4-5-v1:0", ModelFamily::Haiku),
            ("gpt-4o", ModelFamily::Other),
            ("", ModelFamily::Other),
            ("sonne", ModelFamily::Other),
            // Opus is looked for first, as before.
            ("opus-or-sonnet", ModelFamily::Opus),
        ] {
            assert_eq!(ModelFamily::of(model), family, "{model}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_same_as_lowercasing_first(model in "(?i)[a-z0-9é.-]{0,6}(opus|sonnet|haiku)?[a-z0-9é.-]{0,6}") {
            let lower = model.to_ascii_lowercase();
            let expected = if lower.contains("opus") {
                ModelFamily::Opus
            } else if lower.contains("sonnet") {
                ModelFamily::Sonnet
            } else if lower.contains("haiku") {
                ModelFamily::Haiku
            } else {
                ModelFamily::Other
            };
            proptest::prop_assert_eq!(ModelFamily::of(&model), expected);
        }
    }
}

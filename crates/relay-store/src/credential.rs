//! The only place where an account's secret meets the database.
//!
//! A credential is stored in plain columns (`credential_kind`, `credential_api_key`,
//! `oauth_access_token`, `oauth_refresh_token`, `oauth_expires_at`). Encryption at rest is a
//! later concern: it belongs in `encode_credential` / `decode_credential`, and nothing else in
//! the crate reads or writes these columns' contents.

use relay_core::model::{Credential, OAuthCredential};
use sqlx::any::AnyRow;

use crate::error::StoreError;
use crate::values::{read_optional_i64, read_optional_text, read_text, SqlValue};

/// The credential columns, in the order `CREDENTIAL_COLUMNS` lists them.
pub(crate) const CREDENTIAL_COLUMNS: [&str; 5] = [
    "credential_kind",
    "credential_api_key",
    "oauth_access_token",
    "oauth_refresh_token",
    "oauth_expires_at",
];

const KIND_API_KEY: &str = "api_key";
const KIND_OAUTH: &str = "oauth";

/// The values to write into `CREDENTIAL_COLUMNS`, in that order. The columns of the other
/// kind are written as NULL so that switching an account from OAuth to an API key leaves no
/// stale secret behind.
pub(crate) fn encode_credential(credential: &Credential) -> [SqlValue; 5] {
    match credential {
        Credential::ApiKey(api_key) => [
            SqlValue::text(KIND_API_KEY),
            SqlValue::text(api_key.clone()),
            SqlValue::Text(None),
            SqlValue::Text(None),
            SqlValue::BigInt(None),
        ],
        Credential::OAuth(oauth) => [
            SqlValue::text(KIND_OAUTH),
            SqlValue::Text(None),
            SqlValue::text(oauth.access_token.clone()),
            SqlValue::text(oauth.refresh_token.clone()),
            SqlValue::big_int(oauth.expires_at),
        ],
    }
}

/// Reads the credential back from a row that selected `CREDENTIAL_COLUMNS`.
pub(crate) fn decode_credential(row: &AnyRow) -> Result<Credential, StoreError> {
    let kind = read_text(row, "credential_kind")?;
    match kind.as_str() {
        KIND_API_KEY => {
            let api_key = read_optional_text(row, "credential_api_key")?.ok_or_else(|| {
                StoreError::Corrupt("an api_key credential has no key stored".into())
            })?;
            Ok(Credential::ApiKey(api_key))
        }
        KIND_OAUTH => {
            let missing = || StoreError::Corrupt("an oauth credential is incomplete".into());
            Ok(Credential::OAuth(OAuthCredential {
                access_token: read_optional_text(row, "oauth_access_token")?.ok_or_else(missing)?,
                refresh_token: read_optional_text(row, "oauth_refresh_token")?
                    .ok_or_else(missing)?,
                expires_at: read_optional_i64(row, "oauth_expires_at")?.ok_or_else(missing)?,
            }))
        }
        other => Err(StoreError::Corrupt(format!(
            "unknown credential kind `{other}`"
        ))),
    }
}

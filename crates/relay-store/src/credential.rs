//! The only place where an account's secret meets the database.
//!
//! A credential is stored in plain columns (`credential_kind`, `credential_api_key`,
//! `oauth_access_token`, `oauth_refresh_token`, `oauth_expires_at`); nothing else in the
//! crate reads or writes these columns' contents.
//!
//! Encryption at rest: with a [`CredentialKey`] (`RELAY_ENCRYPTION_KEY`), every secret is
//! written sealed with AES-256-GCM (ring, the relay's TLS library): `enc:v1:` then the
//! base64 of a random 96-bit nonce, the ciphertext and the tag, with the column's name as
//! associated data, so a sealed value moved to another column does not open. A plain value
//! still reads back (a store written before the key was set); `seal_stored_credentials`
//! seals those. A sealed value without the key, or with another key, is an error that says
//! so: the relay does not start with credentials it cannot read.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use relay_core::model::{Credential, OAuthCredential};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
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

/// The columns that hold secrets (sealed when a key is set).
const SECRET_COLUMNS: [&str; 3] = [
    "credential_api_key",
    "oauth_access_token",
    "oauth_refresh_token",
];

const KIND_API_KEY: &str = "api_key";
const KIND_OAUTH: &str = "oauth";

/// What a sealed value starts with.
const SEALED_PREFIX: &str = "enc:v1:";

/// The key that seals credentials at rest: 32 bytes, given as 64 hexadecimal digits or as
/// base64. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct CredentialKey {
    key: Arc<LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

impl CredentialKey {
    /// Parses a key written as 64 hexadecimal digits or as the base64 of 32 bytes (for
    /// example the output of `openssl rand -hex 32` or `openssl rand -base64 32`). The error
    /// says what is wrong without repeating the key.
    pub fn parse(text: &str) -> Result<CredentialKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| "not hexadecimal".to_owned())?
        } else {
            BASE64.decode(text).map_err(|_| {
                "must be 32 bytes written as 64 hexadecimal digits or in base64".to_owned()
            })?
        };
        if bytes.len() != 32 {
            return Err(format!(
                "must be 32 bytes written as 64 hexadecimal digits or in base64 (got {} bytes)",
                bytes.len()
            ));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| "not a usable AES-256 key".to_owned())?;
        Ok(CredentialKey {
            key: Arc::new(LessSafeKey::new(key)),
            random: SystemRandom::new(),
        })
    }

    /// Seals `secret` for `column`.
    fn seal(&self, column: &str, secret: &str) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| {
            StoreError::Credentials("no randomness for a nonce to seal a credential".into())
        })?;
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(column.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Credentials("a credential could not be sealed".into()))?;
        let mut framed = Vec::with_capacity(NONCE_LEN + sealed.len());
        framed.extend_from_slice(&nonce);
        framed.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", BASE64.encode(framed)))
    }

    /// Opens a value `seal` wrote for `column` (without its prefix).
    fn open(&self, column: &str, encoded: &str) -> Result<String, StoreError> {
        let wrong_key = || {
            StoreError::Credentials(format!(
                "a sealed `{column}` does not open with RELAY_ENCRYPTION_KEY: the key is not \
                 the one it was sealed with, or the value was altered"
            ))
        };
        let mut framed = BASE64.decode(encoded).map_err(|_| wrong_key())?;
        if framed.len() < NONCE_LEN {
            return Err(wrong_key());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&framed[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(column.as_bytes()),
                &mut framed[NONCE_LEN..],
            )
            .map_err(|_| wrong_key())?;
        String::from_utf8(plain.to_vec()).map_err(|_| wrong_key())
    }
}

/// Whether a stored secret is sealed.
fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// Whether a row that selected `CREDENTIAL_COLUMNS` holds a secret in plain text.
pub(crate) fn holds_plain_secret(row: &AnyRow) -> Result<bool, StoreError> {
    for column in SECRET_COLUMNS {
        if read_optional_text(row, column)?.is_some_and(|stored| !is_sealed(&stored)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A secret as stored: sealed when there is a key.
fn stored_secret(
    column: &str,
    secret: &str,
    key: Option<&CredentialKey>,
) -> Result<SqlValue, StoreError> {
    Ok(match key {
        Some(key) => SqlValue::text(key.seal(column, secret)?),
        None => SqlValue::text(secret.to_owned()),
    })
}

/// A secret as read: opened when sealed.
fn read_secret(
    row: &AnyRow,
    column: &str,
    key: Option<&CredentialKey>,
) -> Result<Option<String>, StoreError> {
    let Some(stored) = read_optional_text(row, column)? else {
        return Ok(None);
    };
    let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
        return Ok(Some(stored));
    };
    match key {
        Some(key) => key.open(column, encoded).map(Some),
        None => Err(StoreError::Credentials(format!(
            "`{column}` is sealed and RELAY_ENCRYPTION_KEY is not set"
        ))),
    }
}

/// The values to write into `CREDENTIAL_COLUMNS`, in that order. The columns of the other
/// kind are written as NULL so that switching an account from OAuth to an API key leaves no
/// stale secret behind.
pub(crate) fn encode_credential(
    credential: &Credential,
    key: Option<&CredentialKey>,
) -> Result<[SqlValue; 5], StoreError> {
    Ok(match credential {
        Credential::ApiKey(api_key) => [
            SqlValue::text(KIND_API_KEY),
            stored_secret("credential_api_key", api_key, key)?,
            SqlValue::Text(None),
            SqlValue::Text(None),
            SqlValue::BigInt(None),
        ],
        Credential::OAuth(oauth) => [
            SqlValue::text(KIND_OAUTH),
            SqlValue::Text(None),
            stored_secret("oauth_access_token", &oauth.access_token, key)?,
            stored_secret("oauth_refresh_token", &oauth.refresh_token, key)?,
            SqlValue::big_int(oauth.expires_at),
        ],
    })
}

/// Reads the credential back from a row that selected `CREDENTIAL_COLUMNS`.
pub(crate) fn decode_credential(
    row: &AnyRow,
    key: Option<&CredentialKey>,
) -> Result<Credential, StoreError> {
    let kind = read_text(row, "credential_kind")?;
    match kind.as_str() {
        KIND_API_KEY => {
            let api_key = read_secret(row, "credential_api_key", key)?.ok_or_else(|| {
                StoreError::Corrupt("an api_key credential has no key stored".into())
            })?;
            Ok(Credential::ApiKey(api_key))
        }
        KIND_OAUTH => {
            let missing = || StoreError::Corrupt("an oauth credential is incomplete".into());
            Ok(Credential::OAuth(OAuthCredential {
                access_token: read_secret(row, "oauth_access_token", key)?.ok_or_else(missing)?,
                refresh_token: read_secret(row, "oauth_refresh_token", key)?.ok_or_else(missing)?,
                expires_at: read_optional_i64(row, "oauth_expires_at")?.ok_or_else(missing)?,
            }))
        }
        other => Err(StoreError::Corrupt(format!(
            "unknown credential kind `{other}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn keys_are_read_as_hex_or_base64_and_nothing_else() {
        assert!(CredentialKey::parse(HEX_KEY).is_ok());
        let base64 = BASE64.encode(hex::decode(HEX_KEY).unwrap());
        assert!(CredentialKey::parse(&base64).is_ok());
        let short = CredentialKey::parse(&BASE64.encode([7u8; 16])).unwrap_err();
        assert!(short.contains("got 16 bytes"), "{short}");
        let garbage = CredentialKey::parse("not a key at all!").unwrap_err();
        assert!(garbage.contains("32 bytes"), "{garbage}");
        assert_eq!(
            format!("{:?}", CredentialKey::parse(HEX_KEY).unwrap()),
            "CredentialKey(..)"
        );
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_column() {
        let key = CredentialKey::parse(HEX_KEY).unwrap();
        let sealed = key.seal("credential_api_key", "sk-secret").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("sk-secret"));
        // A fresh nonce every time: the same secret never looks the same twice.
        assert_ne!(sealed, key.seal("credential_api_key", "sk-secret").unwrap());
        let encoded = sealed.strip_prefix(SEALED_PREFIX).unwrap();
        assert_eq!(
            key.open("credential_api_key", encoded).unwrap(),
            "sk-secret"
        );
        assert!(key.open("oauth_access_token", encoded).is_err());
        let other = CredentialKey::parse(&HEX_KEY.replace("00", "ff")).unwrap();
        let error = other.open("credential_api_key", encoded).unwrap_err();
        assert!(
            error.to_string().contains("RELAY_ENCRYPTION_KEY"),
            "{error}"
        );
        let mut altered = BASE64.decode(encoded).unwrap();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key
            .open("credential_api_key", &BASE64.encode(altered))
            .is_err());
    }
}

//! The admin token: from configuration, or generated on first start, printed once and
//! stored only as its hash.

use rand::RngCore;
use relay_store::{SettingsStore, SqlStore, StoreError};
use subtle::ConstantTimeEq;

const SETTING_KEY: &str = "admin_token_sha256";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// Given by `RELAY_ADMIN_TOKEN` (or the config file).
    Configured,
    /// Generated now; the plain token is returned once for printing.
    Generated(String),
    /// Generated on an earlier start; only its hash is known.
    Stored,
}

pub fn sha256_hex(value: &str) -> String {
    relay_proxy::auth::hash_key(value)
}

pub fn matches(expected_hash: &str, presented: &str) -> bool {
    let presented_hash = sha256_hex(presented);
    bool::from(expected_hash.as_bytes().ct_eq(presented_hash.as_bytes()))
}

/// Returns the hash to check admin requests against, generating a token on first start.
pub async fn ensure_admin_token(
    store: &SqlStore,
    configured: Option<&str>,
) -> Result<(String, AdminTokenSource), StoreError> {
    if let Some(token) = configured.filter(|t| !t.is_empty()) {
        return Ok((sha256_hex(token), AdminTokenSource::Configured));
    }
    if let Some(hash) = store.get_setting(SETTING_KEY).await? {
        return Ok((hash, AdminTokenSource::Stored));
    }
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("cra_{}", hex::encode(bytes));
    let hash = sha256_hex(&token);
    store.put_setting(SETTING_KEY, &hash).await?;
    Ok((hash, AdminTokenSource::Generated(token)))
}

//! Client authentication with relay API keys, and the per-key limits.

use std::cell::RefCell;
use std::hash::Hasher;
use std::sync::Arc;

use http::HeaderMap;
use relay_core::model::ApiKey;
use relay_core::{FastMap, UnixMillis};
use relay_store::UsageStore;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};
use subtle::ConstantTimeEq;

use crate::error::RelayError;
use crate::registry::{lock, GroupRuntime, KeyRuntime};
use crate::state::RelayState;

const DAY_MS: i64 = 86_400_000;

/// Hex SHA-256 of a plain key: what the store keeps.
pub fn hash_key(plain: &str) -> String {
    hex::encode(Sha256::digest(plain.as_bytes()))
}

/// How many presented keys each thread remembers the digest of; when full it starts over.
const DIGEST_CACHE_ENTRIES: usize = 4096;

/// The store's digest of keys this thread has already seen, found again by a keyed 128-bit
/// SipHash of the presented key. SHA-256 costs about 9,000 instructions per request on CPUs
/// without SHA extensions, the tag a few hundred. The cache holds no plain key: its entries
/// are tags under this thread's random secret and digests the store already has. A tag maps
/// to the SHA-256 of the very key it was computed from, which never changes, so an entry
/// cannot go stale: whether that digest still names a usable key is asked of the current
/// registry every time. Only keys the registry knew are remembered, so unknown keys cannot
/// fill it.
struct DigestCache {
    secret: (u64, u64),
    digests: FastMap<u128, Box<str>>,
}

impl DigestCache {
    fn new() -> Self {
        DigestCache {
            secret: (rand::random(), rand::random()),
            digests: FastMap::default(),
        }
    }

    fn tag(&self, plain: &str) -> u128 {
        let mut hasher = SipHasher24::new_with_keys(self.secret.0, self.secret.1);
        hasher.write(plain.as_bytes());
        hasher.finish128().as_u128()
    }

    fn remember(&mut self, plain: &str, digest: &str) {
        if self.digests.len() >= DIGEST_CACHE_ENTRIES {
            self.digests.clear();
        }
        self.digests.insert(self.tag(plain), digest.into());
    }
}

thread_local! {
    static DIGESTS: RefCell<DigestCache> = RefCell::new(DigestCache::new());
}

/// The key a client presented: `x-api-key`, else `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if !value.is_empty() {
            return Some(value);
        }
    }
    let authorization = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
        Some(token.trim())
    } else {
        None
    }
}

/// An authenticated client: its key, the key's counters and its group.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub key: Arc<ApiKey>,
    pub limits: Arc<KeyRuntime>,
    pub group: Arc<GroupRuntime>,
}

/// Authenticates a request from its headers.
pub async fn authenticate(
    state: &RelayState,
    headers: &HeaderMap,
    now: UnixMillis,
) -> Result<ClientIdentity, RelayError> {
    let Some(plain) = presented_key(headers) else {
        return Err(RelayError::Authentication(
            "missing API key: send it in the x-api-key header or as Authorization: Bearer"
                .to_owned(),
        ));
    };
    let mut found = DIGESTS.with(|cache| {
        let cache = cache.borrow();
        cache
            .digests
            .get(&cache.tag(plain))
            .and_then(|digest| lookup(state, digest))
    });
    if found.is_none() {
        let hash = hash_key(plain);
        found = lookup(state, &hash);
        if found.is_none() {
            // Another instance (or a direct store change) may have created the key since the
            // last rebuild: ask the store before refusing.
            if state.store_has_key(&hash).await? {
                state.reload().await?;
                found = lookup(state, &hash);
            }
        }
        if found.is_some() {
            // Tagged again here: after the store lookup this may be another thread, whose
            // cache has its own secret.
            DIGESTS.with(|cache| cache.borrow_mut().remember(plain, &hash));
        }
    }
    let Some((key, limits)) = found else {
        return Err(RelayError::Authentication("invalid x-api-key".to_owned()));
    };
    if !key.enabled {
        return Err(RelayError::Permission(
            "this API key is disabled".to_owned(),
        ));
    }
    if key.expires_at.is_some_and(|expires| expires <= now) {
        return Err(RelayError::Permission(
            "this API key has expired".to_owned(),
        ));
    }
    let snapshot = state.registry.load();
    let Some(group) = snapshot.groups.get(&key.group_id).cloned() else {
        return Err(RelayError::Permission(
            "this API key's group no longer exists".to_owned(),
        ));
    };
    Ok(ClientIdentity { key, limits, group })
}

fn lookup(state: &RelayState, hash: &str) -> Option<(Arc<ApiKey>, Arc<KeyRuntime>)> {
    let snapshot = state.registry.load();
    let key = snapshot.keys_by_hash.get(hash)?;
    // The map lookup found it by hash; compare once more in constant time so the final
    // decision does not depend on where two hashes first differ.
    if !bool::from(key.key_hash.as_bytes().ct_eq(hash.as_bytes())) {
        return None;
    }
    let limits = snapshot
        .key_runtime
        .get(&key.id)
        .cloned()
        .unwrap_or_default();
    Some((Arc::clone(key), limits))
}

/// Checks the key's model allowlist.
pub fn check_model(identity: &ClientIdentity, model: Option<&str>) -> Result<(), RelayError> {
    if identity.key.model_allowlist.is_empty() {
        return Ok(());
    }
    match model {
        Some(model) if identity.key.allows_model(model) => Ok(()),
        Some(model) => Err(RelayError::Permission(format!(
            "this API key may not use model {model}"
        ))),
        None => Err(RelayError::Permission(
            "this API key is restricted to some models and the request names none".to_owned(),
        )),
    }
}

/// Enforces `rpm_limit` and `daily_cost_limit_usd`, counting this request.
pub async fn check_limits(
    state: &RelayState,
    identity: &ClientIdentity,
    now: UnixMillis,
) -> Result<(), RelayError> {
    let key = &identity.key;
    if let Some(rpm) = key.rpm_limit {
        let admitted = lock(&identity.limits.limits).admit_request(now, rpm);
        if let Err(wait_ms) = admitted {
            return Err(RelayError::RateLimited {
                message: format!("this API key's limit of {rpm} requests per minute is reached"),
                retry_after_secs: Some(secs_ceil(wait_ms)),
            });
        }
        state.shared().key_used(key.id, 0.0, 1, now);
    }
    if let Some(limit) = key.daily_cost_limit_usd {
        let day = now.div_euclid(DAY_MS);
        let seeded = {
            let limits = lock(&identity.limits.limits);
            limits.cost_day == day && limits.cost_seeded
        };
        if !seeded {
            // First request of the day on this instance: start from what the store recorded.
            let spent = state.store.api_key_cost_since(key.id, day * DAY_MS).await?;
            let mut limits = lock(&identity.limits.limits);
            if !(limits.cost_day == day && limits.cost_seeded) {
                // Costs added in memory before the seed may not be in the store yet.
                let in_memory = if limits.cost_day == day {
                    limits.cost_today_usd
                } else {
                    0.0
                };
                limits.cost_day = day;
                limits.cost_seeded = true;
                limits.cost_today_usd = spent.max(in_memory);
            }
        }
        let spent = lock(&identity.limits.limits).cost_today_usd;
        if spent >= limit {
            let wait_ms = (day + 1) * DAY_MS - now;
            return Err(RelayError::RateLimited {
                message: format!(
                    "this API key's daily cost limit of ${limit:.2} is reached (spent ${spent:.4} today, UTC)"
                ),
                retry_after_secs: Some(secs_ceil(wait_ms)),
            });
        }
    }
    Ok(())
}

/// Adds the cost of a finished attempt to the key's running daily total.
pub fn add_cost(limits: &KeyRuntime, now: UnixMillis, cost_usd: f64) {
    if cost_usd <= 0.0 {
        return;
    }
    let day = now.div_euclid(DAY_MS);
    let mut limits = lock(&limits.limits);
    if limits.cost_day != day {
        // A new day; the next limit check seeds it from the store.
        limits.cost_day = day;
        limits.cost_seeded = false;
        limits.cost_today_usd = 0.0;
    }
    limits.cost_today_usd += cost_usd;
}

fn secs_ceil(ms: i64) -> u64 {
    u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1)
}

impl RelayState {
    async fn store_has_key(&self, hash: &str) -> Result<bool, RelayError> {
        use relay_store::ApiKeyStore;
        Ok(self.store.find_api_key_by_hash(hash).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_stable_per_thread_secret_and_differs_between_keys() {
        let cache = DigestCache::new();
        assert_eq!(cache.tag("sk-relay-a"), cache.tag("sk-relay-a"));
        assert_ne!(cache.tag("sk-relay-a"), cache.tag("sk-relay-b"));
        assert_ne!(cache.tag("sk-relay-a"), cache.tag("sk-relay-a "));
        // Another secret, another tag: tags are not a hash anyone can compute offline.
        assert_ne!(
            DigestCache::new().tag("sk-relay-a"),
            cache.tag("sk-relay-a")
        );
    }

    #[test]
    fn the_cache_is_bounded_and_remembers_the_store_digest() {
        let mut cache = DigestCache::new();
        for n in 0..DIGEST_CACHE_ENTRIES + 10 {
            let plain = format!("sk-relay-{n}");
            cache.remember(&plain, &hash_key(&plain));
            assert!(cache.digests.len() <= DIGEST_CACHE_ENTRIES);
        }
        let last = format!("sk-relay-{}", DIGEST_CACHE_ENTRIES + 9);
        assert_eq!(
            cache.digests.get(&cache.tag(&last)).map(|d| &**d),
            Some(hash_key(&last).as_str())
        );
    }
}

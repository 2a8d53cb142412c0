//! The shared state of a running relay: store, registry, config, clients, usage recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use relay_core::config::FallbackConfig;
use relay_core::metrics::MetricsRegistry;
use relay_core::model::AccountId;
use relay_core::state::{AccountState, PersistedAccountState};
use relay_core::strategy::StrategyRegistry;
use relay_core::UnixMillis;
use relay_store::{AccountStore, ApiKeyStore, GroupStore, SettingsStore, SqlStore, StoreError};

use crate::clock::Clock;
use crate::http_clients::HttpClients;
use crate::registry::{lock, Registry, RegistrySource};
use crate::settings::RelaySettings;
use crate::shared::{LocalOnly, SharedState};
use crate::usage::UsageRecorder;

/// The settings key holding each account's persisted fallback state (disables, cooldowns,
/// breaker phase), so a restart does not forget an operator's disable or a known cooldown.
const ACCOUNT_STATES_SETTING: &str = "account_states";

/// The settings key holding the fallback config changes made through the admin API (a
/// `FallbackConfigPatch`, merged over every PUT).
pub const FALLBACK_CONFIG_SETTING: &str = "fallback_config_patch";

/// How long metrics are kept (PRODUCT.md §5.5: 24 hours).
const METRICS_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// How long an idle sticky-session binding is kept.
const STICKY_TTL_MS: i64 = 60 * 60 * 1000;
/// Bound on the number of sticky bindings kept in memory.
const STICKY_MAX_ENTRIES: usize = 200_000;

#[derive(Debug)]
pub struct RelayState {
    pub store: SqlStore,
    pub settings: RelaySettings,
    pub registry: Registry,
    pub strategies: StrategyRegistry,
    global_config: ArcSwap<FallbackConfig>,
    pub clients: HttpClients,
    pub usage: UsageRecorder,
    pub sticky: StickySessions,
    pub clock: Arc<dyn Clock>,
    /// Per-account and per-group figures in bounded memory (PRODUCT.md §5.5).
    pub metrics: Mutex<MetricsRegistry>,
    /// The cluster adapter, when `REDIS_URL` is set (see `shared`).
    pub(crate) shared: std::sync::OnceLock<Arc<dyn SharedState>>,
    pub(crate) local_only: Arc<dyn SharedState>,
    /// The fallback config as configured (file and environment), before the changes made
    /// through the admin API; those are re-applied on top when another instance changes them.
    base_config: ArcSwap<FallbackConfig>,
    /// The `health_check_interval` in force, published whenever it changes (by the admin API
    /// here or, in cluster mode, on another instance): the probe loop restarts its timer.
    health_check_interval: tokio::sync::watch::Sender<std::time::Duration>,
}

impl RelayState {
    /// Builds the state and loads the registry from the store. Upstream connections verify
    /// servers with `tls` (see [`crate::http_clients::tls_config`]); time is read from `clock`
    /// (tests and simulations run in virtual time).
    pub async fn with_clock(
        store: SqlStore,
        settings: RelaySettings,
        global_config: FallbackConfig,
        strategies: StrategyRegistry,
        usage: UsageRecorder,
        tls: Arc<rustls::ClientConfig>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<RelayState>, StoreError> {
        let clients = HttpClients::new(settings.connect_timeout, tls);
        let base_config = global_config.clone();
        let (health_check_interval, _) =
            tokio::sync::watch::channel(global_config.health_check_interval);
        let state = Arc::new(RelayState {
            store,
            settings,
            registry: Registry::default(),
            strategies,
            global_config: ArcSwap::from_pointee(global_config),
            clients,
            usage,
            sticky: StickySessions::default(),
            shared: std::sync::OnceLock::new(),
            local_only: Arc::new(LocalOnly),
            base_config: ArcSwap::from_pointee(base_config),
            health_check_interval,
            metrics: Mutex::new(
                MetricsRegistry::new(METRICS_RETENTION_MS).with_start(clock.now_millis()),
            ),
            clock,
        });
        state.reload().await?;
        state.restore_account_states().await?;
        Ok(state)
    }

    async fn restore_account_states(&self) -> Result<(), StoreError> {
        let Some(text) = self.store.get_setting(ACCOUNT_STATES_SETTING).await? else {
            return Ok(());
        };
        let saved: HashMap<AccountId, PersistedAccountState> = match serde_json::from_str(&text) {
            Ok(saved) => saved,
            Err(error) => {
                tracing::error!(%error, "saved account states are unreadable; starting fresh");
                return Ok(());
            }
        };
        let now = self.now();
        let snapshot = self.registry.load();
        for (id, persisted) in saved {
            let Some(runtime) = snapshot.accounts.get(&id) else {
                continue;
            };
            let group_id = runtime.account().group_id;
            let config = snapshot
                .groups
                .get(&group_id)
                .map(|g| Arc::clone(&g.config))
                .unwrap_or_else(|| self.global_config());
            runtime.update_state(now, |state| {
                *state = AccountState::restore(&config, &persisted, now)
            });
        }
        Ok(())
    }

    /// Saves every account's disables, cooldowns and breaker phase to the store.
    pub async fn save_account_states(&self) -> Result<(), StoreError> {
        let now = self.now();
        let snapshot = self.registry.load_full();
        let mut saved: HashMap<AccountId, PersistedAccountState> = HashMap::new();
        for (id, runtime) in &snapshot.accounts {
            let persisted = runtime.read_state(|state| state.persisted(now));
            if persisted != PersistedAccountState::default() {
                saved.insert(*id, persisted);
            }
        }
        let text = serde_json::to_string(&saved).unwrap_or_else(|_| "{}".to_owned());
        self.store.put_setting(ACCOUNT_STATES_SETTING, &text).await
    }

    /// The current time, from the injected clock.
    pub fn now(&self) -> UnixMillis {
        self.clock.now_millis()
    }

    pub fn global_config(&self) -> Arc<FallbackConfig> {
        self.global_config.load_full()
    }

    /// Replaces the global fallback config and applies it to every group at once: the new
    /// snapshot is published in one swap, so no request sees half of it.
    pub async fn set_global_config(&self, config: FallbackConfig) -> Result<(), StoreError> {
        let interval = config.health_check_interval;
        self.global_config.store(Arc::new(config));
        self.health_check_interval.send_if_modified(|current| {
            let changed = *current != interval;
            *current = interval;
            changed
        });
        self.reload().await
    }

    /// The `health_check_interval` in force, marked changed whenever a config change (from
    /// any instance) gives it a new value.
    pub fn health_check_interval(&self) -> tokio::sync::watch::Receiver<std::time::Duration> {
        self.health_check_interval.subscribe()
    }

    /// Records the configured fallback config (before admin changes), for `reload_fallback_config`.
    pub fn set_base_config(&self, config: FallbackConfig) {
        self.base_config.store(Arc::new(config));
    }

    /// Re-reads the fallback config changes saved through the admin API (by any instance)
    /// and applies them on top of the configured config.
    pub async fn reload_fallback_config(&self) -> Result<(), StoreError> {
        let base = self.base_config.load_full();
        let config = match self.store.get_setting(FALLBACK_CONFIG_SETTING).await? {
            None => base.as_ref().clone(),
            Some(text) => {
                let strategies = &self.strategies;
                match serde_json::from_str::<relay_core::config::FallbackConfigPatch>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|patch| {
                        base.apply_patch(&patch, &|name| strategies.contains(name))
                            .map_err(|e| e.to_string())
                    }) {
                    Ok(config) => config,
                    Err(error) => {
                        tracing::error!(%error, "saved fallback config changes are invalid; ignored");
                        base.as_ref().clone()
                    }
                }
            }
        };
        self.set_global_config(config).await
    }

    /// Re-reads groups, accounts and keys from the store and publishes a new snapshot.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let groups = self.store.list_groups().await?;
        let accounts = self.store.list_accounts_with_credentials().await?;
        let keys = self.store.list_api_keys(None).await?;
        let config = self.global_config();
        self.registry.rebuild(
            RegistrySource {
                groups,
                accounts,
                keys,
            },
            &config,
            &self.strategies,
        );
        Ok(())
    }
}

/// Sticky-session bindings: session key -> account, so one Claude Code conversation keeps
/// the same account (and Anthropic's prompt cache) while that account is usable.
#[derive(Debug, Default)]
pub struct StickySessions {
    bindings: Mutex<HashMap<String, (AccountId, UnixMillis)>>,
}

impl StickySessions {
    pub fn get(&self, key: &str, now: UnixMillis) -> Option<AccountId> {
        let bindings = lock(&self.bindings);
        bindings
            .get(key)
            .filter(|(_, seen)| now - seen < STICKY_TTL_MS)
            .map(|(account, _)| *account)
    }

    /// Binds a session to an account; true when the binding is new or moved.
    pub fn bind(&self, key: &str, account: AccountId, now: UnixMillis) -> bool {
        let mut bindings = lock(&self.bindings);
        if bindings.len() >= STICKY_MAX_ENTRIES && !bindings.contains_key(key) {
            bindings.retain(|_, (_, seen)| now - *seen < STICKY_TTL_MS);
            if bindings.len() >= STICKY_MAX_ENTRIES {
                // Still full of live sessions: forget the oldest tenth rather than grow.
                let mut ages: Vec<UnixMillis> = bindings.values().map(|(_, seen)| *seen).collect();
                ages.sort_unstable();
                let cutoff = ages[ages.len() / 10];
                bindings.retain(|_, (_, seen)| *seen > cutoff);
            }
        }
        bindings
            .insert(key.to_owned(), (account, now))
            .is_none_or(|(previous, _)| previous != account)
    }

    pub fn len(&self) -> usize {
        lock(&self.bindings).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

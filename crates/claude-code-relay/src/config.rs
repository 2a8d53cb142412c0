//! Process configuration: defaults, then the TOML file (`RELAY_CONFIG`), then the
//! environment, then command-line flags. Two stages: raw structs that refuse unknown fields,
//! then a validated `ServerConfig`. The relay never starts half-configured.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::config::{EnvSource, FallbackConfig, FallbackConfigPatch, BUILTIN_STRATEGIES};
use relay_core::duration::parse_duration;
use relay_core::pricing::{ModelPrice, PriceTable};
use relay_proxy::logs::LogLang;
use relay_proxy::RelaySettings;
use relay_store::CredentialKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read the config file {path}: {message}")]
    File { path: String, message: String },
}

/// The TOML file, as written. Every field optional; unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfigFile {
    /// Address to listen on, e.g. "0.0.0.0:8080".
    pub listen: Option<String>,
    /// sqlite://PATH (default ./data/relay.db), later mysql:// or postgres://.
    pub database_url: Option<String>,
    /// Shared state for several instances (cluster mode).
    pub redis_url: Option<String>,
    /// The admin token; generated on first start when absent.
    pub admin_token: Option<String>,
    /// Seals account secrets at rest: 32 bytes as 64 hex digits or base64.
    pub encryption_key: Option<String>,
    /// "zh" (default) or "en".
    pub log_lang: Option<String>,
    /// "text" (default) or "json".
    pub log_format: Option<String>,
    /// Largest request body in bytes (default 33554432 = 32 MiB).
    pub body_limit_bytes: Option<usize>,
    /// Grace period for in-flight requests on shutdown (default "10s").
    pub shutdown_grace: Option<String>,
    /// Serving threads (`RELAY_WORKERS`); one per CPU when unset.
    pub workers: Option<usize>,
    /// Upstream connect timeout (default "10s").
    pub connect_timeout: Option<String>,
    /// Longest silence between two chunks of an upstream answer (default "5m").
    pub idle_timeout: Option<String>,
    /// How long a client connection may go without sending a whole request head, counted
    /// from the previous answer or the connection's start (default "75s").
    pub client_header_timeout: Option<String>,
    /// Longest pause between two reads of a request body (default "60s").
    pub client_body_timeout: Option<String>,
    /// Cooldown after a 429 without reset headers (default "60s").
    pub default_rate_limit_cooldown: Option<String>,
    /// Model used by recovery probes and account tests (default "claude-haiku-4-5").
    pub probe_model: Option<String>,
    /// A PEM file of certificate authorities trusted besides the webpki roots.
    pub ca_certs: Option<String>,
    pub oauth: Option<RawOAuth>,
    /// The seed's fallback settings (the FALLBACK_* variables override them).
    pub fallback: Option<FallbackConfigPatch>,
    /// Price overrides in USD per million tokens, by model name or prefix.
    pub prices: Option<BTreeMap<String, ModelPrice>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    pub token_url: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `claude-code-relay serve` (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub config_path: Option<PathBuf>,
    pub admin_token: Option<String>,
}

/// The validated configuration of one relay process.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub admin_token: Option<String>,
    /// Seals account secrets at rest (`RELAY_ENCRYPTION_KEY`); `None`: stored in plain text.
    pub encryption_key: Option<CredentialKey>,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// Serving threads; `None`: one per CPU.
    pub workers: Option<NonZeroUsize>,
    pub relay: RelaySettings,
    pub fallback: FallbackConfig,
    pub config_path: Option<PathBuf>,
}

fn duration_setting(name: &str, raw: &str) -> Result<Duration, ConfigError> {
    parse_duration(raw).map_err(|e| ConfigError::Invalid(format!("{name}={raw}: {e}")))
}

/// The certificates of a PEM file, each checked to be usable as a trusted root.
fn read_root_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file of certificates: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    relay_proxy::http_clients::tls_config(&certificates).map_err(|e| e.to_string())?;
    Ok(certificates)
}

fn read_file(path: &Path) -> Result<RawConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl ServerConfig {
    /// Loads and validates the configuration.
    pub fn load(env: &dyn EnvSource, overrides: &Overrides) -> Result<ServerConfig, ConfigError> {
        let config_path = overrides.config_path.clone().or_else(|| {
            env.get("RELAY_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let file = match &config_path {
            Some(path) => read_file(path)?,
            None => RawConfigFile::default(),
        };
        let pick = |flag: &Option<String>, var: &str, file_value: &Option<String>| {
            flag.clone()
                .or_else(|| env.get(var).filter(|v| !v.is_empty()))
                .or_else(|| file_value.clone())
        };

        let listen_raw = pick(&overrides.listen, "RELAY_LISTEN", &file.listen)
            .unwrap_or_else(|| "0.0.0.0:8080".to_owned());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "RELAY_LISTEN={listen_raw}: must be an address like 0.0.0.0:8080"
            ))
        })?;
        let database_url = pick(&overrides.database_url, "DATABASE_URL", &file.database_url);
        if let Some(url) = &database_url {
            let supported = ["sqlite:", "mysql:", "mariadb:", "postgres:", "postgresql:"];
            if !supported.iter().any(|s| url.starts_with(s)) {
                return Err(ConfigError::Invalid(format!(
                    "DATABASE_URL: must start with sqlite://, mysql:// or postgres:// (got {})",
                    url.split(':').next().unwrap_or("")
                )));
            }
        }
        let redis_url = pick(&None, "REDIS_URL", &file.redis_url);
        let admin_token = pick(
            &overrides.admin_token,
            "RELAY_ADMIN_TOKEN",
            &file.admin_token,
        );

        let encryption_key = pick(&None, "RELAY_ENCRYPTION_KEY", &file.encryption_key)
            .map(|text| {
                CredentialKey::parse(&text)
                    .map_err(|e| ConfigError::Invalid(format!("RELAY_ENCRYPTION_KEY: {e}")))
            })
            .transpose()?;

        let lang_raw =
            pick(&None, "RELAY_LOG_LANG", &file.log_lang).unwrap_or_else(|| "zh".to_owned());
        let log_lang = LogLang::parse(&lang_raw).ok_or_else(|| {
            ConfigError::Invalid(format!("RELAY_LOG_LANG={lang_raw}: must be zh or en"))
        })?;
        let format_raw =
            pick(&None, "RELAY_LOG_FORMAT", &file.log_format).unwrap_or_else(|| "text".to_owned());
        let log_format = match format_raw.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "RELAY_LOG_FORMAT={other}: must be text or json"
                )))
            }
        };

        let mut relay = RelaySettings {
            log_lang,
            ..RelaySettings::default()
        };
        if let Some(raw) = pick(
            &None,
            "RELAY_BODY_LIMIT_BYTES",
            &file.body_limit_bytes.map(|b| b.to_string()),
        ) {
            relay.body_limit_bytes = raw
                .parse::<usize>()
                .ok()
                .filter(|b| (1024..=1024 * 1024 * 1024).contains(b))
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "RELAY_BODY_LIMIT_BYTES={raw}: must be a byte count between 1024 and 1073741824"
                    ))
                })?;
        }
        if let Some(raw) = pick(&None, "RELAY_CONNECT_TIMEOUT", &file.connect_timeout) {
            relay.connect_timeout = duration_setting("RELAY_CONNECT_TIMEOUT", &raw)?;
        }
        if let Some(raw) = pick(&None, "RELAY_IDLE_TIMEOUT", &file.idle_timeout) {
            relay.idle_timeout = duration_setting("RELAY_IDLE_TIMEOUT", &raw)?;
        }
        if relay.idle_timeout.is_zero() || relay.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "RELAY_CONNECT_TIMEOUT and RELAY_IDLE_TIMEOUT must be longer than 0s".to_owned(),
            ));
        }
        if let Some(raw) = pick(
            &None,
            "RELAY_CLIENT_HEADER_TIMEOUT",
            &file.client_header_timeout,
        ) {
            relay.client_header_timeout = duration_setting("RELAY_CLIENT_HEADER_TIMEOUT", &raw)?;
        }
        if let Some(raw) = pick(
            &None,
            "RELAY_CLIENT_BODY_TIMEOUT",
            &file.client_body_timeout,
        ) {
            relay.client_body_timeout = duration_setting("RELAY_CLIENT_BODY_TIMEOUT", &raw)?;
        }
        if relay.client_header_timeout.is_zero() || relay.client_body_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "RELAY_CLIENT_HEADER_TIMEOUT and RELAY_CLIENT_BODY_TIMEOUT must be longer than 0s"
                    .to_owned(),
            ));
        }
        if let Some(raw) = pick(
            &None,
            "RELAY_DEFAULT_RATE_LIMIT_COOLDOWN",
            &file.default_rate_limit_cooldown,
        ) {
            relay.default_rate_limit_cooldown =
                duration_setting("RELAY_DEFAULT_RATE_LIMIT_COOLDOWN", &raw)?;
        }
        if let Some(model) = pick(&None, "RELAY_PROBE_MODEL", &file.probe_model) {
            relay.probe_model = model;
        }
        if let Some(path) = pick(&None, "RELAY_CA_CERTS", &file.ca_certs) {
            relay.extra_root_certificates = read_root_certificates(Path::new(&path))
                .map_err(|e| ConfigError::Invalid(format!("RELAY_CA_CERTS={path}: {e}")))?;
        }
        let oauth = file.oauth.unwrap_or_default();
        if let Some(url) = pick(&None, "RELAY_OAUTH_TOKEN_URL", &oauth.token_url) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "RELAY_OAUTH_TOKEN_URL={url}: must be an http(s) URL"
                )));
            }
            relay.oauth_token_url = url;
        }
        if let Some(id) = pick(&None, "RELAY_OAUTH_CLIENT_ID", &oauth.client_id) {
            relay.oauth_client_id = id;
        }
        if let Some(prices) = file.prices {
            relay.prices = PriceTable::with_overrides(prices);
        }
        let shutdown_grace = match pick(&None, "RELAY_SHUTDOWN_GRACE", &file.shutdown_grace) {
            Some(raw) => duration_setting("RELAY_SHUTDOWN_GRACE", &raw)?,
            None => Duration::from_secs(10),
        };

        let workers = match pick(&None, "RELAY_WORKERS", &file.workers.map(|w| w.to_string())) {
            Some(raw) => Some(
                raw.parse::<NonZeroUsize>()
                    .ok()
                    .filter(|w| w.get() <= 1024)
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "RELAY_WORKERS={raw}: must be a thread count between 1 and 1024"
                        ))
                    })?,
            ),
            None => None,
        };

        let is_known = |name: &str| BUILTIN_STRATEGIES.contains(&name);
        let mut fallback = FallbackConfig::default();
        if let Some(patch) = &file.fallback {
            fallback = fallback
                .apply_patch(patch, &is_known)
                .map_err(|e| ConfigError::Invalid(format!("[fallback] {}", e.for_field())))?;
        }
        let fallback = FallbackConfig::overlay_env(fallback, env, &is_known)
            .map_err(|e| ConfigError::Invalid(e.for_env()))?;

        Ok(ServerConfig {
            listen,
            database_url,
            redis_url,
            admin_token,
            encryption_key,
            log_format,
            shutdown_grace,
            workers,
            relay,
            fallback,
            config_path,
        })
    }
}

//! Process-level settings of the data plane (not the hot-reloadable fallback config).

use std::time::Duration;

use relay_core::pricing::PriceTable;

use crate::logs::LogLang;

/// The Claude Code OAuth client id, used to refresh subscription tokens.
pub const DEFAULT_OAUTH_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// Where subscription refresh tokens are exchanged (moved from console.anthropic.com in 2026).
pub const DEFAULT_OAUTH_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Largest request body accepted; larger ones get 413 `request_too_large`.
    pub body_limit_bytes: usize,
    /// TCP (and TLS) connect timeout towards an upstream.
    pub connect_timeout: Duration,
    /// Longest silence allowed between two chunks of an upstream answer once it has started.
    pub idle_timeout: Duration,
    /// How long a client connection may go without sending a whole request head (from the
    /// previous answer, or from its start) before it is closed.
    pub client_header_timeout: Duration,
    /// Longest pause between two reads of a request body before it is answered 408.
    pub client_body_timeout: Duration,
    /// The `claude` platform's token endpoint.
    pub oauth_token_url: String,
    pub oauth_client_id: String,
    /// Refresh OAuth tokens this long before they expire.
    pub oauth_refresh_margin: Duration,
    /// Model of the minimal request sent by recovery probes and account tests.
    pub probe_model: String,
    /// Cooldown after a 429 that names no reset time.
    pub default_rate_limit_cooldown: Duration,
    /// How often buffered usage rows are written to the store.
    pub usage_flush_interval: Duration,
    pub log_lang: LogLang,
    pub prices: PriceTable,
    /// Certificate authorities trusted besides the webpki roots for upstreams and proxies
    /// (`RELAY_CA_CERTS`: a private gateway's CA, a company's TLS inspection).
    pub extra_root_certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl RelaySettings {
    /// What the HTTP server allows each client connection.
    pub fn client_limits(&self) -> crate::h1::server::Limits {
        crate::h1::server::Limits {
            body_bytes: self.body_limit_bytes,
            head_timeout: self.client_header_timeout,
            body_timeout: self.client_body_timeout,
        }
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            body_limit_bytes: 32 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            client_header_timeout: crate::h1::server::DEFAULT_HEAD_TIMEOUT,
            client_body_timeout: crate::h1::server::DEFAULT_BODY_TIMEOUT,
            oauth_token_url: DEFAULT_OAUTH_TOKEN_URL.to_owned(),
            oauth_client_id: DEFAULT_OAUTH_CLIENT_ID.to_owned(),
            oauth_refresh_margin: Duration::from_secs(60),
            probe_model: "claude-haiku-4-5".to_owned(),
            default_rate_limit_cooldown: Duration::from_secs(60),
            usage_flush_interval: Duration::from_millis(500),
            log_lang: LogLang::Zh,
            prices: PriceTable::default(),
            extra_root_certificates: Vec::new(),
        }
    }
}

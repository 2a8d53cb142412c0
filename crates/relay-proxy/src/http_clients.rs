//! Pooled upstream HTTP clients: one per distinct proxy, built once and reused, so
//! connections to the upstream stay warm across requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::registry::lock;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid proxy_url: {0}")]
    InvalidProxy(String),
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

#[derive(Debug)]
pub struct HttpClients {
    connect_timeout: Duration,
    direct: Mutex<Option<reqwest::Client>>,
    by_proxy: Mutex<HashMap<String, reqwest::Client>>,
}

impl HttpClients {
    pub fn new(connect_timeout: Duration) -> Self {
        HttpClients {
            connect_timeout,
            direct: Mutex::new(None),
            by_proxy: Mutex::new(HashMap::new()),
        }
    }

    fn builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            // The relay passes answers through untouched: no transparent decompression, no
            // redirects followed on the client's behalf.
            .redirect(reqwest::redirect::Policy::none())
    }

    /// The client for an account: direct, or through its HTTP/HTTPS/SOCKS5 proxy.
    pub fn client_for(&self, proxy_url: Option<&str>) -> Result<reqwest::Client, ClientError> {
        match proxy_url.filter(|p| !p.is_empty()) {
            None => {
                let mut direct = lock(&self.direct);
                if let Some(client) = direct.as_ref() {
                    return Ok(client.clone());
                }
                let client = self
                    .builder()
                    .build()
                    .map_err(|e| ClientError::Build(e.to_string()))?;
                *direct = Some(client.clone());
                Ok(client)
            }
            Some(proxy_url) => {
                let mut by_proxy = lock(&self.by_proxy);
                if let Some(client) = by_proxy.get(proxy_url) {
                    return Ok(client.clone());
                }
                let proxy = reqwest::Proxy::all(proxy_url)
                    .map_err(|e| ClientError::InvalidProxy(e.to_string()))?;
                let client = self
                    .builder()
                    .proxy(proxy)
                    .build()
                    .map_err(|e| ClientError::Build(e.to_string()))?;
                by_proxy.insert(proxy_url.to_owned(), client.clone());
                Ok(client)
            }
        }
    }
}

/// Checks a proxy URL the way the client would use it (for the admin API's validation).
pub fn validate_proxy_url(proxy_url: &str) -> Result<(), ClientError> {
    let scheme_ok = ["http://", "https://", "socks5://", "socks5h://"]
        .iter()
        .any(|s| proxy_url.starts_with(s));
    if !scheme_ok {
        return Err(ClientError::InvalidProxy(
            "must start with http://, https://, socks5:// or socks5h://".to_owned(),
        ));
    }
    reqwest::Proxy::all(proxy_url)
        .map(|_| ())
        .map_err(|e| ClientError::InvalidProxy(e.to_string()))
}

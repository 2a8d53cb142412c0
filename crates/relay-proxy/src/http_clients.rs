//! Pooled upstream HTTP clients: one per distinct proxy, built once and reused, so
//! connections to the upstream stay warm across requests.
//!
//! HTTP/1.1 connections ([`crate::h1`]) under a pool of our own: the relay sends requests it
//! has already built (headers filtered, credential set, body as received) and passes answers
//! through untouched, so it needs a connection pool, TLS and proxies, and nothing else (no
//! redirects, no decompression, no URL re-parsing). The pool is a list per origin of idle
//! connections, each thread's own (see [`enter_worker`]): a request takes the newest one
//! that is still open, or connects; its connection goes back when the answer's body has been
//! read to its end (a body dropped before its end takes its connection with it). A request
//! that a pooled connection failed before a byte of an answer came (the upstream closed it
//! while it was idle) is sent again on another. No task watches a connection: the request holding it
//! reads and writes it, and an idle one is checked for a close the reactor has seen when it
//! is taken. (hyper-util's pooled client ran a task per request to watch the connection come
//! back and hashed the origin on every checkout; hyper's own connections under this pool ran
//! a task each, with a channel to the request.) Proxies, per account:
//! - `http://` / `https://` proxy, plain-HTTP upstream: requests go to the proxy in absolute
//!   form, with `Proxy-Authorization` when the proxy URL carries credentials;
//! - `http://` / `https://` proxy, HTTPS upstream: a `CONNECT` tunnel, then TLS end to end;
//! - `socks5://` (names resolved locally) and `socks5h://` (resolved by the proxy).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::h1;
use crate::registry::lock;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request body upstream is: always complete before it is sent.
#[derive(Debug, Clone, Default)]
pub struct UpstreamBody(Bytes);

impl UpstreamBody {
    pub fn new(bytes: Bytes) -> Self {
        UpstreamBody(bytes)
    }
}

/// The transport of an upstream connection: TCP, possibly through a proxy, possibly TLS.
/// Boxed: a TLS session is kilobytes, and a connection moves with the request's future.
type Transport = Box<TokioIo<MaybeHttpsStream<RouteStream>>>;
type Conn = h1::Conn<Transport>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid proxy_url: {0}")]
    InvalidProxy(String),
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

thread_local! {
    /// The serving worker this thread is (see `enter_worker`); 0 on any other thread.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as serving worker `index` (1, 2, ...): it gets upstream clients
/// of its own, so the connections a worker uses are driven by that worker's runtime and no
/// request waits on another thread's scheduler to reach its upstream.
pub fn enter_worker(index: usize) {
    WORKER.with(|worker| worker.set(index));
}

/// Pools of upstream connections, one per route (direct or a given proxy) and per serving
/// worker.
#[derive(Debug)]
pub struct HttpClients {
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    direct: Mutex<Vec<Option<Arc<UpstreamClient>>>>,
    by_proxy: Mutex<HashMap<String, Vec<Option<Arc<UpstreamClient>>>>>,
}

/// The client in `slot`, built on first use. Shared, not copied: a client (its connector,
/// TLS set-up and pool) is some 440 bytes and a handful of reference counts.
fn client_in(
    slots: &mut Vec<Option<Arc<UpstreamClient>>>,
    slot: usize,
    build: impl FnOnce() -> Result<UpstreamClient, ClientError>,
) -> Result<Arc<UpstreamClient>, ClientError> {
    if slots.len() <= slot {
        slots.resize(slot + 1, None);
    }
    if let Some(client) = &slots[slot] {
        return Ok(Arc::clone(client));
    }
    let client = Arc::new(build()?);
    slots[slot] = Some(Arc::clone(&client));
    Ok(client)
}

impl HttpClients {
    /// Clients that connect within `connect_timeout` and verify servers against `tls`'s
    /// roots (see [`tls_config`]).
    pub fn new(connect_timeout: Duration, tls: Arc<rustls::ClientConfig>) -> Self {
        HttpClients {
            connect_timeout,
            tls,
            direct: Mutex::new(Vec::new()),
            by_proxy: Mutex::new(HashMap::new()),
        }
    }

    /// Closes the idle connections of every client that are past their idle timeout (run
    /// periodically: see `probe::run_probe_loop`). Answers how many idle connections are
    /// left.
    pub fn close_expired(&self, now: Instant) -> usize {
        // A pool's lock is never held while these two are taken, so taking it under them
        // cannot deadlock.
        let sweep = |client: &Arc<UpstreamClient>| {
            let mut pool = lock(&client.pool);
            pool.close_expired(now);
            pool.idle_count()
        };
        let direct: usize = lock(&self.direct).iter().flatten().map(sweep).sum();
        let proxied: usize = lock(&self.by_proxy)
            .values()
            .flatten()
            .flatten()
            .map(sweep)
            .sum();
        direct + proxied
    }

    /// The client for an account: direct, or through its HTTP/HTTPS/SOCKS5 proxy.
    pub fn client_for(&self, proxy_url: Option<&str>) -> Result<Arc<UpstreamClient>, ClientError> {
        let slot = WORKER.with(|worker| worker.get());
        match proxy_url.filter(|p| !p.is_empty()) {
            None => client_in(&mut lock(&self.direct), slot, || {
                UpstreamClient::build(Route::Direct, self.connect_timeout, &self.tls)
            }),
            Some(proxy_url) => {
                let build = || {
                    let proxy = ProxySpec::parse(proxy_url)?;
                    UpstreamClient::build(Route::Proxy(proxy), self.connect_timeout, &self.tls)
                };
                let mut by_proxy = lock(&self.by_proxy);
                if let Some(slots) = by_proxy.get_mut(proxy_url) {
                    return client_in(slots, slot, build);
                }
                // An invalid URL leaves no entry behind.
                let client = build()?;
                let slots = by_proxy.entry(proxy_url.to_owned()).or_default();
                client_in(slots, slot, || Ok(client))
            }
        }
    }
}

/// Checks a proxy URL the way the client would use it (for the admin API's validation).
pub fn validate_proxy_url(proxy_url: &str) -> Result<(), ClientError> {
    ProxySpec::parse(proxy_url).map(|_| ())
}

/// Why an upstream request got no answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most idle connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 256;

/// One pooled client, shared through an `Arc` by the requests of its worker and route.
pub struct UpstreamClient {
    connector: HttpsConnector<RouteConnector>,
    pool: Arc<Mutex<Pool>>,
    /// Plain-HTTP requests go to an HTTP proxy in absolute form.
    via_http_proxy: bool,
    /// `Proxy-Authorization` for those requests.
    forward_auth: Option<HeaderValue>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").finish_non_exhaustive()
    }
}

/// The idle connections of one client, by origin. A client serves every account on its route
/// (direct, or one proxy), and most reach one or two origins: those are found by a scan; past
/// [`SCANNED_ORIGINS`] a map finds them. Origins are never removed (indices stay valid).
#[derive(Default)]
struct Pool {
    origins: Vec<Origin>,
    by_origin: HashMap<(Scheme, Authority), usize>,
}

/// Up to this many origins a scan finds an origin sooner than hashing it.
const SCANNED_ORIGINS: usize = 8;

struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header for requests to this origin.
    host: HeaderValue,
    /// Oldest first.
    idle: VecDeque<IdleConnection>,
}

struct IdleConnection {
    conn: Conn,
    since: Instant,
}

impl IdleConnection {
    /// Still open, and idle for less than [`IDLE_TIMEOUT`].
    fn usable(&mut self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < IDLE_TIMEOUT && self.conn.is_usable_idle()
    }
}

impl Pool {
    /// The index of the origin, added on first use.
    fn origin(&mut self, scheme: &Scheme, authority: &Authority) -> Result<usize, SendError> {
        let found = if self.origins.len() <= SCANNED_ORIGINS {
            self.origins
                .iter()
                .position(|origin| origin.authority == *authority && origin.scheme == *scheme)
        } else {
            self.by_origin
                .get(&(scheme.clone(), authority.clone()))
                .copied()
        };
        if let Some(index) = found {
            return Ok(index);
        }
        let index = self.origins.len();
        self.origins.push(Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host: host_header(scheme, authority)?,
            idle: VecDeque::new(),
        });
        self.by_origin
            .insert((scheme.clone(), authority.clone()), index);
        Ok(index)
    }

    /// The newest idle connection of the origin that is still open and not too old.
    fn checkout(&mut self, origin: usize, now: Instant) -> Option<Conn> {
        let idle = &mut self.origins.get_mut(origin)?.idle;
        while let Some(mut connection) = idle.pop_back() {
            if connection.usable(now) {
                return Some(connection.conn);
            }
        }
        None
    }

    /// Drops every origin's idle connections that are closed or idle for [`IDLE_TIMEOUT`]:
    /// `checkin` and `checkout` only look at the origin they serve, so an origin that gets no
    /// more requests would keep its connections (and their buffers) as long as the upstream
    /// does.
    fn close_expired(&mut self, now: Instant) {
        for origin in &mut self.origins {
            origin.idle.retain_mut(|connection| connection.usable(now));
        }
    }

    fn idle_count(&self) -> usize {
        self.origins.iter().map(|origin| origin.idle.len()).sum()
    }

    fn checkin(&mut self, origin: usize, conn: Conn, now: Instant) {
        let Some(origin) = self.origins.get_mut(origin) else {
            return;
        };
        let idle = &mut origin.idle;
        while idle.front_mut().is_some_and(|oldest| !oldest.usable(now))
            || idle.len() >= MAX_IDLE_PER_ORIGIN
        {
            idle.pop_front();
        }
        idle.push_back(IdleConnection { conn, since: now });
    }
}

/// `Host` as hyper-util's client wrote it: the host, and the port unless it is the scheme's.
fn host_header(scheme: &Scheme, authority: &Authority) -> Result<HeaderValue, SendError> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).map_err(|error| {
        SendError(format!(
            "the upstream URL's host is not a valid header: {error}"
        ))
    })
}

/// The body of an upstream answer. Its connection goes back to the pool once the body has
/// been read to its end; dropped before that, the connection is closed with it.
pub struct UpstreamAnswer {
    body: h1::Body<Transport>,
    release: Option<Release>,
    /// Rewrites the body's bytes as they are read (see [`UpstreamAnswer::transform_with`]).
    transform: Option<Box<dyn ChunkTransform>>,
    /// The transform has given its last bytes: the body has ended.
    transformed_to_end: bool,
}

/// Rewrites an answer's body as it is read: another protocol's events into Anthropic's.
pub trait ChunkTransform: Send + Sync {
    /// The bytes to hand on for `chunk` (possibly none yet).
    fn chunk(&mut self, chunk: &[u8]) -> Vec<u8>;
    /// The last bytes, once the body has ended.
    fn end(&mut self) -> Vec<u8>;
}

struct Release {
    pool: Arc<Mutex<Pool>>,
    origin: usize,
}

impl UpstreamAnswer {
    fn new(body: h1::Body<Transport>, release: Release) -> Self {
        let mut answer = UpstreamAnswer {
            body,
            release: Some(release),
            transform: None,
            transformed_to_end: false,
        };
        // No body at all (204, a zero length): whoever reads it may never poll.
        answer.release_at_end();
        answer
    }

    /// Hands the body on through `transform` from now on.
    pub fn transform_with(&mut self, transform: Box<dyn ChunkTransform>) {
        self.transform = Some(transform);
    }

    fn release_at_end(&mut self) {
        if self.body.is_end() {
            self.release_now();
        }
    }

    fn release_now(&mut self) {
        if let Some(release) = self.release.take() {
            if let Some(conn) = self.body.take_reusable() {
                lock(&release.pool).checkin(release.origin, conn, Instant::now());
            }
        }
    }
}

impl http_body::Body for UpstreamAnswer {
    type Data = Bytes;
    type Error = h1::H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h1::H1Error>>> {
        let this = self.get_mut();
        loop {
            if this.transformed_to_end {
                return Poll::Ready(None);
            }
            let frame = std::task::ready!(this.body.poll_data(cx))
                .map(|data| data.map(http_body::Frame::data));
            match &frame {
                // The last frame of a body with a length: its reader may not poll again.
                Some(Ok(_)) => this.release_at_end(),
                None => this.release_now(),
                // A broken answer: its connection is not reused.
                Some(Err(_)) => this.release = None,
            }
            let Some(transform) = this.transform.as_mut() else {
                return Poll::Ready(frame);
            };
            let bytes = match frame {
                Some(Ok(frame)) => {
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    let mut bytes = transform.chunk(&chunk);
                    if this.body.is_end() {
                        bytes.extend(transform.end());
                        this.transformed_to_end = true;
                    }
                    bytes
                }
                None => {
                    this.transformed_to_end = true;
                    transform.end()
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
            };
            if !bytes.is_empty() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(bytes)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.transform {
            None => self.body.is_end(),
            Some(_) => self.transformed_to_end,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.transform {
            None => self.body.size_hint(),
            Some(_) => http_body::SizeHint::default(),
        }
    }
}

impl UpstreamClient {
    fn build(
        route: Route,
        connect_timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let forward_auth = match &route {
            Route::Proxy(ProxySpec {
                kind: ProxyKind::Http,
                credentials: Some((user, password)),
                ..
            }) => Some(basic_auth(user, password)?),
            _ => None,
        };
        let via_http_proxy = matches!(
            &route,
            Route::Proxy(ProxySpec {
                kind: ProxyKind::Http,
                ..
            })
        );
        let connector = RouteConnector::new(route, connect_timeout, tls)?;
        Ok(UpstreamClient {
            connector: with_tls(connector, tls),
            pool: Arc::default(),
            via_http_proxy,
            forward_auth,
        })
    }

    /// Sends one request and answers its response head; the body streams from the answer.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamAnswer>, SendError> {
        self.send_forwarding(request, None).await
    }

    /// [`UpstreamClient::send`], with the client's headers that go upstream as they are
    /// written before the request's own.
    pub async fn send_forwarding(
        &self,
        mut request: Request<UpstreamBody>,
        client_headers: Option<crate::upstream::Forwarded<'_>>,
    ) -> Result<Response<UpstreamAnswer>, SendError> {
        let (Some(scheme), Some(authority)) = (
            request.uri().scheme().cloned(),
            request.uri().authority().cloned(),
        ) else {
            return Err(SendError(format!(
                "the upstream URL {} is not absolute",
                request.uri()
            )));
        };
        let forwarded = self.via_http_proxy && scheme == Scheme::HTTP;
        if let (true, Some(auth)) = (forwarded, &self.forward_auth) {
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
        }
        let (origin, host) = {
            let mut pool = lock(&self.pool);
            let origin = pool.origin(&scheme, &authority)?;
            (origin, pool.origins[origin].host.clone())
        };
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert(host);
        let (parts, body) = request.into_parts();
        // Origin form, `/v1/messages?beta=true`: only a proxy takes the absolute form.
        let target: std::borrow::Cow<'_, str> = if forwarded {
            parts.uri.to_string().into()
        } else {
            parts
                .uri
                .path_and_query()
                .map_or("/", PathAndQuery::as_str)
                .into()
        };
        let head = h1::request_head(
            &parts.method,
            &target,
            client_headers.iter().flat_map(|client| client.iter()),
            &parts.headers,
            body.0.len(),
        );
        let head_request = parts.method == http::Method::HEAD;
        loop {
            let pooled = lock(&self.pool).checkout(origin, Instant::now());
            let (mut conn, reused) = match pooled {
                Some(conn) => (conn, true),
                // Boxed: connecting (TLS, a proxy's tunnel) needs a future of ~4.5 KB, which
                // would otherwise be part of every request's, copied with it though a pooled
                // connection serves nearly every request.
                None => (Box::pin(self.connect(&scheme, &authority)).await?, false),
            };
            let unsent = match conn.send(&head, &body.0).await {
                Ok(()) => None,
                // The pooled connection closed meanwhile: try the next one.
                Err(_) if reused => continue,
                Err(error) => Some(error),
            };
            let (head, body) = match conn.answer(head_request).await {
                Ok(answer) => answer,
                // The upstream closed the pooled connection as the request went out (its idle
                // timeout), before the reactor had seen it go: nothing was answered, so the
                // request goes out again, on another connection, as it would to another
                // account.
                Err(h1::H1Error::NoAnswer) if reused => continue,
                Err(error) => {
                    return Err(SendError(match unsent {
                        // No answer to a request not sent whole: the sending failed.
                        Some(unsent) => format!("sending the request failed: {unsent}"),
                        None => error_chain(&error),
                    }));
                }
            };
            if forwarded && head.status == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                // Only the proxy answers 407: the upstream was never reached. A transport
                // failure of this account, not an answer for the client.
                return Err(SendError(
                    "the HTTP proxy refused the request: 407 Proxy Authentication Required"
                        .to_owned(),
                ));
            }
            let release = Release {
                pool: Arc::clone(&self.pool),
                origin,
            };
            let mut response = Response::new(UpstreamAnswer::new(body, release));
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            return Ok(response);
        }
    }

    /// A new connection to the origin.
    async fn connect(&self, scheme: &Scheme, authority: &Authority) -> Result<Conn, SendError> {
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|error| SendError(error.to_string()))?;
        let io = self
            .connector
            .clone()
            .oneshot(target)
            .await
            .map_err(|error| {
                SendError(format!("client error (Connect): {}", error_chain(&*error)))
            })?;
        Ok(h1::Conn::new(Box::new(TokioIo::new(io))))
    }

    /// Sends a small request and reads its whole answer (at most 1 MiB), all within
    /// `timeout`: for token refreshes and probes, not for relayed traffic.
    pub async fn fetch(
        &self,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), SendError> {
        use http_body_util::BodyExt;
        const MAX_ANSWER: usize = 1024 * 1024;
        let exchange = async {
            let response = self.send(request).await?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|error| SendError(format!("reading the answer failed: {error}")))?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(SendError(format!(
                    "no complete answer within {}",
                    relay_core::duration::format_duration(timeout)
                )))
            })
    }
}

/// An error and its causes on one line: "client error (Connect): tcp connect error: …".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The TLS settings of every upstream and proxy connection: rustls with ring, the webpki
/// roots and `extra_roots` (the operator's own certificate authorities). An error names the
/// certificate that cannot be a root.
pub fn tls_config(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots: rustls::RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
    for (position, certificate) in extra_roots.iter().enumerate() {
        roots.add(certificate.clone()).map_err(|error| {
            ClientError::Build(format!(
                "certificate {} cannot be a trusted root: {error}",
                position + 1
            ))
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| ClientError::Build(error.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `connector` with TLS (`tls`, HTTP/1.1) for `https` targets; `http` targets pass through
/// as they are.
fn with_tls<C>(connector: C, tls: &Arc<rustls::ClientConfig>) -> HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(rustls::ClientConfig::clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector)
}

fn basic_auth(user: &str, password: &str) -> Result<HeaderValue, ClientError> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|error| ClientError::InvalidProxy(error.to_string()))?;
    value.set_sensitive(true);
    Ok(value)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyKind {
    Http,
    Socks5 { remote_dns: bool },
}

/// A parsed `proxy_url`: where the proxy is, what it speaks, and its credentials.
#[derive(Debug, Clone)]
struct ProxySpec {
    kind: ProxyKind,
    /// The proxy's address without credentials, e.g. `http://10.0.0.1:3128`.
    address: Uri,
    credentials: Option<(String, String)>,
}

impl ProxySpec {
    fn parse(proxy_url: &str) -> Result<Self, ClientError> {
        let invalid = |why: &str| ClientError::InvalidProxy(why.to_owned());
        let (scheme, rest) = proxy_url
            .split_once("://")
            .ok_or_else(|| invalid("must start with http://, https://, socks5:// or socks5h://"))?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => ProxyKind::Http,
            "socks5" => ProxyKind::Socks5 { remote_dns: false },
            "socks5h" => ProxyKind::Socks5 { remote_dns: true },
            _ => {
                return Err(invalid(
                    "must start with http://, https://, socks5:// or socks5h://",
                ))
            }
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let path = &rest[authority.len()..];
        if !path.is_empty() && path != "/" {
            return Err(invalid("a proxy URL has no path: write scheme://host:port"));
        }
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(text)
                        .decode_utf8()
                        .map(|decoded| decoded.into_owned())
                        .map_err(|_| invalid("the credentials are not valid percent-encoded UTF-8"))
                };
                (Some((decode(user)?, decode(password)?)), host_port)
            }
            None => (None, authority),
        };
        if host_port.is_empty() {
            return Err(invalid("the proxy URL names no host"));
        }
        let address: Uri = format!("{}://{host_port}", scheme.to_ascii_lowercase())
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
        if address.host().is_none_or(str::is_empty) {
            return Err(invalid("the proxy URL names no host"));
        }
        let port_text = host_port.rsplit_once(':').map(|(_, port)| port);
        if port_text.is_some_and(|port| !port.ends_with(']') && port.parse::<u16>().is_err()) {
            return Err(invalid(
                "the proxy URL's port is not a number from 0 to 65535",
            ));
        }
        Ok(ProxySpec {
            kind,
            address,
            credentials,
        })
    }
}

#[derive(Debug, Clone)]
enum Route {
    Direct,
    Proxy(ProxySpec),
}

/// Opens the transport to the upstream (or to the proxy); TLS to the upstream is layered
/// on top by `HttpsConnector`.
#[derive(Clone)]
enum RouteConnector {
    Direct(HttpConnector),
    HttpProxy {
        /// To the proxy itself (TLS when the proxy URL is `https://`).
        to_proxy: HttpsConnector<HttpConnector>,
        proxy: Uri,
        tunnel: Tunnel<HttpsConnector<HttpConnector>>,
    },
    Socks(SocksV5<HttpConnector>),
}

impl RouteConnector {
    fn new(
        route: Route,
        connect_timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(connect_timeout));
        let proxy = match route {
            Route::Direct => return Ok(RouteConnector::Direct(tcp)),
            Route::Proxy(proxy) => proxy,
        };
        match proxy.kind {
            ProxyKind::Http => {
                let to_proxy = with_tls(tcp, tls);
                let mut tunnel = Tunnel::new(proxy.address.clone(), to_proxy.clone());
                if let Some((user, password)) = &proxy.credentials {
                    tunnel = tunnel.with_auth(basic_auth(user, password)?);
                }
                Ok(RouteConnector::HttpProxy {
                    to_proxy,
                    proxy: proxy.address,
                    tunnel,
                })
            }
            ProxyKind::Socks5 { remote_dns } => {
                let mut socks = SocksV5::new(proxy.address, tcp).local_dns(!remote_dns);
                if let Some((user, password)) = proxy.credentials {
                    socks = socks.with_auth(user, password);
                }
                Ok(RouteConnector::Socks(socks))
            }
        }
    }
}

impl tower::Service<Uri> for RouteConnector {
    type Response = RouteStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RouteStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call works on its own clone, made ready there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            match connector {
                RouteConnector::Direct(tcp) => {
                    let io = tcp.oneshot(target).await?;
                    Ok(RouteStream::new(MaybeHttpsStream::Http(io), false))
                }
                RouteConnector::HttpProxy {
                    to_proxy,
                    proxy,
                    tunnel,
                } => {
                    if target.scheme() == Some(&http::uri::Scheme::HTTP) {
                        // Plain HTTP: the proxy takes the request itself, in absolute form.
                        let io = to_proxy.oneshot(proxy).await?;
                        Ok(RouteStream::new(io, true))
                    } else {
                        let io = tunnel.oneshot(target).await?;
                        Ok(RouteStream::new(io, false))
                    }
                }
                RouteConnector::Socks(socks) => {
                    // The SOCKS connector would default a missing port to 443 whatever the
                    // scheme: name the scheme's port explicitly.
                    let io = socks.oneshot(with_explicit_port(target)?).await?;
                    Ok(RouteStream::new(MaybeHttpsStream::Http(io), false))
                }
            }
        })
    }
}

/// `target` with its port written out (80 for `http`, 443 for `https`) when it has none.
fn with_explicit_port(target: Uri) -> Result<Uri, BoxError> {
    if target.port().is_some() {
        return Ok(target);
    }
    let port = if target.scheme() == Some(&http::uri::Scheme::HTTP) {
        80
    } else {
        443
    };
    let host = target.host().ok_or("the upstream URL names no host")?;
    let mut parts = target.clone().into_parts();
    parts.authority = Some(format!("{host}:{port}").parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// The transport under the (optional) TLS to the upstream.
pub struct RouteStream {
    io: MaybeHttpsStream<TokioIo<TcpStream>>,
    /// Requests on this connection go to an HTTP proxy in absolute form.
    forwarded: bool,
}

impl RouteStream {
    fn new(io: MaybeHttpsStream<TokioIo<TcpStream>>, forwarded: bool) -> Self {
        RouteStream { io, forwarded }
    }
}

impl Connection for RouteStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forwarded)
    }
}

impl hyper::rt::Read for RouteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for RouteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers one request per connection with `answer`, then reads the
    /// next request and closes the connection without answering it.
    async fn closing_upstream(
        answer: &'static str,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    let mut answered = false;
                    loop {
                        let read = socket.read(&mut buffer).await.unwrap_or(0);
                        if read == 0 || answered {
                            return;
                        }
                        socket.write_all(answer.as_bytes()).await.unwrap();
                        answered = true;
                    }
                });
            }
        });
        (address, accepted)
    }

    #[tokio::test]
    async fn a_request_on_a_connection_closed_as_it_went_out_goes_out_again() {
        let (address, accepted) =
            closing_upstream("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let clients = HttpClients::new(Duration::from_secs(5), tls_config(&[]).unwrap());
        let client = clients.client_for(None).unwrap();
        for _ in 0..3 {
            let request = Request::post(format!("http://{address}/v1/messages"))
                .body(UpstreamBody::new(Bytes::from_static(b"{}")))
                .unwrap();
            let response = client.send(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        // Each request after the first found the pooled connection closed on it unanswered.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn proxy_urls_are_parsed_with_their_credentials() {
        let proxy = ProxySpec::parse("http://user:p%40ss@127.0.0.1:3128").unwrap();
        assert_eq!(proxy.kind, ProxyKind::Http);
        assert_eq!(proxy.address, "http://127.0.0.1:3128");
        assert_eq!(
            proxy.credentials,
            Some(("user".to_owned(), "p@ss".to_owned()))
        );
        let socks = ProxySpec::parse("socks5h://10.0.0.1:1080/").unwrap();
        assert_eq!(socks.kind, ProxyKind::Socks5 { remote_dns: true });
        assert!(socks.credentials.is_none());
        assert_eq!(
            ProxySpec::parse("socks5://h:1").unwrap().kind,
            ProxyKind::Socks5 { remote_dns: false }
        );
    }

    #[test]
    fn bad_proxy_urls_are_refused_with_a_reason() {
        for (url, why) in [
            ("ftp://x:1", "must start with"),
            ("127.0.0.1:3128", "must start with"),
            ("http://", "no host"),
            ("http://u:p@", "no host"),
            ("http://h:1/some/path", "no path"),
            ("http://h:notaport", "port"),
        ] {
            let error = validate_proxy_url(url).expect_err(url).to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn socks_targets_get_their_schemes_port() {
        for (target, expected) in [
            (
                "http://upstream.test/v1/messages",
                "http://upstream.test:80/v1/messages",
            ),
            ("https://api.example.com/", "https://api.example.com:443/"),
            ("http://h:8080/x", "http://h:8080/x"),
            ("http://[::1]/x", "http://[::1]:80/x"),
        ] {
            let uri = with_explicit_port(target.parse().unwrap()).unwrap();
            assert_eq!(uri.to_string(), expected);
        }
    }

    #[test]
    fn origins_keep_their_index_whether_scanned_or_mapped() {
        let mut pool = Pool::default();
        let origin = |n: usize| -> (Scheme, Authority) {
            let scheme = [Scheme::HTTP, Scheme::HTTPS][n % 2].clone();
            (
                scheme,
                format!("upstream-{}.test:8{n:03}", n / 2).parse().unwrap(),
            )
        };
        for n in 0..3 * SCANNED_ORIGINS {
            let (scheme, authority) = origin(n);
            assert_eq!(pool.origin(&scheme, &authority).unwrap(), n);
        }
        for n in (0..3 * SCANNED_ORIGINS).rev() {
            let (scheme, authority) = origin(n);
            assert_eq!(pool.origin(&scheme, &authority).unwrap(), n);
        }
        assert_eq!(pool.origins.len(), 3 * SCANNED_ORIGINS);
        let (scheme, authority) = origin(5);
        assert_eq!(pool.origins[5].host, format!("{}", authority));
        assert_eq!(pool.origins[5].scheme, scheme);
    }

    #[test]
    fn host_is_written_without_the_schemes_own_port() {
        for (scheme, authority, host) in [
            (Scheme::HTTPS, "api.anthropic.com", "api.anthropic.com"),
            (Scheme::HTTPS, "api.anthropic.com:443", "api.anthropic.com"),
            (Scheme::HTTP, "127.0.0.1:80", "127.0.0.1"),
            (Scheme::HTTP, "127.0.0.1:8080", "127.0.0.1:8080"),
            (Scheme::HTTPS, "user:pw@h.test:8443", "h.test:8443"),
            (Scheme::HTTP, "[::1]:9000", "[::1]:9000"),
        ] {
            let written = host_header(&scheme, &authority.parse().unwrap()).unwrap();
            assert_eq!(written, host, "{scheme}://{authority}");
        }
    }

    #[test]
    fn basic_auth_is_marked_sensitive() {
        let value = basic_auth("a", "b").unwrap();
        assert_eq!(value, "Basic YTpi");
        assert!(value.is_sensitive());
    }
}

//! Upstream proxies end to end: an account's `proxy_url` is honoured over real loopback
//! connections, through proxies written here so that each test can assert what the proxy
//! was asked. `socks_proxy` is a SOCKS5 server after RFC 1928 (CONNECT with IPv4, IPv6 and
//! domain-name addresses) and RFC 1929 (username/password); `forward_proxy` is an HTTP
//! forward proxy that checks `Proxy-Authorization` and passes the request on to its
//! absolute-form target, or opens a CONNECT tunnel (for HTTPS upstreams: tested in `tls`,
//! with an `https://` proxy).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// The destination a SOCKS client asked for, as it wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SocksTarget {
    /// Address type 0x01 or 0x04: the client resolved the name itself.
    Ip(SocketAddr),
    /// Address type 0x03: the name is left to the proxy.
    Domain(String, u16),
}

/// How the test SOCKS server behaves.
#[derive(Debug, Default)]
struct SocksRules {
    /// `Some`: only username/password authentication (0x02) with exactly these is accepted;
    /// `None`: only "no authentication" (0x00).
    credentials: Option<(&'static str, &'static str)>,
    /// The proxy's own name resolution; a name not listed is answered "host unreachable".
    names: HashMap<&'static str, IpAddr>,
}

/// A running test SOCKS5 server and what it saw.
struct SocksProxy {
    addr: SocketAddr,
    /// Every CONNECT that passed authentication, in order.
    connects: Arc<Mutex<Vec<SocksTarget>>>,
    /// Every username/password pair that was refused.
    refused: Arc<Mutex<Vec<(String, String)>>>,
}

impl SocksProxy {
    fn connects(&self) -> Vec<SocksTarget> {
        self.connects.lock().unwrap().clone()
    }

    fn refused(&self) -> Vec<(String, String)> {
        self.refused.lock().unwrap().clone()
    }
}

/// Starts a SOCKS5 server on 127.0.0.1; it stops with the test's runtime.
async fn socks_proxy(rules: SocksRules) -> SocksProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = SocksProxy {
        addr: listener.local_addr().unwrap(),
        connects: Arc::default(),
        refused: Arc::default(),
    };
    let rules = Arc::new(rules);
    let (connects, refused) = (Arc::clone(&proxy.connects), Arc::clone(&proxy.refused));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (rules, connects, refused) = (
                Arc::clone(&rules),
                Arc::clone(&connects),
                Arc::clone(&refused),
            );
            // A broken or refused handshake just closes that connection.
            tokio::spawn(async move {
                let _ = socks_session(client, &rules, &connects, &refused).await;
            });
        }
    });
    proxy
}

/// One SOCKS5 connection: greeting, optional login, CONNECT, reply, then relayed bytes.
async fn socks_session(
    mut client: TcpStream,
    rules: &SocksRules,
    connects: &Mutex<Vec<SocksTarget>>,
    refused: &Mutex<Vec<(String, String)>>,
) -> std::io::Result<()> {
    // Greeting: VER NMETHODS METHODS; the answer is VER METHOD.
    let [version, method_count] = read_array(&mut client).await?;
    assert_eq!(version, 5, "not a SOCKS5 greeting");
    let mut methods = vec![0; usize::from(method_count)];
    client.read_exact(&mut methods).await?;
    let wanted = if rules.credentials.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        client.write_all(&[5, 0xff]).await?;
        return Ok(());
    }
    client.write_all(&[5, wanted]).await?;

    // RFC 1929: VER ULEN UNAME PLEN PASSWD; the answer is VER STATUS (0 = success).
    if let Some((user, password)) = rules.credentials {
        let [version, user_len] = read_array(&mut client).await?;
        assert_eq!(version, 1, "not an RFC 1929 request");
        let given_user = read_string(&mut client, user_len).await?;
        let [password_len] = read_array(&mut client).await?;
        let given_password = read_string(&mut client, password_len).await?;
        if (given_user.as_str(), given_password.as_str()) != (user, password) {
            refused.lock().unwrap().push((given_user, given_password));
            client.write_all(&[1, 1]).await?;
            return Ok(());
        }
        client.write_all(&[1, 0]).await?;
    }

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
    let [version, command, _, address_type] = read_array(&mut client).await?;
    assert_eq!(version, 5, "not a SOCKS5 request");
    let target = match address_type {
        1 => {
            let ip: [u8; 4] = read_array(&mut client).await?;
            SocksTarget::Ip(SocketAddr::new(
                Ipv4Addr::from(ip).into(),
                read_port(&mut client).await?,
            ))
        }
        4 => {
            let ip: [u8; 16] = read_array(&mut client).await?;
            SocksTarget::Ip(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                read_port(&mut client).await?,
            ))
        }
        3 => {
            let [name_len] = read_array(&mut client).await?;
            let name = read_string(&mut client, name_len).await?;
            SocksTarget::Domain(name, read_port(&mut client).await?)
        }
        _ => return socks_reply(&mut client, 8).await,
    };
    if command != 1 {
        return socks_reply(&mut client, 7).await;
    }
    connects.lock().unwrap().push(target.clone());
    let destination = match target {
        SocksTarget::Ip(address) => address,
        SocksTarget::Domain(name, port) => match rules.names.get(name.as_str()) {
            Some(ip) => SocketAddr::new(*ip, port),
            None => return socks_reply(&mut client, 4).await,
        },
    };
    let Ok(mut upstream) = TcpStream::connect(destination).await else {
        return socks_reply(&mut client, 5).await;
    };
    socks_reply(&mut client, 0).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// VER REP RSV ATYP BND.ADDR BND.PORT, with an unspecified IPv4 bound address.
async fn socks_reply(client: &mut TcpStream, reply: u8) -> std::io::Result<()> {
    client.write_all(&[5, reply, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

async fn read_array<const N: usize>(stream: &mut TcpStream) -> std::io::Result<[u8; N]> {
    let mut bytes = [0; N];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

async fn read_port(stream: &mut TcpStream) -> std::io::Result<u16> {
    Ok(u16::from_be_bytes(read_array(stream).await?))
}

async fn read_string(stream: &mut TcpStream, len: u8) -> std::io::Result<String> {
    let mut bytes = vec![0; usize::from(len)];
    stream.read_exact(&mut bytes).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The head of a request as the forward proxy received it.
#[derive(Debug, Clone)]
pub(crate) struct ProxiedRequest {
    /// e.g. `POST http://127.0.0.1:41234/v1/messages HTTP/1.1`.
    pub(crate) request_line: String,
    /// Names in lower case, in arrival order.
    headers: Vec<(String, String)>,
}

impl ProxiedRequest {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header_name, _)| header_name == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A running test HTTP forward proxy and the request heads it received.
pub(crate) struct ForwardProxy {
    pub(crate) addr: SocketAddr,
    /// The first request of every connection (later ones on a kept-alive connection are
    /// passed through unread).
    pub(crate) requests: Arc<Mutex<Vec<ProxiedRequest>>>,
}

/// Starts an HTTP forward proxy on 127.0.0.1 that wants `Proxy-Authorization` to be exactly
/// `authorization` (else it answers 407), removes that header and relays the request to the
/// host and port of its absolute-form target, or tunnels a CONNECT to its target.
pub(crate) async fn forward_proxy(authorization: &'static str) -> ForwardProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = ForwardProxy {
        addr: listener.local_addr().unwrap(),
        requests: Arc::default(),
    };
    let requests = Arc::clone(&proxy.requests);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let _ = forward_session(client, authorization, &requests).await;
            });
        }
    });
    proxy
}

async fn forward_session(
    mut client: TcpStream,
    authorization: &str,
    requests: &Mutex<Vec<ProxiedRequest>>,
) -> std::io::Result<()> {
    // Read up to the end of the head; whatever came after it is the start of the body.
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        received.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let body_start = &received[head_end + 4..];
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let request = ProxiedRequest {
        request_line: request_line.clone(),
        headers: headers.clone(),
    };
    requests.lock().unwrap().push(request.clone());
    if request.header("proxy-authorization") != Some(authorization) {
        client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  proxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\
                  connection: close\r\n\r\n",
            )
            .await?;
        return Ok(());
    }
    // `CONNECT host:port HTTP/1.1`: a tunnel to host:port, for a TLS upstream.
    if let Some(authority) = request_line
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split(' ').next())
    {
        let mut upstream = TcpStream::connect(authority).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        upstream.write_all(body_start).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    // `POST http://host:port/path HTTP/1.1`: the proxy connects to host:port.
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let authority = target
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("not an absolute-form request line: {request_line}"));
    let mut upstream = TcpStream::connect(authority).await?;
    let mut forwarded = format!("{request_line}\r\n");
    for (name, value) in headers
        .iter()
        .filter(|(name, _)| name != "proxy-authorization")
    {
        forwarded.push_str(&format!("{name}: {value}\r\n"));
    }
    forwarded.push_str("\r\n");
    upstream.write_all(forwarded.as_bytes()).await?;
    upstream.write_all(body_start).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// A `claude_console` account with `api_key`, sending to `base_url` through `proxy_url`.
pub(crate) async fn proxied_account(
    h: &Harness,
    group: i64,
    name: &str,
    api_key: &str,
    base_url: &str,
    proxy_url: &str,
    priority: i32,
) -> i64 {
    h.post_admin(
        "/accounts",
        json!({
            "name": name, "platform": "claude_console", "group_id": group,
            "base_url": base_url, "api_key": api_key, "proxy_url": proxy_url,
            "priority": priority,
        }),
    )
    .await["id"]
        .as_i64()
        .unwrap()
}

/// The logged attempts of a group's requests as (account id, class), oldest first.
async fn attempts(h: &Harness, group: i64) -> Vec<(i64, String)> {
    h.logs(&format!("group_id={group}"))
        .await
        .iter()
        .rev()
        .map(|log| {
            (
                log["account_id"].as_i64().unwrap(),
                log["class"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A 127.0.0.1 port nobody listens on: bound, read, closed.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Asserts a 200 Messages answer with the mock's text.
pub(crate) async fn assert_relayed(response: reqwest::Response) {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], relay_mock::DEFAULT_MOCK_TEXT);
}

#[tokio::test]
async fn socks5_proxy_carries_the_upstream_connection() {
    let h = Harness::start().await;
    let socks = socks_proxy(SocksRules::default()).await;
    let group = h.group("socks", None).await;
    let proxy_url = format!("socks5://{}", socks.addr);
    let base_url = h.mock.base_url();
    proxied_account(&h, group, "via-socks", "sk-socks", &base_url, &proxy_url, 1).await;
    let key = h.key(group).await;

    assert_relayed(h.messages(&key, message_body(false)).await).await;
    let seen = h.mock.requests_for("sk-socks");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/messages");
    // One tunnel, to the mock's address as an IPv4 address (type 0x01).
    assert_eq!(socks.connects(), [SocksTarget::Ip(h.mock.addr())]);
}

#[tokio::test]
async fn socks5_credentials_are_sent_decoded_and_wrong_ones_fail_over() {
    let h = Harness::start().await;
    let socks = socks_proxy(SocksRules {
        credentials: Some(("user", "p@ss")),
        ..SocksRules::default()
    })
    .await;
    let base_url = h.mock.base_url();

    // Alone in its group, the account with the right (percent-encoded) password gets through.
    let single = h.group("socks-login", None).await;
    let good_proxy = format!("socks5://user:p%40ss@{}", socks.addr);
    proxied_account(
        &h,
        single,
        "good-login",
        "sk-good",
        &base_url,
        &good_proxy,
        1,
    )
    .await;
    let key = h.key(single).await;
    assert_relayed(h.messages(&key, message_body(false)).await).await;
    assert_eq!(h.mock.count_for("sk-good"), 1);
    assert_eq!(socks.connects(), [SocksTarget::Ip(h.mock.addr())]);
    assert!(socks.refused().is_empty());

    // A refused login is a network failure: the request fails over to the next account.
    let pool = h.group("socks-pool", None).await;
    let bad_proxy = format!("socks5://user:wrong@{}", socks.addr);
    let bad = proxied_account(&h, pool, "bad-login", "sk-bad", &base_url, &bad_proxy, 1).await;
    let good = proxied_account(&h, pool, "good-too", "sk-good-2", &base_url, &good_proxy, 2).await;
    let key = h.key(pool).await;
    assert_relayed(h.messages(&key, message_body(false)).await).await;
    assert_eq!(h.counts(&["sk-bad", "sk-good-2"]), [0, 1]);
    assert_eq!(socks.refused(), [("user".to_owned(), "wrong".to_owned())]);
    assert_eq!(
        attempts(&h, pool).await,
        [(bad, "network".to_owned()), (good, "success".to_owned())]
    );
}

#[tokio::test]
async fn socks5_refused_login_alone_answers_an_api_error() {
    let h = Harness::start().await;
    let socks = socks_proxy(SocksRules {
        credentials: Some(("user", "p@ss")),
        ..SocksRules::default()
    })
    .await;
    let group = h.group("socks-alone", None).await;
    let proxy_url = format!("socks5://intruder:p%40ss@{}", socks.addr);
    let base_url = h.mock.base_url();
    let account = proxied_account(&h, group, "bad", "sk-bad", &base_url, &proxy_url, 1).await;
    let key = h.key(group).await;

    let response = h.messages(&key, message_body(false)).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_type(&body), "api_error");
    assert_eq!(
        body["fallback_info"]["failure_reason"],
        "all_accounts_failed"
    );
    assert_eq!(body["fallback_info"]["attempt_count"], 1);
    assert_eq!(body["fallback_info"]["attempts"][0]["account_id"], account);
    assert_eq!(body["fallback_info"]["attempts"][0]["class"], "network");
    assert!(body["fallback_info"]["attempts"][0]["status"].is_null());
    assert_eq!(
        socks.refused(),
        [("intruder".to_owned(), "p@ss".to_owned())]
    );
    assert!(socks.connects().is_empty());
    assert_eq!(h.mock.total_count(), 0);
}

/// `socks5h://` hands the name to the proxy: `upstream.test` is known to the proxy alone
/// (the relay's machine could not resolve it), and the CONNECT carries it as a domain name.
#[tokio::test]
async fn socks5h_lets_the_proxy_resolve_the_upstream_name() {
    let h = Harness::start().await;
    let socks = socks_proxy(SocksRules {
        names: HashMap::from([("upstream.test", IpAddr::V4(Ipv4Addr::LOCALHOST))]),
        ..SocksRules::default()
    })
    .await;
    let group = h.group("socks-h", None).await;
    let port = h.mock.addr().port();
    let base_url = format!("http://upstream.test:{port}");
    let proxy_url = format!("socks5h://{}", socks.addr);
    proxied_account(
        &h,
        group,
        "remote-dns",
        "sk-remote",
        &base_url,
        &proxy_url,
        1,
    )
    .await;
    let key = h.key(group).await;

    assert_relayed(h.messages(&key, message_body(false)).await).await;
    assert_eq!(
        socks.connects(),
        [SocksTarget::Domain("upstream.test".to_owned(), port)]
    );
    let seen = h.mock.requests_for("sk-remote");
    assert_eq!(seen.len(), 1);
    let expected_host = format!("upstream.test:{port}");
    assert_eq!(seen[0].header("host"), Some(expected_host.as_str()));
}

/// `socks5://` resolves names on the relay's side: the CONNECT carries an address, never the
/// name (`localhost` is in /etc/hosts, so no DNS server is asked).
#[tokio::test]
async fn socks5_resolves_the_upstream_name_locally() {
    let h = Harness::start().await;
    // The proxy knows no names: a domain-name CONNECT would be refused.
    let socks = socks_proxy(SocksRules::default()).await;
    let group = h.group("socks-local", None).await;
    let port = h.mock.addr().port();
    let base_url = format!("http://localhost:{port}");
    let proxy_url = format!("socks5://{}", socks.addr);
    proxied_account(&h, group, "local-dns", "sk-local", &base_url, &proxy_url, 1).await;
    let key = h.key(group).await;

    assert_relayed(h.messages(&key, message_body(false)).await).await;
    assert_eq!(h.mock.count_for("sk-local"), 1);
    assert_eq!(socks.connects(), [SocksTarget::Ip(h.mock.addr())]);
}

#[tokio::test]
async fn http_proxy_gets_absolute_form_and_basic_credentials() {
    let h = Harness::start().await;
    // base64("u:pw")
    let proxy = forward_proxy("Basic dTpwdw==").await;
    let group = h.group("http-proxy", None).await;
    let proxy_url = format!("http://u:pw@{}", proxy.addr);
    let base_url = h.mock.base_url();
    proxied_account(&h, group, "via-http", "sk-http", &base_url, &proxy_url, 1).await;
    let key = h.key(group).await;

    assert_relayed(h.messages(&key, message_body(false)).await).await;
    let requests = proxy.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].request_line,
        format!("POST http://{}/v1/messages HTTP/1.1", h.mock.addr())
    );
    assert_eq!(
        requests[0].header("proxy-authorization"),
        Some("Basic dTpwdw==")
    );
    // The upstream credential travels too, and reaches the upstream through the proxy.
    assert_eq!(requests[0].header("x-api-key"), Some("sk-http"));
    let seen = h.mock.requests_for("sk-http");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("proxy-authorization"), None);
}

/// A proxy nobody listens on is a network failure of its account: the request fails over to
/// the group's healthy account and succeeds.
async fn assert_dead_proxy_fails_over(scheme: &str) {
    let h = Harness::start().await;
    let group = h.group("dead-proxy", None).await;
    let proxy_url = format!("{scheme}://127.0.0.1:{}", closed_port());
    let base_url = h.mock.base_url();
    let dead = proxied_account(&h, group, "dead", "sk-dead", &base_url, &proxy_url, 1).await;
    let alive = h.console_account(group, "alive", "sk-alive", 2).await;
    let key = h.key(group).await;

    assert_relayed(h.messages(&key, message_body(false)).await).await;
    assert_eq!(h.counts(&["sk-dead", "sk-alive"]), [0, 1]);
    assert_eq!(
        attempts(&h, group).await,
        [(dead, "network".to_owned()), (alive, "success".to_owned())],
        "{scheme} proxy"
    );
}

#[tokio::test]
async fn unreachable_http_proxy_fails_over() {
    assert_dead_proxy_fails_over("http").await;
}

#[tokio::test]
async fn unreachable_socks5_proxy_fails_over() {
    assert_dead_proxy_fails_over("socks5").await;
}

/// A plain-HTTP upstream written without a port is reached on port 80 through a SOCKS proxy
/// (the SOCKS connector alone would ask the proxy for 443).
#[tokio::test]
async fn socks_tunnel_uses_port_80_for_an_http_upstream_without_port() {
    let h = Harness::start().await;
    let socks = socks_proxy(SocksRules {
        names: HashMap::from([("upstream.test", IpAddr::V4(Ipv4Addr::LOCALHOST))]),
        ..SocksRules::default()
    })
    .await;
    let group = h.group("socks-default-port", None).await;
    let proxy_url = format!("socks5h://{}", socks.addr);
    proxied_account(
        &h,
        group,
        "no-port",
        "sk-no-port",
        "http://upstream.test",
        &proxy_url,
        1,
    )
    .await;
    let key = h.key(group).await;
    // Nothing listens on port 80 here: only the CONNECT the proxy saw matters.
    let _ = h.messages(&key, message_body(false)).await;
    assert_eq!(
        socks.connects(),
        [SocksTarget::Domain("upstream.test".to_owned(), 80)]
    );
}

/// An HTTP proxy that refuses the account's proxy credentials (407) is a network failure of
/// that account: the request fails over, and the 407 never reaches the client.
#[tokio::test]
async fn refused_http_proxy_login_fails_over() {
    let h = Harness::start().await;
    let proxy = forward_proxy("Basic dTpwdw==").await;
    let group = h.group("http-proxy-refused", None).await;
    let proxy_url = format!("http://u:wrong@{}", proxy.addr);
    let base_url = h.mock.base_url();
    let bad = proxied_account(&h, group, "bad", "sk-bad", &base_url, &proxy_url, 1).await;
    let alive = h.console_account(group, "alive", "sk-alive", 2).await;
    let key = h.key(group).await;
    assert_relayed(h.messages(&key, message_body(false)).await).await;
    assert_eq!(
        attempts(&h, group).await,
        [(bad, "network".to_owned()), (alive, "success".to_owned())]
    );
    assert_eq!(h.counts(&["sk-bad", "sk-alive"]), [0, 1]);
}

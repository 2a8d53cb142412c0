//! Upstreams over TLS: the relay verifies them against the webpki roots and the operator's
//! own certificate authorities (`RELAY_CA_CERTS`), with a certificate issued by a test CA for
//! `localhost`, served by a TLS front in front of the mock upstream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use claude_code_relay::config::{Overrides, ServerConfig};
use relay_mock::MockConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::proxies::{assert_relayed, forward_proxy, proxied_account};
use crate::support::*;

/// A test certificate authority and a server certificate it issued for `localhost`.
struct TestPki {
    ca_pem: String,
    server_certificate: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
}

fn test_pki() -> TestPki {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "claude-code-relay test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_certificate = ca.self_signed(&ca_key).unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_certificate = server
        .signed_by(&server_key, &ca_certificate, &ca_key)
        .unwrap();
    TestPki {
        ca_pem: ca_certificate.pem(),
        server_certificate: server_certificate.der().clone(),
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    }
}

/// Terminates TLS with `pki`'s server certificate and passes the bytes to `target`.
async fn tls_front(pki: &TestPki, target: SocketAddr) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![pki.server_certificate.clone()],
        pki.server_key.clone_key(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    address
}

/// A relay whose `RELAY_CA_CERTS` names a file holding `pki`'s CA, and that file's folder.
async fn harness_trusting(pki: &TestPki) -> (Harness, PathBuf) {
    let directory = temp_dir();
    let ca_file = directory.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let h = Harness::start_with(MockConfig::default(), |env| {
        env.insert("RELAY_CA_CERTS".to_owned(), ca_file.display().to_string());
    })
    .await;
    (h, directory)
}

fn mock_address(h: &Harness) -> SocketAddr {
    h.mock
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn tls_upstreams_are_verified_against_the_webpki_roots_and_relay_ca_certs() {
    let pki = test_pki();
    // Trusting the test CA: requests and streams reach the upstream over TLS.
    let (h, directory) = harness_trusting(&pki).await;
    let front = tls_front(&pki, mock_address(&h)).await;
    let group = h.group("tls", None).await;
    let base_url = format!("https://localhost:{}", front.port());
    h.console_account_at(group, "over-tls", "sk-tls", 1, &base_url)
        .await;
    let key = h.key(group).await;
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    let stream = h.messages(&key, message_body(true)).await;
    assert_eq!(stream.status(), 200);
    let body = stream.text().await.unwrap();
    assert_eq!(event_names(&body), relay_mock::expected_event_names(4));
    assert_eq!(h.mock.count_for("sk-tls"), 2);

    // Without it, the same upstream's certificate is refused: a network failure, never a
    // request sent to an unverified server.
    let untrusting = Harness::start().await;
    let front = tls_front(&pki, mock_address(&untrusting)).await;
    let group = untrusting.group("tls", None).await;
    let base_url = format!("https://localhost:{}", front.port());
    untrusting
        .console_account_at(group, "over-tls", "sk-tls", 1, &base_url)
        .await;
    let key = untrusting.key(group).await;
    let response = untrusting.messages(&key, message_body(false)).await;
    assert_ne!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["fallback_info"]["attempts"][0]["class"], "network",
        "{body}"
    );
    assert_eq!(untrusting.mock.count_for("sk-tls"), 0);
    let logs = untrusting.logs("").await;
    assert!(
        !logs.is_empty() && logs.iter().all(|row| row["class"] == "network"),
        "{logs:?}"
    );

    // A file that is missing or holds no certificate stops the relay before it starts.
    for contents in [None, Some("not a certificate\n")] {
        let path = directory.join("broken.pem");
        let _ = std::fs::remove_file(&path);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap();
        }
        let mut env = h.env.clone();
        env.insert("RELAY_CA_CERTS".to_owned(), path.display().to_string());
        let error = ServerConfig::load(&env, &Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("RELAY_CA_CERTS"), "{error}");
    }
}

/// An `https://` proxy: the relay speaks TLS to the proxy itself (verified like an
/// upstream), then sends it the absolute-form request for a plain-HTTP upstream.
#[tokio::test]
async fn an_https_proxy_is_reached_over_verified_tls() {
    let pki = test_pki();
    let (h, _) = harness_trusting(&pki).await;
    // base64("u:pw")
    let proxy = forward_proxy("Basic dTpwdw==").await;
    let front = tls_front(&pki, proxy.addr).await;
    let group = h.group("https-proxy", None).await;
    let proxy_url = format!("https://u:pw@localhost:{}", front.port());
    let base_url = h.mock.base_url();
    proxied_account(&h, group, "via-https", "sk-https", &base_url, &proxy_url, 1).await;
    let key = h.key(group).await;

    assert_relayed(h.messages(&key, message_body(false)).await).await;
    let requests = proxy.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].request_line,
        format!("POST {base_url}/v1/messages HTTP/1.1")
    );
    assert_eq!(
        requests[0].header("proxy-authorization"),
        Some("Basic dTpwdw==")
    );
    assert_eq!(h.mock.count_for("sk-https"), 1);

    // A relay that does not trust the proxy's certificate sends it nothing.
    let untrusting = Harness::start().await;
    let group = untrusting.group("https-proxy", None).await;
    let base_url = untrusting.mock.base_url();
    proxied_account(
        &untrusting,
        group,
        "via-https",
        "sk-https",
        &base_url,
        &proxy_url,
        1,
    )
    .await;
    let key = untrusting.key(group).await;
    let response = untrusting.messages(&key, message_body(false)).await;
    assert_ne!(response.status(), 200);
    assert_eq!(proxy.requests.lock().unwrap().len(), 1);
    assert_eq!(untrusting.mock.count_for("sk-https"), 0);
}

/// An HTTPS upstream behind an `http://` proxy: the relay asks the proxy for a CONNECT
/// tunnel (with its credentials), then speaks TLS through it to the upstream, verified.
#[tokio::test]
async fn an_https_upstream_is_reached_through_a_connect_tunnel() {
    let pki = test_pki();
    let (h, _) = harness_trusting(&pki).await;
    let upstream = tls_front(&pki, mock_address(&h)).await;
    // base64("u:pw")
    let proxy = forward_proxy("Basic dTpwdw==").await;
    let group = h.group("tunnel", None).await;
    let base_url = format!("https://localhost:{}", upstream.port());
    let proxy_url = format!("http://u:pw@{}", proxy.addr);
    proxied_account(
        &h,
        group,
        "tunnelled",
        "sk-tunnel",
        &base_url,
        &proxy_url,
        1,
    )
    .await;
    let key = h.key(group).await;

    assert_relayed(h.messages(&key, message_body(false)).await).await;
    let requests = proxy.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].request_line,
        format!("CONNECT localhost:{} HTTP/1.1", upstream.port())
    );
    assert_eq!(
        requests[0].header("proxy-authorization"),
        Some("Basic dTpwdw==")
    );
    // The tunnel carries TLS: the proxy never sees the upstream credential.
    assert_eq!(requests[0].header("x-api-key"), None);
    assert_eq!(h.mock.count_for("sk-tunnel"), 1);
}

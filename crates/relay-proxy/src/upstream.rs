//! Building one upstream attempt: URL, headers and credentials.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use relay_core::model::{Account, Platform};

/// The `anthropic-beta` flag that OAuth (subscription) tokens require.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the client's own
/// credentials and length/encoding headers that the relay's client sets itself.
const REQUEST_HEADERS_NOT_FORWARDED: [&str; 13] = [
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-api-key",
    "authorization",
];

/// Built from static text: inserting a name given as a string allocates a copy of any name
/// the `http` crate does not know (such as these) on every call.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

static RESPONSE_HEADERS_NOT_FORWARDED: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

/// `base_url` + `path` + `?query`. `base_url` is written like `ANTHROPIC_BASE_URL`.
pub fn upstream_url(base_url: &str, path: &str, query: Option<&str>) -> String {
    let base = base_url.trim_end_matches('/');
    let mut url = String::with_capacity(base.len() + path.len() + 1 + query.map_or(0, str::len));
    url.push_str(base);
    url.push_str(path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// [`upstream_url`] as the client's URI; the error says which account setting is at fault.
pub fn upstream_uri(base_url: &str, path: &str, query: Option<&str>) -> Result<http::Uri, String> {
    let query = query.filter(|query| !query.is_empty());
    RECENT_URIS.with(|recent| {
        let mut recent = recent.borrow_mut();
        if let Some(built) = recent.iter().find(|built| built.is(base_url, path, query)) {
            return Ok(built.uri.clone());
        }
        // The URL's own bytes become the URI's: parsing a `&str` would copy them first.
        let uri =
            http::Uri::from_maybe_shared(bytes::Bytes::from(upstream_url(base_url, path, query)))
                .map_err(|error| {
                let url = upstream_url(base_url, path, query);
                format!("the account's base_url does not make a valid URL ({url}): {error}")
            })?;
        let built = BuiltUri {
            base_url: base_url.into(),
            path: path.into(),
            query: query.map(Into::into),
            uri: uri.clone(),
        };
        if recent.len() == RECENT_URIS_KEPT {
            // The oldest goes: the list is short, and a relay sends nearly every request to
            // the same few base URLs and paths.
            recent.remove(0);
        }
        recent.push(built);
        Ok(uri)
    })
}

/// URIs built per thread, kept: building one (the URL, then parsing it) took ~900
/// instructions, a clone takes a tenth.
const RECENT_URIS_KEPT: usize = 16;

/// A URI [`upstream_uri`] built, with what it was built from.
struct BuiltUri {
    base_url: Box<str>,
    path: Box<str>,
    query: Option<Box<str>>,
    uri: http::Uri,
}

impl BuiltUri {
    fn is(&self, base_url: &str, path: &str, query: Option<&str>) -> bool {
        *self.base_url == *base_url && *self.path == *path && self.query.as_deref() == query
    }
}

thread_local! {
    static RECENT_URIS: std::cell::RefCell<Vec<BuiltUri>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn listed_in_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// The client's headers that go upstream as they are, read from the client's own map when
/// the request is written: no copy of the map is made.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    client: &'a HeaderMap,
    platform: Platform,
    /// Looked up once: most requests name no header in `Connection`.
    has_connection: bool,
}

impl<'a> Forwarded<'a> {
    pub fn new(client: &'a HeaderMap, account: &Account) -> Self {
        Forwarded {
            client,
            platform: account.platform,
            has_connection: client.contains_key(header::CONNECTION),
        }
    }

    /// Whether the client's header `name` goes upstream unchanged.
    fn forwards(&self, name: &HeaderName) -> bool {
        let lower = name.as_str();
        !(REQUEST_HEADERS_NOT_FORWARDED.contains(&lower)
            // Anthropic's own headers mean nothing to an OpenAI-compatible server.
            || (self.platform == Platform::Openai && lower.starts_with("anthropic-"))
            // An OAuth token needs its flag among the client's: the merged list goes instead.
            || (self.platform == Platform::Claude && lower == "anthropic-beta")
            // The relay reads usage from answers: ask for them uncompressed.
            || lower == "accept-encoding"
            || (self.has_connection && listed_in_connection(self.client, name)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + '_ {
        self.client.iter().filter(|(name, _)| self.forwards(name))
    }
}

/// The client's headers as they go upstream, with the account's credential: what
/// [`Forwarded`] passes on, then [`account_headers`].
pub fn upstream_headers(client: &HeaderMap, account: &Account, secret: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in Forwarded::new(client, account).iter() {
        headers.append(name.clone(), value.clone());
    }
    headers.extend(account_headers(client, account, secret));
    headers
}

/// What the relay adds to the client's headers for `account`: the API version the client
/// did not give, the credential, and for an OAuth token the client's beta flags with its own.
pub fn account_headers(client: &HeaderMap, account: &Account, secret: &str) -> HeaderMap {
    let openai = account.platform == Platform::Openai;
    let mut headers = HeaderMap::new();
    if !openai && !client.contains_key(&ANTHROPIC_VERSION) {
        headers.insert(
            ANTHROPIC_VERSION.clone(),
            HeaderValue::from_static("2023-06-01"),
        );
    }
    match account.platform {
        Platform::Openai => {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {secret}")) {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        Platform::Claude => {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {secret}")) {
                headers.insert(header::AUTHORIZATION, value);
            }
            for value in client.get_all(ANTHROPIC_BETA) {
                headers.append(ANTHROPIC_BETA, value.clone());
            }
            merge_beta(&mut headers, OAUTH_BETA);
        }
        Platform::ClaudeConsole => {
            if let Ok(value) = HeaderValue::from_str(secret) {
                headers.insert(X_API_KEY.clone(), value);
            }
        }
    }
    headers
}

/// Adds `flag` to the comma-separated `anthropic-beta` list unless it is there already,
/// keeping every flag the client sent.
pub fn merge_beta(headers: &mut HeaderMap, flag: &str) {
    let existing: Vec<String> = headers
        .get_all(ANTHROPIC_BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if existing.iter().any(|f| f == flag) {
        return;
    }
    let mut merged = existing.join(",");
    if !merged.is_empty() {
        merged.push(',');
    }
    merged.push_str(flag);
    if let Ok(value) = HeaderValue::from_str(&merged) {
        headers.insert(ANTHROPIC_BETA, value);
    }
}

/// The upstream answer's headers as they go back to the client.
pub fn client_headers(mut headers: HeaderMap) -> HeaderMap {
    // Stripped in place: the answer's map is the client's, without a copy of every header.
    // Names listed in `Connection` are read before `Connection` itself goes.
    let listed: Vec<HeaderName> = if headers.contains_key(header::CONNECTION) {
        headers
            .keys()
            .filter(|name| listed_in_connection(&headers, name))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    for name in &listed {
        headers.remove(name);
    }
    // An answer carries few of the names never forwarded (often only `content-length`): its
    // names are compared with them, which costs less than looking each of them up in the map,
    // and only those present are removed.
    while let Some(name) = headers
        .keys()
        .find(|name| RESPONSE_HEADERS_NOT_FORWARDED.contains(name))
        .cloned()
    {
        headers.remove(&name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(platform: Platform) -> Account {
        Account {
            id: 1,
            name: "a".to_owned(),
            platform,
            base_url: "http://127.0.0.1:1".to_owned(),
            group_id: 1,
            priority: 1,
            weight: 1,
            enabled: true,
            proxy_url: None,
            model_allowlist: Vec::new(),
            model_mapping: Default::default(),
            max_concurrency: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn the_client_headers_pass_as_they_are_and_the_account_adds_its_own() {
        let mut client = HeaderMap::new();
        client.insert("x-app", HeaderValue::from_static("cli"));
        client.insert("x-api-key", HeaderValue::from_static("relay-key"));
        client.insert("accept-encoding", HeaderValue::from_static("gzip"));
        client.append("anthropic-beta", HeaderValue::from_static("a, b"));
        client.append("anthropic-beta", HeaderValue::from_static("c"));
        let names = |account: &Account| -> Vec<&str> {
            Forwarded::new(&client, account)
                .iter()
                .map(|(name, _)| name.as_str())
                .collect()
        };

        // An OAuth token: the client's beta flags go once, merged with the token's.
        let oauth = account(Platform::Claude);
        assert_eq!(names(&oauth), ["x-app"]);
        let added = account_headers(&client, &oauth, "token");
        assert_eq!(added["authorization"], "Bearer token");
        assert_eq!(added["anthropic-beta"], "a,b,c,oauth-2025-04-20");
        assert_eq!(added.get_all("anthropic-beta").iter().count(), 1);
        assert_eq!(added["anthropic-version"], "2023-06-01");

        let console = account(Platform::ClaudeConsole);
        assert_eq!(
            names(&console),
            ["x-app", "anthropic-beta", "anthropic-beta"]
        );
        let added = account_headers(&client, &console, "sk-a");
        assert_eq!(added["x-api-key"], "sk-a");
        assert!(!added.contains_key("anthropic-beta"));

        let openai = account(Platform::Openai);
        assert_eq!(names(&openai), ["x-app"]);
        let added = account_headers(&client, &openai, "sk-o");
        assert_eq!(added["authorization"], "Bearer sk-o");
        assert_eq!(added.len(), 1);

        // The whole list, as one map, is the two together.
        let whole = upstream_headers(&client, &oauth, "token");
        assert_eq!(whole.len(), 4);
        assert_eq!(whole["anthropic-beta"], "a,b,c,oauth-2025-04-20");
    }

    #[test]
    fn headers_named_in_connection_stay_on_their_hop() {
        let account = account(Platform::ClaudeConsole);
        let mut client = HeaderMap::new();
        client.insert("x-app", HeaderValue::from_static("cli"));
        client.insert("x-hop", HeaderValue::from_static("1"));
        let plain = upstream_headers(&client, &account, "sk-a");
        assert!(plain.contains_key("x-hop") && plain.contains_key("x-app"));
        client.insert("connection", HeaderValue::from_static("keep-alive, X-Hop"));
        let upstream = upstream_headers(&client, &account, "sk-a");
        assert!(!upstream.contains_key("x-hop") && !upstream.contains_key("connection"));
        assert_eq!(upstream["x-app"], "cli");
        assert_eq!(upstream["x-api-key"], "sk-a");

        let mut answer = HeaderMap::new();
        answer.insert("request-id", HeaderValue::from_static("req_1"));
        answer.insert("x-hop", HeaderValue::from_static("1"));
        assert!(client_headers(answer.clone()).contains_key("x-hop"));
        answer.insert("connection", HeaderValue::from_static("x-hop"));
        answer.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let back = client_headers(answer);
        assert!(!back.contains_key("x-hop") && !back.contains_key("connection"));
        assert!(!back.contains_key("transfer-encoding"));
        assert_eq!(back["request-id"], "req_1");
    }

    #[test]
    fn no_hop_by_hop_header_of_an_answer_reaches_the_client() {
        let mut answer = HeaderMap::new();
        for name in &RESPONSE_HEADERS_NOT_FORWARDED {
            answer.append(name.clone(), HeaderValue::from_static("1"));
            // A name given twice goes with all its values.
            answer.append(name.clone(), HeaderValue::from_static("2"));
        }
        answer.insert("content-type", HeaderValue::from_static("application/json"));
        answer.insert(
            "anthropic-ratelimit-requests-remaining",
            HeaderValue::from_static("9"),
        );
        let back = client_headers(answer);
        let mut kept: Vec<&str> = back.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            ["anthropic-ratelimit-requests-remaining", "content-type"]
        );
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn url_joins_base_path_and_query() {
        assert_eq!(
            upstream_url(
                "https://api.anthropic.com/",
                "/v1/messages",
                Some("beta=true")
            ),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
        assert_eq!(
            upstream_url("http://h:1/root", "/v1/models", None),
            "http://h:1/root/v1/models"
        );
    }

    #[test]
    fn beta_flags_are_merged_not_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "anthropic-beta",
            HeaderValue::from_static("claude-code-20250219, interleaved-thinking-2025-05-14"),
        );
        merge_beta(&mut headers, OAUTH_BETA);
        assert_eq!(
            headers["anthropic-beta"],
            "claude-code-20250219,interleaved-thinking-2025-05-14,oauth-2025-04-20"
        );
        merge_beta(&mut headers, OAUTH_BETA);
        assert_eq!(
            headers["anthropic-beta"],
            "claude-code-20250219,interleaved-thinking-2025-05-14,oauth-2025-04-20"
        );
    }

    #[test]
    fn a_kept_uri_is_used_only_for_what_it_was_built_from() {
        // More bases than are kept, twice over: kept ones are found, evicted ones rebuilt.
        for _ in 0..2 {
            for n in 0..(RECENT_URIS_KEPT + 4) {
                let base = format!("http://upstream-{n}.example:8080/");
                let beta = upstream_uri(&base, "/v1/messages", Some("beta=true")).unwrap();
                assert_eq!(
                    beta.to_string(),
                    format!("http://upstream-{n}.example:8080/v1/messages?beta=true")
                );
                for query in [None, Some("")] {
                    let plain = upstream_uri(&base, "/v1/messages", query).unwrap();
                    assert_eq!(
                        plain.to_string(),
                        format!("http://upstream-{n}.example:8080/v1/messages")
                    );
                }
                let models = upstream_uri(&base, "/v1/models", None).unwrap();
                assert_eq!(models.path(), "/v1/models");
            }
        }
        for _ in 0..2 {
            let error = upstream_uri("http://bad host", "/v1/messages", None).unwrap_err();
            assert!(error.contains("base_url"), "{error}");
        }
    }
}

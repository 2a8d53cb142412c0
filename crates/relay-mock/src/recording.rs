//! What the mock received, so that tests can assert what the relay actually sent upstream
//! (headers passed through, body unchanged, which account was tried how often).

use std::collections::HashMap;

use bytes::Bytes;

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `POST`, `GET`, …
    pub method: String,
    /// The path without the query string, e.g. `/v1/messages`.
    pub path: String,
    /// The raw query string without `?`, e.g. `beta=true`.
    pub query: Option<String>,
    /// Every header in arrival order, names in lower case, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body exactly as received.
    pub body: Bytes,
    /// The `x-api-key` value, else the `Authorization: Bearer` token, else none.
    pub credential: Option<String>,
}

impl RecordedRequest {
    /// The first value of a header; the name is matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header_name, _)| header_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every value of a header, in arrival order (`anthropic-beta` may be sent several times).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(header_name, _)| header_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The body parsed as JSON, for assertions on what the relay forwarded.
    pub fn json_body(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The log of received requests plus per-credential counts.
///
/// Counts are kept even when full recording is off, because they cost one map lookup and are
/// what most failover tests assert.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    requests: Vec<RecordedRequest>,
    count_by_credential: HashMap<String, usize>,
    total_count: usize,
}

impl RequestLog {
    pub(crate) fn count(&mut self, credential: Option<&str>) {
        self.total_count += 1;
        if let Some(credential) = credential {
            match self.count_by_credential.get_mut(credential) {
                Some(count) => *count += 1,
                None => {
                    self.count_by_credential.insert(credential.to_owned(), 1);
                }
            }
        }
    }

    pub(crate) fn record(&mut self, request: RecordedRequest) {
        self.requests.push(request);
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.clone()
    }

    pub(crate) fn requests_for(&self, credential: &str) -> Vec<RecordedRequest> {
        self.requests
            .iter()
            .filter(|request| request.credential.as_deref() == Some(credential))
            .cloned()
            .collect()
    }

    pub(crate) fn count_for(&self, credential: &str) -> usize {
        self.count_by_credential
            .get(credential)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn total_count(&self) -> usize {
        self.total_count
    }

    pub(crate) fn counts_by_credential(&self) -> &HashMap<String, usize> {
        &self.count_by_credential
    }

    pub(crate) fn clear(&mut self) {
        self.requests.clear();
        self.count_by_credential.clear();
        self.total_count = 0;
    }
}

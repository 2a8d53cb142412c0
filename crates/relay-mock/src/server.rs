//! The HTTP side of the mock: routes, per-request behaviour, and paced or broken bodies.
//!
//! Every `/v1/*` request is counted (and recorded, unless recording is off) before its
//! behaviour runs, so even a request that hangs forever shows up in the log. The behaviour is
//! then taken from the [`ScriptBook`] under a short lock that is never held across `.await`.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{watch, Notify};

use crate::answers::{
    count_tokens_for_body, error_envelope, models_page, rfc3339_from_now, status_for_error_type,
    stream_error_event, PreparedAnswers,
};
use crate::behavior::{Behavior, ControlScript};
use crate::config::{MockConfig, DEFAULT_MOCK_MODEL};
use crate::oauth::{oauth_error, token_answer, IssuedTokens, OAuthBook, TokenRequest};
use crate::recording::{RecordedRequest, RequestLog};
use crate::scripts::ScriptBook;

/// Bodies larger than this are refused; generous so that benchmarks with big prompts (images)
/// are never limited by the mock.
const REQUEST_BODY_LIMIT_BYTES: usize = 256 * 1024 * 1024;

const CONTENT_TYPE_JSON: &str = "application/json";
const CONTENT_TYPE_EVENT_STREAM: &str = "text/event-stream; charset=utf-8";

/// Takes a lock even if a panicking test thread poisoned it: the guarded data stays consistent
/// because no method leaves it half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the mock's handlers share.
#[derive(Debug)]
pub(crate) struct MockState {
    pub(crate) config: MockConfig,
    prepared_answers: PreparedAnswers,
    pub(crate) scripts: Mutex<ScriptBook>,
    pub(crate) request_log: Mutex<RequestLog>,
    /// Woken on every counted request, so tests can wait for "the upstream got it" instead of
    /// sleeping.
    pub(crate) request_arrived: Notify,
    pub(crate) oauth: Mutex<OAuthBook>,
    pub(crate) oauth_delay: Mutex<Duration>,
    pub(crate) oauth_refresh_count: AtomicUsize,
    answer_counter: AtomicU64,
    /// TCP connections accepted so far.
    pub(crate) connections_accepted: AtomicUsize,
    /// Turns `true` (or loses its sender) when the mock shuts down; hanging and stalled answers
    /// watch it so that shutdown never waits on them.
    shutdown_receiver: watch::Receiver<bool>,
}

impl MockState {
    pub(crate) fn new(config: MockConfig, shutdown_receiver: watch::Receiver<bool>) -> MockState {
        MockState {
            prepared_answers: PreparedAnswers::new(&config),
            config,
            scripts: Mutex::new(ScriptBook::default()),
            request_log: Mutex::new(RequestLog::default()),
            request_arrived: Notify::new(),
            oauth: Mutex::new(OAuthBook::default()),
            oauth_delay: Mutex::new(Duration::ZERO),
            oauth_refresh_count: AtomicUsize::new(0),
            answer_counter: AtomicU64::new(0),
            connections_accepted: AtomicUsize::new(0),
            shutdown_receiver,
        }
    }

    /// Resolves once the mock is shutting down.
    async fn shutdown_requested(&self) {
        let mut receiver = self.shutdown_receiver.clone();
        // An error means the sender is gone, which is a shutdown too.
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }

    /// Counts the request, records it when recording is on, and wakes waiting tests.
    fn note_request(
        &self,
        parts: &axum::http::request::Parts,
        body: &Bytes,
        credential: Option<&str>,
    ) {
        {
            let mut request_log = lock(&self.request_log);
            request_log.count(credential);
            if self.config.record {
                request_log.record(RecordedRequest {
                    method: parts.method.as_str().to_owned(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(name, value)| {
                            (
                                name.as_str().to_owned(),
                                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: body.clone(),
                    credential: credential.map(str::to_owned),
                });
            }
        }
        self.request_arrived.notify_waiters();
    }

    fn next_answer_number(&self) -> u64 {
        self.answer_counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The credential a request carries: `x-api-key`, else the token of `Authorization: Bearer`.
pub(crate) fn credential_of(headers: &HeaderMap) -> Option<&str> {
    if let Some(api_key) = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
    {
        return Some(api_key.trim());
    }
    let authorization = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The router of the mock: Anthropic's routes, the OAuth token endpoint and the demo control
/// API.
pub(crate) fn mock_router(state: Arc<MockState>) -> Router {
    Router::new()
        .route(
            "/v1/messages",
            post(
                |State(state): State<Arc<MockState>>, request: Request| async move {
                    answer_api_request(&state, request, ApiRoute::Messages).await
                },
            ),
        )
        .route(
            "/v1/messages/count_tokens",
            post(
                |State(state): State<Arc<MockState>>, request: Request| async move {
                    answer_api_request(&state, request, ApiRoute::CountTokens).await
                },
            ),
        )
        .route(
            "/v1/models",
            get(
                |State(state): State<Arc<MockState>>, request: Request| async move {
                    // OpenAI's clients send a bearer token and nothing of Anthropic's.
                    let headers = request.headers();
                    let openai = headers.contains_key("authorization")
                        && !headers.contains_key("anthropic-version")
                        && !headers.contains_key("x-api-key");
                    let route = if openai {
                        ApiRoute::OpenAiModels
                    } else {
                        ApiRoute::Models
                    };
                    answer_api_request(&state, request, route).await
                },
            ),
        )
        .route(
            "/v1/chat/completions",
            post(
                |State(state): State<Arc<MockState>>, request: Request| async move {
                    answer_api_request(&state, request, ApiRoute::ChatCompletions).await
                },
            ),
        )
        .route(
            "/v1/oauth/token",
            post(
                |State(state): State<Arc<MockState>>, request: Request| async move {
                    answer_oauth_token_request(&state, request).await
                },
            ),
        )
        .route("/_mock/script", post(answer_control_script))
        .route("/_mock/requests", get(answer_control_requests))
        .fallback(
            |State(state): State<Arc<MockState>>, request: Request| async move {
                answer_unknown_route(&state, request).await
            },
        )
        .with_state(state)
}

/// The scriptable routes: Anthropic's, and the OpenAI-compatible ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiRoute {
    Messages,
    CountTokens,
    Models,
    ChatCompletions,
    OpenAiModels,
}

/// What a normal answer consists of, before a behaviour decides how (or whether) it is
/// delivered.
enum SuccessfulAnswer {
    Json(Bytes),
    EventStream(Vec<Bytes>),
}

/// How a paced body ends once its pieces are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnding {
    /// The body ends normally.
    Finish,
    /// The connection is torn down without ending the body.
    Drop,
    /// Nothing more is sent until the mock shuts down.
    Stall,
}

/// The fields of a Messages request the mock needs; everything else is ignored, but the whole
/// body must still be valid JSON (as Anthropic requires).
#[derive(Deserialize)]
struct MessagesRequestView {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

async fn read_body(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, REQUEST_BODY_LIMIT_BYTES)
        .await
        .map_err(|_| {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "Request exceeds the maximum allowed size, or its body could not be read.",
                None,
            )
        })
}

async fn answer_api_request(state: &MockState, request: Request, route: ApiRoute) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let credential = credential_of(&parts.headers);
    state.note_request(&parts, &body, credential);
    let behavior = lock(&state.scripts).next_behavior(credential);
    let answer_number = state.next_answer_number();
    let request_id = format!("req_mock_{answer_number:016x}");
    let request_id = Some(request_id.as_str());

    match behavior {
        Behavior::Status {
            status,
            headers,
            body,
        } => scripted_status_response(status, &headers, body, request_id),
        Behavior::RateLimited {
            retry_after_secs,
            reset_in_secs,
        } => rate_limited_response(retry_after_secs, reset_in_secs, request_id),
        Behavior::Overloaded => error_response(
            status_from_u16(529),
            "overloaded_error",
            "Overloaded",
            request_id,
        ),
        Behavior::ServerError(status) => error_response(
            status_from_u16(status),
            "api_error",
            "Internal server error",
            request_id,
        ),
        Behavior::Unauthorized => error_response(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
            request_id,
        ),
        Behavior::BadRequest => error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The mock upstream was scripted to refuse this request.",
            request_id,
        ),
        Behavior::Hang => {
            state.shutdown_requested().await;
            shutting_down_response(request_id)
        }
        behavior_with_answer => {
            // The remaining behaviours deliver (part of) a normal answer, which needs a valid
            // body, exactly as Anthropic would refuse malformed JSON.
            match build_successful_answer(state, route, &body, answer_number) {
                Ok(answer) => {
                    deliver_with_behavior(state, behavior_with_answer, answer, request_id).await
                }
                Err(error) => invalid_json_response(&error),
            }
        }
    }
}

/// Delivers a normal answer the way `behavior` says: whole, late, cut, stalled, or replaced by
/// an in-band error event.
async fn deliver_with_behavior(
    state: &MockState,
    behavior: Behavior,
    answer: SuccessfulAnswer,
    request_id: Option<&str>,
) -> Response {
    match behavior {
        Behavior::SlowFirstByte(delay) => {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = state.shutdown_requested() => return shutting_down_response(request_id),
            }
            deliver(state, answer, None, BodyEnding::Finish, request_id)
        }
        Behavior::DropMidStream { after_events } => deliver(
            state,
            answer,
            Some(after_events),
            BodyEnding::Drop,
            request_id,
        ),
        Behavior::StallMidStream { after_events } => deliver(
            state,
            answer,
            Some(after_events),
            BodyEnding::Stall,
            request_id,
        ),
        Behavior::StreamErrorEvent { error_type } => match answer {
            SuccessfulAnswer::EventStream(_) => {
                let error_event =
                    stream_error_event(&error_type, message_for_error_type(&error_type));
                deliver(
                    state,
                    SuccessfulAnswer::EventStream(vec![error_event]),
                    None,
                    BodyEnding::Finish,
                    request_id,
                )
            }
            SuccessfulAnswer::Json(_) => error_response(
                status_from_u16(status_for_error_type(&error_type)),
                &error_type,
                message_for_error_type(&error_type),
                request_id,
            ),
        },
        // `Ok`, and behaviours that answer without a body (handled by the caller).
        _ => deliver(state, answer, None, BodyEnding::Finish, request_id),
    }
}

/// The normal answer of a route, or the 400 Anthropic gives for a body that is not valid JSON.
fn build_successful_answer(
    state: &MockState,
    route: ApiRoute,
    body: &Bytes,
    answer_number: u64,
) -> Result<SuccessfulAnswer, serde_json::Error> {
    match route {
        ApiRoute::Messages => {
            let view: MessagesRequestView = serde_json::from_slice(body)?;
            let model = match view.model.as_deref() {
                Some(model) if state.config.model_echo => model,
                _ => DEFAULT_MOCK_MODEL,
            };
            let message_id = format!("msg_mock_{answer_number:016x}");
            if view.stream.unwrap_or(false) {
                Ok(SuccessfulAnswer::EventStream(
                    state.prepared_answers.stream_events(&message_id, model),
                ))
            } else {
                Ok(SuccessfulAnswer::Json(
                    state.prepared_answers.message_json(&message_id, model),
                ))
            }
        }
        ApiRoute::CountTokens => {
            serde_json::from_slice::<serde::de::IgnoredAny>(body)?;
            Ok(SuccessfulAnswer::Json(Bytes::from(
                json!({"input_tokens": count_tokens_for_body(body)}).to_string(),
            )))
        }
        ApiRoute::Models => Ok(SuccessfulAnswer::Json(models_page())),
        ApiRoute::ChatCompletions => {
            let view: MessagesRequestView = serde_json::from_slice(body)?;
            let model = view.model.as_deref().unwrap_or(DEFAULT_MOCK_MODEL);
            let id = format!("chatcmpl-mock-{answer_number:016x}");
            if view.stream.unwrap_or(false) {
                Ok(SuccessfulAnswer::EventStream(
                    crate::openai::chat_completion_chunks(&state.config, &id, model),
                ))
            } else {
                Ok(SuccessfulAnswer::Json(crate::openai::chat_completion(
                    &state.config,
                    &id,
                    model,
                )))
            }
        }
        ApiRoute::OpenAiModels => Ok(SuccessfulAnswer::Json(crate::openai::models_list())),
    }
}

fn invalid_json_response(error: &serde_json::Error) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        &format!("The request body is not valid JSON: {error}"),
        None,
    )
}

/// Sends a normal answer, optionally cut after `cut_after_events` stream events and ended as
/// `ending`. A JSON answer that is cut at all sends its first half.
fn deliver(
    state: &MockState,
    answer: SuccessfulAnswer,
    cut_after_events: Option<usize>,
    ending: BodyEnding,
    request_id: Option<&str>,
) -> Response {
    let (content_type, pieces) = match answer {
        SuccessfulAnswer::Json(json_body)
            if cut_after_events.is_none() && ending == BodyEnding::Finish =>
        {
            let mut response = Response::new(Body::from(json_body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
            set_request_id(&mut response, request_id);
            return response;
        }
        SuccessfulAnswer::Json(json_body) => {
            let first_half = json_body.slice(..json_body.len() / 2);
            (CONTENT_TYPE_JSON, vec![first_half])
        }
        SuccessfulAnswer::EventStream(mut events) => {
            if let Some(cut_after_events) = cut_after_events {
                events.truncate(cut_after_events);
            }
            (CONTENT_TYPE_EVENT_STREAM, events)
        }
    };
    let body = paced_body(
        pieces,
        state.config.chunk_delay,
        ending,
        state.shutdown_receiver.clone(),
    );
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_request_id(&mut response, request_id);
    response
}

/// A body that yields each piece as its own frame (so each is flushed on its own), waiting
/// `delay` on tokio's clock between pieces, then ends as `ending` says.
fn paced_body(
    pieces: Vec<Bytes>,
    delay: Duration,
    ending: BodyEnding,
    shutdown_receiver: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    struct PacedBody {
        pieces: std::vec::IntoIter<Bytes>,
        delay: Duration,
        sent_any_piece: bool,
        ending: BodyEnding,
        shutdown_receiver: watch::Receiver<bool>,
    }
    let paced = PacedBody {
        pieces: pieces.into_iter(),
        delay,
        sent_any_piece: false,
        ending,
        shutdown_receiver,
    };
    futures_util::stream::unfold(Some(paced), |paced| async move {
        let mut paced = paced?;
        if let Some(piece) = paced.pieces.next() {
            if paced.sent_any_piece && !paced.delay.is_zero() {
                tokio::time::sleep(paced.delay).await;
            }
            paced.sent_any_piece = true;
            return Some((Ok(piece), Some(paced)));
        }
        match paced.ending {
            BodyEnding::Finish => None,
            BodyEnding::Drop => {
                // hyper discards buffered bytes when a body fails, so give it a turn to flush
                // the pieces already yielded before tearing the connection down.
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                Some((
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the mock upstream dropped the connection mid-stream as scripted",
                    )),
                    None,
                ))
            }
            BodyEnding::Stall => {
                let _ = paced.shutdown_receiver.wait_for(|stopping| *stopping).await;
                Some((
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the mock upstream shut down during a scripted stall",
                    )),
                    None,
                ))
            }
        }
    })
}

fn rate_limited_response(
    retry_after_secs: Option<u64>,
    reset_in_secs: Option<u64>,
    request_id: Option<&str>,
) -> Response {
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "This request would exceed your account's rate limit. Please try again later.",
        request_id,
    );
    let headers = response.headers_mut();
    if let Some(retry_after_secs) = retry_after_secs {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    for remaining in [
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-tokens-remaining",
    ] {
        headers.insert(HeaderName::from_static(remaining), HeaderValue::from(0u64));
    }
    if let Some(reset_in_secs) = reset_in_secs {
        let reset_at = rfc3339_from_now(Duration::from_secs(reset_in_secs));
        if let Ok(reset_at) = HeaderValue::try_from(reset_at) {
            for reset in [
                "anthropic-ratelimit-requests-reset",
                "anthropic-ratelimit-tokens-reset",
            ] {
                headers.insert(HeaderName::from_static(reset), reset_at.clone());
            }
        }
    }
    response
}

fn scripted_status_response(
    status: u16,
    headers: &[(String, String)],
    body: String,
    request_id: Option<&str>,
) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status_from_u16(status);
    set_request_id(&mut response, request_id);
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => {
                tracing::warn!(header = %name, "skipping a scripted header that is not valid HTTP")
            }
        }
    }
    response
}

/// An error in Anthropic's envelope with the given status.
pub(crate) fn error_response(
    status: StatusCode,
    error_type: &str,
    message: &str,
    request_id: Option<&str>,
) -> Response {
    let mut response = Response::new(Body::from(error_envelope(error_type, message)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
    set_request_id(&mut response, request_id);
    response
}

fn shutting_down_response(request_id: Option<&str>) -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "The mock upstream is shutting down.",
        request_id,
    )
}

fn set_request_id(response: &mut Response, request_id: Option<&str>) {
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("request-id"), value);
    }
}

/// Any status a test asks for; numbers HTTP cannot carry become 500.
fn status_from_u16(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn message_for_error_type(error_type: &str) -> &'static str {
    match error_type {
        "overloaded_error" => "Overloaded",
        "rate_limit_error" => "Rate limited",
        "api_error" => "Internal server error",
        _ => "The mock upstream was scripted to fail this request.",
    }
}

async fn answer_oauth_token_request(state: &MockState, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    state.note_request(&parts, &body, credential_of(&parts.headers));
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let Some(token_request) = TokenRequest::parse(content_type, &body) else {
        return oauth_error_response("invalid_request", "the body is neither JSON nor a form");
    };
    if token_request.grant_type.as_deref() != Some("refresh_token") {
        return oauth_error_response(
            "unsupported_grant_type",
            "only grant_type=refresh_token is supported",
        );
    }
    let Some(refresh_token) = token_request.refresh_token else {
        return oauth_error_response("invalid_request", "refresh_token is missing");
    };
    state.oauth_refresh_count.fetch_add(1, Ordering::SeqCst);
    let delay = *lock(&state.oauth_delay);
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = state.shutdown_requested() => return shutting_down_response(None),
        }
    }
    let issued: Option<IssuedTokens> = lock(&state.oauth).redeem(&refresh_token);
    match issued {
        Some(tokens) => {
            let mut response = Response::new(Body::from(token_answer(&tokens)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
            response
        }
        None => oauth_error_response(
            "invalid_grant",
            "the refresh token is unknown, expired or already used",
        ),
    }
}

fn oauth_error_response(error: &str, description: &str) -> Response {
    let mut response = Response::new(Body::from(oauth_error(error, description)));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
    response
}

async fn answer_unknown_route(state: &MockState, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = read_body(body).await.unwrap_or_default();
    state.note_request(&parts, &body, credential_of(&parts.headers));
    error_response(
        StatusCode::NOT_FOUND,
        "not_found_error",
        &format!("Not found: {} {}", parts.method, parts.uri.path()),
        None,
    )
}

/// `POST /_mock/script`: scripts a credential (or the global default) over HTTP for demos.
async fn answer_control_script(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let script: ControlScript = match serde_json::from_slice(&body) {
        Ok(script) => script,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid script: {error}"),
                None,
            )
        }
    };
    let behavior = match script.behavior() {
        Ok(behavior) => behavior,
        Err(message) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &message,
                None,
            )
        }
    };
    {
        let mut scripts = lock(&state.scripts);
        match (script.credential.as_deref(), script.count) {
            (Some(credential), Some(count)) => {
                for _ in 0..count {
                    scripts.push(credential, behavior.clone());
                }
            }
            (Some(credential), None) => scripts.set_default(credential, behavior),
            (None, None) => scripts.set_global_default(behavior),
            (None, Some(_)) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "`count` queues one-shot behaviours and needs a `credential`",
                    None,
                )
            }
        }
    }
    json_response(&json!({"ok": true}))
}

/// `GET /_mock/requests`: how many requests each credential made, for demos.
async fn answer_control_requests(State(state): State<Arc<MockState>>) -> Response {
    let (total, by_credential) = {
        let request_log = lock(&state.request_log);
        let by_credential: BTreeMap<String, usize> = request_log
            .counts_by_credential()
            .iter()
            .map(|(credential, count)| (credential.clone(), *count))
            .collect();
        (request_log.total_count(), by_credential)
    };
    json_response(&json!({"total": total, "by_credential": by_credential}))
}

fn json_response(value: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
    response
}

/// Runs the router on `listener` with TCP_NODELAY on every accepted socket (so small SSE frames
/// leave at once and the mock is never what a benchmark measures) until `shutdown_signal`
/// resolves; then stops accepting and lets open connections finish.
pub(crate) async fn run_server(
    listener: tokio::net::TcpListener,
    state: Arc<MockState>,
    shutdown_signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::ListenerExt;
    let counted = Arc::clone(&state);
    let listener = listener.tap_io(move |tcp_stream| {
        counted
            .connections_accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = tcp_stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY on a mock upstream connection");
        }
    });
    axum::serve(listener, mock_router(state))
        .with_graceful_shutdown(shutdown_signal)
        .await
}

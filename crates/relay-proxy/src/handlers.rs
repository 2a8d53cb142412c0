//! The client-facing routes: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`, the
//! same under `/claude-code`, and `/healthz`, `/readyz`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use relay_core::body::{inspect_request, session_key_from_user_id};

use crate::auth::{authenticate, check_limits, check_model};
use crate::error::RelayError;
use crate::forward::{forward, Endpoint, ForwardRequest};
use crate::state::RelayState;

/// How much of an oversized or refused body is read and thrown away so that the client
/// (which writes its whole body before it reads) actually receives the error answer.
const MAX_DRAIN_BYTES: usize = 256 * 1024 * 1024;

pub fn data_plane_router(state: Arc<RelayState>) -> Router {
    let api = Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models));
    Router::new()
        .merge(api.clone())
        .nest("/claude-code", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> Response {
    json_ok(r#"{"status":"ok"}"#)
}

async fn readyz(State(state): State<Arc<RelayState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => json_ok(r#"{"status":"ready"}"#),
        Err(error) => {
            tracing::warn!(%error, "readiness check: store unreachable");
            let mut response = json_ok(r#"{"status":"unavailable","reason":"store unreachable"}"#);
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    }
}

fn json_ok(body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn messages(State(state): State<Arc<RelayState>>, request: Request) -> Response {
    serve_messages(state, request).await
}

/// `POST /v1/messages`, as the router runs it.
pub async fn serve_messages(state: Arc<RelayState>, request: Request) -> Response {
    handle(state, request.map(RequestBody::Unread), Endpoint::Messages).await
}

/// `POST /v1/messages` with its body already read (up to the body limit), for a server that
/// recognises this route before the router: the binary's does, for the one route nearly
/// every request takes.
pub async fn serve_messages_read(
    state: Arc<RelayState>,
    request: http::Request<Bytes>,
) -> Response {
    handle(state, request.map(RequestBody::Read), Endpoint::Messages).await
}

/// A request's body: still to be read, or read by the server.
enum RequestBody {
    Unread(Body),
    Read(Bytes),
}

async fn count_tokens(State(state): State<Arc<RelayState>>, request: Request) -> Response {
    handle(
        state,
        request.map(RequestBody::Unread),
        Endpoint::CountTokens,
    )
    .await
}

async fn models(State(state): State<Arc<RelayState>>, request: Request) -> Response {
    handle(state, request.map(RequestBody::Unread), Endpoint::Models).await
}

async fn handle(
    state: Arc<RelayState>,
    request: http::Request<RequestBody>,
    endpoint: Endpoint,
) -> Response {
    let started = Instant::now();
    // Time-ordered (UUIDv7): ids sort as the requests arrived, in logs and usage rows alike.
    // Written on the stack, then copied once into the shared text.
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    let request_id: Arc<str> = Arc::from(&*uuid::Uuid::now_v7().simple().encode_lower(&mut text));
    match handle_inner(&state, request, endpoint, started, &request_id).await {
        Ok(response) => response,
        Err(error) => {
            let mut response = error.into_response();
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert("x-relay-request-id", value);
            }
            response
        }
    }
}

async fn handle_inner(
    state: &Arc<RelayState>,
    request: http::Request<RequestBody>,
    endpoint: Endpoint,
    started: Instant,
    request_id: &Arc<str>,
) -> Result<Response, RelayError> {
    let (parts, body) = request.into_parts();
    let now = state.now();
    let identity = match authenticate(state, &parts.headers, now).await {
        Ok(identity) => identity,
        Err(error) => {
            if let RequestBody::Unread(body) = body {
                drain(body, MAX_DRAIN_BYTES).await;
            }
            return Err(error);
        }
    };
    let body = match body {
        RequestBody::Unread(body) => {
            read_body(body, state.settings.body_limit_bytes, &parts.headers).await?
        }
        RequestBody::Read(body) => body,
    };

    let (model, stream, user_id) = if endpoint == Endpoint::Models {
        (None, false, None)
    } else {
        let inspection = inspect_request(&body)
            .map_err(|error| RelayError::InvalidRequest(error.to_string()))?;
        (
            inspection.model,
            inspection.stream,
            inspection.metadata_user_id,
        )
    };
    // Thinking blocks the relay wrote for an `openai` account's reasoning carry no signature,
    // and no Anthropic account takes them back: they go nowhere (see `body`).
    let body = if endpoint == Endpoint::Models {
        body
    } else {
        relay_core::body::without_unsigned_thinking(&body).unwrap_or(body)
    };
    if endpoint != Endpoint::Models {
        check_model(&identity, model.as_deref())?;
    }
    check_limits(state, &identity, now).await?;

    let session_key = parts
        .headers
        .get("x-claude-code-session-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| user_id.as_deref().and_then(session_key_from_user_id));

    forward(
        state,
        ForwardRequest {
            request_id: Arc::clone(request_id),
            endpoint,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
            model,
            stream,
            session_key,
            identity,
            started,
        },
    )
    .await
}

/// Reads the whole request body into one `Bytes` (held once, re-sent from memory on every
/// attempt). Over `limit`, the rest is drained before the 413 is answered, so that a client
/// that writes its whole body first still reads the answer.
async fn read_body(
    mut body: Body,
    limit: usize,
    headers: &http::HeaderMap,
) -> Result<Bytes, RelayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        drain(body, MAX_DRAIN_BYTES).await;
        return Err(RelayError::TooLarge { limit });
    }
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            RelayError::InvalidRequest(format!("could not read the request body: {error}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                drain(body, MAX_DRAIN_BYTES).await;
                return Err(RelayError::TooLarge { limit });
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

async fn drain(mut body: Body, cap: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > cap {
                break;
            }
        }
    }
}

//! The control plane: the admin API under `/api/v1/admin` (PRODUCT.md §6).
//!
//! Every route needs `Authorization: Bearer <admin token>`; the token is compared by its
//! SHA-256 in constant time. Payloads are checked field by field so that every refusal is a
//! 400 in Anthropic's envelope naming the field. Secrets are write-only: no answer carries an
//! upstream credential, a proxy password or a relay key's hash.

mod error;
mod fallback;
mod input;
mod resources;
mod stats;
mod token;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use relay_proxy::RelayState;

pub use error::AdminError;
pub use fallback::CONFIG_SETTING;
pub use stats::{prometheus_router, prometheus_text, PROMETHEUS_CONTENT_TYPE};
pub use token::{ensure_admin_token, AdminTokenSource};

/// What the admin routes share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub relay: Arc<RelayState>,
    /// Hex SHA-256 of the admin token.
    pub admin_token_hash: Arc<str>,
    /// Serialises config changes so two PUTs never interleave read-modify-write.
    pub config_lock: Arc<tokio::sync::Mutex<()>>,
}

/// The admin router, mounted at the root (its routes start with `/api/v1/admin`).
pub fn admin_router(state: AdminState) -> Router {
    let routes = Router::new()
        .merge(resources::routes())
        .merge(fallback::routes())
        .merge(stats::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .nest("/api/v1/admin", routes)
        .with_state(state)
}

async fn require_admin(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token) if token::matches(&state.admin_token_hash, token) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(AdminError::Unauthorized("invalid admin token".to_owned())),
        None => Err(AdminError::Unauthorized(
            "missing admin token: send Authorization: Bearer <admin token>".to_owned(),
        )),
    }
}

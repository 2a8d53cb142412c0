//! The data plane: authenticates clients with relay API keys, runs the attempt loop over the
//! group's accounts, forwards each attempt upstream, streams the answer back chunk by chunk and
//! records usage on the side.
//!
//! Phases of one request (one failover rule, as in pingora): until the first byte of an
//! answer reaches the client the relay may switch accounts; after that it is committed, and a
//! broken upstream stream ends with an Anthropic `event: error` instead.

pub mod auth;
pub mod body_stream;
pub mod clock;
pub mod error;
pub mod forward;
pub mod h1;
pub mod handlers;
pub mod http_clients;
pub mod logs;
pub mod oauth;
pub mod openai;
pub mod per_thread;
pub mod probe;
pub mod registry;
pub mod settings;
pub mod shared;
pub mod state;
pub mod upstream;
pub mod usage;
pub mod view;

pub use error::RelayError;
pub use handlers::data_plane_router;
pub use settings::RelaySettings;
pub use state::RelayState;

/// The current time in Unix milliseconds. The only wall clock of the data plane; the core
/// receives time as an argument.
pub fn now_millis() -> relay_core::UnixMillis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

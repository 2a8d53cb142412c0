//! A scriptable mock of the Anthropic API, for tests, benchmarks and demos.
//!
//! One mock impersonates many upstream accounts at once: the behaviour of each request is
//! chosen by the credential it carries (`x-api-key`, or `Authorization: Bearer`), so a test can
//! point several relay accounts with different keys at one mock and script each separately.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use relay_mock::{Behavior, MockConfig, MockUpstream};
//!
//! let mock = MockUpstream::start(MockConfig::default()).await?;
//! mock.push("sk-first", Behavior::RateLimited { retry_after_secs: Some(30), reset_in_secs: None });
//! mock.set_default("sk-second", Behavior::Ok);
//! // ... point the relay's accounts at mock.base_url() and send a request through it ...
//! assert_eq!(mock.count_for("sk-first"), 1);
//! mock.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Routes: `POST /v1/messages` (JSON, or Anthropic's exact SSE sequence when `"stream": true`),
//! `POST /v1/messages/count_tokens`, `GET /v1/models`, `POST /v1/oauth/token` (single-use
//! refresh tokens), and for demos `POST /_mock/script` and `GET /_mock/requests`.
//!
//! Architecture Invariant: the mock never reads the wall clock for pacing, only tokio's clock,
//! so tests with paused time observe stream chunking and delays without waiting for real. The
//! wall clock is read for one thing only: the RFC 3339 `anthropic-ratelimit-*-reset` headers,
//! which are wall-clock times by definition.

mod answers;
mod behavior;
mod config;
mod oauth;
mod openai;
mod recording;
mod scripts;
mod server;
mod upstream;

pub use answers::expected_event_names;
pub use behavior::Behavior;
pub use config::{MockConfig, MockUsage, DEFAULT_MOCK_MODEL, DEFAULT_MOCK_TEXT};
pub use recording::RecordedRequest;
pub use upstream::{serve, MockUpstream};

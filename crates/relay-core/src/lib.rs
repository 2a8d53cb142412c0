//! The pure domain core of the relay.
//!
//! Everything here is deterministic: no IO, no clock of its own (callers pass `now` as
//! milliseconds since the Unix epoch), no global state, and randomness is injected.
//! The data plane, the control plane and the store build on these types.

pub mod body;
pub mod breaker;
pub mod classify;
pub mod config;
pub mod cooldown;
pub mod duration;
pub mod envelope;
pub mod health;
mod json_scan;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod pricing;
pub mod sse;
pub mod state;
pub mod strategy;

/// Milliseconds since the Unix epoch. All time in the core is expressed this way so that
/// tests can drive it without a clock.
pub type UnixMillis = i64;

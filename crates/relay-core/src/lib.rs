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

/// A hash map for lookups made on every request (accounts, groups and keys by id or digest):
/// foldhash hashes an id or a digest in a few instructions where the standard SipHash takes
/// a hundred or more. It is seeded per map like the standard one, but makes no promise
/// against chosen collisions, so its keys are never chosen by a client: ids the store
/// assigned, and digests of keys an operator issued.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

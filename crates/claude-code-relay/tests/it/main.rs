//! End-to-end tests: a real relay on 127.0.0.1:0 with a real SQLite file, in front of the
//! in-process mock upstream, driven over real HTTP.

// In tests a panic is a failed assertion; the helpers of this crate are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod admin;
mod bad_input;
mod cluster;
mod cluster_processes;
mod data_plane;
mod engine;
mod failover;
mod lifecycle;
mod logs;
mod oauth;
mod openai;
mod proxies;
mod simulation;
mod tls;
mod usage;

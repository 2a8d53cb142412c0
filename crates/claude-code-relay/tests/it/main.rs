//! End-to-end tests: a real relay on 127.0.0.1:0 with a real SQLite file, in front of the
//! in-process mock upstream, driven over real HTTP.

mod support;

mod admin;
mod bad_input;
mod data_plane;
mod failover;
mod lifecycle;
mod oauth;
mod usage;

//! The `claude-code-relay` process: configuration, wiring of the planes, the server's
//! lifecycle (graceful shutdown, usage flush) and the background tasks.

pub mod alloc;
pub mod app;
mod balance;
pub mod config;
pub mod log_line;
pub mod logging;

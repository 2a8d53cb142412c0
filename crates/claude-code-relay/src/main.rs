//! `claude-code-relay`: serve (default), check-config, mock-upstream.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use claude_code_relay::app;
use claude_code_relay::config::{Overrides, ServerConfig};
use relay_core::config::ProcessEnv;
use relay_proxy::clock::SystemClock;

/// mimalloc instead of the system allocator: the request path allocates and frees many small
/// buffers on every worker thread, where glibc's allocator took about a tenth of the relay's
/// CPU under load (BENCHMARKS.md). Plain blocks where the alignment allows (`alloc`).
#[global_allocator]
static ALLOCATOR: claude_code_relay::alloc::RelayAllocator =
    claude_code_relay::alloc::RelayAllocator;

#[derive(Debug, Parser)]
#[command(
    name = "claude-code-relay",
    version,
    about = "A self-hosted relay for Claude Code and other Anthropic-API clients, with production-grade failover."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Clone, Default, clap::Args)]
struct ServeArgs {
    /// Address to listen on (RELAY_LISTEN; default 0.0.0.0:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Database URL (DATABASE_URL; default sqlite file ./data/relay.db).
    #[arg(long)]
    database_url: Option<String>,
    /// TOML configuration file (RELAY_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve(ServeArgs),
    /// Validate the configuration (file, environment, flags) and exit.
    CheckConfig(ServeArgs),
    /// Run the scriptable mock of the Anthropic API, for demos and benchmarks.
    MockUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: String,
        /// Delay between stream events, e.g. "50ms".
        #[arg(long, default_value = "0ms")]
        chunk_delay: String,
        /// Text deltas per stream (more = longer streams).
        #[arg(long, default_value_t = 4)]
        text_chunks: usize,
        /// Do not record requests (for benchmarks).
        #[arg(long)]
        no_record: bool,
    },
}

fn overrides(args: &ServeArgs) -> Overrides {
    Overrides {
        listen: args.listen.clone(),
        database_url: args.database_url.clone(),
        config_path: args.config.clone(),
        admin_token: None,
    }
}

/// A runtime (multi-threaded or not), or the exit code when there is none.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|error| {
        eprintln!("cannot start the async runtime: {error}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        // Requests are served on worker threads of their own (`app::Serving::Workers`); this
        // thread's runtime runs the background tasks only.
        Command::Serve(args) => match runtime(false) {
            Ok(runtime) => runtime.block_on(serve(args)),
            Err(code) => code,
        },
        Command::CheckConfig(args) => match ServerConfig::load(&ProcessEnv, &overrides(&args)) {
            Ok(config) => {
                println!("configuration is valid");
                println!("  listen: {}", config.listen);
                match config.workers {
                    Some(workers) => println!("  workers: {workers}"),
                    None => println!("  workers: one per CPU"),
                }
                println!(
                    "  database: {}",
                    config
                        .database_url
                        .as_deref()
                        .map_or_else(|| "sqlite (./data/relay.db)".to_owned(), without_password)
                );
                println!(
                    "  account secrets: {}",
                    match config.encryption_key {
                        Some(_) => "sealed at rest (RELAY_ENCRYPTION_KEY)",
                        None => "stored in plain text (set RELAY_ENCRYPTION_KEY to seal them)",
                    }
                );
                println!(
                    "  fallback: {}",
                    serde_json::to_string(&config.fallback).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("invalid configuration: {error}");
                ExitCode::from(2)
            }
        },
        Command::MockUpstream {
            listen,
            chunk_delay,
            text_chunks,
            no_record,
        } => match runtime(true) {
            Ok(runtime) => runtime.block_on(mock(listen, chunk_delay, text_chunks, no_record)),
            Err(code) => code,
        },
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match ServerConfig::load(&ProcessEnv, &overrides(&args)) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let _log_writer = claude_code_relay::logging::init(config.log_format);
    let signals = ShutdownSignals::install();
    let workers = config.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN)
    });
    let serving = app::Serving::Workers(workers);
    let relay = match app::start_serving(config, None, Arc::new(SystemClock), serving).await {
        Ok(relay) => relay,
        Err(error) => {
            tracing::error!("cannot start: {error:#}");
            eprintln!("cannot start: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(token) = &relay.generated_admin_token {
        // Printed once, on the terminal only: the store keeps just its hash.
        println!("============================================================");
        println!("Generated admin token (shown only now, store it safely):");
        println!("  {token}");
        println!("Use it as: Authorization: Bearer <token> on /api/v1/admin/*");
        println!("============================================================");
    }
    tracing::info!(addr = %relay.addr, "claude-code-relay listening");
    signals.received().await;
    tracing::info!("shutting down: finishing in-flight requests");
    relay.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, registered before the relay starts listening so that a signal sent as
/// soon as it listens is handled (a handler installed later would let the default action kill
/// the process without the graceful shutdown).
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            ShutdownSignals {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            ShutdownSignals {}
        }
    }

    async fn received(self) {
        #[cfg(unix)]
        {
            let (mut terminate, mut interrupt) = (self.terminate, self.interrupt);
            let terminated = async {
                match terminate.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let interrupted = async {
                match interrupt.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = terminated => {}
                _ = interrupted => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn mock(
    listen: String,
    chunk_delay: String,
    text_chunks: usize,
    no_record: bool,
) -> ExitCode {
    let _log_writer = claude_code_relay::logging::init(claude_code_relay::config::LogFormat::Text);
    let signals = ShutdownSignals::install();
    let delay = match relay_core::duration::parse_duration(&chunk_delay) {
        Ok(delay) => delay,
        Err(error) => {
            eprintln!("--chunk-delay {chunk_delay}: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = relay_mock::MockConfig {
        chunk_delay: delay,
        text_chunks: text_chunks.max(1),
        record: !no_record,
        ..relay_mock::MockConfig::default()
    };
    println!("mock upstream listening on http://{listen}");
    match relay_mock::serve(listener, config, signals.received()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mock upstream failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A database URL as it may be shown: its password, if any, replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn database_passwords_are_never_shown() {
        assert_eq!(
            without_password("postgres://relay:s3cr3t@db.internal:5432/relay?sslmode=require"),
            "postgres://relay:***@db.internal:5432/relay?sslmode=require"
        );
        assert_eq!(
            without_password("mysql://root:p@ss@localhost/test"),
            "mysql://root:***@localhost/test"
        );
        assert_eq!(
            without_password("mysql://root@localhost/test"),
            "mysql://root@localhost/test"
        );
        assert_eq!(
            without_password("sqlite://data/relay.db"),
            "sqlite://data/relay.db"
        );
    }
}

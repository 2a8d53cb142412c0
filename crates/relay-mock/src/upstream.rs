//! The in-process handle tests hold: start the mock on an ephemeral port, script it, read what
//! it received, shut it down.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::behavior::Behavior;
use crate::config::MockConfig;
use crate::oauth::IssuedTokens;
use crate::recording::RecordedRequest;
use crate::server::{lock, run_server, MockState};

/// How long [`MockUpstream::shutdown`] lets open connections finish before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running mock upstream. Dropping it shuts the server down as well; [`MockUpstream::shutdown`]
/// also waits for that to finish.
#[derive(Debug)]
pub struct MockUpstream {
    address: SocketAddr,
    state: Arc<MockState>,
    shutdown_sender: watch::Sender<bool>,
    server_task: JoinHandle<()>,
}

impl MockUpstream {
    /// Starts a mock on `127.0.0.1` with a port chosen by the system.
    pub async fn start(config: MockConfig) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Ok(MockUpstream::start_on(listener, config).await)
    }

    /// Starts a mock on a listener the caller bound (a fixed port for demos, or any address).
    pub async fn start_on(listener: TcpListener, config: MockConfig) -> MockUpstream {
        let address = listener.local_addr().unwrap_or_else(|error| {
            tracing::error!(%error, "the mock upstream's listener has no local address");
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
        });
        let (shutdown_sender, shutdown_receiver) = watch::channel(false);
        let state = Arc::new(MockState::new(config, shutdown_receiver.clone()));
        let mut server_shutdown_receiver = shutdown_receiver;
        let shutdown_signal = async move {
            // An error means the handle was dropped, which also stops the server.
            let _ = server_shutdown_receiver
                .wait_for(|stopping| *stopping)
                .await;
        };
        let server_state = Arc::clone(&state);
        let server_task = tokio::spawn(async move {
            if let Err(error) = run_server(listener, server_state, shutdown_signal).await {
                tracing::warn!(%error, "the mock upstream stopped with an error");
            }
        });
        MockUpstream {
            address,
            state,
            shutdown_sender,
            server_task,
        }
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// The root URL to configure as an account's `base_url`, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every request carrying `credential` gets `behavior`, once its one-shot queue is empty.
    pub fn set_default(&self, credential: &str, behavior: Behavior) {
        lock(&self.state.scripts).set_default(credential, behavior);
    }

    /// The next request carrying `credential` gets `behavior`; queued behaviours are used in the
    /// order they were pushed, before the credential's default.
    pub fn push(&self, credential: &str, behavior: Behavior) {
        lock(&self.state.scripts).push(credential, behavior);
    }

    /// The behaviour of requests whose credential has no script and no naming convention
    /// (`mock-429`, …), and of requests without a credential.
    pub fn set_global_default(&self, behavior: Behavior) {
        lock(&self.state.scripts).set_global_default(behavior);
    }

    /// Removes every script (queues, defaults and the global default); conventions apply again.
    pub fn clear_scripts(&self) {
        lock(&self.state.scripts).clear();
    }

    /// Every request received, in arrival order (empty when `MockConfig::record` is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.request_log).requests()
    }

    /// The requests that carried `credential`, in arrival order.
    pub fn requests_for(&self, credential: &str) -> Vec<RecordedRequest> {
        lock(&self.state.request_log).requests_for(credential)
    }

    /// How many requests carried `credential` (counted even when recording is off).
    pub fn count_for(&self, credential: &str) -> usize {
        lock(&self.state.request_log).count_for(credential)
    }

    /// How many requests arrived, with or without a credential.
    pub fn total_count(&self) -> usize {
        lock(&self.state.request_log).total_count()
    }

    /// How many TCP connections the mock has accepted: a client that reuses its connections
    /// opens few.
    pub fn connections_accepted(&self) -> usize {
        self.state
            .connections_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets every received request and count; scripts and OAuth tokens are kept.
    pub fn clear(&self) {
        lock(&self.state.request_log).clear();
    }

    /// Waits until at least `at_least` requests carried `credential`, so a test can act once
    /// the upstream has the request (a hanging one, say) without sleeping.
    pub async fn wait_for_count(&self, credential: &str, at_least: usize) {
        self.wait_until(|mock| mock.count_for(credential) >= at_least)
            .await;
    }

    /// Waits until at least `at_least` requests arrived in total.
    pub async fn wait_for_total(&self, at_least: usize) {
        self.wait_until(|mock| mock.total_count() >= at_least).await;
    }

    async fn wait_until(&self, condition: impl Fn(&MockUpstream) -> bool) {
        loop {
            let request_arrived = self.state.request_arrived.notified();
            let mut request_arrived = std::pin::pin!(request_arrived);
            // Register interest before checking, so a request arriving in between still wakes us.
            request_arrived.as_mut().enable();
            if condition(self) {
                return;
            }
            request_arrived.await;
        }
    }

    /// A refresh with `refresh_token` answers these tokens, once: the refresh token is consumed
    /// (rotated), so using it again gets 400 `invalid_grant`, as does any token never issued.
    /// `new_refresh_token` is only valid if it is issued too.
    pub fn oauth_issue(
        &self,
        refresh_token: &str,
        access_token: &str,
        new_refresh_token: &str,
        expires_in_secs: u64,
    ) {
        lock(&self.state.oauth).issue(
            refresh_token,
            IssuedTokens {
                access_token: access_token.to_owned(),
                refresh_token: new_refresh_token.to_owned(),
                expires_in_secs,
            },
        );
    }

    /// Delays every token answer (on tokio's clock), so that concurrent refreshes overlap and a
    /// test can prove the relay sends only one.
    pub fn set_oauth_delay(&self, delay: Duration) {
        *lock(&self.state.oauth_delay) = delay;
    }

    /// How many refresh requests (`grant_type=refresh_token` with a token, valid or not) arrived.
    pub fn oauth_refresh_count(&self) -> usize {
        self.state.oauth_refresh_count.load(Ordering::SeqCst)
    }

    /// Stops accepting, ends hanging and stalled answers, and waits (up to a few seconds) for
    /// open connections to close.
    pub async fn shutdown(self) {
        let MockUpstream {
            shutdown_sender,
            mut server_task,
            ..
        } = self;
        shutdown_sender.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server_task)
            .await
            .is_err()
        {
            tracing::warn!("the mock upstream did not stop in time; abandoning its connections");
            server_task.abort();
        }
    }
}

/// Standalone server for the CLI and demos: runs until `shutdown` resolves.
///
/// Behaviours come from credential conventions (`mock-429`, `mock-529`, `mock-500`,
/// `mock-401`, `mock-slow`, `mock-drop`) and from the control API (`POST /_mock/script`,
/// `GET /_mock/requests`), since there is no handle to script it with.
pub async fn serve(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let state = Arc::new(MockState::new(config, shutdown_receiver));
    let shutdown_signal = async move {
        shutdown.await;
        // Wakes hanging and stalled answers so that graceful shutdown does not wait on them.
        shutdown_sender.send_replace(true);
    };
    run_server(listener, state, shutdown_signal).await
}

//! Usage rows are written in batches off the request path.
//!
//! The request path only pushes a row into an unbounded channel (no await, no lock held). A
//! single writer task drains it, writing a batch every `usage_flush_interval` or every
//! `BATCH_SIZE` rows, whichever comes first. A failed write keeps the rows and retries with
//! backoff; on shutdown the writer drains the channel and writes everything before it exits.

use std::time::Duration;

use relay_store::{SqlStore, UsageRow, UsageStore};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const BATCH_SIZE: usize = 512;
/// Rows kept while the store is unreachable or slower than the traffic, before the oldest
/// are dropped (with an error log): bounds the writer's memory (~100 MB at most).
const MAX_PENDING_ROWS: usize = 200_000;

#[derive(Debug)]
enum UsageMessage {
    Row(Box<UsageRow>),
    Flush(oneshot::Sender<()>),
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    sender: mpsc::UnboundedSender<UsageMessage>,
}

impl UsageRecorder {
    pub fn record(&self, row: UsageRow) {
        if self.sender.send(UsageMessage::Row(Box::new(row))).is_err() {
            tracing::error!("usage writer has stopped; a usage row was not recorded");
        }
    }

    /// Waits until every row recorded before this call is in the store (or the writer gave
    /// up for now because the store is down). Used before admin reads, for read-your-writes.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(UsageMessage::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Drops the oldest rows (with an error log) when the backlog is over its bound.
fn keep_within_bound(pending: &mut Vec<UsageRow>) {
    if pending.len() > MAX_PENDING_ROWS {
        let excess = pending.len() - MAX_PENDING_ROWS;
        pending.drain(..excess);
        tracing::error!(
            dropped = excess,
            "usage backlog over its bound; oldest rows dropped"
        );
    }
}

/// The writer task's half.
#[derive(Debug)]
pub struct UsageWriter {
    receiver: mpsc::UnboundedReceiver<UsageMessage>,
    store: SqlStore,
    flush_interval: Duration,
}

pub fn usage_channel(store: SqlStore, flush_interval: Duration) -> (UsageRecorder, UsageWriter) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (
        UsageRecorder { sender },
        UsageWriter {
            receiver,
            store,
            flush_interval,
        },
    )
}

impl UsageWriter {
    /// Runs until `shutdown` is cancelled, then writes everything still queued and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut pending: Vec<UsageRow> = Vec::new();
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut ticker = tokio::time::interval(self.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                message = self.receiver.recv() => match message {
                    Some(UsageMessage::Row(row)) => {
                        pending.push(*row);
                        if pending.len() >= BATCH_SIZE {
                            // Take everything already queued, so the channel never grows
                            // while a write runs longer than the traffic between writes.
                            self.drain_queued(&mut pending, &mut waiters);
                            failures = self.write(&mut pending, failures).await;
                            for waiter in waiters.drain(..) {
                                let _ = waiter.send(());
                            }
                        }
                    }
                    Some(UsageMessage::Flush(done)) => {
                        waiters.push(done);
                        failures = self.write(&mut pending, failures).await;
                        for waiter in waiters.drain(..) {
                            let _ = waiter.send(());
                        }
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    if !pending.is_empty() {
                        failures = self.write(&mut pending, failures).await;
                    }
                }
            }
        }
        // Shutdown: take everything still queued and write it, retrying a few times.
        while let Ok(message) = self.receiver.try_recv() {
            match message {
                UsageMessage::Row(row) => pending.push(*row),
                UsageMessage::Flush(done) => waiters.push(done),
            }
        }
        for _ in 0..5 {
            if pending.is_empty() {
                break;
            }
            failures = self.write(&mut pending, failures).await;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !pending.is_empty() {
            tracing::error!(
                rows = pending.len(),
                "usage rows could not be written before exit"
            );
        }
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }

    /// Moves every message already in the channel into `pending` (rows) and `waiters`
    /// (flushes), keeping `pending` within its bound.
    fn drain_queued(
        &mut self,
        pending: &mut Vec<UsageRow>,
        waiters: &mut Vec<oneshot::Sender<()>>,
    ) {
        while let Ok(message) = self.receiver.try_recv() {
            match message {
                UsageMessage::Row(row) => pending.push(*row),
                UsageMessage::Flush(done) => waiters.push(done),
            }
        }
        keep_within_bound(pending);
    }

    /// Writes the first `take` rows of `pending` one at a time, removing them; a row the store
    /// refuses is logged and dropped.
    async fn write_one_by_one(&self, pending: &mut Vec<UsageRow>, take: usize) {
        let rows: Vec<UsageRow> = pending.drain(..take).collect();
        for row in rows {
            let one = std::slice::from_ref(&row);
            if self.store.record_usage(one).await.is_ok() {
                continue;
            }
            if let Err(error) = self.store.record_usage(one).await {
                tracing::error!(%error, request_id = %row.request_id, attempt = row.attempt, "the store refused a usage row; it is dropped");
            }
        }
    }

    /// Writes `pending` in batches; keeps what failed. Returns the consecutive failure count.
    async fn write(&self, pending: &mut Vec<UsageRow>, failures: u32) -> u32 {
        while !pending.is_empty() {
            let take = pending.len().min(BATCH_SIZE);
            match self.store.record_usage(&pending[..take]).await {
                Ok(()) => {
                    pending.drain(..take);
                }
                Err(error) => {
                    if failures >= 1 && self.store.ping().await.is_ok() {
                        // The batch failed twice while the store answers, so the batch itself
                        // is at fault: write its rows one by one and drop only those the store
                        // refuses (after a second try), so one bad row never blocks the rest.
                        self.write_one_by_one(pending, take).await;
                        continue;
                    }
                    if failures == 0 {
                        tracing::error!(%error, rows = pending.len(), "writing usage rows failed; will retry");
                    }
                    keep_within_bound(pending);
                    return failures.saturating_add(1);
                }
            }
        }
        if failures > 0 {
            tracing::info!("usage rows are being written again");
        }
        0
    }
}

//! Usage rows are written in batches off the request path.
//!
//! The request path only appends a row to its thread's queue (a short mutex, no await, no
//! cache line shared with the other workers); it wakes the single writer task only when the
//! queue reaches a batch, so under load a request costs no wake-up of another thread. The
//! writer also wakes every `usage_flush_interval` and writes what is queued. A failed write
//! keeps the rows and retries with backoff; on shutdown the writer takes the queues and
//! writes everything before it exits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_store::{SqlStore, UsageRow, UsageStore};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::per_thread::{slot, Padded, SLOTS};
use crate::registry::lock;

/// Rows per transaction, and the queue length that wakes the writer before its interval.
/// Each commit appends every page it changed to SQLite's write-ahead log (the tables' and
/// the four indexes' last pages, rewritten whole however few rows they gained), so larger
/// batches write fewer pages per row: at 20,000 requests a second, 4,096 rows a batch make
/// 0.13 page writes and 0.05 page reads per request against 0.22 and 0.10 with 512. The
/// writer still runs every `usage_flush_interval` (500 ms by default), so a row reaches the
/// store within that interval whatever the traffic.
const BATCH_SIZE: usize = 4096;
/// Rows kept while the store is unreachable or slower than the traffic, before the oldest
/// are dropped (with an error log): bounds the writer's memory (~100 MB at most).
const MAX_PENDING_ROWS: usize = 200_000;

/// The rows of the threads that share one slot.
#[derive(Debug, Default)]
struct Queue {
    rows: Vec<UsageRow>,
    /// The writer has stopped: nothing queued now would be written.
    closed: bool,
}

#[derive(Debug, Default)]
struct Waiters {
    /// Flushes waiting for every row queued before them to be written.
    flushes: Vec<oneshot::Sender<()>>,
    /// The writer has stopped: a flush has nothing to wait for.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queues: [Padded<Mutex<Queue>>; SLOTS],
    waiters: Mutex<Waiters>,
    /// Wakes the writer: a batch is queued, or a flush waits.
    wake: Notify,
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    shared: Arc<Shared>,
}

impl UsageRecorder {
    pub fn record(&self, row: UsageRow) {
        let queued = {
            let mut queue = lock(&self.shared.queues[slot()].0);
            if queue.closed {
                None
            } else {
                queue.rows.push(row);
                Some(queue.rows.len())
            }
        };
        match queued {
            Some(BATCH_SIZE) => self.shared.wake.notify_one(),
            Some(_) => {}
            None => tracing::error!("usage writer has stopped; a usage row was not recorded"),
        }
    }

    /// Waits until every row recorded before this call is in the store (or the writer gave
    /// up for now because the store is down). Used before admin reads, for read-your-writes.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        {
            let mut waiters = lock(&self.shared.waiters);
            if waiters.closed {
                return;
            }
            waiters.flushes.push(done);
        }
        self.shared.wake.notify_one();
        let _ = wait.await;
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
    shared: Arc<Shared>,
    store: SqlStore,
    flush_interval: Duration,
}

pub fn usage_channel(store: SqlStore, flush_interval: Duration) -> (UsageRecorder, UsageWriter) {
    let shared = Arc::new(Shared::default());
    (
        UsageRecorder {
            shared: Arc::clone(&shared),
        },
        UsageWriter {
            shared,
            store,
            flush_interval,
        },
    )
}

impl UsageWriter {
    /// Runs until `shutdown` is cancelled, then writes everything still queued and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut pending: Vec<UsageRow> = Vec::new();
        let mut ticker = tokio::time::interval(self.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.shared.wake.notified() => {}
                _ = ticker.tick() => {}
            }
            let waiters = self.take_queued(&mut pending, false);
            if !pending.is_empty() {
                failures = self.write(&mut pending, failures).await;
            }
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        // Shutdown: take everything still queued and write it, retrying a few times.
        let waiters = self.take_queued(&mut pending, true);
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

    /// Moves the queued rows into `pending` (kept within its bound) and returns the waiting
    /// flushes; `close` refuses rows from now on.
    fn take_queued(&self, pending: &mut Vec<UsageRow>, close: bool) -> Vec<oneshot::Sender<()>> {
        if pending.is_empty() && pending.capacity() > 2 * BATCH_SIZE {
            // After a backlog: do not hand the queue an allocation that large for good.
            pending.shrink_to(BATCH_SIZE);
        }
        // The flushes first: every row recorded before a flush asked is in a queue by now,
        // so the queues taken next hold them.
        let waiters = {
            let mut waiters = lock(&self.shared.waiters);
            waiters.closed |= close;
            std::mem::take(&mut waiters.flushes)
        };
        for queue in &self.shared.queues {
            let mut queue = lock(&queue.0);
            queue.closed |= close;
            if queue.rows.is_empty() {
                continue;
            }
            if pending.is_empty() {
                // The rows change places with the written batch's empty list, so the queue
                // keeps an allocation its size instead of growing a new one row by row.
                std::mem::swap(pending, &mut queue.rows);
            } else {
                pending.append(&mut queue.rows);
            }
        }
        keep_within_bound(pending);
        waiters
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use relay_store::UsageFilter;

    use super::*;

    fn row(thread: usize, number: usize) -> UsageRow {
        UsageRow {
            request_id: Arc::from(format!("thread-{thread}-row-{number}")),
            attempt: 1,
            api_key_id: None,
            group_id: None,
            account_id: None,
            model: "claude-sonnet-4-5".to_owned(),
            stream: false,
            status: Some(200),
            class: Cow::Borrowed("success"),
            input_tokens: 1,
            output_tokens: 1,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
            cost_usd: 0.0,
            duration_ms: 1,
            ttfb_ms: None,
            created_at: 0,
        }
    }

    async fn scratch_store(label: &str) -> SqlStore {
        let directory = std::env::temp_dir().join(format!(
            "relay-proxy-{label}-{}-{}",
            std::process::id(),
            crate::now_millis()
        ));
        SqlStore::connect_relative_to(Some("sqlite://usage.db"), &directory)
            .await
            .unwrap()
    }

    async fn rows_in(store: &SqlStore) -> u64 {
        let filter = UsageFilter {
            limit: 0,
            ..UsageFilter::default()
        };
        store.list_usage(&filter).await.unwrap().1
    }

    #[tokio::test]
    async fn a_flush_writes_the_rows_every_thread_queued_before_it() {
        let store = scratch_store("threads").await;
        // An hour between the writer's own rounds: only the flush writes.
        let (recorder, writer) = usage_channel(store.clone(), Duration::from_secs(3600));
        let shutdown = CancellationToken::new();
        let writing = tokio::spawn(writer.run(shutdown.clone()));
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let recorder = recorder.clone();
                scope
                    .spawn(move || (0..25).for_each(|number| recorder.record(row(thread, number))));
            }
        });
        recorder.flush().await;
        assert_eq!(rows_in(&store).await, 100);

        // Shutdown writes what is still queued, then refuses rows.
        std::thread::scope(|scope| {
            let recorder = recorder.clone();
            scope.spawn(move || recorder.record(row(9, 0)));
        });
        recorder.record(row(10, 0));
        shutdown.cancel();
        writing.await.unwrap();
        assert_eq!(rows_in(&store).await, 102);
        recorder.record(row(11, 0));
        recorder.flush().await;
        assert_eq!(rows_in(&store).await, 102);
    }
}

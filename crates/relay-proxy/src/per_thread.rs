//! Slots for what every worker thread appends to on each request (log lines, usage rows).
//!
//! One shared lock and buffer would pass their cache lines from core to core on every
//! request; with a slot per thread, as nginx keeps a buffer per worker process, each worker
//! appends to its own and only the rare reader (a flush) visits them all.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Slots per structure. More threads than slots share some, which is only slower.
pub const SLOTS: usize = 8;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Handed out in turn as threads first ask.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

/// The calling thread's slot, below [`SLOTS`] (the first one while the thread is being torn
/// down).
pub fn slot() -> usize {
    SLOT.try_with(|slot| *slot).unwrap_or(0)
}

/// A value alone on its cache lines (two lines: adjacent-line prefetch pairs them), so that
/// writing one slot never touches another's.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

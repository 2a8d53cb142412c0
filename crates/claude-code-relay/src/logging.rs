//! Log output: text or JSON lines, filtered by `RUST_LOG` (default `info`).
//!
//! A busy relay logs a line per request, so lines are not written one system call each:
//! they are formatted by the thread that logs (only for enabled levels) and appended to that
//! thread's buffer, which goes to stdout in one `write` when it holds 64 KiB. Every buffer is
//! written out when a warning or error is logged, every 100 ms from a small flusher thread,
//! and when the returned guard is dropped at exit. At most the last 100 ms of info lines are
//! lost if the process is killed outright.
//!
//! One buffer per thread, as nginx keeps one per worker process: the worker threads never
//! take the same lock or write the same cache lines to log. A thread's lines stay in order;
//! lines of different threads logged within the same 100 ms may come out of order.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use relay_proxy::per_thread::{slot, Padded, SLOTS};
use relay_proxy::registry::lock;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::log_line::TextLine;

/// Buffered bytes that make the logging thread write them out itself.
const FLUSH_AT_BYTES: usize = 64 * 1024;
/// The longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Installs the global subscriber. Keep the guard until the process exits: dropping it writes
/// out what is still buffered.
#[must_use = "dropping the guard stops the log flusher; keep it until exit"]
pub fn init(format: LogFormat) -> Option<LogFlushGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or collector gets plain text, written by the
    // relay's own line writer (the same text for a fraction of the work).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let buffer = BufferedStdout::default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(buffer.clone());
    let result = match format {
        LogFormat::Text if ansi => builder.try_init(),
        LogFormat::Text => builder.event_format(TextLine).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber and needs no flusher of its own.
    result.ok().map(|()| LogFlushGuard::start(buffer))
}

/// One thread's buffer.
type Shard = Padded<Mutex<Vec<u8>>>;

fn lock_shard(shard: &Shard) -> MutexGuard<'_, Vec<u8>> {
    // A panic while appending leaves at worst a partial line: keep logging.
    lock(&shard.0)
}

/// Log lines on their way to stdout.
#[derive(Debug, Clone, Default)]
pub struct BufferedStdout {
    shards: Arc<[Shard; SLOTS]>,
}

impl BufferedStdout {
    /// The calling thread's buffer.
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        lock_shard(&self.shards[slot()])
    }

    /// Writes out everything buffered, buffer by buffer. Each stays locked during its write,
    /// so a thread's lines reach stdout in the order it logged them.
    pub fn flush(&self) {
        for shard in self.shards.iter() {
            write_out(&mut lock_shard(shard));
        }
    }
}

fn write_out(pending: &mut Vec<u8>) {
    if pending.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    // Nowhere to report a failed log write: the lines are dropped rather than kept forever.
    let _ = stdout.write_all(pending).and_then(|()| stdout.flush());
    pending.clear();
    if pending.capacity() > 4 * FLUSH_AT_BYTES {
        pending.shrink_to(FLUSH_AT_BYTES);
    }
}

/// One formatted line (or event) being appended.
#[derive(Debug)]
pub struct BufferedLine<'a> {
    target: &'a BufferedStdout,
    urgent: bool,
}

impl Write for BufferedLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.target.lock();
        pending.extend_from_slice(bytes);
        if self.urgent {
            // Out at once, after every line buffered before it.
            drop(pending);
            self.target.flush();
        } else if pending.len() >= FLUSH_AT_BYTES {
            write_out(&mut pending);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BufferedLine {
            target: self,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        // Warnings and errors are rare and are what an operator tails the log for: at once.
        BufferedLine {
            target: self,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// Flushes the log buffer periodically while alive, and once more when dropped.
#[derive(Debug)]
pub struct LogFlushGuard {
    buffer: BufferedStdout,
    stop: Option<std::sync::mpsc::Sender<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl LogFlushGuard {
    fn start(buffer: BufferedStdout) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let periodic = buffer.clone();
        let flusher = std::thread::Builder::new()
            .name("relay-log-flush".to_owned())
            .spawn(move || {
                // Wakes every FLUSH_EVERY until the guard is dropped (sender gone or signalled).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FLUSH_EVERY)
                {
                    periodic.flush();
                }
            })
            .ok();
        LogFlushGuard {
            buffer,
            stop: Some(stop),
            flusher,
        }
    }
}

impl Drop for LogFlushGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        self.buffer.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_in_order_until_flushed() {
        let buffer = BufferedStdout::default();
        buffer.make_writer().write_all(b"one\n").unwrap();
        buffer.make_writer().write_all(b"two\n").unwrap();
        assert_eq!(buffer.lock().as_slice(), b"one\ntwo\n");
        buffer.flush();
        assert!(buffer.lock().is_empty());
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let buffer = BufferedStdout::default();
        let line = vec![b'x'; 1024];
        for _ in 0..(FLUSH_AT_BYTES / line.len() - 1) {
            buffer.make_writer().write_all(&line).unwrap();
        }
        assert_eq!(buffer.lock().len(), FLUSH_AT_BYTES - line.len());
        buffer.make_writer().write_all(&line).unwrap();
        assert!(buffer.lock().is_empty());
    }

    /// The lines one thread wrote, from its own buffer.
    fn written_by(buffer: &BufferedStdout, line: &'static [u8]) -> usize {
        let mut writer = buffer.make_writer();
        writer.write_all(line).unwrap();
        slot()
    }

    #[test]
    fn each_thread_appends_to_a_buffer_of_its_own() {
        let buffer = BufferedStdout::default();
        let lines: [&[u8]; 2] = [b"first thread\n", b"second thread\n"];
        let shards = std::thread::scope(|scope| {
            let running = lines.map(|line| scope.spawn(|| written_by(&buffer, line)));
            running.map(|thread| thread.join().unwrap())
        });
        assert_ne!(
            shards[0], shards[1],
            "threads started in turn get different buffers"
        );
        for (shard, line) in shards.into_iter().zip(lines) {
            assert_eq!(lock_shard(&buffer.shards[shard]).as_slice(), line);
        }
        buffer.flush();
        assert!(buffer
            .shards
            .iter()
            .all(|shard| lock_shard(shard).is_empty()));
    }

    #[test]
    fn a_warning_writes_out_every_threads_lines() {
        let buffer = BufferedStdout::default();
        let other = std::thread::scope(|scope| {
            scope
                .spawn(|| written_by(&buffer, b"info from another thread\n"))
                .join()
                .unwrap()
        });
        assert!(!lock_shard(&buffer.shards[other]).is_empty());
        let mut urgent = BufferedLine {
            target: &buffer,
            urgent: true,
        };
        urgent.write_all(b"a warning\n").unwrap();
        assert!(buffer
            .shards
            .iter()
            .all(|shard| lock_shard(shard).is_empty()));
    }
}

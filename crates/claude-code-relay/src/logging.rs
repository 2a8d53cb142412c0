//! Log output: text or JSON lines, filtered by `RUST_LOG` (default `info`).
//!
//! A busy relay logs a line per request, so lines are not written one system call each:
//! they are formatted by the thread that logs (only for enabled levels) and appended to a
//! shared buffer, which goes to stdout in one `write` when it holds 64 KiB, when a warning
//! or error is logged, every 100 ms from a small flusher thread, and when the returned guard
//! is dropped at exit. At most the last 100 ms of info lines are lost if the process is
//! killed outright.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

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

/// Log lines on their way to stdout.
#[derive(Debug, Clone, Default)]
pub struct BufferedStdout {
    pending: Arc<Mutex<Vec<u8>>>,
}

impl BufferedStdout {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while appending leaves at worst a partial line: keep logging.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes out everything buffered. The buffer stays locked during the write so lines
    /// reach stdout in the order they were logged.
    pub fn flush(&self) {
        let mut pending = self.lock();
        write_out(&mut pending);
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
        if self.urgent || pending.len() >= FLUSH_AT_BYTES {
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
}

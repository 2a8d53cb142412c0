//! The plain-text log line, written directly.
//!
//! A busy relay logs a line per request. tracing-subscriber's general formatter spent more on
//! that line than the relay spent choosing the account and reading the answer: it styles
//! every part (even with colours off), formats the time from scratch and escapes through
//! several layers of `Debug`. This writes the same line — `<UTC time>  INFO <message>
//! <name>=<value>…` — with the date and time of day formatted once per second per thread.
//! Control characters in messages and values are escaped, so a client-chosen value (a model
//! name, say) cannot forge a second line. Spans are not printed: the relay records none.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use relay_core::duration::format_rfc3339;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, Default)]
pub struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_time(&mut writer, SystemTime::now())?;
        writer.write_str(match *event.metadata().level() {
            Level::ERROR => " ERROR ",
            Level::WARN => "  WARN ",
            Level::INFO => "  INFO ",
            Level::DEBUG => " DEBUG ",
            Level::TRACE => " TRACE ",
        })?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

thread_local! {
    /// The last second this thread wrote, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-26T22:37:28.533640Z`, as tracing-subscriber writes it.
fn write_time(writer: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    // A clock before 1970 is written as 1970.
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            cached.1.clear();
            format_second(&mut cached.1, second);
            cached.0 = second;
        }
        writer.write_str(&cached.1)
    })?;
    // `.` and six digits of microseconds, zero-padded, then `Z`.
    let mut fraction = *b".000000Z";
    let mut micros = since_epoch.subsec_micros();
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

fn format_second(out: &mut String, second: u64) {
    let millis = i64::try_from(second)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    // Whole seconds are written without a fraction: `2026-11-26T22:37:28Z`.
    let stamp = format_rfc3339(millis);
    out.push_str(stamp.strip_suffix('Z').unwrap_or(&stamp));
}

/// Writes an event's fields: the message as it is, every other field as `name=value`.
struct Fields<'w, 'a> {
    writer: &'w mut Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// Writes ` name=` (or nothing for the message), then the value as `write` writes it.
    fn field(&mut self, field: &Field, write: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.writer.write_char(' ')?;
            }
            self.first = false;
            let name = field.name();
            if name != "message" {
                self.writer
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            write(self.writer)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |writer| {
            // What `Debug` writes unchanged: printable ASCII other than `"` and `\`.
            if value
                .bytes()
                .all(|byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\')
            {
                writer.write_char('"')?;
                writer.write_str(value)?;
                writer.write_char('"')
            } else {
                write!(writer, "{value:?}")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |writer| {
            writer.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |writer| {
            writer.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |writer| {
            writer.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |writer| write!(Escaped(writer), "{value:?}"));
    }
}

/// Passes text through, writing control characters as escapes (`\n`, `\u{1b}`).
struct Escaped<'w, 'a>(&'w mut Writer<'a>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Nearly every value has no control character: one pass over the bytes that the
        // compiler can do many at a time (no early exit), then one write.
        let has_control = text.bytes().fold(false, |found, byte| {
            found | (byte < 0x20) | (byte == 0x7f) | (byte == 0xc2)
        });
        if !has_control {
            return self.0.write_str(text);
        }
        let mut rest = text;
        loop {
            // Control characters are U+0000–U+001F, U+007F and U+0080–U+009F, which UTF-8
            // writes as 0xC2 followed by 0x80–0x9F; each of these bytes starts a character.
            let Some(at) = rest
                .bytes()
                .position(|byte| byte < 0x20 || byte == 0x7f || byte == 0xc2)
            else {
                return self.0.write_str(rest);
            };
            let (plain, from) = rest.split_at(at);
            self.0.write_str(plain)?;
            let mut chars = from.chars();
            match chars.next() {
                Some(control) if control.is_control() => {
                    write!(self.0, "{}", control.escape_debug())?;
                }
                Some(other) => self.0.write_char(other)?,
                None => {}
            }
            rest = chars.as_str();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(log: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(TextLine)
            .with_max_level(Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_line_reads_as_the_general_formatter_writes_it() {
        let account = "fast-1";
        let lines = lines_of(|| {
            tracing::info!(request_id = %"01a2", account = %account, attempt = 1u64, class = "success", ok = true, delta = -3i64, "✅ Account {account} succeeded");
            tracing::warn!(r#type = ?Some(2), "short");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (time, rest) = lines[0].split_at(27);
        assert_eq!(
            rest,
            "  INFO ✅ Account fast-1 succeeded request_id=01a2 account=fast-1 attempt=1 \
             class=\"success\" ok=true delta=-3"
        );
        let shape: String = time
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99T99:99:99.999999Z");
        assert!(
            lines[1].ends_with("  WARN short type=Some(2)"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let model = "claude\n2026-01-01T00:00:00.000000Z  INFO forged \u{1b}[31m";
        let lines = lines_of(|| tracing::info!(model = %model, "asked for {model}"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with(
                "  INFO asked for claude\\n2026-01-01T00:00:00.000000Z  INFO forged \\u{1b}[31m \
                 model=claude\\n2026-01-01T00:00:00.000000Z  INFO forged \\u{1b}[31m"
            ),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn text_outside_ascii_is_escaped_only_where_debug_would() {
        // U+00A0 starts with the same byte as the C1 controls; U+0085 is one of them.
        let value = "a\u{a0}é\u{85}b";
        let lines = lines_of(
            || tracing::info!(value = %value, quoted = "say \"hi\" \\ é\t", plain = "fast-1", "{value}"),
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        let expected = format!(
            "  INFO a\u{a0}é\\u{{85}}b value=a\u{a0}é\\u{{85}}b quoted={:?} plain=\"fast-1\"",
            "say \"hi\" \\ é\t"
        );
        assert!(lines[0].ends_with(&expected), "{}", lines[0]);
    }

    #[test]
    fn the_time_ends_in_six_digits_of_microseconds() {
        for (micros, expected) in [
            (0, ".000000Z"),
            (42, ".000042Z"),
            (533_640, ".533640Z"),
            (999_999, ".999999Z"),
        ] {
            let mut out = String::new();
            let now = UNIX_EPOCH
                + std::time::Duration::from_secs(1_795_732_648)
                + std::time::Duration::from_micros(micros);
            write_time(&mut Writer::new(&mut out), now).unwrap();
            assert_eq!(out, format!("2026-11-26T22:37:28{expected}"));
        }
    }

    #[test]
    fn dates_are_the_calendar_dates() {
        let mut out = String::new();
        for (second, expected) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_795_732_648, "2026-11-26T22:37:28"),
            (4_107_542_399, "2100-02-28T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
        ] {
            out.clear();
            format_second(&mut out, second);
            assert_eq!(out, expected, "{second}");
        }
    }
}

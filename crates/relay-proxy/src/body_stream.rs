//! The answer's body on its way to the client: passed through chunk by chunk, never
//! buffered, with usage parsed on the side.
//!
//! The wrapper owns the committed attempt. It finishes it exactly once: when the upstream
//! ends, when the upstream breaks (idle timeout, connection error, truncated stream), or when
//! the client goes away (the body is dropped). A broken SSE stream ends with an Anthropic
//! `event: error` so the client knows the answer is incomplete and can retry.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use relay_core::classify::{classify_stream_error_event, OutcomeClass};
use relay_core::metrics::AttemptSample;
use relay_core::model::{ModelFamily, Usage};
use relay_core::sse::{usage_from_json, SseUsageParser};
use relay_store::UsageRow;

use crate::auth::add_cost;
use crate::forward::log_state_events;
use crate::http_clients::UpstreamAnswer;
use crate::logs;
use crate::registry::{lock, AccountRuntime, InFlightGuard, KeyRuntime};
use crate::state::RelayState;

/// Largest non-stream answer kept on the side to read its usage; larger ones pass through
/// uncounted rather than held in memory.
const MAX_JSON_FOR_USAGE: usize = 8 * 1024 * 1024;

/// What the usage row of an attempt needs, collected while it ran.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub request_id: Arc<str>,
    pub attempt: u32,
    pub api_key_id: i64,
    pub group_id: i64,
    pub account_id: i64,
    pub model: String,
    /// The model the account was asked for, when its `model_mapping` renamed `model`: what
    /// the answer is priced as.
    pub served_model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub started: Instant,
    pub ttfb_ms: u64,
    pub created_at: relay_core::UnixMillis,
}

/// An attempt whose answer is reaching the client.
#[derive(Debug)]
pub struct CommittedAttempt {
    pub state: Arc<RelayState>,
    pub account: Arc<AccountRuntime>,
    pub key_limits: Arc<KeyRuntime>,
    pub record: AttemptRecord,
    pub family: ModelFamily,
    pub in_flight: InFlightGuard,
}

#[derive(Debug)]
pub enum StreamEnd {
    Complete,
    /// The upstream broke after the first byte; the reason is for logs.
    Broken {
        class: OutcomeClass,
        reason: String,
    },
    ClientGone,
}

impl CommittedAttempt {
    pub fn finish(self, end: StreamEnd, usage: Usage) {
        let state = &self.state;
        let now = state.now();
        let elapsed = self.record.started.elapsed();
        let account = self.account.account();
        let class_name = match &end {
            StreamEnd::Complete => OutcomeClass::Success.as_str(),
            StreamEnd::Broken { class, reason } => {
                tracing::warn!(
                    request_id = %self.record.request_id,
                    account = %account.name,
                    class = class.as_str(),
                    "{}",
                    logs::stream_broken(state.settings.log_lang, &account.name, reason)
                );
                let events = self.account.update_state(now, |account_state| {
                    account_state.record_outcome(
                        now,
                        *class,
                        self.record.ttfb_ms as f64,
                        self.family,
                        None,
                    )
                });
                log_state_events(state, &account, &events);
                class.as_str()
            }
            StreamEnd::ClientGone => "cancelled",
        };
        let priced_as = self
            .record
            .served_model
            .as_deref()
            .unwrap_or(&self.record.model);
        let cost_usd = state.settings.prices.cost_usd(priced_as, &usage);
        add_cost(&self.key_limits, now, cost_usd);
        if cost_usd > 0.0 {
            state
                .shared()
                .key_used(self.record.api_key_id, cost_usd, 0, now);
        }
        let metrics_class = match &end {
            StreamEnd::Broken { class, .. } => *class,
            // The account answered; the client left or the answer ended normally.
            StreamEnd::Complete | StreamEnd::ClientGone => OutcomeClass::Success,
        };
        lock(&state.metrics).record_attempt(&AttemptSample {
            group_id: self.record.group_id,
            account_id: self.record.account_id,
            class: metrics_class,
            status: Some(self.record.status),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            ttfb_ms: Some(self.record.ttfb_ms as f64),
            usage,
            cost_usd,
            at: now,
        });
        state.usage.record(UsageRow {
            request_id: Arc::clone(&self.record.request_id),
            attempt: self.record.attempt,
            api_key_id: Some(self.record.api_key_id),
            group_id: Some(self.record.group_id),
            account_id: Some(self.record.account_id),
            model: self.record.model,
            stream: self.record.stream,
            status: Some(self.record.status),
            class: Cow::Borrowed(class_name),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_input_tokens: usage.cache_read_input_tokens,
            cache_creation_input_tokens: usage.cache_creation_input_tokens,
            cost_usd,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            ttfb_ms: Some(self.record.ttfb_ms),
            created_at: self.record.created_at,
        });
    }
}

/// How the side parser reads the answer.
#[derive(Debug)]
pub enum UsageReader {
    Sse(SseUsageParser),
    Json(Vec<u8>),
    None,
}

/// Most SSE chunks gathered into one write to the client (see `RelayBody`).
const MAX_GATHERED_CHUNKS: usize = 32;
const MAX_GATHERED_BYTES: usize = 64 * 1024;
/// Scheduler passes in a row without a new chunk before the gathered ones go out. hyper's
/// client connection task hands a chunk over every second pass or so (measured), so one
/// empty pass does not yet mean the upstream has nothing more at hand.
const MAX_FRUITLESS_PASSES: u8 = 2;

/// How the upstream's body ended while the attempt loop was still reading it (see
/// [`gather_received`]); `RelayBody` takes it as if it had polled it itself.
#[derive(Debug)]
pub enum EarlyEnd {
    Ended,
    Failed(crate::h1::H1Error),
}

/// Takes the SSE chunks the upstream connection has already received, after the first
/// event, into `prefetched` (feeding `parser`), as `RelayBody` gathers: until the upstream
/// has had nothing more for two scheduler passes, or at 32 chunks / 64 KiB. Never waits for
/// the network.
///
/// The stream's head then goes out with every event at hand in one write: the client reads
/// the head, the first event and the first text delta on one wake-up instead of reading the
/// head and `message_start` first and the rest a wake-up later.
pub async fn gather_received(
    upstream: &mut UpstreamAnswer,
    parser: &mut SseUsageParser,
    prefetched: &mut Vec<Bytes>,
) -> Option<EarlyEnd> {
    use http_body::Body as _;
    let mut bytes: usize = prefetched.iter().map(Bytes::len).sum();
    let mut fruitless = 0;
    while fruitless < MAX_FRUITLESS_PASSES
        && prefetched.len() < MAX_GATHERED_CHUNKS
        && bytes < MAX_GATHERED_BYTES
    {
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *upstream).poll_frame(cx))).await;
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers: the Messages API sends none, and they are not forwarded.
                if let Ok(chunk) = frame.into_data() {
                    if !chunk.is_empty() {
                        parser.feed(&chunk);
                        bytes += chunk.len();
                        prefetched.push(chunk);
                        fruitless = 0;
                    }
                }
            }
            Poll::Ready(None) => return Some(EarlyEnd::Ended),
            Poll::Ready(Some(Err(error))) => return Some(EarlyEnd::Failed(error)),
            Poll::Pending => {
                fruitless += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    None
}

/// The client-facing body of a committed attempt: the upstream's body, chunk by chunk.
///
/// One idle timer per answer, armed only while the relay waits on the upstream: it fires
/// when the upstream has had nothing to give for `idle_timeout` (a client that reads slowly
/// does not count against the upstream).
///
/// An SSE chunk is not handed over the moment it arrives: the body first yields to the
/// scheduler, which lets the upstream connection's task decode what it has already received.
/// The chunks gathered that way go out together, in one write to the client, as soon as the
/// upstream has had nothing more for two passes (or at 32 chunks / 64 KiB). hyper hands a
/// response body over one decoded chunk at a time, so without this a burst of events cost
/// one client write (and one wake-up of each side) per event. A chunk is never held waiting
/// for the network: only for a few scheduler passes, while other chunks were already there.
///
/// What was gathered goes to hyper as one frame, so the client gets one HTTP chunk where
/// the upstream sent one per event: an HTTP client hands its reader one decoded chunk at a
/// time too, and a client that reads the first text delta behind `message_start`,
/// `content_block_start` and `ping` decoded it three chunk hand-offs later (SSE does not
/// care where the chunks of its stream begin and end).
pub struct RelayBody {
    /// Chunks gathered and not yet handed to hyper (the prefetch of the attempt loop first).
    gathered: Vec<Bytes>,
    gathered_bytes: usize,
    /// `gathered` holds the attempt loop's prefetch, which goes out on the first poll.
    prefetched: bool,
    /// Scheduler passes in a row that brought no new chunk while gathering.
    fruitless: u8,
    upstream: UpstreamAnswer,
    /// The upstream body's end, when the attempt loop already read it.
    early_end: Option<EarlyEnd>,
    reader: UsageReader,
    idle_timeout: Duration,
    /// Since when the relay has been waiting on the upstream; `None` while it delivers.
    waiting_since: Option<tokio::time::Instant>,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    attempt: Option<CommittedAttempt>,
    is_sse: bool,
    ended: bool,
}

impl std::fmt::Debug for RelayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBody")
            .field("is_sse", &self.is_sse)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl RelayBody {
    fn usage(&self) -> Usage {
        match &self.reader {
            UsageReader::Sse(parser) => parser.usage(),
            UsageReader::Json(buffer) => usage_from_json(buffer).unwrap_or_default(),
            UsageReader::None => Usage::default(),
        }
    }

    fn observe(&mut self, chunk: &Bytes) {
        match &mut self.reader {
            UsageReader::Sse(parser) => parser.feed(chunk),
            UsageReader::Json(buffer) => {
                if buffer.len() + chunk.len() <= MAX_JSON_FOR_USAGE {
                    buffer.extend_from_slice(chunk);
                } else {
                    self.reader = UsageReader::None;
                }
            }
            UsageReader::None => {}
        }
    }

    fn finish(&mut self, end: StreamEnd) {
        let usage = self.usage();
        if let Some(attempt) = self.attempt.take() {
            attempt.finish(end, usage);
        }
    }

    /// What ends the stream when the upstream is done: a complete answer, or an SSE stream
    /// cut short before `message_stop`, or one that carried an `event: error`.
    fn end_of_upstream(&self) -> StreamEnd {
        match &self.reader {
            UsageReader::Sse(parser) => {
                if let Some(error_type) = parser.error_event() {
                    StreamEnd::Broken {
                        class: classify_stream_error_event(error_type),
                        reason: format!("upstream sent event: error ({error_type})"),
                    }
                } else if !parser.saw_message_stop() {
                    StreamEnd::Broken {
                        class: OutcomeClass::MidStream,
                        reason: "upstream closed the stream before message_stop".to_owned(),
                    }
                } else {
                    StreamEnd::Complete
                }
            }
            _ => StreamEnd::Complete,
        }
    }

    /// The upstream broke after the first byte: record it, and tell an SSE client with a
    /// final `event: error` (a JSON client sees the connection fail).
    fn broken(&mut self, failure: String) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.finish(StreamEnd::Broken {
            class: OutcomeClass::MidStream,
            reason: failure.clone(),
        });
        self.ended = true;
        if self.is_sse {
            self.gather(stream_error_event(&format!(
                "the upstream stream was interrupted ({failure}); retry the request"
            )));
            self.release()
        } else {
            Poll::Ready(Some(Err(std::io::Error::other(failure))))
        }
    }

    fn gather(&mut self, chunk: Bytes) {
        self.gathered_bytes += chunk.len();
        self.gathered.push(chunk);
    }

    /// Hands every gathered chunk to hyper, as one frame. Nothing gathered happens only once
    /// the answer has ended.
    fn release(&mut self) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let joined = match self.gathered.len() {
            0 => return Poll::Ready(None),
            1 => self.gathered.pop(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.gathered_bytes);
                for chunk in self.gathered.drain(..) {
                    joined.extend_from_slice(&chunk);
                }
                Some(joined.freeze())
            }
        };
        self.gathered_bytes = 0;
        Poll::Ready(joined.map(|chunk| Ok(Frame::data(chunk))))
    }

    /// True when the upstream has been silent for `idle_timeout` (arms the timer if not).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let waiting_since = *self
            .waiting_since
            .get_or_insert_with(tokio::time::Instant::now);
        let deadline = waiting_since + self.idle_timeout;
        let sleep = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl http_body::Body for RelayBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended || this.prefetched {
            // The attempt loop's prefetch goes out with the head; after the end, what is left.
            this.prefetched = false;
            if !this.is_sse && matches!(this.early_end, Some(EarlyEnd::Ended)) {
                // A JSON answer read whole (and translated): this is all of it, and hyper
                // does not poll a body of known length past its end, so the attempt is
                // finished now.
                this.early_end = None;
                let end = this.end_of_upstream();
                this.finish(end);
                this.ended = true;
            }
            return this.release();
        }
        loop {
            let polled = match this.early_end.take() {
                Some(EarlyEnd::Ended) => Poll::Ready(None),
                Some(EarlyEnd::Failed(error)) => Poll::Ready(Some(Err(error))),
                None => Pin::new(&mut this.upstream).poll_frame(cx),
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(chunk) = frame.into_data() else {
                        // Trailers: the Messages API sends none, and they are not forwarded.
                        continue;
                    };
                    this.waiting_since = None;
                    if chunk.is_empty() {
                        continue;
                    }
                    this.observe(&chunk);
                    if this.is_sse {
                        this.fruitless = 0;
                        this.gather(chunk);
                        if this.gathered.len() < MAX_GATHERED_CHUNKS
                            && this.gathered_bytes < MAX_GATHERED_BYTES
                        {
                            // A scheduler pass for the upstream side to decode what it has.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        return this.release();
                    }
                    if this.upstream.is_end_stream() {
                        // The answer's length is known and this is its last chunk: once it is
                        // written, hyper stops polling a body of known length, so the attempt
                        // is finished now rather than recorded as abandoned at drop.
                        let end = this.end_of_upstream();
                        this.finish(end);
                        this.ended = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Poll::Ready(None) => {
                    let end = this.end_of_upstream();
                    let cut_short = matches!(
                        &end,
                        StreamEnd::Broken {
                            class: OutcomeClass::MidStream,
                            ..
                        }
                    );
                    this.finish(end);
                    this.ended = true;
                    if cut_short && this.is_sse {
                        this.gather(stream_error_event(
                            "the upstream closed the stream before it was complete; retry the request",
                        ));
                    }
                    return this.release();
                }
                Poll::Ready(Some(Err(error))) => {
                    return this.broken(format!(
                        "upstream connection failed: {}",
                        crate::http_clients::error_chain(&error)
                    ));
                }
                Poll::Pending => {
                    if !this.gathered.is_empty() {
                        if this.fruitless < MAX_FRUITLESS_PASSES {
                            this.fruitless += 1;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        return this.release();
                    }
                    if this.idle_expired(cx) {
                        return this.broken(format!(
                            "no data from the upstream for {}",
                            relay_core::duration::format_duration(this.idle_timeout)
                        ));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Only once finished and every gathered chunk is out: the end must be polled for, so
        // the attempt is recorded.
        self.ended && self.gathered.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // A JSON answer of known length keeps its length (the client gets Content-Length
        // instead of chunks); an SSE stream may gain a final error event, so it has none.
        if self.is_sse {
            return SizeHint::default();
        }
        if self.ended {
            return SizeHint::with_exact(0);
        }
        // What the attempt loop already holds (a translated answer, read whole), then what
        // the upstream has still to send.
        let upstream = self.upstream.size_hint();
        let gathered = self.gathered_bytes as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(upstream.lower().saturating_add(gathered));
        if let Some(upper) = upstream.upper() {
            hint.set_upper(upper.saturating_add(gathered));
        }
        hint
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        if self.attempt.is_some() {
            self.finish(StreamEnd::ClientGone);
        }
    }
}

/// The SSE event that tells a client its stream was cut.
pub fn stream_error_event(message: &str) -> Bytes {
    let body =
        relay_core::envelope::error_json::<()>(relay_core::envelope::ErrorKind::Api, message, None);
    let mut event = Vec::with_capacity(body.len() + 24);
    event.extend_from_slice(b"event: error\ndata: ");
    event.extend_from_slice(&body);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// The client-facing body of a committed attempt.
pub fn relay_body(
    prefetched: Vec<Bytes>,
    early_end: Option<EarlyEnd>,
    upstream: UpstreamAnswer,
    reader: UsageReader,
    idle_timeout: Duration,
    attempt: CommittedAttempt,
) -> Body {
    let is_sse = matches!(reader, UsageReader::Sse(_));
    let gathered_bytes = prefetched.iter().map(Bytes::len).sum();
    let relaying = RelayBody {
        prefetched: !prefetched.is_empty(),
        fruitless: 0,
        gathered: prefetched,
        gathered_bytes,
        upstream,
        early_end,
        reader,
        idle_timeout,
        waiting_since: None,
        idle: None,
        attempt: Some(attempt),
        is_sse,
        ended: false,
    };
    // What the attempt loop prefetched (an SSE stream up to its first event, or a translated
    // answer read whole) is already in `reader`.
    Body::new(relaying)
}

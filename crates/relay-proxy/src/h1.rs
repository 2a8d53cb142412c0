//! HTTP/1.1 on one upstream connection, read and written by the request that holds it.
//!
//! The relay's upstream traffic is narrow: a request whose body is complete before it is sent,
//! and an answer read as it arrives (a length, chunks, or up to the connection's end). So a
//! connection is a transport and a read buffer, driven by whichever task holds it: no task per
//! connection, no channel between the request and its connection, and the answer's body is
//! read straight off the socket by the task that forwards it. The pool (`http_clients`) keeps
//! idle connections and checks one is still open before it is used.
//!
//! [`server`] is the other half: the relay's client connections, on the same connection type,
//! head parsing and body framing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};

pub mod server;

/// The longest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines an answer may have.
const MAX_HEADERS: usize = 128;
/// How much room a read asks for.
const READ_SIZE: usize = 16 * 1024;
/// The longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4 * 1024;

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Closed (or reset) before a byte of the answer came: on a pooled connection, the
    /// upstream closed it while it was idle, just as the request went out.
    #[error("connection closed before any answer")]
    NoAnswer,
    #[error("connection closed before the answer was complete")]
    Incomplete,
    #[error("invalid answer: {0}")]
    Invalid(String),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// One HTTP/1.1 connection: its transport and what has been read from it but not used.
pub struct Conn<T> {
    io: T,
    read: BytesMut,
    /// Where an answer head's names and values lie in `read`: kept for the next head.
    offsets: Vec<HeaderOffsets>,
    /// A request was not written whole: the connection carries nothing after its answer.
    cut: bool,
}

/// How an answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    ToClose,
}

/// The head of an answer.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    pub fn new(io: T) -> Self {
        Conn {
            io,
            read: BytesMut::new(),
            offsets: Vec::new(),
            cut: false,
        }
    }

    /// Whether an idle connection can carry a request: not closed by the other side, and
    /// nothing unasked-for received. Never waits: what the reactor has seen decides.
    pub fn is_usable_idle(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Writes a request: its head and then its whole body. After a failure the upstream
    /// may still have answered (a server refusing a body too large answers and stops
    /// reading): [`Conn::answer`] reads that answer, and the connection is not reused.
    pub async fn send(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<()> {
        self.cut = true;
        self.write_request(head, body).await?;
        self.cut = false;
        Ok(())
    }

    async fn write_request(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut head = head;
        let mut body = body;
        while !head.is_empty() || !body.is_empty() {
            let slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
            let written = self.io.write_vectored(&slices).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_head = written.min(head.len());
            head = &head[from_head..];
            body = &body[written - from_head..];
        }
        self.io.flush().await
    }

    /// Reads more of the answer into the buffer; `Ok(0)` at the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Reads the answer's head (skipping informational `1xx` heads) and hands back the body
    /// to read. `head_request`: the request was `HEAD`, whose answer has no body.
    pub async fn answer(mut self, head_request: bool) -> Result<(Head, Body<T>), H1Error> {
        loop {
            let parsed = loop {
                if let Some(parsed) = parse_head(&self.read, &mut self.offsets)? {
                    break parsed;
                }
                if self.read.len() >= MAX_HEAD {
                    return Err(H1Error::Invalid("the answer's head is too long".to_owned()));
                }
                let nothing_yet = self.read.is_empty();
                match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                    Ok(0) if nothing_yet => return Err(H1Error::NoAnswer),
                    Ok(0) => return Err(H1Error::Incomplete),
                    Ok(_) => {}
                    Err(error) if nothing_yet && closed_by_peer(&error) => {
                        return Err(H1Error::NoAnswer)
                    }
                    Err(error) => return Err(H1Error::Io(error)),
                }
            };
            let head_bytes = self.read.split_to(parsed.length).freeze();
            let head = parsed.into_head(&head_bytes, &self.offsets)?;
            if head.status.is_informational() {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(H1Error::Invalid(
                        "the upstream switched protocols unasked".to_owned(),
                    ));
                }
                continue;
            }
            let framing = framing_of(&head, head_request)?;
            let reusable = keeps_alive(&head) && framing != Framing::ToClose && !self.cut;
            let state = match framing {
                Framing::Length(0) => State::Done,
                Framing::Length(length) => State::Length(length),
                Framing::Chunked => State::ChunkSize,
                Framing::ToClose => State::ToClose,
            };
            let body = Body {
                conn: Some(self),
                state,
                reusable,
            };
            return Ok((head, body));
        }
    }
}

/// Where one header's name and value lie in the buffer.
type HeaderOffsets = (std::ops::Range<usize>, std::ops::Range<usize>);

fn closed_by_peer(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// A head found in the buffer: its length and status line (its headers' offsets are
/// written to the connection's list).
struct ParsedHead {
    length: usize,
    status: u16,
    minor_version: u8,
}

fn parse_head(
    buffer: &[u8],
    offsets: &mut Vec<HeaderOffsets>,
) -> Result<Option<ParsedHead>, H1Error> {
    // Left uninitialised: httparse writes what it parses, and 4 KiB of empty headers
    // written before every parse would cost more than the parse of a short head.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        &mut headers,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(H1Error::Invalid(error.to_string())),
    };
    record_offsets(buffer, response.headers, offsets);
    Ok(Some(ParsedHead {
        length,
        status: response.code.unwrap_or_default(),
        minor_version: response.version.unwrap_or_default(),
    }))
}

/// Where `part`, a slice of `buffer`, lies in it.
fn offset_in(buffer: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - buffer.as_ptr() as usize;
    start..start + part.len()
}

/// Writes where each parsed header's name and value lie in `buffer` to `offsets`.
fn record_offsets(
    buffer: &[u8],
    headers: &[httparse::Header<'_>],
    offsets: &mut Vec<HeaderOffsets>,
) {
    offsets.clear();
    offsets.extend(headers.iter().map(|header| {
        (
            offset_in(buffer, header.name.as_bytes()),
            offset_in(buffer, header.value),
        )
    }));
}

impl ParsedHead {
    fn into_head(self, bytes: &Bytes, offsets: &[HeaderOffsets]) -> Result<Head, H1Error> {
        let status = StatusCode::from_u16(self.status)
            .map_err(|_| H1Error::Invalid(format!("status {}", self.status)))?;
        let version = if self.minor_version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        Ok(Head {
            status,
            version,
            headers: headers_at(bytes, offsets, HeadKind::Answer)?,
        })
    }
}

/// Whose head a header map is read from: each kind keeps the names of its last head.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HeadKind {
    /// A client's request.
    Request = 0,
    /// An upstream's answer.
    Answer = 1,
}

/// The header map of a head whose names and values lie at `offsets` in `bytes`: the values
/// share `bytes`, the names are the thread's remembered ones where it has them.
fn headers_at(
    bytes: &Bytes,
    offsets: &[HeaderOffsets],
    kind: HeadKind,
) -> Result<HeaderMap, H1Error> {
    let mut headers = HeaderMap::with_capacity(offsets.len());
    KNOWN_NAMES.with(|known| {
        let known = &mut *known.borrow_mut();
        for (at, (name, value)) in offsets.iter().enumerate() {
            let name = known.name(&bytes[name.clone()], kind, at)?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(value.clone()))
                .map_err(|_| H1Error::Invalid(format!("the value of {name}")))?;
            headers.append(name, value);
        }
        Ok(headers)
    })
}

/// The most header names a thread remembers by their bytes.
const MAX_KNOWN_NAMES: usize = 256;

/// The most headers of a head whose names are remembered by position.
const MAX_LAST_NAMES: usize = 64;

/// Header names seen on one thread.
#[derive(Default)]
struct KnownNames {
    /// Every name seen (up to [`MAX_KNOWN_NAMES`]), by its bytes as sent. A client sends the
    /// same names on every request and an upstream on every answer (Anthropic's
    /// `request-id` and a dozen `anthropic-ratelimit-*`); a name the `http` crate does not
    /// know is otherwise checked and copied into an allocation of its own every time, and a
    /// remembered one is shared.
    by_bytes: relay_core::FastMap<Box<[u8]>, HeaderName>,
    /// The names of the last request head and of the last answer head, in order. A client
    /// sends its headers in the same order every time (Claude Code: 21 of them), so the
    /// name at a position is nearly always the one before: one comparison, no hashing.
    last: [Vec<(Box<[u8]>, HeaderName)>; 2],
}

impl KnownNames {
    fn name(&mut self, raw: &[u8], kind: HeadKind, at: usize) -> Result<HeaderName, H1Error> {
        let last = &mut self.last[kind as usize];
        if let Some((bytes, name)) = last.get(at) {
            if **bytes == *raw {
                return Ok(name.clone());
            }
        }
        let name = match self.by_bytes.get(raw) {
            Some(name) => name.clone(),
            None => {
                let name = HeaderName::from_bytes(raw)
                    .map_err(|_| H1Error::Invalid("a header name".to_owned()))?;
                if self.by_bytes.len() < MAX_KNOWN_NAMES {
                    self.by_bytes.insert(raw.into(), name.clone());
                }
                name
            }
        };
        if at < MAX_LAST_NAMES {
            let remembered = (Box::from(raw), name.clone());
            if at < last.len() {
                last[at] = remembered;
            } else if at == last.len() {
                last.push(remembered);
            }
        }
        Ok(name)
    }
}

thread_local! {
    static KNOWN_NAMES: std::cell::RefCell<KnownNames> = std::cell::RefCell::default();
}

fn framing_of(head: &Head, head_request: bool) -> Result<Framing, H1Error> {
    let status = head.status;
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    let headers = &head.headers;
    if let Some(chunked) = ends_chunked(headers) {
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::ToClose
        });
    }
    Ok(content_length(headers)?.map_or(Framing::ToClose, Framing::Length))
}

/// Whether the last transfer coding is `chunked`; `None` without `Transfer-Encoding`.
fn ends_chunked(headers: &HeaderMap) -> Option<bool> {
    if !headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    let last = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
        .rfind(|coding| !coding.is_empty());
    Some(last.is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked")))
}

/// The `Content-Length`, when given: one value, or the same value repeated.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|byte| *byte == b',') {
            let parsed = decimal(part.trim_ascii())
                .ok_or_else(|| H1Error::Invalid("content-length".to_owned()))?;
            if length.is_some_and(|known| known != parsed) {
                return Err(H1Error::Invalid("conflicting content-length".to_owned()));
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// A length written in decimal digits only (no sign, no spaces), up to 19 digits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, digit| {
        digit
            .is_ascii_digit()
            .then(|| value * 10 + u64::from(digit - b'0'))
    })
}

/// Whether the connection stays open after this answer.
fn keeps_alive(head: &Head) -> bool {
    persistent(head.version, &head.headers)
}

/// Whether a message of `version` with these headers leaves its connection open
/// (RFC 9112 §9.3).
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let has_token = |token: &str| {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match version {
        Version::HTTP_10 => has_token("keep-alive"),
        _ => !has_token("close"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    ToClose,
    Done,
}

/// The body of an answer, read from its connection as it is polled.
pub struct Body<T> {
    conn: Option<Conn<T>>,
    state: State,
    reusable: bool,
}

/// What a line read from the buffer is.
enum Line {
    /// Not all there yet.
    Partial,
    /// Its text, without the line end.
    Complete(Bytes),
}

fn take_line(buffer: &mut BytesMut) -> Result<Line, H1Error> {
    match buffer.iter().position(|byte| *byte == b'\n') {
        Some(end) => {
            let mut line = buffer.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Line::Complete(line))
        }
        None if buffer.len() > MAX_LINE => {
            Err(H1Error::Invalid("a chunk line is too long".to_owned()))
        }
        None => Ok(Line::Partial),
    }
}

fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line
        .split(|byte| *byte == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let invalid = || H1Error::Invalid("a chunk size".to_owned());
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid());
    }
    digits.iter().try_fold(0u64, |size, digit| {
        let value = (*digit as char).to_digit(16).ok_or_else(invalid)?;
        Ok(size * 16 + u64::from(value))
    })
}

impl<T: AsyncRead + AsyncWrite + Unpin> Body<T> {
    /// Whether the whole body has been read.
    pub fn is_end(&self) -> bool {
        self.state == State::Done
    }

    /// What is left of the body, as far as its framing tells.
    pub fn size_hint(&self) -> http_body::SizeHint {
        match self.state {
            State::Length(left) => http_body::SizeHint::with_exact(left),
            State::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }

    /// The connection, once the body has been read to its end and the connection may carry
    /// another request.
    pub fn take_reusable(&mut self) -> Option<Conn<T>> {
        if self.state != State::Done || !self.reusable {
            return None;
        }
        let conn = self.conn.take()?;
        // Bytes after the answer's end: the connection's framing cannot be trusted.
        conn.read.is_empty().then_some(conn)
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::ChunkData(left) if !conn.read.is_empty() => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.read.len());
                    let data = conn.read.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(data)));
                }
                State::ToClose if !conn.read.is_empty() => {
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(data)));
                }
                State::ChunkSize if !conn.read.is_empty() => match take_line(&mut conn.read)? {
                    Line::Complete(line) => {
                        let size = chunk_size(&line)?;
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                        continue;
                    }
                    Line::Partial => {}
                },
                State::ChunkEnd if !conn.read.is_empty() => match take_line(&mut conn.read)? {
                    Line::Complete(line) if line.is_empty() => {
                        self.state = State::ChunkSize;
                        continue;
                    }
                    Line::Complete(_) => {
                        return Poll::Ready(Some(Err(H1Error::Invalid(
                            "no line end after a chunk".to_owned(),
                        ))))
                    }
                    Line::Partial => {}
                },
                State::Trailers if !conn.read.is_empty() => match take_line(&mut conn.read)? {
                    // Trailer fields are read past, not forwarded.
                    Line::Complete(line) if line.is_empty() => {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Line::Complete(_) => continue,
                    Line::Partial => {}
                },
                _ => {}
            }
            // Nothing usable in the buffer: read more.
            match std::task::ready!(conn.poll_fill(cx)) {
                Ok(0) if self.state == State::ToClose => {
                    self.state = State::Done;
                    self.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(H1Error::Incomplete)));
                }
                Ok(_) => {}
                Err(error) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(H1Error::Io(error))));
                }
            }
        }
    }
}

impl<T> std::fmt::Debug for Body<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The head of a request: `target` is the origin form (`/v1/messages?beta=true`), or the
/// absolute form for a plain-HTTP request through an HTTP proxy. A body's length is always
/// given (a request body is complete before it is sent).
pub fn request_head<'a>(
    method: &Method,
    target: &str,
    forwarded: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    headers: &HeaderMap,
    body_length: usize,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &HeaderName, value: &HeaderValue| {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in forwarded {
        line(name, value);
    }
    for (name, value) in headers {
        line(name, value);
    }
    if body_length > 0 || !matches!(*method, Method::GET | Method::HEAD) {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body_length).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    async fn read_to_end(body: &mut Body<DuplexStream>) -> Result<Vec<u8>, H1Error> {
        let mut all = Vec::new();
        while let Some(data) = std::future::poll_fn(|cx| body.poll_data(cx)).await {
            all.extend_from_slice(&data?);
        }
        Ok(all)
    }

    /// The header map of `head` (`name: value` lines), read as `kind`.
    fn map_of(head: &str, kind: HeadKind) -> Result<HeaderMap, H1Error> {
        let bytes = Bytes::copy_from_slice(head.as_bytes());
        let mut offsets = Vec::new();
        let mut at = 0;
        for line in head.split_inclusive('\n') {
            let (name, value) = line.trim_end().split_once(": ").unwrap();
            let value_at = at + name.len() + 2;
            offsets.push((at..at + name.len(), value_at..value_at + value.len()));
            at += line.len();
        }
        headers_at(&bytes, &offsets, kind)
    }

    #[test]
    fn names_remembered_by_position_are_used_only_where_they_match() {
        let first = "X-Stainless-Arch: x64\nUser-Agent: cli\nx-app: cli\n";
        let headers = map_of(first, HeadKind::Request).unwrap();
        assert_eq!(headers["x-stainless-arch"], "x64");
        assert_eq!(headers[http::header::USER_AGENT], "cli");
        // The same names in another order, one left out, one new, and an answer between.
        map_of("request-id: req_1\n", HeadKind::Answer).unwrap();
        let second = "User-Agent: sdk\nX-Stainless-Arch: arm64\nx-custom: 1\nx-app: ide\n";
        let headers = map_of(second, HeadKind::Request).unwrap();
        assert_eq!(headers.len(), 4);
        assert_eq!(headers[http::header::USER_AGENT], "sdk");
        assert_eq!(headers["x-stainless-arch"], "arm64");
        assert_eq!(headers["x-custom"], "1");
        assert_eq!(headers["x-app"], "ide");
        assert!(!headers.contains_key("request-id"));
        // A name that is no name is refused, remembered or not.
        assert!(map_of("bad name: 1\n", HeadKind::Request).is_err());
        let headers = map_of(second, HeadKind::Request).unwrap();
        assert_eq!(headers["x-custom"], "1");
    }

    /// A connection and the upstream's end of it.
    fn pair() -> (Conn<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        (Conn::new(ours), theirs)
    }

    /// The answer on a connection whose upstream sent `wire` and then closed it.
    async fn answer_to(wire: &[u8]) -> Result<(Head, Body<DuplexStream>), H1Error> {
        let (conn, mut upstream) = pair();
        upstream.write_all(wire).await.unwrap();
        drop(upstream);
        conn.answer(false).await
    }

    /// Reads one request head and its body of `body_length` bytes from the upstream's end.
    async fn request_at(upstream: &mut DuplexStream, body_length: usize) -> String {
        let mut received = Vec::new();
        while !received.ends_with(b"\r\n\r\n") {
            received.push(upstream.read_u8().await.unwrap());
        }
        let mut body = vec![0; body_length];
        upstream.read_exact(&mut body).await.unwrap();
        received.extend_from_slice(&body);
        String::from_utf8(received).unwrap()
    }

    #[tokio::test]
    async fn a_request_goes_out_whole_and_an_answer_of_known_length_comes_back() {
        let (mut conn, mut upstream) = pair();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("sk-a"));
        headers.insert(http::header::HOST, HeaderValue::from_static("example.test"));
        let head = request_head(
            &Method::POST,
            "/v1/messages?beta=true",
            std::iter::empty(),
            &headers,
            7,
        );
        conn.send(&head, b"{\"a\":1}").await.unwrap();
        assert_eq!(
            request_at(&mut upstream, 7).await,
            "POST /v1/messages?beta=true HTTP/1.1\r\nx-api-key: sk-a\r\nhost: example.test\r\n\
             content-length: 7\r\n\r\n{\"a\":1}"
        );
        // The head and the body arrive in pieces.
        let answer = tokio::spawn(async move {
            let (head, mut body) = conn.answer(false).await.unwrap();
            assert_eq!(head.status, StatusCode::OK);
            assert_eq!(head.headers["request-id"], "req_1");
            assert_eq!(body.size_hint().exact(), Some(11));
            let text = read_to_end(&mut body).await.unwrap();
            (text, body.take_reusable().is_some())
        });
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\nrequest-id: req_1\r\nContent-Le")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        upstream.write_all(b"ngth: 11\r\n\r\nhello").await.unwrap();
        tokio::task::yield_now().await;
        upstream.write_all(b" world").await.unwrap();
        let (text, reusable) = answer.await.unwrap();
        assert_eq!(text, b"hello world");
        assert!(reusable);
    }

    #[tokio::test]
    async fn an_answer_given_before_the_body_was_taken_is_read() {
        // Room for less than the request: the upstream reads its head, answers, and closes.
        let (ours, mut upstream) = tokio::io::duplex(1024);
        let mut conn = Conn::new(ours);
        let upstream = tokio::spawn(async move {
            let mut head = [0u8; 16];
            upstream.read_exact(&mut head).await.unwrap();
            upstream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo long")
                .await
                .unwrap();
        });
        let head = request_head(
            &Method::POST,
            "/v1/messages",
            std::iter::empty(),
            &HeaderMap::new(),
            1 << 20,
        );
        let sent = conn.send(&head, &vec![b'x'; 1 << 20]).await;
        upstream.await.unwrap();
        assert!(sent.is_err(), "the upstream stopped reading");
        let (head, mut body) = conn.answer(false).await.unwrap();
        assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(read_to_end(&mut body).await.unwrap(), b"too long");
        assert!(
            body.take_reusable().is_none(),
            "the request was not sent whole"
        );
    }

    #[tokio::test]
    async fn a_connection_carries_one_request_after_another() {
        let (mut conn, mut upstream) = pair();
        for round in 0..3 {
            let head = request_head(
                &Method::GET,
                "/v1/models",
                std::iter::empty(),
                &HeaderMap::new(),
                0,
            );
            conn.send(&head, b"").await.unwrap();
            assert_eq!(
                request_at(&mut upstream, 0).await,
                "GET /v1/models HTTP/1.1\r\n\r\n"
            );
            let text = format!("round {round}");
            upstream
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            let (_, mut body) = conn.answer(false).await.unwrap();
            assert_eq!(read_to_end(&mut body).await.unwrap(), text.as_bytes());
            conn = body.take_reusable().expect("the connection stays open");
            assert!(conn.is_usable_idle());
        }
        drop(upstream);
        assert!(!conn.is_usable_idle(), "the upstream closed it");
    }

    #[tokio::test]
    async fn chunks_are_decoded_with_extensions_and_trailers_skipped() {
        let (head, mut body) = answer_to(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
              Transfer-Encoding: chunked\r\n\r\n\
              6;name=value\r\nevent:\r\n18\r\n data: {\"type\":\"ping\"}\n\n\r\n\
              0\r\nx-trailer: 1\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(head.headers["content-type"], "text/event-stream");
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(
            read_to_end(&mut body).await.unwrap(),
            b"event: data: {\"type\":\"ping\"}\n\n"
        );
        assert!(body.is_end());
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn a_chunked_body_read_byte_by_byte_is_the_same() {
        let (conn, mut upstream) = pair();
        let answer = tokio::spawn(async move {
            let (_, mut body) = conn.answer(false).await.unwrap();
            read_to_end(&mut body).await
        });
        let wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
                     3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for byte in wire {
            upstream.write_all(&[*byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(answer.await.unwrap().unwrap(), b"abcde");
    }

    #[tokio::test]
    async fn an_answer_without_a_length_lasts_until_the_connection_closes() {
        let (conn, mut upstream) = pair();
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
            .await
            .unwrap();
        let (_, mut body) = conn.answer(false).await.unwrap();
        upstream.write_all(b"part two").await.unwrap();
        drop(upstream);
        assert_eq!(read_to_end(&mut body).await.unwrap(), b"part one, part two");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_its_connection_is_not_reused() {
        let (_, mut body) = answer_to(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        assert!(matches!(
            read_to_end(&mut body).await,
            Err(H1Error::Incomplete)
        ));
        assert!(body.take_reusable().is_none());

        let (_, mut body) =
            answer_to(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab")
                .await
                .unwrap();
        assert!(matches!(
            read_to_end(&mut body).await,
            Err(H1Error::Incomplete)
        ));

        assert!(matches!(
            answer_to(b"HTTP/1.1 200 O").await,
            Err(H1Error::Incomplete)
        ));

        let (conn, upstream) = pair();
        drop(upstream);
        assert!(matches!(conn.answer(false).await, Err(H1Error::NoAnswer)));
    }

    #[tokio::test]
    async fn informational_heads_are_skipped_and_bodiless_answers_end_at_once() {
        let (head, mut body) =
            answer_to(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert!(body.is_end());
        assert!(read_to_end(&mut body).await.unwrap().is_empty());
        assert!(body.take_reusable().is_some());

        let (conn, mut upstream) = pair();
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 512\r\n\r\n")
            .await
            .unwrap();
        let (_, body) = conn.answer(true).await.unwrap();
        assert!(body.is_end(), "the answer to HEAD has no body");
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_end_the_connection_with_the_answer() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ] {
            let (_, mut body) = answer_to(wire).await.unwrap();
            assert_eq!(read_to_end(&mut body).await.unwrap(), b"ok");
            assert!(body.take_reusable().is_none());
        }
        let (_, mut body) =
            answer_to(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        assert_eq!(read_to_end(&mut body).await.unwrap(), b"ok");
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn malformed_answers_are_refused() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(
                matches!(answer_to(wire).await, Err(H1Error::Invalid(_))),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let (_, mut body) =
            answer_to(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
                .await
                .unwrap();
        assert!(matches!(
            read_to_end(&mut body).await,
            Err(H1Error::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn header_names_come_back_lower_case_however_many_an_upstream_uses() {
        // More distinct names than the thread remembers, each in two spellings.
        for round in 0..2 {
            for index in 0..MAX_KNOWN_NAMES + 44 {
                let name = if round == 0 {
                    format!("X-Name-{index}")
                } else {
                    format!("x-name-{index}")
                };
                let wire =
                    format!("HTTP/1.1 200 OK\r\n{name}: {index}\r\ncontent-length: 0\r\n\r\n");
                let (head, _) = answer_to(wire.as_bytes()).await.unwrap();
                let expected = format!("x-name-{index}");
                assert_eq!(head.headers[expected.as_str()], index.to_string().as_str());
                assert_eq!(head.headers.keys().next().unwrap().as_str(), expected);
            }
        }
        assert!(
            answer_to(b"HTTP/1.1 200 OK\r\nbad name: 1\r\ncontent-length: 0\r\n\r\n")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn bytes_after_an_answer_keep_its_connection_out_of_the_pool() {
        let (_, mut body) = answer_to(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
            .await
            .unwrap();
        assert_eq!(read_to_end(&mut body).await.unwrap(), b"ok");
        assert!(body.take_reusable().is_none());
    }
}

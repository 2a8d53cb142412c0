//! HTTP/1.1 on one client connection: the relay's server.
//!
//! A connection is served by the task that holds it, one request at a time (pipelined
//! requests wait in the read buffer). A request's head is parsed with httparse into the
//! `http` types the handlers take, and its body is read whole, up to the body limit, before
//! the handler runs: every route reads its body whole anyway, so no channel carries it. The
//! answer is written by the same task: its head together with the body's first pieces when
//! they are ready, then each piece of a stream as it comes (one HTTP chunk for what is ready
//! at once), never held while the body waits.
//!
//! While the handler runs, and while a stream waits for its next piece, the connection is
//! watched for the client's close: the handler (and with it the upstream attempt) or the
//! stream is dropped at once, as hyper's server did.

use std::future::Future;
use std::io::IoSlice;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method, StatusCode, Uri, Version};
use http_body::Body as _;
use relay_core::envelope::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{
    content_length, ends_chunked, headers_at, offset_in, persistent, record_offsets, Body, Conn,
    H1Error, HeadKind, HeaderOffsets, State, MAX_HEAD, MAX_HEADERS,
};
use crate::error::envelope_response;

/// What a handler answers.
pub type Response = http::Response<axum::body::Body>;

/// What a connection allows its client (from `RelaySettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body accepted; a larger one is answered 413.
    pub body_bytes: usize,
    /// How long a connection waits for the whole head of its next request (from the end of
    /// the previous answer, or from the connection's start) before it is closed: nginx's
    /// `keepalive_timeout` and `client_header_timeout` in one.
    pub head_timeout: std::time::Duration,
    /// How long a request body may pause between two reads before the request is answered
    /// 408 and its connection closed (nginx's `client_body_timeout`).
    pub body_timeout: std::time::Duration,
}

/// The default [`Limits::head_timeout`]. Clients close their idle connections sooner (Claude
/// Code's after 4 s, the SDKs' after 5 s); this closes those whose client vanished or never
/// sends.
pub const DEFAULT_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// The default [`Limits::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The most of a refused body read (and thrown away) so that a client that writes its whole
/// body before it reads still receives the answer; past it the connection is closed.
const MAX_DRAIN: u64 = 256 * 1024 * 1024;

/// How much of a stream is gathered into one write when its pieces are ready at once.
const MAX_GATHER: usize = 64 * 1024;

/// The most pieces of a body gathered into one write.
const MAX_GATHER_PIECES: usize = 64;

/// Serves the requests of one connection until the client closes it, a request or answer
/// asks for its close, or `shutdown` is cancelled (an idle connection closes at once, a
/// request being served is answered first, with `connection: close`).
pub async fn serve_connection<T, F, Fut>(
    io: T,
    limits: Limits,
    shutdown: &CancellationToken,
    handler: F,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Fn(http::Request<Bytes>) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut conn = Conn::new(io);
    let mut out = Output {
        head: Vec::with_capacity(1024),
        pieces: Vec::new(),
    };
    // One timer for the connection's life, moved on before each request.
    let body_limit = limits.body_bytes;
    let head_wait = tokio::time::sleep(limits.head_timeout);
    tokio::pin!(head_wait);
    loop {
        head_wait
            .as_mut()
            .reset(tokio::time::Instant::now() + limits.head_timeout);
        let idle = conn.read.is_empty();
        let next = tokio::select! {
            biased;
            next = next_request(&mut conn) => next,
            () = shutdown.cancelled(), if idle => return,
            // An idle client, or one that sends its head too slowly: the connection is
            // closed, as nginx's `keepalive_timeout` and `client_header_timeout` close it.
            () = &mut head_wait => return,
        };
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(refusal) => {
                let _ =
                    write_response(&mut conn, &mut out, refusal.response(), &Asked::CLOSE).await;
                return;
            }
        };
        let Incoming {
            mut request,
            framing,
            mut asked,
        } = request;
        let body_length = match framing {
            State::Length(length) => Some(length),
            _ => None,
        };
        if expects_continue(&request) {
            if body_length.is_some_and(|length| length > body_limit as u64) {
                // Refused before the client sends it: nothing to drain.
                asked.close = true;
                let _ = write_response(&mut conn, &mut out, too_large(body_limit), &asked).await;
                return;
            }
            if framing != State::Done && conn.read.is_empty() {
                let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
                if write_all(&mut conn.io, &mut [IoSlice::new(interim)])
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let refused = match read_body(conn, framing, limits).await {
            BodyRead::Whole(back, body) => {
                conn = back;
                *request.body_mut() = body;
                None
            }
            BodyRead::TooLarge(back, drained) => {
                conn = back;
                asked.close |= !drained;
                Some(too_large(body_limit))
            }
            BodyRead::Malformed(back, message) => {
                conn = back;
                asked.close = true;
                Some(Refusal::bad_request(message).response())
            }
            BodyRead::Stalled(back) => {
                conn = back;
                asked.close = true;
                Some(
                    Refusal {
                        status: StatusCode::REQUEST_TIMEOUT,
                        message: format!(
                            "no more of the request body came for {}",
                            relay_core::duration::format_duration(limits.body_timeout)
                        ),
                    }
                    .response(),
                )
            }
            BodyRead::Gone => return,
        };
        let response = match refused {
            Some(response) => response,
            None => {
                let handling = pin!(handler(request));
                match until_closed(&mut conn, handling).await {
                    Some(response) => response,
                    None => return,
                }
            }
        };
        asked.close |= shutdown.is_cancelled();
        match write_response(&mut conn, &mut out, response, &asked).await {
            Ok(true) if !shutdown.is_cancelled() => {}
            _ => return,
        }
    }
}

/// What the request asked of its answer.
struct Asked {
    version: Version,
    head: bool,
    close: bool,
}

impl Asked {
    /// For an answer given before a request could be read.
    const CLOSE: Asked = Asked {
        version: Version::HTTP_11,
        head: false,
        close: true,
    };
}

/// A request whose head has been read.
struct Incoming {
    request: http::Request<Bytes>,
    framing: State,
    asked: Asked,
}

/// A request refused before its handler runs.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn bad_request(message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn response(&self) -> Response {
        let mut response = envelope_response(ErrorKind::InvalidRequest, &self.message);
        *response.status_mut() = self.status;
        response
    }
}

/// The 413 of a body over the limit, as the handlers answer it.
fn too_large(limit: usize) -> Response {
    axum::response::IntoResponse::into_response(crate::RelayError::TooLarge { limit })
}

/// Reads the next request's head; `None` when the client closed the connection between
/// requests (or in the middle of a head, which leaves nothing to answer).
async fn next_request<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
) -> Result<Option<Incoming>, Refusal> {
    let parsed = loop {
        if let Some(parsed) = parse_request_head(&conn.read, &mut conn.offsets)? {
            break parsed;
        }
        if conn.read.len() >= MAX_HEAD {
            return Err(Refusal {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                message: format!("the request head is longer than {MAX_HEAD} bytes"),
            });
        }
        match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    };
    let bytes = conn.read.split_to(parsed.length).freeze();
    let method = Method::from_bytes(&bytes[parsed.method])
        .map_err(|_| Refusal::bad_request("the request method is invalid"))?;
    let uri = Uri::from_maybe_shared(bytes.slice(parsed.target))
        .map_err(|_| Refusal::bad_request("the request target is invalid"))?;
    let headers = headers_at(&bytes, &conn.offsets, HeadKind::Request)
        .map_err(|_| Refusal::bad_request("a request header is invalid"))?;
    let version = if parsed.minor_version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut close = !persistent(version, &headers);
    let framing = match ends_chunked(&headers) {
        Some(true) => {
            // Both framings given: the chunks decide, and nothing after them is trusted.
            close |= headers.contains_key(header::CONTENT_LENGTH);
            State::ChunkSize
        }
        Some(false) => {
            return Err(Refusal::bad_request(
                "a request body's transfer coding must end with chunked",
            ))
        }
        None => match content_length(&headers) {
            Ok(None | Some(0)) => State::Done,
            Ok(Some(length)) => State::Length(length),
            Err(_) => return Err(Refusal::bad_request("the content-length is invalid")),
        },
    };
    let asked = Asked {
        version,
        head: method == Method::HEAD,
        close,
    };
    let mut request = http::Request::new(Bytes::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Incoming {
        request,
        framing,
        asked,
    }))
}

/// A request head found in the buffer: its length, and where its method and target lie
/// (its headers' offsets are written to the connection's list).
struct ParsedRequest {
    length: usize,
    method: std::ops::Range<usize>,
    target: std::ops::Range<usize>,
    minor_version: u8,
}

fn parse_request_head(
    buffer: &[u8],
    offsets: &mut Vec<HeaderOffsets>,
) -> Result<Option<ParsedRequest>, Refusal> {
    if buffer.is_empty() {
        // The connection's next request has not begun to arrive.
        return Ok(None);
    }
    // Left uninitialised, as for answers (`h1::parse_head`).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(buffer, &mut headers) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                message: format!("the request has more than {MAX_HEADERS} headers"),
            })
        }
        Err(error) => return Err(Refusal::bad_request(format!("malformed request: {error}"))),
    };
    record_offsets(buffer, request.headers, offsets);
    Ok(Some(ParsedRequest {
        length,
        method: offset_in(buffer, request.method.unwrap_or_default().as_bytes()),
        target: offset_in(buffer, request.path.unwrap_or_default().as_bytes()),
        minor_version: request.version.unwrap_or_default(),
    }))
}

fn expects_continue(request: &http::Request<Bytes>) -> bool {
    request.version() == Version::HTTP_11
        && request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// What reading a request's body gave. The connection comes back whenever an answer can
/// still be written on it.
enum BodyRead<T> {
    /// Read to its end.
    Whole(Conn<T>, Bytes),
    /// Longer than the limit: read past to its end (`true`), or up to [`MAX_DRAIN`].
    TooLarge(Conn<T>, bool),
    /// Its chunks could not be decoded.
    Malformed(Conn<T>, String),
    /// Nothing more of it came for [`Limits::body_timeout`].
    Stalled(Conn<T>),
    /// The client closed the connection, or it failed.
    Gone,
}

/// Reads a request's body whole.
async fn read_body<T: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Conn<T>,
    framing: State,
    limits: Limits,
) -> BodyRead<T> {
    let limit = limits.body_bytes;
    if let State::Length(length) = framing {
        if length <= limit as u64 {
            // A body of known length within the limit is read into the connection's buffer
            // until it is all there, and handed on as one piece of it: no copy, and reads as
            // large as the socket has (Claude Code's requests run to megabytes).
            return match read_whole(&mut conn, length as usize, limits.body_timeout).await {
                Ok(body) => BodyRead::Whole(conn, body),
                Err(Unread::Stalled) => BodyRead::Stalled(conn),
                Err(Unread::Gone) => BodyRead::Gone,
            };
        }
    }
    let mut body = Body {
        conn: Some(conn),
        state: framing,
        reusable: true,
    };
    let mut first: Option<Bytes> = None;
    let mut gathered = BytesMut::new();
    let mut seen: u64 = 0;
    let limit = limit as u64;
    loop {
        let next = tokio::time::timeout(
            limits.body_timeout,
            std::future::poll_fn(|cx| body.poll_data(cx)),
        )
        .await;
        let data = match next {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(_) => {
                return match body.conn.take() {
                    Some(conn) => BodyRead::Stalled(conn),
                    None => BodyRead::Gone,
                }
            }
        };
        let data = match data {
            Ok(data) => data,
            Err(H1Error::Invalid(message)) => {
                return match body.conn.take() {
                    Some(conn) => BodyRead::Malformed(
                        conn,
                        format!("the request body is malformed: {message}"),
                    ),
                    None => BodyRead::Gone,
                };
            }
            Err(_) => return BodyRead::Gone,
        };
        seen += data.len() as u64;
        if seen > limit {
            first = None;
            gathered = BytesMut::new();
            if seen > MAX_DRAIN {
                return match body.conn.take() {
                    Some(conn) => BodyRead::TooLarge(conn, false),
                    None => BodyRead::Gone,
                };
            }
            continue;
        }
        match first.take() {
            None if gathered.is_empty() => first = Some(data),
            None => gathered.extend_from_slice(&data),
            Some(earlier) => {
                gathered.reserve(earlier.len() + data.len());
                gathered.extend_from_slice(&earlier);
                gathered.extend_from_slice(&data);
            }
        }
    }
    let Some(conn) = body.conn.take() else {
        return BodyRead::Gone;
    };
    if seen > limit {
        BodyRead::TooLarge(conn, true)
    } else {
        BodyRead::Whole(conn, first.unwrap_or_else(|| gathered.freeze()))
    }
}

/// The room made in the buffer at once for a body still to come; it grows as the body
/// arrives.
const BODY_ROOM: usize = 1024 * 1024;

/// Reads until the buffer holds `length` bytes of body, and takes them; `pause`: the longest
/// wait for more.
async fn read_whole<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    length: usize,
    pause: std::time::Duration,
) -> Result<Bytes, Unread> {
    if conn.read.len() < length {
        conn.read.reserve((length - conn.read.len()).min(BODY_ROOM));
    }
    while conn.read.len() < length {
        let read = tokio::time::timeout(pause, std::future::poll_fn(|cx| conn.poll_fill(cx))).await;
        match read {
            Ok(Ok(0) | Err(_)) => return Err(Unread::Gone),
            Ok(Ok(_)) => {}
            Err(_) => return Err(Unread::Stalled),
        }
    }
    Ok(conn.read.split_to(length).freeze())
}

/// Why a body was not read whole.
enum Unread {
    Gone,
    Stalled,
}

/// Runs `handling` to its answer, or drops it when the client closes the connection first.
/// Bytes the client sends meanwhile (a pipelined request) stay in the buffer.
async fn until_closed<T, F>(
    conn: &mut Conn<T>,
    mut handling: std::pin::Pin<&mut F>,
) -> Option<Response>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response>,
{
    std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        conn.poll_closed(cx).map(|()| None)
    })
    .await
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    /// Ready when the client has closed the connection (or it failed). Whatever the client
    /// sends meanwhile is kept, up to a head's length; past that the connection is no longer
    /// read until the buffer is used.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.read.len() >= MAX_HEAD {
                return Poll::Pending;
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
    }
}

/// How an answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimited {
    /// No body: `HEAD`, `1xx`, `204`, `304`.
    Bodiless,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client, a body of unknown length: it ends with the connection.
    Close,
}

/// What one wait for the answer's body gave.
enum Step {
    Data(Bytes),
    /// Trailers, or an empty piece: nothing to write.
    Nothing,
    End,
    Failed,
    /// Nothing more is ready: write what was gathered.
    Flush,
    ClientGone,
}

/// What a connection writes its answers with, kept from one answer to the next.
struct Output {
    head: Vec<u8>,
    /// An answer's body pieces gathered for one write.
    pieces: Vec<Bytes>,
}

/// Writes an answer; `Ok(true)` when the connection can carry another request.
async fn write_response<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    out: &mut Output,
    response: Response,
    asked: &Asked,
) -> std::io::Result<bool> {
    let Output { head, pieces } = out;
    pieces.clear();
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let mut close = asked.close || !persistent(Version::HTTP_11, &parts.headers);
    let size = body.size_hint().exact();
    let delimited = if asked.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Delimited::Bodiless
    } else if let Some(size) = size {
        Delimited::Length(size)
    } else if asked.version == Version::HTTP_11 {
        Delimited::Chunked
    } else {
        close = true;
        Delimited::Close
    };
    head.clear();
    response_head(head, status, &parts.headers, delimited, size, asked, close);
    if delimited == Delimited::Bodiless {
        write_all(&mut conn.io, &mut [IoSlice::new(head)]).await?;
        return Ok(!close);
    }

    let mut body = pin!(body);
    let mut gathered = 0usize;
    let mut head_sent = false;
    let mut written: u64 = 0;
    loop {
        let waiting = head_sent && pieces.is_empty();
        let step = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(match frame.into_data() {
                Ok(data) if !data.is_empty() => Step::Data(data),
                _ => Step::Nothing,
            }),
            Poll::Ready(Some(Err(_))) => Poll::Ready(Step::Failed),
            Poll::Ready(None) => Poll::Ready(Step::End),
            Poll::Pending if waiting => conn.poll_closed(cx).map(|()| Step::ClientGone),
            Poll::Pending => Poll::Ready(Step::Flush),
        })
        .await;
        match step {
            Step::Data(data) => {
                written += data.len() as u64;
                if let Delimited::Length(length) = delimited {
                    if written > length {
                        // More than the length announced: the connection cannot go on.
                        return Err(std::io::ErrorKind::InvalidData.into());
                    }
                }
                gathered += data.len();
                pieces.push(data);
                if gathered >= MAX_GATHER || pieces.len() >= MAX_GATHER_PIECES {
                    write_pieces(conn, head, &mut head_sent, pieces, delimited, false).await?;
                    gathered = 0;
                }
            }
            Step::Nothing => {}
            Step::Flush => {
                write_pieces(conn, head, &mut head_sent, pieces, delimited, false).await?;
                gathered = 0;
            }
            Step::End => {
                write_pieces(conn, head, &mut head_sent, pieces, delimited, true).await?;
                let complete = match delimited {
                    Delimited::Length(length) => written == length,
                    _ => true,
                };
                return Ok(complete && !close);
            }
            Step::Failed | Step::ClientGone => {
                // What was gathered goes out; the missing end tells the client the body
                // was cut.
                let _ = write_pieces(conn, head, &mut head_sent, pieces, delimited, false).await;
                return Ok(false);
            }
        }
    }
}

/// Writes the head (unless it went already) and the pieces gathered, as one chunk when the
/// body is chunked, with the last chunk after them at the body's `end`.
async fn write_pieces<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    head: &[u8],
    head_sent: &mut bool,
    pieces: &mut Vec<Bytes>,
    delimited: Delimited,
    end: bool,
) -> std::io::Result<()> {
    let chunked = delimited == Delimited::Chunked;
    let mut size_line = [0u8; 18];
    let mut size_line_length = 0;
    let length: usize = pieces.iter().map(Bytes::len).sum();
    if chunked && length > 0 {
        let mut cursor = std::io::Cursor::new(&mut size_line[..]);
        std::io::Write::write_fmt(&mut cursor, format_args!("{length:x}\r\n"))?;
        size_line_length = cursor.position() as usize;
    }
    // At most the head, a size line, the pieces, the chunk's end and the last chunk.
    let mut slices = [IoSlice::new(&[]); MAX_GATHER_PIECES + 4];
    let mut count = 0;
    if !*head_sent {
        push(&mut slices, &mut count, head);
    }
    push(&mut slices, &mut count, &size_line[..size_line_length]);
    for piece in pieces.iter() {
        push(&mut slices, &mut count, piece);
    }
    if chunked && length > 0 {
        push(&mut slices, &mut count, b"\r\n");
    }
    if chunked && end {
        push(&mut slices, &mut count, b"0\r\n\r\n");
    }
    if count > 0 {
        write_all(&mut conn.io, &mut slices[..count]).await?;
    }
    *head_sent = true;
    pieces.clear();
    Ok(())
}

/// Adds a non-empty slice to those of one write.
fn push<'a>(slices: &mut [IoSlice<'a>], count: &mut usize, slice: &'a [u8]) {
    if !slice.is_empty() {
        slices[*count] = IoSlice::new(slice);
        *count += 1;
    }
}

/// Writes every slice, however the transport splits the writes.
async fn write_all<T: AsyncWrite + Unpin>(
    io: &mut T,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    io.flush().await
}

/// The head of an answer: the handler's headers, but the framing and the connection's fate
/// are the server's to write.
fn response_head(
    head: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    delimited: Delimited,
    size: Option<u64>,
    asked: &Asked,
    close: bool,
) {
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let ours_for_length = !matches!(delimited, Delimited::Bodiless) || size.is_some();
    for (name, value) in headers {
        let skip = *name == header::CONNECTION
            || *name == header::TRANSFER_ENCODING
            || name.as_str() == "keep-alive"
            || (*name == header::CONTENT_LENGTH && ours_for_length);
        if skip {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let length = match delimited {
        Delimited::Length(length) => Some(length),
        // A `HEAD` answer tells the length its `GET` would have.
        Delimited::Bodiless if asked.head => size,
        _ => None,
    };
    if let Some(length) = length {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if delimited == Delimited::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    } else if asked.version == Version::HTTP_10 {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        date(head);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` of this second, formatted once per second and thread.
    static DATE: std::cell::RefCell<(u64, String)> = const {
        std::cell::RefCell::new((u64::MAX, String::new()))
    };
}

fn date(head: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            *date = (second, httpdate::fmt_http_date(now));
        }
        head.extend_from_slice(date.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::h1::Head;

    /// What the tests' connections allow: a body of 64 bytes, and timeouts other than the
    /// defaults, to show the ones given are kept.
    const LIMITS: Limits = Limits {
        body_bytes: 64,
        head_timeout: std::time::Duration::from_secs(10),
        body_timeout: std::time::Duration::from_secs(7),
    };

    /// The client's end of a connection that `handler` serves, with [`LIMITS`].
    fn serve<F, Fut>(
        shutdown: &CancellationToken,
        handler: F,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>)
    where
        F: Fn(http::Request<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Response> + Send,
    {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let shutdown = shutdown.clone();
        let served = tokio::spawn(async move {
            serve_connection(ours, LIMITS, &shutdown, handler).await;
        });
        (theirs, served)
    }

    /// Answers `METHOD target length-of-body`.
    async fn echo(request: http::Request<Bytes>) -> Response {
        let text = format!(
            "{} {} {}",
            request.method(),
            request.uri(),
            request.body().len()
        );
        http::Response::new(axum::body::Body::from(text))
    }

    /// Reads one answer on the client's end, with the relay's own client code.
    async fn answer(
        client: impl Into<Conn<DuplexStream>>,
        head_request: bool,
    ) -> (Head, String, Conn<DuplexStream>) {
        let (head, mut body) = client.into().answer(head_request).await.unwrap();
        let mut text = Vec::new();
        while let Some(data) = std::future::poll_fn(|cx| body.poll_data(cx)).await {
            text.extend_from_slice(&data.unwrap());
        }
        let conn = body.conn.take().unwrap();
        (head, String::from_utf8(text).unwrap(), conn)
    }

    impl From<DuplexStream> for Conn<DuplexStream> {
        fn from(client: DuplexStream) -> Self {
            Conn::new(client)
        }
    }

    async fn write(client: &mut DuplexStream, wire: &[u8]) {
        client.write_all(wire).await.unwrap();
    }

    /// Whether the server closed the connection: a read gives its end.
    async fn closed(mut conn: Conn<DuplexStream>) -> bool {
        let mut rest = Vec::new();
        conn.read.is_empty() && conn.io.read_to_end(&mut rest).await.is_ok() && rest.is_empty()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_with_their_bodies_whole() {
        let shutdown = CancellationToken::new();
        let (mut client, _served) = serve(&shutdown, echo);
        write(
            &mut client,
            b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-length: 5\r\n\r\nhello\
              POST /v1/messages?beta=true HTTP/1.1\r\nhost: relay\r\ntransfer-encoding: chunked\r\n\r\n\
              4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\ntrailer: x\r\n\r\n",
        )
        .await;
        let (head, text, conn) = answer(client, false).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(text, "POST /v1/messages 5");
        assert_eq!(head.headers[header::CONTENT_LENGTH], "19");
        assert!(head.headers.contains_key(header::DATE));
        assert!(!head.headers.contains_key(header::CONNECTION));
        let (head, text, _) = answer(conn, false).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(text, "POST /v1/messages?beta=true 7");
    }

    #[tokio::test]
    async fn a_body_written_in_pieces_arrives_whole() {
        let shutdown = CancellationToken::new();
        let (ours, mut client) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            let limits = Limits {
                body_bytes: 1 << 20,
                ..LIMITS
            };
            serve_connection(ours, limits, &shutdown, |request: http::Request<Bytes>| {
                let body = request.into_body();
                async move {
                    let sum: u64 = body.iter().map(|byte| u64::from(*byte)).sum();
                    let text = format!("{} {sum}", body.len());
                    http::Response::new(axum::body::Body::from(text))
                }
            })
            .await;
        });
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected: u64 = body.iter().map(|byte| u64::from(*byte)).sum();
        let mut wire = b"POST /v1/messages HTTP/1.1\r\ncontent-length: 300000\r\n\r\n".to_vec();
        wire.extend_from_slice(&body);
        // The duplex holds 64 KiB: the body goes over in pieces while the server reads.
        let writer = tokio::spawn(async move {
            client.write_all(&wire).await.unwrap();
            client
        });
        let client = writer.await.unwrap();
        let (head, text, _) = answer(client, false).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(text, format!("300000 {expected}"));
        drop(served);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_whole_head_in_time_is_closed() {
        let shutdown = CancellationToken::new();
        // Idle after an answer.
        let (mut client, served) = serve(&shutdown, echo);
        write(&mut client, b"GET /v1/models HTTP/1.1\r\n\r\n").await;
        let (_, text, conn) = answer(client, false).await;
        assert_eq!(text, "GET /v1/models 0");
        tokio::time::sleep(LIMITS.head_timeout - std::time::Duration::from_secs(1)).await;
        assert!(!served.is_finished());
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        served.await.unwrap();
        assert!(closed(conn).await);
        // A head that never ends.
        let (mut client, served) = serve(&shutdown, echo);
        write(&mut client, b"GET /v1/models HTTP/1.1\r\nx-slow: ").await;
        tokio::time::sleep(LIMITS.head_timeout + std::time::Duration::from_secs(1)).await;
        served.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_is_answered_408() {
        for wire in [
            &b"POST /v1/messages HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc"[..],
            b"POST /v1/messages HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ] {
            let shutdown = CancellationToken::new();
            let (mut client, served) = serve(&shutdown, echo);
            write(&mut client, wire).await;
            let answered = tokio::spawn(answer(client, false));
            tokio::time::sleep(LIMITS.body_timeout - std::time::Duration::from_secs(1)).await;
            assert!(!answered.is_finished());
            let (head, text, conn) = answered.await.unwrap();
            assert_eq!(head.status, StatusCode::REQUEST_TIMEOUT);
            assert!(text.contains("invalid_request_error"), "{text}");
            assert!(text.contains("came for 7s"), "{text}");
            assert_eq!(head.headers[header::CONNECTION], "close");
            assert!(closed(conn).await);
            served.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_client_expecting_100_continue_is_asked_for_its_body() {
        let shutdown = CancellationToken::new();
        let (mut client, _served) = serve(&shutdown, echo);
        write(
            &mut client,
            b"POST /v1/messages HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
        )
        .await;
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        write(&mut client, b"abc").await;
        let (_, text, _) = answer(client, false).await;
        assert_eq!(text, "POST /v1/messages 3");
    }

    #[tokio::test]
    async fn a_body_announced_over_the_limit_with_expect_is_refused_unread() {
        let shutdown = CancellationToken::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let (mut client, served) = serve(&shutdown, move |request| {
            counted.fetch_add(1, Ordering::SeqCst);
            echo(request)
        });
        write(
            &mut client,
            b"POST /v1/messages HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 65\r\n\r\n",
        )
        .await;
        let (head, text, conn) = answer(client, false).await;
        assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text.contains("\"type\":\"request_too_large\""), "{text}");
        assert_eq!(head.headers[header::CONNECTION], "close");
        assert!(closed(conn).await);
        served.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_read_past_and_the_connection_goes_on() {
        let shutdown = CancellationToken::new();
        let (mut client, _served) = serve(&shutdown, echo);
        let mut wire = b"POST /v1/messages HTTP/1.1\r\ncontent-length: 100\r\n\r\n".to_vec();
        wire.extend_from_slice(&[b'x'; 100]);
        wire.extend_from_slice(b"GET /v1/models HTTP/1.1\r\n\r\n");
        write(&mut client, &wire).await;
        let (head, text, conn) = answer(client, false).await;
        assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text.contains("request_too_large"), "{text}");
        assert!(!head.headers.contains_key(header::CONNECTION));
        let (head, text, _) = answer(conn, false).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(text, "GET /v1/models 0");
    }

    #[tokio::test]
    async fn malformed_requests_get_an_anthropic_error_and_the_connection_closes() {
        let cases: [(&[u8], StatusCode); 4] = [
            (b"NOT HTTP AT ALL\r\n\r\n", StatusCode::BAD_REQUEST),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 1x\r\n\r\n",
                StatusCode::BAD_REQUEST,
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
                StatusCode::BAD_REQUEST,
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (wire, status) in cases {
            let shutdown = CancellationToken::new();
            let (mut client, served) = serve(&shutdown, echo);
            write(&mut client, wire).await;
            let (head, text, conn) = answer(client, false).await;
            assert_eq!(head.status, status, "{}", String::from_utf8_lossy(wire));
            assert!(
                text.contains("\"type\":\"invalid_request_error\""),
                "{text}"
            );
            assert_eq!(head.headers[header::CONNECTION], "close");
            assert!(closed(conn).await);
            served.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_head_too_long_gets_431() {
        let shutdown = CancellationToken::new();
        let (mut client, served) = serve(&shutdown, echo);
        let mut wire = b"POST / HTTP/1.1\r\nx-long: ".to_vec();
        wire.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        write(&mut client, &wire).await;
        let (head, text, _) = answer(client, false).await;
        assert_eq!(head.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(text.contains("invalid_request_error"), "{text}");
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_is_written_piece_by_piece_as_it_comes() {
        let shutdown = CancellationToken::new();
        let (pieces, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
        let receiver = std::sync::Mutex::new(Some(receiver));
        let (mut client, _served) = serve(&shutdown, move |_| {
            let receiver = receiver.lock().unwrap().take().unwrap();
            async move {
                let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let piece = receiver.recv().await?;
                    Some((
                        Ok::<_, std::io::Error>(http_body::Frame::data(piece)),
                        receiver,
                    ))
                });
                http::Response::new(axum::body::Body::new(http_body_util::StreamBody::new(
                    frames,
                )))
            }
        });
        write(&mut client, b"POST /v1/messages HTTP/1.1\r\n\r\n").await;
        let (head, mut body) = Conn::new(client).answer(false).await.unwrap();
        assert_eq!(head.headers[header::TRANSFER_ENCODING], "chunked");
        pieces
            .send(Bytes::from_static(b"event: one\n\n"))
            .await
            .unwrap();
        let first = std::future::poll_fn(|cx| body.poll_data(cx)).await;
        assert_eq!(first.unwrap().unwrap(), "event: one\n\n");
        pieces
            .send(Bytes::from_static(b"event: two\n\n"))
            .await
            .unwrap();
        let second = std::future::poll_fn(|cx| body.poll_data(cx)).await;
        assert_eq!(second.unwrap().unwrap(), "event: two\n\n");
        drop(pieces);
        assert!(std::future::poll_fn(|cx| body.poll_data(cx))
            .await
            .is_none());
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn the_handler_is_dropped_when_the_client_closes() {
        let shutdown = CancellationToken::new();
        let (dropped, was_dropped) = tokio::sync::oneshot::channel::<()>();
        let dropped = std::sync::Mutex::new(Some(dropped));
        let (mut client, served) = serve(&shutdown, move |_| {
            let guard = dropped.lock().unwrap().take();
            async move {
                let _guard = guard;
                std::future::pending::<Response>().await
            }
        });
        write(
            &mut client,
            b"POST /v1/messages HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await;
        tokio::task::yield_now().await;
        drop(client);
        // The guard's sender is dropped with the handler: the receiver sees it closed.
        assert!(was_dropped.await.is_err());
        served.await.unwrap();
    }

    #[tokio::test]
    async fn http_1_0_closes_unless_asked_and_head_answers_carry_no_body() {
        let shutdown = CancellationToken::new();
        let (mut client, _served) = serve(&shutdown, echo);
        write(
            &mut client,
            b"HEAD /healthz HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
        )
        .await;
        let (head, text, conn) = answer(client, true).await;
        assert_eq!(head.headers[header::CONTENT_LENGTH], "15");
        assert_eq!(head.headers[header::CONNECTION], "keep-alive");
        assert_eq!(text, "");
        let (head, text, conn) = answer(conn, false).await;
        assert_eq!(text, "GET /healthz 0");
        assert_eq!(head.headers[header::CONNECTION], "close");
        assert!(closed(conn).await);
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_answers_the_request_in_flight_first() {
        let shutdown = CancellationToken::new();
        let (_idle, idle_served) = serve(&shutdown, echo);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = std::sync::Mutex::new(Some(released));
        let (mut client, served) = serve(&shutdown, move |request| {
            let released = released.lock().unwrap().take();
            async move {
                if let Some(released) = released {
                    let _ = released.await;
                }
                echo(request).await
            }
        });
        write(&mut client, b"GET /v1/models HTTP/1.1\r\n\r\n").await;
        tokio::task::yield_now().await;
        shutdown.cancel();
        idle_served.await.unwrap();
        release.send(()).unwrap();
        let (head, text, conn) = answer(client, false).await;
        assert_eq!(text, "GET /v1/models 0");
        assert_eq!(head.headers[header::CONNECTION], "close");
        assert!(closed(conn).await);
        served.await.unwrap();
    }
}

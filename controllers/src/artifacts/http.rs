//! HTTP side of the artifact server: a small HTTP/1.1 server for GET and HEAD of the fixed
//! artifact names, one `Range` per request, keep-alive and pipelining, over TCP or TLS.
//!
//! Why not hyper: most of a boot ISO is untouched bytes of the cached source file. Over plain
//! TCP those go from the page cache to the socket with sendfile(2), never through user space;
//! only the ranges the patch replaced are written from memory ([`beskar7_boot::IsoPatch::pieces`]).
//! A hyper body is a stream of byte buffers, so every byte would be read into memory first.
//! Over TLS the bytes pass through rustls anyway, so they are read in chunks.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use beskar7_boot::Piece;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::ArtifactServerConfig;
use super::store::{ArtifactError, ArtifactStore, PreparedIso};

/// Bytes read from the image per chunk of a response body sent through TLS.
const CHUNK: usize = 256 * 1024;
/// Largest request head accepted (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A client has this long to send a whole request head once it started one (and to send its
/// first one after connecting).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A kept-alive connection with no request in this time is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response whose client takes nothing for this long is abandoned.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A memory body up to this size goes out in the same write as the head.
const INLINE_BODY: usize = 64 * 1024;

/// What a `Range` header asks for, given the representation's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: send everything with 200.
    Full,
    /// Inclusive byte range, 206.
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Parses a `Range` header (RFC 9110). One range is served; several ranges or an invalid
/// header are answered with the full representation, which the RFC allows.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeRequest::Full,
        (true, false) => match num(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if len > 0 => RangeRequest::Partial {
                start: len - n.min(len),
                end: len - 1,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeRequest::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match num(b) {
                    Some(e) if e >= start => e,
                    _ => return RangeRequest::Full,
                }
            };
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
    }
}

/// The artifact server's bound socket, plain HTTP or HTTPS.
pub struct ArtifactListener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ArtifactListener {
    /// Binds the configured address and loads the serving certificate when TLS is configured:
    /// both fail here, before anything is served.
    pub async fn bind(config: &ArtifactServerConfig) -> anyhow::Result<Self> {
        let bind = config.bind_address;
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| anyhow::anyhow!("artifact server on {bind}: {e}"))?;
        Self::new(listener, config.tls_cert_dir.as_deref())
    }

    /// On a bound listener (tests bind port 0 first); TLS with `tls.crt` / `tls.key` of
    /// `tls_cert_dir` when given.
    pub fn new(listener: TcpListener, tls_cert_dir: Option<&Path>) -> anyhow::Result<Self> {
        let tls = tls_cert_dir
            .map(|dir| crate::tls::acceptor(dir, "artifact server", &[b"http/1.1".as_slice()]))
            .transpose()?;
        Ok(Self { listener, tls })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes; then stops accepting, closes idle connections, lets
    /// responses in flight finish and returns.
    pub async fn serve(
        self,
        store: Arc<ArtifactStore>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let (store, tls, stop) = (store.clone(), self.tls.clone(), stop_rx.clone());
                        connections.spawn(async move {
                            let Some(stream) = handshake(tcp, tls, peer).await else {
                                return;
                            };
                            if let Err(e) = connection(stream, &store, stop).await {
                                debug!(%peer, error = %e, "artifact connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting an artifact connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let _ = stop_tx.send(true);
        drop(self.listener);
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

/// Binds and serves until `shutdown` completes ([`ArtifactListener`]).
pub async fn serve(
    config: &ArtifactServerConfig,
    store: Arc<ArtifactStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = ArtifactListener::bind(config).await?;
    info!(address = %config.bind_address, base_url = %config.external_base_url, tls = listener.is_tls(), "artifact server listening");
    listener.serve(store, shutdown).await?;
    Ok(())
}

async fn handshake(
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: SocketAddr,
) -> Option<Stream> {
    let Some(tls) = tls else {
        return Some(Stream::Plain(tcp));
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => Some(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "artifact TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "artifact TLS handshake timed out");
            None
        }
    }
}

/// A client connection, TCP or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Other,
}

/// What the server reads of a request.
#[derive(Debug)]
struct Request {
    method: Method,
    target: String,
    range: Option<String>,
    if_range: Option<String>,
    /// The client lets the connection stay open after the response.
    keep_alive: bool,
    /// It announced a body. GET and HEAD carry none here, and the body is not read, so the
    /// request is refused and the connection closed.
    has_body: bool,
}

#[derive(Debug)]
enum Incoming {
    Request(Request),
    /// A head the server refuses: answered, then the connection is closed.
    Bad(u16, &'static str),
    Closed,
}

/// Reads the next request head from `stream`; bytes after it stay in `buf` (pipelining).
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    first: bool,
) -> io::Result<Incoming> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let parsed = request_of(&req);
                    buf.drain(..n);
                    return Ok(parsed);
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                    return Ok(Incoming::Bad(431, "request head too large\n"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Ok(Incoming::Bad(431, "too many request headers\n"));
                }
                Err(_) => return Ok(Incoming::Bad(400, "malformed request\n")),
            }
        }
        // Waiting for a new request may take the idle time; a started one must finish soon.
        let wait = if buf.is_empty() && !first {
            IDLE_TIMEOUT
        } else {
            HEAD_TIMEOUT
        };
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Incoming::Closed),
        };
        if n == 0 {
            return Ok(Incoming::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn request_of(req: &httparse::Request<'_, '_>) -> Incoming {
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| v.trim().to_string())
    };
    let connection = header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
    // HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 keeps alive unless asked to close.
    let keep_alive = if req.version == Some(0) {
        has("keep-alive")
    } else {
        !has("close")
    };
    let has_body =
        header("transfer-encoding").is_some() || header("content-length").is_some_and(|v| v != "0");
    Incoming::Request(Request {
        method,
        target: req.path.unwrap_or_default().to_string(),
        range: header("range"),
        if_range: header("if-range"),
        keep_alive,
        has_body,
    })
}

/// Serves requests on one connection until the client closes it, asks to, idles, or the server
/// stops.
async fn connection(
    mut stream: Stream,
    store: &ArtifactStore,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        let incoming = tokio::select! {
            r = read_request(&mut stream, &mut buf, first) => r?,
            // between requests only: a response under way is finished first
            _ = stop.wait_for(|s| *s), if buf.is_empty() => Incoming::Closed,
        };
        first = false;
        let (response, keep_alive) = match incoming {
            Incoming::Closed => break,
            Incoming::Bad(status, text) => (Response::text(status, text), false),
            Incoming::Request(req) if req.has_body => (
                Response::text(400, "request bodies are not accepted\n"),
                false,
            ),
            Incoming::Request(req) => {
                let keep_alive = req.keep_alive && !*stop.borrow();
                let mut response = respond(store, &req).await;
                if req.method == Method::Head {
                    response.body = Body::Empty;
                }
                (response, keep_alive)
            }
        };
        write_response(&mut stream, response, keep_alive).await?;
        if !keep_alive {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    Ok(())
}

/// A response: status, headers (besides those every response gets) and what the body is made of.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// The announced length (HEAD announces the body it does not send).
    content_length: u64,
    body: Body,
}

enum Body {
    Empty,
    Memory(Bytes),
    /// `start..end` of a prepared boot ISO.
    Iso {
        iso: Arc<PreparedIso>,
        start: u64,
        end: u64,
    },
}

impl Response {
    fn text(status: u16, text: impl Into<String>) -> Self {
        let text: String = text.into();
        Response {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            content_length: text.len() as u64,
            body: Body::Memory(Bytes::from(text)),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "Internal Server Error",
    }
}

fn not_found() -> Response {
    Response::text(404, "not found\n")
}

fn error_response(e: &ArtifactError) -> Response {
    let status = match e {
        ArtifactError::Fetch { .. } | ArtifactError::ChecksumMismatch { .. } => 502,
        _ => 500,
    };
    Response::text(status, format!("{e}\n"))
}

/// `(token, name)` of a `/{token}/{name}` request target. The query is ignored and nothing is
/// percent-decoded: tokens are hex and names are fixed, so an encoded path matches nothing.
fn artifact_path(target: &str) -> Option<(&str, &str)> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let (token, name) = path.strip_prefix('/')?.split_once('/')?;
    (!token.is_empty() && !name.is_empty() && !name.contains('/')).then_some((token, name))
}

enum Source {
    Memory(Bytes),
    Sparse(super::SparseImage),
    Iso(Arc<PreparedIso>),
}

async fn respond(store: &ArtifactStore, req: &Request) -> Response {
    let Some((token, name)) = artifact_path(&req.target) else {
        return not_found();
    };
    let Some(m) = store.lookup(token) else {
        return not_found();
    };
    if req.method == Method::Other {
        let mut r = Response::text(405, "");
        r.headers.push(("allow", "GET, HEAD".into()));
        return r;
    }
    let (source, content_type, etag) = match name {
        "boot.iso" if m.set.boot_iso.is_some() => match store.prepare_machine(&m).await {
            Ok(p) => {
                let etag = p.etag.clone();
                (Source::Iso(p), "application/octet-stream".to_string(), etag)
            }
            Err(e) => {
                warn!(error = %e, "boot ISO not served");
                return error_response(&e);
            }
        },
        "config.iso" | "config.img" => match &m.set.config_volume {
            Some(v) if v.format.file_name() == name => (
                Source::Sparse(v.data.clone()),
                "application/octet-stream".to_string(),
                format!("\"{}\"", v.data.digest()),
            ),
            _ => return not_found(),
        },
        "config" => match &m.set.config_document {
            Some(d) => (
                Source::Memory(d.data.clone()),
                d.content_type.clone(),
                memory_etag(&d.data),
            ),
            None => return not_found(),
        },
        _ => return not_found(),
    };
    let len = match &source {
        Source::Memory(b) => b.len() as u64,
        Source::Sparse(v) => v.len() as u64,
        Source::Iso(p) => p.len,
    };
    // If-Range with another validator: the representation changed, send all of it.
    let range_header = match req.if_range.as_deref() {
        Some(validator) if validator != etag => None,
        _ => req.range.as_deref(),
    };
    let mut headers = vec![
        ("accept-ranges", "bytes".to_string()),
        ("etag", etag),
        ("content-type", content_type),
    ];
    let (status, start, end) = match parse_range(range_header, len) {
        RangeRequest::Full => (200, 0, len),
        RangeRequest::Partial { start, end } => {
            headers.push(("content-range", format!("bytes {start}-{end}/{len}")));
            (206, start, end + 1)
        }
        RangeRequest::Unsatisfiable => {
            return Response {
                status: 416,
                headers: vec![
                    ("content-range", format!("bytes */{len}")),
                    ("accept-ranges", "bytes".to_string()),
                ],
                content_length: 0,
                body: Body::Empty,
            };
        }
    };
    let body = match source {
        Source::Memory(b) => Body::Memory(b.slice(start as usize..end as usize)),
        Source::Sparse(v) => Body::Memory(v.read(start as usize, end as usize)),
        Source::Iso(iso) => Body::Iso { iso, start, end },
    };
    Response {
        status,
        headers,
        content_length: end - start,
        body,
    }
}

fn memory_etag(b: &Bytes) -> String {
    format!("\"{}\"", super::store::content_digest(b))
}

/// The status line and headers. Every response is `no-store`: a URL is a credential, and what it
/// serves changes with the claim.
fn response_head(r: &Response, keep_alive: bool) -> Vec<u8> {
    use std::fmt::Write;
    let mut h = String::with_capacity(256);
    let _ = write!(h, "HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    let _ = write!(
        h,
        "date: {}\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now()),
        r.content_length
    );
    for (name, value) in &r.headers {
        let _ = write!(h, "{name}: {value}\r\n");
    }
    if !keep_alive {
        h.push_str("connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
}

async fn write_all(stream: &mut Stream, data: &[u8]) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(data))
        .await
        .map_err(|_| stalled())?
}

async fn write_response(stream: &mut Stream, r: Response, keep_alive: bool) -> io::Result<()> {
    let mut head = response_head(&r, keep_alive);
    match r.body {
        Body::Empty => write_all(stream, &head).await?,
        Body::Memory(b) if b.len() <= INLINE_BODY => {
            head.extend_from_slice(&b);
            write_all(stream, &head).await?;
        }
        Body::Memory(b) => {
            write_all(stream, &head).await?;
            write_all(stream, &b).await?;
        }
        Body::Iso { iso, start, end } => {
            write_all(stream, &head).await?;
            for piece in iso.pieces(start, end) {
                match piece {
                    Piece::Bytes(b) => write_all(stream, b).await?,
                    Piece::Zeros(n) => write_zeros(stream, n).await?,
                    Piece::Source { offset, len } => match stream {
                        Stream::Plain(tcp) => send_file(tcp, &iso, offset, len).await?,
                        Stream::Tls(_) => copy_file(stream, &iso, offset, len).await?,
                    },
                }
            }
        }
    }
    tokio::time::timeout(WRITE_TIMEOUT, stream.flush())
        .await
        .map_err(|_| stalled())?
}

async fn write_zeros(stream: &mut Stream, mut n: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        write_all(stream, &ZEROS[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

fn short_image() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "image shorter than announced")
}

/// `len` bytes of the cached source file from `offset`, page cache to socket (sendfile(2)).
/// A read from disk blocks the worker thread while it lasts, as nginx's sendfile does; a cached
/// image is normally in the page cache after its download.
async fn send_file(tcp: &TcpStream, iso: &PreparedIso, offset: u64, len: u64) -> io::Result<()> {
    let (mut offset, end) = (offset, offset + len);
    while offset < end {
        tokio::time::timeout(WRITE_TIMEOUT, tcp.writable())
            .await
            .map_err(|_| stalled())??;
        let want = (end - offset).min(1 << 30) as usize;
        match tcp.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(tcp, &*iso.file, Some(&mut offset), want).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(short_image()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `len` bytes of the cached source file from `offset`, read in chunks on the blocking pool.
async fn copy_file(
    stream: &mut Stream,
    iso: &Arc<PreparedIso>,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let (mut pos, end) = (offset, offset + len);
    while pos < end {
        let n = CHUNK.min((end - pos) as usize);
        let file = iso.file.clone();
        let buf = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, pos).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    short_image()
                } else {
                    e
                }
            })?;
            Ok::<_, io::Error>(buf)
        })
        .await
        .map_err(io::Error::other)??;
        write_all(stream, &buf).await?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            Partial { start: 0, end: 4 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-100"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Full);
    }

    #[test]
    fn artifact_paths() {
        assert_eq!(artifact_path("/abc/boot.iso"), Some(("abc", "boot.iso")));
        assert_eq!(artifact_path("/abc/config?x=1"), Some(("abc", "config")));
        assert_eq!(artifact_path("//abc/config"), None);
        assert_eq!(artifact_path("/abc/"), None);
        assert_eq!(artifact_path("/abc"), None);
        assert_eq!(artifact_path("/abc/../config"), None);
        assert_eq!(artifact_path("http://h/abc/config"), None);
        assert_eq!(artifact_path("*"), None);
    }

    fn parsed(raw: &[u8]) -> Request {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        match request_of(&req) {
            Incoming::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(parsed(b"GET /a/b HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!parsed(b"GET /a/b HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!parsed(b"GET /a/b HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parsed(b"GET /a/b HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        let r = parsed(b"HEAD /a/b HTTP/1.1\r\nRange: bytes=0-1\r\nIf-Range: \"x\"\r\n\r\n");
        assert_eq!(r.method, Method::Head);
        assert_eq!(r.range.as_deref(), Some("bytes=0-1"));
        assert_eq!(r.if_range.as_deref(), Some("\"x\""));
        assert!(!r.has_body);
        assert!(parsed(b"GET /a/b HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body);
        assert!(parsed(b"GET /a/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
        assert!(!parsed(b"GET /a/b HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
        assert_eq!(
            parsed(b"DELETE /a/b HTTP/1.1\r\n\r\n").method,
            Method::Other
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_read_one_by_one_and_bad_heads_refused() {
        let mut input: &[u8] = b"GET /a/one HTTP/1.1\r\n\r\nGET /a/two HTTP/1.1\r\n\r\n";
        let mut buf = Vec::new();
        for want in ["/a/one", "/a/two"] {
            match read_request(&mut input, &mut buf, true).await.unwrap() {
                Incoming::Request(r) => assert_eq!(r.target, want),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            read_request(&mut input, &mut buf, false).await.unwrap(),
            Incoming::Closed
        ));
        let mut garbage: &[u8] = b"\x16\x03\x01 not http\r\n\r\n";
        assert!(matches!(
            read_request(&mut garbage, &mut Vec::new(), true)
                .await
                .unwrap(),
            Incoming::Bad(400, _)
        ));
        let huge = format!("GET /a/b HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        let mut huge = huge.as_bytes();
        assert!(matches!(
            read_request(&mut huge, &mut Vec::new(), true)
                .await
                .unwrap(),
            Incoming::Bad(431, _)
        ));
    }
}

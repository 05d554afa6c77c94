//! HTTP side of the artifact server: routing, HEAD and single-range GET.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;

use super::ArtifactServerConfig;
use super::store::{ArtifactError, ArtifactStore, PreparedIso};

/// Bytes read from the image per chunk of a response body.
const CHUNK: usize = 256 * 1024;

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

/// The router: `/{token}/{boot.iso|config.iso|config.img|config}`, GET and HEAD; anything else 404/405.
pub fn router(store: Arc<ArtifactStore>) -> Router {
    Router::new()
        .route("/{token}/{name}", any(artifact))
        .fallback(|| async { not_found() })
        .with_state(store)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    config: &ArtifactServerConfig,
    store: Arc<ArtifactStore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.bind_address).await?;
    tracing::info!(address = %config.bind_address, base_url = %config.external_base_url, "artifact server listening");
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown)
        .await
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        "not found\n",
    )
        .into_response()
}

fn error_response(e: &ArtifactError) -> Response {
    let status = match e {
        ArtifactError::Fetch { .. } | ArtifactError::ChecksumMismatch { .. } => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        format!("{e}\n"),
    )
        .into_response()
}

enum Source {
    Memory(Bytes),
    Sparse(super::SparseImage),
    Iso(Arc<PreparedIso>),
}

async fn artifact(
    State(store): State<Arc<ArtifactStore>>,
    method: Method,
    Path((token, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(m) = store.lookup(&token) else {
        return not_found();
    };
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "",
        )
            .into_response();
    }
    let (source, content_type, etag) = match name.as_str() {
        "boot.iso" if m.set.boot_iso.is_some() => match store.prepare_machine(&m).await {
            Ok(p) => {
                let etag = p.etag.clone();
                (Source::Iso(p), "application/octet-stream".to_string(), etag)
            }
            Err(e) => {
                tracing::warn!(error = %e, "boot ISO not served");
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
    let mut range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && ir.trim() != etag
    {
        range_header = None;
    }
    let range = parse_range(range_header, len);
    let mut resp = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::ETAG, &etag)
        .header(header::CONTENT_TYPE, content_type);
    let (start, end_excl) = match range {
        RangeRequest::Full => {
            resp = resp.status(StatusCode::OK);
            (0, len)
        }
        RangeRequest::Partial { start, end } => {
            resp = resp
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (start, end + 1)
        }
        RangeRequest::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::ACCEPT_RANGES, "bytes")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::empty())
                .unwrap();
        }
    };
    let resp = resp.header(header::CONTENT_LENGTH, HeaderValue::from(end_excl - start));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        match source {
            Source::Memory(b) => Body::from(b.slice(start as usize..end_excl as usize)),
            Source::Sparse(v) => Body::from(v.read(start as usize, end_excl as usize)),
            Source::Iso(p) => Body::from_stream(iso_stream(p, start, end_excl)),
        }
    };
    resp.body(body).unwrap()
}

fn memory_etag(b: &Bytes) -> String {
    format!("\"{}\"", super::store::content_digest(b))
}

/// Streams `[start, end)` of the prepared image in fixed chunks read on the blocking pool.
fn iso_stream(
    p: Arc<PreparedIso>,
    start: u64,
    end: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::try_unfold(start, move |pos| {
        let p = p.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let n = CHUNK.min((end - pos) as usize);
            let buf = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                let got = p.read_at(pos, &mut buf)?;
                if got != n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "image shorter than announced",
                    ));
                }
                Ok(buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((Bytes::from(buf), pos + n as u64)))
        }
    })
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
}

//! Shared pieces of the artifact server tests: a source HTTP server, a test ISO, a running artifact server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use beskar7_boot::{VolumeFile, VolumeFormat, build_volume};
use beskar7_controllers::artifacts::{ArtifactListener, ArtifactServerConfig, ArtifactStore};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

pub const GRUB_CFG: &str =
    "menuentry 'Live' {\n  linux /boot/vmlinuz quiet\n  initrd /boot/initrd\n}\n";

/// A small bootable-looking ISO (made by our own writer) with a GRUB config and some payload.
pub fn test_iso() -> Vec<u8> {
    build_volume(
        VolumeFormat::Iso,
        "TESTISO",
        &[
            VolumeFile::new("boot/grub/grub.cfg", GRUB_CFG),
            VolumeFile::new(
                "boot/vmlinuz",
                (0..200_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(),
            ),
            VolumeFile::new("boot/initrd", vec![0x5au8; 100_000]),
        ],
    )
    .unwrap()
}

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "beskar7-art-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves files of a directory at `/<name>` (streamed in 64 KiB chunks) and counts requests.
pub struct SourceServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
}

impl SourceServer {
    pub async fn start(dir: PathBuf) -> Self {
        let requests = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route("/{name}", axum::routing::get(serve_file))
            .with_state((dir, requests.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, requests }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

async fn serve_file(
    State((dir, n)): State<(PathBuf, Arc<AtomicU64>)>,
    AxPath(name): AxPath<String>,
) -> Response {
    n.fetch_add(1, Ordering::SeqCst);
    if name.contains('/') || name.starts_with('.') {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(f) = tokio::fs::File::open(dir.join(&name)).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = f.metadata().await.unwrap().len();
    let stream = futures::stream::unfold(Some(f), |st| async move {
        let mut f = st?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Response::builder()
        .header("content-length", len)
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A running artifact server.
pub struct Artifacts {
    pub store: Arc<ArtifactStore>,
    pub addr: SocketAddr,
    pub cache_dir: TempDir,
    pub scheme: &'static str,
}

impl Artifacts {
    pub async fn start(cache_max_bytes: u64) -> Self {
        Self::start_with_tls(cache_max_bytes, None).await
    }

    /// Over HTTPS with `tls.crt` / `tls.key` of `cert_dir` when given.
    pub async fn start_with_tls(cache_max_bytes: u64, cert_dir: Option<&Path>) -> Self {
        let cache_dir = TempDir::new("cache");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if cert_dir.is_some() { "https" } else { "http" };
        let config = ArtifactServerConfig {
            bind_address: addr,
            external_base_url: format!("{scheme}://{addr}/"),
            cache_dir: cache_dir.path().to_path_buf(),
            cache_max_bytes,
            tls_cert_dir: cert_dir.map(Path::to_path_buf),
        };
        let store = ArtifactStore::new(&config).unwrap();
        let server = ArtifactListener::new(listener, cert_dir).unwrap();
        let serving = store.clone();
        tokio::spawn(async move {
            server
                .serve(serving, futures::future::pending())
                .await
                .unwrap()
        });
        Self {
            store,
            addr,
            cache_dir,
            scheme,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
}

/// Sends raw bytes as an HTTP/1.1 request and returns the status line and the whole response.
pub async fn raw_request(addr: SocketAddr, request_target: &str) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {request_target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

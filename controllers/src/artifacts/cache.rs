//! Bounded on-disk cache of source images, filled from HTTP(S) URLs, verified by sha256.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::store::ArtifactError;

/// A cached image file, open for positioned reads. The cache never deletes a file while a
/// clone of this handle is alive elsewhere.
pub type CachedFile = Arc<File>;

struct Entry {
    file: CachedFile,
    path: PathBuf,
    size: u64,
    last_used: Instant,
}

/// What the cache holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: u64,
    pub downloads: u64,
}

pub struct SourceCache {
    dir: PathBuf,
    max_bytes: u64,
    client: reqwest::Client,
    entries: Mutex<HashMap<String, Entry>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    downloads: std::sync::atomic::AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Normalises a checksum given as `<hex>` or `sha256:<hex>`.
pub(crate) fn normalise_sha256(s: &str) -> Result<String, ArtifactError> {
    let t = s.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t).to_ascii_lowercase();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(ArtifactError::Invalid(format!(
            "image checksum {s:?} is not a sha256 (64 hex digits, optionally prefixed sha256:)"
        )))
    }
}

impl SourceCache {
    /// Opens (and creates) the cache directory; files left by an earlier run are reused.
    pub fn new(dir: &Path, max_bytes: u64) -> Result<Self, ArtifactError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ArtifactError::Cache(format!("creating {}: {e}", dir.display())))?;
        let mut entries = HashMap::new();
        let rd = std::fs::read_dir(dir)
            .map_err(|e| ArtifactError::Cache(format!("reading {}: {e}", dir.display())))?;
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".part") {
                let _ = std::fs::remove_file(&p);
            } else if let Some(key) = name.strip_suffix(".img")
                && key.len() == 64
                && key.bytes().all(|b| b.is_ascii_hexdigit())
                && let Ok(f) = File::open(&p)
            {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                let entry = Entry {
                    file: Arc::new(f),
                    path: p,
                    size,
                    last_used: Instant::now(),
                };
                entries.insert(key.to_string(), entry);
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ArtifactError::Cache(format!("HTTP client: {e}")))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            client,
            entries: Mutex::new(entries),
            locks: Mutex::new(HashMap::new()),
            downloads: Default::default(),
        })
    }

    pub fn stats(&self) -> CacheStats {
        let e = self.entries.lock().unwrap();
        CacheStats {
            entries: e.len(),
            bytes: e.values().map(|x| x.size).sum(),
            downloads: self.downloads.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn key(url: &str, sha256: Option<&str>) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(url.as_bytes());
        ctx.update(b"\n");
        ctx.update(sha256.unwrap_or("").as_bytes());
        hex(ctx.finish().as_ref())
    }

    /// Returns the cached image for `url`, downloading it first when needed. With a checksum,
    /// the download is verified and a mismatch is an error (nothing is cached).
    pub async fn get(&self, url: &str, sha256: Option<&str>) -> Result<CachedFile, ArtifactError> {
        let sha = sha256.map(normalise_sha256).transpose()?;
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ArtifactError::Invalid(format!("image URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ArtifactError::Invalid(format!(
                "image URL {url:?}: only http and https are supported"
            )));
        }
        let key = Self::key(url, sha.as_deref());
        let lock = self
            .locks
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let result = self.get_locked(url, &key, sha.as_deref(), &lock).await;
        // forget the per-key lock when nobody else waits on it
        let mut locks = self.locks.lock().unwrap();
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&key);
        }
        result
    }

    async fn get_locked(
        &self,
        url: &str,
        key: &str,
        sha: Option<&str>,
        lock: &tokio::sync::Mutex<()>,
    ) -> Result<CachedFile, ArtifactError> {
        let _guard = lock.lock().await;
        if let Some(e) = self.entries.lock().unwrap().get_mut(key) {
            e.last_used = Instant::now();
            return Ok(e.file.clone());
        }
        let (file, path, size) = self.download(url, key, sha).await?;
        let mut entries = self.entries.lock().unwrap();
        if let Err(e) = self.make_room(&mut entries, size) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        entries.insert(
            key.to_string(),
            Entry {
                file: file.clone(),
                path,
                size,
                last_used: Instant::now(),
            },
        );
        Ok(file)
    }

    /// Evicts least recently used entries nobody holds until `incoming` more bytes fit.
    fn make_room(
        &self,
        entries: &mut HashMap<String, Entry>,
        incoming: u64,
    ) -> Result<(), ArtifactError> {
        loop {
            let used: u64 = entries.values().map(|e| e.size).sum();
            if used + incoming <= self.max_bytes {
                return Ok(());
            }
            let victim = entries
                .iter()
                .filter(|(_, e)| Arc::strong_count(&e.file) == 1)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    let e = entries.remove(&k).unwrap();
                    let _ = std::fs::remove_file(&e.path);
                    tracing::info!(path = %e.path.display(), size = e.size, "evicted cached image");
                }
                None => {
                    return Err(ArtifactError::Cache(format!(
                        "image cache full: {used} bytes held by registered machines, {incoming} more needed, limit {}",
                        self.max_bytes
                    )));
                }
            }
        }
    }

    async fn download(
        &self,
        url: &str,
        key: &str,
        sha256: Option<&str>,
    ) -> Result<(CachedFile, PathBuf, u64), ArtifactError> {
        let part = self.dir.join(format!("{key}.part"));
        let fin = self.dir.join(format!("{key}.img"));
        let fetch_err = |e: String| ArtifactError::Fetch {
            url: url.to_string(),
            reason: e,
        };
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| fetch_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fetch_err(format!("HTTP status {}", resp.status())));
        }
        if let Some(n) = resp.content_length()
            && n > self.max_bytes
        {
            return Err(ArtifactError::Cache(format!(
                "image {url} is {n} bytes, larger than the cache ({})",
                self.max_bytes
            )));
        }
        self.downloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let mut out = tokio::fs::File::create(&part)
                .await
                .map_err(|e| ArtifactError::Cache(format!("{}: {e}", part.display())))?;
            let mut ctx = sha256.map(|_| ring::digest::Context::new(&ring::digest::SHA256));
            let mut size: u64 = 0;
            while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(e.to_string()))? {
                if let Some(c) = ctx.as_mut() {
                    c.update(&chunk);
                }
                size += chunk.len() as u64;
                if size > self.max_bytes {
                    return Err(ArtifactError::Cache(format!(
                        "image {url} is larger than the cache ({})",
                        self.max_bytes
                    )));
                }
                // keep runs of zeros sparse on disk
                if chunk.iter().all(|b| *b == 0) {
                    out.seek(std::io::SeekFrom::Current(chunk.len() as i64))
                        .await
                } else {
                    out.write_all(&chunk).await.map(|_| 0)
                }
                .map_err(|e| ArtifactError::Cache(format!("{}: {e}", part.display())))?;
            }
            out.set_len(size)
                .await
                .map_err(|e| ArtifactError::Cache(format!("{}: {e}", part.display())))?;
            out.sync_all()
                .await
                .map_err(|e| ArtifactError::Cache(format!("{}: {e}", part.display())))?;
            if let (Some(c), Some(want)) = (ctx, sha256) {
                let got = hex(c.finish().as_ref());
                if got != want {
                    return Err(ArtifactError::ChecksumMismatch {
                        url: url.to_string(),
                        expected: want.to_string(),
                        actual: got,
                    });
                }
            }
            tokio::fs::rename(&part, &fin)
                .await
                .map_err(|e| ArtifactError::Cache(format!("{}: {e}", fin.display())))?;
            let f = File::open(&fin)
                .map_err(|e| ArtifactError::Cache(format!("{}: {e}", fin.display())))?;
            Ok((Arc::new(f), fin.clone(), size))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result
    }
}

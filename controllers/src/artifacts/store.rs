//! Registered machines, their tokens and artifacts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use beskar7_boot::{
    IsoPatch, KernelArg, PatchError, PatchOptions, Piece, VolumeFormat, patch_iso_with,
    resolve_kernel_args,
};
use bytes::Bytes;

use super::cache::{CachedFile, SourceCache};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
    #[error("invalid artifact request: {0}")]
    Invalid(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error(
        "sha256 mismatch for {url}: expected {expected}, got {actual}; the image is not served"
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("image cache: {0}")]
    Cache(String),
    #[error("patching the boot ISO from {url}: {reason}")]
    Patch { url: String, reason: String },
    /// The image's boot cannot carry the kernel arguments under Secure Boot (a signed UKI,
    /// a key-enrolling image); nothing is served.
    #[error("the boot ISO from {url} cannot be given kernel arguments: {reason}")]
    SecureBootImage { url: String, reason: String },
    #[error("machine {0} has no registered artifacts")]
    NotRegistered(String),
}

impl ArtifactError {
    /// Errors that will not go away by retrying with the same inputs.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_)
                | Self::ChecksumMismatch { .. }
                | Self::Patch { .. }
                | Self::SecureBootImage { .. }
        )
    }
}

/// Where the boot ISO comes from and which kernel arguments to bake in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootIsoSource {
    pub url: String,
    /// `<hex>` or `sha256:<hex>`; verified after download when given.
    pub sha256: Option<String>,
    /// Empty: serve the image unchanged.
    pub kernel_args: Vec<KernelArg>,
    /// Give an ISOLINUX-only image (Flatcar) a UEFI boot path ([`beskar7_boot::PatchOptions`]).
    pub add_uefi_path: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigVolume {
    pub format: VolumeFormat,
    pub data: SparseImage,
}

/// A disk image held in memory without its runs of zeros: a config volume is a 1.44 MiB FAT
/// image (or a small ISO) of which a few KiB are not zero, and one is kept per machine being
/// provisioned (heaptrack at 250 machines: their whole images were the manager's largest heap
/// share). Reads put the zeros back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseImage {
    len: usize,
    /// Non-zero extents, in order, not overlapping: (offset, bytes).
    extents: Arc<[(usize, Bytes)]>,
    /// SHA-256 of the whole image, first 128 bits in hex: its ETag.
    digest: String,
}

impl SparseImage {
    /// Granularity of the zero runs dropped.
    const BLOCK: usize = 4096;

    pub fn new(image: &[u8]) -> Self {
        let mut extents: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, block) in image.chunks(Self::BLOCK).enumerate() {
            if block.iter().all(|b| *b == 0) {
                continue;
            }
            let offset = i * Self::BLOCK;
            match extents.last_mut() {
                Some((start, data)) if *start + data.len() == offset => {
                    data.extend_from_slice(block)
                }
                _ => extents.push((offset, block.to_vec())),
            }
        }
        SparseImage {
            len: image.len(),
            extents: extents
                .into_iter()
                .map(|(o, d)| (o, Bytes::from(d)))
                .collect(),
            digest: content_digest(image),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Bytes `start..end` of the image (clamped to its length).
    pub fn read(&self, start: usize, end: usize) -> Bytes {
        let end = end.min(self.len);
        let start = start.min(end);
        let mut out = vec![0u8; end - start];
        for (offset, data) in self.extents.iter() {
            let (a, b) = (*offset, offset + data.len());
            if b <= start || a >= end {
                continue;
            }
            let (from, to) = (a.max(start), b.min(end));
            out[from - start..to - start].copy_from_slice(&data[from - a..to - a]);
        }
        Bytes::from(out)
    }

    /// Bytes held for the image.
    pub fn held(&self) -> usize {
        self.extents.iter().map(|(_, d)| d.len()).sum()
    }
}

impl From<Vec<u8>> for SparseImage {
    fn from(v: Vec<u8>) -> Self {
        SparseImage::new(&v)
    }
}

/// The first 128 bits of the SHA-256 of `data`, in hex: the ETag of what is served from memory.
pub(crate) fn content_digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref()[..16]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigDocument {
    pub content_type: String,
    pub data: Bytes,
}

/// Everything served for one machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArtifactSet {
    pub boot_iso: Option<BootIsoSource>,
    pub config_volume: Option<ConfigVolume>,
    pub config_document: Option<ConfigDocument>,
}

/// The URLs of a machine's artifacts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactUrls {
    pub token: String,
    pub boot_iso: Option<String>,
    pub config_volume: Option<String>,
    pub config_document: Option<String>,
}

/// What the host controller needs to know of a prepared boot ISO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreparedFacts {
    /// Its UEFI boot carries the kernel arguments only with Secure Boot off.
    pub uefi_needs_secure_boot_off: bool,
}

/// A boot ISO ready to serve: the cached source plus the patch.
pub(crate) struct PreparedIso {
    pub file: CachedFile,
    pub patch: Option<Arc<IsoPatch>>,
    pub len: u64,
    pub etag: String,
}

impl PreparedIso {
    /// Where `start..end` of the served image comes from ([`IsoPatch::pieces`]).
    pub fn pieces(&self, start: u64, end: u64) -> Vec<Piece<'_>> {
        match &self.patch {
            Some(p) => p.pieces(start, end),
            None => {
                let end = end.min(self.len);
                if start >= end {
                    return Vec::new();
                }
                vec![Piece::Source {
                    offset: start,
                    len: end - start,
                }]
            }
        }
    }
}

pub(crate) struct Machine {
    pub token: String,
    pub set: ArtifactSet,
    /// Resolved kernel arguments.
    pub kernel_args: Vec<String>,
    pub boot: tokio::sync::Mutex<Option<Result<Arc<PreparedIso>, ArtifactError>>>,
}

#[derive(Default)]
struct Maps {
    by_key: HashMap<String, Arc<Machine>>,
    by_token: HashMap<String, Arc<Machine>>,
}

/// Registry of machines' artifacts; the controllers register and revoke, the HTTP server reads.
pub struct ArtifactStore {
    base_url: String,
    cache: SourceCache,
    maps: Mutex<Maps>,
}

const TOKEN_BYTES: usize = 32;

fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; TOKEN_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the OS random number generator works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// True for strings shaped like a token (so anything else is refused before any lookup).
pub(crate) fn is_token(s: &str) -> bool {
    s.len() == TOKEN_BYTES * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ArtifactStore {
    pub fn new(config: &super::ArtifactServerConfig) -> Result<Arc<Self>, ArtifactError> {
        let base_url = config.external_base_url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base_url)
            .map_err(|e| ArtifactError::Invalid(format!("external base URL {base_url:?}: {e}")))?;
        Ok(Arc::new(Self {
            base_url,
            cache: SourceCache::new(&config.cache_dir, config.cache_max_bytes)?,
            maps: Default::default(),
        }))
    }

    pub fn cache(&self) -> &SourceCache {
        &self.cache
    }

    fn urls(&self, token: &str, set: &ArtifactSet) -> ArtifactUrls {
        let u = |name: &str| format!("{}/{token}/{name}", self.base_url);
        ArtifactUrls {
            token: token.to_string(),
            boot_iso: set.boot_iso.as_ref().map(|_| u("boot.iso")),
            config_volume: set.config_volume.as_ref().map(|v| u(v.format.file_name())),
            config_document: set.config_document.as_ref().map(|_| u("config")),
        }
    }

    /// Registers (or replaces) a machine's artifacts. A machine keeps its token across
    /// re-registrations until revoked. Starts fetching and patching the boot ISO in the background
    /// when called inside a Tokio runtime; [`Self::prepare`] waits for it.
    pub fn register(
        self: &Arc<Self>,
        machine_key: &str,
        set: ArtifactSet,
    ) -> Result<ArtifactUrls, ArtifactError> {
        self.register_inner(machine_key, None, set)
    }

    /// Registers under a token the caller derived (e.g. an HMAC of the claim under a key kept in
    /// a Secret, so URLs survive a manager restart). The token must be 64 lower-case hex digits
    /// (256 bits) and must not belong to another machine.
    pub fn register_with_token(
        self: &Arc<Self>,
        machine_key: &str,
        token: &str,
        set: ArtifactSet,
    ) -> Result<ArtifactUrls, ArtifactError> {
        if !is_token(token) {
            return Err(ArtifactError::Invalid(
                "artifact token must be 64 lower-case hex digits".into(),
            ));
        }
        self.register_inner(machine_key, Some(token), set)
    }

    fn register_inner(
        self: &Arc<Self>,
        machine_key: &str,
        token: Option<&str>,
        set: ArtifactSet,
    ) -> Result<ArtifactUrls, ArtifactError> {
        let mut maps = self.maps.lock().unwrap();
        if let Some(t) = token
            && let Some(owner) = maps.by_token.get(t)
            && maps
                .by_key
                .get(machine_key)
                .is_none_or(|m| !Arc::ptr_eq(m, owner))
        {
            return Err(ArtifactError::Invalid(
                "artifact token already belongs to another machine".into(),
            ));
        }
        let token = match token {
            Some(t) => t.to_string(),
            None => maps
                .by_key
                .get(machine_key)
                .map(|m| m.token.clone())
                .unwrap_or_else(new_token),
        };
        let urls = self.urls(&token, &set);
        let mut kernel_args = Vec::new();
        if let Some(b) = &set.boot_iso {
            if let Some(s) = &b.sha256 {
                super::cache::normalise_sha256(s)?;
            }
            let needs_url = b
                .kernel_args
                .iter()
                .any(|a| matches!(a, KernelArg::ServedConfigUrl { .. }));
            let config_url = match (&urls.config_document, needs_url) {
                (Some(u), _) => u.clone(),
                (None, false) => String::new(),
                (None, true) => {
                    return Err(ArtifactError::Invalid("kernel arguments refer to the served config URL but no config document is given".into()));
                }
            };
            kernel_args = resolve_kernel_args(&b.kernel_args, &config_url);
        }
        if let Some(old) = maps.by_key.get(machine_key)
            && old.set == set
            && old.token == token
        {
            return Ok(urls);
        }
        if let Some(old) = maps.by_key.get(machine_key)
            && old.token != token
        {
            let old_token = old.token.clone();
            maps.by_token.remove(&old_token);
        }
        let m = Arc::new(Machine {
            token: token.clone(),
            set,
            kernel_args,
            boot: Default::default(),
        });
        maps.by_key.insert(machine_key.to_string(), m.clone());
        maps.by_token.insert(token, m.clone());
        drop(maps);
        if m.set.boot_iso.is_some()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let this = self.clone();
            rt.spawn(async move {
                if let Err(e) = this.prepare_machine(&m).await {
                    tracing::warn!(error = %e, "preparing boot ISO");
                }
            });
        }
        Ok(urls)
    }

    /// Revokes a machine's token: its URLs answer 404 from now on.
    pub fn revoke(&self, machine_key: &str) -> bool {
        let mut maps = self.maps.lock().unwrap();
        match maps.by_key.remove(machine_key) {
            Some(m) => {
                maps.by_token.remove(&m.token);
                true
            }
            None => false,
        }
    }

    /// The URLs of a registered machine.
    pub fn urls_of(&self, machine_key: &str) -> Option<ArtifactUrls> {
        let maps = self.maps.lock().unwrap();
        maps.by_key
            .get(machine_key)
            .map(|m| self.urls(&m.token, &m.set))
    }

    /// Waits until the machine's boot ISO is downloaded, verified and patched; returns why not.
    pub async fn prepare(&self, machine_key: &str) -> Result<PreparedFacts, ArtifactError> {
        let m = self.maps.lock().unwrap().by_key.get(machine_key).cloned();
        let m = m.ok_or_else(|| ArtifactError::NotRegistered(machine_key.to_string()))?;
        if m.set.boot_iso.is_none() {
            return Ok(PreparedFacts::default());
        }
        let p = self.prepare_machine(&m).await?;
        Ok(PreparedFacts {
            uefi_needs_secure_boot_off: p
                .patch
                .as_ref()
                .is_some_and(|p| p.uefi_needs_secure_boot_off()),
        })
    }

    pub(crate) fn lookup(&self, token: &str) -> Option<Arc<Machine>> {
        if !is_token(token) {
            return None;
        }
        self.maps.lock().unwrap().by_token.get(token).cloned()
    }

    pub(crate) async fn prepare_machine(
        &self,
        m: &Machine,
    ) -> Result<Arc<PreparedIso>, ArtifactError> {
        let src = m
            .set
            .boot_iso
            .as_ref()
            .ok_or_else(|| ArtifactError::Invalid("no boot ISO registered".into()))?;
        let mut slot = m.boot.lock().await;
        if let Some(r) = slot.as_ref() {
            return r.clone();
        }
        let result = self
            .prepare_iso(src, &m.kernel_args, src.add_uefi_path)
            .await;
        match &result {
            Ok(_) => *slot = Some(result.clone()),
            Err(e) if e.is_permanent() => *slot = Some(result.clone()),
            Err(_) => {}
        }
        result
    }

    async fn prepare_iso(
        &self,
        src: &BootIsoSource,
        args: &[String],
        add_uefi_path: bool,
    ) -> Result<Arc<PreparedIso>, ArtifactError> {
        let file = self.cache.get(&src.url, src.sha256.as_deref()).await?;
        let len = file
            .metadata()
            .map_err(|e| ArtifactError::Cache(e.to_string()))?
            .len();
        let mut etag_src = ring::digest::Context::new(&ring::digest::SHA256);
        etag_src.update(src.url.as_bytes());
        etag_src.update(&len.to_le_bytes());
        for a in args {
            etag_src.update(b"\0");
            etag_src.update(a.as_bytes());
        }
        etag_src.update(&[u8::from(add_uefi_path)]);
        let etag = format!(
            "\"{}\"",
            etag_src.finish().as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        if args.is_empty() {
            return Ok(Arc::new(PreparedIso {
                file,
                patch: None,
                len,
                etag,
            }));
        }
        let f = file.clone();
        let opts = PatchOptions {
            kernel_args: args.to_vec(),
            add_uefi_path,
        };
        let patch = tokio::task::spawn_blocking(move || patch_iso_with(&*f, &opts))
            .await
            .map_err(|e| ArtifactError::Patch {
                url: src.url.clone(),
                reason: e.to_string(),
            })?
            .map_err(|e| match e {
                PatchError::SecureBootImage(reason) => ArtifactError::SecureBootImage {
                    url: src.url.clone(),
                    reason,
                },
                e => ArtifactError::Patch {
                    url: src.url.clone(),
                    reason: e.to_string(),
                },
            })?;
        for w in patch.warnings() {
            tracing::warn!(url = %src.url, "{w}");
        }
        let len = patch.len();
        Ok(Arc::new(PreparedIso {
            file,
            patch: Some(Arc::new(patch)),
            len,
            etag,
        }))
    }
}

#[cfg(test)]
mod sparse_tests {
    use super::SparseImage;

    #[test]
    fn sparse_image_reads_back_every_range_and_holds_only_non_zero_blocks() {
        // A FAT-like image: data at the start, one file in the middle, zeros elsewhere.
        let mut image = vec![0u8; 2880 * 512];
        image[..1536]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 + 1);
        image[700_000..700_010].copy_from_slice(b"user-data\n");
        image[2880 * 512 - 1] = 0xaa;
        let sparse = SparseImage::new(&image);
        assert_eq!(sparse.len(), image.len());
        assert_eq!(
            sparse.held(),
            3 * SparseImage::BLOCK,
            "three non-zero 4 KiB blocks"
        );
        assert_eq!(&sparse.read(0, image.len())[..], &image[..]);
        for (a, b) in [
            (0, 1),
            (1000, 5000),
            (699_990, 700_020),
            (4095, 4097),
            (1_474_000, 1_474_560),
            (10, 10),
        ] {
            assert_eq!(&sparse.read(a, b)[..], &image[a..b], "range {a}..{b}");
        }
        assert_eq!(
            sparse.read(1_474_559, 2_000_000).len(),
            1,
            "clamped to the image"
        );
        let same = SparseImage::new(&image);
        assert_eq!(sparse.digest(), same.digest());
        image[700_000] = b'U';
        assert_ne!(sparse.digest(), SparseImage::new(&image).digest());
    }
}

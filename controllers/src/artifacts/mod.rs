//! The artifact server: per-machine boot ISOs (patched with kernel arguments), config volumes and
//! config documents, served over HTTP to BMCs and early-boot fetchers.
//!
//! URLs are `<external base>/<token>/boot.iso`, `/<token>/config.iso` (or `config.img` for FAT),
//! `/<token>/config`. The token is 256 bits: BMCs cannot send credentials, so the URL is the
//! credential. The manager derives it as HMAC(key, host uid, claim) (`Context::artifact_token`,
//! the key from `--artifact-token-key-file`), so a restarted manager serves the URLs a BMC already
//! holds; [`ArtifactStore::register`] without a token draws one from the OS CSPRNG. Registrations
//! live in memory; revoking a machine makes its URLs 404. A
//! request path is never mapped to the file system: a token selects an in-memory entry and the
//! artifact name is one of three fixed names.
//!
//! Source ISOs are downloaded once per (URL, checksum) into a bounded on-disk cache, verified
//! against the sha256 when one is given, and served as the cached file plus the replaced ranges of
//! the kernel-argument patch ([`beskar7_boot::IsoPatch`]), read in fixed-size chunks: memory use
//! does not grow with the image size.

mod cache;
mod http;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use cache::{CacheStats, SourceCache};
pub use http::{ArtifactListener, RangeRequest, parse_range, serve};
pub use store::{
    ArtifactError, ArtifactSet, ArtifactStore, ArtifactUrls, BootIsoSource, ConfigDocument,
    ConfigVolume, PreparedFacts, SparseImage,
};

/// Settings of the artifact server (the manager's `--artifact-*` flags map onto this).
#[derive(Clone, Debug)]
pub struct ArtifactServerConfig {
    /// Where the server listens.
    pub bind_address: SocketAddr,
    /// The base URL BMCs and booting machines reach the server at, e.g. `http://10.0.0.5:8082`.
    pub external_base_url: String,
    /// Directory of the source-image cache.
    pub cache_dir: PathBuf,
    /// Upper bound of the cache's size on disk, in bytes.
    pub cache_max_bytes: u64,
    /// Serve HTTPS with `tls.crt` / `tls.key` of this directory (re-read when they change);
    /// plain HTTP without.
    pub tls_cert_dir: Option<PathBuf>,
}

impl ArtifactServerConfig {
    pub const DEFAULT_BIND: &'static str = "0.0.0.0:8082";
    pub const DEFAULT_CACHE_BYTES: u64 = 20 << 30;
}

/// Command-line flags for the artifact server, for the manager subcommand to flatten in.
#[derive(Clone, Debug, clap::Args)]
pub struct ArtifactServerArgs {
    /// Address the artifact server listens on.
    #[arg(long = "artifact-bind-address", env = "BESKAR7_ARTIFACT_BIND_ADDRESS", default_value = ArtifactServerConfig::DEFAULT_BIND)]
    pub bind_address: SocketAddr,
    /// Base URL of the artifact server as BMCs reach it (e.g. http://10.0.0.5:8082).
    #[arg(long = "artifact-base-url", env = "BESKAR7_ARTIFACT_BASE_URL")]
    pub external_base_url: Option<String>,
    /// Directory for cached source ISOs.
    #[arg(
        long = "artifact-cache-dir",
        env = "BESKAR7_ARTIFACT_CACHE_DIR",
        default_value = "/var/cache/beskar7"
    )]
    pub cache_dir: PathBuf,
    /// Maximum size of the ISO cache, with an optional K/M/G/T suffix (powers of 1024).
    #[arg(long = "artifact-cache-size", env = "BESKAR7_ARTIFACT_CACHE_SIZE", default_value = "20G", value_parser = parse_size)]
    pub cache_max_bytes: u64,
    /// Serve artifacts over HTTPS with tls.crt and tls.key from this directory (e.g. a
    /// cert-manager Secret mounted as a volume; re-read when it changes). For BMCs that mount
    /// virtual media only over HTTPS. The base URL must then be https.
    #[arg(long = "artifact-tls-cert-dir", env = "BESKAR7_ARTIFACT_TLS_CERT_DIR")]
    pub tls_cert_dir: Option<PathBuf>,
}

impl ArtifactServerArgs {
    /// The config. Without a base URL, `http://<bind address>` (`https://` with TLS) is used,
    /// which only helps when BMCs can reach that address. With TLS, a base URL must be https:
    /// BMCs would otherwise be handed URLs of a listener that does not speak plain HTTP.
    pub fn into_config(self) -> Result<ArtifactServerConfig, String> {
        let scheme = if self.tls_cert_dir.is_some() {
            "https"
        } else {
            "http"
        };
        let external_base_url = self
            .external_base_url
            .unwrap_or_else(|| format!("{scheme}://{}", self.bind_address));
        if self.tls_cert_dir.is_some() && !external_base_url.starts_with("https://") {
            return Err(format!(
                "--artifact-tls-cert-dir serves HTTPS, but --artifact-base-url {external_base_url:?} is not an https URL"
            ));
        }
        Ok(ArtifactServerConfig {
            bind_address: self.bind_address,
            external_base_url,
            cache_dir: self.cache_dir,
            cache_max_bytes: self.cache_max_bytes,
            tls_cert_dir: self.tls_cert_dir,
        })
    }
}

/// Parses `1073741824`, `512M`, `20G`, `1Ti` style sizes (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix('B').unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            format!("invalid size {s:?}: expected a number with an optional K, M, G or T suffix")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn base_url_scheme_follows_tls() {
        let args = |base: Option<&str>, tls: bool| ArtifactServerArgs {
            bind_address: "10.0.0.5:8082".parse().unwrap(),
            external_base_url: base.map(str::to_string),
            cache_dir: "/c".into(),
            cache_max_bytes: 1,
            tls_cert_dir: tls.then(|| "/certs".into()),
        };
        let url = |a: ArtifactServerArgs| a.into_config().map(|c| c.external_base_url);
        assert_eq!(url(args(None, false)).unwrap(), "http://10.0.0.5:8082");
        assert_eq!(url(args(None, true)).unwrap(), "https://10.0.0.5:8082");
        assert_eq!(
            url(args(Some("https://art.example:443"), true)).unwrap(),
            "https://art.example:443"
        );
        let err = url(args(Some("http://art.example"), true)).unwrap_err();
        assert!(err.contains("not an https URL"), "{err}");
        // without TLS any scheme is allowed: a TLS-terminating proxy may sit in front
        assert!(url(args(Some("https://proxy.example"), false)).is_ok());
    }
}

//! Serving certificates from a directory holding `tls.crt` and `tls.key` (a Secret mounted as a
//! volume, e.g. one cert-manager issues), re-read when `tls.crt` changes so a rotated
//! certificate is served without a restart. Used by the webhook and artifact servers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::{info, warn};

/// The certificate and key of one server, reloaded on change.
#[derive(Debug)]
pub(crate) struct CertDir {
    dir: PathBuf,
    /// Which server, for errors and logs ("webhook", "artifact server").
    what: &'static str,
    loaded: Mutex<(Option<SystemTime>, Arc<rustls::sign::CertifiedKey>)>,
}

impl CertDir {
    pub(crate) fn new(dir: &Path, what: &'static str) -> anyhow::Result<Self> {
        let (mtime, key) = Self::load(dir, what)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            what,
            loaded: Mutex::new((mtime, Arc::new(key))),
        })
    }

    fn load(
        dir: &Path,
        what: &str,
    ) -> anyhow::Result<(Option<SystemTime>, rustls::sign::CertifiedKey)> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let crt = dir.join("tls.crt");
        let key = dir.join("tls.key");
        let mtime = std::fs::metadata(&crt).and_then(|m| m.modified()).ok();
        let certs = CertificateDer::pem_file_iter(&crt)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("{what} certificate {}: {e}", crt.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{what} certificate {} holds no certificate",
            crt.display()
        );
        let key_der = PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| anyhow::anyhow!("{what} key {}: {e}", key.display()))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| anyhow::anyhow!("{what} key {}: {e}", key.display()))?;
        Ok((mtime, rustls::sign::CertifiedKey::new(certs, signing)))
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = std::fs::metadata(self.dir.join("tls.crt"))
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_some() && mtime != loaded.0 {
            match Self::load(&self.dir, self.what) {
                Ok((m, key)) => {
                    info!(dir = %self.dir.display(), server = self.what, "serving certificate reloaded");
                    *loaded = (m, Arc::new(key));
                }
                // Mid-rotation (crt written, key not yet): keep serving the old pair.
                Err(e) => {
                    warn!(error = %e, server = self.what, "reloading the serving certificate; keeping the previous one")
                }
            }
        }
        loaded.1.clone()
    }
}

impl rustls::server::ResolvesServerCert for CertDir {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS acceptor serving the certificate of `cert_dir` (ring, TLS 1.2 and 1.3) with the given
/// ALPN protocols. Fails when the certificate or key cannot be read.
pub(crate) fn acceptor(
    cert_dir: &Path,
    what: &'static str,
    alpn: &[&[u8]],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = Arc::new(CertDir::new(cert_dir, what)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_certificate_is_picked_up() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = beskar7_test::certs::Ca::new("reload-test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, mtime: std::time::SystemTime| {
            let pair = ca.loopback_serving_cert(name).unwrap();
            std::fs::write(dir.path().join("tls.key"), &pair.key_pem).unwrap();
            std::fs::write(dir.path().join("tls.crt"), &pair.cert_pem).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(dir.path().join("tls.crt"))
                .unwrap();
            f.set_modified(mtime).unwrap();
        };
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        write("first", t0);
        let files = CertDir::new(dir.path(), "webhook").unwrap();
        let first = files.current().cert[0].clone();
        assert_eq!(
            files.current().cert[0],
            first,
            "unchanged files: same certificate"
        );
        write("second", t0 + std::time::Duration::from_secs(60));
        assert_ne!(
            files.current().cert[0],
            first,
            "a rotated tls.crt is served"
        );
        // A broken rotation keeps the last good pair.
        std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
        let second = files.current().cert[0].clone();
        assert_ne!(second, first);
    }
}

//! Where `hack/testbin.sh` put the Go-built binaries and CAPI manifests.
//!
//! The cache directory is derived from `hack/testbin-versions.env`, exactly as the script derives
//! it, so bumping a pinned version makes the tests ask for a rebuild instead of running stale
//! binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::ControlPlaneError;

/// The pinned versions, compiled in so the harness and the script can never disagree.
const VERSIONS_ENV: &str = include_str!("../../hack/testbin-versions.env");

/// The binaries `hack/testbin.sh` builds.
pub const BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "etcd",
    "cluster-api-manager",
    "kubeadm-bootstrap-manager",
    "kubeadm-control-plane-manager",
    "clusterctl",
];

/// Pinned versions from `hack/testbin-versions.env`.
#[derive(Clone, Debug)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub capi: String,
    pub layout: String,
    /// The in-cluster IPAM provider (not in the cache key: its files carry the version).
    pub ipam_provider: String,
}

impl Versions {
    pub fn pinned() -> Result<Self, ControlPlaneError> {
        Self::parse(VERSIONS_ENV)
    }

    fn parse(text: &str) -> Result<Self, ControlPlaneError> {
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |key: &str| {
            vars.get(key).map(|v| v.to_string()).ok_or_else(|| {
                ControlPlaneError::VersionsFileIncomplete {
                    key: key.to_string(),
                }
            })
        };
        Ok(Self {
            kubernetes: get("KUBERNETES_VERSION")?,
            etcd: get("ETCD_VERSION")?,
            capi: get("CAPI_VERSION")?,
            layout: get("TESTBIN_LAYOUT")?,
            ipam_provider: get("IPAM_PROVIDER_VERSION")?,
        })
    }

    /// Cache key, identical to `KEY` in `hack/testbin.sh`.
    pub fn cache_key(&self) -> String {
        format!(
            "k8s-{}_etcd-{}_capi-{}_layout-{}",
            self.kubernetes, self.etcd, self.capi, self.layout
        )
    }
}

/// A populated testbin cache directory.
#[derive(Clone, Debug)]
pub struct Testbin {
    pub dir: PathBuf,
    pub versions: Versions,
}

impl Testbin {
    /// Finds the cache directory (`$BESKAR7_TESTBIN` or `~/.cache/beskar7/testbin`, then the
    /// versions key) and checks that every binary and manifest is there. Fails with a message
    /// that says to run `make testbin`: tests must not silently skip without a control plane.
    pub fn locate() -> Result<Self, ControlPlaneError> {
        let root = match std::env::var_os("BESKAR7_TESTBIN") {
            Some(root) if !root.is_empty() => PathBuf::from(root),
            _ => {
                let home = std::env::var_os("HOME").ok_or(ControlPlaneError::HomeNotSet)?;
                PathBuf::from(home).join(".cache/beskar7/testbin")
            }
        };
        Self::locate_in(&root)
    }

    /// Like [`Testbin::locate`], with the cache root given.
    pub fn locate_in(root: &Path) -> Result<Self, ControlPlaneError> {
        let versions = Versions::pinned()?;
        let testbin = Self {
            dir: root.join(versions.cache_key()),
            versions,
        };
        let mut required: Vec<PathBuf> = BINARIES.iter().map(|b| testbin.binary(b)).collect();
        required.push(testbin.dir.join("manifests.done"));
        required.push(testbin.clusterctl_inventory_crd());
        required.push(testbin.ipam_provider_binary());
        required.push(testbin.ipam_provider_crd_dir());
        if let Some(missing) = required.into_iter().find(|p| !p.exists()) {
            return Err(ControlPlaneError::TestbinMissing { missing });
        }
        Ok(testbin)
    }

    pub fn binary(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// CRD directory of a CAPI provider (`core`, `bootstrap-kubeadm`, `controlplane-kubeadm`).
    pub fn capi_crd_dir(&self, provider: &str) -> PathBuf {
        self.dir.join("capi").join(provider).join("crds")
    }

    /// The provider's `config/webhook/manifests.yaml` as controller-gen wrote it.
    pub fn capi_webhook_manifest(&self, provider: &str) -> PathBuf {
        self.dir
            .join("capi")
            .join(provider)
            .join("webhook/manifests.yaml")
    }

    /// The in-cluster IPAM provider's manager.
    pub fn ipam_provider_binary(&self) -> PathBuf {
        self.binary(&format!(
            "ipam-in-cluster-manager-{}",
            self.versions.ipam_provider
        ))
    }

    /// The in-cluster IPAM provider's pool CRDs.
    pub fn ipam_provider_crd_dir(&self) -> PathBuf {
        self.dir
            .join(format!("ipam-in-cluster-{}", self.versions.ipam_provider))
            .join("crds")
    }

    /// clusterctl's `Provider` (inventory) CRD.
    pub fn clusterctl_inventory_crd(&self) -> PathBuf {
        self.dir.join("capi/clusterctl/clusterctl-api.yaml")
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_parse_and_key_matches_script_format() {
        let v = Versions::pinned().expect("hack/testbin-versions.env parses");
        assert!(v.kubernetes.starts_with('v'), "{v:?}");
        assert_eq!(
            v.cache_key(),
            format!(
                "k8s-{}_etcd-{}_capi-{}_layout-{}",
                v.kubernetes, v.etcd, v.capi, v.layout
            )
        );
    }

    #[test]
    fn empty_cache_asks_to_run_make_testbin() {
        let root = tempfile::tempdir().unwrap();
        let err = Testbin::locate_in(root.path()).unwrap_err();
        assert!(
            matches!(&err, ControlPlaneError::TestbinMissing { missing } if missing.starts_with(root.path())),
            "{err:?}"
        );
        assert!(err.to_string().contains("make testbin"), "{err}");
    }

    #[test]
    fn missing_key_is_reported() {
        let err = Versions::parse("KUBERNETES_VERSION=v1\n").unwrap_err();
        assert!(
            matches!(err, ControlPlaneError::VersionsFileIncomplete { key } if key == "ETCD_VERSION")
        );
    }
}

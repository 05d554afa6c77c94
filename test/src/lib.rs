//! Local control plane and BMC lab for integration tests.
//!
//! [`ControlPlane`] runs a real etcd and kube-apiserver (and optionally the real CAPI managers)
//! built by `hack/testbin.sh`; each instance has its own ports, certificates and data, so tests
//! run in parallel without sharing state.
//!
//! ```no_run
//! # async fn example() -> Result<(), beskar7_test::ControlPlaneError> {
//! use beskar7_test::ControlPlane;
//!
//! // etcd + kube-apiserver with our CRDs and CAPI's CRDs installed.
//! let cp = ControlPlane::start().await?;
//! let client = cp.client();
//!
//! // Plus the CAPI core, kubeadm bootstrap and control-plane managers with their webhooks, and
//! // kube-controller-manager's garbage collector.
//! let cp = ControlPlane::builder()
//!     .with_capi()
//!     .with_garbage_collector()
//!     .start()
//!     .await?;
//! let status = cp.clusterctl().args(["describe", "cluster", "lab"]).status();
//! # let _ = (client, status);
//! # Ok(())
//! # }
//! ```
//!
//! Binaries come from `${BESKAR7_TESTBIN:-~/.cache/beskar7/testbin}/<versions key>/`; without
//! them `start` fails with a message saying to run `make testbin`. Set `BESKAR7_KEEP_TEST_DIRS`
//! to keep each control plane's temp dir (process logs under `logs/`).

use std::path::PathBuf;
use std::time::Duration;

pub mod bmc_lab;
pub mod bmc_proxy;
pub mod boot_bridge;
pub mod capi;
pub mod certs;
mod control_plane;
pub mod fake_bmc;
pub mod fixtures;
pub mod manager;
pub mod os_images;
mod process;
pub mod testbin;
pub mod vm;
pub mod workload;

pub use bmc_lab::{BmcLab, LabSystem};
pub use bmc_proxy::{BmcProxy, Fault, FaultRule};
pub use capi::CapiProvider;
pub use control_plane::{ControlPlane, ControlPlaneBuilder, install_crypto_provider};
pub use manager::{ManagerProcess, free_port};
pub use testbin::Testbin;
pub use workload::{BootedNode, WorkloadStandIn};

/// Why a [`ControlPlane`] could not be started.
#[derive(thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "test binaries not found ({missing} is missing): run `make testbin` (hack/testbin.sh) \
         to build kube-apiserver, etcd and the CAPI managers; set BESKAR7_TESTBIN if they are \
         cached elsewhere"
    )]
    TestbinMissing { missing: PathBuf },
    #[error("hack/testbin-versions.env has no {key}")]
    VersionsFileIncomplete { key: String },
    #[error("HOME is not set, so the default testbin cache cannot be found; set BESKAR7_TESTBIN")]
    HomeNotSet,
    #[error("generating a certificate failed")]
    CertificateGenerationFailed(#[from] rcgen::Error),
    #[error("no free TCP port on 127.0.0.1")]
    NoFreePort(#[source] std::io::Error),
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {name} ({program}) failed")]
    ProcessSpawnFailed {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{name} exited during startup ({status}); last lines of {log} (removed on drop unless \
         BESKAR7_KEEP_TEST_DIRS is set):\n{log_tail}"
    )]
    ProcessExited {
        name: String,
        status: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error(
        "{name} not ready after {timeout:?}; last lines of {log} (removed on drop unless \
         BESKAR7_KEEP_TEST_DIRS is set):\n{log_tail}"
    )]
    NotReady {
        name: String,
        timeout: Duration,
        log: PathBuf,
        log_tail: String,
    },
    #[error("building an HTTP client for health probes failed")]
    HttpClientUnavailable(#[source] reqwest::Error),
    #[error("the generated kubeconfig cannot be loaded")]
    KubeconfigInvalid(#[source] kube::config::KubeconfigError),
    #[error("{what} failed")]
    KubeRequestFailed {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{path} is not a valid manifest")]
    ManifestInvalid {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("kube-apiserver rejected CRD {name}")]
    CrdRejected {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {name} not Established after {timeout:?}")]
    CrdNotEstablished { name: String, timeout: Duration },
    #[error("watching CRD {name} for Established failed")]
    CrdWaitFailed {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
    #[error("webhook manifest {path} cannot be used: {reason}")]
    WebhookManifestInvalid { path: PathBuf, reason: String },
    #[error("kube-apiserver rejected a CAPI webhook configuration")]
    WebhookRegistrationFailed {
        #[source]
        source: kube::Error,
    },
}

/// Tests call `.expect(...)` on [`ControlPlane::start`], which prints `Debug`: show the message
/// (with its remedy, e.g. "run `make testbin`") and the chain of causes instead of the variant's
/// fields.
impl std::fmt::Debug for ControlPlaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

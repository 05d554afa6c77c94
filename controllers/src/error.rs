//! What can go wrong in a reconcile, each variant naming its cause, each with a condition reason.

use beskar7_redfish as redfish;

use crate::artifacts::ArtifactError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error(transparent)]
    Redfish(#[from] redfish::Error),

    /// The BMC credentials Secret is missing or unusable. Never carries its content.
    #[error("BMC credentials Secret {secret}: {problem}")]
    Credentials { secret: String, problem: String },

    /// The CA bundle Secret named by `caBundleSecretRef` is missing or unusable.
    #[error("CA bundle Secret {secret}: {problem}")]
    CaBundle { secret: String, problem: String },

    /// The Machine's bootstrap data Secret is missing or unusable. Never carries its content.
    #[error("bootstrap data Secret {secret}: {problem}")]
    BootstrapData { secret: String, problem: String },

    /// The OS profile cannot deliver this configuration (wrong format, invalid document ...).
    #[error("OS configuration: {0}")]
    Profile(#[from] beskar7_boot::ProfileError),

    #[error("building the config volume: {0}")]
    Boot(#[from] beskar7_boot::Error),

    #[error("artifact server: {0}")]
    Artifacts(#[from] ArtifactError),

    /// The BMC lacks what provisioning needs (no virtual media slot for a CD ...).
    #[error("{0}")]
    HostUnsuitable(String),

    /// The host enforces UEFI Secure Boot and the served boot path needs it off.
    #[error("{0}")]
    SecureBootEnabled(String),

    /// An object is not (yet) shaped as the reconcile needs; a person or another controller must act.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// CamelCase reason for a condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesAPIError",
            Error::Redfish(e) => e.reason(),
            Error::Credentials { .. } => "CredentialsSecretInvalid",
            Error::CaBundle { .. } => "CABundleSecretInvalid",
            Error::BootstrapData { .. } => "BootstrapDataInvalid",
            Error::Profile(_) | Error::Boot(_) => "OSConfigurationInvalid",
            Error::Artifacts(ArtifactError::SecureBootImage { .. }) => "SecureBootImage",
            Error::Artifacts(e) if e.is_permanent() => "BootImageInvalid",
            Error::Artifacts(_) => "BootImageUnavailable",
            Error::HostUnsuitable(_) => "HostUnsuitable",
            Error::SecureBootEnabled(_) => "SecureBootEnabled",
            Error::Invalid(_) => "InvalidConfiguration",
        }
    }

    /// Whether retrying soon may help (otherwise: retry slowly, a person has to act).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(_) => true,
            Error::Redfish(e) => e.is_transient(),
            Error::Artifacts(e) => !e.is_permanent(),
            _ => false,
        }
    }
}

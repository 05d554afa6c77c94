//! Condition types, their reasons, and machine phases: the words the controllers write into
//! status, named once here (CAPD keeps its reasons in its API package the same way).

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const PAUSED: &str = "Paused";
    /// PhysicalHost: the BMC answered with these credentials.
    pub const BMC_CONNECTED: &str = "BMCConnected";
    /// PhysicalHost: the BMC offers what provisioning needs (virtual media CD slot).
    pub const VIRTUAL_MEDIA_READY: &str = "VirtualMediaReady";
    /// Beskar7Machine: a host is claimed and provisioned.
    pub const HOST_PROVISIONED: &str = "HostProvisioned";
    /// Beskar7Cluster: the control-plane endpoint is given.
    pub const CONTROL_PLANE_ENDPOINT_SET: &str = "ControlPlaneEndpointSet";
    /// PhysicalHost: the last reboot request (`REBOOT_ANNOTATION`) completed.
    pub const REBOOTED: &str = "Rebooted";
    /// Beskar7Remediation: the host of the Machine rebooted (reason: how far it got).
    pub const HOST_REBOOTED: &str = "HostRebooted";
    /// Beskar7Remediation: the Machine recovered or is being replaced (reason: which).
    pub const REMEDIATED: &str = "Remediated";
    /// CAPI Machine, written by the remediation when it gives up: the Machine's owner (the
    /// MachineSet, KubeadmControlPlane) then deletes and replaces it.
    pub const OWNER_REMEDIATED: &str = "OwnerRemediated";
}

/// Condition reasons (besides those of errors, which come from the error kinds).
pub mod reason {
    pub const PAUSED: &str = "Paused";
    pub const NOT_PAUSED: &str = "NotPaused";
    pub const PROVISIONED: &str = "Provisioned";
    // PhysicalHost
    pub const CONNECTED: &str = "Connected";
    pub const CD_SLOT_FOUND: &str = "CDSlotFound";
    pub const NO_VIRTUAL_MEDIA_CD: &str = "NoVirtualMediaCD";
    pub const SECOND_MEDIA_REFUSED: &str = "SecondMediaRefused";
    // Beskar7Machine
    pub const WAITING_FOR_MACHINE_OWNER: &str = "WaitingForMachineOwner";
    pub const WAITING_FOR_CLUSTER: &str = "WaitingForCluster";
    pub const WAITING_FOR_CLUSTER_INFRASTRUCTURE: &str = "WaitingForClusterInfrastructure";
    pub const WAITING_FOR_BOOTSTRAP_DATA: &str = "WaitingForBootstrapData";
    pub const WAITING_FOR_HOST: &str = "WaitingForHost";
    pub const HOST_PROVISIONING: &str = "HostProvisioning";
    pub const HOST_ERROR: &str = "HostError";
    pub const DELETING: &str = "Deleting";
    // Beskar7Cluster
    pub const WAITING_FOR_CLUSTER_OWNER: &str = "WaitingForClusterOwner";
    pub const ENDPOINT_SET: &str = "EndpointSet";
    pub const ENDPOINT_MISSING: &str = "EndpointMissing";
    // Beskar7MachineTemplate
    pub const HOSTS_AVAILABLE: &str = "HostsAvailable";
    pub const NO_HOST_AVAILABLE: &str = "NoHostAvailable";
    // PhysicalHost reboots (besides the phases' own names)
    pub const REBOOT_REFUSED: &str = "RebootRefused";
    pub const REBOOT_COMPLETED: &str = "RebootCompleted";
    // Beskar7Remediation
    pub const MACHINE_NOT_FOUND: &str = "MachineNotFound";
    pub const HOST_NOT_FOUND: &str = "HostNotFound";
    pub const REBOOT_REQUESTED: &str = "RebootRequested";
    pub const REBOOTING: &str = "Rebooting";
    pub const WAITING_FOR_NODE: &str = "WaitingForNodeHealthy";
    pub const RETRY_LIMIT_REACHED: &str = "RetryLimitReached";
    /// `OwnerRemediated` on the CAPI Machine: CAPI's own reason, which the MachineSet acts on.
    pub const WAITING_FOR_REMEDIATION: &str = "WaitingForRemediation";
}

/// `Beskar7Machine.status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachinePhase {
    Pending,
    WaitingForHost,
    Provisioning,
    Provisioned,
    Deleting,
}

impl MachinePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::WaitingForHost => "WaitingForHost",
            Self::Provisioning => "Provisioning",
            Self::Provisioned => "Provisioned",
            Self::Deleting => "Deleting",
        }
    }
}

impl From<MachinePhase> for String {
    fn from(p: MachinePhase) -> String {
        p.as_str().to_string()
    }
}

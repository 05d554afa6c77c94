//! Beskar7 API types (group `infrastructure.cluster.x-k8s.io`, version `v1alpha1`).
//!
//! Field names follow the Go Beskar7 project so its users' manifests apply unchanged; fields
//! added here are optional. Validation the API server can enforce lives in the schema (enums,
//! patterns, CEL rules); what CEL cannot see (ClusterClass dry-runs) belongs to the webhooks.
//! No I/O in this crate.

// `#[kube(printcolumn(...))]` repeats keys such as `type_` per column, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

pub mod cluster;
pub mod common;
pub mod conditions;
pub mod crds;
pub mod machine;
pub mod physical_host;
pub mod remediation;

pub use cluster::{
    ApiEndpoint, Beskar7Cluster, Beskar7ClusterSpec, Beskar7ClusterStatus, Beskar7ClusterTemplate,
    Beskar7ClusterTemplateResource, Beskar7ClusterTemplateSpec,
};
pub use common::{
    BootMode, Condition, FailureDomain, MachineAddress, MachineAddressType, ObjectMetaTemplate,
    OsFamily, ProvisioningMode,
};
pub use machine::{
    Beskar7Machine, Beskar7MachineSpec, Beskar7MachineStatus, Beskar7MachineTemplate,
    Beskar7MachineTemplateResource, Beskar7MachineTemplateSpec, Beskar7MachineTemplateStatus,
    HostReference, InterfaceSpec, IpPoolRef, MachineInitialization, NetworkSpec, NodeInfo,
};
pub use physical_host::{
    BmcDetails, ConfigDelivery, ConsumerRef, HardwareDetails, HostState, Nic, PhysicalHost,
    PhysicalHostSpec, PhysicalHostStatus, PowerRequest, Provisioning, RebootPhase, RebootStatus,
    RedfishConnection, VirtualMediaSlotInfo,
};
pub use remediation::{
    Beskar7Remediation, Beskar7RemediationSpec, Beskar7RemediationStatus,
    Beskar7RemediationTemplate, Beskar7RemediationTemplateResource, Beskar7RemediationTemplateSpec,
    RemediationPhase, RemediationStrategy, RemediationStrategyType,
};

/// API group of every Beskar7 kind.
pub const GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// API version of every Beskar7 kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "infrastructure.cluster.x-k8s.io/v1alpha1";

/// CRD label through which CAPI finds which of our versions serves its v1beta2 contract.
pub const CONTRACT_LABEL: &str = "cluster.x-k8s.io/v1beta2";
/// clusterctl moves objects of kinds whose CRD carries this label, with everything they own.
pub const MOVE_HIERARCHY_LABEL: &str = "clusterctl.cluster.x-k8s.io/move-hierarchy";
/// Label for objects clusterctl should move although nothing in the moved hierarchy owns them:
/// BMC credential and CA Secrets that PhysicalHosts reference by name.
pub const MOVE_LABEL: &str = "clusterctl.cluster.x-k8s.io/move";
/// On a PhysicalHost: the claim (`<namespace>/<consumer name>`) whose one-time boot was issued.
/// Unlike status, annotations survive `clusterctl move`, so a moved host resumes as Provisioned
/// instead of booting again; the manager keeps it and `status.bootIssuedFor` equal.
pub const BOOT_ISSUED_ANNOTATION: &str = "infrastructure.cluster.x-k8s.io/beskar7-boot-issued-for";
/// On a PhysicalHost while a boot sequence (power off, media, boot override, power on) is under
/// way: `<manager identity> <RFC 3339 time> <claim>`. Taken with the resourceVersion the manager
/// read, so a stale copy of the host (a lagging cache, a second manager) cannot start a second
/// sequence; a holder that died is replaced once its lock is 30 s old (holders renew it each pass).
pub const PROVISIONING_LOCK_ANNOTATION: &str =
    "infrastructure.cluster.x-k8s.io/beskar7-provisioning-lock";
/// On a Beskar7Machine: the PhysicalHost it is claiming. Written with the machine's
/// resourceVersion before the host's `consumerRef`, so managers reconciling the same machine at
/// once settle on one host (the host's own optimistic update then lets one claim through), and
/// a machine never ends up holding two hosts.
pub const CLAIMING_ANNOTATION: &str = "infrastructure.cluster.x-k8s.io/beskar7-claiming";

/// On a PhysicalHost, written by the machine controller: the claim (`<namespace>/<name>`) whose
/// Machine has a Node (`status.nodeRef`). The OS has read its configuration then (Leap Micro's
/// Combustion reads it on the installed system's first boot, before kubelet joins), so the host
/// controller ejects the media and stops serving the bootstrap data. An annotation, so it
/// travels with `clusterctl move` and a moved host does not serve it again.
pub const NODE_JOINED_ANNOTATION: &str = "infrastructure.cluster.x-k8s.io/beskar7-node-joined";
/// On a PhysicalHost, written by a person or by a Beskar7Remediation: reboot the provisioned
/// server once. The value names the request (any text, e.g. a time); the host controller
/// powers the server off (graceful, forced after `--reboot-graceful-timeout-seconds`) and on,
/// records the request in `status.reboot`, and removes the annotation. A request already in
/// `status.reboot` is never carried out again (a manager restart resumes it where the BMC is).
/// Refused, and removed, while the host is not Provisioned.
pub const REBOOT_ANNOTATION: &str = "infrastructure.cluster.x-k8s.io/beskar7-reboot";
/// Provider label clusterctl uses to find a provider's components.
pub const PROVIDER_LABEL: &str = "cluster.x-k8s.io/provider";
/// Value of [`PROVIDER_LABEL`] for this provider.
pub const PROVIDER_NAME: &str = "infrastructure-beskar7";

/// Scheme of our provider IDs: `beskar7://<namespace>/<physicalhost-name>`.
pub const PROVIDER_ID_PREFIX: &str = "beskar7://";

/// The providerID a machine on `host` in `namespace` reports (and its kubelet registers with).
pub fn provider_id(namespace: &str, host: &str) -> String {
    format!("{PROVIDER_ID_PREFIX}{namespace}/{host}")
}

/// Splits a providerID into `(namespace, host)`; `None` when it is not one of ours.
pub fn parse_provider_id(provider_id: &str) -> Option<(&str, &str)> {
    let rest = provider_id.strip_prefix(PROVIDER_ID_PREFIX)?;
    let (namespace, host) = rest.split_once('/')?;
    (!namespace.is_empty() && !host.is_empty() && !host.contains('/')).then_some((namespace, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_id_round_trips() {
        let id = provider_id("team-a", "server-01");
        assert_eq!(id, "beskar7://team-a/server-01");
        assert_eq!(parse_provider_id(&id), Some(("team-a", "server-01")));
    }

    #[test]
    fn foreign_or_malformed_provider_ids_are_rejected() {
        for bad in [
            "metal3://ns/host",
            "beskar7://",
            "beskar7://ns",
            "beskar7://ns/",
            "beskar7:///host",
            "beskar7://ns/a/b",
        ] {
            assert_eq!(parse_provider_id(bad), None, "{bad}");
        }
    }
}

//! Beskar7Machine (the CAPI InfraMachine) and Beskar7MachineTemplate.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    BootMode, Condition, MachineAddress, ObjectMetaTemplate, OsFamily, ProvisioningMode,
    conditions_schema,
};

/// Desired state of a Beskar7Machine: which OS to boot, how to configure it, which hosts fit.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "Beskar7Machine",
    plural = "beskar7machines",
    namespaced,
    cel,
    status = "Beskar7MachineStatus",
    derive = "PartialEq",
    category = "cluster-api",
    category = "beskar7",
    doc = "Beskar7Machine is the Cluster API infrastructure machine: a PhysicalHost booted with an immutable OS.",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",
        description = "Cluster this machine belongs to"
    ),
    printcolumn(
        name = "Host",
        type_ = "string",
        json_path = ".status.hostRef.name",
        description = "PhysicalHost claimed by this machine"
    ),
    printcolumn(name = "ProviderID", type_ = "string", json_path = ".spec.providerID"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "OS",
        type_ = "string",
        json_path = ".spec.osFamily",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("(self.provisioningMode == 'RemoteConfig') == has(self.configURL)").message("configURL is required when provisioningMode is RemoteConfig and forbidden otherwise"))]
#[x_kube(validation = Rule::new("!has(oldSelf.providerID) || (has(self.providerID) && self.providerID == oldSelf.providerID)").message("providerID is immutable once set"))]
#[serde(rename_all = "camelCase")]
pub struct Beskar7MachineSpec {
    /// `beskar7://<namespace>/<physicalhost>`, set by the provider once the host is provisioned.
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(
        pattern = r"^beskar7://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
    ))]
    pub provider_id: Option<String>,

    pub os_family: OsFamily,

    /// The ISO to boot.
    #[serde(rename = "imageURL")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub image_url: String,

    /// Expected sha256 of the image: `sha256:<hex>` or bare hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(sha256:)?[a-fA-F0-9]{64}$"))]
    pub image_checksum: Option<String>,

    #[serde(default)]
    pub provisioning_mode: ProvisioningMode,

    /// Configuration the OS fetches at boot; only with `provisioningMode: RemoteConfig`.
    #[serde(rename = "configURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub config_url: Option<String>,

    #[serde(default)]
    pub boot_mode: BootMode,

    /// Which PhysicalHosts this machine may claim (by their labels). Any host when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selector: Option<LabelSelector>,

    /// Static addressing, for networks without DHCP: given to the OS on its kernel command line
    /// (so it reaches its configuration before any exists) and in its own network
    /// configuration. Addresses are written here or allocated from CAPI IPAM pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
}

/// A machine's static network configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub interfaces: Vec<InterfaceSpec>,
    /// DNS servers (IPv4 or IPv6 addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3), inner(regex(pattern = r"^[0-9A-Fa-f:.]+$")))]
    pub nameservers: Vec<String>,
}

/// One interface: matched by MAC (it must be in the claimed host's inventory), by the OS's
/// interface name, or, with neither, the host's first inventoried NIC.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("!(has(self.macAddress) && has(self.name))").message("an interface is matched by macAddress or by name, not both"))]
#[x_kube(validation = Rule::new("size(self.addresses) + size(self.addressesFromPools) > 0").message("an interface needs addresses or addressesFromPools"))]
#[serde(rename_all = "camelCase")]
pub struct InterfaceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$"))]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,15}$"))]
    pub name: Option<String>,
    /// Addresses with their prefix length: `10.0.0.10/24`, `2001:db8::10/64`.
    #[serde(default)]
    #[schemars(
        length(max = 8),
        inner(regex(pattern = r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$"))
    )]
    pub addresses: Vec<String>,
    /// One address from each pool (CAPI IPAM: an IPAddressClaim per pool, owned by the machine).
    #[serde(default)]
    #[schemars(length(max = 4))]
    pub addresses_from_pools: Vec<IpPoolRef>,
    /// Default gateway; a pool's gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9A-Fa-f:.]+$"))]
    pub gateway: Option<String>,
}

/// A CAPI IPAM pool (`ipam.cluster.x-k8s.io` InClusterIPPool, GlobalInClusterIPPool, or any
/// provider's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolRef {
    #[schemars(length(min = 1, max = 253))]
    pub api_group: String,
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Observed state of a Beskar7Machine, in the CAPI v1beta2 InfraMachine shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7MachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<MachineInitialization>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ref: Option<HostReference>,
    /// A one-word summary for people: Pending, WaitingForHost, Provisioning, Provisioned, Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// v1beta1-contract readiness, kept for CAPI releases that still read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `status.initialization` of the v1beta2 contract.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineInitialization {
    /// True once the infrastructure is ready: CAPI then reads providerID and addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<bool>,
}

/// The PhysicalHost a machine claimed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A template CAPI clones into Beskar7Machines (MachineDeployment, KubeadmControlPlane).
/// Immutable except on ClusterClass dry-runs: the validating webhook enforces that.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "Beskar7MachineTemplate",
    plural = "beskar7machinetemplates",
    namespaced,
    cel,
    status = "Beskar7MachineTemplateStatus",
    derive = "PartialEq",
    category = "cluster-api",
    category = "beskar7",
    doc = "Beskar7MachineTemplate is the template Cluster API clones into Beskar7Machines.",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    printcolumn(
        name = "OS",
        type_ = "string",
        json_path = ".spec.template.spec.osFamily"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.template.spec.provisioningMode"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableHosts",
        description = "Matching hosts free to be claimed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7MachineTemplateSpec {
    pub template: Beskar7MachineTemplateResource,
}

/// `spec.template` of a Beskar7MachineTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7MachineTemplateResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    pub spec: Beskar7MachineSpec,
}

/// What the hosts a template can claim look like, for users and the cluster autoscaler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7MachineTemplateStatus {
    /// Smallest cpu and memory among matching hosts (what a new machine is sure to get).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeInfo>,
    /// Hosts the selector matches, in any state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching_hosts: Option<i32>,
    /// Matching hosts that are Available: how far a MachineDeployment can grow now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_hosts: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Node facts for scale-from-zero, as the autoscaler reads them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system: Option<String>,
}

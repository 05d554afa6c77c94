//! PhysicalHost: one server and its BMC. Only the PhysicalHost controller talks to the BMC;
//! the machine controller claims a host by writing `consumerRef` and `provisioning` together.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    BootMode, Condition, MachineAddress, OsFamily, ProvisioningMode, conditions_schema,
};

/// Desired state of a PhysicalHost.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "PhysicalHost",
    plural = "physicalhosts",
    namespaced,
    cel,
    status = "PhysicalHostStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "ph",
    category = "beskar7",
    doc = "PhysicalHost is one bare-metal server reached through its BMC's Redfish API.",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    label("clusterctl.cluster.x-k8s.io/move-hierarchy", ""),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.state",
        description = "Provisioning state"
    ),
    printcolumn(
        name = "Power",
        type_ = "string",
        json_path = ".status.observedPowerState",
        description = "Power state last read from the BMC"
    ),
    printcolumn(
        name = "Consumer",
        type_ = "string",
        json_path = ".spec.consumerRef.name",
        description = "Beskar7Machine that claimed the host"
    ),
    printcolumn(
        name = "Config",
        type_ = "string",
        json_path = ".status.configDelivery",
        description = "How the claim's configuration reaches the OS: Volume (second virtual media device) or URL (served, named on the kernel command line)"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.redfishConnection.address",
        description = "Redfish address of the BMC",
        priority = "1"
    ),
    printcolumn(
        name = "Vendor",
        type_ = "string",
        json_path = ".status.hardwareDetails.manufacturer",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.consumerRef) == has(self.provisioning)").message("consumerRef and provisioning must be set together"))]
#[serde(rename_all = "camelCase")]
pub struct PhysicalHostSpec {
    /// How to reach and authenticate to the BMC.
    pub redfish_connection: RedfishConnection,

    /// The Beskar7Machine that claimed this host. Set and cleared by the machine controller,
    /// always together with `provisioning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_ref: Option<ConsumerRef>,

    /// The boot the consumer wants: written by the machine controller when it claims the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<Provisioning>,

    /// Kept from the Go project, where it named the ISO to boot; `provisioning.imageURL` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub boot_iso_source: Option<String>,
}

/// Where the BMC is and how to authenticate to it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!(has(self.insecureSkipVerify) && self.insecureSkipVerify && has(self.caBundleSecretRef))").message("caBundleSecretRef and insecureSkipVerify: true exclude each other"))]
#[serde(rename_all = "camelCase")]
pub struct RedfishConnection {
    /// BMC address: `https://host[:port]`, `http://host[:port]` or a bare `host[:port]` (https).
    #[schemars(
        length(min = 1, max = 512),
        regex(
            pattern = r"^(https?://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(:[0-9]{1,5})?(/[^\s\x00-\x1f]*)?$"
        )
    )]
    pub address: String,

    /// Name of a Secret in the host's namespace with keys `username` and `password`.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret_ref: String,

    /// Skip TLS verification of the BMC certificate. Off by default; prefer `caBundleSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,

    /// Name of a Secret in the host's namespace whose `ca.crt` key holds the PEM CA bundle
    /// that signed the BMC certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_bundle_secret_ref: Option<String>,

    /// Redfish ComputerSystem id, needed when the BMC manages more than one system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub system_id: Option<String>,
}

/// Reference to the Beskar7Machine that claimed a host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The boot a consumer asked for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(self.mode == 'RemoteConfig') == has(self.configURL)").message("configURL is required when mode is RemoteConfig and forbidden otherwise"))]
#[x_kube(validation = Rule::new("self.mode != 'BootstrapData' || has(self.bootstrapDataSecretRef)").message("bootstrapDataSecretRef is required when mode is BootstrapData"))]
#[serde(rename_all = "camelCase")]
pub struct Provisioning {
    /// The ISO to boot, fetched by the provider and served to the BMC.
    #[serde(rename = "imageURL")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub image_url: String,
    /// Expected sha256 of the image: `sha256:<hex>` or bare hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(sha256:)?[a-fA-F0-9]{64}$"))]
    pub image_checksum: Option<String>,
    pub os_family: OsFamily,
    pub mode: ProvisioningMode,
    #[serde(rename = "configURL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub config_url: Option<String>,
    /// Secret (in the host's namespace) holding the Machine's bootstrap data (`value`, `format`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub bootstrap_data_secret_ref: Option<String>,
    #[serde(default)]
    pub boot_mode: BootMode,
    /// Hostname the OS takes (meta-data `local-hostname`); the host name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: Option<String>,
    /// The machine's static network, resolved by the machine controller: pool addresses
    /// allocated, every interface named by MAC or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::machine::NetworkSpec>,
}

/// Where a host is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum HostState {
    /// Connecting to the BMC and taking inventory.
    #[default]
    Enrolling,
    /// Inventoried, powered off, free to be claimed.
    Available,
    /// Claimed by a machine; provisioning has not started.
    Claimed,
    /// Media inserted and boot in progress.
    Provisioning,
    /// Booted from our media.
    Provisioned,
    /// Released: powering off and ejecting media.
    Deprovisioning,
    /// Something failed; see conditions and `lastError`. Retried with backoff.
    Error,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolling => "Enrolling",
            Self::Available => "Available",
            Self::Claimed => "Claimed",
            Self::Provisioning => "Provisioning",
            Self::Provisioned => "Provisioned",
            Self::Deprovisioning => "Deprovisioning",
            Self::Error => "Error",
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the configuration of the current claim reaches the OS (DESIGN.md section 5).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConfigDelivery {
    /// A config volume in a second virtual media slot.
    Volume,
    /// A document served by the artifact server, named by a kernel argument baked into the boot
    /// ISO: chosen when the BMC has no second slot, or refused the second insert.
    #[serde(rename = "URL")]
    Url,
    /// The user's `configURL` (RemoteConfig), or the image carries its own (PreBakedISO).
    External,
}

/// Observed state of a PhysicalHost, all of it read from the BMC or derived by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalHostStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<HostState>,
    /// Power state as the BMC last reported it (On, Off, PoweringOn, PoweringOff, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_power_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_details: Option<HardwareDetails>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcDetails>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The last error, in words a person can act on. Never carries credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The consumer (`<namespace>/<name>`) whose one-time boot was issued. Written before the
    /// power-on, so a restarted manager resumes waiting instead of power-cycling again; mirrored
    /// in the `BOOT_ISSUED_ANNOTATION`, which survives `clusterctl move`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_issued_for: Option<String>,
    /// The last power change asked of the BMC. BMCs take seconds to carry one out and some
    /// refuse a second request meanwhile, so the same change is not asked again while recent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_power_request: Option<PowerRequest>,
    /// How the current claim's configuration reaches the OS. Once URL for a claim, it stays URL
    /// (a BMC that refused a second device is not asked again); cleared when the host is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_delivery: Option<ConfigDelivery>,
    /// When the claim's media were ejected and its URLs revoked because its Node joined: the
    /// bootstrap data (join tokens, certificates) is no longer servable from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_withdrawn_at: Option<Time>,
    /// The last reboot asked with the [`crate::REBOOT_ANNOTATION`]: which request, how far it
    /// got. Kept after the annotation is removed, so the same request is never carried out twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootStatus>,
    /// When the BMC was last read successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Inventory read from the BMC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(
        rename = "systemUUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_uuid: Option<String>,
    /// Logical CPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i64>,
    /// Memory as a Kubernetes quantity, e.g. `256Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
}

/// A network interface of the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A power change the manager asked a BMC for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerRequest {
    /// `On`, `GracefulOff` or `ForceOff`.
    pub action: String,
    pub requested_at: Time,
}

/// How far a requested reboot got. A reboot is a power off (graceful, forced once the graceful
/// timeout passed) and a power on, each step seen on the BMC before the next, so a restarted
/// manager resumes it from the BMC's power state instead of starting over.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RebootPhase {
    /// A graceful shutdown was asked (ACPI power button: the OS shuts down cleanly).
    ShuttingDown,
    /// The OS did not power off within the graceful timeout: forced off.
    ForcingOff,
    /// Off: powering on.
    PoweringOn,
    /// Powered on again; the request annotation is removed.
    Completed,
    /// Not carried out: the host was not Provisioned. The annotation is removed.
    Refused,
}

impl RebootPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShuttingDown => "ShuttingDown",
            Self::ForcingOff => "ForcingOff",
            Self::PoweringOn => "PoweringOn",
            Self::Completed => "Completed",
            Self::Refused => "Refused",
        }
    }

    /// The reboot ended, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Refused)
    }
}

/// `status.reboot` of a PhysicalHost.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebootStatus {
    /// The annotation's value: the identity of one request.
    pub request: String,
    pub phase: RebootPhase,
    /// When the manager began carrying it out (or refused it).
    pub started_at: Time,
    /// When it completed or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The graceful shutdown timed out and the server was forced off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// Why it was refused, in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the provider learnt about the BMC itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BmcDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_media_slots: Vec<VirtualMediaSlotInfo>,
    /// `BootSourceOverrideTarget` values the BMC allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_override_targets: Vec<String>,
}

/// One virtual-media slot of the BMC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMediaSlotInfo {
    /// Redfish path of the slot.
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<bool>,
    /// What the provider uses this slot for, if anything: `boot` or `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

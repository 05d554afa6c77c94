//! Types shared by several kinds.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `metav1.Condition`, the condition type of the CAPI v1beta2 contract.
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The immutable OS a machine boots. Spellings are those of the Go project.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum OsFamily {
    #[serde(rename = "kairos")]
    Kairos,
    #[serde(rename = "talos")]
    Talos,
    #[serde(rename = "flatcar")]
    Flatcar,
    #[serde(rename = "LeapMicro")]
    LeapMicro,
}

impl OsFamily {
    pub const ALL: [OsFamily; 4] = [Self::Kairos, Self::Talos, Self::Flatcar, Self::LeapMicro];

    /// The spelling used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kairos => "kairos",
            Self::Talos => "talos",
            Self::Flatcar => "flatcar",
            Self::LeapMicro => "LeapMicro",
        }
    }
}

impl fmt::Display for OsFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the OS gets its configuration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum ProvisioningMode {
    /// The image already carries its configuration; it is inserted as it is.
    PreBakedISO,
    /// The user's `configURL` is passed to the OS with its kernel argument.
    RemoteConfig,
    /// The provider renders the Machine's CAPI bootstrap data for the OS and delivers it.
    #[default]
    BootstrapData,
}

impl ProvisioningMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreBakedISO => "PreBakedISO",
            Self::RemoteConfig => "RemoteConfig",
            Self::BootstrapData => "BootstrapData",
        }
    }
}

impl fmt::Display for ProvisioningMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Firmware boot mode for the one-time boot from virtual media.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum BootMode {
    #[default]
    #[serde(rename = "UEFI")]
    Uefi,
    Legacy,
}

impl BootMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uefi => "UEFI",
            Self::Legacy => "Legacy",
        }
    }
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Address kinds of CAPI's `MachineAddress`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum MachineAddressType {
    Hostname,
    ExternalIP,
    InternalIP,
    ExternalDNS,
    InternalDNS,
}

/// One address of a machine, as CAPI's `MachineAddress`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct MachineAddress {
    #[serde(rename = "type")]
    pub type_: MachineAddressType,
    #[schemars(length(min = 1, max = 256))]
    pub address: String,
}

/// A failure domain in the v1beta2 list form.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureDomain {
    /// Name of the failure domain; hosts are in it when their `topology.kubernetes.io/zone`
    /// (or `cluster.x-k8s.io/failure-domain`) label has this value.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Whether control-plane machines may be placed in this failure domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// Labels and annotations a template stamps onto the objects made from it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct ObjectMetaTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Host labels that place a host in a failure domain, in the order they are consulted.
pub const FAILURE_DOMAIN_LABELS: [&str; 2] = [
    "topology.kubernetes.io/zone",
    "cluster.x-k8s.io/failure-domain",
];

/// The failure domain a host with these labels belongs to.
pub fn failure_domain_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    FAILURE_DOMAIN_LABELS
        .iter()
        .find_map(|key| labels.get(*key).map(String::as_str))
}

/// Schema of a `conditions` list: a list-map keyed by `type`, so server-side apply merges
/// conditions one by one instead of replacing the list.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    object.insert("maxItems".into(), 32.into());
    schema
}

//! Beskar7Cluster (the CAPI InfraCluster) and Beskar7ClusterTemplate.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, FailureDomain, ObjectMetaTemplate, conditions_schema};

/// Desired state of a Beskar7Cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "Beskar7Cluster",
    plural = "beskar7clusters",
    namespaced,
    cel,
    status = "Beskar7ClusterStatus",
    derive = "PartialEq",
    derive = "Default",
    category = "cluster-api",
    category = "beskar7",
    doc = "Beskar7Cluster is the Cluster API infrastructure cluster for bare-metal machines.",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.controlPlaneEndpoint.host"
    ),
    printcolumn(
        name = "Provisioned",
        type_ = "boolean",
        json_path = ".status.initialization.provisioned"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(oldSelf.controlPlaneEndpoint) || oldSelf.controlPlaneEndpoint.host == '' || (has(self.controlPlaneEndpoint) && self.controlPlaneEndpoint == oldSelf.controlPlaneEndpoint)").message("controlPlaneEndpoint is immutable once set"))]
#[serde(rename_all = "camelCase")]
pub struct Beskar7ClusterSpec {
    /// The API server address of the workload cluster: a VIP or load balancer the user gives.
    /// KubeadmControlPlane needs it before the first machine exists, so it is never derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<ApiEndpoint>,

    /// Failure domains offered to CAPI. When empty, they are the zones of the hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub failure_domains: Vec<FailureDomain>,
}

/// Host and port of an API endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("self.host == '' || (self.port > 0 && self.port <= 65535)").message("controlPlaneEndpoint.port must be between 1 and 65535"))]
pub struct ApiEndpoint {
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub host: String,
    #[serde(default)]
    pub port: i32,
}

impl ApiEndpoint {
    /// True when the user gave an endpoint (CAPI treats an empty host as "not set").
    pub fn is_set(&self) -> bool {
        !self.host.is_empty() && self.port > 0
    }
}

/// Observed state of a Beskar7Cluster, in the CAPI v1beta2 InfraCluster shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7ClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<ClusterInitialization>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_domains: Vec<FailureDomain>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// v1beta1-contract readiness, kept for CAPI releases that still read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `status.initialization` of the v1beta2 InfraCluster contract.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInitialization {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<bool>,
}

/// A template for Beskar7Clusters, used by ClusterClass.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "Beskar7ClusterTemplate",
    plural = "beskar7clustertemplates",
    namespaced,
    cel,
    derive = "PartialEq",
    category = "cluster-api",
    category = "beskar7",
    doc = "Beskar7ClusterTemplate is the template a ClusterClass clones into Beskar7Clusters.",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7ClusterTemplateSpec {
    pub template: Beskar7ClusterTemplateResource,
}

/// `spec.template` of a Beskar7ClusterTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7ClusterTemplateResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    pub spec: Beskar7ClusterSpec,
}

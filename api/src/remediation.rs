//! Beskar7Remediation and Beskar7RemediationTemplate: CAPI's external remediation contract.
//!
//! A MachineHealthCheck whose `spec.remediation.templateRef` names a Beskar7RemediationTemplate
//! creates, for each unhealthy Machine, a Beskar7Remediation with the Machine's name, owned by
//! the Machine, its spec copied from `spec.template.spec`; it deletes it once the Machine is
//! healthy again. The provider reboots the Machine's host through the PhysicalHost (only the
//! host controller talks to the BMC), up to `retryLimit` times, each followed by `timeout` for
//! the Node to recover; then it gives up by setting the Machine's `OwnerRemediated` condition
//! to False, so the Machine's owner (MachineSet, KubeadmControlPlane) deletes and replaces it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ObjectMetaTemplate, conditions_schema};

/// What to do with an unhealthy Machine.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "Beskar7Remediation",
    plural = "beskar7remediations",
    namespaced,
    status = "Beskar7RemediationStatus",
    derive = "PartialEq",
    derive = "Default",
    category = "cluster-api",
    category = "beskar7",
    doc = "Beskar7Remediation reboots the host of an unhealthy Machine, as a MachineHealthCheck asked.",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Retries",
        type_ = "integer",
        json_path = ".status.retryCount",
        description = "Reboots asked so far"
    ),
    printcolumn(name = "Host", type_ = "string", json_path = ".status.hostRef.name"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7RemediationSpec {
    #[serde(default)]
    pub strategy: RemediationStrategy,
}

/// How to remediate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStrategy {
    #[serde(rename = "type", default)]
    pub type_: RemediationStrategyType,
    /// Reboots to try before giving up (then CAPI replaces the Machine).
    #[serde(default = "default_retry_limit")]
    #[schemars(range(min = 1, max = 10))]
    pub retry_limit: i32,
    /// How long the Node has, after each reboot, to become healthy (`300s`, `5m`, `1h30m`).
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub timeout: String,
}

impl Default for RemediationStrategy {
    fn default() -> Self {
        Self {
            type_: RemediationStrategyType::Reboot,
            retry_limit: default_retry_limit(),
            timeout: default_timeout(),
        }
    }
}

fn default_retry_limit() -> i32 {
    1
}

fn default_timeout() -> String {
    "300s".into()
}

/// Strategies (Metal3Remediation's names).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RemediationStrategyType {
    /// Power the server off and on through its BMC.
    #[default]
    Reboot,
}

/// Where a remediation is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RemediationPhase {
    /// A reboot is asked of the host and under way.
    Running,
    /// Rebooted: waiting for the Node to become healthy (the MachineHealthCheck then deletes
    /// this object) until the timeout.
    Waiting,
    /// The retries are used up, or the host cannot be rebooted: the Machine's owner replaces it.
    Failed,
}

impl RemediationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "Running",
            Self::Waiting => "Waiting",
            Self::Failed => "Failed",
        }
    }
}

/// Observed state of a Beskar7Remediation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7RemediationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RemediationPhase>,
    /// Reboots asked so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<i32>,
    /// When the last reboot was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remediated: Option<Time>,
    /// When the last reboot completed (the Node's timeout runs from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebooted: Option<Time>,
    /// The host's reboot request of the current try (the PhysicalHost's reboot annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ref: Option<crate::HostReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What a MachineHealthCheck clones into Beskar7Remediations (`spec.remediation.templateRef`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "Beskar7RemediationTemplate",
    plural = "beskar7remediationtemplates",
    namespaced,
    derive = "PartialEq",
    category = "cluster-api",
    category = "beskar7",
    doc = "Beskar7RemediationTemplate is what a MachineHealthCheck clones into Beskar7Remediations.",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    // Nothing owns a remediation template (the MachineHealthCheck names it), so clusterctl
    // moves every one of its namespace.
    label("clusterctl.cluster.x-k8s.io/move", ""),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.template.spec.strategy.type"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7RemediationTemplateSpec {
    pub template: Beskar7RemediationTemplateResource,
}

/// `spec.template` of a Beskar7RemediationTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Beskar7RemediationTemplateResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    pub spec: Beskar7RemediationSpec,
}

/// Seconds of a `timeout` (`90s`, `5m`, `1h30m`); `None` when it is not one.
pub fn parse_timeout(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' => digits.push(c),
            's' | 'm' | 'h' if !digits.is_empty() => {
                let n: u64 = digits.parse().ok()?;
                let unit = match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3600,
                };
                total = total.checked_add(n.checked_mul(unit)?)?;
                digits.clear();
            }
            _ => return None,
        }
    }
    (digits.is_empty() && !s.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_like_the_schema_allows() {
        assert_eq!(parse_timeout("300s"), Some(300));
        assert_eq!(parse_timeout("5m"), Some(300));
        assert_eq!(parse_timeout("1h30m"), Some(5400));
        for bad in ["", "5", "m", "5x", "1.5m", "-1s"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_empty_spec_takes_the_defaults() {
        for json in ["{}", "{\"strategy\": {}}"] {
            let spec: Beskar7RemediationSpec = serde_json::from_str(json).unwrap();
            assert_eq!(spec.strategy.type_, RemediationStrategyType::Reboot);
            assert_eq!(spec.strategy.retry_limit, 1);
            assert_eq!(parse_timeout(&spec.strategy.timeout), Some(300));
        }
    }
}

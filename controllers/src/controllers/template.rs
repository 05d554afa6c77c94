//! Beskar7MachineTemplate controller: reports what the hosts its selector matches look like
//! (capacity, node info) and how many are Available, so people and the cluster autoscaler can
//! tell whether a MachineDeployment can grow.

use std::collections::BTreeMap;
use std::sync::Arc;

use beskar7_api::{
    Beskar7MachineTemplate, Beskar7MachineTemplateStatus, HostState, NodeInfo, PhysicalHost,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;

use super::shape;
use crate::conditions::{self, READY, reason};
use crate::context::Context;
use crate::error::{Error, Result};

pub const FIELD_MANAGER: &str = "beskar7-machinetemplate";

pub async fn reconcile(t: Arc<Beskar7MachineTemplate>, ctx: Arc<Context>) -> Result<Action> {
    let before = t.status.clone().unwrap_or_default();
    let generation = t.metadata.generation;
    let (status, action) = match pass(&t, &ctx, &before).await {
        Ok(s) => {
            ctx.reset_backoff(&shape::key(&*t));
            (s, Action::requeue(ctx.settings.host_refresh))
        }
        Err(e) => {
            let mut s = before.clone();
            let a = shape::report_error(
                &ctx,
                "beskar7machinetemplate",
                &shape::key(&*t),
                &mut s.conditions,
                generation,
                &e,
            );
            (s, a)
        }
    };
    shape::apply_status(&ctx, &*t, FIELD_MANAGER, &before, &status, &[]).await?;
    Ok(action)
}

async fn pass(
    t: &Beskar7MachineTemplate,
    ctx: &Context,
    before: &Beskar7MachineTemplateStatus,
) -> Result<Beskar7MachineTemplateStatus> {
    let hosts: Vec<PhysicalHost> = ctx
        .cached_hosts(t.namespace().as_deref())
        .await?
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect();
    let mut status = summarize(t, &hosts)?;
    status.conditions = before.conditions.clone();
    let available = status.available_hosts.unwrap_or(0);
    conditions::set(
        &mut status.conditions,
        READY,
        available > 0,
        if available > 0 {
            reason::HOSTS_AVAILABLE
        } else {
            reason::NO_HOST_AVAILABLE
        },
        format!(
            "{available} of {} matching hosts are Available",
            status.matching_hosts.unwrap_or(0)
        ),
        t.metadata.generation,
    );
    Ok(status)
}

/// Parses `256Gi`-style quantities we write into bytes (only the binary suffixes we produce).
fn memory_bytes(q: &str) -> Option<u128> {
    let units = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)];
    for (suffix, shift) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u128>().ok().map(|n| n << shift);
        }
    }
    q.parse().ok()
}

/// The status from the hosts: capacity is the smallest among matching hosts, what any new
/// machine is sure to get.
pub fn summarize(
    t: &Beskar7MachineTemplate,
    hosts: &[PhysicalHost],
) -> Result<Beskar7MachineTemplateStatus> {
    let selector = match &t.spec.template.spec.host_selector {
        Some(s) => Some(
            Selector::try_from(s.clone())
                .map_err(|e| Error::Invalid(format!("hostSelector: {e}")))?,
        ),
        None => None,
    };
    let matching: Vec<&PhysicalHost> = hosts
        .iter()
        .filter(|h| selector.as_ref().is_none_or(|s| s.matches(h.labels())))
        .collect();
    let available = matching
        .iter()
        .filter(|h| {
            h.status.as_ref().and_then(|s| s.state) == Some(HostState::Available)
                && h.spec.consumer_ref.is_none()
        })
        .count();
    let details: Vec<_> = matching
        .iter()
        .filter_map(|h| h.status.as_ref()?.hardware_details.as_ref())
        .collect();
    let mut capacity = BTreeMap::new();
    if let Some(cpu) = details.iter().filter_map(|d| d.cpu).min() {
        capacity.insert("cpu".to_string(), Quantity(cpu.to_string()));
    }
    if let Some(mem) = details
        .iter()
        .filter_map(|d| d.memory.as_deref())
        .min_by_key(|m| memory_bytes(m).unwrap_or(u128::MAX))
    {
        capacity.insert("memory".to_string(), Quantity(mem.to_string()));
    }
    Ok(Beskar7MachineTemplateStatus {
        capacity,
        node_info: (!matching.is_empty()).then(|| NodeInfo {
            architecture: Some("amd64".into()),
            operating_system: Some("linux".into()),
        }),
        matching_hosts: Some(matching.len() as i32),
        available_hosts: Some(available as i32),
        conditions: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use beskar7_api::*;
    use kube::core::ObjectMeta;

    fn host(role: &str, state: HostState, cpu: i64, mem: &str) -> PhysicalHost {
        PhysicalHost {
            metadata: ObjectMeta {
                labels: Some([("role".to_string(), role.to_string())].into()),
                ..Default::default()
            },
            spec: PhysicalHostSpec::default(),
            status: Some(PhysicalHostStatus {
                state: Some(state),
                hardware_details: Some(HardwareDetails {
                    cpu: Some(cpu),
                    memory: Some(mem.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn capacity_is_the_smallest_matching_host_and_available_counts_free_ones() {
        let spec = Beskar7MachineSpec {
            provider_id: None,
            os_family: OsFamily::Talos,
            image_url: "https://x/t.iso".into(),
            image_checksum: None,
            provisioning_mode: ProvisioningMode::BootstrapData,
            config_url: None,
            boot_mode: BootMode::Uefi,
            host_selector: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([("role".to_string(), "worker".to_string())].into()),
                    ..Default::default()
                },
            ),
            network: None,
        };
        let t = Beskar7MachineTemplate::new(
            "t",
            Beskar7MachineTemplateSpec {
                template: Beskar7MachineTemplateResource {
                    metadata: None,
                    spec,
                },
            },
        );
        let hosts = [
            host("worker", HostState::Available, 64, "512Gi"),
            host("worker", HostState::Provisioned, 32, "1024Gi"),
            host("worker", HostState::Available, 48, "256Gi"),
            host("control-plane", HostState::Available, 2, "8Gi"),
        ];
        let s = summarize(&t, &hosts).unwrap();
        assert_eq!(s.matching_hosts, Some(3));
        assert_eq!(s.available_hosts, Some(2));
        assert_eq!(s.capacity.get("cpu"), Some(&Quantity("32".into())));
        assert_eq!(s.capacity.get("memory"), Some(&Quantity("256Gi".into())));
    }
}

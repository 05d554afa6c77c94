//! Beskar7Cluster controller: the CAPI InfraCluster. The endpoint comes from spec (a VIP or
//! load balancer the user gives), failure domains from spec or from the zones of the hosts.

use std::collections::BTreeSet;
use std::sync::Arc;

use beskar7_api::cluster::ClusterInitialization;
use beskar7_api::common::failure_domain_of;
use beskar7_api::{Beskar7Cluster, Beskar7ClusterStatus, FailureDomain, PhysicalHost};
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::shape;
use crate::capi;
use crate::conditions::{self, CONTROL_PLANE_ENDPOINT_SET, READY, reason};
use crate::context::Context;
use crate::error::Result;

pub const FIELD_MANAGER: &str = "beskar7-cluster";

pub async fn reconcile(b7c: Arc<Beskar7Cluster>, ctx: Arc<Context>) -> Result<Action> {
    let generation = b7c.metadata.generation;
    let before = b7c.status.clone().unwrap_or_default();
    let mut status = before.clone();
    status.observed_generation = generation;
    let action = match pass(&b7c, &ctx, &mut status).await {
        Ok(a) => {
            ctx.reset_backoff(&shape::key(&*b7c));
            a
        }
        Err(e) => shape::report_error(
            &ctx,
            "beskar7cluster",
            &shape::key(&*b7c),
            &mut status.conditions,
            generation,
            &e,
        ),
    };
    shape::apply_status(&ctx, &*b7c, FIELD_MANAGER, &before, &status, &[]).await?;
    Ok(action)
}

async fn pass(
    b7c: &Beskar7Cluster,
    ctx: &Context,
    status: &mut Beskar7ClusterStatus,
) -> Result<Action> {
    let ns = b7c.namespace().unwrap_or_default();
    let generation = b7c.metadata.generation;
    let owner = capi::owner_name(&b7c.metadata, "Cluster");
    let cluster = ctx.capi_cluster(&ns, owner.as_deref()).await?;
    if shape::paused(
        cluster.as_ref(),
        &b7c.metadata,
        &mut status.conditions,
        generation,
    ) {
        return Ok(Action::await_change());
    }
    let hosts: Vec<PhysicalHost> = ctx
        .cached_hosts(Some(&ns))
        .await?
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect();
    status.failure_domains = failure_domains(b7c, &hosts);
    let action = report_endpoint(b7c, ctx, status);
    if owner.is_none() {
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            reason::WAITING_FOR_CLUSTER_OWNER,
            "waiting for CAPI to set the owner Cluster",
            generation,
        );
    }
    Ok(action)
}

/// The endpoint is the user's (a VIP or load balancer): given, the cluster is provisioned;
/// missing, a condition says so (never guessed from a machine).
fn report_endpoint(
    b7c: &Beskar7Cluster,
    ctx: &Context,
    status: &mut Beskar7ClusterStatus,
) -> Action {
    let generation = b7c.metadata.generation;
    match b7c
        .spec
        .control_plane_endpoint
        .as_ref()
        .filter(|e| e.is_set())
    {
        Some(e) => {
            conditions::set(
                &mut status.conditions,
                CONTROL_PLANE_ENDPOINT_SET,
                true,
                reason::ENDPOINT_SET,
                format!("{}:{}", e.host, e.port),
                generation,
            );
            conditions::set(
                &mut status.conditions,
                READY,
                true,
                reason::PROVISIONED,
                "",
                generation,
            );
            status.initialization = Some(ClusterInitialization {
                provisioned: Some(true),
            });
            status.ready = Some(true);
            Action::requeue(ctx.settings.host_refresh)
        }
        None => {
            let message = "spec.controlPlaneEndpoint is not set: give the VIP or load balancer address of the workload cluster's API server";
            conditions::set(
                &mut status.conditions,
                CONTROL_PLANE_ENDPOINT_SET,
                false,
                reason::ENDPOINT_MISSING,
                message,
                generation,
            );
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                reason::ENDPOINT_MISSING,
                message,
                generation,
            );
            Action::await_change()
        }
    }
}

/// Failure domains: the spec's when given, else one per host zone (all allowed for control plane).
pub fn failure_domains(b7c: &Beskar7Cluster, hosts: &[PhysicalHost]) -> Vec<FailureDomain> {
    if !b7c.spec.failure_domains.is_empty() {
        return b7c.spec.failure_domains.clone();
    }
    let zones: BTreeSet<&str> = hosts
        .iter()
        .filter_map(|h| failure_domain_of(h.labels()))
        .collect();
    zones
        .into_iter()
        .map(|z| FailureDomain {
            name: z.to_string(),
            control_plane: Some(true),
            attributes: Default::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use beskar7_api::{Beskar7ClusterSpec, PhysicalHostSpec};
    use kube::core::ObjectMeta;

    fn host(zone: Option<&str>) -> PhysicalHost {
        PhysicalHost {
            metadata: ObjectMeta {
                labels: zone
                    .map(|z| [("topology.kubernetes.io/zone".to_string(), z.to_string())].into()),
                ..Default::default()
            },
            spec: PhysicalHostSpec::default(),
            status: None,
        }
    }

    #[test]
    fn failure_domains_from_spec_win_else_host_zones() {
        let mut c = Beskar7Cluster::new("c", Beskar7ClusterSpec::default());
        let hosts = [
            host(Some("b")),
            host(Some("a")),
            host(Some("a")),
            host(None),
        ];
        let fds = failure_domains(&c, &hosts);
        assert_eq!(
            fds.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(fds.iter().all(|f| f.control_plane == Some(true)));
        c.spec.failure_domains = vec![FailureDomain {
            name: "rack-x".into(),
            control_plane: Some(false),
            attributes: Default::default(),
        }];
        assert_eq!(failure_domains(&c, &hosts), c.spec.failure_domains);
    }
}

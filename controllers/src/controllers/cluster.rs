//! Beskar7Cluster controller: the CAPI InfraCluster. The endpoint comes from spec (a VIP or
//! load balancer the user gives), failure domains from spec or from the zones of the hosts.

use std::collections::BTreeSet;
use std::sync::Arc;

use beskar7_api::cluster::ClusterInitialization;
use beskar7_api::common::failure_domain_of;
use beskar7_api::{Beskar7Cluster, Beskar7ClusterStatus, FailureDomain, PhysicalHost};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use tracing::warn;

use crate::capi;
use crate::conditions::{self, CONTROL_PLANE_ENDPOINT_SET, PAUSED, READY};
use crate::context::Context;
use crate::error::{Error, Result};

pub const FIELD_MANAGER: &str = "beskar7-cluster";

fn key(c: &Beskar7Cluster) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

pub async fn reconcile(b7c: Arc<Beskar7Cluster>, ctx: Arc<Context>) -> Result<Action> {
    let ns = b7c.namespace().unwrap_or_default();
    let generation = b7c.metadata.generation;
    let before = b7c.status.clone().unwrap_or_default();
    let mut status = before.clone();
    status.observed_generation = generation;

    let owner = capi::owner_name(&b7c.metadata, "Cluster");
    let cluster = match &owner {
        Some(name) => capi::clusters(&ctx.client, &ns)
            .get_opt(name)
            .await?
            .map(|c| capi::Cluster::from_object(&c)),
        None => None,
    };
    if capi::is_paused(cluster.as_ref(), &b7c.metadata) {
        conditions::set(
            &mut status.conditions,
            PAUSED,
            true,
            "Paused",
            "the Cluster or this object is paused",
            generation,
        );
        write_status(&b7c, &ctx, &before, &status).await?;
        return Ok(Action::await_change());
    }
    conditions::set(
        &mut status.conditions,
        PAUSED,
        false,
        "NotPaused",
        "",
        generation,
    );

    let hosts: Api<PhysicalHost> = Api::namespaced(ctx.client.clone(), &ns);
    status.failure_domains =
        failure_domains(&b7c, &hosts.list(&ListParams::default()).await?.items);

    let endpoint = b7c
        .spec
        .control_plane_endpoint
        .as_ref()
        .filter(|e| e.is_set());
    let action = match endpoint {
        Some(e) => {
            conditions::set(
                &mut status.conditions,
                CONTROL_PLANE_ENDPOINT_SET,
                true,
                "EndpointSet",
                format!("{}:{}", e.host, e.port),
                generation,
            );
            conditions::set(
                &mut status.conditions,
                READY,
                true,
                "Provisioned",
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
                "EndpointMissing",
                message,
                generation,
            );
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "EndpointMissing",
                message,
                generation,
            );
            Action::await_change()
        }
    };
    if owner.is_none() {
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "WaitingForClusterOwner",
            "waiting for CAPI to set the owner Cluster",
            generation,
        );
    }
    write_status(&b7c, &ctx, &before, &status).await?;
    Ok(action)
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

async fn write_status(
    b7c: &Beskar7Cluster,
    ctx: &Context,
    before: &Beskar7ClusterStatus,
    after: &Beskar7ClusterStatus,
) -> Result<()> {
    if before == after {
        return Ok(());
    }
    let api: Api<Beskar7Cluster> =
        Api::namespaced(ctx.client.clone(), &b7c.namespace().unwrap_or_default());
    let patch =
        json!({"apiVersion": beskar7_api::API_VERSION, "kind": "Beskar7Cluster", "status": after});
    api.patch_status(
        &b7c.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

pub fn error_policy(c: Arc<Beskar7Cluster>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %key(&c), error = %err, "reconcile error");
    Action::requeue(ctx.backoff(&key(&c), err.is_transient()))
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

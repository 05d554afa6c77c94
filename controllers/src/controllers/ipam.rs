//! Static addressing of a Beskar7Machine (`spec.network`): written addresses are checked, pool
//! addresses are claimed through CAPI's IPAM contract, and the result is matched to the host.
//!
//! The IPAM contract (CAPI book, "IPAM"; `ipam.cluster.x-k8s.io/v1beta2`): the infrastructure
//! provider creates an IPAddressClaim per address (`spec.poolRef` apiGroup/kind/name,
//! `spec.clusterName`), owned by its machine (controller, blockOwnerDeletion); the IPAM provider
//! writes an IPAddress of the same name (`spec.address`, `spec.prefix`, optional `spec.gateway`)
//! and points `status.addressRef` at it; the provider deletes its claims with the machine. The
//! in-cluster provider sets no condition on a claim it cannot serve (a missing pool is skipped,
//! an exhausted one retried), so the pool itself is read to say which it is.

use beskar7_api::{Beskar7Machine, InterfaceSpec, IpPoolRef, NetworkSpec, PhysicalHost};
use beskar7_boot::{Cidr, StaticInterface, StaticNetwork};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::Scope;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::capi::CLUSTER_NAME_LABEL;
use crate::context::Context;
use crate::error::{Error, Result};

pub const IPAM_GROUP: &str = "ipam.cluster.x-k8s.io";
const IPAM_VERSION: &str = "v1beta2";

/// Condition reasons of the machine's static network.
pub mod reason {
    pub const INVALID_ADDRESS: &str = "InvalidAddress";
    pub const POOL_NOT_FOUND: &str = "IPPoolNotFound";
    pub const POOL_EXHAUSTED: &str = "IPPoolExhausted";
    pub const WAITING_FOR_ADDRESS: &str = "WaitingForIPAddress";
    pub const INTERFACE_NOT_ON_HOST: &str = "InterfaceNotOnHost";
}

/// Where resolving the machine's network got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Every address is known (pool addresses allocated, gateways filled in).
    Ready(NetworkSpec),
    /// Not yet, or not as written: the condition to show (`reason`, `message`).
    Waiting {
        reason: &'static str,
        message: String,
    },
}

fn api_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(IPAM_GROUP, IPAM_VERSION, kind))
}

/// The claim of interface `i`'s `j`th pool address.
pub fn claim_name(machine: &str, i: usize, j: usize) -> String {
    format!("{machine}-net{i}-{j}")
}

/// Checks what the API server's patterns cannot: every address, gateway and nameserver parses.
pub fn validate(spec: &NetworkSpec) -> std::result::Result<(), String> {
    for (i, iface) in spec.interfaces.iter().enumerate() {
        for a in &iface.addresses {
            Cidr::parse(a).map_err(|e| format!("spec.network.interfaces[{i}].addresses: {e}"))?;
        }
        if let Some(g) = &iface.gateway {
            g.parse::<std::net::IpAddr>().map_err(|_| {
                format!("spec.network.interfaces[{i}].gateway: {g:?} is not an IP address")
            })?;
        }
    }
    for d in &spec.nameservers {
        d.parse::<std::net::IpAddr>()
            .map_err(|_| format!("spec.network.nameservers: {d:?} is not an IP address"))?;
    }
    Ok(())
}

/// Validates the written addresses and claims the pool addresses; `Ready` once all are known.
pub async fn resolve(
    ctx: &Context,
    m: &Beskar7Machine,
    cluster: &str,
    spec: &NetworkSpec,
) -> Result<Resolved> {
    if let Err(message) = validate(spec) {
        return Ok(Resolved::Waiting {
            reason: reason::INVALID_ADDRESS,
            message,
        });
    }
    let ns = m.namespace().unwrap_or_default();
    let claims = Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        &ns,
        &api_resource("IPAddressClaim"),
    );
    let addresses =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &api_resource("IPAddress"));
    let mut resolved = spec.clone();
    for (i, iface) in spec.interfaces.iter().enumerate() {
        for (j, pool) in iface.addresses_from_pools.iter().enumerate() {
            let name = claim_name(&m.name_any(), i, j);
            let claim = match claims.get_opt(&name).await? {
                Some(c) => c,
                None => {
                    // The pool first: a claim on a pool that does not exist is never answered.
                    if let Some(why) = pool_problem(ctx, &ns, pool, false).await? {
                        return Ok(why);
                    }
                    claims
                        .create(
                            &PostParams::default(),
                            &claim_object(m, &name, cluster, pool),
                        )
                        .await?
                }
            };
            let Some(address_name) = claim.data["status"]["addressRef"]["name"].as_str() else {
                if let Some(why) = pool_problem(ctx, &ns, pool, true).await? {
                    return Ok(why);
                }
                return Ok(Resolved::Waiting {
                    reason: reason::WAITING_FOR_ADDRESS,
                    message: format!(
                        "waiting for {} {} to allocate an address for IPAddressClaim {name}",
                        pool.kind, pool.name
                    ),
                });
            };
            let Some(address) = addresses.get_opt(address_name).await? else {
                return Ok(Resolved::Waiting {
                    reason: reason::WAITING_FOR_ADDRESS,
                    message: format!("IPAddress {address_name} of claim {name} not found yet"),
                });
            };
            let spec = &address.data["spec"];
            let (Some(ip), Some(prefix)) = (spec["address"].as_str(), spec["prefix"].as_u64())
            else {
                return Err(Error::Invalid(format!(
                    "IPAddress {address_name} has no spec.address or spec.prefix"
                )));
            };
            let target = &mut resolved.interfaces[i];
            target.addresses.push(format!("{ip}/{prefix}"));
            if target.gateway.is_none()
                && let Some(g) = spec["gateway"].as_str().filter(|g| !g.is_empty())
            {
                target.gateway = Some(g.to_string());
            }
        }
        resolved.interfaces[i].addresses_from_pools.clear();
    }
    if let Err(message) = validate(&resolved) {
        return Ok(Resolved::Waiting {
            reason: reason::INVALID_ADDRESS,
            message: format!("an allocated address does not parse: {message}"),
        });
    }
    Ok(Resolved::Ready(resolved))
}

fn claim_object(m: &Beskar7Machine, name: &str, cluster: &str, pool: &IpPoolRef) -> DynamicObject {
    let mut obj = DynamicObject::new(name, &api_resource("IPAddressClaim"))
        .within(&m.namespace().unwrap_or_default());
    obj.metadata.labels = Some([(CLUSTER_NAME_LABEL.to_string(), cluster.to_string())].into());
    obj.metadata.owner_references = m.controller_owner_ref(&()).map(|o| vec![o]);
    obj.data = json!({"spec": {
        "clusterName": cluster,
        "poolRef": {"apiGroup": pool.api_group, "kind": pool.kind, "name": pool.name},
    }});
    obj
}

/// What keeps a pool from answering: it does not exist, or (`allocating`: a claim waits on it)
/// it has no free address.
async fn pool_problem(
    ctx: &Context,
    ns: &str,
    pool: &IpPoolRef,
    allocating: bool,
) -> Result<Option<Resolved>> {
    let not_found = || {
        Some(Resolved::Waiting {
            reason: reason::POOL_NOT_FOUND,
            message: format!(
                "IP pool {} {}/{} ({}) not found",
                pool.kind, ns, pool.name, pool.api_group
            ),
        })
    };
    let group = match kube::discovery::group(&ctx.client, &pool.api_group).await {
        Ok(g) => g,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(not_found()),
        Err(e) => return Err(e.into()),
    };
    // Any served version: a pool kind need not be in the group's preferred version (the
    // in-cluster pools are v1alpha2 beside CAPI's v1beta2 IPAddress kinds).
    let found = group.versions().find_map(|v| {
        group
            .versioned_resources(v)
            .into_iter()
            .find(|(ar, _)| ar.kind == pool.kind)
    });
    let Some((resource, caps)) = found else {
        return Ok(not_found());
    };
    let api = match caps.scope {
        Scope::Namespaced => {
            Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::<DynamicObject>::all_with(ctx.client.clone(), &resource),
    };
    let Some(found) = api.get_opt(&pool.name).await? else {
        return Ok(not_found());
    };
    // The in-cluster provider's pools count their addresses (`status.ipAddresses`).
    if allocating && found.data["status"]["ipAddresses"]["free"].as_i64() == Some(0) {
        return Ok(Some(Resolved::Waiting {
            reason: reason::POOL_EXHAUSTED,
            message: format!(
                "IP pool {} {} has no free address (status.ipAddresses.free is 0)",
                pool.kind, pool.name
            ),
        }));
    }
    Ok(None)
}

/// Deletes the machine's IPAddressClaims; true once none is left (the IPAM provider releases
/// the address, then the claim goes).
pub async fn release(ctx: &Context, m: &Beskar7Machine) -> Result<bool> {
    let Some(spec) = &m.spec.network else {
        return Ok(true);
    };
    let claims = Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        &m.namespace().unwrap_or_default(),
        &api_resource("IPAddressClaim"),
    );
    let mut left = false;
    for (i, iface) in spec.interfaces.iter().enumerate() {
        for j in 0..iface.addresses_from_pools.len() {
            let name = claim_name(&m.name_any(), i, j);
            match claims.get_opt(&name).await? {
                None => {}
                Some(c) => {
                    left = true;
                    if c.metadata.deletion_timestamp.is_none() {
                        match claims.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        }
    }
    Ok(!left)
}

/// The resolved network for `host`: every interface named by a MAC of the host's inventory (an
/// interface without MAC or name takes the host's first NIC). Err: a MAC the host lacks.
pub fn for_host(
    net: &NetworkSpec,
    host: &PhysicalHost,
) -> std::result::Result<NetworkSpec, String> {
    let nics: Vec<String> = host
        .status
        .as_ref()
        .and_then(|s| s.hardware_details.as_ref())
        .map(|h| h.nics.iter().map(|n| n.mac.to_lowercase()).collect())
        .unwrap_or_default();
    let mut out = net.clone();
    for (i, iface) in out.interfaces.iter_mut().enumerate() {
        match (&iface.mac_address, &iface.name) {
            (Some(mac), _) => {
                let mac = mac.to_lowercase();
                if !nics.contains(&mac) {
                    return Err(format!(
                        "spec.network.interfaces[{i}].macAddress {mac} is not a NIC of PhysicalHost {} (its NICs: {})",
                        host.name_any(),
                        if nics.is_empty() {
                            "none inventoried".to_string()
                        } else {
                            nics.join(", ")
                        }
                    ));
                }
                iface.mac_address = Some(mac);
            }
            (None, Some(_)) => {}
            (None, None) => {
                let Some(first) = nics.first() else {
                    return Err(format!(
                        "spec.network.interfaces[{i}] names no macAddress or name, and PhysicalHost {} has no inventoried NIC to take",
                        host.name_any()
                    ));
                };
                iface.mac_address = Some(first.clone());
            }
        }
    }
    Ok(out)
}

/// The boot crate's form of a resolved network (validated before, so nothing fails here that
/// [`validate`] let through; anything else is skipped rather than guessed).
pub fn to_static(net: &NetworkSpec) -> StaticNetwork {
    StaticNetwork {
        interfaces: net
            .interfaces
            .iter()
            .map(|i: &InterfaceSpec| StaticInterface {
                mac: i.mac_address.as_ref().map(|m| m.to_lowercase()),
                name: i.name.clone(),
                addresses: i
                    .addresses
                    .iter()
                    .filter_map(|a| Cidr::parse(a).ok())
                    .collect(),
                gateway: i.gateway.as_ref().and_then(|g| g.parse().ok()),
            })
            .collect(),
        nameservers: net
            .nameservers
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect(),
    }
}

/// The addresses a resolved network gives the machine (without prefix), for `status.addresses`.
pub fn addresses(net: &NetworkSpec) -> Vec<String> {
    net.interfaces
        .iter()
        .flat_map(|i| i.addresses.iter())
        .filter_map(|a| Cidr::parse(a).ok())
        .map(|c| c.ip.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use beskar7_api::{HardwareDetails, Nic, PhysicalHostStatus};

    fn host(macs: &[&str]) -> PhysicalHost {
        let mut h = PhysicalHost::new("h1", Default::default());
        h.status = Some(PhysicalHostStatus {
            hardware_details: Some(HardwareDetails {
                nics: macs
                    .iter()
                    .map(|m| Nic {
                        mac: m.to_string(),
                        name: None,
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        });
        h
    }

    fn iface(mac: Option<&str>, name: Option<&str>, addrs: &[&str]) -> InterfaceSpec {
        InterfaceSpec {
            mac_address: mac.map(str::to_string),
            name: name.map(str::to_string),
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
            addresses_from_pools: Vec::new(),
            gateway: Some("10.0.0.1".into()),
        }
    }

    #[test]
    fn malformed_addresses_are_named() {
        let mut spec = NetworkSpec {
            interfaces: vec![iface(None, None, &["10.0.0.300/24"])],
            nameservers: vec![],
        };
        let e = validate(&spec).unwrap_err();
        assert!(
            e.contains("interfaces[0].addresses") && e.contains("10.0.0.300"),
            "{e}"
        );
        spec.interfaces[0].addresses = vec!["10.0.0.3/24".into()];
        spec.interfaces[0].gateway = Some("10.0.0.256".into());
        assert!(validate(&spec).unwrap_err().contains("gateway"));
        spec.interfaces[0].gateway = None;
        spec.nameservers = vec!["dns.example".into()];
        assert!(validate(&spec).unwrap_err().contains("nameservers"));
        spec.nameservers = vec!["10.0.0.53".into()];
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn interfaces_are_matched_to_the_hosts_nics() {
        let h = host(&["52:54:00:00:00:01", "52:54:00:00:00:02"]);
        let spec = NetworkSpec {
            interfaces: vec![
                iface(Some("52:54:00:00:00:02"), None, &["10.0.0.2/24"]),
                iface(None, None, &["10.0.1.2/24"]),
                iface(None, Some("eth9"), &["10.0.2.2/24"]),
            ],
            nameservers: vec![],
        };
        let r = for_host(&spec, &h).unwrap();
        assert_eq!(
            r.interfaces[0].mac_address.as_deref(),
            Some("52:54:00:00:00:02")
        );
        assert_eq!(
            r.interfaces[1].mac_address.as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(r.interfaces[2].mac_address, None);
        let e = for_host(
            &NetworkSpec {
                interfaces: vec![iface(Some("52:54:00:00:00:09"), None, &["10.0.0.2/24"])],
                nameservers: vec![],
            },
            &h,
        )
        .unwrap_err();
        assert!(
            e.contains("52:54:00:00:00:09") && e.contains("52:54:00:00:00:01"),
            "{e}"
        );
        assert_eq!(addresses(&r), ["10.0.0.2", "10.0.1.2", "10.0.2.2"]);
        let s = to_static(&r);
        assert_eq!(s.interfaces[0].addresses[0].to_string(), "10.0.0.2/24");
    }
}

//! Shared pieces of the controller integration tests: the manager as a real process, objects
//! written as a user would, and waiting on conditions.
// Each test binary includes this module and uses a different part of it.
#![allow(dead_code, unused_imports)]

use std::time::{Duration, Instant};

use beskar7_test::ControlPlane;
pub use beskar7_test::fixtures::{
    build_test_iso, enroll, enroll_lab as enroll_lab_hosts, fat_extract, iso_extract,
};
pub use beskar7_test::{ManagerProcess as Manager, free_port};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};

/// `beskar7 manager` (the binary built for these tests) against `cp`.
pub fn start_manager(cp: &ControlPlane, extra: &[&str]) -> Manager {
    Manager::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_beskar7")),
        cp,
        extra,
    )
    .expect("start beskar7 manager")
}

pub async fn enroll_lab(
    client: &Client,
    ns: &str,
    lab: &beskar7_test::BmcLab,
    labels: &[(&str, &str)],
) -> Vec<String> {
    enroll_lab_hosts(client, ns, lab, labels)
        .await
        .expect("enrolling the lab's hosts")
}

/// Polls `f` until it returns `Some`, or panics with `what` and the manager's log.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    manager: Option<&Manager>,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            let log = manager.map(|m| m.log_tail(60)).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}\nmanager log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn create_dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    body: serde_json::Value,
) -> DynamicObject {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let mut obj: DynamicObject = serde_json::from_value(body).unwrap();
    obj.types = Some(kube::core::TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    });
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {kind}: {e}"))
}

pub fn dynamic_api(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)),
    )
}

/// Prints the state of CAPI and Beskar7 objects every `every` (shown when a test fails), so a
/// timeout says where things stopped.
pub fn spawn_progress_dump(
    client: Client,
    ns: &'static str,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let mut out = String::from("---- progress ----\n");
            for (group, version, kind) in [
                ("cluster.x-k8s.io", "v1beta2", "Cluster"),
                (
                    "controlplane.cluster.x-k8s.io",
                    "v1beta2",
                    "KubeadmControlPlane",
                ),
                ("cluster.x-k8s.io", "v1beta2", "Machine"),
                ("bootstrap.cluster.x-k8s.io", "v1beta2", "KubeadmConfig"),
                (
                    "infrastructure.cluster.x-k8s.io",
                    "v1alpha1",
                    "Beskar7Machine",
                ),
                (
                    "infrastructure.cluster.x-k8s.io",
                    "v1alpha1",
                    "Beskar7Cluster",
                ),
                (
                    "infrastructure.cluster.x-k8s.io",
                    "v1alpha1",
                    "PhysicalHost",
                ),
            ] {
                let Ok(list) = dynamic_api(&client, ns, group, version, kind)
                    .list(&Default::default())
                    .await
                else {
                    continue;
                };
                for o in list.items {
                    let conds: Vec<String> = o.data["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["status"] != "True")
                        .map(|c| {
                            format!(
                                "{}={} {}: {}",
                                c["type"].as_str().unwrap_or(""),
                                c["status"].as_str().unwrap_or(""),
                                c["reason"].as_str().unwrap_or(""),
                                c["message"]
                                    .as_str()
                                    .unwrap_or("")
                                    .chars()
                                    .take(160)
                                    .collect::<String>()
                            )
                        })
                        .collect();
                    out.push_str(&format!(
                        "{kind} {} phase={} state={} init={} | {}\n",
                        o.metadata.name.as_deref().unwrap_or(""),
                        o.data["status"]["phase"].as_str().unwrap_or("-"),
                        o.data["status"]["state"].as_str().unwrap_or("-"),
                        o.data["status"]["initialization"],
                        conds.join("; ")
                    ));
                }
            }
            eprintln!("{out}");
        }
    })
}

/// A CAPI Cluster `name` on a Beskar7Cluster of the same name, as a user writes them (the
/// endpoint 10.0.0.100:6443 is only reported; nothing needs to listen there).
pub async fn create_cluster(client: &Client, ns: &str, name: &str) {
    const INFRA: &str = "infrastructure.cluster.x-k8s.io";
    create_dynamic(
        client,
        ns,
        INFRA,
        "v1alpha1",
        "Beskar7Cluster",
        serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"controlPlaneEndpoint": {"host": "10.0.0.100", "port": 6443}},
        }),
    )
    .await;
    create_dynamic(
        client,
        ns,
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
        serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
                "infrastructureRef": {"apiGroup": INFRA, "kind": "Beskar7Cluster", "name": name},
            },
        }),
    )
    .await;
}

/// A CAPI Machine of `cluster` on a Beskar7Machine with `spec`, both named `name`. The Machine
/// names `bootstrap_secret` as its bootstrap data, as CAPI does once bootstrap is ready.
pub async fn create_machine(
    client: &Client,
    ns: &str,
    cluster: &str,
    name: &str,
    spec: serde_json::Value,
    bootstrap_secret: &str,
) {
    const INFRA: &str = "infrastructure.cluster.x-k8s.io";
    create_dynamic(
        client,
        ns,
        INFRA,
        "v1alpha1",
        "Beskar7Machine",
        serde_json::json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .await;
    create_dynamic(
        client,
        ns,
        "cluster.x-k8s.io",
        "v1beta2",
        "Machine",
        serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterName": cluster,
                "bootstrap": {"dataSecretName": bootstrap_secret},
                "infrastructureRef": {"apiGroup": INFRA, "kind": "Beskar7Machine", "name": name},
            },
        }),
    )
    .await;
}

/// A kubeadm cluster as a user writes it: Cluster `name`, Beskar7Cluster with the endpoint at
/// `127.0.0.1:endpoint_port`, KubeadmControlPlane (`cp_replicas`) and MachineDeployment
/// (`md_replicas`) whose kubelets take the providerID from the config volume's meta-data.
pub async fn create_kubeadm_cluster(
    client: &Client,
    ns: &str,
    name: &str,
    image_url: &str,
    endpoint_port: u16,
    cp_replicas: u32,
    md_replicas: u32,
) {
    const INFRA: &str = "infrastructure.cluster.x-k8s.io";
    const CAPI: &str = "cluster.x-k8s.io";
    let (cp, md) = (format!("{name}-cp"), format!("{name}-md"));
    let machine_spec = serde_json::json!({"osFamily": "kairos", "imageURL": image_url, "provisioningMode": "BootstrapData"});
    let provider_id_arg = serde_json::json!({"nodeRegistration": {"kubeletExtraArgs": [{"name": "provider-id", "value": "{{ ds.meta_data.provider_id }}"}]}});
    for (kind, group, version, body) in [
        (
            "Beskar7Cluster",
            INFRA,
            "v1alpha1",
            serde_json::json!({"metadata": {"name": name}, "spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": endpoint_port}}}),
        ),
        (
            "Beskar7MachineTemplate",
            INFRA,
            "v1alpha1",
            serde_json::json!({"metadata": {"name": cp}, "spec": {"template": {"spec": machine_spec}}}),
        ),
        (
            "Beskar7MachineTemplate",
            INFRA,
            "v1alpha1",
            serde_json::json!({"metadata": {"name": md}, "spec": {"template": {"spec": machine_spec}}}),
        ),
        (
            "KubeadmControlPlane",
            "controlplane.cluster.x-k8s.io",
            "v1beta2",
            serde_json::json!({
                "metadata": {"name": cp},
                "spec": {
                    "replicas": cp_replicas,
                    "version": "v1.36.3",
                    "machineTemplate": {"spec": {"infrastructureRef": {"apiGroup": INFRA, "kind": "Beskar7MachineTemplate", "name": cp}}},
                    "kubeadmConfigSpec": {
                        "format": "cloud-config",
                        "initConfiguration": provider_id_arg,
                        "joinConfiguration": provider_id_arg,
                    },
                },
            }),
        ),
        (
            "KubeadmConfigTemplate",
            "bootstrap.cluster.x-k8s.io",
            "v1beta2",
            serde_json::json!({
                "metadata": {"name": md},
                "spec": {"template": {"spec": {
                    "format": "cloud-config",
                    "joinConfiguration": provider_id_arg,
                }}},
            }),
        ),
        (
            "Cluster",
            CAPI,
            "v1beta2",
            serde_json::json!({
                "metadata": {"name": name},
                "spec": {
                    "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
                    "infrastructureRef": {"apiGroup": INFRA, "kind": "Beskar7Cluster", "name": name},
                    "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane", "name": cp},
                },
            }),
        ),
        (
            "MachineDeployment",
            CAPI,
            "v1beta2",
            serde_json::json!({
                "metadata": {"name": md},
                "spec": {
                    "clusterName": name,
                    "replicas": md_replicas,
                    "selector": {"matchLabels": {}},
                    "template": {"spec": {
                        "clusterName": name,
                        "version": "v1.36.3",
                        "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfigTemplate", "name": md}},
                        "infrastructureRef": {"apiGroup": INFRA, "kind": "Beskar7MachineTemplate", "name": md},
                    }},
                },
            }),
        ),
    ] {
        let mut body = body;
        body["metadata"]["namespace"] = serde_json::json!(ns);
        create_dynamic(client, ns, group, version, kind, body).await;
    }
}

/// The cluster's Machines that are Running with a nodeRef, once there are `n` of them.
pub async fn running_machines(client: &Client, ns: &str, n: usize) -> Option<Vec<DynamicObject>> {
    let list = dynamic_api(client, ns, "cluster.x-k8s.io", "v1beta2", "Machine")
        .list(&Default::default())
        .await
        .ok()?
        .items;
    let running: Vec<_> = list
        .into_iter()
        .filter(|m| {
            m.data["status"]["phase"] == "Running"
                && m.data["status"]["nodeRef"]["name"].is_string()
        })
        .collect();
    (running.len() == n).then_some(running)
}

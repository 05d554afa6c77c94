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

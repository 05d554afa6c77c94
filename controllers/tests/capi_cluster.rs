//! A whole cluster written as a user writes it (Cluster, Beskar7Cluster, KubeadmControlPlane
//! with 1 replica, MachineDeployment with 2, KubeadmConfigTemplate), driven by the real CAPI
//! managers: kubeadm bootstrap produces real bootstrap data (init, then join), three hosts in the
//! BMC lab get claimed and booted, the workload-cluster stand-in registers their Nodes at the
//! cluster's endpoint, and every Machine reaches Running. Scaling down and deleting the
//! Cluster give the hosts back.

mod support;

use std::time::Duration;

use beskar7_api::{HostState, PhysicalHost};
use beskar7_test::{BmcLab, ControlPlane, WorkloadStandIn};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use support::*;

const NS: &str = "default";
const CAPI: &str = "cluster.x-k8s.io";

async fn hosts_by_state(client: &kube::Client) -> Vec<(String, Option<HostState>, bool)> {
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|h| {
            (
                h.metadata.name.clone().unwrap(),
                h.status.and_then(|s| s.state),
                h.spec.consumer_ref.is_some(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_cluster_on_three_hosts_reaches_running_and_scales_down() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    let lab = BmcLab::start(3).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let image_url = lab
        .add_image(
            "kairos.iso",
            &build_test_iso(work.path(), "/boot/grub2/grub.cfg").unwrap(),
        )
        .unwrap();
    let manager = start_manager(&cp, &[]);
    let hosts = enroll_lab(&client, NS, &lab, &[]).await;
    for h in &hosts {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(420),
            Some(&manager),
            || async {
                let s = hosts_by_state(&client).await;
                s.iter()
                    .any(|(n, st, _)| n == h && *st == Some(HostState::Available))
                    .then_some(())
            },
        )
        .await;
    }

    let endpoint_port = free_port();
    let standin = WorkloadStandIn::start(
        client.clone(),
        NS,
        "lab",
        endpoint_port,
        lab.systems.clone(),
        lab.ca_pem.clone(),
    );

    create_kubeadm_cluster(&client, NS, "lab", &image_url, endpoint_port, 1, 2).await;

    let _dump = spawn_progress_dump(client.clone(), NS, Duration::from_secs(60));
    // Every Machine gets a host, its providerID, a nodeRef from the stand-in's Node, and Running.
    let running = eventually(
        "3 Machines Running",
        Duration::from_secs(420),
        Some(&manager),
        || async {
            let errors = standin.errors();
            if !errors.is_empty() {
                eprintln!("stand-in errors so far: {errors:?}");
            }
            running_machines(&client, NS, 3).await
        },
    )
    .await;
    let booted = standin.booted();
    assert_eq!(
        booted.len(),
        3,
        "stand-in booted {booted:?}; errors {:?}",
        standin.errors()
    );
    assert_eq!(
        booted.iter().filter(|b| b.control_plane).count(),
        1,
        "exactly one kubeadm init: {booted:?}"
    );
    for m in &running {
        let provider_id = m.data["spec"]["providerID"].as_str().unwrap();
        assert!(
            provider_id.starts_with(&format!("beskar7://{NS}/server-")),
            "{provider_id}"
        );
        assert!(
            booted.iter().any(|b| b.provider_id == provider_id),
            "no Node registered with {provider_id}"
        );
    }
    let cluster = dynamic_api(&client, NS, CAPI, "v1beta2", "Cluster");
    let c = eventually(
        "Cluster initialized",
        Duration::from_secs(60),
        Some(&manager),
        || async {
            let c = cluster.get("lab").await.ok()?;
            let init = &c.data["status"]["initialization"];
            (init["infrastructureProvisioned"] == true && init["controlPlaneInitialized"] == true)
                .then_some(c)
        },
    )
    .await;
    assert_eq!(
        c.data["spec"]["controlPlaneEndpoint"]["port"],
        endpoint_port
    );
    assert!(
        hosts_by_state(&client)
            .await
            .iter()
            .all(|(_, s, claimed)| *s == Some(HostState::Provisioned) && *claimed)
    );

    // Scale the MachineDeployment down: one host powers off, ejects, and is Available again.
    let mds = dynamic_api(&client, NS, CAPI, "v1beta2", "MachineDeployment");
    mds.patch(
        "lab-md",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually(
        "one host Available after scale-down",
        Duration::from_secs(420),
        Some(&manager),
        || async {
            let s = hosts_by_state(&client).await;
            (s.iter()
                .filter(|(_, st, c)| *st == Some(HostState::Available) && !c)
                .count()
                == 1)
                .then_some(())
        },
    )
    .await;

    // Delete the Cluster: every host comes back.
    cluster
        .delete("lab", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "all hosts Available after cluster deletion",
        Duration::from_secs(300),
        Some(&manager),
        || async {
            let s = hosts_by_state(&client).await;
            s.iter()
                .all(|(_, st, c)| *st == Some(HostState::Available) && !c)
                .then_some(())
        },
    )
    .await;
}

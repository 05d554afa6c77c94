//! `clusterctl move` of a provisioned cluster from one management cluster to another, as in a
//! bootstrap-to-self-hosted pivot: both control planes run the real CAPI managers and a Beskar7
//! manager; the real clusterctl moves the Cluster, its Machines, Beskar7 objects, the
//! PhysicalHosts (their CRD carries `move-hierarchy`), the BMC Secrets (labelled `move`), a
//! Beskar7RemediationTemplate (its CRD carries `move`) and a Beskar7Remediation (owned by a
//! Machine; paused, so it reboots nothing here).
//! Status does not travel with the objects, so this checks the provider resumes from what the
//! target API server and the BMC say: hosts keep their claim and end Provisioned again, machines
//! keep their providerIDs, and the BMC sees no new power, boot or media request.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use beskar7_api::{HostState, PhysicalHost};
use beskar7_test::{BmcLab, ControlPlane, WorkloadStandIn};
use kube::api::{Api, ListParams};
use support::*;

const NS: &str = "default";
const INFRA: &str = "infrastructure.cluster.x-k8s.io";
const CAPI: &str = "cluster.x-k8s.io";

/// host name -> (consumer name, state, bootIssuedFor)
async fn host_claims(
    client: &kube::Client,
) -> BTreeMap<String, (Option<String>, Option<HostState>, Option<String>)> {
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let status = h.status.unwrap_or_default();
            (
                h.metadata.name.unwrap_or_default(),
                (
                    h.spec.consumer_ref.map(|c| c.name),
                    status.state,
                    status.boot_issued_for,
                ),
            )
        })
        .collect()
}

/// Beskar7Machine name -> providerID, for the provisioned ones.
async fn provider_ids(client: &kube::Client) -> BTreeMap<String, String> {
    dynamic_api(client, NS, INFRA, "v1alpha1", "Beskar7Machine")
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.data["status"]["initialization"]["provisioned"] == true)
        .filter_map(|m| {
            Some((
                m.metadata.name?,
                m.data["spec"]["providerID"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_keeps_hosts_provisioned_without_new_bmc_calls() {
    beskar7_test::install_crypto_provider();
    let (source, target, lab) = tokio::join!(
        ControlPlane::builder().with_capi().start(),
        ControlPlane::builder().with_capi().start(),
        BmcLab::start(2),
    );
    let (source, target, lab) = (
        source.expect("source control plane with CAPI"),
        target.expect("target control plane with CAPI"),
        lab.expect("BMC lab"),
    );
    let (from, to) = (source.client(), target.client());
    let work = tempfile::tempdir().unwrap();
    let image_url = lab
        .add_image(
            "kairos.iso",
            &build_test_iso(work.path(), "/boot/grub2/grub.cfg").unwrap(),
        )
        .unwrap();

    // Provision a cluster (1 control plane, 1 worker) in the source management cluster.
    let from_manager = start_manager(&source, &[]);
    let hosts = enroll_lab(&from, NS, &lab, &[]).await;
    let endpoint_port = free_port();
    let standin = WorkloadStandIn::start(
        from.clone(),
        NS,
        "lab",
        endpoint_port,
        lab.systems.clone(),
        lab.ca_pem.clone(),
    );
    create_kubeadm_cluster(&from, NS, "lab", &image_url, endpoint_port, 1, 1).await;
    let _dump = spawn_progress_dump(from.clone(), NS, Duration::from_secs(60));
    eventually(
        "2 Machines Running in the source",
        Duration::from_secs(420),
        Some(&from_manager),
        || async {
            let errors = standin.errors();
            if !errors.is_empty() {
                eprintln!("stand-in errors so far: {errors:?}");
            }
            running_machines(&from, NS, 2).await
        },
    )
    .await;
    // clusterctl refuses to move a cluster whose control plane is not initialized.
    let clusters = dynamic_api(&from, NS, CAPI, "v1beta2", "Cluster");
    eventually(
        "Cluster initialized",
        Duration::from_secs(120),
        Some(&from_manager),
        || async {
            let c = clusters.get("lab").await.ok()?;
            (c.data["status"]["initialization"]["controlPlaneInitialized"] == true).then_some(())
        },
    )
    .await;
    // Both Nodes joined (the Machines are Running), so each host ejects its media and stops
    // serving its bootstrap data: part of provisioning, and BMC requests, so done before the move.
    eventually(
        "media withdrawn on every host",
        Duration::from_secs(120),
        Some(&from_manager),
        || async {
            let list = Api::<PhysicalHost>::namespaced(from.clone(), NS)
                .list(&ListParams::default())
                .await
                .ok()?
                .items;
            (list.len() == hosts.len()
                && list.iter().all(|h| {
                    h.status
                        .as_ref()
                        .is_some_and(|s| s.config_withdrawn_at.is_some())
                }))
            .then_some(())
        },
    )
    .await;
    let claims_before = host_claims(&from).await;
    assert_eq!(claims_before.len(), hosts.len());
    for (host, (consumer, state, issued)) in &claims_before {
        assert!(consumer.is_some(), "{host} not claimed: {claims_before:?}");
        assert_eq!(*state, Some(HostState::Provisioned), "{host}");
        assert!(issued.is_some(), "{host}");
    }
    let ids_before = provider_ids(&from).await;
    assert_eq!(ids_before.len(), 2, "{ids_before:?}");
    let bmc_before = lab.changing_requests();
    assert!(
        bmc_before.iter().any(|r| r.contains("InsertMedia"))
            && bmc_before
                .iter()
                .any(|r| r.contains("ComputerSystem.Reset")),
        "the emulator's request log should show the provisioning: {bmc_before:?}"
    );

    // Remediation objects: a template nothing owns, and a remediation owned by a Machine (paused
    // by its annotation: it must not reboot anything, as the BMC log is compared below).
    create_dynamic(
        &from,
        NS,
        INFRA,
        "v1alpha1",
        "Beskar7RemediationTemplate",
        serde_json::json!({"metadata": {"name": "reboot", "namespace": NS},
            "spec": {"template": {"spec": {"strategy": {"type": "Reboot", "retryLimit": 2, "timeout": "5m"}}}}}),
    )
    .await;
    let machines = running_machines(&from, NS, 2).await.expect("2 Machines");
    let owner = &machines[0];
    let owner_name = owner.metadata.name.clone().unwrap();
    create_dynamic(
        &from,
        NS,
        INFRA,
        "v1alpha1",
        "Beskar7Remediation",
        serde_json::json!({"metadata": {
            "name": owner_name, "namespace": NS,
            "annotations": {"cluster.x-k8s.io/paused": ""},
            "ownerReferences": [{"apiVersion": format!("{CAPI}/v1beta2"), "kind": "Machine", "name": owner_name, "uid": owner.metadata.uid}],
        }, "spec": {"strategy": {"type": "Reboot"}}}),
    )
    .await;

    // The target runs its own provider, as after `clusterctl init` there.
    let to_manager = start_manager(&target, &[]);
    let out = source
        .clusterctl()
        .arg("move")
        .arg("--kubeconfig")
        .arg(source.kubeconfig_path())
        .arg("--to-kubeconfig")
        .arg(target.kubeconfig_path())
        .args(["--namespace", NS, "-v", "2"])
        .output()
        .expect("run clusterctl move");
    assert!(
        out.status.success(),
        "clusterctl move failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // In the target: same claims, Provisioned again from the BMC's view, same providerIDs, and
    // CAPI finds the Nodes again.
    let _dump_to = spawn_progress_dump(to.clone(), NS, Duration::from_secs(60));
    eventually(
        "hosts Provisioned with their claims in the target",
        Duration::from_secs(180),
        Some(&to_manager),
        || async {
            let claims = host_claims(&to).await;
            let same = claims.len() == claims_before.len()
                && claims_before.iter().all(|(host, (consumer, _, issued))| {
                    claims.get(host).is_some_and(|(c, s, i)| {
                        c == consumer && *s == Some(HostState::Provisioned) && i == issued
                    })
                });
            same.then_some(())
        },
    )
    .await;
    eventually(
        "Beskar7Machines provisioned with the same providerIDs",
        Duration::from_secs(120),
        Some(&to_manager),
        || async { (provider_ids(&to).await == ids_before).then_some(()) },
    )
    .await;
    eventually(
        "2 Machines Running in the target",
        Duration::from_secs(180),
        Some(&to_manager),
        || async { running_machines(&to, NS, 2).await },
    )
    .await;
    let moved = dynamic_api(&to, NS, CAPI, "v1beta2", "Cluster")
        .get("lab")
        .await
        .expect("Cluster in the target");
    assert_ne!(
        moved.data["spec"]["paused"], true,
        "unpaused after the move"
    );
    assert!(
        host_claims(&from).await.is_empty(),
        "the source keeps no PhysicalHost"
    );
    for kind in ["Beskar7RemediationTemplate", "Beskar7Remediation"] {
        let name = if kind == "Beskar7Remediation" {
            owner_name.as_str()
        } else {
            "reboot"
        };
        let moved = dynamic_api(&to, NS, INFRA, "v1alpha1", kind)
            .get(name)
            .await;
        assert!(moved.is_ok(), "{kind} {name} not moved: {moved:?}");
        assert!(
            dynamic_api(&from, NS, INFRA, "v1alpha1", kind)
                .get_opt(name)
                .await
                .unwrap()
                .is_none(),
            "{kind} {name} left in the source"
        );
    }
    let moved_owner = dynamic_api(&to, NS, CAPI, "v1beta2", "Machine")
        .get(&owner_name)
        .await
        .unwrap();
    let rem = dynamic_api(&to, NS, INFRA, "v1alpha1", "Beskar7Remediation")
        .get(&owner_name)
        .await
        .unwrap();
    assert_eq!(
        rem.metadata
            .owner_references
            .unwrap_or_default()
            .first()
            .map(|o| o.uid.clone()),
        moved_owner.metadata.uid,
        "the moved remediation is owned by the moved Machine"
    );

    // Nothing was re-provisioned: no power, boot override or media request since the move.
    let bmc_after = lab.changing_requests();
    assert_eq!(
        bmc_after.len(),
        bmc_before.len(),
        "the BMC got new requests after the move: {:?}\nsource manager:\n{}\ntarget manager:\n{}",
        &bmc_after[bmc_before.len().min(bmc_after.len())..],
        from_manager.log_tail(40),
        to_manager.log_tail(80),
    );
    assert!(
        from_manager
            .log_text()
            .lines()
            .all(|l| !l.contains("panicked"))
            && to_manager
                .log_text()
                .lines()
                .all(|l| !l.contains("panicked")),
        "a manager panicked"
    );
}

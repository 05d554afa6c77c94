//! External remediation with the real CAPI managers: a MachineHealthCheck whose
//! `remediation.templateRef` names a Beskar7RemediationTemplate watches the MachineDeployment's
//! Machines; the workload stand-in's Node of one goes NotReady. CAPI creates a
//! Beskar7Remediation; the host is power-cycled on the emulator (its request log shows the
//! resets); the Node recovers and CAPI ends the remediation. Then a Node that stays NotReady:
//! rebooted `retryLimit` times, each given `timeout`, across a manager restart without an extra
//! power cycle; then the Machine is handed to its MachineSet (`OwnerRemediated=False`), which
//! deletes it, and a replacement Machine comes up on the spare host.

mod support;

use std::time::Duration;

use beskar7_api::{Beskar7Remediation, PhysicalHost, RemediationPhase};
use beskar7_test::{BmcLab, ControlPlane, WorkloadStandIn};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use support::*;

const NS: &str = "default";
const CAPI: &str = "cluster.x-k8s.io";
const INFRA: &str = "infrastructure.cluster.x-k8s.io";

/// Plays the kubelet: the Node's Ready condition, as the stand-in writes it.
async fn set_node_ready(workload: &kube::Client, node: &str, ready: bool) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (status, why) = if ready {
        ("True", "KubeletReady")
    } else {
        ("False", "KubeletNotReady")
    };
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "status": {"conditions": [{"type": "Ready", "status": status, "reason": why, "message": "set by the test", "lastHeartbeatTime": now, "lastTransitionTime": now}]},
    });
    Api::<Node>::all(workload.clone())
        .patch_status(
            node,
            &PatchParams::apply("beskar7-standin").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

/// Power actions the emulator carried out on `system_id` (its own request log).
fn resets(lab: &BmcLab, system_id: &str) -> usize {
    lab.changing_requests()
        .iter()
        .filter(|r| r.contains(system_id) && r.ends_with("/Actions/ComputerSystem.Reset"))
        .count()
}

/// The MachineDeployment's Running Machines: (name, uid, node, host name).
async fn md_machines(client: &kube::Client) -> Vec<(String, String, String, String)> {
    dynamic_api(client, NS, CAPI, "v1beta2", "Machine")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|m| {
            m.metadata.labels.as_ref().is_some_and(|l| {
                l.get("cluster.x-k8s.io/deployment-name")
                    .map(String::as_str)
                    == Some("lab-md")
            }) && m.data["status"]["phase"] == "Running"
        })
        .filter_map(|m| {
            let provider_id = m.data["spec"]["providerID"].as_str()?;
            let (_, host) = beskar7_api::parse_provider_id(provider_id)?;
            Some((
                m.metadata.name.clone()?,
                m.metadata.uid.clone()?,
                m.data["status"]["nodeRef"]["name"].as_str()?.to_string(),
                host.to_string(),
            ))
        })
        .collect()
}

async fn system_of(hosts: &Api<PhysicalHost>, host: &str) -> String {
    hosts
        .get(host)
        .await
        .unwrap()
        .spec
        .redfish_connection
        .system_id
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_health_check_reboots_then_hands_the_machine_to_its_owner() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    // 1 control plane + 2 workers, and one spare host for the replacement.
    let lab = BmcLab::start(4).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let image_url = lab
        .add_image(
            "kairos.iso",
            &build_test_iso(work.path(), "/boot/grub2/grub.cfg").unwrap(),
        )
        .unwrap();
    let mut manager = start_manager(&cp, &["--reboot-graceful-timeout-seconds=10"]);
    enroll_lab(&client, NS, &lab, &[]).await;
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
    eventually(
        "3 Machines Running",
        Duration::from_secs(480),
        Some(&manager),
        || async { running_machines(&client, NS, 3).await },
    )
    .await;
    let workload = standin.workload_client().expect("workload API server runs");

    create_dynamic(
        &client,
        NS,
        INFRA,
        "v1alpha1",
        "Beskar7RemediationTemplate",
        serde_json::json!({
            "metadata": {"name": "reboot", "namespace": NS},
            "spec": {"template": {"spec": {"strategy": {"type": "Reboot", "retryLimit": 2, "timeout": "25s"}}}},
        }),
    )
    .await;
    create_dynamic(
        &client,
        NS,
        CAPI,
        "v1beta2",
        "MachineHealthCheck",
        serde_json::json!({
            "metadata": {"name": "lab-md-unhealthy", "namespace": NS},
            "spec": {
                "clusterName": "lab",
                "selector": {"matchLabels": {"cluster.x-k8s.io/deployment-name": "lab-md"}},
                "checks": {"unhealthyNodeConditions": [
                    {"type": "Ready", "status": "False", "timeoutSeconds": 5},
                    {"type": "Ready", "status": "Unknown", "timeoutSeconds": 300},
                ]},
                "remediation": {"templateRef": {"apiVersion": format!("{INFRA}/v1alpha1"), "kind": "Beskar7RemediationTemplate", "name": "reboot"}},
            },
        }),
    )
    .await;
    let hosts = Api::<PhysicalHost>::namespaced(client.clone(), NS);
    let remediations = Api::<Beskar7Remediation>::namespaced(client.clone(), NS);
    let machines = dynamic_api(&client, NS, CAPI, "v1beta2", "Machine");
    let workers = md_machines(&client).await;
    assert_eq!(workers.len(), 2, "{workers:?}");

    // A: the Node goes NotReady, the host is rebooted once, the Node recovers.
    let (a_name, a_uid, a_node, a_host) = workers[0].clone();
    let a_system = system_of(&hosts, &a_host).await;
    let a_resets = resets(&lab, &a_system);
    set_node_ready(&workload, &a_node, false).await;
    let rem = eventually(
        "A's host rebooted by its remediation",
        Duration::from_secs(180),
        Some(&manager),
        || async {
            let r = remediations.get(&a_name).await.ok()?;
            let s = r.status.clone()?;
            (s.phase == Some(RemediationPhase::Waiting)).then_some(r)
        },
    )
    .await;
    let owner = rem.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owner.iter().any(|o| o.kind == "Machine" && o.uid == a_uid),
        "the remediation is owned by its Machine: {owner:?}"
    );
    let status = rem.status.clone().unwrap();
    assert_eq!(status.retry_count, Some(1), "{status:?}");
    assert_eq!(
        status.host_ref.as_ref().map(|h| h.name.as_str()),
        Some(a_host.as_str())
    );
    let host_reboot = hosts
        .get(&a_host)
        .await
        .unwrap()
        .status
        .unwrap()
        .reboot
        .unwrap();
    assert_eq!(Some(&host_reboot.request), status.reboot_request.as_ref());
    assert_eq!(
        resets(&lab, &a_system) - a_resets,
        2,
        "one graceful shutdown and one power-on on the emulator: {:?}",
        lab.changing_requests()
    );
    set_node_ready(&workload, &a_node, true).await;
    eventually(
        "A's remediation ended by the MachineHealthCheck",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            remediations
                .get_opt(&a_name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let a = machines.get(&a_name).await.expect("A is kept");
    assert_eq!(a.metadata.uid.as_deref(), Some(a_uid.as_str()));
    assert!(
        !owner_remediated_false(&a),
        "{:?}",
        a.data["status"]["conditions"]
    );

    // B: the Node stays NotReady. Two reboots, each given the timeout; the manager restarts
    // during the first; then the MachineSet replaces the Machine.
    let (b_name, b_uid, b_node, b_host) = workers[1].clone();
    let b_system = system_of(&hosts, &b_host).await;
    let b_resets = resets(&lab, &b_system);
    set_node_ready(&workload, &b_node, false).await;
    eventually(
        "B's first reboot under way",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            let s = remediations.get(&b_name).await.ok()?.status?;
            (s.retry_count == Some(1)).then_some(())
        },
    )
    .await;
    manager.restart().expect("manager restarts");
    let retry = |n: i32, phase: RemediationPhase| {
        let remediations = remediations.clone();
        let b_name = b_name.clone();
        async move {
            let s = remediations.get(&b_name).await.ok()?.status?;
            (s.retry_count == Some(n) && s.phase == Some(phase))
                .then_some(std::time::Instant::now())
        }
    };
    let first_done = eventually(
        "B rebooted once, waiting for its Node",
        Duration::from_secs(180),
        Some(&manager),
        || retry(1, RemediationPhase::Waiting),
    )
    .await;
    let second = eventually(
        "B's second reboot",
        Duration::from_secs(180),
        Some(&manager),
        || retry(2, RemediationPhase::Running),
    )
    .await;
    assert!(
        second - first_done >= Duration::from_secs(20),
        "the second reboot came {:?} after the first: the 25s timeout was not given",
        second - first_done
    );
    let failed = eventually(
        "B's remediation gives up after two reboots",
        Duration::from_secs(300),
        Some(&manager),
        || async {
            let r = remediations.get(&b_name).await.ok()?;
            (r.status.as_ref()?.phase == Some(RemediationPhase::Failed)).then_some(r)
        },
    )
    .await;
    let status = failed.status.clone().unwrap();
    assert_eq!(status.retry_count, Some(2), "{status:?}");
    assert_eq!(
        resets(&lab, &b_system) - b_resets,
        4,
        "two reboots (shutdown + power-on each), none repeated by the restart: {:?}",
        lab.changing_requests()
    );
    let b = machines.get(&b_name).await;
    if let Ok(b) = &b {
        // Unless the MachineSet already deleted it: handed to its owner.
        assert!(
            owner_remediated_false(b) || b.metadata.deletion_timestamp.is_some(),
            "{:?}",
            b.data["status"]["conditions"]
        );
    }
    eventually(
        "B deleted by its MachineSet and replaced",
        Duration::from_secs(420),
        Some(&manager),
        || async {
            let gone = machines.get_opt(&b_name).await.ok()?.is_none();
            let now = md_machines(&client).await;
            (gone && now.len() == 2 && now.iter().all(|m| m.1 != b_uid)).then_some(())
        },
    )
    .await;
}

fn owner_remediated_false(m: &DynamicObject) -> bool {
    m.data["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "OwnerRemediated" && c["status"] == "False")
    })
}

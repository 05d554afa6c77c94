//! Claims under contention and pause. More Machines than hosts: the extra ones wait with
//! `WaitingForHost`, never two machines on one host. While the Cluster is paused, a free host
//! that matches appears and must stay unclaimed; unpausing lets the waiting machine take it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_test::{BmcLab, ControlPlane};
use kube::api::{Api, ListParams, Patch, PatchParams};
use support::*;

const NS: &str = "default";
const CAPI: &str = "cluster.x-k8s.io";

/// Every host's consumer; panics if two hosts name the same machine.
async fn consumers(client: &kube::Client) -> BTreeMap<String, String> {
    let mut by_machine = BTreeMap::new();
    for h in Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
    {
        if let Some(c) = h.spec.consumer_ref {
            let host = h.metadata.name.clone().unwrap();
            if let Some(other) = by_machine.insert(c.name.clone(), host.clone()) {
                panic!("machine {} holds two hosts: {other} and {host}", c.name);
            }
        }
    }
    by_machine
}

fn reason(m: &Beskar7Machine, type_: &str) -> Option<String> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_machines_than_hosts_wait_and_pause_stops_changes() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    // Three systems; the third is enrolled only while the Cluster is paused.
    let lab = BmcLab::start(3).await.expect("BMC lab");
    let client = cp.client();
    let image_url = lab
        .add_image(
            "talos.iso",
            b"not really an ISO: PreBakedISO is inserted as it is",
        )
        .unwrap();
    let manager = start_manager(&cp, &[]);
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": beskar7_test::fixtures::LAB_CA_SECRET},
                "stringData": {"ca.crt": lab.ca_pem},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let ca = Some(beskar7_test::fixtures::LAB_CA_SECRET);
    let hosts = ["server-00", "server-01"];
    for (h, s) in hosts.iter().zip(&lab.systems) {
        enroll(&client, NS, h, s, ca, &[]).await.unwrap();
    }
    for h in &hosts {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(90),
            Some(&manager),
            || async {
                let h = Api::<PhysicalHost>::namespaced(client.clone(), NS)
                    .get(h)
                    .await
                    .ok()?;
                (h.status?.state == Some(HostState::Available)).then_some(())
            },
        )
        .await;
    }
    create_cluster(&client, NS, "race").await;

    // Three machines for two hosts.
    for name in ["m-a", "m-b", "m-c"] {
        let spec = serde_json::json!({"osFamily": "talos", "imageURL": image_url, "provisioningMode": "PreBakedISO"});
        create_machine(&client, NS, "race", name, spec, "unused").await;
    }
    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    let waiting = eventually(
        "two provisioned, one WaitingForHost",
        Duration::from_secs(180),
        Some(&manager),
        || async {
            let list = machines.list(&ListParams::default()).await.ok()?.items;
            let provisioned = list
                .iter()
                .filter(|m| {
                    m.status
                        .as_ref()
                        .and_then(|s| s.initialization.as_ref()?.provisioned)
                        == Some(true)
                })
                .count();
            let waiting: Vec<_> = list
                .iter()
                .filter(|m| reason(m, "Ready").as_deref() == Some("WaitingForHost"))
                .collect();
            (provisioned == 2 && waiting.len() == 1)
                .then(|| waiting[0].metadata.name.clone().unwrap())
        },
    )
    .await;
    assert_eq!(consumers(&client).await.len(), 2);
    assert!(!consumers(&client).await.contains_key(&waiting));

    // Pause the Cluster, then a free matching host appears: the waiting machine must not take
    // it while paused.
    let clusters = dynamic_api(&client, NS, CAPI, "v1beta2", "Cluster");
    clusters
        .patch(
            "race",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    eventually(
        "waiting machine reports Paused",
        Duration::from_secs(60),
        Some(&manager),
        || async {
            let m = machines.get(&waiting).await.ok()?;
            m.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Paused" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    enroll(&client, NS, "server-02", &lab.systems[2], ca, &[])
        .await
        .unwrap();
    eventually(
        "server-02 Available while the Cluster is paused",
        Duration::from_secs(90),
        Some(&manager),
        || async {
            let h = Api::<PhysicalHost>::namespaced(client.clone(), NS)
                .get("server-02")
                .await
                .ok()?;
            (h.status?.state == Some(HostState::Available)).then_some(())
        },
    )
    .await;
    // Longer than the waiting machine's requeue (15 s) and than any host event it sees.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let during_pause = consumers(&client).await;
    assert!(
        !during_pause.contains_key(&waiting),
        "a paused machine claimed a host: {during_pause:?}"
    );

    // Unpause: the waiting machine takes the free host.
    clusters
        .patch(
            "race",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    eventually(
        &format!("{waiting} provisioned on the new host"),
        Duration::from_secs(240),
        Some(&manager),
        || async {
            let m = machines.get(&waiting).await.ok()?;
            (m.status.as_ref()?.initialization.as_ref()?.provisioned == Some(true)).then_some(())
        },
    )
    .await;
    let after = consumers(&client).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(
        after.get(&waiting).map(String::as_str),
        Some("server-02"),
        "{after:?}"
    );
}

//! Which host a machine gets, and which objects a manager looks at: the Machine's failure
//! domain and the `hostSelector`'s `matchExpressions` in claiming; `--namespace` and
//! `--watch-filter` scoping. Against a real kube-apiserver with the in-process fake BMC and
//! stand-ins for the CAPI objects (`beskar7_test::fake_bmc::stand_in`): no CAPI manager needed.

mod support;

use std::time::Duration;

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_test::ControlPlane;
use beskar7_test::fake_bmc::{FakeBmc, stand_in};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::*;

const NS: &str = "default";
const IMAGE: &str = "http://127.0.0.1:9/prebaked.iso";

async fn host_of(client: &kube::Client, ns: &str, machine: &str) -> Option<String> {
    let m = Api::<Beskar7Machine>::namespaced(client.clone(), ns)
        .get(machine)
        .await
        .ok()?;
    m.status?.initialization?.provisioned.filter(|p| *p)?;
    Api::<PhysicalHost>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|h| {
            h.spec
                .consumer_ref
                .as_ref()
                .is_some_and(|c| c.name == machine)
        })
        .and_then(|h| h.metadata.name)
}

async fn wait_available(client: &kube::Client, ns: &str, hosts: &[&str], manager: &Manager) {
    for h in hosts {
        eventually(
            &format!("{ns}/{h} Available"),
            Duration::from_secs(90),
            Some(manager),
            || async {
                let h = Api::<PhysicalHost>::namespaced(client.clone(), ns)
                    .get(h)
                    .await
                    .ok()?;
                (h.status?.state == Some(HostState::Available)).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_domains_and_match_expressions_choose_the_host() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .start()
        .await
        .expect("control plane");
    let bmc = FakeBmc::builder(4).start().await.unwrap();
    let client = cp.client();
    let zone = "topology.kubernetes.io/zone";
    let hosts = [
        ("h-a-worker", vec![(zone, "a"), ("role", "worker")]),
        ("h-b-worker", vec![(zone, "b"), ("role", "worker")]),
        ("h-b-control", vec![(zone, "b"), ("role", "control")]),
        (
            "h-c-gpu",
            vec![(zone, "c"), ("role", "worker"), ("gpu", "true")],
        ),
    ];
    for ((name, labels), s) in hosts.iter().zip(&bmc.systems) {
        beskar7_test::fixtures::enroll(&client, NS, name, s, None, labels)
            .await
            .unwrap();
    }
    let manager = start_manager(&cp, &[]);
    wait_available(&client, NS, &hosts.map(|(n, _)| n), &manager).await;
    stand_in::cluster(&client, NS, "c1").await.unwrap();
    let spec = |selector: serde_json::Value| json!({"osFamily": "talos", "imageURL": IMAGE, "provisioningMode": "PreBakedISO", "hostSelector": selector});
    // Failure domain b, workers only: one host fits.
    stand_in::machine_with(
        &client,
        NS,
        "c1",
        "m-zone-b",
        json!({"failureDomain": "b"}),
        spec(
            json!({"matchExpressions": [{"key": "role", "operator": "In", "values": ["worker"]}]}),
        ),
        json!({}),
    )
    .await
    .unwrap();
    // Exists.
    stand_in::machine_with(
        &client,
        NS,
        "c1",
        "m-gpu",
        json!({}),
        spec(json!({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]})),
        json!({}),
    )
    .await
    .unwrap();
    // NotIn + DoesNotExist.
    stand_in::machine_with(
        &client,
        NS,
        "c1",
        "m-not-worker",
        json!({}),
        spec(json!({"matchExpressions": [
            {"key": "role", "operator": "NotIn", "values": ["worker"]},
            {"key": "gpu", "operator": "DoesNotExist"},
        ]})),
        json!({}),
    )
    .await
    .unwrap();
    // A failure domain no host is in: waits.
    stand_in::machine_with(
        &client,
        NS,
        "c1",
        "m-zone-z",
        json!({"failureDomain": "z"}),
        spec(json!({})),
        json!({}),
    )
    .await
    .unwrap();
    for (machine, want) in [
        ("m-zone-b", "h-b-worker"),
        ("m-gpu", "h-c-gpu"),
        ("m-not-worker", "h-b-control"),
    ] {
        let got = eventually(
            &format!("{machine} provisioned"),
            Duration::from_secs(90),
            Some(&manager),
            || host_of(&client, NS, machine),
        )
        .await;
        assert_eq!(got, want, "{machine}");
    }
    let z = Api::<Beskar7Machine>::namespaced(client.clone(), NS)
        .get("m-zone-z")
        .await
        .unwrap();
    let ready = z
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "WaitingForHost", "{ready:?}");
    // h-a-worker is still free: the failure domain, not a lack of hosts, kept m-zone-z waiting.
    let a = Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get("h-a-worker")
        .await
        .unwrap();
    assert!(a.spec.consumer_ref.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_watch_filter_scope_a_manager() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .start()
        .await
        .expect("control plane");
    let bmc = FakeBmc::builder(4).start().await.unwrap();
    let client = cp.client();
    for ns in ["team-a", "team-b"] {
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
    }
    // The shard's hosts carry its label, as its machines do.
    let in_shard = [("cluster.x-k8s.io/watch-filter", "shard-1")];
    let other_shard = [("cluster.x-k8s.io/watch-filter", "shard-2")];
    for (ns, name, system, labels) in [
        ("team-a", "a0", 0, &in_shard),
        ("team-a", "a1", 1, &in_shard),
        ("team-a", "a2", 2, &other_shard),
        ("team-b", "b0", 3, &in_shard),
    ] {
        beskar7_test::fixtures::enroll(&client, ns, name, &bmc.systems[system], None, labels)
            .await
            .unwrap();
    }
    // --namespace team-a: team-b is none of its business; --watch-filter shard-1: neither is
    // the host labelled for shard-2.
    let manager = start_manager(&cp, &["--namespace", "team-a", "--watch-filter", "shard-1"]);
    wait_available(&client, "team-a", &["a0", "a1"], &manager).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (ns, name, why) in [
        (
            "team-b",
            "b0",
            "a manager scoped to team-a reconciled team-b",
        ),
        (
            "team-a",
            "a2",
            "a manager filtered to shard-1 reconciled a shard-2 host",
        ),
    ] {
        let h = Api::<PhysicalHost>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .unwrap();
        assert!(h.status.is_none(), "{why}: {:?}", h.status);
    }
    for s in &bmc.systems[2..] {
        let seen = bmc.system(&s.system_id).expect("system");
        assert_eq!(
            (seen.power_on_requests, seen.inserts),
            (0, 0),
            "{} is outside the manager's scope and was driven on its BMC",
            s.system_id
        );
    }

    // --watch-filter shard-1: only the machine labelled for the shard gets a host.
    stand_in::cluster(&client, "team-a", "c1").await.unwrap();
    let spec = json!({"osFamily": "talos", "imageURL": IMAGE, "provisioningMode": "PreBakedISO"});
    let shard = json!({"cluster.x-k8s.io/watch-filter": "shard-1"});
    stand_in::machine_with(
        &client,
        "team-a",
        "c1",
        "in-shard",
        json!({}),
        spec.clone(),
        shard,
    )
    .await
    .unwrap();
    stand_in::machine_with(
        &client,
        "team-a",
        "c1",
        "other-shard",
        json!({}),
        spec,
        json!({"cluster.x-k8s.io/watch-filter": "shard-2"}),
    )
    .await
    .unwrap();
    eventually(
        "in-shard provisioned",
        Duration::from_secs(90),
        Some(&manager),
        || host_of(&client, "team-a", "in-shard"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let other = Api::<Beskar7Machine>::namespaced(client.clone(), "team-a")
        .get("other-shard")
        .await
        .unwrap();
    assert!(
        other.status.is_none(),
        "a manager filtered to shard-1 reconciled shard-2: {:?}",
        other.status
    );
    assert!(other.metadata.finalizers.unwrap_or_default().is_empty());
}

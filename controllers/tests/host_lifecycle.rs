//! The PhysicalHost lifecycle against the real components, read back through independent eyes:
//! the emulator's state through the BMC-to-VM bridge's own Redfish reader
//! (`beskar7_test::boot_bridge::read_bmc`, not the provider's client) and the artifact URLs with
//! plain HTTP.

mod support;

use std::time::Duration;

use beskar7_api::{ConfigDelivery, HostState, PROVISIONING_LOCK_ANNOTATION, PhysicalHost};
use beskar7_test::bmc_proxy::{Fault, FaultRule};
use beskar7_test::boot_bridge::read_bmc;
use beskar7_test::{BmcLab, BmcProxy, ControlPlane};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::*;

const NS: &str = "default";

/// A claim fails after its media went in (the one-time boot override is refused), the host
/// goes to Error, and the Machine is deleted: the host must come back empty (media ejected),
/// its artifact URLs revoked (the bootstrap data no longer servable), its lock cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_after_inserting_then_release_ejects_revokes_and_unlocks() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    let lab = BmcLab::start(1).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let iso = build_test_iso(work.path(), "/boot/grub/grub.cfg").unwrap();
    let image_url = lab.add_image("kairos.iso", &iso).unwrap();
    let proxy = BmcProxy::start(&lab).await.expect("proxy");
    let system = &lab.systems[0];
    beskar7_test::fixtures::enroll_via_proxy(&client, NS, "h0", system, &proxy, &[("role", "w")])
        .await
        .unwrap();
    let manager = start_manager(&cp, &[]);
    let hosts = Api::<PhysicalHost>::namespaced(client.clone(), NS);
    let state = || async { hosts.get("h0").await.ok()?.status?.state };
    eventually(
        "h0 Available",
        Duration::from_secs(90),
        Some(&manager),
        || async { (state().await == Some(HostState::Available)).then_some(()) },
    )
    .await;

    // Every boot override PATCH is refused, after the media are in.
    proxy.inject(
        FaultRule::always(Fault::Status(400))
            .method("PATCH")
            .path_contains("/Systems/"),
    );
    create_cluster(&client, NS, "c1").await;
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "m1-bootstrap"},
                "stringData": {"value": "#cloud-config\nruncmd: [echo secret-join-token]\n", "format": "cloud-config"},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    create_machine(
        &client,
        NS,
        "c1",
        "m1",
        serde_json::json!({"osFamily": "kairos", "imageURL": image_url, "hostSelector": {"matchLabels": {"role": "w"}}}),
        "m1-bootstrap",
    )
    .await;
    eventually(
        "h0 in Error after the refused boot override",
        Duration::from_secs(120),
        Some(&manager),
        || async { (state().await == Some(HostState::Error)).then_some(()) },
    )
    .await;
    let view = read_bmc(system, &lab.ca_pem).await.unwrap();
    let inserted: Vec<String> = view.inserted().filter_map(|s| s.image.clone()).collect();
    assert!(
        !inserted.is_empty(),
        "the media went in before the failure: {view:?}"
    );
    for url in &inserted {
        assert_eq!(
            reqwest::get(url).await.unwrap().status(),
            200,
            "{url} served while claimed"
        );
    }

    // Release.
    dynamic_api(&client, NS, "cluster.x-k8s.io", "v1beta2", "Machine")
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "h0 Available again",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            let h = hosts.get("h0").await.ok()?;
            (h.spec.consumer_ref.is_none() && h.status?.state == Some(HostState::Available))
                .then_some(())
        },
    )
    .await;
    let view = read_bmc(system, &lab.ca_pem).await.unwrap();
    assert_eq!(
        view.inserted().count(),
        0,
        "media left inserted after the release: {view:?}"
    );
    for url in &inserted {
        assert_eq!(
            reqwest::get(url).await.unwrap().status(),
            404,
            "{url} still served after the release"
        );
    }
    let h = hosts.get("h0").await.unwrap();
    assert!(
        !h.annotations().contains_key(PROVISIONING_LOCK_ANNOTATION),
        "lock left behind: {:?}",
        h.annotations()
    );
}

/// A BMC slower than the power hold: it takes 45 s to carry out a power change and reports the
/// old state meanwhile. The provider must ask for power-on exactly once for the provisioning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bmc_is_asked_for_power_on_once() {
    use beskar7_test::fake_bmc::{FakeBmc, stand_in};
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .start()
        .await
        .expect("control plane");
    let bmc = FakeBmc::builder(1)
        .power_delay(Duration::from_secs(45))
        .start()
        .await
        .unwrap();
    let client = cp.client();
    let manager = start_manager(&cp, &[]);
    let hosts = stand_in::enroll(&client, NS, &bmc, "slow", 1)
        .await
        .unwrap();
    let api = Api::<PhysicalHost>::namespaced(client.clone(), NS);
    let state = || async { api.get(&hosts[0]).await.ok()?.status?.state };
    eventually(
        "host Available",
        Duration::from_secs(60),
        Some(&manager),
        || async { (state().await == Some(HostState::Available)).then_some(()) },
    )
    .await;
    stand_in::cluster(&client, NS, "slow").await.unwrap();
    stand_in::machine(&client, NS, "slow", "m0", "http://127.0.0.1:9/prebaked.iso")
        .await
        .unwrap();
    eventually(
        "host Provisioned",
        Duration::from_secs(180),
        Some(&manager),
        || async { (state().await == Some(HostState::Provisioned)).then_some(()) },
    )
    .await;
    let delivery = || async { api.get(&hosts[0]).await.ok()?.status?.config_delivery };
    assert_eq!(delivery().await, Some(ConfigDelivery::External));

    // The status is lost after the boot (a restore, or a pass that read a view older than its
    // own last write): the next pass says again how the configuration goes, and boots nothing.
    api.patch_status(
        &hosts[0],
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"configDelivery": null}})),
    )
    .await
    .unwrap();
    assert_eq!(delivery().await, None);
    eventually(
        "configDelivery said again",
        Duration::from_secs(60),
        Some(&manager),
        || async { (delivery().await == Some(ConfigDelivery::External)).then_some(()) },
    )
    .await;
    let s = bmc.system(&bmc.systems[0].system_id).unwrap();
    assert_eq!(
        s.power_on_requests,
        1,
        "power-on asked more than once of a slow BMC: {s:?}\n{}",
        manager.log_tail(300)
    );
    assert_eq!(s.boots.len(), 1, "{s:?}");
}

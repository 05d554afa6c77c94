//! The provider end to end on real components: a real kube-apiserver with the real CAPI core
//! managers and webhooks, the sushy-tools Redfish emulator as the BMCs, and `beskar7 manager`
//! as a process. Hosts enrol, CAPI Machines get hosts, the emulator shows our media and boot
//! override, the served config carries the machine's bootstrap data and providerID, and deleting
//! a Machine gives its host back powered off with media ejected.

mod support;

use std::time::Duration;

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_test::boot_bridge::read_bmc;
use beskar7_test::{BmcLab, ControlPlane};
use kube::api::{Api, DeleteParams, PostParams};
use support::*;

const NS: &str = "default";

async fn host_state(client: &kube::Client, name: &str) -> Option<HostState> {
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .ok()?
        .status?
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_get_hosts_booted_with_their_config_and_give_them_back() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    let lab = BmcLab::start(3).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let iso = build_test_iso(work.path(), "/boot/grub/grub.cfg").unwrap();
    let image_url = lab.add_image("kairos.iso", &iso).unwrap();

    let manager = start_manager(&cp, &[]);
    let hosts = enroll_lab(&client, NS, &lab, &[("role", "worker")]).await;

    // Enrolment: every host inventoried and Available.
    for h in &hosts {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(90),
            Some(&manager),
            || async { (host_state(&client, h).await == Some(HostState::Available)).then_some(()) },
        )
        .await;
    }
    let enrolled = Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get(&hosts[0])
        .await
        .unwrap();
    let st = enrolled.status.unwrap();
    let hw = st.hardware_details.expect("hardware details");
    assert_eq!(
        hw.system_uuid.as_deref().map(str::to_lowercase),
        Some(lab.systems[0].system_id.to_lowercase())
    );
    assert!(
        hw.nics
            .iter()
            .any(|n| n.mac.eq_ignore_ascii_case(&lab.systems[0].mac)),
        "{:?}",
        hw.nics
    );
    assert!(
        st.bmc.as_ref().is_some_and(|b| b
            .virtual_media_slots
            .iter()
            .any(|s| s.role.as_deref() == Some("boot"))),
        "{:?}",
        st.bmc
    );

    // A cluster as a user writes it.
    create_cluster(&client, NS, "lab").await;

    // Machine 1: CAPI bootstrap data rendered for Kairos onto a config volume.
    let bootstrap_marker = "beskar7-e2e-bootstrap-marker";
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m1-bootstrap"},
        "stringData": {"value": format!("#cloud-config\nruncmd:\n  - echo {bootstrap_marker}\n"), "format": "cloud-config"},
    })).unwrap()).await.unwrap();
    for (name, mode, extra) in [
        ("m1", "BootstrapData", serde_json::json!({})),
        (
            "m2",
            "RemoteConfig",
            serde_json::json!({"configURL": "https://config.example.com/m2.yaml"}),
        ),
    ] {
        let mut spec = serde_json::json!({"osFamily": "kairos", "imageURL": image_url, "provisioningMode": mode, "hostSelector": {"matchLabels": {"role": "worker"}}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        create_machine(&client, NS, "lab", name, spec, "m1-bootstrap").await;
    }

    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    let mut claimed = Vec::new();
    for name in ["m1", "m2"] {
        let m = eventually(
            &format!("{name} provisioned"),
            Duration::from_secs(180),
            Some(&manager),
            || async {
                let m = machines.get(name).await.ok()?;
                m.status
                    .as_ref()?
                    .initialization
                    .as_ref()?
                    .provisioned
                    .filter(|p| *p)?;
                Some(m)
            },
        )
        .await;
        let host = m
            .status
            .as_ref()
            .unwrap()
            .host_ref
            .as_ref()
            .unwrap()
            .name
            .clone();
        assert_eq!(
            m.spec.provider_id.as_deref(),
            Some(format!("beskar7://{NS}/{host}").as_str())
        );
        assert_eq!(
            host_state(&client, &host).await,
            Some(HostState::Provisioned)
        );
        claimed.push(host);
    }
    assert_ne!(claimed[0], claimed[1], "two machines on one host");

    // CAPI core saw the contract: the Machine has our providerID and infrastructure provisioned.
    let capi_machines = dynamic_api(&client, NS, "cluster.x-k8s.io", "v1beta2", "Machine");
    let cm = eventually(
        "CAPI Machine m1 has providerID",
        Duration::from_secs(60),
        Some(&manager),
        || async {
            let m = capi_machines.get("m1").await.ok()?;
            m.data["spec"]["providerID"].is_string().then_some(m)
        },
    )
    .await;
    assert_eq!(
        cm.data["spec"]["providerID"].as_str(),
        Some(format!("beskar7://{NS}/{}", claimed[0]).as_str())
    );

    // The BMC of machine 1: our boot ISO and config volume inserted, one-time boot to CD, power On.
    let index = |host: &str| hosts.iter().position(|h| h == host).unwrap();
    let s1 = &lab.systems[index(&claimed[0])];
    let view = read_bmc(s1, &lab.ca_pem).await.unwrap();
    assert_eq!(view.power.as_deref(), Some("On"));
    // sushy-tools stores the target but always reports `Continuous`; that we PATCH `Once` is
    // checked on the wire by the redfish crate's request-shape tests.
    assert_eq!(view.boot_target.as_deref(), Some("Cd"));
    let slots = &view.slots;
    let images: Vec<&str> = view.inserted().filter_map(|s| s.image.as_deref()).collect();
    let boot_url = images
        .iter()
        .find(|i| i.ends_with("/boot.iso"))
        .unwrap_or_else(|| panic!("no boot.iso inserted: {slots:?}"));
    assert!(boot_url.starts_with(&manager.artifacts), "{boot_url}");
    let config_url = images
        .iter()
        .find(|i| i.ends_with("/config.iso") || i.ends_with("/config.img"))
        .unwrap_or_else(|| panic!("no config volume inserted: {slots:?}"));

    // The config volume, as the OS reads it: label cidata, user-data with the bootstrap data, meta-data with the providerID.
    let volume = reqwest::get(*config_url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let vol_path = work.path().join("config-volume");
    std::fs::write(&vol_path, &volume).unwrap();
    let blkid = std::process::Command::new("blkid")
        .args(["-o", "value", "-s", "LABEL"])
        .arg(&vol_path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&blkid.stdout).trim().to_lowercase(),
        "cidata"
    );
    let (user_data, meta_data) = if config_url.ends_with(".iso") {
        (
            iso_extract(&vol_path, "/user-data", &work.path().join("ud")).unwrap(),
            iso_extract(&vol_path, "/meta-data", &work.path().join("md")).unwrap(),
        )
    } else {
        (
            fat_extract(&vol_path, "user-data").unwrap(),
            fat_extract(&vol_path, "meta-data").unwrap(),
        )
    };
    let user_data = String::from_utf8(user_data).unwrap();
    let meta_data = String::from_utf8(meta_data).unwrap();
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains(bootstrap_marker), "{user_data}");
    assert!(
        meta_data.contains(&format!("provider-id: beskar7://{NS}/{}", claimed[0])),
        "{meta_data}"
    );
    assert!(meta_data.contains("local-hostname: m1"), "{meta_data}");

    // Machine 2 (RemoteConfig): the served ISO's GRUB config carries Kairos' config_url argument.
    let s2 = &lab.systems[index(&claimed[1])];
    let view2 = read_bmc(s2, &lab.ca_pem).await.unwrap();
    let boot2 = view2
        .inserted()
        .filter_map(|s| s.image.clone())
        .find(|i| i.ends_with("/boot.iso"))
        .expect("m2 boot ISO");
    let patched = reqwest::get(&boot2).await.unwrap().bytes().await.unwrap();
    let patched_path = work.path().join("patched.iso");
    std::fs::write(&patched_path, &patched).unwrap();
    let grub = String::from_utf8(
        iso_extract(
            &patched_path,
            "/boot/grub/grub.cfg",
            &work.path().join("grub.cfg"),
        )
        .unwrap(),
    )
    .unwrap();
    let kernel_line = grub
        .lines()
        .find(|l| l.trim_start().starts_with("linux"))
        .unwrap();
    assert!(
        kernel_line.contains("config_url=https://config.example.com/m2.yaml"),
        "{grub}"
    );
    assert!(
        kernel_line.contains("console=ttyS0"),
        "original arguments kept: {grub}"
    );
    assert!(
        kernel_line.contains(&format!(
            "beskar7.provider_id=beskar7://{NS}/{}",
            claimed[1]
        )),
        "no config volume, so the providerID rides on the command line: {grub}"
    );

    // Deleting a CAPI Machine gives its host back: powered off, media ejected, Available.
    capi_machines
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "m1's host Available again",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            (host_state(&client, &claimed[0]).await == Some(HostState::Available)).then_some(())
        },
    )
    .await;
    let view = read_bmc(s1, &lab.ca_pem).await.unwrap();
    assert_eq!(view.power.as_deref(), Some("Off"));
    assert_eq!(view.inserted().count(), 0, "media left inserted: {view:?}");
    let released = Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get(&claimed[0])
        .await
        .unwrap();
    assert!(released.spec.consumer_ref.is_none() && released.spec.provisioning.is_none());
    eventually(
        "Beskar7Machine m1 gone",
        Duration::from_secs(60),
        Some(&manager),
        || async { machines.get_opt("m1").await.ok()?.is_none().then_some(()) },
    )
    .await;
    // Its artifact URLs are revoked.
    assert_eq!(reqwest::get(*config_url).await.unwrap().status(), 404);
}

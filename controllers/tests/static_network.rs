//! Static addressing with the real in-cluster IPAM provider (built from its Go module) and the
//! emulator: pool addresses claimed per machine (IPAddressClaims owned by the Beskar7Machine),
//! matched to the host by MAC, given to the OS on the kernel command line of the boot ISO the
//! BMC was handed (`ip=`, `ifname=`, `nameserver=`) and in the OS's own configuration (the config
//! volume, or the served document), reported in `status.addresses`, and released on delete. Bad
//! input stops before any host is touched: a missing pool, an exhausted one, a MAC the host
//! lacks, an address that does not parse.

mod support;

use std::path::Path;
use std::time::Duration;

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_test::boot_bridge::read_bmc;
use beskar7_test::fake_bmc::stand_in;
use beskar7_test::{BmcLab, ControlPlane};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use support::*;

const NS: &str = "default";
const IPAM: &str = "ipam.cluster.x-k8s.io";

async fn secret(client: &kube::Client, name: &str, value: &str, format: &str) {
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "stringData": {"value": value, "format": format},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
}

async fn machine(client: &kube::Client, name: &str, spec: serde_json::Value) {
    stand_in::machine_with(
        client,
        NS,
        "c1",
        name,
        serde_json::json!({}),
        spec,
        serde_json::json!({}),
    )
    .await
    .unwrap();
}

fn pool(name: &str) -> serde_json::Value {
    serde_json::json!([{"apiGroup": IPAM, "kind": "InClusterIPPool", "name": name}])
}

/// The Ready condition of a Beskar7Machine: (reason, message).
async fn ready(machines: &Api<Beskar7Machine>, name: &str) -> Option<(String, String)> {
    let m = machines.get(name).await.ok()?;
    let c = m
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.reason, c.message))
}

/// The host holding `machine`'s claim.
async fn host_of(hosts: &Api<PhysicalHost>, machine: &str) -> Option<PhysicalHost> {
    hosts
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
}

/// The kernel command line of the boot ISO the BMC holds, and the other inserted images.
async fn served(lab: &BmcLab, system: usize, work: &Path) -> (String, Vec<String>) {
    let view = read_bmc(&lab.systems[system], &lab.ca_pem).await.unwrap();
    let images: Vec<String> = view.inserted().filter_map(|s| s.image.clone()).collect();
    let boot = images
        .iter()
        .find(|i| i.ends_with("/boot.iso"))
        .expect("boot ISO inserted");
    let iso = work.join(format!("boot-{system}.iso"));
    std::fs::write(
        &iso,
        reqwest::get(boot).await.unwrap().bytes().await.unwrap(),
    )
    .unwrap();
    let cfg = beskar7_test::fixtures::iso_extract(
        &iso,
        "/boot/grub2/grub.cfg",
        &work.join(format!("grub-{system}.cfg")),
    )
    .unwrap();
    let cfg = String::from_utf8(cfg).unwrap();
    let linux = cfg
        .lines()
        .find(|l| l.trim_start().starts_with("linux"))
        .unwrap()
        .to_string();
    (linux, images)
}

/// `file` of the config volume among the inserted `images`, read with xorriso or mtools.
async fn volume_file(images: &[String], file: &str, work: &Path) -> Vec<u8> {
    let url = images
        .iter()
        .find(|i| !i.ends_with("/boot.iso"))
        .expect("config volume inserted");
    let volume = work.join(file.replace('/', "-") + "-volume");
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    std::fs::write(&volume, bytes).unwrap();
    if url.ends_with(".iso") {
        beskar7_test::fixtures::iso_extract(
            &volume,
            &format!("/{file}"),
            &volume.with_extension("out"),
        )
        .unwrap()
    } else {
        beskar7_test::fixtures::fat_extract(&volume, file).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_static_addresses_reach_the_os_and_bad_input_stops_first() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_ipam()
        .start()
        .await
        .expect("control plane with IPAM");
    let lab = BmcLab::start(3).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let image_url = lab
        .add_image(
            "os.iso",
            &build_test_iso(work.path(), "/boot/grub2/grub.cfg").unwrap(),
        )
        .unwrap();
    let manager = start_manager(&cp, &[]);
    let hosts_names = enroll_lab(&client, NS, &lab, &[]).await;
    let hosts = Api::<PhysicalHost>::namespaced(client.clone(), NS);
    for h in &hosts_names {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(120),
            Some(&manager),
            || async {
                (hosts.get(h).await.ok()?.status?.state == Some(HostState::Available)).then_some(())
            },
        )
        .await;
    }
    stand_in::cluster(&client, NS, "c1").await.unwrap();
    for (name, range, gateway) in [
        ("pool-a", "10.10.0.10-10.10.0.11", "10.10.0.1"),
        ("pool-one", "10.20.0.5", "10.20.0.1"),
    ] {
        create_dynamic(
            &client,
            NS,
            IPAM,
            "v1alpha2",
            "InClusterIPPool",
            serde_json::json!({"metadata": {"name": name, "namespace": NS},
                "spec": {"addresses": [range], "prefix": 24, "gateway": gateway}}),
        )
        .await;
    }
    let machines = Api::<Beskar7Machine>::namespaced(client.clone(), NS);
    let claims = dynamic_api(&client, NS, IPAM, "v1beta2", "IPAddressClaim");
    let mac0 = lab.systems[0].mac.to_lowercase();

    // Kairos on system 0 by MAC, its address from pool-a; Talos on system 1 by interface name,
    // written addresses; Leap Micro (Ignition) on the remaining host's first NIC, from pool-one.
    secret(
        &client,
        "kairos-bootstrap",
        "#cloud-config\nhostname: k\n",
        "cloud-config",
    )
    .await;
    secret(
        &client,
        "talos-bootstrap",
        "version: v1alpha1\nmachine:\n  type: worker\n",
        "cloud-config",
    )
    .await;
    secret(
        &client,
        "leap-bootstrap",
        r#"{"ignition": {"version": "3.4.0"}}"#,
        "ignition",
    )
    .await;
    let base = |os: &str| serde_json::json!({"osFamily": os, "imageURL": image_url, "provisioningMode": "BootstrapData"});
    let mut kairos = base("kairos");
    kairos["network"] = serde_json::json!({"interfaces": [{"macAddress": mac0.to_uppercase(), "addressesFromPools": pool("pool-a")}], "nameservers": ["10.10.0.53"]});
    machine(&client, "kairos", kairos).await;
    eventually(
        "kairos claimed",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            let h = host_of(&hosts, "kairos").await;
            if h.is_none() {
                eprintln!("kairos: {:?}", ready(&machines, "kairos").await);
            }
            h
        },
    )
    .await;
    let mut talos = base("talos");
    talos["network"] = serde_json::json!({"interfaces": [{"name": "eth0", "addresses": ["192.168.50.7/24"], "gateway": "192.168.50.1"}]});
    machine(&client, "talos", talos).await;

    for name in ["kairos", "talos"] {
        eventually(
            &format!("{name} provisioned"),
            Duration::from_secs(180),
            Some(&manager),
            || async {
                let m = machines.get(name).await.ok()?;
                (m.status?.phase.as_deref() == Some("Provisioned")).then_some(())
            },
        )
        .await;
    }
    // The claim: owned by the Beskar7Machine, answered by the IPAM provider.
    let claim = claims
        .get("kairos-net0-0")
        .await
        .expect("IPAddressClaim created");
    let owner = claim.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owner.iter().any(|o| o.kind == "Beskar7Machine"
            && o.name == "kairos"
            && o.controller == Some(true)),
        "{owner:?}"
    );
    assert_eq!(claim.data["spec"]["poolRef"]["name"], "pool-a");
    let h0 = host_of(&hosts, "kairos").await.unwrap();
    assert_eq!(
        h0.name_any(),
        hosts_names[0],
        "the machine's MAC is system 0's"
    );
    let net = h0
        .spec
        .provisioning
        .as_ref()
        .unwrap()
        .network
        .clone()
        .unwrap();
    assert_eq!(net.interfaces[0].addresses, ["10.10.0.10/24"]);
    assert_eq!(net.interfaces[0].gateway.as_deref(), Some("10.10.0.1"));
    let km = machines.get("kairos").await.unwrap();
    let addrs = km.status.unwrap().addresses;
    assert!(
        addrs
            .iter()
            .any(|a| a.address == "10.10.0.10" && format!("{:?}", a.type_) == "InternalIP"),
        "{addrs:?}"
    );

    // What the BMC was given: ip= on the kernel command line, the networkd unit in the volume.
    let (cmdline, images) = served(&lab, 0, work.path()).await;
    for arg in [
        format!("ifname=b7net0:{mac0}"),
        "ip=10.10.0.10::10.10.0.1:255.255.255.0:kairos:b7net0:none".to_string(),
        "nameserver=10.10.0.53".to_string(),
        "rd.neednet=1".to_string(),
    ] {
        assert!(
            cmdline.split_whitespace().any(|a| a == arg),
            "{arg} missing from {cmdline}"
        );
    }
    let user_data = volume_file(&images, "user-data", work.path()).await;
    let user_data = String::from_utf8(user_data).unwrap();
    assert!(
        user_data.contains("/etc/systemd/network/10-beskar7-0.network")
            && user_data.contains("Address=10.10.0.10/24"),
        "{user_data}"
    );

    let h1 = host_of(&hosts, "talos").await.unwrap();
    let system = hosts_names
        .iter()
        .position(|n| *n == h1.name_any())
        .unwrap();
    let (cmdline, _) = served(&lab, system, work.path()).await;
    assert!(
        cmdline.contains("ip=192.168.50.7::192.168.50.1:255.255.255.0:talos:eth0:off"),
        "{cmdline}"
    );

    // Bad input: nothing is claimed, each says why.
    let mut missing = base("kairos");
    missing["network"] =
        serde_json::json!({"interfaces": [{"addressesFromPools": pool("no-such-pool")}]});
    machine(&client, "missing-pool", missing).await;
    let mut wrong_mac = base("kairos");
    wrong_mac["network"] = serde_json::json!({"interfaces": [{"macAddress": "52:54:00:de:ad:00", "addresses": ["10.0.0.2/24"]}]});
    machine(&client, "wrong-mac", wrong_mac).await;
    let mut bad_addr = base("kairos");
    bad_addr["network"] = serde_json::json!({"interfaces": [{"addresses": ["10.0.0.300/24"]}]});
    machine(&client, "bad-address", bad_addr).await;
    for (name, reason, says) in [
        ("missing-pool", "IPPoolNotFound", "no-such-pool"),
        ("wrong-mac", "InterfaceNotOnHost", "52:54:00:de:ad:00"),
        ("bad-address", "InvalidAddress", "10.0.0.300"),
    ] {
        let (r, message) = eventually(
            &format!("{name}: {reason}"),
            Duration::from_secs(60),
            Some(&manager),
            || async { ready(&machines, name).await.filter(|(r, _)| r == reason) },
        )
        .await;
        assert!(message.contains(says), "{name}: {r}: {message}");
        assert!(
            host_of(&hosts, name).await.is_none(),
            "{name} claimed a host"
        );
    }
    assert!(
        claims
            .get_opt("missing-pool-net0-0")
            .await
            .unwrap()
            .is_none(),
        "a claim on a missing pool"
    );

    // pool-one has one address: the first machine takes it, the second waits, exhausted.
    machine(&client, "leap", {
        let mut l = base("LeapMicro");
        l["network"] =
            serde_json::json!({"interfaces": [{"addressesFromPools": pool("pool-one")}]});
        l
    })
    .await;
    eventually(
        "leap provisioned",
        Duration::from_secs(180),
        Some(&manager),
        || async {
            (machines.get("leap").await.ok()?.status?.phase.as_deref() == Some("Provisioned"))
                .then_some(())
        },
    )
    .await;
    let leap_host = host_of(&hosts, "leap").await.unwrap();
    let system = hosts_names
        .iter()
        .position(|n| *n == leap_host.name_any())
        .unwrap();
    let (cmdline, images) = served(&lab, system, work.path()).await;
    let first_mac = lab.systems[system].mac.to_lowercase();
    assert!(
        cmdline.contains(&format!("ifname=b7net0:{first_mac}"))
            && cmdline.contains("ip=10.20.0.5::10.20.0.1:255.255.255.0:leap:b7net0:none"),
        "{cmdline}"
    );
    let ign = volume_file(&images, "ignition/config.ign", work.path()).await;
    let ign: serde_json::Value = serde_json::from_slice(&ign).unwrap();
    let file = &ign["storage"]["files"][0];
    assert_eq!(
        file["path"],
        "/etc/NetworkManager/system-connections/beskar7-0.nmconnection"
    );
    assert_eq!(file["mode"], 0o600);

    machine(&client, "exhausted", {
        let mut l = base("LeapMicro");
        l["network"] =
            serde_json::json!({"interfaces": [{"addressesFromPools": pool("pool-one")}]});
        l
    })
    .await;
    let (_, message) = eventually(
        "exhausted: IPPoolExhausted",
        Duration::from_secs(90),
        Some(&manager),
        || async {
            ready(&machines, "exhausted")
                .await
                .filter(|(r, _)| r == "IPPoolExhausted")
        },
    )
    .await;
    assert!(message.contains("pool-one"), "{message}");

    // Delete: the claim goes, the address is free again (the exhausted machine gets it).
    machines
        .delete("leap", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "leap's claim released",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            claims
                .get_opt("leap-net0-0")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    eventually(
        "exhausted gets the released address",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            let c: DynamicObject = claims.get_opt("exhausted-net0-0").await.ok()??;
            c.data["status"]["addressRef"]["name"]
                .is_string()
                .then_some(())
        },
    )
    .await;
}

//! Proof by booting: what the provider hands a BMC boots in a real virtual machine, and the
//! guest sees the kernel arguments and the config volume its OS expects.
//!
//! The boot images have the layouts the OSes really ship (`beskar7_test::os_images`: Talos's
//! hybrid with systemd-boot and a UKI on UEFI and GRUB on BIOS, Kairos and Leap Micro GRUB
//! layouts with their EFI chains and `$linux` idioms, Flatcar's ISOLINUX-only ISO), built from
//! Debian's bootloaders around Debian's kernel and a busybox initrd that prints `/proc/cmdline`
//! and the files of the volume with the OS's label (`beskar7_test::vm`).
//!
//! `provider_media_boot_in_vms` drives the provider end to end (real kube-apiserver with the
//! CAPI managers, the sushy-tools emulator as BMCs, `beskar7 manager` as a process): one machine
//! per OS, delivery recipe and firmware mode the OS supports (UEFI through OVMF, Legacy through
//! SeaBIOS: `bootMode`), then boots each machine through the BMC-to-VM bridge
//! (`beskar7_test::boot_bridge`): the images the emulator holds are downloaded from their
//! inserted URLs (our artifact server) and booted as the slots and the boot override say. Two
//! more machines: one whose BMC refuses the second virtual media device (a proxy answers 400 to
//! that insert), which must provision with its configuration served by URL; one with Talos's
//! Secure Boot ISO, which must end with a `SecureBootImage` condition and nothing inserted.
//!
//! The emulator's fake driver offers two slots per system, `Cd` and `Floppy` (USBStick), so
//! config volumes go on the Floppy slot as FAT and the bridge attaches them as USB sticks. The
//! config volume as a second CD, and the boot image attached as a USB disk (a BMC's virtual USB
//! stick boots the GPT or MBR, not El Torito), are proven with the same `beskar7-boot` code
//! through `beskar7 media` (the `cli_*` tests).
//!
//! Every machine of the grid has a static network (`spec.network`, one address on the host's
//! first NIC, a gateway and a nameserver): the guest's command line must carry the initrd's form
//! (`ifname=`, `ip=`, `nameserver=`, `rd.neednet=1`; the kernel's `ip=` for Talos) and the
//! BootstrapData configuration the OS's own form (networkd unit, NetworkManager keyfile, Talos
//! `machine.network`).
//!
//! Each boot's wall time is printed (`--nocapture` shows it).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use beskar7_api::{Beskar7Machine, ConfigDelivery, HostState, PhysicalHost};
use beskar7_test::bmc_proxy::{Fault, FaultRule};
use beskar7_test::boot_bridge::{self, BridgedBoot};
use beskar7_test::fixtures::{self, LAB_CA_SECRET};
use beskar7_test::os_images::TALOS_CMDLINE_EXTRA;
use beskar7_test::vm::{
    self, BootDevice, BootKit, BootOutput, Firmware, IsoLayout, Medium, VmSpec,
};
use beskar7_test::{BmcLab, BmcProxy, ControlPlane, ManagerProcess as Manager};
use kube::Client;
use kube::api::{Api, PostParams};
use support::{create_cluster, create_machine};

const NS: &str = "default";
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

fn kit() -> BootKit {
    BootKit::get().expect(
        "boot-proof kit (kernel, busybox initrd, test ISOs): make debs installs what it needs",
    )
}

fn assert_arg(out: &BootOutput, arg: &str, case: &str) {
    assert!(
        out.kernel_args().iter().any(|a| a == arg),
        "{case}: the kernel command line lacks {arg:?}: {:?}\n{}",
        out.cmdline(),
        out.tail(40)
    );
}

fn assert_base_args(out: &BootOutput, case: &str) {
    for a in vm::BASE_KERNEL_ARGS.split_whitespace() {
        assert_arg(out, a, case);
    }
}

fn report(case: &str, out: &BootOutput) {
    eprintln!(
        "boot-proof {case}: guest powered off after {:.1}s ({}, {:?})",
        out.elapsed.as_secs_f64(),
        out.accel,
        out.firmware
    );
}

/// Polls `f` until it returns `Some`, or panics with `what` and the manager's log.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, manager: &Manager, mut f: F) -> T
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
            panic!(
                "timed out after {timeout:?} waiting for {what}\nmanager log:\n{}",
                manager.log_tail(60)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// End to end through the provider and the emulator.

/// One machine of the end-to-end test.
struct Case {
    machine: &'static str,
    os: &'static str,
    mode: &'static str,
    /// `UEFI` or `Legacy`.
    boot_mode: &'static str,
    config_url: Option<&'static str>,
    /// Bootstrap Secret (value, format).
    bootstrap: (String, &'static str),
    /// The host's BMC refuses a second virtual media device.
    one_slot: bool,
}

const MARKER: &str = "beskar7-boot-proof-marker";
const STATIC_ADDRESS: &str = "192.0.2.10/24";
const STATIC_GATEWAY: &str = "192.0.2.1";
const STATIC_NAMESERVER: &str = "192.0.2.53";

/// The static network on the command line the guest booted with: the initrd's arguments (the
/// NIC named by the host's first MAC), the kernel's for Talos.
fn check_network_args(case: &Case, out: &BootOutput, mac: &str) {
    let m = case.machine;
    if case.os == "talos" {
        let device = format!("enx{}", mac.replace(':', ""));
        assert_arg(
            out,
            &format!("ip=192.0.2.10::192.0.2.1:255.255.255.0:{m}:{device}:off:192.0.2.53::"),
            m,
        );
        return;
    }
    for a in [
        format!("ifname=b7net0:{mac}"),
        format!("ip=192.0.2.10::192.0.2.1:255.255.255.0:{m}:b7net0:none"),
        "nameserver=192.0.2.53".to_string(),
        "rd.neednet=1".to_string(),
    ] {
        assert_arg(out, &a, m);
    }
}

fn ignition() -> String {
    format!(
        r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{{"path":"/etc/{MARKER}","contents":{{"source":"data:,{MARKER}"}}}}]}}}}"#
    )
}

fn cloud_config() -> String {
    format!("#cloud-config\nruncmd:\n  - echo {MARKER}\n")
}

fn talos_config() -> String {
    format!(
        "version: v1alpha1\nmachine:\n  type: worker\n  token: {MARKER}\ncluster:\n  id: boot-proof\n"
    )
}

fn cases() -> Vec<Case> {
    let script = format!("#!/bin/sh\n# combustion: network\necho {MARKER}\n");
    let case = |machine, os, mode, boot_mode, bootstrap: (String, &'static str)| Case {
        machine,
        os,
        mode,
        boot_mode,
        config_url: None,
        bootstrap,
        one_slot: false,
    };
    let rc = |machine, os, url, bootstrap| Case {
        config_url: Some(url),
        ..case(machine, os, "RemoteConfig", "UEFI", bootstrap)
    };
    vec![
        case(
            "kairos-bd",
            "kairos",
            "BootstrapData",
            "UEFI",
            (cloud_config(), "cloud-config"),
        ),
        case(
            "kairos-bd-bios",
            "kairos",
            "BootstrapData",
            "Legacy",
            (cloud_config(), "cloud-config"),
        ),
        case(
            "talos-bd",
            "talos",
            "BootstrapData",
            "UEFI",
            (talos_config(), "cloud-config"),
        ),
        case(
            "talos-bd-bios",
            "talos",
            "BootstrapData",
            "Legacy",
            (talos_config(), "cloud-config"),
        ),
        case(
            "leap-bd",
            "LeapMicro",
            "BootstrapData",
            "UEFI",
            (ignition(), "ignition"),
        ),
        case(
            "leap-script-bd-bios",
            "LeapMicro",
            "BootstrapData",
            "Legacy",
            (script, "cloud-config"),
        ),
        case(
            "flatcar-bd",
            "flatcar",
            "BootstrapData",
            "UEFI",
            (ignition(), "ignition"),
        ),
        case(
            "flatcar-bd-bios",
            "flatcar",
            "BootstrapData",
            "Legacy",
            (ignition(), "ignition"),
        ),
        rc(
            "kairos-rc",
            "kairos",
            "https://config.example.com/kairos.yaml",
            (cloud_config(), "cloud-config"),
        ),
        rc(
            "talos-rc",
            "talos",
            "https://config.example.com/talos.yaml",
            (talos_config(), "cloud-config"),
        ),
        rc(
            "leap-rc",
            "LeapMicro",
            "https://config.example.com/combustion",
            (cloud_config(), "cloud-config"),
        ),
        rc(
            "flatcar-rc",
            "flatcar",
            "https://config.example.com/flatcar.ign",
            (ignition(), "ignition"),
        ),
        Case {
            one_slot: true,
            ..case(
                "talos-one-slot",
                "talos",
                "BootstrapData",
                "UEFI",
                (talos_config(), "cloud-config"),
            )
        },
    ]
}

fn layout_of(os: &str) -> IsoLayout {
    match os {
        "kairos" => IsoLayout::Kairos,
        "LeapMicro" => IsoLayout::LeapMicro,
        "talos" => IsoLayout::TalosHybrid,
        _ => IsoLayout::Flatcar,
    }
}

/// How the case's configuration reaches the OS.
fn delivery(case: &Case) -> ConfigDelivery {
    match (case.mode, case.os) {
        ("RemoteConfig", _) => ConfigDelivery::External,
        (_, "flatcar") => ConfigDelivery::Url,
        _ if case.one_slot => ConfigDelivery::Url,
        _ => ConfigDelivery::Volume,
    }
}

/// The FAT config volume on the USB stick, checked against what the OS reads.
fn check_volume(case: &Case, b: &BridgedBoot, provider_id: &str) {
    let out = &b.output;
    // Leap Micro: Ignition on a volume labelled `ignition`, a Combustion script on `combustion`.
    let label = match (case.os, case.bootstrap.1) {
        ("kairos", _) => "cidata",
        ("talos", _) => "metal-iso",
        (_, "ignition") => "ignition",
        _ => "combustion",
    };
    assert_eq!(
        b.config_images.len(),
        1,
        "{}: one config volume inserted: {:?}",
        case.machine,
        b.view
    );
    assert!(
        b.config_images[0]
            .media_types
            .iter()
            .any(|t| t == "USBStick" || t == "Floppy"),
        "{}: config volume not in the Floppy/USBStick slot: {:?}",
        case.machine,
        b.view
    );
    let v = out.volume(label).unwrap_or_else(|| {
        panic!(
            "{}: the guest found no volume labelled {label}:\n{}",
            case.machine,
            out.tail(40)
        )
    });
    assert_eq!(v.fs_type, "vfat", "{}: {v:?}", case.machine);
    assert!(
        v.device.starts_with("/dev/sd"),
        "{}: a USB stick is a SCSI disk in the guest: {v:?}",
        case.machine
    );
    let meta = v
        .files
        .get("meta-data")
        .unwrap_or_else(|| panic!("{}: no meta-data: {v:?}", case.machine));
    assert!(
        meta.contains(&format!("provider-id: {provider_id}")),
        "{}: {meta}",
        case.machine
    );
    assert!(
        meta.contains(&format!("local-hostname: {}", case.machine)),
        "{}: {meta}",
        case.machine
    );
    match case.os {
        "kairos" => {
            let ud = &v.files["user-data"];
            assert!(ud.starts_with("#cloud-config"), "{ud}");
            assert!(
                ud.contains(MARKER) && ud.contains("auto: true"),
                "Kairos user-data with the bootstrap data and install.auto: {ud}"
            );
            assert!(
                ud.contains("/etc/systemd/network/10-beskar7-0.network")
                    && ud.contains("Address=192.0.2.10/24"),
                "Kairos user-data with the networkd unit in stages.initramfs: {ud}"
            );
        }
        "talos" => {
            let cfg = &v.files["config.yaml"];
            assert!(cfg.contains(&format!("token: {MARKER}")), "{v:?}");
            assert!(
                cfg.contains("hardwareAddr:") && cfg.contains("- 192.0.2.10/24"),
                "Talos machine.network.interfaces: {cfg}"
            );
        }
        _ if label == "combustion" => {
            let script = &v.files["combustion/script"];
            assert!(
                script.starts_with("#!") && script.contains(MARKER),
                "{script}"
            );
            assert!(
                script.contains("address1=192.0.2.10/24,192.0.2.1"),
                "Combustion script writing the NetworkManager keyfile: {script}"
            );
        }
        _ => {
            let ign = &v.files["ignition/config.ign"];
            let j: serde_json::Value = serde_json::from_str(ign)
                .unwrap_or_else(|e| panic!("config.ign is JSON: {e}: {ign}"));
            assert_eq!(j["ignition"]["version"], "3.4.0");
            assert!(ign.contains(MARKER));
            // Appended to the bootstrap data's own files.
            let keyfile = j["storage"]["files"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| {
                    f["path"] == "/etc/NetworkManager/system-connections/beskar7-0.nmconnection"
                });
            assert_eq!(
                keyfile.map(|f| f["mode"].clone()),
                Some(0o600.into()),
                "{ign}"
            );
        }
    }
}

/// Which bootloader started the kernel, from what it leaves on the command line: GRUB and
/// ISOLINUX add `BOOT_IMAGE=`; systemd-boot starting a UKI adds nothing; Beskar7's UEFI loader
/// passes `initrd=\path`.
fn check_loader(case: &Case, out: &BootOutput, firmware: Firmware) {
    let m = case.machine;
    let args = out.kernel_args();
    let boot_image = args.iter().any(|a| a.starts_with("BOOT_IMAGE="));
    match (case.os, firmware) {
        ("talos", Firmware::Uefi) => {
            assert!(
                !boot_image,
                "{m}: booted by systemd-boot, not GRUB: {args:?}"
            );
            // The loader entry repeats the UKI's own arguments.
            for a in TALOS_CMDLINE_EXTRA.split_whitespace() {
                assert_arg(out, a, m);
            }
        }
        ("flatcar", Firmware::Uefi) => {
            assert_arg(out, "initrd=\\flatcar\\cpio.gz", m);
            assert!(!boot_image, "{m}: {args:?}");
        }
        _ => assert!(boot_image, "{m}: GRUB/ISOLINUX names the kernel: {args:?}"),
    }
}

/// The served config document named on the command line by `prefix`, fetched as the OS would.
async fn served_config(out: &BootOutput, prefix: &str, artifacts: &str, m: &str) -> String {
    let url = out
        .kernel_args()
        .into_iter()
        .find_map(|a| a.strip_prefix(prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("{m}: no {prefix}: {:?}", out.cmdline()));
    assert!(url.starts_with(artifacts), "{m}: {url}");
    reqwest::get(&url).await.unwrap().text().await.unwrap()
}

async fn check_case(case: &Case, b: &BridgedBoot, provider_id: &str, artifacts: &str, mac: &str) {
    let out = &b.output;
    let m = case.machine;
    check_network_args(case, out, mac);
    assert!(
        out.insmod_failures().is_empty(),
        "{m}: modules failed to load: {:?}",
        out.insmod_failures()
    );
    assert_base_args(out, m);
    assert!(
        b.boot_image.url.starts_with(artifacts),
        "{m}: boot image not from our artifact server: {}",
        b.boot_image.url
    );
    let firmware = if case.boot_mode == "Legacy" {
        Firmware::Legacy
    } else {
        Firmware::Uefi
    };
    assert_eq!(b.firmware, firmware, "{m}: {:?}", b.view);
    check_loader(case, out, firmware);
    match (case.os, case.mode) {
        (_, "RemoteConfig") => {
            let url = case.config_url.unwrap();
            let args: Vec<String> = match case.os {
                "kairos" => vec![format!("config_url={url}")],
                "talos" => vec![format!("talos.config={url}")],
                "LeapMicro" => vec![
                    format!("combustion.url={url}"),
                    beskar7_boot::os::LEAP_MICRO_PASS_BOOT_PARAMS.into(),
                ],
                _ => vec![
                    format!("ignition.config.url={url}"),
                    "flatcar.first_boot=1".into(),
                ],
            };
            for a in &args {
                assert_arg(out, a, m);
            }
            assert!(
                b.config_images.is_empty() && out.volumes().is_empty(),
                "{m}: no config volume: {:?}",
                b.view
            );
        }
        ("flatcar", _) => {
            // Flatcar reads no volume: the rendered Ignition is served and the URL baked in.
            let served = served_config(out, "ignition.config.url=", artifacts, m).await;
            assert!(
                served.contains(MARKER),
                "{m}: the URL on the kernel command line serves the bootstrap Ignition: {served}"
            );
            assert!(
                served.contains("/etc/systemd/network/10-beskar7-0.network"),
                "{m}: the served Ignition writes the networkd unit: {served}"
            );
            assert_arg(out, "flatcar.first_boot=1", m);
            // No volume to carry meta-data: the providerID rides on the command line.
            assert_arg(out, &format!("beskar7.provider_id={provider_id}"), m);
            assert!(b.config_images.is_empty(), "{m}: {:?}", b.view);
        }
        ("talos", _) if case.one_slot => {
            let served = served_config(out, "talos.config=", artifacts, m).await;
            assert!(served.contains(MARKER), "{m}: {served}");
            assert!(
                b.config_images.is_empty() && out.volumes().is_empty(),
                "{m}: after the refusal nothing is in the second slot: {:?}",
                b.view
            );
        }
        _ => {
            if case.os == "talos" {
                assert_arg(out, "talos.config=metal-iso", m);
            }
            check_volume(case, b, provider_id);
        }
    }
}

async fn create_secret(client: &Client, name: &str, value: &str, format: &str) {
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

async fn host_of(machines: &Api<Beskar7Machine>, machine: &str) -> Option<String> {
    let m = machines.get(machine).await.ok()?;
    Some(m.status?.host_ref?.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_media_boot_in_vms() {
    beskar7_test::install_crypto_provider();
    let kit = tokio::task::spawn_blocking(kit).await.unwrap();
    let cases = cases();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    // One system per case, and one for the Secure Boot image.
    let lab = BmcLab::start(cases.len() + 1).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();

    let mut images = std::collections::HashMap::new();
    for layout in IsoLayout::ALL {
        let bytes = std::fs::read(kit.iso(layout)).unwrap();
        images.insert(layout, lab.add_image(layout.file_name(), &bytes).unwrap());
    }
    // The manager's webhooks are off (--webhook-port=0 is ManagerProcess's default).
    let manager = Manager::start(Path::new(env!("CARGO_BIN_EXE_beskar7")), &cp, &[])
        .expect("start beskar7 manager");
    // Hosts: server-NN for the ordinary cases (role boot-proof), one behind a proxy that refuses
    // the second insert (role one-slot), one for the Secure Boot image (role secure-boot).
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": LAB_CA_SECRET},
                "stringData": {"ca.crt": lab.ca_pem},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut proxy = None;
    let mut hosts = Vec::new();
    for (i, s) in lab.systems.iter().enumerate() {
        let name = format!("server-{i:02}");
        let role = if i == cases.len() {
            "secure-boot"
        } else if cases[i].one_slot {
            "one-slot"
        } else {
            "boot-proof"
        };
        if role == "one-slot" {
            let p = BmcProxy::start(&lab).await.expect("proxy");
            // The BMC takes one virtual media device at a time: inserting into the second slot
            // is refused, as iDRAC refuses it (Metal3 keeps to one device on Dell).
            p.inject(
                FaultRule::always(Fault::Status(400))
                    .method("POST")
                    .path_contains("Floppy/Actions/VirtualMedia.InsertMedia"),
            );
            fixtures::enroll_via_proxy(&client, NS, &name, s, &p, &[("role", role)])
                .await
                .unwrap();
            proxy = Some(p);
        } else {
            fixtures::enroll(
                &client,
                NS,
                &name,
                s,
                Some(LAB_CA_SECRET),
                &[("role", role)],
            )
            .await
            .unwrap();
        }
        hosts.push(name);
    }
    let host_api = Api::<PhysicalHost>::namespaced(client.clone(), NS);
    for h in &hosts {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(120),
            &manager,
            || async {
                let st = host_api.get(h).await.ok()?.status?.state;
                (st == Some(HostState::Available)).then_some(())
            },
        )
        .await;
    }

    create_cluster(&client, NS, "proof").await;
    for c in &cases {
        let secret = format!("{}-bootstrap", c.machine);
        create_secret(&client, &secret, &c.bootstrap.0, c.bootstrap.1).await;
        let role = if c.one_slot { "one-slot" } else { "boot-proof" };
        let mut spec = serde_json::json!({
            "osFamily": c.os,
            "imageURL": images[&layout_of(c.os)],
            "provisioningMode": c.mode,
            "bootMode": c.boot_mode,
            "hostSelector": {"matchLabels": {"role": role}},
        });
        if let Some(u) = c.config_url {
            spec["configURL"] = serde_json::json!(u);
        }
        spec["network"] = serde_json::json!({
            "interfaces": [{"addresses": [STATIC_ADDRESS], "gateway": STATIC_GATEWAY}],
            "nameservers": [STATIC_NAMESERVER],
        });
        create_machine(&client, NS, "proof", c.machine, spec, &secret).await;
    }
    create_secret(
        &client,
        "talos-sb-bootstrap",
        &talos_config(),
        "cloud-config",
    )
    .await;
    create_machine(
        &client,
        NS,
        "proof",
        "talos-sb",
        serde_json::json!({
            "osFamily": "talos",
            "imageURL": images[&IsoLayout::TalosSecureBoot],
            "provisioningMode": "BootstrapData",
            "hostSelector": {"matchLabels": {"role": "secure-boot"}},
        }),
        "talos-sb-bootstrap",
    )
    .await;

    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    let provision_started = Instant::now();
    let mut placed = Vec::new();
    for c in &cases {
        let m = eventually(
            &format!("{} provisioned", c.machine),
            Duration::from_secs(420),
            &manager,
            || async {
                let m = machines.get(c.machine).await.ok()?;
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
        let provider_id = m.spec.provider_id.clone().unwrap();
        assert_eq!(provider_id, format!("beskar7://{NS}/{host}"));
        let h = host_api.get(&host).await.unwrap();
        assert_eq!(
            h.status.as_ref().unwrap().config_delivery,
            Some(delivery(c)),
            "{}: status.configDelivery",
            c.machine
        );
        placed.push((host, provider_id));
    }
    eprintln!(
        "boot-proof: {} machines provisioned by the provider in {:.1}s",
        cases.len(),
        provision_started.elapsed().as_secs_f64()
    );
    // The one-slot BMC was asked for the second device and refused it; the refusal was seen.
    let p = proxy.expect("one-slot proxy");
    assert!(
        p.requests().iter().any(
            |r| r.path.contains("Floppy/Actions/VirtualMedia.InsertMedia") && r.fault.is_some()
        ),
        "the second insert was tried and refused"
    );
    let one_slot_host = host_of(&machines, "talos-one-slot").await.unwrap();
    let h = host_api.get(&one_slot_host).await.unwrap();
    let vm_cond = h
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "VirtualMediaReady")
        .cloned()
        .unwrap();
    assert_eq!(vm_cond.reason, "SecondMediaRefused", "{vm_cond:?}");

    // Secure Boot image: a condition that says what to do, and nothing inserted.
    let sb_host = hosts[cases.len()].clone();
    let cond = eventually(
        "the Secure Boot host's SecureBootImage condition",
        Duration::from_secs(180),
        &manager,
        || async {
            let h = host_api.get(&sb_host).await.ok()?;
            h.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == "SecureBootImage")
        },
    )
    .await;
    assert!(cond.message.contains("Image Factory"), "{cond:?}");
    let view = boot_bridge::read_bmc(&lab.systems[cases.len()], &lab.ca_pem)
        .await
        .unwrap();
    assert_eq!(view.inserted().count(), 0, "nothing inserted: {view:?}");
    assert_ne!(view.power.as_deref(), Some("On"), "not booted: {view:?}");

    // Boot each machine's BMC state in a VM, one after the other.
    let mut results = Vec::new();
    for (c, (host, provider_id)) in cases.iter().zip(&placed) {
        let i = hosts.iter().position(|h| h == host).unwrap();
        let system = &lab.systems[i];
        let name = format!("{}-{}-{}-{}", c.os, c.mode, c.boot_mode, c.machine);
        let dir = work.path().join(c.machine);
        let result = match boot_bridge::boot_from_bmc(system, &lab.ca_pem, &dir, BOOT_TIMEOUT).await
        {
            Ok(b) => {
                report(&name, &b.output);
                let check =
                    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(check_case(
                        c,
                        &b,
                        provider_id,
                        &manager.artifacts,
                        &system.mac.to_lowercase(),
                    )))
                    .await;
                match check {
                    Ok(()) => Ok(b.output.elapsed),
                    Err(p) => Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()),
                }
            }
            Err(e) => Err(format!("{e:#}")),
        };
        results.push((name, result));
    }
    eprintln!(
        "boot-proof summary (provider end to end, sushy-tools emulator, {}):",
        std::env::consts::ARCH
    );
    for (name, r) in &results {
        match r {
            Ok(t) => eprintln!("  PASS {name}: {:.1}s", t.as_secs_f64()),
            Err(e) => eprintln!("  FAIL {name}: {}", e.lines().next().unwrap_or_default()),
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} boots failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The same `beskar7-boot` code through `beskar7 media`, booted directly: the config volume as a
// second CD (the emulator offers no second CD slot), boot images attached as USB disks, and
// installer layouts the OS profiles do not use.

fn beskar7(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_beskar7"))
        .args(args)
        .output()
        .unwrap()
}

fn beskar7_ok(args: &[&str]) {
    let out = beskar7(args);
    assert!(
        out.status.success(),
        "beskar7 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `layout` patched with `kernel_args` by `beskar7 media patch-iso`.
fn patched(layout: IsoLayout, kernel_args: &str, extra: &[&str], dir: &Path) -> PathBuf {
    let out = dir.join("boot.iso");
    let src = kit().iso(layout);
    let mut a = vec![
        "media",
        "patch-iso",
        "--in",
        s(&src),
        "--kernel-args",
        kernel_args,
        "-o",
        s(&out),
    ];
    a.extend_from_slice(extra);
    beskar7_ok(&a);
    out
}

/// A config volume for `os` as an ISO, by `beskar7 media config`.
fn config_cd(os: &str, bootstrap: &str, host: &str, dir: &Path) -> PathBuf {
    std::fs::write(dir.join("bootstrap"), bootstrap).unwrap();
    let out = dir.join("config.iso");
    beskar7_ok(&[
        "media",
        "config",
        "--os",
        os,
        "--user-data",
        s(&dir.join("bootstrap")),
        "--format",
        "iso",
        "--meta-data",
        &format!("provider-id=beskar7://{NS}/{host}"),
        "--meta-data",
        &format!("local-hostname={host}"),
        "-o",
        s(&out),
    ]);
    out
}

fn boot(spec: VmSpec, case: &str) -> BootOutput {
    let mut spec = spec;
    spec.timeout = BOOT_TIMEOUT;
    let out = vm::boot(&spec).unwrap_or_else(|e| panic!("{case}: {e:#}"));
    report(case, &out);
    assert!(
        out.insmod_failures().is_empty(),
        "{case}: {:?}",
        out.insmod_failures()
    );
    assert_base_args(&out, case);
    out
}

fn check_cd_volume(out: &BootOutput, label: &str, host: &str) -> vm::VolumeSeen {
    let v = out
        .volume(label)
        .unwrap_or_else(|| panic!("no volume labelled {label}:\n{}", out.tail(40)));
    assert_eq!(v.fs_type, "iso9660", "{v:?}");
    assert!(v.device.starts_with("/dev/sr"), "a second CD: {v:?}");
    assert!(
        v.files["meta-data"].contains(&format!("provider-id: beskar7://{NS}/{host}")),
        "{v:?}"
    );
    v
}

#[test]
fn cli_kairos_config_volume_as_cd() {
    let w = tempfile::tempdir().unwrap();
    let cd = config_cd("kairos", &cloud_config(), "kairos-host", w.path());
    // Kairos reads the volume by label: its ISO is inserted as it is.
    let spec = VmSpec::new(
        Firmware::Uefi,
        kit().iso(IsoLayout::Kairos),
        w.path().join("vm"),
    )
    .with_volume(Medium::Cd(cd));
    let out = boot(spec, "cli kairos config-volume-as-cd UEFI");
    let v = check_cd_volume(&out, "cidata", "kairos-host");
    assert!(v.files["user-data"].contains(MARKER), "{v:?}");
}

#[test]
fn cli_talos_config_volume_as_cd_uefi_cd_and_usb_disk() {
    let w = tempfile::tempdir().unwrap();
    let iso = patched(
        IsoLayout::TalosHybrid,
        "talos.config=metal-iso",
        &[],
        w.path(),
    );
    let cd = config_cd("talos", &talos_config(), "talos-host", w.path());
    for device in [BootDevice::Cd, BootDevice::UsbDisk] {
        let mut spec = VmSpec::new(
            Firmware::Uefi,
            &iso,
            w.path().join(format!("vm-{device:?}")),
        )
        .with_volume(Medium::Cd(cd.clone()));
        spec.boot_device = device;
        let case = format!("cli talos config-volume-as-cd UEFI {device:?}");
        let out = boot(spec, &case);
        assert_arg(&out, "talos.config=metal-iso", &case);
        assert!(
            !out.kernel_args()
                .iter()
                .any(|a| a.starts_with("BOOT_IMAGE=")),
            "{case}: systemd-boot, not GRUB"
        );
        let v = check_cd_volume(&out, "metal-iso", "talos-host");
        assert!(v.files["config.yaml"].contains(MARKER), "{v:?}");
    }
    // The same image as a CD in BIOS mode: GRUB.
    let spec =
        VmSpec::new(Firmware::Legacy, &iso, w.path().join("vm-bios")).with_volume(Medium::Cd(cd));
    let out = boot(spec, "cli talos BIOS CD");
    assert_arg(&out, "talos.config=metal-iso", "talos BIOS");
    assert_arg(&out, "BOOT_IMAGE=/boot/vmlinuz", "talos BIOS");
}

#[test]
fn cli_leapmicro_config_volume_as_cd() {
    let w = tempfile::tempdir().unwrap();
    let ign = ignition();
    let cd = config_cd("LeapMicro", &ign, "leapmicro-host", w.path());
    let spec = VmSpec::new(
        Firmware::Uefi,
        kit().iso(IsoLayout::LeapMicro),
        w.path().join("vm"),
    )
    .with_volume(Medium::Cd(cd));
    let out = boot(spec, "cli LeapMicro config-volume-as-cd UEFI");
    // Leap Micro reads Ignition from a volume labelled `ignition` (Combustion scripts: `combustion`).
    let v = check_cd_volume(&out, "ignition", "leapmicro-host");
    assert!(v.files["ignition/config.ign"].contains(MARKER), "{v:?}");
}

#[test]
fn cli_flatcar_uefi_path_as_usb_disk() {
    let w = tempfile::tempdir().unwrap();
    let args = "ignition.config.url=http://10.0.0.1/t/config flatcar.first_boot=1";
    let iso = patched(IsoLayout::Flatcar, args, &["--add-uefi-path"], w.path());
    let mut spec = VmSpec::new(Firmware::Uefi, &iso, w.path().join("vm"));
    spec.boot_device = BootDevice::UsbDisk;
    let out = boot(spec, "cli flatcar UEFI USB disk");
    for a in args.split_whitespace() {
        assert_arg(&out, a, "flatcar UEFI USB disk");
    }
    assert_arg(&out, "initrd=\\flatcar\\cpio.gz", "flatcar UEFI USB disk");
}

#[test]
fn cli_debian_mini_isolinux_includes_bios() {
    let w = tempfile::tempdir().unwrap();
    let iso = patched(IsoLayout::DebianMini, "b7.marker=mini", &[], w.path());
    let out = boot(
        VmSpec::new(Firmware::Legacy, &iso, w.path().join("vm")),
        "cli debian mini.iso BIOS",
    );
    assert_arg(&out, "b7.marker=mini", "debian mini");
}

#[test]
fn cli_grub_mkrescue_grown_image_boots_both_firmwares() {
    // The patch grows this image (no zero padding inside its partitions): BIOS GRUB reads the
    // CD in 32 KiB blocks, so the end must be padded.
    let w = tempfile::tempdir().unwrap();
    let iso = patched(IsoLayout::GrubMkrescue, "b7.marker=grown", &[], w.path());
    let src = std::fs::metadata(kit().iso(IsoLayout::GrubMkrescue))
        .unwrap()
        .len();
    assert!(std::fs::metadata(&iso).unwrap().len() > src);
    for fw in [Firmware::Legacy, Firmware::Uefi] {
        let out = boot(
            VmSpec::new(fw, &iso, w.path().join(format!("vm-{fw:?}"))),
            &format!("cli grub-mkrescue grown {fw:?} CD"),
        );
        assert_arg(&out, "b7.marker=grown", "grub-mkrescue");
    }
}

#[test]
fn cli_secure_boot_image_is_refused_with_what_to_do() {
    let w = tempfile::tempdir().unwrap();
    let src = kit().iso(IsoLayout::TalosSecureBoot);
    let out = beskar7(&[
        "media",
        "patch-iso",
        "--in",
        s(&src),
        "--kernel-args",
        "talos.config=metal-iso",
        "-o",
        s(&w.path().join("x.iso")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Secure Boot") && err.contains("Image Factory"),
        "{err}"
    );
    assert!(!w.path().join("x.iso").exists(), "nothing written");
}

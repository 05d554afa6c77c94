//! Proof by booting: what the provider hands a BMC boots in a real virtual machine, and the
//! guest sees the kernel arguments and the config volume its OS expects.
//!
//! `provider_media_boot_in_vms` drives the provider end to end (real kube-apiserver with the
//! CAPI managers, the sushy-tools emulator as BMCs, `beskar7 manager` as a process), one
//! machine per OS profile and delivery recipe, then boots each machine through the BMC-to-VM
//! bridge (`beskar7_test::boot_bridge`): the images the emulator holds are downloaded from
//! their inserted URLs (our artifact server) and booted in `qemu-system-x86_64` as the slots and
//! the boot override say. The guest is Debian's kernel with a busybox initrd that prints
//! `/proc/cmdline` and the files of the volume with the OS's label
//! (`beskar7_test::vm`).
//!
//! The emulator's fake driver offers two virtual media slots per system, under
//! `Managers/<id>/VirtualMedia`: `Cd` (MediaTypes CD, DVD) and `Floppy` (MediaTypes Floppy,
//! USBStick); its slot list comes from `SUSHY_EMULATOR_VMEDIA_DEVICES`, which the BMC lab does
//! not set. So through the emulator the provider puts every config volume on the Floppy/USBStick
//! slot as FAT, and the bridge attaches it as a USB stick. The config volume as a second CD
//! cannot be reached through this emulator: the `cli_*_config_volume_as_cd` tests build those
//! artifacts with `beskar7 media config --format iso` and `beskar7 media patch-iso` (the same
//! `beskar7-boot` code the provider's artifact server uses) and boot them with the second CD on
//! `ide.1`. They are labelled `cli_` for that reason.
//!
//! Each boot's wall time is printed (`--nocapture` shows it).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_test::boot_bridge::{self, BridgedBoot};
use beskar7_test::vm::{self, BootKit, BootOutput, Firmware, IsoLayout, Medium, VmSpec};
use beskar7_test::{BmcLab, ControlPlane, LabSystem, ManagerProcess as Manager};
use kube::Client;
use kube::api::{Api, PostParams};
use support::{create_cluster, create_machine};

const NS: &str = "default";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

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

// ---------------------------------------------------------------------------------------------
// Waiting and enrolment (the Cluster and Machines come from support, shared with
// tests/provisioning.rs); the manager process is beskar7_test::ManagerProcess.

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

/// A CA Secret, then a credentials Secret and a PhysicalHost per lab system (`server-NN`).
async fn enroll_lab(client: &Client, lab: &BmcLab, labels: &[(&str, &str)]) -> Vec<String> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let create = |v: serde_json::Value| {
        serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(v).unwrap()
    };
    secrets
        .create(&PostParams::default(), &create(serde_json::json!({"metadata": {"name": "bmc-lab-ca"}, "stringData": {"ca.crt": lab.ca_pem}})))
        .await
        .unwrap();
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    let mut names = Vec::new();
    for (i, s) in lab.systems.iter().enumerate() {
        let name = format!("server-{i:02}");
        enroll(client, &secrets, &name, s, &labels).await;
        names.push(name);
    }
    names
}

async fn enroll(
    client: &Client,
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    name: &str,
    s: &LabSystem,
    labels: &serde_json::Map<String, serde_json::Value>,
) {
    let secret = serde_json::json!({"metadata": {"name": format!("{name}-bmc")}, "stringData": {"username": s.username, "password": s.password}});
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(secret).unwrap(),
        )
        .await
        .unwrap();
    let host: PhysicalHost = serde_json::from_value(serde_json::json!({
        "apiVersion": beskar7_api::API_VERSION,
        "kind": "PhysicalHost",
        "metadata": {"name": name, "labels": labels},
        "spec": {"redfishConnection": {
            "address": s.address,
            "credentialsSecretRef": format!("{name}-bmc"),
            "systemId": s.system_id,
            "caBundleSecretRef": "bmc-lab-ca",
        }},
    }))
    .unwrap();
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &host)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// End to end through the provider and the emulator.

/// One machine of the end-to-end test.
struct Case {
    machine: &'static str,
    os: &'static str,
    mode: &'static str,
    config_url: Option<&'static str>,
    /// Bootstrap Secret (value, format).
    bootstrap: (String, &'static str),
}

const MARKER: &str = "beskar7-boot-proof-marker";

fn cases() -> Vec<Case> {
    let ign = format!(
        r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{{"path":"/etc/{MARKER}","contents":{{"source":"data:,{MARKER}"}}}}]}}}}"#
    );
    let cloud = format!("#cloud-config\nruncmd:\n  - echo {MARKER}\n");
    let script = format!("#!/bin/sh\n# combustion: network\necho {MARKER}\n");
    let talos = format!(
        "version: v1alpha1\nmachine:\n  type: worker\n  token: {MARKER}\ncluster:\n  id: boot-proof\n"
    );
    vec![
        Case {
            machine: "kairos-bd",
            os: "kairos",
            mode: "BootstrapData",
            config_url: None,
            bootstrap: (cloud.clone(), "cloud-config"),
        },
        Case {
            machine: "talos-bd",
            os: "talos",
            mode: "BootstrapData",
            config_url: None,
            bootstrap: (talos.clone(), "cloud-config"),
        },
        Case {
            machine: "leap-bd",
            os: "LeapMicro",
            mode: "BootstrapData",
            config_url: None,
            bootstrap: (ign.clone(), "ignition"),
        },
        Case {
            machine: "leap-script-bd",
            os: "LeapMicro",
            mode: "BootstrapData",
            config_url: None,
            bootstrap: (script, "cloud-config"),
        },
        Case {
            machine: "flatcar-bd",
            os: "flatcar",
            mode: "BootstrapData",
            config_url: None,
            bootstrap: (ign.clone(), "ignition"),
        },
        Case {
            machine: "kairos-rc",
            os: "kairos",
            mode: "RemoteConfig",
            config_url: Some("https://config.example.com/kairos.yaml"),
            bootstrap: (cloud.clone(), "cloud-config"),
        },
        Case {
            machine: "talos-rc",
            os: "talos",
            mode: "RemoteConfig",
            config_url: Some("https://config.example.com/talos.yaml"),
            bootstrap: (talos, "cloud-config"),
        },
        Case {
            machine: "leap-rc",
            os: "LeapMicro",
            mode: "RemoteConfig",
            config_url: Some("https://config.example.com/combustion"),
            bootstrap: (cloud, "cloud-config"),
        },
        Case {
            machine: "flatcar-rc",
            os: "flatcar",
            mode: "RemoteConfig",
            config_url: Some("https://config.example.com/flatcar.ign"),
            bootstrap: (ign, "ignition"),
        },
    ]
}

fn layout_of(os: &str) -> IsoLayout {
    match os {
        "kairos" | "LeapMicro" => IsoLayout::GrubEfiGrub2,
        "talos" => IsoLayout::GrubEfiGrub,
        _ => IsoLayout::Isolinux,
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
        }
        "talos" => assert!(
            v.files["config.yaml"].contains(&format!("token: {MARKER}")),
            "{v:?}"
        ),
        _ if label == "combustion" => {
            let script = &v.files["combustion/script"];
            assert!(
                script.starts_with("#!") && script.contains(MARKER),
                "{script}"
            );
        }
        _ => {
            let ign = &v.files["ignition/config.ign"];
            let j: serde_json::Value = serde_json::from_str(ign)
                .unwrap_or_else(|e| panic!("config.ign is JSON: {e}: {ign}"));
            assert_eq!(j["ignition"]["version"], "3.4.0");
            assert!(ign.contains(MARKER));
        }
    }
}

async fn check_case(case: &Case, b: &BridgedBoot, provider_id: &str, artifacts: &str) {
    let out = &b.output;
    let m = case.machine;
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
    let legacy = case.os == "flatcar";
    assert_eq!(
        b.firmware,
        if legacy {
            Firmware::Legacy
        } else {
            Firmware::Uefi
        },
        "{m}: {:?}",
        b.view
    );
    match (case.os, case.mode) {
        (_, "RemoteConfig") => {
            let url = case.config_url.unwrap();
            let args: Vec<String> = match case.os {
                "kairos" => vec![format!("config_url={url}")],
                "talos" => vec![format!("talos.config={url}")],
                "LeapMicro" => vec![format!("combustion.url={url}")],
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
            let url = out
                .kernel_args()
                .into_iter()
                .find_map(|a| a.strip_prefix("ignition.config.url=").map(str::to_string))
                .unwrap_or_else(|| panic!("{m}: no ignition.config.url: {:?}", out.cmdline()));
            assert!(url.starts_with(artifacts), "{m}: {url}");
            assert_arg(out, "flatcar.first_boot=1", m);
            // No volume to carry meta-data: the providerID rides on the command line.
            assert_arg(out, &format!("beskar7.provider_id={provider_id}"), m);
            let served = reqwest::get(&url).await.unwrap().text().await.unwrap();
            assert!(
                served.contains(MARKER),
                "{m}: the URL on the kernel command line serves the bootstrap Ignition: {served}"
            );
            assert!(b.config_images.is_empty(), "{m}: {:?}", b.view);
        }
        _ => {
            if case.os == "talos" {
                assert_arg(out, "talos.config=metal-iso", m);
            }
            check_volume(case, b, provider_id);
        }
    }
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
    let lab = BmcLab::start(cases.len()).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();

    let mut images = std::collections::HashMap::new();
    for layout in IsoLayout::ALL {
        let bytes = std::fs::read(kit.iso(layout)).unwrap();
        images.insert(
            layout,
            lab.add_image(&format!("{layout:?}.iso"), &bytes).unwrap(),
        );
    }
    // The manager's webhooks are off (--webhook-port=0 is ManagerProcess's default).
    let manager = Manager::start(Path::new(env!("CARGO_BIN_EXE_beskar7")), &cp, &[])
        .expect("start beskar7 manager");
    let hosts = enroll_lab(&client, &lab, &[("role", "boot-proof")]).await;
    for h in &hosts {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(120),
            &manager,
            || async {
                let st = Api::<PhysicalHost>::namespaced(client.clone(), NS)
                    .get(h)
                    .await
                    .ok()?
                    .status?
                    .state;
                (st == Some(HostState::Available)).then_some(())
            },
        )
        .await;
    }

    create_cluster(&client, NS, "proof").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    for c in &cases {
        let secret = format!("{}-bootstrap", c.machine);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": secret},
                    "stringData": {"value": c.bootstrap.0, "format": c.bootstrap.1},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        let mut spec = serde_json::json!({
            "osFamily": c.os,
            "imageURL": images[&layout_of(c.os)],
            "provisioningMode": c.mode,
            "hostSelector": {"matchLabels": {"role": "boot-proof"}},
        });
        if let Some(u) = c.config_url {
            spec["configURL"] = serde_json::json!(u);
        }
        create_machine(&client, NS, "proof", c.machine, spec, &secret).await;
    }

    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    let provision_started = Instant::now();
    let mut placed = Vec::new();
    for c in &cases {
        let m = eventually(
            &format!("{} provisioned", c.machine),
            Duration::from_secs(300),
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
        placed.push((host, provider_id));
    }
    eprintln!(
        "boot-proof: {} machines provisioned by the provider in {:.1}s",
        cases.len(),
        provision_started.elapsed().as_secs_f64()
    );

    // Boot each machine's BMC state in a VM, one after the other.
    let mut results = Vec::new();
    for (c, (host, provider_id)) in cases.iter().zip(&placed) {
        let i = hosts.iter().position(|h| h == host).unwrap();
        let system = &lab.systems[i];
        let name = format!("{}-{}-{}", c.os, c.mode, c.machine);
        let dir = work.path().join(c.machine);
        let result = match boot_bridge::boot_from_bmc(system, &lab.ca_pem, &dir, BOOT_TIMEOUT).await
        {
            Ok(b) => {
                report(&name, &b.output);
                let check = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                    check_case(c, &b, provider_id, &manager.artifacts),
                ))
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
// Config volume as a second CD: not offered by the emulator (see the module docs), so the same
// artifacts are made with the `beskar7 media` CLI and booted directly.

fn beskar7(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_beskar7"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "beskar7 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli_case(
    os: &str,
    bootstrap: &str,
    layout: IsoLayout,
    kernel_args: Option<&str>,
) -> (BootOutput, tempfile::TempDir) {
    let kit = kit();
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { work.path().join(n) };
    std::fs::write(p("bootstrap"), bootstrap).unwrap();
    let host = format!("{}-host", os.to_lowercase());
    let provider_id = format!("beskar7://{NS}/{host}");
    beskar7(&[
        "media",
        "config",
        "--os",
        os,
        "--user-data",
        s(&p("bootstrap")),
        "--format",
        "iso",
        "--meta-data",
        &format!("provider-id={provider_id}"),
        "--meta-data",
        &format!("local-hostname={host}"),
        "-o",
        s(&p("config.iso")),
    ]);
    let boot_iso = match kernel_args {
        Some(args) => {
            beskar7(&[
                "media",
                "patch-iso",
                "--in",
                s(&kit.iso(layout)),
                "--kernel-args",
                args,
                "-o",
                s(&p("boot.iso")),
            ]);
            p("boot.iso")
        }
        None => kit.iso(layout),
    };
    let mut spec =
        VmSpec::new(Firmware::Uefi, boot_iso, p("vm")).with_volume(Medium::Cd(p("config.iso")));
    spec.timeout = BOOT_TIMEOUT;
    let out = vm::boot(&spec).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.insmod_failures().is_empty(),
        "{:?}",
        out.insmod_failures()
    );
    assert_base_args(&out, os);
    (out, work)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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
    let (out, _w) = cli_case(
        "kairos",
        &format!("#cloud-config\nruncmd:\n  - echo {MARKER}\n"),
        IsoLayout::GrubEfiGrub2,
        None,
    );
    report("cli kairos BootstrapData config-volume-as-cd", &out);
    let v = check_cd_volume(&out, "cidata", "kairos-host");
    assert!(
        v.files["user-data"].starts_with("#cloud-config") && v.files["user-data"].contains(MARKER),
        "{v:?}"
    );
}

#[test]
fn cli_talos_config_volume_as_cd() {
    let (out, _w) = cli_case(
        "talos",
        &format!("version: v1alpha1\nmachine:\n  type: worker\n  token: {MARKER}\n"),
        IsoLayout::GrubEfiGrub,
        Some("talos.config=metal-iso"),
    );
    report("cli talos BootstrapData config-volume-as-cd", &out);
    assert_arg(&out, "talos.config=metal-iso", "talos");
    let v = check_cd_volume(&out, "metal-iso", "talos-host");
    assert!(v.files["config.yaml"].contains(MARKER), "{v:?}");
}

#[test]
fn cli_leapmicro_config_volume_as_cd() {
    let ign = format!(
        r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{{"path":"/etc/m","contents":{{"source":"data:,{MARKER}"}}}}]}}}}"#
    );
    let (out, _w) = cli_case("LeapMicro", &ign, IsoLayout::GrubEfiGrub2, None);
    report("cli LeapMicro BootstrapData config-volume-as-cd", &out);
    // Leap Micro reads Ignition from a volume labelled `ignition` (Combustion scripts: `combustion`).
    let v = check_cd_volume(&out, "ignition", "leapmicro-host");
    assert!(v.files["ignition/config.ign"].contains(MARKER), "{v:?}");
}

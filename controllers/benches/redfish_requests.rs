//! Redfish requests per provisioning, counted by a recording proxy in front of the BMC.
//!
//! Generic DMTF path: a real kube-apiserver with the real CAPI core managers, `beskar7 manager`
//! as a process, and the sushy-tools emulator behind a [`BmcProxy`]. One host is enrolled
//! through the proxy; once it is Available the proxy's log is cleared, one Machine (Kairos,
//! BootstrapData: boot ISO and config volume) is created, and every request the host's BMC
//! received until the machine is provisioned is counted. Then the Machine is deleted and the
//! requests of the release (until the host is Available again) are counted.
//!
//! Prints `BENCH redfish_requests_per_provision <n> requests` and
//! `BENCH redfish_requests_per_release <n> requests`, with the requests themselves on stderr,
//! and the power actions among them (`redfish_power_actions_per_{provision,release}`).
//!
//! Vendor shapes: the captured BMCs in `shared/redfish-mockups` are served read-only by the
//! redfish crate's test server (`redfish/tests/common`, shared here, which counts requests), so
//! a manager cannot provision against them (power and media never change). For each shape the
//! host controller's Redfish sequence for one provisioning of a powered-off host with empty
//! slots (the capture is answered with `PowerState: Off` and empty slots; read power,
//! read each slot, eject what is there, insert the boot ISO, one-time boot from CD, power on,
//! read power) is replayed with the same client on a warm discovery, and its requests printed as
//! `BENCH redfish_requests_per_provision_<shape> <n> requests` (plus the cold discovery with
//! inventory as `redfish_requests_per_discovery_<shape>`).
//!
//! No assertion on any figure.
//!
//! Run: `cargo bench -p beskar7-controllers --bench redfish_requests` (needs `make testbin` and
//! the BMC lab's venv; `BESKAR7_BENCH_SHAPES_ONLY=1` measures only the vendor shapes).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../../redfish/tests/common/mod.rs"]
mod mockup;

use std::time::Duration;

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_redfish as redfish;
use beskar7_test::bmc_proxy::ProxyRecord;
use beskar7_test::{BmcLab, BmcProxy, ControlPlane};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use support::*;

const NS: &str = "default";
const CAPI: &str = "cluster.x-k8s.io";

async fn host_state(client: &kube::Client, name: &str) -> Option<HostState> {
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .ok()?
        .status?
        .state
}

fn summary(reqs: &[ProxyRecord]) -> String {
    reqs.iter()
        .map(|r| {
            format!(
                "  {:>7.3}s {} {} -> {}{}{}",
                r.at.as_secs_f64(),
                r.method,
                r.path,
                r.status.map(|s| s.to_string()).unwrap_or("-".into()),
                r.reset_type()
                    .map(|t| format!(" ResetType={t}"))
                    .unwrap_or_default(),
                r.power_state
                    .as_deref()
                    .map(|p| format!(" PowerState={p}"))
                    .unwrap_or_default(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// (discovery with inventory, one provisioning pass) requests against a captured vendor shape.
async fn vendor_shape(mockup_name: &str) -> anyhow::Result<(usize, usize)> {
    // The capture as a host looks when it is claimed: powered off, every slot empty.
    let hook: mockup::Hook = std::sync::Arc::new(|r, s: &mockup::Server| {
        if r.method != "GET" {
            return None;
        }
        let mut v = s.resource(&r.path)?;
        let obj = v.as_object_mut()?;
        if obj.contains_key("PowerState") {
            obj.insert("PowerState".into(), serde_json::json!("Off"));
        } else if r.path.contains("/VirtualMedia/") && obj.contains_key("Image") {
            obj.insert("Image".into(), serde_json::Value::Null);
            obj.insert("ImageName".into(), serde_json::Value::Null);
            obj.insert("Inserted".into(), serde_json::json!(false));
        } else {
            return None;
        }
        Some(mockup::Reply::json(200, &v))
    });
    let srv = mockup::Server::mockup(mockup_name, Some(hook)).await;
    let c = srv.client();
    let d = c.discover(None).await?;
    c.inventory(&d).await?;
    let discovery = srv.requests().len();
    srv.clear();
    let boot = d
        .boot_slot()
        .map(|s| s.path.clone())
        .ok_or_else(|| anyhow::anyhow!("{mockup_name}: no CD slot"))?;
    // As the host controller does on a claimed host: power, slots, media, boot override, power on.
    c.power_state(&d).await?;
    for slot in d.slots.iter().filter(|s| !s.skipped) {
        let current = c.read_slot(&slot.path).await?;
        let want = (slot.path == boot).then_some("https://10.0.0.5/boot.iso");
        let image = current.media.current_image().map(str::to_string);
        if (current.media.is_inserted() || image.is_some()) && image.as_deref() != want {
            c.eject_media(&slot.path).await?;
        }
        if let Some(url) = want {
            c.insert_media(&slot.path, url).await?;
        }
    }
    c.set_boot_once_cd(&d, Some(redfish::BootMode::Uefi))
        .await?;
    c.set_power(&d, redfish::PowerAction::On).await?;
    // The next pass sees the power on.
    c.power_state(&d).await?;
    let pass = srv.requests();
    eprintln!(
        "{mockup_name}: provisioning pass ({} requests):\n{}",
        pass.len(),
        mockup::paths(&pass).join("\n")
    );
    Ok((discovery, pass.len()))
}

async fn run() -> anyhow::Result<()> {
    for (shape, dir) in [
        ("dmtf_rackmount", "dmtf-public-rackmount1"),
        ("dmtf_tower", "dmtf-public-tower"),
        ("hpe_ilo", "hpe-ilo"),
        ("supermicro", "supermicro"),
    ] {
        match vendor_shape(dir).await {
            Ok((discovery, pass)) => {
                println!("BENCH redfish_requests_per_discovery_{shape} {discovery} requests");
                println!("BENCH redfish_requests_per_provision_{shape} {pass} requests");
            }
            Err(e) => eprintln!("{shape}: not measured: {e}"),
        }
    }
    if std::env::var_os("BESKAR7_BENCH_SHAPES_ONLY").is_some() {
        return Ok(());
    }

    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder().with_capi().start().await?;
    let lab = BmcLab::start(1).await?;
    let proxy = BmcProxy::start(&lab).await?;
    let client = cp.client();
    let work = tempfile::tempdir()?;
    let iso = build_test_iso(work.path(), "/boot/grub/grub.cfg")?;
    let image_url = lab.add_image("kairos.iso", &iso)?;
    let manager = start_manager(&cp, &[]);
    beskar7_test::fixtures::enroll_via_proxy(
        &client,
        NS,
        "server-00",
        &lab.systems[0],
        &proxy,
        &[],
    )
    .await?;
    eventually(
        "server-00 Available",
        Duration::from_secs(90),
        Some(&manager),
        || async {
            (host_state(&client, "server-00").await == Some(HostState::Available)).then_some(())
        },
    )
    .await;
    let enrol = proxy.requests().len();

    create_cluster(&client, NS, "bench").await;
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "m1-bootstrap"},
                "stringData": {"value": "#cloud-config\nruncmd:\n  - echo bench\n", "format": "cloud-config"},
            }))?,
        )
        .await?;

    proxy.clear_log();
    let spec = serde_json::json!({"osFamily": "kairos", "imageURL": image_url, "provisioningMode": "BootstrapData"});
    create_machine(&client, NS, "bench", "m1", spec, "m1-bootstrap").await;
    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    eventually(
        "m1 provisioned",
        Duration::from_secs(180),
        Some(&manager),
        || async {
            let m = machines.get("m1").await.ok()?;
            m.status?.initialization?.provisioned.filter(|p| *p)?;
            (host_state(&client, "server-00").await == Some(HostState::Provisioned)).then_some(())
        },
    )
    .await;
    let provision = proxy.requests();

    proxy.clear_log();
    dynamic_api(&client, NS, CAPI, "v1beta2", "Machine")
        .delete("m1", &DeleteParams::default())
        .await?;
    eventually(
        "server-00 Available again",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            (host_state(&client, "server-00").await == Some(HostState::Available)).then_some(())
        },
    )
    .await;
    let release = proxy.requests();

    eprintln!("enrolment: {enrol} requests");
    eprintln!(
        "provisioning ({} requests):\n{}",
        provision.len(),
        summary(&provision)
    );
    eprintln!(
        "release ({} requests):\n{}",
        release.len(),
        summary(&release)
    );
    println!(
        "BENCH redfish_requests_per_provision {} requests",
        provision.len()
    );
    println!(
        "BENCH redfish_requests_per_release {} requests",
        release.len()
    );
    // Power actions alone: one per provisioning and one per release is the ideal; more means
    // the same action was sent again while the BMC was still carrying out the first one.
    let power = |reqs: &[ProxyRecord]| reqs.iter().filter(|r| r.reset_type().is_some()).count();
    println!(
        "BENCH redfish_power_actions_per_provision {} requests",
        power(&provision)
    );
    println!(
        "BENCH redfish_power_actions_per_release {} requests",
        power(&release)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

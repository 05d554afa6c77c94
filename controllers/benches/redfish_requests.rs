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
//! `BENCH redfish_requests_per_release <n> requests`, with the requests themselves on stderr.
//! No assertion on any figure.
//!
//! Run: `cargo bench -p beskar7-controllers --bench redfish_requests` (needs `make testbin` and
//! the BMC lab's venv).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_test::bmc_proxy::ProxyRecord;
use beskar7_test::{BmcLab, BmcProxy, ControlPlane};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use support::*;

const NS: &str = "default";
const INFRA: &str = "infrastructure.cluster.x-k8s.io";
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

async fn run() -> anyhow::Result<()> {
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

    create_dynamic(
        &client,
        NS,
        INFRA,
        "v1alpha1",
        "Beskar7Cluster",
        serde_json::json!({
            "metadata": {"name": "bench", "namespace": NS},
            "spec": {"controlPlaneEndpoint": {"host": "10.0.0.100", "port": 6443}},
        }),
    )
    .await;
    create_dynamic(&client, NS, CAPI, "v1beta2", "Cluster", serde_json::json!({
        "metadata": {"name": "bench", "namespace": NS},
        "spec": {"clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
                 "infrastructureRef": {"apiGroup": INFRA, "kind": "Beskar7Cluster", "name": "bench"}},
    }))
    .await;
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
    create_dynamic(&client, NS, INFRA, "v1alpha1", "Beskar7Machine", serde_json::json!({
        "metadata": {"name": "m1", "namespace": NS},
        "spec": {"osFamily": "kairos", "imageURL": image_url, "provisioningMode": "BootstrapData"},
    }))
    .await;
    create_dynamic(&client, NS, CAPI, "v1beta2", "Machine", serde_json::json!({
        "metadata": {"name": "m1", "namespace": NS},
        "spec": {"clusterName": "bench", "bootstrap": {"dataSecretName": "m1-bootstrap"},
                 "infrastructureRef": {"apiGroup": INFRA, "kind": "Beskar7Machine", "name": "m1"}},
    }))
    .await;
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

//! Reboot on request (`REBOOT_ANNOTATION`) against the real emulator, counted at a recording
//! proxy in front of each host's BMC: a Provisioned host is shut down gracefully and powered on
//! once, then the annotation goes; an OS that ignores the graceful shutdown is forced off after
//! the timeout, across a manager restart without a second shutdown; a request already carried
//! out is not carried out again; a host that is not Provisioned refuses.

mod support;

use std::time::Duration;

use beskar7_api::{
    HostState, PhysicalHost, REBOOT_ANNOTATION, RebootPhase, RebootStatus,
    conditions::{reason, types},
};
use beskar7_test::bmc_proxy::{Fault, FaultRule};
use beskar7_test::fake_bmc::stand_in;
use beskar7_test::{BmcLab, BmcProxy, ControlPlane};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use support::*;

const NS: &str = "default";

/// The reset types the BMC took (answered 2xx upstream, or ignored by the proxy) since the log
/// was cleared.
fn resets(proxy: &BmcProxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.succeeded() || r.fault.as_deref() == Some("ignored"))
        .filter_map(|r| r.reset_type().map(str::to_string))
        .collect()
}

async fn annotate(hosts: &Api<PhysicalHost>, host: &str, request: &str) {
    hosts
        .patch(
            host,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {REBOOT_ANNOTATION: request}}}),
            ),
        )
        .await
        .unwrap();
}

/// The host's `status.reboot` once `request` reached `phase` and the annotation is gone.
async fn reboot_ended(
    hosts: &Api<PhysicalHost>,
    host: &str,
    request: &str,
    phase: RebootPhase,
    manager: &Manager,
) -> RebootStatus {
    eventually(
        &format!("{host}: reboot {request} {phase:?}, annotation removed"),
        Duration::from_secs(120),
        Some(manager),
        || async {
            let h = hosts.get(host).await.ok()?;
            let r = h.status?.reboot?;
            (r.request == request
                && r.phase == phase
                && !h
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .contains_key(REBOOT_ANNOTATION))
            .then_some(r)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_annotation_power_cycles_a_provisioned_host_once() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .start()
        .await
        .expect("control plane");
    let lab = BmcLab::start(2).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let image_url = lab
        .add_image(
            "talos.iso",
            &build_test_iso(work.path(), "/boot/grub/grub.cfg").unwrap(),
        )
        .unwrap();
    let (p0, p1) = (
        BmcProxy::start(&lab).await.unwrap(),
        BmcProxy::start(&lab).await.unwrap(),
    );
    for (name, system, proxy, role) in [
        ("h0", &lab.systems[0], &p0, "target"),
        ("h1", &lab.systems[1], &p1, "spare"),
    ] {
        beskar7_test::fixtures::enroll_via_proxy(
            &client,
            NS,
            name,
            system,
            proxy,
            &[("role", role)],
        )
        .await
        .unwrap();
    }
    // sushy-tools takes about 9 s to carry out a GracefulShutdown on a busy 2-core machine: the
    // timeout must be well above that, or the first reboot is forced (seen in CI with 8 s).
    let mut manager = start_manager(&cp, &["--reboot-graceful-timeout-seconds=30"]);
    let hosts = Api::<PhysicalHost>::namespaced(client.clone(), NS);
    let state = |name: &'static str| {
        let hosts = hosts.clone();
        async move { hosts.get(name).await.ok()?.status?.state }
    };
    for h in ["h0", "h1"] {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(120),
            Some(&manager),
            || async { (state(h).await == Some(HostState::Available)).then_some(()) },
        )
        .await;
    }
    stand_in::cluster(&client, NS, "c1").await.unwrap();
    stand_in::machine_with(
        &client,
        NS,
        "c1",
        "m0",
        serde_json::json!({}),
        serde_json::json!({"osFamily": "talos", "imageURL": image_url, "provisioningMode": "PreBakedISO",
            "hostSelector": {"matchLabels": {"role": "target"}}}),
        serde_json::json!({}),
    )
    .await
    .unwrap();
    eventually(
        "h0 Provisioned",
        Duration::from_secs(180),
        Some(&manager),
        || async { (state("h0").await == Some(HostState::Provisioned)).then_some(()) },
    )
    .await;
    let booted_for = hosts
        .get("h0")
        .await
        .unwrap()
        .status
        .unwrap()
        .boot_issued_for;

    // A host that is not Provisioned refuses, says why, and keeps its power.
    p1.clear_log();
    annotate(&hosts, "h1", "manual-1").await;
    let r = reboot_ended(&hosts, "h1", "manual-1", RebootPhase::Refused, &manager).await;
    assert!(
        r.message
            .as_deref()
            .is_some_and(|m| m.contains("Available") && m.contains("only a Provisioned host")),
        "{r:?}"
    );
    let h1 = hosts.get("h1").await.unwrap();
    let cond = h1
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == types::REBOOTED)
        .cloned();
    assert_eq!(
        cond.as_ref()
            .map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("False", reason::REBOOT_REFUSED)),
        "{cond:?}"
    );
    assert_eq!(
        resets(&p1),
        Vec::<String>::new(),
        "a refused reboot touched the power"
    );

    // Provisioned: one graceful shutdown, one power-on, nothing of the boot again.
    p0.clear_log();
    annotate(&hosts, "h0", "r1").await;
    let r = reboot_ended(&hosts, "h0", "r1", RebootPhase::Completed, &manager).await;
    assert!(!r.forced, "{r:?}");
    assert_eq!(
        resets(&p0),
        ["GracefulShutdown", "On"],
        "{:?}",
        p0.requests()
    );
    assert!(
        p0.requests().iter().all(|q| q.inserted_image().is_none()
            && !(q.method == "PATCH" && q.path.contains("/Systems/"))),
        "the reboot re-ran the boot sequence: {:?}",
        p0.requests()
    );
    let h0 = hosts.get("h0").await.unwrap();
    let status = h0.status.clone().unwrap();
    assert_eq!(status.state, Some(HostState::Provisioned));
    assert_eq!(status.boot_issued_for, booted_for);
    assert_eq!(status.observed_power_state.as_deref(), Some("On"));
    let cond = status
        .conditions
        .iter()
        .find(|c| c.type_ == types::REBOOTED)
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", reason::REBOOT_COMPLETED)
    );

    // The OS ignores the power button: forced off after the timeout. The manager restarts while
    // it waits, and resumes the wait instead of asking for a second shutdown.
    p0.inject(
        FaultRule::always(Fault::Ignored)
            .method("POST")
            .body_contains("GracefulShutdown"),
    );
    p0.clear_log();
    annotate(&hosts, "h0", "r2").await;
    eventually(
        "r2 shutting down",
        Duration::from_secs(60),
        Some(&manager),
        || async {
            let r = hosts.get("h0").await.ok()?.status?.reboot?;
            (r.request == "r2" && r.phase == RebootPhase::ShuttingDown).then_some(())
        },
    )
    .await;
    manager.restart().expect("manager restarts");
    let r = reboot_ended(&hosts, "h0", "r2", RebootPhase::Completed, &manager).await;
    assert!(r.forced, "{r:?}");
    assert_eq!(
        resets(&p0),
        ["GracefulShutdown", "ForceOff", "On"],
        "{:?}\n{}",
        p0.requests(),
        manager.log_tail(100)
    );
    p0.clear_faults();

    // The same request again (a restore, a user re-applying a manifest): removed, not redone.
    p0.clear_log();
    annotate(&hosts, "h0", "r2").await;
    eventually(
        "repeated r2 removed",
        Duration::from_secs(60),
        Some(&manager),
        || async {
            let h = hosts.get("h0").await.ok()?;
            (!h.annotations().contains_key(REBOOT_ANNOTATION)).then_some(())
        },
    )
    .await;
    assert_eq!(
        resets(&p0),
        Vec::<String>::new(),
        "a completed request was carried out again"
    );
}

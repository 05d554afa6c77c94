//! BMC faults through a fault-injecting proxy in front of the sushy-tools emulator, one proxy
//! (and one fault) per host, all while machines are being provisioned on them:
//!
//! - `burst`: every request answered 500;
//! - `reset`: every connection reset (RST) once the request is read;
//! - `busy`: every request answered 503 with `Retry-After`;
//! - `stall`: one request held for 30 s before it is forwarded;
//! - `expiry`: the BMC's sessions expire (the proxy emulates a SessionService): 401 until the
//!   client logs in again.
//!
//! While a fault lasts the host's conditions name it, and the number of requests the BMC gets
//! stays bounded (retries back off instead of hammering it). Once the faults stop every machine
//! is provisioned, with exactly one power-on sequence and its own media.

mod support;

use std::time::{Duration, Instant};

use beskar7_api::{Beskar7Machine, PhysicalHost};
use beskar7_test::bmc_proxy::ProxyRecord;
use beskar7_test::{BmcLab, BmcProxy, ControlPlane, Fault, FaultRule};
use kube::api::{Api, ListParams};
use support::*;

const NS: &str = "default";
const KINDS: [&str; 5] = ["burst", "reset", "busy", "stall", "expiry"];
/// Seconds in `Retry-After` of the `busy` host.
const RETRY_AFTER: u64 = 5;
/// How long the request counts are watched while the faults last.
const WINDOW: Duration = Duration::from_secs(30);

fn condition(h: &PhysicalHost, type_: &str) -> Option<(String, String, String)> {
    h.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn describe(reqs: &[ProxyRecord]) -> String {
    reqs.iter()
        .map(|r| {
            format!(
                "  {:>7.3}s {} {} -> {:?} {}",
                r.at.as_secs_f64(),
                r.method,
                r.path,
                r.status,
                r.fault.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_faults_are_explained_retried_with_backoff_and_provisioning_completes_after() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    let lab = BmcLab::start(KINDS.len()).await.expect("BMC lab");
    let client = cp.client();
    let mut proxies = Vec::new();
    for (i, kind) in KINDS.iter().enumerate() {
        let proxy = if *kind == "expiry" {
            BmcProxy::start_with_sessions(&lab).await
        } else {
            BmcProxy::start(&lab).await
        }
        .expect("BMC proxy");
        beskar7_test::fixtures::enroll_via_proxy(
            &client,
            NS,
            kind,
            &lab.systems[i],
            &proxy,
            &[("fault", kind)],
        )
        .await
        .expect("enrol through the proxy");
        proxies.push(proxy);
    }
    let proxy = |kind: &str| &proxies[KINDS.iter().position(|k| *k == kind).unwrap()];
    let host_api: Api<PhysicalHost> = Api::namespaced(client.clone(), NS);
    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);

    let manager = start_manager(&cp, &[]);
    for kind in KINDS {
        eventually(
            &format!("{kind} Available"),
            Duration::from_secs(120),
            Some(&manager),
            || async {
                let h = host_api.get(kind).await.ok()?;
                (condition(&h, "Ready")?.1 == "Available").then_some(())
            },
        )
        .await;
    }
    let sessions_before = proxy("expiry").sessions_issued();
    assert!(
        sessions_before >= 1,
        "the manager did not use the emulated SessionService"
    );
    let _dump = spawn_progress_dump(client.clone(), NS, Duration::from_secs(60));

    // Faults on, then the machines.
    proxy("burst").inject(FaultRule::always(Fault::Status(500)));
    proxy("reset").inject(FaultRule::always(Fault::Reset));
    proxy("busy").inject(FaultRule::always(Fault::RetryAfter(RETRY_AFTER)));
    proxy("stall").inject(FaultRule::times(Fault::Stall(Duration::from_secs(30)), 1));
    proxy("expiry").expire_sessions();
    let image_url = lab
        .add_image("talos.iso", b"PreBakedISO: inserted as it is")
        .unwrap();
    create_cluster(&client, NS, "faults").await;
    for kind in KINDS {
        let spec = serde_json::json!({"osFamily": "talos", "imageURL": image_url, "provisioningMode": "PreBakedISO",
                     "hostSelector": {"matchLabels": {"fault": kind}}});
        create_machine(&client, NS, "faults", &format!("m-{kind}"), spec, "unused").await;
    }

    // While the faults last, the conditions name them.
    for (kind, reason, text) in [
        ("burst", "RedfishProtocolError", "HTTP 500"),
        ("reset", "BMCUnreachable", ""),
        ("busy", "BMCBusy", "HTTP 503"),
    ] {
        eventually(
            &format!("{kind}: BMCConnected=False/{reason}"),
            Duration::from_secs(90),
            Some(&manager),
            || async {
                let h = host_api.get(kind).await.ok()?;
                let (status, r, message) = condition(&h, "BMCConnected")?;
                (status == "False" && r == reason && message.contains(text)).then_some(())
            },
        )
        .await;
    }
    // ... and the BMCs are not hammered: count the requests over a window.
    let before: Vec<usize> = proxies.iter().map(|p| p.requests().len()).collect();
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let window = started.elapsed().as_secs_f64();
    for kind in ["burst", "reset", "busy"] {
        let p = proxy(kind);
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        let reqs = p.requests();
        let n = reqs.len() - before[i];
        eprintln!("{kind}: {n} requests in {window:.0} s");
        // Per failed request at most 1 + 3 retries; per reconcile a handful of requests; failed
        // reconciles back off 5 s, 10 s, 20 s ... A client without backoff sends hundreds.
        assert!(
            n <= 40,
            "{kind}: {n} requests in {window:.0} s while the BMC fails: retries do not back off\n{}",
            describe(&reqs[before[i]..])
        );
        assert!(
            reqs[before[i]..].iter().all(|r| r.fault.is_some()),
            "{kind}: a request got through while faulted"
        );
    }
    // Retry-After is honoured: the busy BMC sees no more than one request per Retry-After per
    // request in flight (at most 4 at once per BMC), plus the first ones.
    let busy_i = KINDS.iter().position(|k| *k == "busy").unwrap();
    let busy_n = proxy("busy").requests().len() - before[busy_i];
    let busy_max = 4 * (window as u64 / RETRY_AFTER + 1) as usize;
    assert!(
        busy_n <= busy_max,
        "busy: {busy_n} requests in {window:.0} s with Retry-After {RETRY_AFTER} (max {busy_max})"
    );
    // Nothing is provisioned on a failing BMC.
    for kind in ["burst", "reset", "busy"] {
        let m = machines.get(&format!("m-{kind}")).await.unwrap();
        assert_ne!(
            m.status
                .as_ref()
                .and_then(|s| s.initialization.as_ref()?.provisioned),
            Some(true),
            "m-{kind} provisioned while its BMC failed every request"
        );
    }

    // Faults off: everything completes.
    for p in &proxies {
        p.clear_faults();
    }
    eventually(
        "all machines provisioned after the faults stopped",
        Duration::from_secs(240),
        Some(&manager),
        || async {
            let list = machines.list(&ListParams::default()).await.ok()?.items;
            (list.len() == KINDS.len()
                && list.iter().all(|m| {
                    m.status
                        .as_ref()
                        .and_then(|s| s.initialization.as_ref()?.provisioned)
                        == Some(true)
                }))
            .then_some(())
        },
    )
    .await;
    for kind in KINDS {
        let h = host_api.get(kind).await.unwrap();
        let (status, reason, message) = condition(&h, "BMCConnected").unwrap();
        assert_eq!(
            status, "True",
            "{kind}: BMCConnected {reason}: {message} after recovery"
        );
        let log = proxy(kind).requests();
        let ons: Vec<&ProxyRecord> = log
            .iter()
            .filter(|r| r.succeeded() && r.reset_type() == Some("On"))
            .collect();
        assert!(
            !ons.is_empty(),
            "{kind}: never powered on\n{}",
            describe(&log)
        );
        let offs = log
            .iter()
            .filter(|r| r.succeeded() && matches!(r.reset_type(), Some(t) if t != "On"))
            .count();
        assert_eq!(offs, 0, "{kind}: power-off or restart\n{}", describe(&log));
        assert!(
            log.iter()
                .filter_map(|r| r.inserted_image())
                .all(|i| i == image_url),
            "{kind}: foreign media\n{}",
            describe(&log)
        );
    }
    // The stalled request was answered, late, and provisioning went on.
    assert!(
        proxy("stall")
            .requests()
            .iter()
            .any(|r| r.fault.as_deref() == Some("stall") && r.status.is_some()),
        "no request was stalled\n{}",
        describe(&proxy("stall").requests())
    );
    // Session expiry: one 401, one new login, no lasting authentication failure.
    let expiry = proxy("expiry");
    let expired = expiry
        .requests()
        .iter()
        .filter(|r| r.fault.as_deref() == Some("session-expired"))
        .count();
    let new_sessions = expiry.sessions_issued() - sessions_before;
    assert!(
        expired >= 1,
        "the expired session was never used\n{}",
        describe(&expiry.requests())
    );
    assert!(
        (1..=2).contains(&new_sessions),
        "{new_sessions} new sessions after one expiry\n{}",
        describe(&expiry.requests())
    );
}

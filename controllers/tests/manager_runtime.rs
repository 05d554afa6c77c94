//! The manager as a platform team runs it: two replicas with Lease leader election (killing the
//! leader hands over to the other), health and readiness probes, Prometheus metrics.

mod support;

use std::time::Duration;

use beskar7_api::{HostState, PhysicalHost};
use beskar7_test::{BmcLab, ControlPlane};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::*;

const NS: &str = "default";
const LEASE: &str = "beskar7-manager-leader";

async fn available(client: &kube::Client, name: &str) -> bool {
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .ok()
        .and_then(|h| h.status?.state)
        == Some(HostState::Available)
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over_and_probes_and_metrics_answer() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::start().await.expect("control plane");
    let lab = BmcLab::start(2).await.expect("BMC lab");
    let client = cp.client();
    let flags = [
        "--leader-elect=true",
        "--leader-election-namespace",
        NS,
        "--leader-lease-seconds",
        "6",
    ];
    let mut managers = [
        Some(start_manager(&cp, &flags)),
        Some(start_manager(&cp, &flags)),
    ];

    // Both replicas are live and ready (readiness does not wait for leadership).
    for m in managers.iter().flatten() {
        let health = m.health.clone();
        eventually("probes answer", Duration::from_secs(60), Some(m), || {
            let health = health.clone();
            async move {
                (get(&format!("{health}/healthz")).await.0 == 200
                    && get(&format!("{health}/readyz")).await.0 == 200)
                    .then_some(())
            }
        })
        .await;
    }

    // Exactly one holds the lease; it reconciles the first host.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = eventually("a leader", Duration::from_secs(60), None, || async {
        leases.get(LEASE).await.ok()?.spec?.holder_identity
    })
    .await;
    let leader = managers
        .iter()
        .position(|m| {
            m.as_ref()
                .is_some_and(|m| holder.ends_with(&format!("_{}", m.pid())))
        })
        .unwrap_or_else(|| panic!("lease holder {holder} is neither manager"));
    let follower = 1 - leader;
    // Only the first host now; the second is enrolled after the leader is gone, so only the
    // new leader can make it Available.
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": beskar7_test::fixtures::LAB_CA_SECRET},
                "stringData": {"ca.crt": lab.ca_pem},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let ca = Some(beskar7_test::fixtures::LAB_CA_SECRET);
    let all = ["server-00".to_string(), "server-01".to_string()];
    enroll(&client, NS, &all[0], &lab.systems[0], ca, &[])
        .await
        .unwrap();
    let first = &all[0];
    eventually(
        "first host Available",
        Duration::from_secs(90),
        managers[leader].as_ref(),
        || async { available(&client, first).await.then_some(()) },
    )
    .await;
    assert!(
        managers[follower]
            .as_ref()
            .unwrap()
            .log_text()
            .contains("waiting for leadership")
            && !managers[follower]
                .as_ref()
                .unwrap()
                .log_text()
                .contains("state changed"),
        "the follower reconciled while not leading:\n{}",
        managers[follower].as_ref().unwrap().log_tail(20)
    );

    // Metrics of the leader: reconciles counted, hosts by state.
    let metrics = get(&format!(
        "{}/metrics",
        managers[leader].as_ref().unwrap().metrics
    ))
    .await;
    assert_eq!(metrics.0, 200);
    assert!(
        metrics
            .1
            .contains("beskar7_reconcile_total{controller=\"physicalhost\",result=\"success\"}"),
        "{}",
        metrics.1
    );
    assert!(
        metrics.1.contains("beskar7_hosts{state=\"Available\"}"),
        "{}",
        metrics.1
    );
    assert!(
        metrics
            .1
            .contains("beskar7_reconcile_duration_seconds_count"),
        "{}",
        metrics.1
    );

    // Kill the leader (SIGKILL: no graceful release); the follower takes over and keeps going.
    drop(managers[leader].take());
    let new_holder = eventually(
        "the follower takes the lease",
        Duration::from_secs(60),
        managers[follower].as_ref(),
        || async {
            let h = leases.get(LEASE).await.ok()?.spec?.holder_identity?;
            (h != holder).then_some(h)
        },
    )
    .await;
    assert!(new_holder.ends_with(&format!("_{}", managers[follower].as_ref().unwrap().pid())));
    // A host enrolled after the handover is reconciled by the new leader.
    enroll(&client, NS, &all[1], &lab.systems[1], ca, &[])
        .await
        .unwrap();
    eventually(
        "second host Available under the new leader",
        Duration::from_secs(90),
        managers[follower].as_ref(),
        || async { available(&client, &all[1]).await.then_some(()) },
    )
    .await;
    // The old leader is dead, so the host enrolled after it was made Available by the new one.
    let log = managers[follower].as_ref().unwrap().log_text();
    assert!(log.contains("became leader"), "{log}");
}

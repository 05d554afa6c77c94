//! API server faults (issue #9): kube-apiserver is killed and restarted (same port, same etcd)
//! in the middle of provisioning, while another writer keeps bumping the resourceVersion of
//! every PhysicalHost and Beskar7Machine (so the manager's optimistic writes, the claim and the
//! finalizer, meet conflicts). The same manager process, never restarted, finishes
//! provisioning every machine, including machines created after the restart (which only a
//! re-established watch shows it), and each host boots exactly once, for its consumer.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use beskar7_api::{Beskar7Machine, PhysicalHost};
use beskar7_test::ControlPlane;
use beskar7_test::fake_bmc::{FakeBmc, stand_in};
use kube::api::{Api, ListParams, Patch, PatchParams};
use support::*;

const NS: &str = "default";
const HOSTS: usize = 6;

fn image_url(machine: &str) -> String {
    format!("http://images.invalid/{machine}.iso")
}

fn provisioned(m: &Beskar7Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.initialization.as_ref()?.provisioned)
        == Some(true)
}

/// Host -> consumer; panics if a machine holds two hosts.
async fn claims(client: &kube::Client) -> Option<BTreeMap<String, String>> {
    let mut by_host = BTreeMap::new();
    let mut by_machine = BTreeMap::new();
    for h in Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .ok()?
        .items
    {
        let host = h.metadata.name.clone().unwrap_or_default();
        if let Some(c) = h.spec.consumer_ref {
            if let Some(other) = by_machine.insert(c.name.clone(), host.clone()) {
                panic!("machine {} holds two hosts: {other} and {host}", c.name);
            }
            by_host.insert(host, c.name);
        }
    }
    Some(by_host)
}

/// Bumps `metadata.annotations` of every host and machine, round after round, until aborted.
fn spawn_conflict_writer(
    client: kube::Client,
    bumps: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let hosts: Api<PhysicalHost> = Api::namespaced(client.clone(), NS);
        let machines: Api<Beskar7Machine> = Api::namespaced(client, NS);
        let params = PatchParams::default();
        loop {
            let n = bumps.load(Ordering::Relaxed);
            let patch = serde_json::json!({"metadata": {"annotations": {"test.beskar7.io/bump": n.to_string()}}});
            let host_names: Vec<String> = match hosts.list(&ListParams::default()).await {
                Ok(l) => l
                    .items
                    .into_iter()
                    .filter_map(|h| h.metadata.name)
                    .collect(),
                Err(_) => Vec::new(),
            };
            let machine_names: Vec<String> = match machines.list(&ListParams::default()).await {
                Ok(l) => l
                    .items
                    .into_iter()
                    .filter_map(|m| m.metadata.name)
                    .collect(),
                Err(_) => Vec::new(),
            };
            for h in &host_names {
                if hosts.patch(h, &params, &Patch::Merge(&patch)).await.is_ok() {
                    bumps.fetch_add(1, Ordering::Relaxed);
                }
            }
            for m in &machine_names {
                if machines
                    .patch(m, &params, &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    bumps.fetch_add(1, Ordering::Relaxed);
                }
            }
            // About one write per object per second: a busy neighbour (labels, annotations,
            // other controllers), not a flood that no optimistic writer could get past.
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    })
}

/// [`eventually`], but a timeout first keeps the manager's whole log (the panic shows only its
/// tail) in the target's tmp dir and names it.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, manager: &Manager, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let guard = KeepLogOnPanic(manager.log.clone());
    let v = eventually(what, timeout, Some(manager), f).await;
    std::mem::forget(guard);
    v
}

struct KeepLogOnPanic(std::path::PathBuf);

impl Drop for KeepLogOnPanic {
    fn drop(&mut self) {
        let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("resilience_apiserver-manager.log");
        if std::fs::copy(&self.0, &keep).is_ok() {
            eprintln!("whole manager log kept in {}", keep.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_recovers_from_api_server_restart_and_conflicts() {
    beskar7_test::install_crypto_provider();
    let mut cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let bmc = FakeBmc::builder(HOSTS).start().await.expect("fake BMC");
    let hosts = stand_in::enroll(&client, NS, &bmc, "host", 4)
        .await
        .expect("enrolling hosts");
    stand_in::cluster(&client, NS, "apifaults")
        .await
        .expect("Cluster");
    let first: Vec<String> = (0..HOSTS / 2).map(|i| format!("early-{i}")).collect();
    let later: Vec<String> = (0..HOSTS - HOSTS / 2)
        .map(|i| format!("late-{i}"))
        .collect();
    stand_in::machines(&client, NS, "apifaults", &first, image_url, 4)
        .await
        .expect("first machines");

    let bumps = Arc::new(AtomicU64::new(0));
    let writer = spawn_conflict_writer(client.clone(), bumps.clone());
    let dump = spawn_progress_dump(client.clone(), NS, Duration::from_secs(30));
    let mut manager = start_manager(&cp, &[]);
    let pid = manager.pid();

    // Mid-provisioning: as soon as the first claim is made.
    wait_for(
        "a first claim",
        Duration::from_secs(90),
        &manager,
        || async { claims(&client).await.filter(|c| !c.is_empty()).map(|_| ()) },
    )
    .await;
    let bumps_before = bumps.load(Ordering::Relaxed);
    cp.restart_api_server(Duration::from_secs(5))
        .await
        .expect("kube-apiserver restarted");
    eprintln!("kube-apiserver restarted; manager pid {pid}");
    assert!(
        manager.try_wait().is_none(),
        "the manager exited when the API server went away:\n{}",
        manager.log_tail(40)
    );

    // Objects the manager has never seen: only a watch that came back finds them.
    stand_in::machines(&client, NS, "apifaults", &later, image_url, 4)
        .await
        .expect("machines created after the restart");

    // And a second outage while those are being provisioned.
    wait_for(
        "a claim by a machine created after the restart",
        Duration::from_secs(90),
        &manager,
        || async {
            claims(&client)
                .await?
                .values()
                .any(|m| m.starts_with("late-"))
                .then_some(())
        },
    )
    .await;
    cp.restart_api_server(Duration::from_secs(2))
        .await
        .expect("kube-apiserver restarted again");

    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    wait_for(
        "every machine provisioned by the same manager process",
        Duration::from_secs(150),
        &manager,
        || async {
            let list = machines.list(&ListParams::default()).await.ok()?.items;
            (list.len() == HOSTS && list.iter().all(provisioned)).then_some(())
        },
    )
    .await;
    writer.abort();
    dump.abort();

    assert!(
        manager.try_wait().is_none(),
        "the manager exited:\n{}",
        manager.log_tail(40)
    );
    assert_eq!(manager.pid(), pid);
    assert!(
        bumps.load(Ordering::Relaxed) > bumps_before,
        "the conflict writer made no write after the restart"
    );
    let claims = claims(&client).await.expect("listing hosts");
    assert_eq!(claims.len(), HOSTS, "{claims:?}");
    for (host, system) in hosts.iter().zip(&bmc.systems) {
        let s = bmc.system(&system.system_id).expect("a fake system");
        let consumer = claims.get(host).expect("every host claimed");
        assert_eq!(
            s.boots.len(),
            1,
            "{host} (consumer {consumer}) booted {} times: {:?}",
            s.boots.len(),
            s.boots
        );
        assert_eq!(
            s.boots[0].cd_image.as_deref(),
            Some(image_url(consumer).as_str()),
            "{host} booted another machine's image"
        );
    }
    eprintln!(
        "resilience_apiserver: {} conflicting writes, BMC requests {:?}",
        bumps.load(Ordering::Relaxed),
        bmc.requests()
    );
}

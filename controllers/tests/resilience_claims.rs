//! No double claim under contention and restarts (issue #9): 60 Beskar7Machines for 40 hosts,
//! two managers reconciling at once (leader election off), each killed and restarted at random
//! (seeded: the seed is printed, `BESKAR7_SEED` repeats the restart schedule). Throughout and
//! at the end: no machine holds two hosts, no host boots twice or boots another machine's image;
//! at the end exactly 40 are claimed and provisioned and the other 20 wait for a host.
//!
//! BMCs are the in-process fake (`beskar7_test::fake_bmc`), CAPI's objects are written directly
//! (no CAPI managers): the subject is the claim protocol, not the BMC or CAPI.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beskar7_api::{Beskar7Machine, PhysicalHost};
use beskar7_test::ControlPlane;
use beskar7_test::fake_bmc::{FakeBmc, stand_in};
use kube::api::{Api, ListParams};
use support::*;

const NS: &str = "default";
const HOSTS: usize = 40;
const MACHINES: usize = 60;
/// Restarts before the managers are left alone to converge.
const RESTARTS: usize = 10;

/// splitmix64: a seeded, dependency-free generator, good enough to pick restart times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn image_url(machine: &str) -> String {
    // Never fetched: the fake BMC records the URL, so a boot names the machine it was for.
    format!("http://images.invalid/{machine}.iso")
}

fn machine_of_image(url: &str) -> Option<&str> {
    url.strip_prefix("http://images.invalid/")?
        .strip_suffix(".iso")
}

/// Host -> consumer name, or the violation found.
async fn claims(client: &kube::Client) -> Result<BTreeMap<String, String>, String> {
    let hosts = Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing hosts: {e}"))?;
    let mut by_host = BTreeMap::new();
    let mut by_machine: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for h in hosts.items {
        let host = h.metadata.name.clone().unwrap_or_default();
        if let Some(c) = h.spec.consumer_ref {
            if let Some(other) = by_machine.insert(c.name.clone(), host.clone()) {
                problems.push(format!(
                    "machine {} holds two hosts: {other} and {host}",
                    c.name
                ));
            }
            by_host.insert(host, c.name);
        }
    }
    if problems.is_empty() {
        Ok(by_host)
    } else {
        Err(problems.join("; "))
    }
}

/// Boots seen by the BMC that break the invariant: a host booted twice, or booted the image of
/// a machine that is not (or no longer) its consumer.
fn bad_boots(bmc: &FakeBmc, hosts: &[String], claims: &BTreeMap<String, String>) -> Vec<String> {
    let mut bad = Vec::new();
    for (host, system) in hosts.iter().zip(&bmc.systems) {
        let s = bmc.system(&system.system_id).expect("a fake system");
        if s.boots.len() > 1 {
            bad.push(format!(
                "{host} booted {} times: {:?}",
                s.boots.len(),
                s.boots
            ));
        }
        for b in &s.boots {
            let booted = b.cd_image.as_deref().and_then(machine_of_image);
            if b.override_target.as_deref() != Some("Cd") || booted.is_none() {
                bad.push(format!("{host} booted without our CD override: {b:?}"));
            } else if booted != claims.get(host).map(String::as_str) {
                bad.push(format!(
                    "{host} booted {booted:?} but its consumer is {:?}",
                    claims.get(host)
                ));
            }
        }
    }
    bad
}

fn ready_reason(m: &Beskar7Machine) -> Option<&str> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}

fn provisioned(m: &Beskar7Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.initialization.as_ref()?.provisioned)
        == Some(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_restarted_at_random_never_double_claim() {
    beskar7_test::install_crypto_provider();
    let seed = std::env::var("BESKAR7_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("resilience_claims: seed {seed} (BESKAR7_SEED={seed} repeats its restart schedule)");
    let mut rng = Rng(seed);

    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client();
    let bmc = FakeBmc::builder(HOSTS).start().await.expect("fake BMC");
    let hosts = stand_in::enroll(&client, NS, &bmc, "host", 8)
        .await
        .expect("enrolling hosts");
    stand_in::cluster(&client, NS, "race")
        .await
        .expect("Cluster");
    let names: Vec<String> = (0..MACHINES).map(|i| format!("m-{i:02}")).collect();
    stand_in::machines(&client, NS, "race", &names, image_url, 8)
        .await
        .expect("Machines and Beskar7Machines");
    let dump = spawn_progress_dump(client.clone(), NS, Duration::from_secs(30));

    // Watch the invariant the whole time, not only at the end.
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (client, violations) = (client.clone(), violations.clone());
        tokio::spawn(async move {
            loop {
                if let Err(v) = claims(&client).await
                    && !v.starts_with("listing hosts")
                {
                    violations.lock().unwrap().push(v);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let leader_off = ["--leader-elect=false"];
    let mut managers = [
        Some(start_manager(&cp, &leader_off)),
        Some(start_manager(&cp, &leader_off)),
    ];
    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    let mut restarts = 0;
    while restarts < RESTARTS {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(4000))).await;
        let i = rng.below(2) as usize;
        // SIGKILL (ManagerProcess's drop): no graceful shutdown, as a crash or an eviction.
        managers[i] = None;
        tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
        managers[i] = Some(start_manager(&cp, &leader_off));
        restarts += 1;
        let list = machines.list(&ListParams::default()).await;
        let done = list
            .as_ref()
            .map_or(0, |l| l.items.iter().filter(|m| provisioned(m)).count());
        eprintln!("restart {restarts}: manager {i}; {done} machines provisioned");
    }

    let manager = managers[0].as_ref().expect("manager 0 runs");
    let (claimed, waiting) = eventually(
        "40 machines provisioned and 20 WaitingForHost",
        Duration::from_secs(150),
        Some(manager),
        || async {
            let list = machines.list(&ListParams::default()).await.ok()?.items;
            let done: Vec<String> = list
                .iter()
                .filter(|m| provisioned(m))
                .map(|m| m.metadata.name.clone().unwrap_or_default())
                .collect();
            let waiting = list
                .iter()
                .filter(|m| !provisioned(m) && ready_reason(m) == Some("WaitingForHost"))
                .count();
            (done.len() == HOSTS && waiting == MACHINES - HOSTS).then_some((done, waiting))
        },
    )
    .await;
    watcher.abort();
    dump.abort();

    let violations = violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    let final_claims = claims(&client)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(final_claims.len(), HOSTS, "seed {seed}: {final_claims:?}");
    let mut consumers: Vec<&String> = final_claims.values().collect();
    consumers.sort();
    let mut claimed_sorted = claimed.clone();
    claimed_sorted.sort();
    assert_eq!(
        consumers,
        claimed_sorted.iter().collect::<Vec<_>>(),
        "seed {seed}: the provisioned machines are exactly the consumers"
    );
    assert_eq!(waiting, MACHINES - HOSTS);
    // Each provisioned machine names the host that names it.
    for m in machines.list(&ListParams::default()).await.unwrap().items {
        let name = m.metadata.name.clone().unwrap_or_default();
        let host_ref = m
            .status
            .as_ref()
            .and_then(|s| s.host_ref.as_ref())
            .map(|r| r.name.clone());
        if provisioned(&m) {
            let host = host_ref.unwrap_or_else(|| panic!("seed {seed}: {name} has no hostRef"));
            assert_eq!(
                final_claims.get(&host),
                Some(&name),
                "seed {seed}: {name} points at {host}, whose consumer differs"
            );
        }
    }
    let bad = bad_boots(&bmc, &hosts, &final_claims);
    assert!(bad.is_empty(), "seed {seed}: {bad:?}");
    for (i, m) in managers.iter_mut().enumerate() {
        let m = m.as_mut().expect("both managers run");
        assert!(
            m.try_wait().is_none(),
            "seed {seed}: manager {i} exited:\n{}",
            m.log_tail(40)
        );
    }
    eprintln!(
        "resilience_claims: seed {seed}, {restarts} restarts, {} BMC requests ({:?})",
        bmc.requests().total,
        bmc.requests()
    );
}

//! Crash in the middle: the manager is SIGKILLed at random points while 10 machines provision
//! (and again while they are released), and restarted each time. Every BMC sits behind its own
//! recording proxy, so the invariants are checked on what the BMCs were actually told:
//!
//! - all machines reach Provisioned, each on its own host;
//! - every image inserted into a host is its claim's image (no stale or foreign media), and the
//!   emulator ends with exactly that image in the CD slot and the system On;
//! - no second power cycle: after a host's first power-on for its claim no power-off or restart
//!   reaches its BMC, and no power-on is sent once the BMC reported the system On;
//! - released hosts end Available, powered Off, with every slot empty, and receive no power-on.
//!
//! The kill points come from a seeded RNG: the seed is printed, and `BESKAR7_CRASH_SEED=<seed>`
//! replays the same schedule (the same delays; the manager's own timing still varies).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_test::bmc_proxy::{Fault, FaultRule, ProxyRecord};
use beskar7_test::boot_bridge::read_bmc;
use beskar7_test::{BmcLab, BmcProxy, ControlPlane};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use support::*;

const NS: &str = "default";
const CAPI: &str = "cluster.x-k8s.io";
const MACHINES: usize = 10;

/// xorshift64*: enough for a reproducible kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

fn seed() -> u64 {
    std::env::var("BESKAR7_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        .max(1)
}

fn describe(reqs: &[ProxyRecord]) -> String {
    reqs.iter()
        .filter(|r| r.method != "GET" || r.power_state.is_some())
        .map(|r| {
            format!(
                "  {:>7.3}s {} {} -> {:?}{}{}{}",
                r.at.as_secs_f64(),
                r.method,
                r.path.rsplit('/').next().unwrap_or(""),
                r.status,
                r.reset_type()
                    .map(|t| format!(" ResetType={t}"))
                    .unwrap_or_default(),
                r.inserted_image()
                    .map(|i| format!(" Image={i}"))
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

/// Enrols every lab system as `<prefix>-NN`, each behind its own recording proxy.
async fn enroll_behind_proxies(
    client: &kube::Client,
    lab: &BmcLab,
    prefix: &str,
) -> (Vec<String>, Vec<BmcProxy>) {
    let mut hosts = Vec::new();
    let mut proxies = Vec::new();
    for (i, system) in lab.systems.iter().enumerate() {
        let proxy = BmcProxy::start(lab).await.expect("BMC proxy");
        let name = format!("{prefix}-{i:02}");
        beskar7_test::fixtures::enroll_via_proxy(client, NS, &name, system, &proxy, &[])
            .await
            .expect("enrol through the proxy");
        proxies.push(proxy);
        hosts.push(name);
    }
    (hosts, proxies)
}

async fn wait_all_available(host_api: &Api<PhysicalHost>, n: usize, manager: &Manager) {
    eventually(
        "all hosts Available",
        Duration::from_secs(120),
        Some(manager),
        || async {
            let list = host_api.list(&ListParams::default()).await.ok()?.items;
            (list.len() == n
                && list
                    .iter()
                    .all(|h| h.status.as_ref().and_then(|s| s.state) == Some(HostState::Available)))
            .then_some(())
        },
    )
    .await;
}

/// A kill can land while a request is in flight: the BMC carried it out but the proxy logged no
/// answer (status None). Such a request counts as sent; the emulator's own view says whether it
/// took effect.
fn sent(r: &ProxyRecord) -> bool {
    r.succeeded() || r.status.is_none()
}

/// Power: after the first power-on nothing powers the system off or restarts it, and no power-on
/// follows once the BMC said On.
fn assert_powered_on_once(log: &[ProxyRecord], ctx: &dyn Fn() -> String) {
    let first_on = log
        .iter()
        .position(|r| sent(r) && r.reset_type() == Some("On"))
        .unwrap_or_else(|| panic!("never powered on; {}", ctx()));
    let mut seen_on = false;
    for r in &log[first_on + 1..] {
        if r.power_state.as_deref() == Some("On") {
            seen_on = true;
        }
        match r.reset_type() {
            Some("On") => assert!(
                !seen_on,
                "power-on sent after the BMC reported On (seq {}); {}",
                r.seq,
                ctx()
            ),
            Some(other) => panic!(
                "second power cycle: {other} after the claim's power-on (seq {}); {}",
                r.seq,
                ctx()
            ),
            None => {}
        }
    }
}

/// Kills (SIGKILL: `Child::kill`) and restarts the manager at random points until `done`
/// holds or `timeout` passes; at most `max_kills` kills. Returns the running manager.
async fn crash_loop<F, Fut>(
    cp: &ControlPlane,
    mut manager: Manager,
    rng: &mut Rng,
    max_kills: usize,
    timeout: Duration,
    what: &str,
    mut done: F,
) -> Manager
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut kills = 0;
    let mut next_kill = Instant::now() + rng.millis(300, 5000);
    loop {
        if done().await {
            eprintln!("{what}: done after {kills} kills in {:?}", start.elapsed());
            return manager;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: not done after {timeout:?} ({kills} kills)\nmanager log:\n{}",
                manager.log_tail(80)
            );
        }
        if kills < max_kills && Instant::now() >= next_kill {
            let pid = manager.pid();
            // Dropping the process handle SIGKILLs the manager (no graceful shutdown) and waits.
            drop(manager);
            kills += 1;
            eprintln!(
                "{what}: SIGKILLed manager pid {pid} at {:?} (kill {kills})",
                start.elapsed()
            );
            manager = start_manager(cp, &[]);
            next_kill = Instant::now() + rng.millis(300, 6000);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_killed_at_random_points_never_double_boots_or_leaves_stale_media() {
    beskar7_test::install_crypto_provider();
    let seed = seed();
    println!("crash schedule seed: {seed} (replay with BESKAR7_CRASH_SEED={seed})");
    eprintln!("crash schedule seed: {seed} (replay with BESKAR7_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    let lab = BmcLab::start(MACHINES).await.expect("BMC lab");
    let client = cp.client();
    let (hosts, proxies) = enroll_behind_proxies(&client, &lab, "server").await;
    let images: Vec<String> = (0..MACHINES)
        .map(|i| {
            lab.add_image(
                &format!("talos-m{i:02}.iso"),
                format!("PreBakedISO image of machine m-{i:02}").as_bytes(),
            )
            .unwrap()
        })
        .collect();
    let host_api: Api<PhysicalHost> = Api::namespaced(client.clone(), NS);
    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);

    let manager = start_manager(&cp, &[]);
    wait_all_available(&host_api, MACHINES, &manager).await;
    let _dump = spawn_progress_dump(client.clone(), NS, Duration::from_secs(60));

    create_cluster(&client, NS, "crash").await;
    for (i, image) in images.iter().enumerate() {
        let spec = serde_json::json!({"osFamily": "talos", "imageURL": image, "provisioningMode": "PreBakedISO"});
        create_machine(&client, NS, "crash", &format!("m-{i:02}"), spec, "unused").await;
    }

    // Provisioning under random SIGKILLs.
    let manager = crash_loop(
        &cp,
        manager,
        &mut rng,
        8,
        Duration::from_secs(300),
        "provisioning",
        || async {
            let Ok(list) = machines.list(&ListParams::default()).await else {
                return false;
            };
            list.items.len() == MACHINES
                && list.items.iter().all(|m| {
                    m.status
                        .as_ref()
                        .and_then(|s| s.initialization.as_ref()?.provisioned)
                        == Some(true)
                })
        },
    )
    .await;

    // Which machine has which host; the machine's image is its claim's image.
    let mut claim_of: BTreeMap<usize, usize> = BTreeMap::new(); // host index -> machine index
    for m in machines.list(&ListParams::default()).await.unwrap().items {
        let name = m.metadata.name.clone().unwrap();
        let mi: usize = name.trim_start_matches("m-").parse().unwrap();
        let host = m
            .status
            .as_ref()
            .unwrap()
            .host_ref
            .as_ref()
            .unwrap()
            .name
            .clone();
        let hi = hosts.iter().position(|h| *h == host).unwrap();
        if let Some(other) = claim_of.insert(hi, mi) {
            panic!("host {host} holds two machines: m-{other:02} and {name}");
        }
    }
    assert_eq!(claim_of.len(), MACHINES, "every machine on its own host");

    let mut release_from = Vec::new();
    for (hi, proxy) in proxies.iter().enumerate() {
        let mi = claim_of[&hi];
        let want = &images[mi];
        let log = proxy.requests();
        let ctx = || format!("host {} (m-{mi:02}):\n{}", hosts[hi], describe(&log));
        let h = host_api.get(&hosts[hi]).await.unwrap();
        let st = h.status.clone().unwrap();
        assert_eq!(st.state, Some(HostState::Provisioned), "{}", ctx());
        assert!(
            st.boot_issued_for
                .as_deref()
                .is_some_and(|b| b.contains(&format!("m-{mi:02}"))),
            "bootIssuedFor {:?}; {}",
            st.boot_issued_for,
            ctx()
        );
        // Media: only this claim's image was ever inserted.
        for r in log.iter().filter(|r| r.inserted_image().is_some()) {
            assert_eq!(r.inserted_image(), Some(want.as_str()), "{}", ctx());
        }
        assert!(
            log.iter()
                .any(|r| sent(r) && r.inserted_image() == Some(want.as_str())),
            "the image was never inserted; {}",
            ctx()
        );
        assert_powered_on_once(&log, &ctx);
        let ons = log.iter().filter(|r| r.reset_type() == Some("On")).count();
        eprintln!(
            "{}: m-{mi:02}, {} requests, {ons} power-on POSTs",
            hosts[hi],
            log.len()
        );
        // The emulator's own view.
        let view = read_bmc(&lab.systems[hi], &lab.ca_pem).await.unwrap();
        assert_eq!(view.power.as_deref(), Some("On"), "{}", ctx());
        let images_now: Vec<&str> = view.inserted().filter_map(|s| s.image.as_deref()).collect();
        assert_eq!(images_now, vec![want.as_str()], "{}", ctx());
        release_from.push(log.last().map(|r| r.seq + 1).unwrap_or(0));
    }

    // Release under random SIGKILLs.
    let capi_machines = dynamic_api(&client, NS, CAPI, "v1beta2", "Machine");
    for i in 0..MACHINES {
        capi_machines
            .delete(&format!("m-{i:02}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let manager = crash_loop(
        &cp,
        manager,
        &mut rng,
        4,
        Duration::from_secs(240),
        "release",
        || async {
            let Ok(list) = host_api.list(&ListParams::default()).await else {
                return false;
            };
            list.items.iter().all(|h| {
                h.spec.consumer_ref.is_none()
                    && h.status.as_ref().and_then(|s| s.state) == Some(HostState::Available)
            })
        },
    )
    .await;

    for (hi, proxy) in proxies.iter().enumerate() {
        let log: Vec<ProxyRecord> = proxy
            .requests()
            .into_iter()
            .filter(|r| r.seq >= release_from[hi])
            .collect();
        let ctx = || format!("host {} release:\n{}", hosts[hi], describe(&log));
        let h = host_api.get(&hosts[hi]).await.unwrap();
        let st = h.status.clone().unwrap();
        assert_eq!(st.state, Some(HostState::Available), "{}", ctx());
        assert_eq!(st.boot_issued_for, None, "{}", ctx());
        assert!(
            !log.iter().any(|r| r.reset_type() == Some("On")),
            "a released host was powered on; {}",
            ctx()
        );
        // An eject whose answer never came back because the manager was killed while it was in
        // flight (no fault injected) still reached the BMC; the BMC's own view below says
        // whether the media is gone.
        assert!(
            log.iter()
                .any(|r| r.is_eject()
                    && (r.succeeded() || (r.fault.is_none() && r.status.is_none()))),
            "media never ejected; {}",
            ctx()
        );
        let view = read_bmc(&lab.systems[hi], &lab.ca_pem).await.unwrap();
        assert_eq!(view.power.as_deref(), Some("Off"), "{}", ctx());
        assert_eq!(
            view.inserted().count(),
            0,
            "media left in {view:?}; {}",
            ctx()
        );
    }
    drop(manager);
}

/// BootstrapData mode: the manager serves each machine's patched boot ISO and its config volume
/// (the CAPI bootstrap data) itself, and the BMC fetches them while it inserts. The manager is
/// SIGKILLed while those inserts are in flight and restarted as a container is (same flags,
/// ports, token key). The URLs it serves again are the same ones: every insert any BMC was
/// sent is of its claim's final URLs, they still serve with that machine's bootstrap data and
/// no other's, and nothing is powered on twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_while_the_bmc_fetches_keep_the_served_urls_and_boot_once() {
    const N: usize = 3;
    const KILLS: usize = 3;
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    let lab = BmcLab::start(N).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let iso = beskar7_test::fixtures::build_test_iso(work.path(), "/boot/grub/grub.cfg").unwrap();
    let image_url = lab.add_image("kairos.iso", &iso).unwrap();
    let (hosts, proxies) = enroll_behind_proxies(&client, &lab, "fetch").await;
    for proxy in &proxies {
        // The first insert waits before it reaches the BMC: a window to kill the manager in.
        proxy.inject(
            FaultRule::times(Fault::Stall(Duration::from_secs(3)), 1)
                .method("POST")
                .path_contains("InsertMedia"),
        );
    }
    let host_api: Api<PhysicalHost> = Api::namespaced(client.clone(), NS);
    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    let mut manager = start_manager(&cp, &[]);
    wait_all_available(&host_api, N, &manager).await;

    create_cluster(&client, NS, "fetch").await;
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS);
    let marker = |mi: usize| format!("join-token-of-m-{mi:02}");
    for mi in 0..N {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("m-{mi:02}-bootstrap")},
                    "stringData": {
                        "value": format!("#cloud-config\nruncmd: [echo {}]\n", marker(mi)),
                        "format": "cloud-config",
                    },
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        let spec = serde_json::json!({"osFamily": "kairos", "imageURL": image_url});
        let name = format!("m-{mi:02}");
        create_machine(
            &client,
            NS,
            "fetch",
            &name,
            spec,
            &format!("{name}-bootstrap"),
        )
        .await;
    }

    // Kill whenever an insert is in flight (each seen once), at most KILLS times.
    let start = Instant::now();
    let mut killed_at: Vec<(usize, u64)> = Vec::new();
    loop {
        let provisioned = machines.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.len() == N
                && l.items.iter().all(|m| {
                    m.status
                        .as_ref()
                        .and_then(|s| s.initialization.as_ref()?.provisioned)
                        == Some(true)
                })
        });
        if provisioned {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not provisioned after 300 s ({} kills)\nmanager log:\n{}",
            killed_at.len(),
            manager.log_tail(80)
        );
        if killed_at.len() < KILLS {
            let in_flight = proxies.iter().enumerate().find_map(|(hi, p)| {
                p.requests()
                    .into_iter()
                    .find(|r| {
                        r.inserted_image().is_some()
                            && r.status.is_none()
                            && !killed_at.contains(&(hi, r.seq))
                    })
                    .map(|r| (hi, r.seq))
            });
            if let Some(at) = in_flight {
                eprintln!("SIGKILL while {} inserts (seq {})", hosts[at.0], at.1);
                manager.restart().expect("manager restarted");
                killed_at.push(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !killed_at.is_empty(),
        "no kill landed while an insert was in flight: the test proved nothing"
    );

    let mut seen_markers = Vec::new();
    for m in machines.list(&ListParams::default()).await.unwrap().items {
        let name = m.metadata.name.clone().unwrap();
        let mi: usize = name.trim_start_matches("m-").parse().unwrap();
        let host = m.status.unwrap().host_ref.unwrap().name;
        let hi = hosts.iter().position(|h| *h == host).unwrap();
        let log = proxies[hi].requests();
        let ctx = || format!("host {host} ({name}):\n{}", describe(&log));
        let view = read_bmc(&lab.systems[hi], &lab.ca_pem).await.unwrap();
        assert_eq!(view.power.as_deref(), Some("On"), "{}", ctx());
        let now: Vec<String> = view.inserted().filter_map(|s| s.image.clone()).collect();
        assert!(
            now.iter().any(|u| u.ends_with("/boot.iso")) && now.len() == 2,
            "boot ISO and config volume inserted: {now:?}; {}",
            ctx()
        );
        // Every insert the BMC was ever sent, before and after the kills, is of these URLs.
        for r in log.iter().filter(|r| r.inserted_image().is_some()) {
            let url = r.inserted_image().unwrap();
            assert!(
                now.iter().any(|u| u == url),
                "{url} inserted, but the claim is served under {now:?}; {}",
                ctx()
            );
        }
        for url in &now {
            let r = reqwest::get(url).await.unwrap();
            assert_eq!(r.status(), 200, "{url} no longer served; {}", ctx());
            let bytes = r.bytes().await.unwrap();
            let has = |m: &str| bytes.windows(m.len()).any(|w| w == m.as_bytes());
            if !url.ends_with("/boot.iso") {
                assert!(has(&marker(mi)), "{url} lacks {name}'s bootstrap data");
                for other in (0..N).filter(|o| *o != mi) {
                    assert!(!has(&marker(other)), "{url} holds m-{other:02}'s data");
                }
                seen_markers.push(mi);
            }
        }
        assert_powered_on_once(&log, &ctx);
    }
    seen_markers.sort();
    assert_eq!(seen_markers, (0..N).collect::<Vec<_>>());
    eprintln!("kills at inserts in flight: {killed_at:?}");
}

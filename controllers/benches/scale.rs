//! Scale (issue #15, DESIGN.md section 8): N PhysicalHosts and N Beskar7Machines in a local
//! control plane, BMCs answered by the in-process fake BMC (one listener per host) so the BMC is
//! not the bottleneck.
//!
//! Everything is created before the manager starts: hosts and their credential Secrets, a
//! Cluster whose infrastructure is provisioned, CAPI Machines with bootstrap data Secrets
//! owning **BootstrapData** Beskar7Machines (Kairos: the manager renders each machine's
//! configuration, builds its config volume, registers its artifacts under its token and patches
//! the ISO, served once from a loopback HTTP server). No CAPI managers run. Then
//! `beskar7 manager` (this bench's release build) starts cold with the **released defaults**
//! (refresh interval, concurrency, `info` logging) and the bench measures until every
//! Beskar7Machine reports `initialization.provisioned`. Per size N:
//!
//! - `scale_<n>_reconcile_s`: manager spawn to all provisioned; `scale_<n>_ms_per_host`;
//! - `scale_<n>_ready_ms`: manager spawn to `/readyz` answering 200 (its caches synced);
//! - `scale_<n>_rss_mib`: the manager's peak resident memory (`VmHWM`), and `_rss_kib_per_host`;
//! - `scale_<n>_api_requests_per_machine`: requests the API server counted
//!   (`apiserver_request_total`) during the run, minus the bench's own, per machine; the largest
//!   (verb, resource) shares are printed under it;
//! - `scale_<n>_bmc_requests_per_host`: requests the fake BMCs received, per host.
//!
//! After the size given by `BESKAR7_STEADY_AT` (default 1000) has provisioned, the bench keeps
//! the manager idle for `BESKAR7_STEADY_S` seconds (default 600; 0 skips) and prints
//! `steady_bmc_requests_per_host_min` and `steady_api_requests_per_host_min`.
//!
//! Sharding (`BESKAR7_SHARD_HOSTS`, default 500; 0 skips): two managers, each with its own
//! `--watch-filter` and leader election on, reconcile 2 x that many hosts side by side;
//! `shard_<i>_reconcile_s` and `shard_<i>_rss_mib` per manager, and the hosts each touched.
//!
//! No assertion on any figure. Run: `cargo bench -p beskar7-controllers --bench scale` (needs
//! `make testbin`). `BESKAR7_SCALE_N` is a comma-separated list of sizes (default
//! `250,1000,3000`), `BESKAR7_SCALE_TIMEOUT_S` the limit per size (default 900).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use beskar7_api::Beskar7Machine;
use beskar7_test::fake_bmc::{FakeBmc, stand_in};
use beskar7_test::{ControlPlane, ManagerProcess};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};

const NS: &str = "default";
const WATCH_FILTER_LABEL: &str = "cluster.x-k8s.io/watch-filter";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `apiserver_request_total` summed per (verb, resource), and the bench's own requests'
/// client label (`scale-bench`) apart: the API server cannot tell clients apart, so the bench
/// counts its own calls.
async fn api_requests(client: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut by = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let sub = label("subresource");
        let resource = if sub.is_empty() {
            label("resource")
        } else {
            format!("{}/{sub}", label("resource"))
        };
        *by.entry(format!("{} {resource}", label("verb")))
            .or_insert(0.0) += n;
    }
    Ok(by)
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn provisioned(m: &Beskar7Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.initialization.as_ref()?.provisioned)
        == Some(true)
}

/// Serves one ISO at `/<name>` on loopback, as an OS mirror would; returns its URL.
async fn serve_image(name: &str, iso: Vec<u8>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/{name}", listener.local_addr()?);
    let body = bytes::Bytes::from(iso);
    let app = axum::Router::new().route(
        &format!("/{name}"),
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// Bootstrap Secrets, CAPI Machines and Kairos BootstrapData Beskar7Machines, `labels` on each.
async fn create_machines(
    client: &kube::Client,
    names: &[String],
    image_url: &str,
    labels: serde_json::Value,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names)
        .map(|name| {
            let (secrets, labels) = (secrets.clone(), labels.clone());
            async move {
                let secret: Secret = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("{name}-bootstrap"), "labels": labels},
                    "stringData": {
                        "value": format!(
                            "#cloud-config\nhostname: {name}\nusers:\n- name: kairos\n  \
                             passwd: kairos\nk3s:\n  enabled: true\n  args: [--node-name={name}]\n"
                        ),
                        "format": "cloud-config",
                    },
                }))?;
                secrets.create(&PostParams::default(), &secret).await?;
                let spec = serde_json::json!({
                    "osFamily": "kairos", "imageURL": image_url, "provisioningMode": "BootstrapData",
                });
                stand_in::machine_with(
                    client,
                    NS,
                    "scale",
                    name,
                    serde_json::json!({}),
                    spec,
                    labels,
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A control plane with `n` hosts and `n` machines (`shards` equal label groups, 0: none),
/// everything created, no manager yet.
struct World {
    cp: ControlPlane,
    bmc: FakeBmc,
    _work: tempfile::TempDir,
}

async fn world(n: usize, shards: usize) -> anyhow::Result<World> {
    let cp = ControlPlane::start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = cp.client();
    let bmc = FakeBmc::builder(n).start().await.context("fake BMC")?;
    let work = tempfile::tempdir()?;
    let iso = beskar7_test::fixtures::build_test_iso(work.path(), "/boot/grub/grub.cfg")?;
    let image_url = serve_image("kairos.iso", iso).await?;
    let setup = Instant::now();
    stand_in::cluster(&client, NS, "scale")
        .await
        .context("Cluster")?;
    let groups = shards.max(1);
    let per = n / groups;
    for g in 0..groups {
        let range = g * per..if g + 1 == groups { n } else { (g + 1) * per };
        let shard = format!("shard-{g}");
        let labels: Vec<(&str, &str)> = if shards > 0 {
            vec![(WATCH_FILTER_LABEL, shard.as_str())]
        } else {
            vec![]
        };
        stand_in::enroll_range(&client, NS, &bmc, "host", range.clone(), &labels, 16)
            .await
            .context("enrolling hosts")?;
        let names: Vec<String> = range.map(|i| format!("m-{i:04}")).collect();
        let machine_labels = if shards > 0 {
            serde_json::json!({WATCH_FILTER_LABEL: shard})
        } else {
            serde_json::json!({})
        };
        create_machines(&client, &names, &image_url, machine_labels)
            .await
            .context("Machines")?;
    }
    println!(
        "created {n} hosts (+Secrets) and {n} Machines (+bootstrap Secrets, Beskar7Machines) in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    Ok(World {
        cp,
        bmc,
        _work: work,
    })
}

/// Polls `/readyz` until it answers 200; the time since `start`.
async fn wait_ready(health: String, start: Instant) -> Option<Duration> {
    let http = reqwest::Client::new();
    let url = format!("{health}/readyz");
    while start.elapsed() < Duration::from_secs(900) {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until the machines whose names pass `mine` are all provisioned, sampling each
/// manager's peak RSS; returns the time each group of `managers` took. `own` counts the bench's
/// API requests.
async fn wait_provisioned(
    client: &kube::Client,
    managers: &mut [(&mut ManagerProcess, String)],
    start: Instant,
    timeout: Duration,
    own: &mut f64,
    peaks: &mut [u64],
) -> anyhow::Result<Vec<Duration>> {
    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    let mut done_at: Vec<Option<Duration>> = vec![None; managers.len()];
    let mut last_report = Instant::now();
    loop {
        for (i, (m, _)) in managers.iter_mut().enumerate() {
            if let Some(st) = m.try_wait() {
                bail!("manager {i} exited ({st}):\n{}", m.log_tail(40));
            }
            peaks[i] = peaks[i].max(peak_rss_kib(m.pid()).unwrap_or(0));
        }
        *own += 1.0;
        let list = machines.list(&ListParams::default()).await?;
        let mut summary = Vec::new();
        for (i, (_, shard)) in managers.iter().enumerate() {
            let group: Vec<&Beskar7Machine> = list
                .items
                .iter()
                .filter(|m| shard.is_empty() || m.labels().get(WATCH_FILTER_LABEL) == Some(shard))
                .collect();
            let done = group.iter().filter(|m| provisioned(m)).count();
            if done == group.len() && done_at[i].is_none() {
                done_at[i] = Some(start.elapsed());
            }
            summary.push(format!("{done}/{}", group.len()));
        }
        if done_at.iter().all(Option::is_some) {
            return Ok(done_at.into_iter().flatten().collect());
        }
        if start.elapsed() > timeout {
            bail!(
                "only {summary:?} provisioned after {timeout:?}:\n{}",
                managers[0].0.log_tail(40)
            );
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            println!(
                "{:>5.0} s: {summary:?} provisioned, RSS peaks {:?} MiB",
                start.elapsed().as_secs_f64(),
                peaks.iter().map(|p| p / 1024).collect::<Vec<_>>()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

async fn size_run(
    binary: &Path,
    n: usize,
    timeout: Duration,
    steady: Option<Duration>,
) -> anyhow::Result<()> {
    let w = world(n, 0).await?;
    let client = w.cp.client();
    let api_before = api_requests(&client).await?;
    let bmc_before = w.bmc.requests().total;
    let mut own = 1.0; // the scrape above is counted after it was read
    let start = Instant::now();
    let mut manager = ManagerProcess::start_with_defaults(binary, &w.cp, &[])?;
    let ready = tokio::spawn(wait_ready(manager.health.clone(), start));
    let mut peaks = [0u64];
    let done = wait_provisioned(
        &client,
        &mut [(&mut manager, String::new())],
        start,
        timeout,
        &mut own,
        &mut peaks,
    )
    .await?[0];
    let peak_kib = peaks[0].max(peak_rss_kib(manager.pid()).unwrap_or(0));
    let api_after = api_requests(&client).await?;
    let by = delta(&api_after, &api_before);
    let api: f64 = by.values().sum::<f64>() - own;
    let bmc_requests = w.bmc.requests().total - bmc_before;
    let mut routes: Vec<(String, u64)> = w.bmc.requests_by_route().into_iter().collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.1));
    let ready = if ready.is_finished() {
        ready.await.ok().flatten()
    } else {
        ready.abort();
        println!(
            "the manager was not ready when every machine was provisioned:\n{}",
            manager.log_tail(30)
        );
        None
    };
    let per = |v: f64| v / n as f64;
    println!("BENCH scale_{n}_reconcile_s {:.1} s", done.as_secs_f64());
    println!(
        "BENCH scale_{n}_ms_per_host {:.1} ms",
        done.as_secs_f64() * 1000.0 / n as f64
    );
    if let Some(r) = ready {
        println!(
            "BENCH scale_{n}_ready_ms {:.0} ms",
            r.as_secs_f64() * 1000.0
        );
    }
    println!(
        "BENCH scale_{n}_rss_mib {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!(
        "BENCH scale_{n}_rss_kib_per_host {:.1} KiB",
        per(peak_kib as f64)
    );
    println!(
        "BENCH scale_{n}_api_requests_per_machine {:.1} requests",
        per(api)
    );
    let mut shares: Vec<(&String, &f64)> = by.iter().collect();
    shares.sort_by(|a, b| b.1.total_cmp(a.1));
    for (what, count) in shares.iter().take(10) {
        println!("    {:>6.2} per machine: {what}", per(**count));
    }
    println!(
        "BENCH scale_{n}_bmc_requests_per_host {:.1} requests",
        per(bmc_requests as f64)
    );
    for (route, count) in routes.iter().take(10) {
        println!("    {:>6.2} per host: {route}", per(*count as f64));
    }
    if let Some(idle) = steady {
        let api0 = api_requests(&client).await?;
        let bmc0 = w.bmc.requests().total;
        println!("idle for {} s to measure the steady state", idle.as_secs());
        tokio::time::sleep(idle).await;
        if let Some(st) = manager.try_wait() {
            bail!("manager exited while idle ({st})");
        }
        let api1 = api_requests(&client).await?;
        let minutes = idle.as_secs_f64() / 60.0;
        let api_idle: f64 = delta(&api1, &api0).values().sum::<f64>() - 1.0;
        let bmc_idle = w.bmc.requests().total - bmc0;
        println!(
            "BENCH steady_bmc_requests_per_host_min {:.2} requests",
            bmc_idle as f64 / n as f64 / minutes
        );
        println!(
            "BENCH steady_api_requests_per_host_min {:.2} requests",
            api_idle / n as f64 / minutes
        );
    }
    drop(manager);
    Ok(())
}

/// Two managers, each with its own `--watch-filter` and its own leader election, over
/// `2 * per_shard` hosts and machines labelled half and half.
async fn shard_run(binary: &Path, per_shard: usize, timeout: Duration) -> anyhow::Result<()> {
    let n = per_shard * 2;
    let w = world(n, 2).await?;
    let client = w.cp.client();
    let mut own = 0.0;
    let start = Instant::now();
    let mut a = ManagerProcess::start_with_defaults(
        binary,
        &w.cp,
        &[
            "--watch-filter=shard-0",
            "--leader-elect=true",
            "--leader-election-namespace=default",
        ],
    )?;
    let mut b = ManagerProcess::start_with_defaults(
        binary,
        &w.cp,
        &[
            "--watch-filter=shard-1",
            "--leader-elect=true",
            "--leader-election-namespace=default",
        ],
    )?;
    let mut peaks = [0u64, 0u64];
    let done = wait_provisioned(
        &client,
        &mut [(&mut a, "shard-0".into()), (&mut b, "shard-1".into())],
        start,
        timeout,
        &mut own,
        &mut peaks,
    )
    .await?;
    for (i, m) in [&a, &b].into_iter().enumerate() {
        let peak = peaks[i].max(peak_rss_kib(m.pid()).unwrap_or(0));
        println!(
            "BENCH shard_{i}_of_2x{per_shard}_reconcile_s {:.1} s",
            done[i].as_secs_f64()
        );
        println!(
            "BENCH shard_{i}_of_2x{per_shard}_rss_mib {:.1} MiB",
            peak as f64 / 1024.0
        );
    }
    // Each manager talked only to its own shard's BMCs: the other half's systems saw none of
    // its requests (the fake BMC counts per system).
    let touched = |range: std::ops::Range<usize>| {
        range
            .filter(|i| {
                w.bmc
                    .system(&format!("node-{i:04}"))
                    .is_some_and(|s| s.power_on_requests > 0)
            })
            .count()
    };
    println!(
        "shard hosts powered on: shard-0 {}/{per_shard}, shard-1 {}/{per_shard}",
        touched(0..per_shard),
        touched(per_shard..n)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    beskar7_test::install_crypto_provider();
    let sizes: Vec<usize> = std::env::var("BESKAR7_SCALE_N")
        .unwrap_or_else(|_| "250,1000,3000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let timeout = Duration::from_secs(env_or("BESKAR7_SCALE_TIMEOUT_S", 900));
    let steady_at = env_or("BESKAR7_STEADY_AT", 1000) as usize;
    let steady = Duration::from_secs(env_or("BESKAR7_STEADY_S", 600));
    let per_shard = env_or("BESKAR7_SHARD_HOSTS", 500) as usize;
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_beskar7"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut failed = false;
        for n in sizes {
            let idle = (n == steady_at && !steady.is_zero()).then_some(steady);
            if let Err(e) = size_run(&binary, n, timeout, idle).await {
                println!("scale {n}: {e:#}");
                failed = true;
            }
        }
        if per_shard > 0
            && let Err(e) = shard_run(&binary, per_shard, timeout).await
        {
            println!("shards 2 x {per_shard}: {e:#}");
            failed = true;
        }
        if failed {
            bail!("a scale run failed");
        }
        Ok(())
    })
}

//! Scale (issue #9, DESIGN.md section 8): 1000 PhysicalHosts and 1000 Beskar7Machines in a
//! local control plane, BMCs answered by the in-process fake BMC (one listener per host) so the
//! BMC is not the bottleneck.
//!
//! Everything is created before the manager starts (hosts, their credential Secrets, a Cluster
//! whose infrastructure is provisioned, CAPI Machines owning PreBakedISO Beskar7Machines; no
//! CAPI managers run). Then `beskar7 manager` (this bench's release build) starts cold, and the
//! bench measures until every Beskar7Machine reports `initialization.provisioned`:
//!
//! - `BENCH scale_<n>_reconcile_s`: manager spawn to all provisioned;
//! - `BENCH scale_<n>_rss_mib`: the manager's peak resident memory (`VmHWM`);
//! - `BENCH scale_<n>_api_requests`: requests the API server counted (`apiserver_request_total`)
//!   during the run, minus the bench's own polling;
//! - `BENCH scale_<n>_bmc_requests`: requests the fake BMCs received.
//!
//! No assertion on any figure (DESIGN.md section 8: under 64 MiB, seconds bounded by the API
//! server). Run: `cargo bench -p beskar7-controllers --bench scale` (needs `make testbin`).
//! `BESKAR7_SCALE_N` changes the count (default 1000), `BESKAR7_SCALE_TIMEOUT_S` the limit
//! (default 900).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use beskar7_api::Beskar7Machine;
use beskar7_test::fake_bmc::{FakeBmc, stand_in};
use beskar7_test::{ControlPlane, ManagerProcess};
use kube::api::{Api, ListParams};

const NS: &str = "default";

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

/// Sum of `apiserver_request_total` over all labels.
async fn api_requests(client: &kube::Client) -> anyhow::Result<f64> {
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn provisioned(m: &Beskar7Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.initialization.as_ref()?.provisioned)
        == Some(true)
}

fn main() -> anyhow::Result<()> {
    beskar7_test::install_crypto_provider();
    let n = env_or("BESKAR7_SCALE_N", 1000) as usize;
    let timeout = Duration::from_secs(env_or("BESKAR7_SCALE_TIMEOUT_S", 900));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_beskar7"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cp = ControlPlane::start()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = cp.client();
        let bmc = FakeBmc::builder(n).start().await.context("fake BMC")?;
        let setup = Instant::now();
        stand_in::enroll(&client, NS, &bmc, "host", 16)
            .await
            .context("enrolling hosts")?;
        stand_in::cluster(&client, NS, "scale")
            .await
            .context("Cluster")?;
        let names: Vec<String> = (0..n).map(|i| format!("m-{i:04}")).collect();
        stand_in::machines(
            &client,
            NS,
            "scale",
            &names,
            |m| format!("http://images.invalid/{m}.iso"),
            16,
        )
        .await
        .context("Machines")?;
        println!(
            "created {n} hosts (+Secrets) and {n} Machines (+Beskar7Machines) in {:.1} s",
            setup.elapsed().as_secs_f64()
        );

        let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
        let api_before = api_requests(&client).await?;
        let bmc_before = bmc.requests().total;
        let mut own_requests = 1.0; // the scrape above is counted after it was read
        let start = Instant::now();
        let mut manager = ManagerProcess::start(&binary, &cp, &[])?;
        let pid = manager.pid();
        let mut peak_kib = 0;
        let mut last_report = Instant::now();
        let done = loop {
            if let Some(st) = manager.try_wait() {
                bail!("manager exited ({st}):\n{}", manager.log_tail(40));
            }
            peak_kib = peak_kib.max(peak_rss_kib(pid).unwrap_or(0));
            own_requests += 1.0;
            let list = machines.list(&ListParams::default()).await?;
            let done = list.items.iter().filter(|m| provisioned(m)).count();
            if done == n {
                break start.elapsed();
            }
            if start.elapsed() > timeout {
                bail!(
                    "only {done}/{n} provisioned after {timeout:?}:\n{}",
                    manager.log_tail(40)
                );
            }
            if last_report.elapsed() > Duration::from_secs(15) {
                println!(
                    "{:>5.0} s: {done}/{n} provisioned, manager RSS peak {} MiB",
                    start.elapsed().as_secs_f64(),
                    peak_kib / 1024
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        };
        peak_kib = peak_kib.max(peak_rss_kib(pid).unwrap_or(0));
        let api = api_requests(&client).await? - api_before - own_requests;
        let bmc_requests = bmc.requests().total - bmc_before;
        println!("BENCH scale_{n}_reconcile_s {:.1} s", done.as_secs_f64());
        println!(
            "BENCH scale_{n}_rss_mib {:.1} MiB",
            peak_kib as f64 / 1024.0
        );
        println!("BENCH scale_{n}_api_requests {api:.0} requests");
        println!("BENCH scale_{n}_bmc_requests {bmc_requests} requests");
        Ok(())
    })
}

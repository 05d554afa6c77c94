//! The manager binary: start-to-ready time and size.
//!
//! Starts `beskar7 manager` (the binary cargo built for this bench, i.e. the release profile)
//! against a local [`ControlPlane`] several times and measures, from the spawn to the first
//! `200` of its readiness probe (`/readyz`), polled every millisecond. Prints
//! `BENCH manager_ready_ms` (median of the starts) and `BENCH binary_size_mib` (the size of that
//! binary; the release profile strips it). No assertion on any figure.
//!
//! Run: `cargo bench -p beskar7-controllers --bench manager` (needs `make testbin`).
//! `BESKAR7_BENCH_STARTS` sets the number of starts (default 7).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use beskar7_test::{ControlPlane, ManagerProcess};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Whether the ELF file has a symbol table (not stripped).
fn has_symtab(bytes: &[u8]) -> bool {
    bytes.windows(8).any(|w| w == b".symtab\0")
}

fn main() -> anyhow::Result<()> {
    beskar7_test::install_crypto_provider();
    let starts: usize = std::env::var("BESKAR7_BENCH_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
        .max(1);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_beskar7"));
    let bytes = std::fs::read(&binary).with_context(|| format!("{}", binary.display()))?;
    let size_mib = bytes.len() as f64 / (1 << 20) as f64;
    println!(
        "binary {}: {} bytes, {}",
        binary.display(),
        bytes.len(),
        if has_symtab(&bytes) {
            "with symbols"
        } else {
            "stripped"
        }
    );
    drop(bytes);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut ready_ms = rt.block_on(async {
        let cp = ControlPlane::start()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut ready_ms = Vec::new();
        // one start not counted: page cache, the API server's first requests
        for i in 0..=starts {
            let t = Instant::now();
            let mut m = ManagerProcess::start(&binary, &cp, &[])?;
            let readyz = format!("{}/readyz", m.health);
            loop {
                if let Some(st) = m.try_wait() {
                    bail!("manager exited ({st}) before ready:\n{}", m.log_tail(30));
                }
                if t.elapsed() > Duration::from_secs(60) {
                    bail!("manager not ready after 60 s:\n{}", m.log_tail(30));
                }
                if let Ok(r) = http.get(&readyz).send().await
                    && r.status().is_success()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if i == 0 {
                println!("start (warm-up): ready after {ms:.1} ms");
            } else {
                println!("start {i}: ready after {ms:.1} ms");
                ready_ms.push(ms);
            }
            drop(m);
        }
        anyhow::Ok(ready_ms)
    })?;
    println!("BENCH manager_ready_ms {:.1} ms", median(&mut ready_ms));
    println!("BENCH binary_size_mib {size_mib:.1} MiB");
    Ok(())
}

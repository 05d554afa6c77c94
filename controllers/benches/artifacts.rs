//! Artifact server against a plain static file server (nginx), side by side in the same run,
//! over HTTP and over HTTPS.
//!
//! A 1 GiB image of real data (an xorriso-built ISO, then pseudo-random bytes: no hole, so both
//! servers move every byte) is served unpatched by nginx (sendfile, its Debian defaults; over
//! TLS it reads and encrypts) and patched with kernel arguments by our artifact server, running
//! in a child process of this bench (the same `ArtifactListener` the manager runs, on a
//! multi-threaded Tokio runtime like the manager's) so its memory can be read from `/proc`. The
//! artifact server fetches its source from nginx, as it would from a mirror. Each round, 20
//! concurrent readers fetch distinct `Range`s covering the whole image, first from one server
//! then from the other (the order alternates), bytes counted and dropped; then the same over
//! TLS (one test CA, both servers, the client verifies).
//!
//! Prints `BENCH artifact_throughput_mib_s`, `nginx_throughput_mib_s` (medians over the rounds),
//! `artifact_throughput_ratio` (median of the per-round ratios, ours / nginx), the same three
//! with `_tls_`, and `artifact_rss_mib` (peak RSS of the artifact server process during all
//! transfers, after its peak was reset once the image was cached and patched). No assertion
//! on any figure.
//!
//! Run: `cargo bench -p beskar7-controllers --bench artifacts` (needs nginx and xorriso:
//! `hack/ensure-debs.sh bench`). `BESKAR7_BENCH_ROUNDS` sets the number of rounds (default 5).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use beskar7_boot::KernelArg;
use beskar7_controllers::artifacts::{
    ArtifactListener, ArtifactServerConfig, ArtifactSet, ArtifactStore, BootIsoSource,
};
use beskar7_test::fixtures::{build_test_iso, write_filled_image};
use beskar7_test::free_port;

const SIZE: u64 = 1 << 30;
const READERS: u64 = 20;
/// Set in the child process: the source URL of the image it serves.
const CHILD_ENV: &str = "BESKAR7_BENCH_ARTIFACT_SOURCE";
/// Set in the child process: the directory with `tls.crt` / `tls.key` of its HTTPS listener.
const CHILD_TLS_ENV: &str = "BESKAR7_BENCH_ARTIFACT_TLS";
const MACHINE: &str = "bench/machine-0";

fn main() -> anyhow::Result<()> {
    beskar7_test::install_crypto_provider();
    if let Ok(source) = std::env::var(CHILD_ENV) {
        return artifact_server_child(source);
    }
    // libtest-style arguments (`--bench`) from cargo are ignored.
    bench()
}

/// The child: the artifact server as the manager runs it, on an HTTP and an HTTPS listener over
/// one store; prints `READY <HTTP URL> <HTTPS URL>` of the boot ISO once the image is cached and
/// patched, serves until its stdin closes.
fn artifact_server_child(source: String) -> anyhow::Result<()> {
    let tls_dir = PathBuf::from(std::env::var(CHILD_TLS_ENV).context(CHILD_TLS_ENV)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cache = tempfile::tempdir()?;
        let plain =
            ArtifactListener::new(tokio::net::TcpListener::bind("127.0.0.1:0").await?, None)?;
        let tls = ArtifactListener::new(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            Some(&tls_dir),
        )?;
        let (plain_addr, tls_addr) = (plain.local_addr()?, tls.local_addr()?);
        let config = ArtifactServerConfig {
            bind_address: plain_addr,
            external_base_url: format!("http://{plain_addr}"),
            cache_dir: cache.path().to_path_buf(),
            cache_max_bytes: 4 << 30,
            tls_cert_dir: None,
        };
        let store = ArtifactStore::new(&config)?;
        let set = ArtifactSet {
            boot_iso: Some(BootIsoSource {
                add_uefi_path: false,
                url: source,
                sha256: None,
                kernel_args: vec![
                    KernelArg::Literal("console=ttyS0".into()),
                    KernelArg::Literal("talos.config=metal-iso".into()),
                ],
            }),
            ..Default::default()
        };
        let urls = store.register(MACHINE, set)?;
        store.prepare(MACHINE).await?;
        // the parent closes our stdin (or dies): stop
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            let _ = tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let servers = [
            tokio::spawn(plain.serve(store.clone(), stopped(rx.clone()))),
            tokio::spawn(tls.serve(store.clone(), stopped(rx))),
        ];
        let url = urls.boot_iso.context("no boot ISO URL")?;
        let tls_url = url.replacen(
            &format!("http://{plain_addr}"),
            &format!("https://{tls_addr}"),
            1,
        );
        println!("READY {url} {tls_url}");
        std::io::stdout().flush()?;
        for s in servers {
            s.await??;
        }
        drop(cache);
        Ok(())
    })
}

struct Nginx {
    child: Child,
    url: String,
    tls_url: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM to the master stops its workers too (a KILL would leave them serving)
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx as an unprivileged foreground process with a generated config (Debian's defaults for
/// static files: sendfile, tcp_nopush), serving `www` over HTTP and over HTTPS with the
/// certificate of `tls`.
fn start_nginx(dir: &Path, www: &Path, tls: &Path) -> anyhow::Result<Nginx> {
    let port = free_port();
    let tls_port = free_port();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let conf = dir.join("nginx.conf");
    let t = tmp.display();
    std::fs::write(
        &conf,
        format!(
            "worker_processes auto;\n\
             daemon off;\n\
             pid {pid};\n\
             error_log {dir}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               sendfile on;\n\
               tcp_nopush on;\n\
               default_type application/octet-stream;\n\
               client_body_temp_path {t}/body;\n\
               proxy_temp_path {t}/proxy;\n\
               fastcgi_temp_path {t}/fastcgi;\n\
               uwsgi_temp_path {t}/uwsgi;\n\
               scgi_temp_path {t}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 listen 127.0.0.1:{tls_port} ssl;\n\
                 ssl_certificate {crt};\n\
                 ssl_certificate_key {key};\n\
                 root {www};\n\
                 location / {{ }}\n\
               }}\n\
             }}\n",
            pid = dir.join("nginx.pid").display(),
            dir = dir.display(),
            www = www.display(),
            crt = tls.join("tls.crt").display(),
            key = tls.join("tls.key").display(),
        ),
    )?;
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx");
    let child = Command::new(nginx)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .spawn()
        .context("starting nginx (Debian package nginx-light: `hack/ensure-debs.sh bench`)")?;
    let mut n = Nginx {
        child,
        url: format!("http://127.0.0.1:{port}"),
        tls_url: format!("https://127.0.0.1:{tls_port}"),
    };
    for _ in 0..500 {
        if let Some(st) = n.child.try_wait()? {
            bail!(
                "nginx exited ({st}): {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
        {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nginx did not listen on {port}")
}

struct ArtifactChild {
    child: Child,
    url: String,
    tls_url: String,
}

impl Drop for ArtifactChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_artifact_server(source: &str, tls: &Path) -> anyhow::Result<ArtifactChild> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, source)
        .env(CHILD_TLS_ENV, tls)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the artifact server process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some((url, tls_url)) = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|l| l.split_once(' '))
    else {
        let st = child.wait()?;
        bail!("artifact server process did not get ready ({st}): {line:?}");
    };
    Ok(ArtifactChild {
        url: url.to_string(),
        tls_url: tls_url.to_string(),
        child,
    })
}

fn proc_status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{key} not in /proc/{pid}/status"))
}

/// Content length of `url` (HEAD).
async fn length(c: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let r = c.head(url).send().await?;
    if !r.status().is_success() {
        bail!("HEAD {url}: {}", r.status());
    }
    r.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("HEAD {url}: no content-length"))
}

/// 20 concurrent readers of distinct ranges covering `[0, len)`; returns MiB/s.
async fn round(c: &reqwest::Client, url: &str, len: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..READERS {
        let (start, end) = (len * i / READERS, len * (i + 1) / READERS);
        let (c, url) = (c.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut r = c
                .get(&url)
                .header("range", format!("bytes={start}-{}", end - 1))
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                bail!("GET {url} bytes={start}-{}: {}", end - 1, r.status());
            }
            let mut got = 0u64;
            while let Some(chunk) = r.chunk().await? {
                got += chunk.len() as u64;
            }
            if got != end - start {
                bail!("GET {url}: {got} bytes for a range of {}", end - start);
            }
            Ok(got)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    if total != len {
        bail!("{url}: read {total} of {len} bytes");
    }
    Ok(total as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of alternating rounds against the two servers: (ours MiB/s, nginx MiB/s, ratio).
async fn compare(
    c: &reqwest::Client,
    what: &str,
    ours: (&str, u64),
    nginx: (&str, u64),
    rounds: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let (mut a_all, mut b_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let (a, b) = if i % 2 == 0 {
            let a = round(c, ours.0, ours.1).await?;
            (a, round(c, nginx.0, nginx.1).await?)
        } else {
            let b = round(c, nginx.0, nginx.1).await?;
            (round(c, ours.0, ours.1).await?, b)
        };
        println!(
            "{what} round {i}: artifact server {a:.0} MiB/s, nginx {b:.0} MiB/s, ratio {:.3}",
            a / b
        );
        a_all.push(a);
        b_all.push(b);
        ratios.push(a / b);
    }
    Ok((median(&mut a_all), median(&mut b_all), median(&mut ratios)))
}

fn bench() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("BESKAR7_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let dir = tempfile::Builder::new()
        .prefix("beskar7-bench-artifacts")
        .tempdir()?;
    // nginx's workers may run as another user (when started by root): let them in.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let www: PathBuf = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    let iso = build_test_iso(dir.path(), "boot/grub/grub.cfg")?;
    let image = www.join("os.iso");
    write_filled_image(&image, &iso, SIZE)?;
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644))?;
    // one CA and serving certificate for both servers
    let ca = beskar7_test::certs::Ca::new("beskar7-bench-ca")?;
    let pair = ca.loopback_serving_cert("beskar7-bench")?;
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls)?;
    std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(tls.join("tls.crt"), &pair.cert_pem)?;
    std::fs::write(tls.join("tls.key"), &pair.key_pem)?;
    std::fs::set_permissions(tls.join("tls.key"), std::fs::Permissions::from_mode(0o644))?;

    let nginx = start_nginx(dir.path(), &www, &tls)?;
    let nginx_url = format!("{}/os.iso", nginx.url);
    let nginx_tls_url = format!("{}/os.iso", nginx.tls_url);
    let server = start_artifact_server(&nginx_url, &tls)?;
    let pid = server.child.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(READERS as usize)
            .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())?])
            .build()?;
        let ours_len = length(&c, &server.url).await?;
        let nginx_len = length(&c, &nginx_url).await?;
        println!(
            "image: {nginx_len} bytes of data unpatched (nginx), {ours_len} bytes patched (artifact server); {READERS} readers, {rounds} rounds"
        );
        // warm-up: page cache, connections
        round(&c, &server.url, ours_len).await?;
        round(&c, &nginx_url, nginx_len).await?;
        round(&c, &server.tls_url, ours_len).await?;
        round(&c, &nginx_tls_url, nginx_len).await?;
        let rss_idle = proc_status_kib(pid, "VmRSS:")?;
        // reset the peak RSS (VmHWM) of the server: from here on it is the transfers' peak
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("resetting the artifact server's peak RSS")?;
        let (ours, theirs, ratio) = compare(
            &c,
            "http",
            (&server.url, ours_len),
            (&nginx_url, nginx_len),
            rounds,
        )
        .await?;
        let (ours_tls, theirs_tls, ratio_tls) = compare(
            &c,
            "https",
            (&server.tls_url, ours_len),
            (&nginx_tls_url, nginx_len),
            rounds,
        )
        .await?;
        let peak = proc_status_kib(pid, "VmHWM:")?;
        println!(
            "artifact server RSS: {:.1} MiB idle after warm-up, {:.1} MiB peak during the rounds",
            rss_idle as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        println!("BENCH artifact_throughput_mib_s {ours:.0} MiB/s");
        println!("BENCH nginx_throughput_mib_s {theirs:.0} MiB/s");
        println!("BENCH artifact_throughput_ratio {ratio:.3} ratio");
        println!("BENCH artifact_tls_throughput_mib_s {ours_tls:.0} MiB/s");
        println!("BENCH nginx_tls_throughput_mib_s {theirs_tls:.0} MiB/s");
        println!("BENCH artifact_tls_throughput_ratio {ratio_tls:.3} ratio");
        println!("BENCH artifact_rss_mib {:.1} MiB", peak as f64 / 1024.0);
        anyhow::Ok(())
    })?;
    drop(server);
    drop(nginx);
    Ok(())
}

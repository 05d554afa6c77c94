//! The BMC lab: a real `sushy-emulator` (sushy-tools, PyPI, pinned in
//! `hack/bmc-lab/requirements.txt`) with its fake driver and `n` systems, basic auth (bcrypt
//! htpasswd) and TLS from a throw-away CA, plus a loopback HTTP file server (with Range support)
//! for the images the emulator downloads on InsertMedia.
//!
//! The Python venv is created once and cached outside the repo
//! (`~/.cache/beskar7/venv/sushy-tools-<version>-<hash>`, or `$BESKAR7_VENV_DIR/...`), keyed by
//! the requirements file and the Python version, under a file lock so parallel tests do not race.
//! Each lab has its own temp dir, ports and state; it stops on drop (the emulator's process group
//! is killed), also when a test panics.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::certs::Ca;

/// The pinned sushy-tools version (must match `hack/bmc-lab/requirements.txt`).
pub const SUSHY_TOOLS_VERSION: &str = "2.2.0";

/// One emulated system.
#[derive(Clone, Debug)]
pub struct LabSystem {
    /// Redfish address of the emulator (`https://127.0.0.1:<port>`), shared by all systems.
    pub address: String,
    /// `ComputerSystem` id (its UUID in sushy's fake driver).
    pub system_id: String,
    pub name: String,
    pub username: String,
    pub password: String,
    /// MAC of the system's one NIC.
    pub mac: String,
}

/// A running lab. Dropping it stops everything.
pub struct BmcLab {
    pub systems: Vec<LabSystem>,
    /// `https://127.0.0.1:<port>`
    pub address: String,
    pub username: String,
    pub password: String,
    /// PEM of the CA that signed the emulator's certificate.
    pub ca_pem: String,
    /// `http://127.0.0.1:<port>/`: serves [`BmcLab::image_dir`].
    pub image_base_url: String,
    /// Files here are served by the image server.
    pub image_dir: PathBuf,
    /// The emulator's log.
    pub log_path: PathBuf,
    child: Option<Child>,
    file_server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for BmcLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcLab")
            .field("address", &self.address)
            .field("systems", &self.systems.len())
            .field("image_base_url", &self.image_base_url)
            .finish_non_exhaustive()
    }
}

impl BmcLab {
    /// Start an emulator with `n` systems (all powered off, no media).
    pub async fn start(n: usize) -> Result<BmcLab> {
        crate::install_crypto_provider();
        let venv = tokio::task::spawn_blocking(ensure_venv)
            .await
            .context("venv task")??;
        let dir = tempfile::Builder::new()
            .prefix("beskar7-bmc-lab-")
            .tempdir()
            .context("temp dir")?;
        let root = dir.path();
        let image_dir = root.join("images");
        let state_dir = root.join("state");
        let tmp_dir = root.join("tmp");
        for d in [&image_dir, &state_dir, &tmp_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }

        // Credentials: a random password per lab, bcrypt-hashed by the venv's bcrypt.
        let username = "admin".to_string();
        let password = format!("lab-{:016x}", rand_u64());
        let hash = bcrypt_hash(&venv, &password)?;
        let htpasswd = root.join("htpasswd");
        std::fs::write(&htpasswd, format!("{username}:{hash}\n")).context("write htpasswd")?;

        // TLS.
        let ca = Ca::new("beskar7 BMC lab CA").context("lab CA")?;
        let serving = ca
            .loopback_serving_cert("sushy-emulator")
            .context("emulator certificate")?;
        let cert = root.join("tls.crt");
        let key = root.join("tls.key");
        std::fs::write(&cert, &serving.cert_pem).context("write tls.crt")?;
        std::fs::write(&key, &serving.key_pem).context("write tls.key")?;

        // Images.
        let (image_base_url, file_server) = serve_dir(image_dir.clone()).await?;

        let mut systems_py = String::new();
        let mut systems = Vec::new();
        let port = free_port()?;
        let address = format!("https://127.0.0.1:{port}");
        for i in 0..n {
            let uuid = format!("b35ca700-0000-4000-8000-{:012x}", i + 1);
            let name = format!("lab-node-{i}");
            let mac = format!("52:54:00:b7:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff);
            systems_py.push_str(&format!(
                "    {{'uuid': '{uuid}', 'name': '{name}', 'power_state': 'Off', \
                 'external_notifier': False, 'nics': [{{'mac': '{mac}', 'ip': '127.0.0.1'}}]}},\n"
            ));
            systems.push(LabSystem {
                address: address.clone(),
                system_id: uuid,
                name,
                username: username.clone(),
                password: password.clone(),
                mac,
            });
        }
        let config = root.join("emulator.conf");
        std::fs::write(
            &config,
            format!(
                "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
                 SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                 SUSHY_EMULATOR_SSL_CERT = {cert:?}\n\
                 SUSHY_EMULATOR_SSL_KEY = {key:?}\n\
                 SUSHY_EMULATOR_AUTH_FILE = {htpasswd:?}\n\
                 SUSHY_EMULATOR_STATE_DIR = {state_dir:?}\n\
                 SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [\n{systems_py}]\n"
            ),
        )
        .context("write emulator config")?;

        let log_path = root.join("sushy-emulator.log");
        let log = std::fs::File::create(&log_path).context("emulator log")?;
        let mut cmd = Command::new(venv.join("bin/sushy-emulator"));
        cmd.env("SUSHY_EMULATOR_CONFIG", &config)
            .env("TMPDIR", &tmp_dir)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log fd")?)
            .stderr(log)
            .current_dir(root);
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", venv.join("bin/sushy-emulator").display()))?;

        let mut lab = BmcLab {
            systems,
            address,
            username,
            password,
            ca_pem: ca.cert_pem(),
            image_base_url,
            image_dir,
            log_path,
            child: Some(child),
            file_server: Some(file_server),
            _dir: dir,
        };
        lab.wait_ready(Duration::from_secs(60)).await?;
        Ok(lab)
    }

    /// URL of a file in [`BmcLab::image_dir`].
    pub fn image_url(&self, name: &str) -> String {
        format!("{}{name}", self.image_base_url)
    }

    /// Write a file into the image dir and return its URL.
    pub fn add_image(&self, name: &str, content: &[u8]) -> Result<String> {
        std::fs::write(self.image_dir.join(name), content)
            .with_context(|| format!("write image {name}"))?;
        Ok(self.image_url(name))
    }

    /// Requests that change a system (`POST`, `PATCH`, `PUT`, `DELETE`: power actions, boot
    /// overrides, virtual media insert and eject), as the emulator's request log lists them
    /// (`"POST /redfish/v1/... HTTP/1.1" 204`). Sessions are not counted.
    pub fn changing_requests(&self) -> Vec<String> {
        changing_requests_in(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// The last lines of the emulator's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, 30)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("{}/redfish/v1/Systems", self.address);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "sushy-emulator exited during startup ({status}); last lines of {}:\n{}",
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            if let Ok(resp) = http
                .get(&url)
                .basic_auth(&self.username, Some(&self.password))
                .send()
                .await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sushy-emulator not ready after {timeout:?}; last lines of {}:\n{}",
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for BmcLab {
    fn drop(&mut self) {
        if let Some(h) = self.file_server.take() {
            h.abort();
        }
        if let Some(mut child) = self.child.take() {
            let pgid = child.id() as i32;
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        // SAFETY: as above.
                        unsafe {
                            libc::kill(-pgid, libc::SIGKILL);
                        }
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

fn changing_requests_in(log: &str) -> Vec<String> {
    log.lines()
        .map(strip_ansi)
        .filter_map(|line| {
            let request = line.split('"').nth(1)?;
            let (method, rest) = request.split_once(' ')?;
            let path = rest.split(' ').next()?;
            (matches!(method, "POST" | "PATCH" | "PUT" | "DELETE")
                && !path.contains("/SessionService/"))
            .then(|| format!("{method} {path}"))
        })
        .collect()
}

/// werkzeug colours the request of non-200 answers (`\x1b[35m\x1b[1mPOST ...\x1b[0m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI sequences end with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("free port")?;
    Ok(l.local_addr()?.port())
}

fn requirements_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/bmc-lab/requirements.txt")
}

fn python() -> String {
    std::env::var("BESKAR7_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The cached venv for the pinned requirements: created once, under a file lock.
pub fn ensure_venv() -> Result<PathBuf> {
    let reqs_path = requirements_path();
    let reqs =
        std::fs::read(&reqs_path).with_context(|| format!("read {}", reqs_path.display()))?;
    let py_version = Command::new(python())
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "run {} --version (python3 and python3-venv are needed: make debs)",
                python()
            )
        })?;
    let mut key = reqs.clone();
    key.extend_from_slice(&py_version.stdout);
    key.extend_from_slice(&py_version.stderr);
    let base = match std::env::var_os("BESKAR7_VENV_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .ok_or_else(|| anyhow!("HOME not set; set BESKAR7_VENV_DIR"))?;
            PathBuf::from(home).join(".cache/beskar7/venv")
        }
    };
    std::fs::create_dir_all(&base).with_context(|| format!("mkdir {}", base.display()))?;
    let venv = base.join(format!(
        "sushy-tools-{SUSHY_TOOLS_VERSION}-{:08x}",
        fnv1a(&key) as u32
    ));
    let marker = venv.join(".beskar7-complete");
    if marker.exists() {
        return Ok(venv);
    }
    let lock = std::fs::File::create(base.join(".lock")).context("venv lock file")?;
    lock.lock().context("lock venv dir")?;
    if marker.exists() {
        return Ok(venv);
    }
    let started = Instant::now();
    eprintln!(
        "bmc-lab: creating venv {} (sushy-tools {SUSHY_TOOLS_VERSION})",
        venv.display()
    );
    // venvs hard-code their path in their scripts, so build in place; the marker is written last
    // and a half-built venv (no marker) is removed first.
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(python()).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(&reqs_path))?;
    std::fs::write(&marker, &reqs).context("venv marker")?;
    eprintln!("bmc-lab: venv ready in {:?}", started.elapsed());
    Ok(venv)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn bcrypt_hash(venv: &Path, password: &str) -> Result<String> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import bcrypt,sys; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(password.as_bytes())?;
            c.wait_with_output()
        })
        .context("bcrypt via the venv's python")?;
    if !out.status.success() {
        bail!("bcrypt failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Serve `dir` over HTTP on a free loopback port, with single-range `Range` support.
async fn serve_dir(dir: PathBuf) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind image server")?;
    let addr: SocketAddr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let dir = dir.clone();
            tokio::spawn(async move {
                let _ = serve_conn(stream, &dir).await;
            });
        }
    });
    Ok((format!("http://{addr}/"), handle))
}

/// A minimal HTTP/1.1 file server: GET and HEAD, `Range: bytes=a-b`, keep-alive off.
async fn serve_conn(mut stream: tokio::net::TcpStream, dir: &Path) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let range = lines.take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("range")
            .then(|| v.trim().to_string())
    });
    let name = target
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/');
    let reply = |status: &str, headers: String| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n")
    };
    if (method != "GET" && method != "HEAD")
        || name.is_empty()
        || name.contains("..")
        || name.contains('/')
    {
        stream
            .write_all(reply("404 Not Found", "Content-Length: 0\r\n".into()).as_bytes())
            .await?;
        return Ok(());
    }
    let path = dir.join(name);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        stream
            .write_all(reply("404 Not Found", "Content-Length: 0\r\n".into()).as_bytes())
            .await?;
        return Ok(());
    };
    let size = file.metadata().await?.len();
    let (status, start, end) = match range.as_deref().and_then(|r| parse_range(r, size)) {
        Some(Ok((s, e))) => ("206 Partial Content", s, e),
        Some(Err(())) => {
            stream
                .write_all(
                    reply(
                        "416 Range Not Satisfiable",
                        format!("Content-Range: bytes */{size}\r\nContent-Length: 0\r\n"),
                    )
                    .as_bytes(),
                )
                .await?;
            return Ok(());
        }
        None => ("200 OK", 0, size.saturating_sub(1)),
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut headers = format!(
        "Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Length: {len}\r\n"
    );
    if status.starts_with("206") {
        headers.push_str(&format!("Content-Range: bytes {start}-{end}/{size}\r\n"));
    }
    stream.write_all(reply(status, headers).as_bytes()).await?;
    if method == "GET" && len > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
        let mut limited = file.take(len);
        tokio::io::copy(&mut limited, &mut stream).await?;
    }
    stream.shutdown().await?;
    Ok(())
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n`; `None` = no usable range (serve all), `Err` = 416.
fn parse_range(v: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = a.parse().ok()?;
        let e: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        if s >= size || e < s {
            return Some(Err(()));
        }
        (s, e)
    };
    Some(Ok(r))
}

#[cfg(test)]
mod tests {
    #[test]
    fn changing_requests_are_read_from_werkzeugs_coloured_log() {
        let log = "127.0.0.1 - - [22/Nov/2026 16:52:44] \"GET /redfish/v1/ HTTP/1.1\" 200 -\n\
                   127.0.0.1 - - [22/Nov/2026 16:52:44] \"\x1b[35m\x1b[1mPOST /redfish/v1/Systems/a/Actions/ComputerSystem.Reset HTTP/1.1\x1b[0m\" 204 -\n\
                   127.0.0.1 - - [22/Nov/2026 16:52:45] \"POST /redfish/v1/SessionService/Sessions HTTP/1.1\" 201 -\n";
        assert_eq!(
            super::changing_requests_in(log),
            vec!["POST /redfish/v1/Systems/a/Actions/ComputerSystem.Reset"]
        );
    }

    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}

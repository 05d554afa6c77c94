//! Shared pieces of the controller integration tests: the manager as a real process, objects
//! written as a user would, and waiting on conditions.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beskar7_api::PhysicalHost;
use beskar7_test::{BmcLab, ControlPlane, LabSystem};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, GroupVersionKind, ApiResource, PostParams};
use kube::Client;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `beskar7 manager` running against a control plane, killed on drop.
pub struct Manager {
    child: Child,
    pub log: PathBuf,
    pub metrics: String,
    pub health: String,
    pub artifacts: String,
    _dir: tempfile::TempDir,
}

impl Manager {
    pub fn start(cp: &ControlPlane, extra: &[&str]) -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let (metrics, health, artifacts) = (free_port(), free_port(), free_port());
        let log = dir.path().join("manager.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let key = dir.path().join("token.key");
        std::fs::write(&key, b"beskar7-test-artifact-token-key-0123456789").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_beskar7"));
        cmd.arg("manager")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args(["--leader-elect=false", "--host-refresh-seconds", "20"])
            .args(["--metrics-bind-address", &format!("127.0.0.1:{metrics}")])
            .args(["--health-probe-bind-address", &format!("127.0.0.1:{health}")])
            .args(["--artifact-bind-address", &format!("127.0.0.1:{artifacts}")])
            .args(["--artifact-base-url", &format!("http://127.0.0.1:{artifacts}")])
            .arg("--artifact-cache-dir")
            .arg(dir.path().join("cache"))
            .arg("--artifact-token-key-file")
            .arg(&key)
            .args(extra)
            .env("RUST_LOG", "info,beskar7_controllers=debug,kube=warn")
            .stdin(Stdio::null())
            .env("RUST_BACKTRACE", "0")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let child = cmd.spawn().expect("start beskar7 manager");
        Manager {
            child,
            log,
            metrics: format!("http://127.0.0.1:{metrics}"),
            health: format!("http://127.0.0.1:{health}"),
            artifacts: format!("http://127.0.0.1:{artifacts}"),
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` and the manager's log.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, manager: Option<&Manager>, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            let log = manager.map(|m| m.log_tail(60)).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}\nmanager log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn create_dynamic(client: &Client, ns: &str, group: &str, version: &str, kind: &str, body: serde_json::Value) -> DynamicObject {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let mut obj: DynamicObject = serde_json::from_value(body).unwrap();
    obj.types = Some(kube::core::TypeMeta { api_version: ar.api_version.clone(), kind: ar.kind.clone() });
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("creating {kind}: {e}"))
}

pub fn dynamic_api(client: &Client, ns: &str, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)))
}

/// Credentials Secret, CA Secret and a PhysicalHost for each lab system, as an operator writes them.
pub async fn enroll_lab(client: &Client, ns: &str, lab: &BmcLab, labels: &[(&str, &str)]) -> Vec<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bmc-lab-ca"},
        "stringData": {"ca.crt": lab.ca_pem},
    }))
    .unwrap();
    let _ = secrets.create(&PostParams::default(), &ca).await;
    let hosts: Api<PhysicalHost> = Api::namespaced(client.clone(), ns);
    let mut names = Vec::new();
    for (i, s) in lab.systems.iter().enumerate() {
        let name = format!("server-{i:02}");
        enroll(client, ns, &name, s, Some("bmc-lab-ca"), labels).await;
        names.push(name);
    }
    let _ = hosts;
    names
}

pub async fn enroll(client: &Client, ns: &str, name: &str, s: &LabSystem, ca_secret: Option<&str>, labels: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{name}-bmc")},
        "stringData": {"username": s.username, "password": s.password},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let labels: serde_json::Map<String, serde_json::Value> = labels.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
    let mut conn = serde_json::json!({
        "address": s.address,
        "credentialsSecretRef": format!("{name}-bmc"),
        "systemId": s.system_id,
    });
    if let Some(ca) = ca_secret {
        conn["caBundleSecretRef"] = serde_json::json!(ca);
    }
    let host: PhysicalHost = serde_json::from_value(serde_json::json!({
        "apiVersion": beskar7_api::API_VERSION,
        "kind": "PhysicalHost",
        "metadata": {"name": name, "labels": labels},
        "spec": {"redfishConnection": conn},
    }))
    .unwrap();
    Api::<PhysicalHost>::namespaced(client.clone(), ns).create(&PostParams::default(), &host).await.unwrap();
}

/// A small ISO shaped like an OS installer: GRUB config at `grub_path` with a kernel line.
pub fn build_test_iso(dir: &Path, grub_path: &str) -> Vec<u8> {
    let root = dir.join("iso-root");
    let cfg = root.join(grub_path.trim_start_matches('/'));
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, "set timeout=1\nmenuentry 'Test OS' {\n  linux /boot/vmlinuz console=ttyS0\n  initrd /boot/initrd\n}\n").unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), vec![0x5au8; 8192]).unwrap();
    let out = dir.join("test-os.iso");
    let status = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", "TESTOS", "-o"])
        .arg(&out)
        .arg(&root)
        .status()
        .expect("xorriso runs (Debian package xorriso; make test installs it)");
    assert!(status.success(), "xorriso failed to build the test ISO");
    std::fs::read(out).unwrap()
}

/// Lists the files of an ISO with xorriso and extracts one.
pub fn iso_extract(iso: &Path, file: &str, out: &Path) -> Vec<u8> {
    let status = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", file])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "xorriso could not extract {file} from {}", iso.display());
    std::fs::read(out).unwrap()
}

//! The workload-cluster stand-in: plays the part of the OS that boots on each server.
//!
//! No OS boots here (the boot-proof tests do that). When the BMC lab shows a system powered on
//! with our media inserted, the stand-in fetches that machine's config exactly as the OS would
//! (the config volume from the artifact server), reads `provider-id` and `local-hostname` from
//! its meta-data, and registers a Node with that providerID in a second kube-apiserver + etcd
//! serving the cluster's `controlPlaneEndpoint` with the CA that KubeadmControlPlane generated
//! (`<cluster>-ca`). On the first control-plane boot it also writes what `kubeadm init` leaves
//! behind that CAPI reads (`kube-system/kubeadm-config`). So CAPI talks to a real API server at
//! the endpoint, and a wrong providerID shows up as a Machine that never gets its nodeRef.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use beskar7_redfish as redfish;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::task::JoinHandle;

use crate::{ControlPlane, LabSystem};

/// One machine the stand-in booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootedNode {
    pub node_name: String,
    pub provider_id: String,
    pub control_plane: bool,
    /// The boot ISO URL the BMC held (unique per claim).
    pub boot_url: String,
}

#[derive(Default)]
struct State {
    api_server: Option<Arc<ControlPlane>>,
    booted: BTreeMap<String, BootedNode>,
    errors: Vec<String>,
}

/// Runs until dropped.
pub struct WorkloadStandIn {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for WorkloadStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WorkloadStandIn {
    /// Watches `systems` (all behind the lab's emulator, trusted with `lab_ca_pem`) for the
    /// cluster `cluster` in `namespace` of the management cluster `mgmt`, whose endpoint is
    /// `127.0.0.1:endpoint_port`.
    pub fn start(
        mgmt: kube::Client,
        namespace: &str,
        cluster: &str,
        endpoint_port: u16,
        systems: Vec<LabSystem>,
        lab_ca_pem: String,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let task = {
            let (state, namespace, cluster) =
                (state.clone(), namespace.to_string(), cluster.to_string());
            tokio::spawn(async move {
                let work = tempfile::tempdir().expect("temp dir");
                loop {
                    if let Err(e) = pass(
                        &mgmt,
                        &namespace,
                        &cluster,
                        endpoint_port,
                        &systems,
                        &lab_ca_pem,
                        &state,
                        work.path(),
                    )
                    .await
                    {
                        let mut s = state.lock().unwrap();
                        if s.errors.last().map(String::as_str) != Some(e.to_string().as_str()) {
                            s.errors.push(format!("{e:#}"));
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        Self { state, task }
    }

    /// Machines that booted and registered their Node.
    pub fn booted(&self) -> Vec<BootedNode> {
        self.state
            .lock()
            .unwrap()
            .booted
            .values()
            .cloned()
            .collect()
    }

    /// A client of the workload cluster's API server, once it runs.
    pub fn workload_client(&self) -> Option<kube::Client> {
        self.state
            .lock()
            .unwrap()
            .api_server
            .as_ref()
            .map(|a| a.client())
    }

    /// What went wrong so far (for test failure messages).
    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }
}

#[allow(clippy::too_many_arguments)]
async fn pass(
    mgmt: &kube::Client,
    ns: &str,
    cluster: &str,
    port: u16,
    systems: &[LabSystem],
    ca: &str,
    state: &Arc<Mutex<State>>,
    work: &Path,
) -> Result<()> {
    let api_server = state.lock().unwrap().api_server.clone();
    let api_server = match api_server {
        Some(a) => a,
        None => {
            // The endpoint's API server needs the cluster CA, which KubeadmControlPlane creates.
            let secrets: Api<Secret> = Api::namespaced(mgmt.clone(), ns);
            let Some(ca_secret) = secrets.get_opt(&format!("{cluster}-ca")).await? else {
                return Ok(());
            };
            let data = ca_secret.data.unwrap_or_default();
            let get = |k: &str| {
                data.get(k)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .with_context(|| format!("{cluster}-ca has no {k}"))
            };
            let key = pkcs8(&get("tls.key")?)?;
            let cp = ControlPlane::builder()
                .with_ca(&get("tls.crt")?, &key)
                .api_server_port(port)
                .start()
                .await
                .context("starting the workload API server")?;
            let cp = Arc::new(cp);
            state.lock().unwrap().api_server = Some(cp.clone());
            cp
        }
    };
    let workload = api_server.client();
    let known: BTreeSet<String> = state.lock().unwrap().booted.keys().cloned().collect();
    for s in systems {
        let Some(node) = boot(s, ca, &known, work).await? else {
            continue;
        };
        register(&workload, &node).await?;
        state
            .lock()
            .unwrap()
            .booted
            .insert(node.boot_url.clone(), node);
    }
    Ok(())
}

/// KubeadmControlPlane writes PKCS#1 RSA keys; rcgen reads PKCS#8. openssl converts.
fn pkcs8(key_pem: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("openssl")
        .arg("pkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("openssl (Debian package openssl)")?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(key_pem.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("openssl pkey: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// If the system is on with one of our boot ISOs not seen before: read its config as the OS would.
async fn boot(
    s: &LabSystem,
    ca: &str,
    known: &BTreeSet<String>,
    work: &Path,
) -> Result<Option<BootedNode>> {
    let mut config = redfish::ClientConfig::new(
        s.address.clone(),
        redfish::Credentials::new(s.username.clone(), s.password.clone()),
    );
    config.tls = redfish::Tls::CaBundle(ca.as_bytes().to_vec());
    let client = redfish::Client::new(config)?;
    let d = client.discover(Some(&s.system_id)).await?;
    if client.power_state(&d).await?.as_deref() != Some("On") {
        return Ok(None);
    }
    let mut boot_url = None;
    let mut volume_url = None;
    for slot in &d.slots {
        let fresh = client.read_slot(&slot.path).await?;
        match fresh.media.current_image() {
            Some(i) if i.ends_with("/boot.iso") => boot_url = Some(i.to_string()),
            Some(i) if i.ends_with("/config.iso") || i.ends_with("/config.img") => {
                volume_url = Some(i.to_string())
            }
            _ => {}
        }
    }
    let Some(boot_url) = boot_url.filter(|u| !known.contains(u)) else {
        return Ok(None);
    };
    let Some(volume_url) = volume_url else {
        bail!(
            "{}: booted {boot_url} without a config volume; the stand-in reads meta-data from the volume",
            s.name
        );
    };
    let bytes = reqwest::get(&volume_url)
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let path = work.join(format!("{}-volume", s.name));
    std::fs::write(&path, &bytes)?;
    let files = read_volume(&path, volume_url.ends_with(".iso"))?;
    let meta: serde_yaml::Value = serde_yaml::from_slice(
        files
            .get("meta-data")
            .context("config volume has no meta-data")?,
    )?;
    let text = |k: &str| {
        meta.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .with_context(|| format!("meta-data has no {k}"))
    };
    let user = files
        .get("user-data")
        .or_else(|| files.get("config.yaml"))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Ok(Some(BootedNode {
        node_name: text("local-hostname")?,
        provider_id: text("provider-id")?,
        control_plane: user.contains("kubeadm init") || user.contains("controlPlane:"),
        boot_url,
    }))
}

/// The files of a config volume, read with independent tools (xorriso for ISO, mtools for FAT).
fn read_volume(path: &Path, iso: bool) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for name in ["meta-data", "user-data", "config.yaml"] {
        let data = if iso {
            crate::fixtures::iso_extract(path, &format!("/{name}"), &path.with_extension(name)).ok()
        } else {
            crate::fixtures::fat_extract(path, name).ok()
        };
        if let Some(d) = data {
            out.insert(name.to_string(), d);
        }
    }
    Ok(out)
}

/// Registers the Node (Ready) and, for the first control plane, what `kubeadm init` leaves behind.
async fn register(workload: &kube::Client, node: &BootedNode) -> Result<()> {
    if node.control_plane {
        let cms: Api<ConfigMap> = Api::namespaced(workload.clone(), "kube-system");
        if cms.get_opt("kubeadm-config").await?.is_none() {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
                "data": {"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n"},
            }))?;
            cms.create(&PostParams::default(), &cm).await?;
        }
    }
    let nodes: Api<Node> = Api::all(workload.clone());
    let mut labels = serde_json::json!({"kubernetes.io/hostname": node.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"});
    if node.control_plane {
        labels["node-role.kubernetes.io/control-plane"] = serde_json::json!("");
    }
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.node_name, "labels": labels},
        "spec": {"providerID": node.provider_id},
    });
    nodes
        .patch(
            &node.node_name,
            &PatchParams::apply("beskar7-standin").force(),
            &Patch::Apply(&body),
        )
        .await?;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "stand-in kubelet", "lastHeartbeatTime": now, "lastTransitionTime": now}]},
    });
    nodes
        .patch_status(
            &node.node_name,
            &PatchParams::apply("beskar7-standin").force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(())
}

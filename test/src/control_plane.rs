//! A real kube-apiserver and etcd per test, optionally with the CAPI managers: our envtest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};
use tempfile::TempDir;

use crate::ControlPlaneError;
use crate::capi::{self, CapiProvider, ManagerPorts};
use crate::certs::{self, Ca};
use crate::process::{ManagedProcess, free_loopback_ports};
use crate::testbin::Testbin;

/// Generous because the machines that run this have two cores, shared with cargo.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Set to keep the temp dir (logs, certs, etcd data) of every control plane for debugging.
const KEEP_DIRS_ENV: &str = "BESKAR7_KEEP_TEST_DIRS";

/// How to start a [`ControlPlane`].
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneBuilder {
    capi: bool,
    ipam: bool,
    garbage_collector: bool,
    ca: Option<(String, String)>,
    api_server_port: Option<u16>,
}

impl ControlPlaneBuilder {
    /// Also run the CAPI core, kubeadm bootstrap and kubeadm control-plane managers, with their
    /// conversion and admission webhooks registered, so CAPI objects are defaulted, validated and
    /// reconciled as in a management cluster.
    pub fn with_capi(mut self) -> Self {
        self.capi = true;
        self
    }

    /// Also run the in-cluster IPAM provider (the CAPI IPAM contract's reference provider) with
    /// its pool CRDs (InClusterIPPool, GlobalInClusterIPPool), without its webhooks.
    pub fn with_ipam(mut self) -> Self {
        self.ipam = true;
        self
    }

    /// Also run kube-controller-manager with only the garbage collector and namespace controllers:
    /// without it, deleting an owner leaves its dependents and deleted namespaces stay
    /// Terminating, as nothing else implements cascades.
    pub fn with_garbage_collector(mut self) -> Self {
        self.garbage_collector = true;
        self
    }

    /// Sign the API server's serving certificate and trust client certificates with this CA
    /// (PEM certificate and key) instead of a fresh one: a workload cluster's API server serves
    /// with the cluster CA that KubeadmControlPlane generated.
    pub fn with_ca(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.ca = Some((cert_pem.to_string(), key_pem.to_string()));
        self
    }

    /// Serve kube-apiserver on this loopback port instead of a free one (a cluster's
    /// `controlPlaneEndpoint`).
    pub fn api_server_port(mut self, port: u16) -> Self {
        self.api_server_port = Some(port);
        self
    }

    pub async fn start(self) -> Result<ControlPlane, ControlPlaneError> {
        ControlPlane::start_with(self).await
    }
}

/// etcd + kube-apiserver on free loopback ports with fresh certificates and data, our CRDs and
/// CAPI's installed. Everything is stopped and removed on drop, also when the test panics.
pub struct ControlPlane {
    client: Client,
    kubeconfig: PathBuf,
    api_server_url: String,
    testbin: Testbin,
    running: Running,
    /// How kube-apiserver was started, for [`ControlPlane::restart_api_server`].
    api_server: ApiServerSpawn,
}

/// What starting kube-apiserver again takes.
struct ApiServerSpawn {
    /// Its position in `Running::processes`.
    index: usize,
    pki: Pki,
    etcd_client: u16,
    port: u16,
    restarts: usize,
}

/// The processes and the temp dir of a control plane. It exists from the first spawned process
/// on, so an error at any later step of startup drops (kills and removes) what was started.
#[derive(Debug)]
struct Running {
    /// In start order; stopped in reverse order on drop (managers, then kube-apiserver, then
    /// etcd) so nothing logs errors about a dependency that vanished first.
    processes: Vec<ManagedProcess>,
    /// Removed after `processes` are killed, so no process writes into a removed dir.
    dir: Option<TempDir>,
}

impl Running {
    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(TempDir::path)
            .expect("dir is only taken in Drop")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir().join("logs").join(format!("{name}.log"))
    }

    fn ensure_all_running(&mut self) -> Result<(), ControlPlaneError> {
        self.processes
            .iter_mut()
            .try_for_each(ManagedProcess::ensure_running)
    }

    fn not_ready(&self, name: &str, timeout: Duration) -> ControlPlaneError {
        let log = self.log(name);
        ControlPlaneError::NotReady {
            name: name.to_string(),
            timeout,
            log_tail: crate::process::tail_of_file(&log, 40),
            log,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        while let Some(process) = self.processes.pop() {
            drop(process);
        }
        if let Some(dir) = self.dir.take()
            && std::env::var_os(KEEP_DIRS_ENV).is_some()
        {
            let kept = dir.keep();
            eprintln!("beskar7-test: kept control plane dir {}", kept.display());
        }
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("api_server_url", &self.api_server_url)
            .field("kubeconfig", &self.kubeconfig)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// etcd and kube-apiserver with our CRDs and CAPI's CRDs, without the CAPI managers.
    pub async fn start() -> Result<Self, ControlPlaneError> {
        Self::builder().start().await
    }

    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// A client authenticated as a `system:masters` user.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A kubeconfig file for the same admin user (for clusterctl, kubectl or our binaries).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn api_server_url(&self) -> &str {
        &self.api_server_url
    }

    /// The test binaries in use (e.g. to run `clusterctl`).
    pub fn testbin(&self) -> &Testbin {
        &self.testbin
    }

    /// `clusterctl` of the pinned CAPI release, set up for this control plane: `KUBECONFIG` points
    /// at it, the version check (which would call GitHub) is off, and its config dir is inside
    /// the temp dir rather than in `$HOME`.
    pub fn clusterctl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(self.testbin.binary("clusterctl"));
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
            .env("XDG_CONFIG_HOME", self.running.dir().join("xdg-config"));
        command
    }

    /// Directory with this control plane's logs (`logs/<process>.log`), certs and etcd data.
    pub fn dir(&self) -> &Path {
        self.running.dir()
    }

    /// The last `lines` lines of a process log (`etcd`, `kube-apiserver`, `core`,
    /// `bootstrap-kubeadm`, `controlplane-kubeadm`), for assertion messages.
    /// Kills kube-apiserver (SIGKILL), leaves it down for `down`, and starts it again on the
    /// same port with the same etcd, certificates and flags; returns once it is ready. Clients
    /// reconnect by themselves; their watches are cut. Its log continues in
    /// `kube-apiserver-restart-<n>.log`.
    pub async fn restart_api_server(&mut self, down: Duration) -> Result<(), ControlPlaneError> {
        let spawn = &mut self.api_server;
        drop(self.running.processes.remove(spawn.index));
        tokio::time::sleep(down).await;
        spawn.restarts += 1;
        let root = self.running.dir().to_path_buf();
        let process = spawn_kube_apiserver(
            &self.testbin,
            &root,
            &spawn.pki,
            spawn.etcd_client,
            spawn.port,
            &format!("kube-apiserver-restart-{}", spawn.restarts),
        )?;
        self.running.processes.insert(spawn.index, process);
        wait_apiserver_ready(&self.client, &mut self.running).await
    }

    pub fn log_tail(&self, process: &str, lines: usize) -> String {
        crate::process::tail_of_file(&self.running.log(process), lines)
    }

    async fn start_with(options: ControlPlaneBuilder) -> Result<Self, ControlPlaneError> {
        install_crypto_provider();
        let testbin = Testbin::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("beskar7-control-plane-")
            .tempdir()
            .map_err(|source| io_error("creating the control plane temp dir", source))?;
        let root = dir.path().to_path_buf();
        for sub in ["pki", "logs", "etcd"] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(|source| io_error(&format!("creating {sub} dir"), source))?;
        }
        let mut running = Running {
            processes: Vec::new(),
            dir: Some(dir),
        };

        // All ports in one call so none is handed out twice.
        let manager_count = if options.capi {
            CapiProvider::ALL.len()
        } else {
            0
        };
        let ports = free_loopback_ports(4 + 2 * manager_count)?;
        let (etcd_client, etcd_peer, apiserver, controller_manager) = (
            ports[0],
            ports[1],
            options.api_server_port.unwrap_or(ports[2]),
            ports[3],
        );
        let manager_ports: Vec<ManagerPorts> = ports[4..]
            .chunks(2)
            .map(|p| ManagerPorts {
                webhook: p[0],
                health: p[1],
            })
            .collect();

        let ca = match &options.ca {
            Some((cert, key)) => Ca::from_pem(cert, key)?,
            None => Ca::new("beskar7-test-ca")?,
        };
        let pki = Pki::write(&root.join("pki"), &ca)?;

        running
            .processes
            .push(spawn_etcd(&testbin, &root, etcd_client, etcd_peer)?);
        // kube-apiserver retries etcd until it answers, so both start at once.
        let api_server_index = running.processes.len();
        running.processes.push(spawn_kube_apiserver(
            &testbin,
            &root,
            &pki,
            etcd_client,
            apiserver,
            "kube-apiserver",
        )?);
        let api_server_url = format!("https://127.0.0.1:{apiserver}");
        let kubeconfig = root.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &api_server_url, &ca, &pki.admin)?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        wait_apiserver_ready(&client, &mut running).await?;

        // Every CRD labelled as `clusterctl init` would, so `clusterctl move` finds the kinds.
        let mut crds = beskar7_api::crds::all();
        for crd in &mut crds {
            capi::label_as_clusterctl_installed(crd, beskar7_api::PROVIDER_NAME);
        }
        for (index, provider) in CapiProvider::ALL.iter().enumerate() {
            let mut provider_crds = load_capi_crds(&testbin, *provider)?;
            for crd in &mut provider_crds {
                capi::label_as_clusterctl_installed(crd, provider.provider_label());
                if options.capi {
                    capi::use_conversion_webhook(crd, manager_ports[index].webhook, &pki.ca_pem);
                }
            }
            crds.extend(provider_crds);
        }
        crds.push(load_crd(&testbin.clusterctl_inventory_crd())?);
        if options.ipam {
            for mut crd in load_crd_dir(&testbin.ipam_provider_crd_dir())? {
                capi::label_as_clusterctl_installed(&mut crd, "ipam-in-cluster");
                crds.push(crd);
            }
        }
        install_crds(&client, &crds).await?;
        wait_default_namespace(&client, &mut running).await?;

        let mut cp = ControlPlane {
            client,
            kubeconfig,
            api_server_url,
            testbin,
            running,
            api_server: ApiServerSpawn {
                index: api_server_index,
                pki: pki.clone(),
                etcd_client,
                port: apiserver,
                restarts: 0,
            },
        };
        if options.garbage_collector {
            cp.start_controller_manager(controller_manager).await?;
        }
        if options.capi {
            cp.start_capi(&ca, &pki.ca_pem, &manager_ports).await?;
            capi::write_inventory(&cp.client, &cp.testbin.versions.capi).await?;
        }
        if options.ipam {
            cp.start_ipam_provider().await?;
        }
        Ok(cp)
    }

    /// The in-cluster IPAM provider, without webhooks or metrics; ready once its health probe
    /// answers.
    async fn start_ipam_provider(&mut self) -> Result<(), ControlPlaneError> {
        let port = free_loopback_ports(1)?[0];
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--webhook-port=0".to_string(),
            "--metrics-bind-address=0".to_string(),
            format!("--health-probe-bind-address=127.0.0.1:{port}"),
            "--leader-elect=false".to_string(),
        ];
        let process = ManagedProcess::spawn(
            "ipam-in-cluster",
            &self.testbin.ipam_provider_binary(),
            &args,
            &[],
            self.running.log("ipam-in-cluster"),
        )?;
        self.running.processes.push(process);
        let url = format!("http://127.0.0.1:{port}/readyz");
        self.wait_http_ok(&reqwest::Client::new(), &url, "ipam-in-cluster")
            .await
    }

    /// Polls `url` until it answers 2xx, while every process keeps running.
    async fn wait_http_ok(
        &mut self,
        http: &reqwest::Client,
        url: &str,
        name: &str,
    ) -> Result<(), ControlPlaneError> {
        let start = Instant::now();
        loop {
            self.running.ensure_all_running()?;
            if matches!(http.get(url).send().await, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            if start.elapsed() > APISERVER_READY_TIMEOUT {
                return Err(self.running.not_ready(name, APISERVER_READY_TIMEOUT));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn start_controller_manager(&mut self, port: u16) -> Result<(), ControlPlaneError> {
        let cert_dir = self.running.dir().join("kube-controller-manager");
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--controllers=garbage-collector-controller,namespace-controller".to_string(),
            "--leader-elect=false".to_string(),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            // Serves /healthz with a self-signed certificate written here.
            format!("--cert-dir={}", cert_dir.display()),
        ];
        let process = ManagedProcess::spawn(
            "kube-controller-manager",
            &self.testbin.binary("kube-controller-manager"),
            &args,
            &[],
            self.running.log("kube-controller-manager"),
        )?;
        self.running.processes.push(process);

        // /healthz is served without authentication (--authorization-always-allow-paths), over
        // its own self-signed certificate, so the probe does not verify it.
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .map_err(ControlPlaneError::HttpClientUnavailable)?;
        let url = format!("https://127.0.0.1:{port}/healthz");
        self.wait_http_ok(&http, &url, "kube-controller-manager")
            .await
    }

    async fn start_capi(
        &mut self,
        ca: &Ca,
        ca_pem: &str,
        ports: &[ManagerPorts],
    ) -> Result<(), ControlPlaneError> {
        let root = self.running.dir().to_path_buf();
        let serving = ca.loopback_serving_cert("capi-webhooks")?;
        for (provider, ports) in CapiProvider::ALL.iter().zip(ports) {
            let manifest = self.testbin.capi_webhook_manifest(provider.dir_name());
            let yaml = std::fs::read_to_string(&manifest)
                .map_err(|source| io_error(&format!("reading {}", manifest.display()), source))?;
            let configs =
                capi::rewrite_webhook_manifest(&yaml, &manifest, *provider, ports.webhook, ca_pem)?;
            capi::register_webhooks(&self.client, configs).await?;

            let cert_dir = root.join("capi").join(provider.dir_name());
            std::fs::create_dir_all(&cert_dir)
                .map_err(|source| io_error("creating the webhook cert dir", source))?;
            capi::write_webhook_cert_dir(&cert_dir, &serving)?;
            let process = capi::spawn_manager(
                *provider,
                &self.testbin.binary(provider.binary()),
                &self.kubeconfig,
                &cert_dir,
                *ports,
                self.running.log(provider.dir_name()),
            )?;
            self.running.processes.push(process);
        }

        let http = reqwest::Client::new();
        let start = Instant::now();
        for (provider, ports) in CapiProvider::ALL.iter().zip(ports) {
            loop {
                self.running.ensure_all_running()?;
                if capi::manager_ready(&http, *ports).await
                    && capi::webhooks_answer(&self.client, *provider).await?
                {
                    break;
                }
                if start.elapsed() > capi::MANAGER_READY_TIMEOUT {
                    return Err(self
                        .running
                        .not_ready(provider.dir_name(), capi::MANAGER_READY_TIMEOUT));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        Ok(())
    }
}

fn spawn_etcd(
    testbin: &Testbin,
    root: &Path,
    client: u16,
    peer: u16,
) -> Result<ManagedProcess, ControlPlaneError> {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let args = vec![
        format!("--data-dir={}", root.join("etcd").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        // As envtest does: test data is thrown away, fsync only costs time.
        "--unsafe-no-fsync=true".to_string(),
        "--log-level=warn".to_string(),
    ];
    ManagedProcess::spawn(
        "etcd",
        &testbin.binary("etcd"),
        &args,
        &[],
        root.join("logs/etcd.log"),
    )
}

fn spawn_kube_apiserver(
    testbin: &Testbin,
    root: &Path,
    pki: &Pki,
    etcd_client: u16,
    port: u16,
    log_name: &str,
) -> Result<ManagedProcess, ControlPlaneError> {
    let p = |name: &str| pki.dir.join(name).display().to_string();
    let args = vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
        format!("--cert-dir={}", pki.dir.display()),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={port}"),
        "--service-cluster-ip-range=10.0.0.0/24".to_string(),
        "--authorization-mode=RBAC".to_string(),
        "--allow-privileged=true".to_string(),
        format!("--service-account-issuer=https://127.0.0.1:{port}"),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
    ];
    ManagedProcess::spawn(
        "kube-apiserver",
        &testbin.binary("kube-apiserver"),
        &args,
        &[],
        root.join(format!("logs/{log_name}.log")),
    )
}

/// Polls `/readyz` (all post-start hooks done, RBAC bootstrap roles in place) while checking
/// that etcd and kube-apiserver are still alive.
async fn wait_apiserver_ready(
    client: &Client,
    running: &mut Running,
) -> Result<(), ControlPlaneError> {
    let start = Instant::now();
    loop {
        running.ensure_all_running()?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("static request is valid");
        if let Ok(body) = client.request_text(request).await
            && body.trim() == "ok"
        {
            return Ok(());
        }
        if start.elapsed() > APISERVER_READY_TIMEOUT {
            return Err(running.not_ready("kube-apiserver", APISERVER_READY_TIMEOUT));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The `default` namespace is created by a controller loop in kube-apiserver, shortly after
/// `/readyz` turns ok; tests create objects in it.
async fn wait_default_namespace(
    client: &Client,
    running: &mut Running,
) -> Result<(), ControlPlaneError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        running.ensure_all_running()?;
        if let Ok(Some(_)) = namespaces.get_opt("default").await {
            return Ok(());
        }
        if start.elapsed() > APISERVER_READY_TIMEOUT {
            return Err(running.not_ready("kube-apiserver", APISERVER_READY_TIMEOUT));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn load_capi_crds(
    testbin: &Testbin,
    provider: CapiProvider,
) -> Result<Vec<CustomResourceDefinition>, ControlPlaneError> {
    let dir = testbin.capi_crd_dir(provider.dir_name());
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| io_error(&format!("reading {}", dir.display()), source))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let mut crd = load_crd(path)?;
            // The bases lack the contract labels CAPI's kustomization adds to the kubeadm
            // providers' CRDs; without them the core manager cannot resolve the version of a
            // KubeadmControlPlane or KubeadmConfigTemplate and never adopts them.
            if provider != CapiProvider::Core {
                let labels = crd.metadata.labels.get_or_insert_with(Default::default);
                labels.insert("cluster.x-k8s.io/v1beta1".into(), "v1beta1".into());
                labels.insert("cluster.x-k8s.io/v1beta2".into(), "v1beta2".into());
            }
            Ok(crd)
        })
        .collect()
}

/// Every CRD of a directory of YAML files, in file name order.
fn load_crd_dir(dir: &Path) -> Result<Vec<CustomResourceDefinition>, ControlPlaneError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| io_error(&format!("reading {}", dir.display()), source))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_crd(p)).collect()
}

fn load_crd(path: &Path) -> Result<CustomResourceDefinition, ControlPlaneError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| io_error(&format!("reading {}", path.display()), source))?;
    serde_yaml::from_str(&text).map_err(|source| ControlPlaneError::ManifestInvalid {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates the CRDs concurrently, then waits until every one is Established (served).
async fn install_crds(
    client: &Client,
    crds: &[CustomResourceDefinition],
) -> Result<(), ControlPlaneError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PostParams::default();
    try_join_all(crds.iter().map(|crd| {
        let api = api.clone();
        let pp = pp.clone();
        async move {
            api.create(&pp, crd)
                .await
                .map_err(|source| ControlPlaneError::CrdRejected {
                    name: crd.metadata.name.clone().unwrap_or_default(),
                    source,
                })
        }
    }))
    .await?;
    try_join_all(crds.iter().map(|crd| {
        let api = api.clone();
        let name = crd.metadata.name.clone().unwrap_or_default();
        async move {
            let established = await_condition(api, &name, conditions::is_crd_established());
            match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, established).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(source)) => Err(ControlPlaneError::CrdWaitFailed { name, source }),
                Err(_) => Err(ControlPlaneError::CrdNotEstablished {
                    name,
                    timeout: CRD_ESTABLISHED_TIMEOUT,
                }),
            }
        }
    }))
    .await?;
    Ok(())
}

/// Certificate and key files kube-apiserver reads, plus what the kubeconfig embeds.
#[derive(Clone)]
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    admin: certs::CertPair,
}

impl Pki {
    fn write(dir: &Path, ca: &Ca) -> Result<Self, ControlPlaneError> {
        let ca_pem = ca.cert_pem();
        let serving = ca.loopback_serving_cert("kube-apiserver")?;
        // system:masters bypasses RBAC: the tests act as cluster admin, as envtest's user does.
        let admin = ca.client_cert("beskar7-test-admin", &["system:masters"])?;
        let (sa_key, sa_pub) = certs::service_account_key_pair()?;
        write_file(&dir.join("ca.crt"), &ca_pem)?;
        write_file(&dir.join("apiserver.crt"), &serving.cert_pem)?;
        write_file(&dir.join("apiserver.key"), &serving.key_pem)?;
        write_file(&dir.join("sa.key"), &sa_key)?;
        write_file(&dir.join("sa.pub"), &sa_pub)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_pem,
            admin,
        })
    }
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Ca,
    admin: &certs::CertPair,
) -> Result<(), ControlPlaneError> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "beskar7-test", "cluster": {
            "server": server,
            "certificate-authority-data": b64(&ca.cert_pem()),
        }}],
        "users": [{"name": "beskar7-test-admin", "user": {
            "client-certificate-data": b64(&admin.cert_pem),
            "client-key-data": b64(&admin.key_pem),
        }}],
        "contexts": [{"name": "beskar7-test", "context": {
            "cluster": "beskar7-test",
            "user": "beskar7-test-admin",
            "namespace": "default",
        }}],
        "current-context": "beskar7-test",
    });
    let yaml = serde_yaml::to_string(&kubeconfig).expect("a JSON value always serializes");
    write_file(path, &yaml)
}

async fn client_from_kubeconfig(path: &Path) -> Result<Client, ControlPlaneError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(ControlPlaneError::KubeconfigInvalid)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(ControlPlaneError::KubeconfigInvalid)?;
    Client::try_from(config).map_err(|source| ControlPlaneError::KubeRequestFailed {
        what: "building the client".to_string(),
        source,
    })
}

/// With both rustls providers compiled in (kube enables ring, reqwest aws-lc-rs, and features
/// are unified across the workspace), rustls refuses to choose and the first TLS connection
/// panics. ring is what kube is configured for. An error only means a provider is already
/// installed, by the test or by an earlier control plane, which is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), ControlPlaneError> {
    std::fs::write(path, contents)
        .map_err(|source| io_error(&format!("writing {}", path.display()), source))
}

fn io_error(what: &str, source: std::io::Error) -> ControlPlaneError {
    ControlPlaneError::Io {
        what: what.to_string(),
        source,
    }
}

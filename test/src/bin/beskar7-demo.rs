//! `make demo`: the provider's main job on a local default. Starts a local control plane with
//! CAPI, a BMC lab of emulated servers, the workload-cluster stand-in and `beskar7 manager`;
//! enrols the servers as PhysicalHosts; creates a cluster from our cluster template with
//! `clusterctl generate cluster`; shows hosts and machines moving through their states until
//! every machine is Running. Then it keeps everything running until Ctrl-C, or with `--once`
//! exits 0 (non-zero with the reason on failure), printing `N/N machines provisioned in S s`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use beskar7_api::PhysicalHost;
use beskar7_test::fixtures::{build_test_iso, enroll_lab};
use beskar7_test::{BmcLab, ControlPlane, ManagerProcess, WorkloadStandIn, free_port};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::discovery;

const NS: &str = "default";
const CLUSTER: &str = "demo";

struct Args {
    once: bool,
    control_planes: usize,
    workers: usize,
    timeout: Duration,
    binary: PathBuf,
    template: PathBuf,
}

fn parse_args() -> Result<Args> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        once: false,
        control_planes: 1,
        workers: 2,
        timeout: Duration::from_secs(900),
        binary: root.join("target/release/beskar7"),
        template: root.join("templates/cluster-template.yaml"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--once" => a.once = true,
            "--control-planes" => a.control_planes = value("--control-planes")?.parse()?,
            "--workers" => a.workers = value("--workers")?.parse()?,
            "--timeout-seconds" => {
                a.timeout = Duration::from_secs(value("--timeout-seconds")?.parse()?)
            }
            "--binary" => a.binary = value("--binary")?.into(),
            "--template" => a.template = value("--template")?.into(),
            "-h" | "--help" => {
                println!(
                    "beskar7-demo [--once] [--control-planes N] [--workers N] [--timeout-seconds S] [--binary PATH] [--template PATH]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn step(what: &str) {
    println!("==> {what}");
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    beskar7_test::install_crypto_provider();
    let machines_wanted = args.control_planes + args.workers;
    anyhow::ensure!(
        args.binary.exists(),
        "{} not found: build it with `cargo build --release --bin beskar7` (make demo does)",
        args.binary.display()
    );

    step("starting the local control plane: kube-apiserver, etcd, CAPI core + kubeadm managers");
    let cp = ControlPlane::builder().with_capi().start().await?;
    step(&format!(
        "starting the BMC lab: sushy-tools emulator with {machines_wanted} servers (Redfish over TLS, basic auth)"
    ));
    let lab = BmcLab::start(machines_wanted).await?;
    let work = tempfile::tempdir()?;
    let image_url = lab.add_image(
        "kairos-demo.iso",
        &build_test_iso(work.path(), "/boot/grub2/grub.cfg")?,
    )?;
    step("starting beskar7 manager");
    let mut manager = ManagerProcess::start(&args.binary, &cp, &[])?;
    let client = cp.client();
    step("enrolling the servers as PhysicalHosts");
    let hosts = enroll_lab(&client, NS, &lab, &[]).await?;
    println!("    {}", hosts.join(", "));

    let endpoint_port = free_port();
    let standin = WorkloadStandIn::start(
        client.clone(),
        NS,
        CLUSTER,
        endpoint_port,
        lab.systems.clone(),
        lab.ca_pem.clone(),
    );

    step(&format!(
        "generating cluster {CLUSTER:?} from {} with clusterctl",
        args.template.display()
    ));
    let manifests = generate_cluster(&cp, &args, &image_url, endpoint_port, work.path())?;
    let applied = apply_all(&client, &manifests).await?;
    println!("    applied {applied} objects");

    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let (table, running) = status_table(&client).await?;
        if table != last {
            if tty {
                print!("\x1b[2J\x1b[H");
            }
            println!("{table}");
            println!(
                "elapsed {:.0} s; {running}/{machines_wanted} machines Running",
                started.elapsed().as_secs_f64()
            );
            std::io::stdout().flush()?;
            last = table;
        }
        if running >= machines_wanted {
            break;
        }
        if let Some(status) = manager.try_wait() {
            bail!(
                "beskar7 manager exited ({status}); last log lines:\n{}",
                manager.log_tail(30)
            );
        }
        if started.elapsed() > args.timeout {
            bail!(
                "{running}/{machines_wanted} machines Running after {} s; stand-in errors: {:?}; manager log tail:\n{}",
                args.timeout.as_secs(),
                standin.errors(),
                manager.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let took = started.elapsed().as_secs_f64();
    println!();
    println!(
        "Summary: cluster {CLUSTER:?} with {} control-plane and {} worker machines on {} PhysicalHosts.",
        args.control_planes,
        args.workers,
        hosts.len()
    );
    for n in standin.booted() {
        println!(
            "    node {:<24} providerID {}{}",
            n.node_name,
            n.provider_id,
            if n.control_plane {
                "  (control plane)"
            } else {
                ""
            }
        );
    }
    println!(
        "    metrics: {}/metrics  probes: {}/readyz  manager log: {}",
        manager.metrics,
        manager.health,
        manager.log.display()
    );
    println!(
        "    kubeconfig of the management cluster: {}",
        cp.kubeconfig_path().display()
    );
    println!("{machines_wanted}/{machines_wanted} machines provisioned in {took:.0} s");
    if args.once {
        return Ok(());
    }
    println!("Everything keeps running; Ctrl-C stops and cleans up.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// `clusterctl generate cluster --from <template>`, offline, with the template's variables.
fn generate_cluster(
    cp: &ControlPlane,
    args: &Args,
    image_url: &str,
    endpoint_port: u16,
    work: &Path,
) -> Result<String> {
    let home = work.join("clusterctl-home");
    std::fs::create_dir_all(home.join(".cluster-api"))?;
    std::fs::write(home.join(".cluster-api/clusterctl.yaml"), "providers: []\n")?;
    let out = cp
        .clusterctl()
        .args(["generate", "cluster", CLUSTER, "--from"])
        .arg(&args.template)
        .args(["--target-namespace", NS, "--kubernetes-version", "v1.36.3"])
        .args([
            "--control-plane-machine-count",
            &args.control_planes.to_string(),
        ])
        .args(["--worker-machine-count", &args.workers.to_string()])
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
        .env("CONTROL_PLANE_ENDPOINT_HOST", "127.0.0.1")
        .env("CONTROL_PLANE_ENDPOINT_PORT", endpoint_port.to_string())
        .env("BESKAR7_IMAGE_URL", image_url)
        .output()
        .context("running clusterctl")?;
    if !out.status.success() {
        bail!(
            "clusterctl generate cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Server-side applies every document of a multi-document YAML stream.
async fn apply_all(client: &kube::Client, yaml: &str) -> Result<usize> {
    use serde::Deserialize;
    let mut n = 0;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value.clone())?;
        let types = obj
            .types
            .clone()
            .context("a document without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (ar, _caps): (ApiResource, _) = discovery::pinned_kind(client, &gvk).await?;
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| NS.to_string());
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let name = obj
            .metadata
            .name
            .clone()
            .context("a document without a name")?;
        api.patch(
            &name,
            &PatchParams::apply("beskar7-demo"),
            &Patch::Apply(&value),
        )
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
        n += 1;
    }
    Ok(n)
}

/// A table of hosts and machines; and how many Machines are Running.
async fn status_table(client: &kube::Client) -> Result<(String, usize)> {
    let hosts = Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?
        .items;
    let machines_api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "cluster.x-k8s.io",
            "v1beta2",
            "Machine",
        )),
    );
    let machines = machines_api.list(&ListParams::default()).await?.items;
    let mut t = String::new();
    t.push_str(&format!(
        "{:<12} {:<15} {:<6} {:<32}\n",
        "HOST", "STATE", "POWER", "CONSUMER"
    ));
    for h in &hosts {
        let st = h.status.clone().unwrap_or_default();
        t.push_str(&format!(
            "{:<12} {:<15} {:<6} {:<32}\n",
            h.metadata.name.as_deref().unwrap_or(""),
            st.state.map(|s| s.as_str()).unwrap_or("-"),
            st.observed_power_state.as_deref().unwrap_or("-"),
            h.spec
                .consumer_ref
                .as_ref()
                .map(|c| c.name.as_str())
                .unwrap_or("-"),
        ));
    }
    t.push('\n');
    t.push_str(&format!(
        "{:<32} {:<12} {:<30} {:<24}\n",
        "MACHINE", "PHASE", "PROVIDERID", "NODE"
    ));
    let mut running = 0;
    for m in &machines {
        let phase = m.data["status"]["phase"].as_str().unwrap_or("-");
        let node = m.data["status"]["nodeRef"]["name"].as_str().unwrap_or("-");
        if phase == "Running" && node != "-" {
            running += 1;
        }
        t.push_str(&format!(
            "{:<32} {:<12} {:<30} {:<24}\n",
            m.metadata.name.as_deref().unwrap_or(""),
            phase,
            m.data["spec"]["providerID"].as_str().unwrap_or("-"),
            node
        ));
    }
    Ok((t, running))
}

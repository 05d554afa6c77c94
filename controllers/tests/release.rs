//! The clusterctl release (`make release`, hack/release.sh) against the real tools:
//! - clusterctl of the pinned CAPI release, offline, with `out/` as a local repository;
//! - the generated cluster manifests of every flavour accepted by kube-apiserver with CAPI's
//!   webhooks (server-side dry-run);
//! - infrastructure-components.yaml applied with server-side dry-run;
//! - the manager running under a ServiceAccount token bound to exactly the released RBAC.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use beskar7_test::{ControlPlane, Testbin};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{ApiResource, Scope};
use serde::Deserialize;
use serde_json::{Value, json};

const VERSION: &str = "v0.1.0";
const PROVIDER_NAMESPACE: &str = "beskar7-system";
const PROVIDER_LABEL: (&str, &str) = ("cluster.x-k8s.io/provider", "infrastructure-beskar7");
/// Kinds of the Talos providers (CABPT/CACPPT), which the local control plane does not run.
const TALOS_KINDS: [&str; 2] = ["TalosControlPlane", "TalosConfigTemplate"];
/// cert-manager's kinds; the local control plane has no cert-manager.
const CERT_MANAGER_KINDS: [&str; 2] = ["Certificate", "Issuer"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `hack/release.sh v0.1.0` into a temp dir; returns (the temp dir, the version directory).
fn release() -> (tempfile::TempDir, PathBuf) {
    // One at a time: on a fresh machine the first run builds kustomize into the shared cache.
    static RELEASE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = RELEASE.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(repo_root().join("hack/release.sh"))
        .arg(VERSION)
        .env("OUT_DIR", out.path())
        .output()
        .expect("hack/release.sh runs");
    assert!(
        output.status.success(),
        "hack/release.sh failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = out.path().join("infrastructure-beskar7").join(VERSION);
    for file in [
        "infrastructure-components.yaml",
        "metadata.yaml",
        "cluster-template.yaml",
        "clusterclass-beskar7.yaml",
    ] {
        assert!(dir.join(file).is_file(), "release has no {file}");
    }
    (out, dir)
}

/// clusterctl with its config and home in a temp dir, the version check off, and one provider:
/// beskar7 from the release directory.
struct Clusterctl {
    bin: PathBuf,
    home: tempfile::TempDir,
    config: PathBuf,
}

impl Clusterctl {
    fn new(release_dir: &Path) -> Clusterctl {
        let testbin = Testbin::locate().expect("testbin (make testbin)");
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("clusterctl.yaml");
        let url = format!(
            "file://{}",
            release_dir.join("infrastructure-components.yaml").display()
        );
        std::fs::write(
            &config,
            format!(
                "providers:\n  - name: beskar7\n    type: InfrastructureProvider\n    url: {url}\n"
            ),
        )
        .unwrap();
        Clusterctl {
            bin: testbin.binary("clusterctl"),
            home,
            config,
        }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("xdg"))
            .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("clusterctl runs")
    }

    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run(args, env);
        assert!(
            out.status.success(),
            "clusterctl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `clusterctl generate cluster` for one flavour (`""` is the default template).
    fn generate_cluster(&self, flavour: &str, name: &str, namespace: &str) -> String {
        let mut args = vec![
            "generate",
            "cluster",
            name,
            "--infrastructure",
            "beskar7:v0.1.0",
            "--target-namespace",
            namespace,
        ];
        args.extend([
            "--kubernetes-version",
            "v1.36.3",
            "--control-plane-machine-count",
            "1",
            "--worker-machine-count",
            "2",
        ]);
        if !flavour.is_empty() {
            args.extend(["--flavor", flavour]);
        }
        self.ok(&args, &flavour_env(flavour))
    }
}

/// The variables each flavour needs (the rest have defaults in the templates).
fn flavour_env(flavour: &str) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("CONTROL_PLANE_ENDPOINT_HOST", "192.0.2.10"),
        ("BESKAR7_IMAGE_URL", "http://images.example/os.iso"),
    ];
    match flavour {
        "talos" => env.push(("TALOS_VERSION", "v1.11")),
        "topology" => env.push(("CLUSTER_TOPOLOGY", "true")),
        "static-ip" => env.extend([
            ("BESKAR7_IP_POOL_ADDRESSES", "10.0.0.100-10.0.0.150"),
            ("BESKAR7_IP_POOL_GATEWAY", "10.0.0.1"),
            ("BESKAR7_NAMESERVER", "10.0.0.53"),
        ]),
        _ => {}
    }
    env
}

const FLAVOURS: [&str; 6] = ["", "flatcar", "leapmicro", "talos", "topology", "static-ip"];

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn gvk(v: &Value) -> GroupVersionKind {
    let api_version = v["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind(v))
}

/// kubelet's provider-id values in the kubeadm configs of a generated cluster.
fn provider_id_args(objects: &[Value]) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(v: &Value, found: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(args)) = m.get("kubeletExtraArgs") {
                    for a in args {
                        if a["name"] == "provider-id" {
                            found.push(a["value"].as_str().unwrap_or_default().to_string());
                        }
                    }
                }
                m.values().for_each(|v| walk(v, found));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    objects.iter().for_each(|o| walk(o, &mut found));
    found
}

#[test]
fn clusterctl_generates_the_provider_and_every_flavour_offline() {
    let (_out, dir) = release();
    let clusterctl = Clusterctl::new(&dir);

    let components = clusterctl.ok(
        &["generate", "provider", "--infrastructure", "beskar7:v0.1.0"],
        &[],
    );
    assert!(
        !components.contains("${"),
        "unsubstituted variables in:\n{components}"
    );
    let objects = docs(&components);
    let namespaces: Vec<&Value> = objects.iter().filter(|o| kind(o) == "Namespace").collect();
    assert_eq!(namespaces.len(), 1, "one Namespace");
    assert_eq!(namespaces[0]["metadata"]["name"], PROVIDER_NAMESPACE);
    for o in &objects {
        let name = format!("{} {}", kind(o), o["metadata"]["name"]);
        assert_eq!(
            o["metadata"]["labels"][PROVIDER_LABEL.0], PROVIDER_LABEL.1,
            "{name} lacks the provider label"
        );
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            assert_eq!(
                ns, PROVIDER_NAMESPACE,
                "{name} is outside the provider namespace"
            );
        }
    }
    let deployment = objects
        .iter()
        .find(|o| kind(o) == "Deployment")
        .expect("a Deployment");
    let manager = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "manager")
        .expect("a container named manager");
    assert_eq!(manager["image"], "ghcr.io/beskar7/beskar7:v0.1.0");
    assert_eq!(manager["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        manager["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("--artifact-base-url=http")),
        "defaults substituted: {:?}",
        manager["args"]
    );
    let crds: BTreeSet<&str> = objects
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    // Every kind of the API crate, the remediation kinds included.
    assert_eq!(crds.len(), beskar7_api::crds::all().len(), "{crds:?}");
    assert!(
        crds.contains("beskar7remediationtemplates.infrastructure.cluster.x-k8s.io"),
        "{crds:?}"
    );
    for o in objects
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
    {
        assert_eq!(
            o["metadata"]["labels"]["cluster.x-k8s.io/v1beta2"], "v1alpha1",
            "contract label on {}",
            o["metadata"]["name"]
        );
    }

    // Least privilege: no wildcards, Secrets only read, nothing deleted, only events created.
    let role = objects
        .iter()
        .find(|o| kind(o) == "ClusterRole")
        .expect("a ClusterRole");
    for rule in role["rules"].as_array().unwrap() {
        let list = |k: &str| {
            rule[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let (groups, resources, verbs) = (list("apiGroups"), list("resources"), list("verbs"));
        assert!(
            !groups
                .iter()
                .chain(&resources)
                .chain(&verbs)
                .any(|v| v.contains('*')),
            "wildcard in {rule}"
        );
        // The IPAM contract has the provider create and delete its own IPAddressClaims; nothing
        // else is deleted, and nothing else but events is created.
        if verbs
            .iter()
            .any(|v| v == "delete" || v == "deletecollection")
        {
            assert_eq!(
                resources,
                ["ipaddressclaims"],
                "only IPAddressClaims are deleted: {rule}"
            );
            assert!(!verbs.iter().any(|v| v == "deletecollection"), "{rule}");
        }
        if verbs.iter().any(|v| v == "create") {
            assert!(
                resources == ["events"] || resources == ["ipaddressclaims"],
                "only events and IPAddressClaims are created: {rule}"
            );
        }
        if resources.iter().any(|r| r == "secrets") {
            assert_eq!(resources, ["secrets"]);
            assert_eq!(verbs, ["get", "list", "watch"], "Secrets are only read");
        }
    }

    for flavour in FLAVOURS {
        let yaml = clusterctl.generate_cluster(flavour, "c1", "team-a");
        assert!(
            !yaml.contains("${"),
            "flavour {flavour:?}: unsubstituted variables"
        );
        let objects = docs(&yaml);
        assert!(
            objects
                .iter()
                .all(|o| o["metadata"]["namespace"] == "team-a"),
            "flavour {flavour:?}: every object in the target namespace"
        );
        let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
        let ids = provider_id_args(&objects);
        match flavour {
            "" => {
                assert!(
                    kinds.is_superset(&BTreeSet::from([
                        "Cluster",
                        "Beskar7Cluster",
                        "KubeadmControlPlane",
                        "Beskar7MachineTemplate",
                        "MachineDeployment",
                        "KubeadmConfigTemplate"
                    ])),
                    "{kinds:?}"
                );
                assert_eq!(ids.len(), 3, "init, join and worker join: {ids:?}");
                assert!(
                    ids.iter().all(|i| i == "{{ ds.meta_data.provider_id }}"),
                    "{ids:?}"
                );
            }
            "flatcar" | "leapmicro" => {
                assert_eq!(ids.len(), 3, "{ids:?}");
                assert!(ids.iter().all(|i| i == "@@PROVIDER_ID@@"), "{ids:?}");
                assert!(
                    yaml.contains("format: ignition"),
                    "flavour {flavour}: Ignition bootstrap data"
                );
                assert!(
                    yaml.contains("s|@@PROVIDER_ID@@|"),
                    "flavour {flavour}: the placeholder is substituted on the machine"
                );
            }
            "talos" => assert!(kinds.is_superset(&BTreeSet::from(TALOS_KINDS)), "{kinds:?}"),
            "static-ip" => {
                let pool = objects
                    .iter()
                    .find(|o| kind(o) == "InClusterIPPool")
                    .expect("the pool");
                assert_eq!(pool["spec"]["gateway"], "10.0.0.1");
                let templates: Vec<&Value> = objects
                    .iter()
                    .filter(|o| kind(o) == "Beskar7MachineTemplate")
                    .collect();
                assert_eq!(templates.len(), 2);
                for t in templates {
                    let iface = &t["spec"]["template"]["spec"]["network"]["interfaces"][0];
                    assert_eq!(iface["addressesFromPools"][0]["name"], "c1-pool", "{t:?}");
                }
                assert_eq!(ids.len(), 3, "{ids:?}");
            }
            "topology" => assert!(
                kinds.contains("ClusterClass") && kinds.contains("Cluster"),
                "clusterctl adds clusterclass-beskar7.yaml: {kinds:?}"
            ),
            _ => unreachable!(),
        }
    }
}

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// The API of an object's kind, or `None` when kube-apiserver does not serve the kind.
async fn api_for(client: &Client, o: &Value) -> Option<Api<DynamicObject>> {
    let (ar, caps): (ApiResource, _) = kube::discovery::pinned_kind(client, &gvk(o)).await.ok()?;
    Some(match (caps.scope, o["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    })
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().expect("metadata.name")
}

/// Server-side apply, dry-run: admission (CAPI's webhooks, CEL rules, schema) without storing.
async fn dry_run_apply(api: &Api<DynamicObject>, o: &Value) -> Result<DynamicObject, kube::Error> {
    api.patch(
        name(o),
        &PatchParams::apply("beskar7-release-test").force().dry_run(),
        &Patch::Apply(o),
    )
    .await
}

async fn apply(api: &Api<DynamicObject>, o: &Value) -> DynamicObject {
    api.patch(
        name(o),
        &PatchParams::apply("beskar7-release-test").force(),
        &Patch::Apply(o),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {} {}: {e}", kind(o), name(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clusters_pass_server_side_dry_run_with_capi_webhooks() {
    let (_out, dir) = release();
    let clusterctl = Clusterctl::new(&dir);
    // With the in-cluster IPAM provider's CRDs: the static-ip flavour's pool is checked too.
    let cp = ControlPlane::builder()
        .with_capi()
        .with_ipam()
        .start()
        .await
        .expect("local control plane with CAPI and IPAM");
    let client = cp.client();

    for flavour in FLAVOURS {
        let ns = format!(
            "flavour-{}",
            if flavour.is_empty() {
                "default"
            } else {
                flavour
            }
        );
        namespace(&client, &ns).await;
        let objects = docs(&clusterctl.generate_cluster(flavour, "c1", &ns));
        let mut checked = Vec::new();
        let mut unserved = Vec::new();
        // The topology Cluster is validated against its ClusterClass, which must exist: the
        // class and its templates are created for real first, the Cluster is dry-run.
        let (class_objects, rest): (Vec<&Value>, Vec<&Value>) = objects
            .iter()
            .partition(|o| flavour == "topology" && kind(o) != "Cluster");
        let mut class_objects = class_objects;
        class_objects.sort_by_key(|o| kind(o) == "ClusterClass");
        for o in class_objects {
            let api = api_for(&client, o)
                .await
                .unwrap_or_else(|| panic!("{} is not served", kind(o)));
            apply(&api, o).await;
            checked.push(kind(o).to_string());
        }
        for o in rest {
            match api_for(&client, o).await {
                Some(api) => {
                    // The harness runs CAPI with KubeadmBootstrapFormatIgnition on, as the
                    // Flatcar and Leap Micro flavours require: Ignition fields are checked too.
                    let answered = dry_run_apply(&api, o).await.unwrap_or_else(|e| {
                        panic!("flavour {flavour:?}: {} {} rejected: {e}", kind(o), name(o))
                    });
                    assert_eq!(answered.metadata.name.as_deref(), Some(name(o)));
                    checked.push(kind(o).to_string());
                }
                None => unserved.push(o),
            }
        }
        if flavour == "talos" {
            // No Talos providers here: their two kinds cannot be checked by the API server;
            // check that they are the only ones, and well-formed.
            let kinds: BTreeSet<&str> = unserved.iter().map(|o| kind(o)).collect();
            assert_eq!(
                kinds,
                BTreeSet::from(TALOS_KINDS),
                "only the Talos kinds are unknown to the control plane"
            );
            for o in &unserved {
                assert!(
                    gvk(o).group.ends_with(".cluster.x-k8s.io") && gvk(o).version == "v1alpha3",
                    "{o}"
                );
                assert!(o["spec"].is_object(), "{o}");
            }
            let tcp = unserved
                .iter()
                .find(|o| kind(o) == "TalosControlPlane")
                .unwrap();
            assert_eq!(
                tcp["spec"]["infrastructureTemplate"]["kind"],
                "Beskar7MachineTemplate"
            );
            assert_eq!(tcp["spec"]["replicas"], 1);
        } else {
            assert!(
                unserved.is_empty(),
                "flavour {flavour:?}: kinds the control plane does not serve: {:?}",
                unserved.iter().map(|o| kind(o)).collect::<Vec<_>>()
            );
        }
        assert!(
            checked.iter().any(|k| k == "Cluster"),
            "flavour {flavour:?}: {checked:?}"
        );
        eprintln!("flavour {flavour:?}: accepted {checked:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_components_apply_with_server_side_dry_run() {
    let (_out, dir) = release();
    let clusterctl = Clusterctl::new(&dir);
    let components = clusterctl.ok(
        &["generate", "provider", "--infrastructure", "beskar7:v0.1.0"],
        &[],
    );
    let objects = docs(&components);
    let cp = ControlPlane::start().await.expect("local control plane");
    let client = cp.client();
    // Dry-run objects in a namespace that does not exist are refused: the Namespace first.
    namespace(&client, PROVIDER_NAMESPACE).await;

    let mut applied = BTreeSet::new();
    let mut cert_manager = Vec::new();
    for o in &objects {
        match api_for(&client, o).await {
            Some(api) => {
                dry_run_apply(&api, o)
                    .await
                    .unwrap_or_else(|e| panic!("{} {} rejected: {e}", kind(o), name(o)));
                applied.insert(kind(o).to_string());
            }
            None => cert_manager.push(o),
        }
    }
    for k in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "ValidatingWebhookConfiguration",
        "Namespace",
    ] {
        assert!(applied.contains(k), "no {k} applied: {applied:?}");
    }
    // config/samples: every example object is accepted as written.
    namespace(&client, "samples").await;
    let samples_dir = repo_root().join("config/samples");
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(samples_dir.join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut sample_kinds = BTreeSet::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let text = std::fs::read_to_string(samples_dir.join(file.as_str().unwrap())).unwrap();
        for mut o in docs(&text) {
            o["metadata"]["namespace"] = json!("samples");
            let api = api_for(&client, &o)
                .await
                .unwrap_or_else(|| panic!("sample kind {} not served", kind(&o)));
            dry_run_apply(&api, &o)
                .await
                .unwrap_or_else(|e| panic!("sample {file} rejected: {e}"));
            sample_kinds.insert(kind(&o).to_string());
        }
    }
    assert_eq!(sample_kinds.len(), 5, "{sample_kinds:?}");

    // No cert-manager in the local control plane: Certificate and Issuer are the only kinds it
    // does not know; check them by hand against what the Deployment and webhooks expect.
    let kinds: BTreeSet<&str> = cert_manager.iter().map(|o| kind(o)).collect();
    assert_eq!(kinds, BTreeSet::from(CERT_MANAGER_KINDS));
    let cert = cert_manager
        .iter()
        .find(|o| kind(o) == "Certificate")
        .unwrap();
    let issuer = cert_manager.iter().find(|o| kind(o) == "Issuer").unwrap();
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(issuer["apiVersion"], "cert-manager.io/v1");
    assert!(issuer["spec"]["selfSigned"].is_object());
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        dns.contains(&"beskar7-webhook-service.beskar7-system.svc"),
        "{dns:?}"
    );
    let deployment = objects.iter().find(|o| kind(o) == "Deployment").unwrap();
    let secret_volumes: Vec<(&str, bool)> = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            Some((
                v["secret"]["secretName"].as_str()?,
                v["secret"]["optional"] == true,
            ))
        })
        .collect();
    assert_eq!(
        secret_volumes,
        vec![
            (cert["spec"]["secretName"].as_str().unwrap(), false),
            // Created by the operator; the manager runs (and warns) without it.
            ("beskar7-artifact-token-key", true),
        ],
        "the manager mounts the Certificate's Secret and the optional artifact token key"
    );
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"--artifact-token-key-file=/etc/beskar7/artifact-token/key"),
        "{args:?}"
    );
    let webhooks = objects
        .iter()
        .find(|o| kind(o) == "ValidatingWebhookConfiguration")
        .unwrap();
    assert_eq!(
        webhooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!(
            "{}/{}",
            cert["metadata"]["namespace"].as_str().unwrap(),
            cert["metadata"]["name"].as_str().unwrap()
        )
    );
}

/// A kubeconfig for the control plane's server and CA with a bearer token instead of the admin
/// client certificate.
fn token_kubeconfig(admin: &Path, token: &str, out: &Path) {
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "beskar7-manager", "user": {"token": token}}],
        "contexts": [{"name": "beskar7-manager", "context": {"cluster": "local", "user": "beskar7-manager"}}],
        "current-context": "beskar7-manager",
    });
    std::fs::write(out, serde_yaml::to_string(&config).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_runs_under_exactly_the_released_rbac() {
    let (_out, dir) = release();
    let clusterctl = Clusterctl::new(&dir);
    let objects = docs(&clusterctl.ok(
        &["generate", "provider", "--infrastructure", "beskar7:v0.1.0"],
        &[],
    ));
    let cp = ControlPlane::start().await.expect("local control plane");
    let client = cp.client();
    namespace(&client, PROVIDER_NAMESPACE).await;

    // Exactly the RBAC of the release, for real.
    let rbac_kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let mut created = Vec::new();
    for o in objects.iter().filter(|o| rbac_kinds.contains(&kind(o))) {
        let api = api_for(&client, o).await.unwrap();
        apply(&api, o).await;
        created.push(format!("{} {}", kind(o), name(o)));
    }
    assert_eq!(created.len(), 5, "{created:?}");
    let sa = objects
        .iter()
        .find(|o| kind(o) == "ServiceAccount")
        .unwrap();
    let deployment = objects.iter().find(|o| kind(o) == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"], sa["metadata"]["name"],
        "the Deployment runs as the released ServiceAccount"
    );

    // A token for that ServiceAccount (TokenRequest API) in a kubeconfig of its own.
    let request: TokenRequest = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), PROVIDER_NAMESPACE)
        .create_token_request(name(sa), &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("token status")
        .token;
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("kubeconfig");
    token_kubeconfig(cp.kubeconfig_path(), &token, &kubeconfig);

    // Things for each controller to do: a CAPI Cluster owning a Beskar7Cluster with an endpoint,
    // a machine template, a host whose credentials Secret is missing.
    let ns = "team-a";
    namespace(&client, ns).await;
    let capi_cluster: Value = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": "c1", "namespace": ns},
        "spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "Beskar7Cluster", "name": "c1"}},
    });
    let capi_api = api_for(&client, &capi_cluster)
        .await
        .expect("CAPI Cluster served");
    let capi_cluster = apply(&capi_api, &capi_cluster).await;
    let b7c = json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "Beskar7Cluster",
        "metadata": {"name": "c1", "namespace": ns, "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
                     "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "name": "c1", "uid": capi_cluster.metadata.uid.clone().unwrap()}]},
        "spec": {"controlPlaneEndpoint": {"host": "192.0.2.10", "port": 6443}},
    });
    let b7c_api = api_for(&client, &b7c).await.unwrap();
    apply(&b7c_api, &b7c).await;
    let template = json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "Beskar7MachineTemplate",
        "metadata": {"name": "workers", "namespace": ns},
        "spec": {"template": {"spec": {"osFamily": "kairos", "imageURL": "http://images.example/os.iso"}}},
    });
    let template_api = api_for(&client, &template).await.unwrap();
    apply(&template_api, &template).await;
    let host = json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "PhysicalHost",
        "metadata": {"name": "server-00", "namespace": ns},
        "spec": {"redfishConnection": {"address": "https://127.0.0.1:1", "credentialsSecretRef": "server-00-bmc"}},
    });
    let host_api = api_for(&client, &host).await.unwrap();
    apply(&host_api, &host).await;

    // Its own kubeconfig only (nothing of the admin's); the webhooks need a serving
    // certificate, tests/webhooks.rs covers them.
    let manager = beskar7_test::ManagerProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_beskar7")),
        &kubeconfig,
        &[
            "--leader-elect=true",
            "--leader-election-namespace",
            PROVIDER_NAMESPACE,
        ],
        &[("RUST_LOG", "info,beskar7_controllers=debug,kube=info")],
    )
    .expect("start beskar7 manager");
    let http = reqwest::Client::new();
    let readyz = format!("{}/readyz", manager.health);
    let start = Instant::now();
    loop {
        if matches!(http.get(&readyz).send().await, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "manager not ready under the released RBAC; log:\n{}",
            manager.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let start = Instant::now();
    loop {
        let c = b7c_api.get("c1").await.unwrap();
        if c.data["status"]["initialization"]["provisioned"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Beskar7Cluster never provisioned; status {}; log:\n{}",
            c.data["status"],
            manager.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let start = Instant::now();
    loop {
        let t = template_api.get("workers").await.unwrap();
        let h = host_api.get("server-00").await.unwrap();
        if t.data["status"]["matchingHosts"] == 1 && h.data["status"].is_object() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "template/host status never written; template {}; host {}; log:\n{}",
            t.data["status"],
            h.data["status"],
            manager.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The lease is held in the provider namespace, by the manager.
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        PROVIDER_NAMESPACE,
    )
    .get("beskar7-manager-leader")
    .await
    .expect("the leader-election Lease");
    assert!(lease.spec.and_then(|s| s.holder_identity).is_some());

    // Give the watches and event recording a moment, then: nothing was forbidden.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = manager.log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the released RBAC is not enough:\n{log}"
    );
    assert!(log.contains("became leader"), "{log}");
}

/// Every flag the released Deployment passes exists in `beskar7 manager` (a renamed or missing
/// flag would crash-loop the pod).
#[test]
fn deployment_args_are_flags_of_the_manager() {
    let (_out, dir) = release();
    let components = std::fs::read_to_string(dir.join("infrastructure-components.yaml")).unwrap();
    let objects = docs(&components);
    let deployment = objects.iter().find(|o| kind(o) == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["/beskar7"]));
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "manager");
    let help = Command::new(env!("CARGO_BIN_EXE_beskar7"))
        .args(["manager", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let mut flags = 0;
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(flag.starts_with("--"), "{arg}");
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}="))
                || help.contains(&format!("{flag}\n")),
            "beskar7 manager has no {flag}:\n{help}"
        );
        flags += 1;
    }
    assert!(flags >= 10, "{args:?}");
}

//! The real CAPI managers against a local control plane, wired like CAPI's own envtest: CRDs from
//! the release, conversion and admission webhooks pointing at `https://127.0.0.1:<port>` with the
//! control plane's CA as bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, WebhookClientConfig as CrdClientConfig,
    WebhookConversion,
};
use kube::api::{DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde::Deserialize;

use crate::ControlPlaneError;
use crate::certs::CertPair;
use crate::process::ManagedProcess;

/// Feature gates for every manager. ClusterTopology is off by default in CAPI, but ClusterClass
/// based clusters are what a provider has to work with; KubeadmBootstrapFormatIgnition is what
/// users of the Flatcar and Leap Micro flavours turn on (EXP_KUBEADM_BOOTSTRAP_FORMAT_IGNITION);
/// MachinePool is on by default (its CRD is installed).
const FEATURE_GATES: &str = "ClusterTopology=true,KubeadmBootstrapFormatIgnition=true";

/// One of the CAPI managers the harness runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapiProvider {
    Core,
    KubeadmBootstrap,
    KubeadmControlPlane,
}

impl CapiProvider {
    pub const ALL: [CapiProvider; 3] = [
        CapiProvider::Core,
        CapiProvider::KubeadmBootstrap,
        CapiProvider::KubeadmControlPlane,
    ];

    /// Directory name under `<testbin>/capi/`, also used for logs and webhook config names.
    pub fn dir_name(self) -> &'static str {
        match self {
            CapiProvider::Core => "core",
            CapiProvider::KubeadmBootstrap => "bootstrap-kubeadm",
            CapiProvider::KubeadmControlPlane => "controlplane-kubeadm",
        }
    }

    pub fn binary(self) -> &'static str {
        match self {
            CapiProvider::Core => "cluster-api-manager",
            CapiProvider::KubeadmBootstrap => "kubeadm-bootstrap-manager",
            CapiProvider::KubeadmControlPlane => "kubeadm-control-plane-manager",
        }
    }

    /// Value of the `cluster.x-k8s.io/provider` label clusterctl gives the provider's objects.
    pub fn provider_label(self) -> &'static str {
        match self {
            CapiProvider::Core => "cluster-api",
            CapiProvider::KubeadmBootstrap => "bootstrap-kubeadm",
            CapiProvider::KubeadmControlPlane => "control-plane-kubeadm",
        }
    }

    /// `(providerName, type, namespace)` of the provider's clusterctl inventory entry.
    fn inventory_entry(self) -> (&'static str, &'static str, &'static str) {
        match self {
            CapiProvider::Core => ("cluster-api", "CoreProvider", "capi-system"),
            CapiProvider::KubeadmBootstrap => (
                "kubeadm",
                "BootstrapProvider",
                "capi-kubeadm-bootstrap-system",
            ),
            CapiProvider::KubeadmControlPlane => (
                "kubeadm",
                "ControlPlaneProvider",
                "capi-kubeadm-control-plane-system",
            ),
        }
    }

    /// A kind this provider's webhooks intercept (a mutating one where there is one, as those run
    /// before schema validation): a dry-run create of it tells whether kube-apiserver reaches the
    /// webhook server.
    fn probe_kind(self) -> GroupVersionKind {
        match self {
            CapiProvider::Core => GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "Cluster"),
            CapiProvider::KubeadmBootstrap => GroupVersionKind::gvk(
                "bootstrap.cluster.x-k8s.io",
                "v1beta2",
                "KubeadmConfigTemplate",
            ),
            CapiProvider::KubeadmControlPlane => GroupVersionKind::gvk(
                "controlplane.cluster.x-k8s.io",
                "v1beta2",
                "KubeadmControlPlane",
            ),
        }
    }
}

/// Ports of one manager.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ManagerPorts {
    pub webhook: u16,
    pub health: u16,
}

/// Sets the CRD's conversion to the manager's `/convert` endpoint, as CAPI's kustomize patches
/// (`config/crd/patches/webhook_in_*.yaml`) do. Without it kube-apiserver would only rewrite
/// apiVersion between v1beta1 and v1beta2, which silently loses fields.
pub(crate) fn use_conversion_webhook(crd: &mut CustomResourceDefinition, port: u16, ca_pem: &str) {
    if crd.spec.versions.len() < 2 {
        return;
    }
    crd.spec.conversion = Some(CustomResourceConversion {
        strategy: "Webhook".to_string(),
        webhook: Some(WebhookConversion {
            client_config: Some(CrdClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/convert")),
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: None,
            }),
            conversion_review_versions: vec!["v1".to_string(), "v1beta1".to_string()],
        }),
    });
}

/// CAPI's webhook configurations, rewritten from the in-cluster `service` reference to
/// `https://127.0.0.1:<port><path>`.
#[derive(Debug)]
pub(crate) struct WebhookConfigurations {
    pub mutating: Vec<MutatingWebhookConfiguration>,
    pub validating: Vec<ValidatingWebhookConfiguration>,
}

/// Parses a provider's `config/webhook/manifests.yaml` and points every webhook at the local
/// manager. Configurations are renamed with the provider prefix because all providers use the
/// same generated names (`mutating-webhook-configuration`, ...).
pub(crate) fn rewrite_webhook_manifest(
    yaml: &str,
    manifest: &Path,
    provider: CapiProvider,
    port: u16,
    ca_pem: &str,
) -> Result<WebhookConfigurations, ControlPlaneError> {
    let invalid = |reason: String| ControlPlaneError::WebhookManifestInvalid {
        path: manifest.to_path_buf(),
        reason,
    };
    let local = |config: &mut WebhookClientConfig| -> Result<(), ControlPlaneError> {
        let path = config
            .service
            .take()
            .and_then(|s| s.path)
            .ok_or_else(|| invalid("a webhook has no service path".to_string()))?;
        config.url = Some(format!("https://127.0.0.1:{port}{path}"));
        config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
        Ok(())
    };
    let mut out = WebhookConfigurations {
        mutating: Vec::new(),
        validating: Vec::new(),
    };
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| invalid(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "MutatingWebhookConfiguration" => {
                let mut config: MutatingWebhookConfiguration =
                    serde_yaml::from_value(value).map_err(|e| invalid(e.to_string()))?;
                rename(&mut config.metadata, provider);
                for webhook in config.webhooks.iter_mut().flatten() {
                    local(&mut webhook.client_config)?;
                }
                out.mutating.push(config);
            }
            "ValidatingWebhookConfiguration" => {
                let mut config: ValidatingWebhookConfiguration =
                    serde_yaml::from_value(value).map_err(|e| invalid(e.to_string()))?;
                rename(&mut config.metadata, provider);
                for webhook in config.webhooks.iter_mut().flatten() {
                    local(&mut webhook.client_config)?;
                }
                out.validating.push(config);
            }
            other => return Err(invalid(format!("unexpected kind {other:?}"))),
        }
    }
    Ok(out)
}

fn rename(
    metadata: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    provider: CapiProvider,
) {
    let name = metadata.name.take().unwrap_or_default();
    metadata.name = Some(format!("capi-{}-{name}", provider.dir_name()));
}

/// Registers the rewritten webhook configurations of one provider.
pub(crate) async fn register_webhooks(
    client: &Client,
    configs: WebhookConfigurations,
) -> Result<(), ControlPlaneError> {
    let pp = PostParams::default();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for config in &configs.mutating {
        mutating
            .create(&pp, config)
            .await
            .map_err(|source| ControlPlaneError::WebhookRegistrationFailed { source })?;
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    for config in &configs.validating {
        validating
            .create(&pp, config)
            .await
            .map_err(|source| ControlPlaneError::WebhookRegistrationFailed { source })?;
    }
    Ok(())
}

/// Writes the webhook serving certificate where controller-runtime's cert watcher reads it.
pub(crate) fn write_webhook_cert_dir(dir: &Path, cert: &CertPair) -> Result<(), ControlPlaneError> {
    crate::control_plane::write_file(&dir.join("tls.crt"), &cert.cert_pem)?;
    crate::control_plane::write_file(&dir.join("tls.key"), &cert.key_pem)
}

/// Starts one manager. Leader election is off (one replica, and it would only delay startup);
/// metrics are off (`--diagnostics-address=0`) so parallel control planes never compete for a
/// port.
pub(crate) fn spawn_manager(
    provider: CapiProvider,
    binary: &Path,
    kubeconfig: &Path,
    cert_dir: &Path,
    ports: ManagerPorts,
    log: PathBuf,
) -> Result<ManagedProcess, ControlPlaneError> {
    let args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".to_string(),
        format!("--webhook-port={}", ports.webhook),
        format!("--webhook-cert-dir={}", cert_dir.display()),
        format!("--health-addr=127.0.0.1:{}", ports.health),
        "--insecure-diagnostics".to_string(),
        "--diagnostics-address=0".to_string(),
        format!("--feature-gates={FEATURE_GATES}"),
    ];
    ManagedProcess::spawn(provider.dir_name(), binary, &args, &[], log)
}

/// Polls the manager's `/readyz`, which includes controller-runtime's webhook-server check.
pub(crate) async fn manager_ready(http: &reqwest::Client, ports: ManagerPorts) -> bool {
    let url = format!("http://127.0.0.1:{}/readyz", ports.health);
    matches!(http.get(&url).send().await, Ok(r) if r.status().is_success())
}

/// Whether kube-apiserver reaches the provider's webhooks: a dry-run create of a kind they
/// intercept either succeeds or is denied by them; it fails with "failed calling webhook" while
/// the server is not reachable.
pub(crate) async fn webhooks_answer(
    client: &Client,
    provider: CapiProvider,
) -> Result<bool, ControlPlaneError> {
    let gvk = provider.probe_kind();
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let mut probe = DynamicObject::new("beskar7-webhook-probe", &resource);
    probe.data = serde_json::json!({ "spec": {} });
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&pp, &probe).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.message.contains("failed calling webhook") => {
            Ok(false)
        }
        Err(kube::Error::Api(_)) => Ok(true),
        Err(source) => Err(ControlPlaneError::KubeRequestFailed {
            what: format!("dry-run create of {} webhook probe", gvk.kind),
            source,
        }),
    }
}

/// How long to wait for each manager to become ready.
pub(crate) const MANAGER_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// clusterctl's label on everything `clusterctl init` installs; `clusterctl move` only discovers
/// kinds whose CRD carries it.
const CLUSTERCTL_LABEL: &str = "clusterctl.cluster.x-k8s.io";

/// Labels a CRD as `clusterctl init` does when it installs the provider `provider_label`.
pub(crate) fn label_as_clusterctl_installed(
    crd: &mut CustomResourceDefinition,
    provider_label: &str,
) {
    let labels = crd.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(CLUSTERCTL_LABEL.into(), String::new());
    labels.insert("cluster.x-k8s.io/provider".into(), provider_label.into());
}

/// The provider inventory `clusterctl init` writes (one `Provider` per installed provider, in the
/// provider's namespace): `clusterctl move` and `upgrade` read it in both clusters.
pub(crate) async fn write_inventory(
    client: &Client,
    capi_version: &str,
) -> Result<(), ControlPlaneError> {
    let mut entries: Vec<(&str, &str, &str, String, String)> = CapiProvider::ALL
        .iter()
        .map(|p| {
            let (name, type_, ns) = p.inventory_entry();
            (
                name,
                type_,
                ns,
                p.provider_label().to_string(),
                capi_version.to_string(),
            )
        })
        .collect();
    entries.push((
        "beskar7",
        "InfrastructureProvider",
        "beskar7-system",
        beskar7_api::PROVIDER_NAME.to_string(),
        format!("v{}", env!("CARGO_PKG_VERSION")),
    ));
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "clusterctl.cluster.x-k8s.io",
        "v1alpha3",
        "Provider",
    ));
    let pp = PostParams::default();
    for (name, type_, ns, label, version) in entries {
        let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
            .expect("valid Namespace");
        match namespaces.create(&pp, &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                return Err(ControlPlaneError::KubeRequestFailed {
                    what: format!("creating namespace {ns}"),
                    source,
                });
            }
        }
        let mut provider: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": label,
                "namespace": ns,
                "labels": {
                    CLUSTERCTL_LABEL: "",
                    "clusterctl.cluster.x-k8s.io/core": "inventory",
                    "cluster.x-k8s.io/provider": label,
                },
            },
            "providerName": name,
            "type": type_,
            "version": version,
        }))
        .expect("valid Provider");
        provider.types = Some(kube::core::TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        });
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
            .create(&pp, &provider)
            .await
            .map_err(|source| ControlPlaneError::KubeRequestFailed {
                what: format!("writing the clusterctl inventory entry {label}"),
                source,
            })?;
    }
    Ok(())
}

//! Against a real kube-apiserver (and the real CAPI managers): our CRDs, the shared examples and
//! the CAPI contract. Needs `make testbin`; fails (does not skip) without it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use beskar7_test::ControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope, pinned_kind};
use kube::{Api, Client};
use serde::Deserialize;

const CAPI_GROUP: &str = "cluster.x-k8s.io";
const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";

#[tokio::test]
async fn beskar7_crds_are_established_and_served() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client());
    let expected = beskar7_api::crds::all();
    assert!(!expected.is_empty(), "beskar7_api::crds::all() is empty");
    for crd in expected {
        let name = crd.metadata.name.clone().expect("CRD has a name");
        let stored = crds
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} is not installed: {e}"));
        let conditions = stored.status.and_then(|s| s.conditions).unwrap_or_default();
        let established = conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} not Established: {conditions:?}");

        // Served: an empty list of every version of the kind comes back.
        for version in &crd.spec.versions {
            let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
            let api: Api<DynamicObject> = Api::all_with(cp.client(), &resource);
            let list = api
                .list(&Default::default())
                .await
                .unwrap_or_else(|e| panic!("listing {gvk:?} failed: {e}"));
            assert!(list.items.is_empty(), "fresh cluster has {gvk:?} objects");
        }
    }
}

#[tokio::test]
async fn every_shared_example_applies() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let dir = examples_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading examples dir {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());

    let mut applied = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("example is readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_yaml::from_value(value)
                .unwrap_or_else(|e| panic!("{} is not a Kubernetes object: {e}", file.display()));
            apply(cp.client(), &object)
                .await
                .unwrap_or_else(|e| panic!("{} was rejected: {e}", file.display()));
            applied += 1;
        }
    }
    assert!(
        applied >= files.len(),
        "applied {applied} objects from {} files",
        files.len()
    );
}

/// The CAPI contract as the real CAPI webhooks enforce it: a v1beta2 Cluster referencing a
/// Beskar7Cluster is accepted (and convertible to v1beta1 through CAPI's conversion webhook),
/// and an invalid Cluster is denied by CAPI's validating webhook, proving the webhooks are wired.
/// One test for both, because starting the three managers is the expensive part.
#[tokio::test]
async fn capi_webhooks_accept_cluster_referencing_beskar7_cluster_and_reject_invalid_one() {
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI starts");

    let infra_gvk = GroupVersionKind::gvk(INFRA_GROUP, "v1alpha1", "Beskar7Cluster");
    let infra = dynamic(
        &infra_gvk,
        serde_json::json!({
            "metadata": { "name": "lab", "namespace": "default" },
            "spec": {},
        }),
    );
    apply(cp.client(), &infra)
        .await
        .expect("Beskar7Cluster is accepted");

    let cluster_gvk = GroupVersionKind::gvk(CAPI_GROUP, "v1beta2", "Cluster");
    let cluster = dynamic(
        &cluster_gvk,
        serde_json::json!({
            "metadata": { "name": "lab", "namespace": "default" },
            "spec": {
                "clusterNetwork": { "pods": { "cidrBlocks": ["192.168.0.0/16"] } },
                "infrastructureRef": {
                    "apiGroup": INFRA_GROUP,
                    "kind": "Beskar7Cluster",
                    "name": "lab",
                },
            },
        }),
    );
    let clusters = namespaced_api(cp.client(), &cluster_gvk, "default");
    let created = clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "valid Cluster rejected: {e}\ncore manager log:\n{}",
                cp.log_tail("core", 30)
            )
        });
    assert_eq!(
        created.data["spec"]["infrastructureRef"], cluster.data["spec"]["infrastructureRef"],
        "infrastructureRef was changed on admission"
    );

    // Stored as v1beta2; reading v1beta1 goes through the core manager's /convert.
    let v1beta1 = GroupVersionKind::gvk(CAPI_GROUP, "v1beta1", "Cluster");
    let old = namespaced_api(cp.client(), &v1beta1, "default")
        .get("lab")
        .await
        .expect("Cluster is readable as v1beta1 through the conversion webhook");
    // A v1beta1 reference is an ObjectReference with apiVersion; without the conversion webhook
    // kube-apiserver would only relabel the object and leave v1beta2's apiGroup in place.
    let old_ref = &old.data["spec"]["infrastructureRef"];
    assert_eq!(old_ref["kind"], "Beskar7Cluster", "v1beta1 view: {old_ref}");
    assert!(
        old_ref.get("apiGroup").is_none()
            && old_ref["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with(INFRA_GROUP)),
        "v1beta1 view was not converted by CAPI: {old_ref}"
    );

    // The CRD schema accepts any string up to 43 characters as a CIDR block: only the
    // validating webhook parses it, so this rejection can only come from the webhook.
    let mut invalid = cluster.clone();
    invalid.metadata.name = Some("invalid".to_string());
    invalid.data["spec"]["clusterNetwork"]["pods"]["cidrBlocks"] =
        serde_json::json!(["not-a-cidr"]);
    let err = clusters
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("Cluster with an invalid pod CIDR must be rejected");
    let message = err.to_string();
    assert!(
        message.contains(
            r#"admission webhook "validation.cluster.cluster.x-k8s.io" denied the request"#
        ),
        "rejected, but not by CAPI's validating webhook: {message}"
    );
    assert!(
        message.contains("cidrBlocks"),
        "unexpected reason: {message}"
    );
}

/// Startup happens in a task that panics while holding the control plane: unwinding must stop
/// the processes and remove the temp dir, as it does for a failing test.
#[tokio::test]
async fn control_plane_is_stopped_and_removed_when_the_holder_panics() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let cp = ControlPlane::start().await.expect("control plane starts");
        tx.send((cp.dir().to_path_buf(), cp.api_server_url().to_string()))
            .expect("receiver waits");
        panic!("deliberate panic while holding the control plane");
    });
    let (dir, url) = rx.await.expect("control plane started before the panic");
    let join = task.await.expect_err("task panicked");
    assert!(join.is_panic());

    assert!(!dir.exists(), "temp dir {} not removed", dir.display());
    let addr = url.trim_start_matches("https://");
    // The process is reaped in Drop, so its listening socket is closed by now.
    let connect =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await;
    assert!(
        !matches!(connect, Ok(Ok(_))),
        "kube-apiserver still accepts connections on {addr}"
    );
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/examples")
}

fn dynamic(gvk: &GroupVersionKind, body: serde_json::Value) -> DynamicObject {
    let mut object: DynamicObject = serde_json::from_value(body).expect("valid object");
    object.types = Some(kube::core::TypeMeta {
        api_version: gvk.api_version(),
        kind: gvk.kind.clone(),
    });
    object
}

fn namespaced_api(client: Client, gvk: &GroupVersionKind, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(gvk))
}

/// Server-side apply of any object, resolving its resource through discovery.
async fn apply(client: Client, object: &DynamicObject) -> Result<DynamicObject, kube::Error> {
    let types = object
        .types
        .as_ref()
        .expect("object has apiVersion and kind");
    let gvk = GroupVersionKind::try_from(types).expect("valid apiVersion");
    let (resource, capabilities) = pinned_kind(&client, &gvk).await?;
    let name = object.metadata.name.as_deref().expect("object has a name");
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(
            client,
            object.metadata.namespace.as_deref().unwrap_or("default"),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client, &resource),
    };
    api.patch(
        name,
        &PatchParams::apply("beskar7-test").force(),
        &Patch::Apply(object),
    )
    .await
}

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

/// A CEL rule of our CRDs and a manifest that breaks it. `valid` is accepted; then `bad` is
/// either created (`update: false`) or merged into the valid object (`update: true`, for
/// transition rules) and must be rejected with the rule's message.
struct CelCase {
    kind: &'static str,
    message: &'static str,
    valid: serde_json::Value,
    bad: serde_json::Value,
    update: bool,
}

fn cel_cases() -> Vec<CelCase> {
    use serde_json::json;
    let endpoint =
        |host: &str, port: i64| json!({ "controlPlaneEndpoint": { "host": host, "port": port } });
    let template = |spec: serde_json::Value| json!({ "template": { "spec": spec } });
    let machine = |extra: serde_json::Value| {
        let mut spec = json!({
            "osFamily": "kairos",
            "imageURL": "http://example.com/kairos.iso",
            "provisioningMode": "PreBakedISO",
        });
        merge(&mut spec, extra);
        spec
    };
    let host = |extra: serde_json::Value| {
        let mut spec = json!({
            "redfishConnection": { "address": "https://192.0.2.10", "credentialsSecretRef": "bmc" },
        });
        merge(&mut spec, extra);
        spec
    };
    let provisioning = |extra: serde_json::Value| {
        let mut p = json!({
            "mode": "PreBakedISO",
            "osFamily": "kairos",
            "imageURL": "http://example.com/kairos.iso",
        });
        merge(&mut p, extra);
        json!({ "consumerRef": { "name": "node-01" }, "provisioning": p })
    };
    let port_message = "controlPlaneEndpoint.port must be between 1 and 65535";
    let endpoint_immutable = "controlPlaneEndpoint is immutable once set";
    let config_url =
        "configURL is required when provisioningMode is RemoteConfig and forbidden otherwise";
    let provider_id = "providerID is immutable once set";
    let network = |iface: serde_json::Value| json!({ "network": { "interfaces": [iface] } });
    let good_iface = json!({ "macAddress": "52:54:00:00:00:01", "addresses": ["10.0.0.2/24"] });
    let both =
        json!({ "macAddress": "52:54:00:00:00:01", "name": "eth0", "addresses": ["10.0.0.2/24"] });
    let empty = json!({ "name": "eth0" });
    let one_way = "an interface is matched by macAddress or by name, not both";
    let needs_addresses = "an interface needs addresses or addressesFromPools";
    let mut network_cases = Vec::new();
    for (message, bad) in [(one_way, &both), (needs_addresses, &empty)] {
        network_cases.push(CelCase {
            kind: "Beskar7Machine",
            message,
            valid: machine(network(good_iface.clone())),
            bad: machine(network(bad.clone())),
            update: false,
        });
        network_cases.push(CelCase {
            kind: "Beskar7MachineTemplate",
            message,
            valid: template(machine(network(good_iface.clone()))),
            bad: template(machine(network(bad.clone()))),
            update: false,
        });
        network_cases.push(CelCase {
            kind: "PhysicalHost",
            message,
            valid: host(provisioning(network(good_iface.clone()))),
            bad: host(provisioning(network(bad.clone()))),
            update: false,
        });
    }
    let mut cases = vec![
        CelCase {
            kind: "Beskar7Cluster",
            message: port_message,
            valid: endpoint("192.0.2.1", 6443),
            bad: endpoint("192.0.2.1", 0),
            update: false,
        },
        CelCase {
            kind: "Beskar7Cluster",
            message: endpoint_immutable,
            valid: endpoint("192.0.2.1", 6443),
            bad: endpoint("192.0.2.2", 6443),
            update: true,
        },
        CelCase {
            kind: "Beskar7ClusterTemplate",
            message: port_message,
            valid: template(endpoint("192.0.2.1", 6443)),
            bad: template(endpoint("192.0.2.1", 70000)),
            update: false,
        },
        CelCase {
            kind: "Beskar7ClusterTemplate",
            message: endpoint_immutable,
            valid: template(endpoint("192.0.2.1", 6443)),
            bad: template(endpoint("192.0.2.2", 6443)),
            update: true,
        },
        CelCase {
            kind: "Beskar7Machine",
            message: config_url,
            valid: machine(json!({})),
            bad: machine(json!({ "provisioningMode": "RemoteConfig" })),
            update: false,
        },
        CelCase {
            kind: "Beskar7Machine",
            message: provider_id,
            valid: machine(json!({ "providerID": "beskar7://default/a" })),
            bad: json!({ "providerID": "beskar7://default/b" }),
            update: true,
        },
        CelCase {
            kind: "Beskar7MachineTemplate",
            message: config_url,
            valid: template(machine(json!({}))),
            bad: template(machine(json!({ "configURL": "http://example.com/c.yaml" }))),
            update: false,
        },
        CelCase {
            kind: "Beskar7MachineTemplate",
            message: provider_id,
            valid: template(machine(json!({ "providerID": "beskar7://default/a" }))),
            bad: template(json!({ "providerID": "beskar7://default/b" })),
            update: true,
        },
        CelCase {
            kind: "PhysicalHost",
            message: "consumerRef and provisioning must be set together",
            valid: host(json!({})),
            bad: host(json!({ "consumerRef": { "name": "node-01" } })),
            update: false,
        },
        CelCase {
            kind: "PhysicalHost",
            message: "configURL is required when mode is RemoteConfig and forbidden otherwise",
            valid: host(provisioning(json!({}))),
            bad: host(provisioning(json!({ "mode": "RemoteConfig" }))),
            update: false,
        },
        CelCase {
            kind: "PhysicalHost",
            message: "bootstrapDataSecretRef is required when mode is BootstrapData",
            valid: host(provisioning(
                json!({ "mode": "BootstrapData", "bootstrapDataSecretRef": "data" }),
            )),
            bad: host(provisioning(json!({ "mode": "BootstrapData" }))),
            update: false,
        },
        CelCase {
            kind: "PhysicalHost",
            message: "caBundleSecretRef and insecureSkipVerify: true exclude each other",
            valid: host(json!({ "redfishConnection": { "insecureSkipVerify": true } })),
            bad: host(
                json!({ "redfishConnection": { "insecureSkipVerify": true, "caBundleSecretRef": "ca" } }),
            ),
            update: false,
        },
    ];
    cases.extend(network_cases);
    cases
}

#[tokio::test]
async fn every_cel_rule_rejects_a_bad_manifest_with_its_message() {
    let crds = beskar7_api::crds::all();
    let cases = cel_cases();

    // Every rule of every CRD has a case, so a new rule without a test fails here.
    let mut rules: Vec<(String, String)> = Vec::new();
    for crd in &crds {
        let schema = serde_json::to_value(&crd.spec.versions).expect("CRD serializes");
        collect_cel_messages(&schema, &mut |message| {
            rules.push((crd.spec.names.kind.clone(), message.to_string()));
        });
    }
    rules.sort();
    rules.dedup();
    let mut covered: Vec<(String, String)> = cases
        .iter()
        .map(|c| (c.kind.to_string(), c.message.to_string()))
        .collect();
    covered.sort();
    covered.dedup();
    assert!(!rules.is_empty(), "our CRDs have no CEL rules");
    assert_eq!(
        rules, covered,
        "CEL rules (left) and test cases (right) differ"
    );

    let cp = ControlPlane::start().await.expect("control plane starts");
    for (index, case) in cases.iter().enumerate() {
        let crd = crds
            .iter()
            .find(|crd| crd.spec.names.kind == case.kind)
            .expect("case kind is one of our CRDs");
        let version = &crd.spec.versions[0].name;
        let gvk = GroupVersionKind::gvk(&crd.spec.group, version, case.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
        let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), "default", &resource);
        let object = |name: String, spec: &serde_json::Value| {
            dynamic(
                &gvk,
                serde_json::json!({ "metadata": { "name": name }, "spec": spec }),
            )
        };
        let context = format!("case {index} ({} / {})", case.kind, case.message);

        let valid_name = format!("cel-{index}-valid");
        api.create(
            &PostParams::default(),
            &object(valid_name.clone(), &case.valid),
        )
        .await
        .unwrap_or_else(|e| panic!("{context}: valid manifest rejected: {e}"));
        let result = if case.update {
            let patch = serde_json::json!({ "spec": case.bad });
            api.patch(&valid_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        } else {
            api.create(
                &PostParams::default(),
                &object(format!("cel-{index}-bad"), &case.bad),
            )
            .await
        };
        match result {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{context}: {status:?}");
                assert!(
                    status.message.contains(case.message),
                    "{context}: rejected for another reason: {}",
                    status.message
                );
            }
            Err(e) => panic!("{context}: request failed: {e}"),
            Ok(_) => panic!("{context}: bad manifest accepted"),
        }
    }
}

/// Calls `found` with the message of every `x-kubernetes-validations` rule in a schema.
fn collect_cel_messages(value: &serde_json::Value, found: &mut impl FnMut(&str)) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    found(rule["message"].as_str().unwrap_or("(rule without message)"));
                }
            }
            map.values().for_each(|v| collect_cel_messages(v, found));
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|v| collect_cel_messages(v, found))
        }
        _ => {}
    }
}

/// JSON merge of `extra` into `base` (objects merged recursively, everything else replaced).
fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(base), serde_json::Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (base, extra) => *base = extra,
    }
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

    // clusterctl of the same release reads the Cluster and, through the contract label on our
    // CRD, resolves its infrastructureRef to the Beskar7Cluster.
    let output = cp
        .clusterctl()
        .args(["describe", "cluster", "lab", "--namespace", "default"])
        .output()
        .expect("clusterctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success()
            && stdout.contains("Cluster default/lab")
            && stdout.contains("Beskar7Cluster default/lab"),
        "clusterctl describe failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
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

/// With the garbage collector, deleting an owner deletes its dependents (without it nothing
/// would: kube-apiserver does not implement cascades).
#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    let cp = ControlPlane::builder()
        .with_garbage_collector()
        .start()
        .await
        .expect("control plane with garbage collector starts");
    let config_maps: Api<ConfigMap> = Api::namespaced(cp.client(), "default");
    let mut owner = ConfigMap::default();
    owner.metadata.name = Some("owner".to_string());
    let owner = config_maps
        .create(&PostParams::default(), &owner)
        .await
        .expect("owner created");
    let mut dependent = ConfigMap::default();
    dependent.metadata.name = Some("dependent".to_string());
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".to_string(),
        kind: "ConfigMap".to_string(),
        name: "owner".to_string(),
        uid: owner
            .metadata
            .uid
            .clone()
            .expect("created object has a uid"),
        ..OwnerReference::default()
    }]);
    config_maps
        .create(&PostParams::default(), &dependent)
        .await
        .expect("dependent created");

    config_maps
        .delete("owner", &Default::default())
        .await
        .expect("owner deleted");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while config_maps
        .get_opt("dependent")
        .await
        .expect("get dependent")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "dependent still exists 60 s after its owner was deleted; kube-controller-manager log:\n{}",
            cp.log_tail("kube-controller-manager", 30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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

//! The admission webhooks behind a real kube-apiserver: config/webhook/manifests.yaml registered
//! with `url: https://127.0.0.1:<port>/...` and a generated CA, the server from
//! `beskar7_controllers::webhooks::serve_on` with a certificate from that CA.

use std::time::{Duration, Instant};

use beskar7_controllers::webhooks;
use beskar7_test::ControlPlane;
use beskar7_test::certs::Ca;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde::Deserialize;
use serde_json::{Value, json};

const MANIFESTS: &str = include_str!("../../config/webhook/manifests.yaml");

fn api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "infrastructure.cluster.x-k8s.io",
            "v1alpha1",
            kind,
        )),
    )
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn machine_template_spec(os: &str, image: &str) -> Value {
    json!({"template": {"spec": {"osFamily": os, "imageURL": image, "provisioningMode": "BootstrapData"}}})
}

/// Rewrites the service references of the committed webhook manifests to the loopback server.
fn client_config(cfg: &mut WebhookClientConfig, port: u16, ca_pem: &str) {
    let service = cfg
        .service
        .take()
        .expect("config/webhook points at the webhook Service");
    let path = service.path.expect("each webhook has a path");
    cfg.url = Some(format!("https://127.0.0.1:{port}{path}"));
    cfg.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
}

async fn register(client: &Client, port: u16, ca_pem: &str) -> usize {
    let mut validating = 0;
    for doc in serde_yaml::Deserializer::from_str(MANIFESTS) {
        let value = Value::deserialize(doc).expect("config/webhook/manifests.yaml parses");
        match value["kind"].as_str() {
            Some("ValidatingWebhookConfiguration") => {
                let mut c: ValidatingWebhookConfiguration = serde_json::from_value(value).unwrap();
                for w in c.webhooks.iter_mut().flatten() {
                    client_config(&mut w.client_config, port, ca_pem);
                    validating += 1;
                }
                Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .create(&PostParams::default(), &c)
                    .await
                    .unwrap();
            }
            other => panic!("unexpected kind {other:?} in config/webhook/manifests.yaml"),
        }
    }
    validating
}

fn denial(err: kube::Error) -> String {
    match err {
        kube::Error::Api(s) => s.message,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reject_template_changes_and_allow_clusterclass_dry_runs() {
    let cp = ControlPlane::start().await.expect("local control plane");
    let client = cp.client();

    // Serving certificate for 127.0.0.1 from a CA of our own; the CA is the webhooks' caBundle.
    let ca = Ca::new("beskar7-webhook-test-ca").unwrap();
    let serving = ca.loopback_serving_cert("beskar7-webhooks").unwrap();
    let cert_dir = tempfile::tempdir().unwrap();
    std::fs::write(cert_dir.path().join("tls.crt"), &serving.cert_pem).unwrap();
    std::fs::write(cert_dir.path().join("tls.key"), &serving.key_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = cert_dir.path().to_path_buf();
    let server = tokio::spawn(async move { webhooks::serve_on(listener, &dir).await });

    let validating = register(&client, port, &ca.cert_pem()).await;
    assert_eq!(validating, 3, "webhooks in config/webhook/manifests.yaml");

    let ns = "webhooks";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let templates = api(&client, ns, "Beskar7MachineTemplate");

    // kube-apiserver picks new webhook configurations up asynchronously: wait until a spec
    // change of a probe template is denied by our webhook.
    templates
        .create(
            &PostParams::default(),
            &object(
                "Beskar7MachineTemplate",
                "probe",
                machine_template_spec("kairos", "http://images.test/a.iso"),
            ),
        )
        .await
        .unwrap();
    let start = Instant::now();
    for attempt in 0.. {
        let change = json!({"spec": {"template": {"spec": {"imageURL": format!("http://images.test/probe-{attempt}.iso")}}}});
        match templates
            .patch("probe", &PatchParams::default(), &Patch::Merge(&change))
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("spec is immutable") => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(30),
                "the webhook never answered: {other:?}"
            ),
        }
        assert!(
            !server.is_finished(),
            "webhook server stopped: {:?}",
            server.await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A template as a user writes it; UEFI is what defaulting gives Kairos.
    let created = templates
        .create(
            &PostParams::default(),
            &object(
                "Beskar7MachineTemplate",
                "workers",
                machine_template_spec("kairos", "http://images.test/a.iso"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["template"]["spec"]["bootMode"], "UEFI");

    // A spec change is rejected, with the reason.
    let change = json!({"spec": {"template": {"spec": {"imageURL": "http://images.test/b.iso"}}}});
    let err = templates
        .patch("workers", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap_err();
    let message = denial(err);
    assert!(message.contains("spec is immutable"), "{message}");

    // Metadata changes are fine.
    let labels = json!({"metadata": {"labels": {"team": "a"}}});
    templates
        .patch("workers", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("label change allowed");

    // CAPI's topology controller: server-side apply, dry-run, annotation set. Allowed, and
    // nothing is stored.
    let dry_run_apply = json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "Beskar7MachineTemplate",
        "metadata": {"name": "workers", "annotations": {webhooks::TOPOLOGY_DRY_RUN_ANNOTATION: ""}},
        "spec": {"template": {"spec": {"osFamily": "kairos", "imageURL": "http://images.test/b.iso", "provisioningMode": "BootstrapData", "bootMode": "UEFI"}}},
    });
    let answered = templates
        .patch(
            "workers",
            &PatchParams::apply("capi-topology").dry_run().force(),
            &Patch::Apply(&dry_run_apply),
        )
        .await
        .expect("a ClusterClass dry-run may change the spec");
    assert_eq!(
        answered.data["spec"]["template"]["spec"]["imageURL"],
        "http://images.test/b.iso"
    );
    let stored = templates.get("workers").await.unwrap();
    assert_eq!(
        stored.data["spec"]["template"]["spec"]["imageURL"], "http://images.test/a.iso",
        "dry-run stored nothing"
    );

    // The same apply for real is rejected: the annotation alone does not open the door.
    let err = templates
        .patch(
            "workers",
            &PatchParams::apply("capi-topology").force(),
            &Patch::Apply(&dry_run_apply),
        )
        .await
        .unwrap_err();
    assert!(denial(err).contains("spec is immutable"));

    // Beskar7ClusterTemplate likewise.
    let cluster_templates = api(&client, ns, "Beskar7ClusterTemplate");
    cluster_templates
        .create(&PostParams::default(), &object("Beskar7ClusterTemplate", "cc", json!({"template": {"spec": {"controlPlaneEndpoint": {"host": "10.0.0.1", "port": 6443}}}})))
        .await
        .unwrap();
    let err = cluster_templates
        .patch("cc", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"template": {"spec": {"failureDomains": [{"name": "rack-1", "controlPlane": true}]}}}})))
        .await
        .unwrap_err();
    // (A changed endpoint would already be refused by the CRD's CEL rule; failure domains are not.)
    let message = denial(err);
    assert!(
        message.contains("Beskar7ClusterTemplate cc: spec is immutable"),
        "{message}"
    );

    // A host selector the schema accepts but that is no label selector.
    let machines = api(&client, ns, "Beskar7Machine");
    let bad = object(
        "Beskar7Machine",
        "m1",
        json!({"osFamily": "kairos", "imageURL": "http://images.test/a.iso", "hostSelector": {"matchExpressions": [{"key": "rack", "operator": "In"}]}}),
    );
    let message = denial(
        machines
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("spec.hostSelector") && message.contains("needs at least one value"),
        "{message}"
    );

    server.abort();
}

/// `beskar7 manager --webhook-port --webhook-cert-dir` serves the same webhooks, as the
/// Deployment runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_serves_the_webhooks() {
    let cp = ControlPlane::start().await.expect("local control plane");
    let client = cp.client();
    let ca = Ca::new("beskar7-webhook-test-ca").unwrap();
    let serving = ca.loopback_serving_cert("beskar7-webhooks").unwrap();
    let cert_dir = tempfile::tempdir().unwrap();
    std::fs::write(cert_dir.path().join("tls.crt"), &serving.cert_pem).unwrap();
    std::fs::write(cert_dir.path().join("tls.key"), &serving.key_pem).unwrap();
    let port = beskar7_test::free_port();
    let manager = beskar7_test::ManagerProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_beskar7")),
        &cp,
        &[
            "--webhook-port",
            &port.to_string(),
            "--webhook-cert-dir",
            cert_dir.path().to_str().unwrap(),
        ],
    )
    .expect("start beskar7 manager");
    assert_eq!(register(&client, port, &ca.cert_pem()).await, 3);

    let ns = "manager-webhooks";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let templates = api(&client, ns, "Beskar7MachineTemplate");
    templates
        .create(
            &PostParams::default(),
            &object(
                "Beskar7MachineTemplate",
                "workers",
                machine_template_spec("kairos", "http://images.test/a.iso"),
            ),
        )
        .await
        .unwrap();
    let start = Instant::now();
    for attempt in 0.. {
        let change = json!({"spec": {"template": {"spec": {"imageURL": format!("http://images.test/b-{attempt}.iso")}}}});
        match templates
            .patch("workers", &PatchParams::default(), &Patch::Merge(&change))
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("spec is immutable") => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(60),
                "the manager's webhook never denied a template change: {other:?}\nmanager log:\n{}",
                manager.log_tail(40)
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        manager.log_text().contains("webhook server listening"),
        "{}",
        manager.log_tail(40)
    );
}

//! Admission webhooks (AdmissionReview v1) served by the manager over TLS.
//!
//! - Validating, Beskar7MachineTemplate and Beskar7ClusterTemplate: `spec` is immutable on
//!   UPDATE (CAPI clones templates; a changed template is a new template), except on the
//!   ClusterClass topology controller's dry-runs, which carry the annotation
//!   `topology.cluster.x-k8s.io/dry-run` on a dry-run request: CEL sees neither. This is the
//!   rule of CAPI's `topology.ShouldSkipImmutabilityChecks`.
//! - Validating, Beskar7Machine and the machine spec inside Beskar7MachineTemplate: checks CEL
//!   cannot express: `hostSelector` is a valid label selector (qualified keys, label values,
//!   operator/values agreement); a warning when Flatcar is booted in UEFI mode (its official ISO
//!   boots in Legacy mode only).
//!
//! No defaulting webhook: the CRD schema defaults `bootMode` (UEFI) and `provisioningMode`
//! before admission, so a mutating webhook would never see them absent.
//!
//! Served by [`serve`] from `tls.crt` / `tls.key` in a directory (cert-manager's Secret in a
//! cluster), re-read when the files change so rotated certificates are picked up.

use std::net::SocketAddr;
use std::path::Path;

use axum::Json;
use axum::Router;
use axum::routing::post;
use beskar7_api::{Beskar7MachineSpec, BootMode, OsFamily, ProvisioningMode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;
use tracing::{debug, info, warn};

/// Annotation CAPI's topology controller sets on objects it sends in dry-run requests.
pub use crate::capi::DRY_RUN_ANNOTATION as TOPOLOGY_DRY_RUN_ANNOTATION;

/// URL paths, as controller-runtime names them (`/validate-<group with dashes>-<version>-<kind>`).
pub const VALIDATE_MACHINE_TEMPLATE: &str =
    "/validate-infrastructure-cluster-x-k8s-io-v1alpha1-beskar7machinetemplate";
pub const VALIDATE_CLUSTER_TEMPLATE: &str =
    "/validate-infrastructure-cluster-x-k8s-io-v1alpha1-beskar7clustertemplate";
pub const VALIDATE_MACHINE: &str =
    "/validate-infrastructure-cluster-x-k8s-io-v1alpha1-beskar7machine";

/// The kinds the webhooks know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Beskar7MachineTemplate,
    Beskar7ClusterTemplate,
    Beskar7Machine,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Beskar7MachineTemplate => "Beskar7MachineTemplate",
            Kind::Beskar7ClusterTemplate => "Beskar7ClusterTemplate",
            Kind::Beskar7Machine => "Beskar7Machine",
        }
    }

    /// Where the machine spec sits in an object of this kind (templates nest it).
    fn machine_spec_pointer(self) -> Option<&'static str> {
        match self {
            Kind::Beskar7MachineTemplate => Some("/spec/template/spec"),
            Kind::Beskar7Machine => Some("/spec"),
            Kind::Beskar7ClusterTemplate => None,
        }
    }

    fn immutable_spec(self) -> bool {
        matches!(
            self,
            Kind::Beskar7MachineTemplate | Kind::Beskar7ClusterTemplate
        )
    }
}

fn object_json(obj: &DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

fn has_dry_run_annotation(obj: &DynamicObject) -> bool {
    obj.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(TOPOLOGY_DRY_RUN_ANNOTATION))
}

/// The validating decision for one request.
pub fn validate(kind: Kind, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    let Some(obj) = req.object.as_ref() else {
        // DELETE / CONNECT: nothing to check.
        return resp;
    };
    let new = object_json(obj);
    let mut warnings = Vec::new();

    if kind.immutable_spec() && req.operation == Operation::Update {
        let old = req
            .old_object
            .as_ref()
            .map(object_json)
            .unwrap_or(Value::Null);
        let skip = req.dry_run && has_dry_run_annotation(obj);
        if new.get("spec") != old.get("spec") {
            if skip {
                debug!(kind = kind.name(), name = %req.name, "spec change allowed: ClusterClass dry-run");
            } else {
                return resp.deny(format!(
                    "{} {}: spec is immutable; create a new {} and point its users at it (only ClusterClass dry-runs may change it)",
                    kind.name(),
                    req.name,
                    kind.name()
                ));
            }
        }
    }

    if let Some(pointer) = kind.machine_spec_pointer() {
        let Some(spec) = new.pointer(pointer) else {
            return resp.deny(format!(
                "{} {}: {pointer} is missing",
                kind.name(),
                req.name
            ));
        };
        match serde_json::from_value::<Beskar7MachineSpec>(spec.clone()) {
            Ok(spec) => {
                let field = if kind == Kind::Beskar7Machine {
                    "spec"
                } else {
                    "spec.template.spec"
                };
                if let Err(e) = check_machine_spec(&spec, field, &mut warnings) {
                    return resp.deny(format!("{} {}: {e}", kind.name(), req.name));
                }
            }
            Err(e) => {
                return resp.deny(format!(
                    "{} {}: {pointer} is not a valid machine spec: {e}",
                    kind.name(),
                    req.name
                ));
            }
        }
    }

    with_warnings(resp, warnings)
}

fn with_warnings(mut resp: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    resp
}

/// Checks of a machine spec that the CRD schema and its CEL rules cannot express.
pub fn check_machine_spec(
    spec: &Beskar7MachineSpec,
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    if let Some(selector) = &spec.host_selector {
        check_label_selector(selector).map_err(|e| format!("{field}.hostSelector: {e}"))?;
    }
    // In the other modes the provider serves the ISO with a UEFI boot path of its own added.
    if spec.os_family == OsFamily::Flatcar
        && spec.boot_mode == BootMode::Uefi
        && spec.provisioning_mode == ProvisioningMode::PreBakedISO
    {
        warnings.push(format!(
            "{field}.bootMode is UEFI with provisioningMode PreBakedISO: the image is inserted as it is, and the official Flatcar ISO boots in Legacy (BIOS) mode only; use bootMode: Legacy, an image that supports UEFI, or RemoteConfig/BootstrapData (the provider then adds a UEFI boot path)"
        ));
    }
    Ok(())
}

/// A label selector as `metav1.LabelSelectorAsSelector` accepts it.
pub fn check_label_selector(selector: &LabelSelector) -> Result<(), String> {
    for (k, v) in selector.match_labels.iter().flatten() {
        check_label_key(k).map_err(|e| format!("matchLabels key {k:?}: {e}"))?;
        check_label_value(v).map_err(|e| format!("matchLabels[{k:?}] value {v:?}: {e}"))?;
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("matchExpressions[{i}]");
        check_label_key(&e.key).map_err(|err| format!("{at}.key {:?}: {err}", e.key))?;
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    return Err(format!(
                        "{at}: operator {} needs at least one value",
                        e.operator
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    return Err(format!("{at}: operator {} takes no values", e.operator));
                }
            }
            other => {
                return Err(format!(
                    "{at}: unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                ));
            }
        }
        for v in values {
            check_label_value(v).map_err(|err| format!("{at} value {v:?}: {err}"))?;
        }
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn check_name_part(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let first_last_ok = s.starts_with(alnum) && s.ends_with(alnum);
    if !first_last_ok || !s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) {
        return Err("must consist of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric".into());
    }
    Ok(())
}

/// A DNS-1123 subdomain: lower-case alphanumerics, '-' and '.', at most 253 characters.
fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "prefix {s:?} must be a DNS subdomain (lower-case alphanumerics, '-' and '.')"
        ))
    }
}

fn check_label_key(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            check_dns_subdomain(prefix)?;
            check_name_part(name)
        }
        None => check_name_part(key),
    }
}

fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Ok(())
    } else {
        check_name_part(v)
    }
}

async fn handle(kind: Kind, body: axum::body::Bytes) -> Json<AdmissionReview<DynamicObject>> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "admission review does not parse");
            return Json(
                AdmissionResponse::invalid(format!("AdmissionReview does not parse: {e}"))
                    .into_review(),
            );
        }
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let resp = validate(kind, &req);
    if !resp.allowed {
        info!(kind = kind.name(), name = %req.name, namespace = ?req.namespace, operation = ?req.operation, reason = %resp.result.message, "admission denied");
    }
    Json(resp.into_review())
}

/// The webhook routes (plain HTTP; [`serve`] adds TLS).
pub fn router() -> Router {
    Router::new()
        .route(
            VALIDATE_MACHINE_TEMPLATE,
            post(|b| handle(Kind::Beskar7MachineTemplate, b)),
        )
        .route(
            VALIDATE_CLUSTER_TEMPLATE,
            post(|b| handle(Kind::Beskar7ClusterTemplate, b)),
        )
        .route(VALIDATE_MACHINE, post(|b| handle(Kind::Beskar7Machine, b)))
}

/// Serves the webhooks over TLS on `bind` with `tls.crt` / `tls.key` from `cert_dir` until the
/// task is dropped. Fails at once when the listener cannot be bound or the certificate is not
/// readable.
pub async fn serve(bind: SocketAddr, cert_dir: &Path) -> anyhow::Result<()> {
    spawn(bind, cert_dir).await?.await?;
    Ok(())
}

/// Like [`serve`] on a listener that is already bound (tests bind port 0 first).
pub async fn serve_on(listener: tokio::net::TcpListener, cert_dir: &Path) -> anyhow::Result<()> {
    spawn_on(listener, cert_dir)?.await?;
    Ok(())
}

/// Binds `bind`, loads the certificate, then serves in a background task: errors in the
/// listener or the certificate are returned here, before anything runs (the manager exits on
/// them rather than running without its webhooks).
pub async fn spawn(
    bind: SocketAddr,
    cert_dir: &Path,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("webhook server on {bind}: {e}"))?;
    spawn_on(listener, cert_dir)
}

/// Like [`spawn`] on a bound listener.
pub fn spawn_on(
    listener: tokio::net::TcpListener,
    cert_dir: &Path,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let acceptor = crate::tls::acceptor(cert_dir, "webhook", &[b"h2".as_slice(), b"http/1.1"])?;
    info!(addr = %listener.local_addr()?, cert_dir = %cert_dir.display(), "webhook server listening");
    Ok(tokio::spawn(accept_loop(listener, acceptor)))
}

async fn accept_loop(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    let app = router();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting a webhook connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(spec: Value, annotations: Option<Value>) -> Value {
        let mut meta = json!({"name": "t1", "namespace": "ns"});
        if let Some(a) = annotations {
            meta["annotations"] = a;
        }
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "Beskar7MachineTemplate", "metadata": meta, "spec": spec})
    }

    fn machine_spec(image: &str) -> Value {
        json!({"template": {"spec": {"osFamily": "kairos", "imageURL": image, "provisioningMode": "BootstrapData", "bootMode": "UEFI"}}})
    }

    fn request(
        kind: &str,
        operation: &str,
        object: Value,
        old: Option<Value>,
        dry_run: bool,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "8b9f0c8e-0000-4000-8000-000000000001",
                "kind": {"group": "infrastructure.cluster.x-k8s.io", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "infrastructure.cluster.x-k8s.io", "version": "v1alpha1", "resource": format!("{}s", kind.to_lowercase())},
                "name": "t1",
                "namespace": "ns",
                "operation": operation,
                "userInfo": {"username": "tester"},
                "object": object,
                "oldObject": old,
                "dryRun": dry_run,
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn template_create_is_allowed() {
        let r = validate(
            Kind::Beskar7MachineTemplate,
            &request(
                "Beskar7MachineTemplate",
                "CREATE",
                template(machine_spec("http://a/os.iso"), None),
                None,
                false,
            ),
        );
        assert!(r.allowed, "{:?}", r.result);
        assert_eq!(r.uid, "8b9f0c8e-0000-4000-8000-000000000001");
    }

    #[test]
    fn template_update_without_spec_change_is_allowed() {
        let old = template(machine_spec("http://a/os.iso"), None);
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"team": "a"});
        let r = validate(
            Kind::Beskar7MachineTemplate,
            &request("Beskar7MachineTemplate", "UPDATE", new, Some(old), false),
        );
        assert!(r.allowed, "{:?}", r.result);
    }

    #[test]
    fn template_spec_change_is_denied() {
        let old = template(machine_spec("http://a/os.iso"), None);
        let new = template(machine_spec("http://b/os.iso"), None);
        let r = validate(
            Kind::Beskar7MachineTemplate,
            &request("Beskar7MachineTemplate", "UPDATE", new, Some(old), false),
        );
        assert!(!r.allowed);
        assert!(
            r.result.message.contains("spec is immutable"),
            "{}",
            r.result.message
        );
    }

    #[test]
    fn template_spec_change_in_clusterclass_dry_run_is_allowed() {
        let old = template(machine_spec("http://a/os.iso"), None);
        let new = template(
            machine_spec("http://b/os.iso"),
            Some(json!({TOPOLOGY_DRY_RUN_ANNOTATION: ""})),
        );
        let r = validate(
            Kind::Beskar7MachineTemplate,
            &request("Beskar7MachineTemplate", "UPDATE", new, Some(old), true),
        );
        assert!(r.allowed, "{:?}", r.result);
    }

    #[test]
    fn dry_run_annotation_without_dry_run_request_is_denied() {
        // A real write that merely carries the annotation must not bypass immutability.
        let old = template(machine_spec("http://a/os.iso"), None);
        let new = template(
            machine_spec("http://b/os.iso"),
            Some(json!({TOPOLOGY_DRY_RUN_ANNOTATION: ""})),
        );
        let r = validate(
            Kind::Beskar7MachineTemplate,
            &request(
                "Beskar7MachineTemplate",
                "UPDATE",
                new.clone(),
                Some(old.clone()),
                false,
            ),
        );
        assert!(!r.allowed);
        // ... and neither does a dry-run without the annotation (e.g. kubectl --dry-run=server).
        let plain = template(machine_spec("http://b/os.iso"), None);
        let r = validate(
            Kind::Beskar7MachineTemplate,
            &request("Beskar7MachineTemplate", "UPDATE", plain, Some(old), true),
        );
        assert!(!r.allowed);
    }

    #[test]
    fn cluster_template_spec_is_immutable() {
        let ct = |host: &str| {
            json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "Beskar7ClusterTemplate",
                   "metadata": {"name": "t1", "namespace": "ns"},
                   "spec": {"template": {"spec": {"controlPlaneEndpoint": {"host": host, "port": 6443}}}}})
        };
        let r = validate(
            Kind::Beskar7ClusterTemplate,
            &request(
                "Beskar7ClusterTemplate",
                "UPDATE",
                ct("10.0.0.2"),
                Some(ct("10.0.0.1")),
                false,
            ),
        );
        assert!(!r.allowed);
        let r = validate(
            Kind::Beskar7ClusterTemplate,
            &request(
                "Beskar7ClusterTemplate",
                "UPDATE",
                ct("10.0.0.1"),
                Some(ct("10.0.0.1")),
                false,
            ),
        );
        assert!(r.allowed, "{:?}", r.result);
    }

    #[test]
    fn machine_spec_may_change_on_machines() {
        // Beskar7Machines are not templates: the controller sets providerID on them.
        let m = |pid: Option<&str>| {
            let mut spec = json!({"osFamily": "kairos", "imageURL": "http://a/os.iso"});
            if let Some(p) = pid {
                spec["providerID"] = json!(p);
            }
            json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "Beskar7Machine", "metadata": {"name": "t1", "namespace": "ns"}, "spec": spec})
        };
        let r = validate(
            Kind::Beskar7Machine,
            &request(
                "Beskar7Machine",
                "UPDATE",
                m(Some("beskar7://ns/h1")),
                Some(m(None)),
                false,
            ),
        );
        assert!(r.allowed, "{:?}", r.result);
    }

    #[test]
    fn bad_host_selectors_are_denied_with_the_field() {
        for (selector, needle) in [
            (json!({"matchLabels": {"bad key!": "x"}}), "matchLabels key"),
            (json!({"matchLabels": {"rack": "-a"}}), "value \"-a\""),
            (
                json!({"matchLabels": {"Example.COM/rack": "a"}}),
                "DNS subdomain",
            ),
            (
                json!({"matchExpressions": [{"key": "rack", "operator": "In"}]}),
                "needs at least one value",
            ),
            (
                json!({"matchExpressions": [{"key": "rack", "operator": "Exists", "values": ["a"]}]}),
                "takes no values",
            ),
            (
                json!({"matchExpressions": [{"key": "rack", "operator": "Gt", "values": ["1"]}]}),
                "unknown operator",
            ),
        ] {
            let mut spec = machine_spec("http://a/os.iso");
            spec["template"]["spec"]["hostSelector"] = selector.clone();
            let r = validate(
                Kind::Beskar7MachineTemplate,
                &request(
                    "Beskar7MachineTemplate",
                    "CREATE",
                    template(spec, None),
                    None,
                    false,
                ),
            );
            assert!(!r.allowed, "{selector} was allowed");
            assert!(
                r.result.message.contains("spec.template.spec.hostSelector"),
                "{}",
                r.result.message
            );
            assert!(
                r.result.message.contains(needle),
                "{selector}: {}",
                r.result.message
            );
        }
    }

    #[test]
    fn good_host_selector_is_allowed() {
        let mut spec = machine_spec("http://a/os.iso");
        spec["template"]["spec"]["hostSelector"] = json!({
            "matchLabels": {"topology.kubernetes.io/zone": "zone-a", "role": ""},
            "matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1", "r2"]}, {"key": "broken", "operator": "DoesNotExist"}]
        });
        let r = validate(
            Kind::Beskar7MachineTemplate,
            &request(
                "Beskar7MachineTemplate",
                "CREATE",
                template(spec, None),
                None,
                false,
            ),
        );
        assert!(r.allowed, "{:?}", r.result);
        assert!(r.warnings.is_none());
    }

    #[test]
    fn flatcar_prebaked_in_uefi_mode_warns() {
        let machine = |boot: &str, mode: &str| {
            json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "Beskar7Machine", "metadata": {"name": "t1", "namespace": "ns"},
                   "spec": {"osFamily": "flatcar", "imageURL": "http://a/flatcar.iso", "bootMode": boot, "provisioningMode": mode}})
        };
        let r = validate(
            Kind::Beskar7Machine,
            &request(
                "Beskar7Machine",
                "CREATE",
                machine("UEFI", "PreBakedISO"),
                None,
                false,
            ),
        );
        assert!(r.allowed);
        let w = r
            .warnings
            .expect("a warning for a pre-baked Flatcar ISO in UEFI mode");
        assert!(w[0].contains("Legacy"), "{w:?}");
        for (boot, mode) in [("Legacy", "PreBakedISO"), ("UEFI", "BootstrapData")] {
            let r = validate(
                Kind::Beskar7Machine,
                &request("Beskar7Machine", "CREATE", machine(boot, mode), None, false),
            );
            assert!(r.allowed && r.warnings.is_none(), "{boot} {mode}");
        }
    }

    #[tokio::test]
    async fn missing_certificate_fails_at_spawn() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = spawn_on(listener, dir.path()).unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");
    }

    #[tokio::test]
    async fn router_answers_an_admission_review() {
        use tower::ServiceExt;
        let old = template(machine_spec("http://a/os.iso"), None);
        let new = template(machine_spec("http://b/os.iso"), None);
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "infrastructure.cluster.x-k8s.io", "version": "v1alpha1", "kind": "Beskar7MachineTemplate"},
                        "resource": {"group": "infrastructure.cluster.x-k8s.io", "version": "v1alpha1", "resource": "beskar7machinetemplates"},
                        "name": "t1", "namespace": "ns", "operation": "UPDATE", "userInfo": {}, "object": new, "oldObject": old, "dryRun": false}
        });
        let req = axum::http::Request::post(VALIDATE_MACHINE_TEMPLATE)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let resp = router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let review: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        assert_eq!(review["response"]["uid"], "u-1");
        assert_eq!(review["response"]["allowed"], false);
        assert!(
            review["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("immutable")
        );
    }
}

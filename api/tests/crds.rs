//! The generated CRDs: every kind is there, structural, labelled for CAPI and clusterctl,
//! carries its CEL rules, and equals what is committed in `config/crd/bases`.

use std::path::PathBuf;

use beskar7_api::crds;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};

const KINDS: [(&str, &str); 7] = [
    ("Beskar7Cluster", "beskar7clusters"),
    ("Beskar7ClusterTemplate", "beskar7clustertemplates"),
    ("Beskar7Machine", "beskar7machines"),
    ("Beskar7MachineTemplate", "beskar7machinetemplates"),
    ("Beskar7Remediation", "beskar7remediations"),
    ("Beskar7RemediationTemplate", "beskar7remediationtemplates"),
    ("PhysicalHost", "physicalhosts"),
];

fn crd(kind: &str) -> CustomResourceDefinition {
    crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn schema(kind: &str) -> JSONSchemaProps {
    crd(kind).spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.clone())
        .unwrap_or_else(|| panic!("{kind} has no openAPIV3Schema"))
}

/// Walks `path` (property names) down from the root schema.
fn at<'a>(mut schema: &'a JSONSchemaProps, path: &[&str]) -> &'a JSONSchemaProps {
    for key in path {
        schema = schema
            .properties
            .as_ref()
            .and_then(|p| p.get(*key))
            .unwrap_or_else(|| panic!("no property {key} in path {path:?}"));
    }
    schema
}

fn rules(schema: &JSONSchemaProps) -> Vec<(String, String)> {
    schema
        .x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| (r.rule.clone(), r.message.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn every_kind_has_a_crd_in_our_group_and_version() {
    let all = crds::all();
    assert_eq!(all.len(), KINDS.len());
    for (kind, plural) in KINDS {
        let c = crd(kind);
        assert_eq!(c.spec.group, "infrastructure.cluster.x-k8s.io");
        assert_eq!(c.spec.names.plural, plural);
        assert_eq!(
            c.metadata.name.as_deref(),
            Some(format!("{plural}.infrastructure.cluster.x-k8s.io").as_str())
        );
        assert_eq!(c.spec.scope, "Namespaced", "{kind}");
        assert_eq!(c.spec.versions.len(), 1);
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage, "{kind} served and stored");
        let s = schema(kind);
        assert!(
            at(&s, &["spec"]).type_.as_deref() == Some("object"),
            "{kind} spec is an object"
        );
    }
}

#[test]
fn kinds_with_status_have_the_status_subresource() {
    for (kind, _) in KINDS {
        let has_status = crd(kind).spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some();
        assert_eq!(
            has_status,
            !matches!(
                kind,
                "Beskar7ClusterTemplate" | "Beskar7RemediationTemplate"
            ),
            "{kind} status subresource"
        );
    }
}

#[test]
fn schemas_are_structural() {
    // The API server rejects non-structural schemas: no $ref, and no anyOf/oneOf that declare types.
    for (kind, _) in KINDS {
        let json = serde_json::to_string(&schema(kind)).unwrap();
        assert!(!json.contains("\"$ref\""), "{kind} schema has a $ref");
        assert!(!json.contains("\"oneOf\""), "{kind} schema has a oneOf");
        assert!(
            !json.contains("\"type\":\"null\""),
            "{kind} schema has a null type"
        );
    }
}

#[test]
fn every_crd_carries_the_v1beta2_contract_label() {
    for c in crds::all() {
        let labels = c.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("cluster.x-k8s.io/v1beta2").map(String::as_str),
            Some("v1alpha1"),
            "{}",
            c.spec.names.kind
        );
    }
}

#[test]
fn physical_hosts_travel_with_clusterctl_move() {
    let labels = crd("PhysicalHost").metadata.labels.unwrap_or_default();
    assert!(labels.contains_key("clusterctl.cluster.x-k8s.io/move-hierarchy"));
}

#[test]
fn remediation_templates_travel_with_clusterctl_move() {
    // A MachineHealthCheck names its template without owning it; remediations are owned by
    // their Machine and move with it.
    let labels = crd("Beskar7RemediationTemplate")
        .metadata
        .labels
        .unwrap_or_default();
    assert!(labels.contains_key("clusterctl.cluster.x-k8s.io/move"));
    let schema = schema("Beskar7RemediationTemplate");
    let strategy = at(&schema, &["spec", "template", "spec", "strategy"]);
    for field in ["type", "retryLimit", "timeout"] {
        assert!(
            strategy.properties.as_ref().unwrap().contains_key(field),
            "{field}"
        );
    }
}

#[test]
fn names_short_names_and_categories() {
    let ph = crd("PhysicalHost");
    assert_eq!(ph.spec.names.short_names, Some(vec!["ph".to_string()]));
    assert_eq!(ph.spec.names.categories, Some(vec!["beskar7".to_string()]));
    for kind in [
        "Beskar7Cluster",
        "Beskar7ClusterTemplate",
        "Beskar7Machine",
        "Beskar7MachineTemplate",
        "Beskar7Remediation",
        "Beskar7RemediationTemplate",
    ] {
        let cats = crd(kind).spec.names.categories.unwrap_or_default();
        assert!(
            cats.contains(&"cluster-api".to_string()) && cats.contains(&"beskar7".to_string()),
            "{kind}: {cats:?}"
        );
    }
}

#[test]
fn printer_columns_show_what_people_look_for() {
    let columns = |kind: &str| -> Vec<String> {
        crd(kind).spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect()
    };
    for (kind, expected) in [
        ("PhysicalHost", &["State", "Power", "Consumer", "Age"][..]),
        (
            "Beskar7Machine",
            &["Cluster", "Host", "ProviderID", "Phase", "Ready", "Age"][..],
        ),
        (
            "Beskar7Cluster",
            &["Cluster", "Endpoint", "Provisioned", "Ready", "Age"][..],
        ),
    ] {
        let got = columns(kind);
        for name in expected {
            assert!(
                got.iter().any(|g| g == name),
                "{kind} lacks column {name}: {got:?}"
            );
        }
    }
}

#[test]
fn enums_are_enforced_by_the_schema() {
    let enum_values = |s: &JSONSchemaProps| -> Vec<String> {
        s.enum_
            .iter()
            .flatten()
            .map(|v| v.0.as_str().unwrap().to_string())
            .collect()
    };
    let m = schema("Beskar7Machine");
    assert_eq!(
        enum_values(at(&m, &["spec", "osFamily"])),
        ["kairos", "talos", "flatcar", "LeapMicro"]
    );
    assert_eq!(
        enum_values(at(&m, &["spec", "provisioningMode"])),
        ["PreBakedISO", "RemoteConfig", "BootstrapData"]
    );
    assert_eq!(
        enum_values(at(&m, &["spec", "bootMode"])),
        ["UEFI", "Legacy"]
    );
    let h = schema("PhysicalHost");
    assert_eq!(
        enum_values(at(&h, &["status", "state"])),
        [
            "Enrolling",
            "Available",
            "Claimed",
            "Provisioning",
            "Provisioned",
            "Deprovisioning",
            "Error"
        ]
    );
    assert_eq!(
        enum_values(at(&h, &["spec", "provisioning", "osFamily"])).len(),
        4
    );
}

#[test]
fn urls_have_patterns() {
    let m = schema("Beskar7Machine");
    for field in ["imageURL", "configURL"] {
        assert_eq!(
            at(&m, &["spec", field]).pattern.as_deref(),
            Some(r"^https?://[^\s]+$"),
            "{field}"
        );
    }
    let h = schema("PhysicalHost");
    assert!(
        at(&h, &["spec", "redfishConnection", "address"])
            .pattern
            .is_some()
    );
    assert!(
        at(&h, &["spec", "provisioning", "imageURL"])
            .pattern
            .is_some()
    );
}

#[test]
fn cel_rules_are_in_the_generated_crds() {
    let m = schema("Beskar7Machine");
    let spec_rules = rules(at(&m, &["spec"]));
    assert!(
        spec_rules.iter().any(|(r, msg)| r.contains("configURL")
            && msg.contains("configURL is required when provisioningMode is RemoteConfig")),
        "{spec_rules:?}"
    );
    assert!(
        spec_rules
            .iter()
            .any(|(r, msg)| r.contains("oldSelf.providerID")
                && msg == "providerID is immutable once set"),
        "{spec_rules:?}"
    );

    // The template carries the machine's rules on the spec it stamps out.
    let t = schema("Beskar7MachineTemplate");
    let template_rules = rules(at(&t, &["spec", "template", "spec"]));
    assert!(
        template_rules.iter().any(|(r, _)| r.contains("configURL")),
        "{template_rules:?}"
    );

    let h = schema("PhysicalHost");
    assert!(rules(at(&h, &["spec"])).iter().any(|(r, msg)| r
        == "has(self.consumerRef) == has(self.provisioning)"
        && msg.contains("set together")));
    assert!(
        rules(at(&h, &["spec", "provisioning"]))
            .iter()
            .any(|(r, _)| r.contains("configURL"))
    );
    assert!(
        rules(at(&h, &["spec", "provisioning"]))
            .iter()
            .any(|(r, _)| r.contains("bootstrapDataSecretRef"))
    );
    assert!(
        rules(at(&h, &["spec", "redfishConnection"]))
            .iter()
            .any(|(r, _)| r.contains("insecureSkipVerify"))
    );

    let c = schema("Beskar7Cluster");
    assert!(rules(at(&c, &["spec"])).iter().any(|(r, msg)| r.contains("oldSelf.controlPlaneEndpoint") && msg.contains("immutable")));
    assert!(
        rules(at(&c, &["spec", "controlPlaneEndpoint"]))
            .iter()
            .any(|(r, _)| r.contains("self.port"))
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for kind in [
        "PhysicalHost",
        "Beskar7Machine",
        "Beskar7Cluster",
        "Beskar7MachineTemplate",
    ] {
        let s = schema(kind);
        let conditions = at(&s, &["status", "conditions"]);
        assert_eq!(
            conditions.x_kubernetes_list_type.as_deref(),
            Some("map"),
            "{kind}"
        );
        assert_eq!(
            conditions.x_kubernetes_list_map_keys,
            Some(vec!["type".to_string()]),
            "{kind}"
        );
    }
}

#[test]
fn v1beta2_contract_fields_are_in_the_schemas() {
    let m = schema("Beskar7Machine");
    at(&m, &["spec", "providerID"]);
    at(&m, &["status", "initialization", "provisioned"]);
    at(&m, &["status", "addresses"]);
    at(&m, &["status", "failureDomain"]);
    let c = schema("Beskar7Cluster");
    at(&c, &["spec", "controlPlaneEndpoint", "host"]);
    at(&c, &["spec", "controlPlaneEndpoint", "port"]);
    at(&c, &["status", "initialization", "provisioned"]);
    let fd = at(&c, &["status", "failureDomains"]);
    assert_eq!(
        fd.type_.as_deref(),
        Some("array"),
        "v1beta2 failureDomains are a list"
    );
    let item = match fd.items.as_ref().unwrap() {
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => s,
        other => panic!("unexpected items {other:?}"),
    };
    for key in ["name", "controlPlane", "attributes"] {
        at(item, &[key]);
    }
    let t = schema("Beskar7MachineTemplate");
    at(&t, &["status", "capacity"]);
    at(&t, &["status", "nodeInfo"]);
    at(&t, &["status", "availableHosts"]);
    let ct = schema("Beskar7ClusterTemplate");
    at(&ct, &["spec", "template", "spec", "controlPlaneEndpoint"]);
}

#[test]
fn committed_crds_equal_generated_ones() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd/bases");
    let generated = crds::rendered().unwrap();
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    committed.sort();
    let mut names: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        committed, names,
        "config/crd/bases holds other files than the generated CRDs: run `make crds`"
    );
    for (name, yaml) in generated {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            on_disk == yaml,
            "config/crd/bases/{name} differs from the generated CRD: run `make crds` and commit"
        );
    }
}

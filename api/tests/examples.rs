//! Manifests users of the Go project already have (`../shared/examples`) parse into our types
//! and serialise back without losing a field.

use std::path::PathBuf;

use beskar7_api::{Beskar7Machine, OsFamily, PhysicalHost, ProvisioningMode};
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/examples")
}

fn examples() -> Vec<(String, Value)> {
    let dir = examples_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(doc).unwrap();
                out.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    value,
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

use serde::Deserialize;

/// Every field of `original` is in `round_tripped` with the same value (defaults may be added).
fn assert_contains(original: &Value, round_tripped: &Value, path: &str) {
    match (original, round_tripped) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let other = b
                    .get(key)
                    .unwrap_or_else(|| panic!("field {path}.{key} was lost in the round trip"));
                assert_contains(value, other, &format!("{path}.{key}"));
            }
        }
        _ => assert_eq!(
            original, round_tripped,
            "value of {path} changed in the round trip"
        ),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(name: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_contains(value, &back, name);
    // And once more through YAML, the way people write them.
    let yaml = serde_yaml::to_string(&typed).unwrap();
    let again: T = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(
        serde_json::to_value(&again).unwrap(),
        back,
        "{name}: YAML round trip differs"
    );
    typed
}

#[test]
fn every_example_round_trips_through_our_types() {
    let all = examples();
    assert!(
        all.len() >= 4,
        "expected the shared examples, found {}",
        all.len()
    );
    let mut kinds_seen = Vec::new();
    for (name, value) in &all {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "PhysicalHost" => {
                round_trip::<PhysicalHost>(name, value);
            }
            "Beskar7Machine" => {
                round_trip::<Beskar7Machine>(name, value);
            }
            "Secret" => {
                round_trip::<Secret>(name, value);
            }
            other => panic!("{name}: no type for kind {other}"),
        }
        kinds_seen.push(kind);
    }
    for kind in ["PhysicalHost", "Beskar7Machine", "Secret"] {
        assert!(kinds_seen.iter().any(|k| k == kind), "no {kind} example");
    }
}

#[test]
fn example_values_land_in_the_right_fields() {
    let all = examples();
    let machine = |file: &str| -> Beskar7Machine {
        let (_, v) = all
            .iter()
            .find(|(n, _)| n == file)
            .unwrap_or_else(|| panic!("{file} missing"));
        serde_json::from_value(v.clone()).unwrap()
    };
    let remote = machine("b7machine-kairos-remote.yaml");
    assert_eq!(remote.spec.os_family, OsFamily::Kairos);
    assert_eq!(
        remote.spec.provisioning_mode,
        ProvisioningMode::RemoteConfig
    );
    assert_eq!(
        remote.spec.config_url.as_deref(),
        Some("https://your-server.com/path/to/kairos-config.yaml")
    );
    let prebaked = machine("b7machine-prebaked.yaml");
    assert_eq!(
        prebaked.spec.provisioning_mode,
        ProvisioningMode::PreBakedISO
    );
    assert_eq!(
        prebaked.spec.image_url,
        "http://example.com/my-kairos-prebaked.iso"
    );
    assert!(prebaked.spec.config_url.is_none());

    let (_, v) = all.iter().find(|(n, _)| n == "physicalhost.yaml").unwrap();
    let host: PhysicalHost = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(
        host.spec.redfish_connection.address,
        "https://192.168.1.123"
    );
    assert_eq!(
        host.spec.redfish_connection.credentials_secret_ref,
        "my-bmc-credentials"
    );
    assert_eq!(host.spec.redfish_connection.insecure_skip_verify, None);
}

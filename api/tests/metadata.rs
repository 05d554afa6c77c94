//! `metadata.yaml` tells clusterctl which contract our release series implements; it must
//! agree with the contract label on the CRDs.

use std::path::PathBuf;

#[test]
fn metadata_yaml_declares_the_contract_of_the_crds() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../metadata.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let meta: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(meta["apiVersion"], "clusterctl.cluster.x-k8s.io/v1alpha3");
    assert_eq!(meta["kind"], "Metadata");
    let series = meta["releaseSeries"]
        .as_array()
        .expect("releaseSeries is a list");
    let ours = series
        .iter()
        .find(|s| s["major"] == 0 && s["minor"] == 1)
        .expect("release series 0.1");
    assert_eq!(ours["contract"], "v1beta2");

    // The contract named here is the one the CRD label maps to our version.
    let label_key = format!("cluster.x-k8s.io/{}", ours["contract"].as_str().unwrap());
    assert_eq!(label_key, beskar7_api::CONTRACT_LABEL);
    for crd in beskar7_api::crds::all() {
        assert_eq!(
            crd.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(&label_key))
                .map(String::as_str),
            Some(beskar7_api::VERSION)
        );
    }
}

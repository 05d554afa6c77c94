//! The CEL rules evaluated client-side (kube-cel) on good and bad objects, so a rule that is
//! wrong fails here before it reaches an API server. The same cases run against a real
//! kube-apiserver in the beskar7-test crate.

use beskar7_api::*;
use kube::core::ObjectMeta;

fn machine(mode: ProvisioningMode, config_url: Option<&str>) -> Beskar7Machine {
    Beskar7Machine {
        metadata: ObjectMeta {
            name: Some("m".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Beskar7MachineSpec {
            provider_id: None,
            os_family: OsFamily::Kairos,
            image_url: "https://example.com/kairos.iso".into(),
            image_checksum: None,
            provisioning_mode: mode,
            config_url: config_url.map(Into::into),
            boot_mode: BootMode::Uefi,
            host_selector: None,
            network: None,
        },
        status: None,
    }
}

fn messages(err: impl std::fmt::Debug) -> String {
    format!("{err:?}")
}

#[test]
fn config_url_is_required_for_remote_config_only() {
    machine(
        ProvisioningMode::RemoteConfig,
        Some("https://c.example/k.yaml"),
    )
    .validate_cel()
    .unwrap();
    machine(ProvisioningMode::PreBakedISO, None)
        .validate_cel()
        .unwrap();
    machine(ProvisioningMode::BootstrapData, None)
        .validate_cel()
        .unwrap();

    let missing = machine(ProvisioningMode::RemoteConfig, None)
        .validate_cel()
        .unwrap_err();
    assert!(
        messages(&missing).contains("configURL is required when provisioningMode is RemoteConfig"),
        "{missing:?}"
    );
    let stray = machine(
        ProvisioningMode::PreBakedISO,
        Some("https://c.example/k.yaml"),
    )
    .validate_cel()
    .unwrap_err();
    assert!(
        messages(&stray).contains("forbidden otherwise"),
        "{stray:?}"
    );
}

#[test]
fn provider_id_is_immutable_once_set() {
    let mut old = machine(ProvisioningMode::PreBakedISO, None);
    let mut new = old.clone();
    new.spec.provider_id = Some("beskar7://default/server-01".into());
    new.validate_cel_update(&old)
        .expect("setting providerID the first time is allowed");

    old.spec.provider_id = new.spec.provider_id.clone();
    new.validate_cel_update(&old)
        .expect("keeping it is allowed");

    let mut changed = new.clone();
    changed.spec.provider_id = Some("beskar7://default/server-02".into());
    let err = changed.validate_cel_update(&old).unwrap_err();
    assert!(
        messages(&err).contains("providerID is immutable once set"),
        "{err:?}"
    );

    let mut removed = new.clone();
    removed.spec.provider_id = None;
    let err = removed.validate_cel_update(&old).unwrap_err();
    assert!(
        messages(&err).contains("providerID is immutable once set"),
        "{err:?}"
    );
}

fn host() -> PhysicalHost {
    PhysicalHost {
        metadata: ObjectMeta {
            name: Some("server-01".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: PhysicalHostSpec {
            redfish_connection: RedfishConnection {
                address: "https://192.168.1.123".into(),
                credentials_secret_ref: "creds".into(),
                ..Default::default()
            },
            ..Default::default()
        },
        status: None,
    }
}

fn provisioning(mode: ProvisioningMode) -> Provisioning {
    Provisioning {
        image_url: "https://example.com/os.iso".into(),
        image_checksum: None,
        os_family: OsFamily::Talos,
        mode,
        config_url: None,
        bootstrap_data_secret_ref: Some("m-bootstrap".into()),
        boot_mode: BootMode::Uefi,
        hostname: None,
        network: None,
    }
}

#[test]
fn consumer_ref_and_provisioning_are_set_together() {
    host().validate_cel().unwrap();
    let mut claimed = host();
    claimed.spec.consumer_ref = Some(ConsumerRef {
        name: "m".into(),
        ..Default::default()
    });
    claimed.spec.provisioning = Some(provisioning(ProvisioningMode::BootstrapData));
    claimed.validate_cel().unwrap();

    let mut half = host();
    half.spec.consumer_ref = Some(ConsumerRef {
        name: "m".into(),
        ..Default::default()
    });
    let err = half.validate_cel().unwrap_err();
    assert!(
        messages(&err).contains("consumerRef and provisioning must be set together"),
        "{err:?}"
    );

    let mut other_half = host();
    other_half.spec.provisioning = Some(provisioning(ProvisioningMode::BootstrapData));
    assert!(other_half.validate_cel().is_err());
}

#[test]
fn host_provisioning_rules() {
    let claimed = |p: Provisioning| {
        let mut h = host();
        h.spec.consumer_ref = Some(ConsumerRef {
            name: "m".into(),
            ..Default::default()
        });
        h.spec.provisioning = Some(p);
        h
    };
    let mut no_secret = provisioning(ProvisioningMode::BootstrapData);
    no_secret.bootstrap_data_secret_ref = None;
    let err = claimed(no_secret).validate_cel().unwrap_err();
    assert!(
        messages(&err).contains("bootstrapDataSecretRef is required"),
        "{err:?}"
    );

    let remote_without_url = provisioning(ProvisioningMode::RemoteConfig);
    let err = claimed(remote_without_url).validate_cel().unwrap_err();
    assert!(
        messages(&err).contains("configURL is required when mode is RemoteConfig"),
        "{err:?}"
    );
}

#[test]
fn ca_bundle_and_insecure_skip_verify_exclude_each_other() {
    let mut h = host();
    h.spec.redfish_connection.ca_bundle_secret_ref = Some("bmc-ca".into());
    h.validate_cel().unwrap();
    h.spec.redfish_connection.insecure_skip_verify = Some(false);
    h.validate_cel().unwrap();
    h.spec.redfish_connection.insecure_skip_verify = Some(true);
    let err = h.validate_cel().unwrap_err();
    assert!(messages(&err).contains("exclude each other"), "{err:?}");
}

fn cluster(host: &str, port: i32) -> Beskar7Cluster {
    Beskar7Cluster {
        metadata: ObjectMeta {
            name: Some("c".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Beskar7ClusterSpec {
            control_plane_endpoint: Some(ApiEndpoint {
                host: host.into(),
                port,
            }),
            failure_domains: vec![],
        },
        status: None,
    }
}

#[test]
fn control_plane_endpoint_rules() {
    cluster("10.0.0.10", 6443).validate_cel().unwrap();
    cluster("", 0).validate_cel().unwrap();
    let err = cluster("10.0.0.10", 0).validate_cel().unwrap_err();
    assert!(
        messages(&err).contains("port must be between 1 and 65535"),
        "{err:?}"
    );
    assert!(cluster("10.0.0.10", 70000).validate_cel().is_err());

    // Set once, then fixed; an empty endpoint may still be filled in.
    cluster("10.0.0.10", 6443)
        .validate_cel_update(&cluster("", 0))
        .unwrap();
    cluster("10.0.0.10", 6443)
        .validate_cel_update(&cluster("10.0.0.10", 6443))
        .unwrap();
    let err = cluster("10.0.0.11", 6443)
        .validate_cel_update(&cluster("10.0.0.10", 6443))
        .unwrap_err();
    assert!(
        messages(&err).contains("controlPlaneEndpoint is immutable once set"),
        "{err:?}"
    );
}

#[test]
fn an_interface_is_matched_one_way_and_has_addresses() {
    let with = |iface: InterfaceSpec| {
        let mut m = machine(ProvisioningMode::BootstrapData, None);
        m.spec.network = Some(NetworkSpec {
            interfaces: vec![iface],
            nameservers: vec![],
        });
        m
    };
    let good = InterfaceSpec {
        mac_address: Some("52:54:00:00:00:01".into()),
        addresses: vec!["10.0.0.2/24".into()],
        ..Default::default()
    };
    with(good.clone()).validate_cel().unwrap();
    let both = InterfaceSpec {
        name: Some("eth0".into()),
        ..good.clone()
    };
    let err = with(both).validate_cel().unwrap_err();
    assert!(
        messages(&err).contains("by macAddress or by name, not both"),
        "{err:?}"
    );
    let none = InterfaceSpec {
        addresses: vec![],
        ..good
    };
    let err = with(none).validate_cel().unwrap_err();
    assert!(
        messages(&err).contains("needs addresses or addressesFromPools"),
        "{err:?}"
    );
}

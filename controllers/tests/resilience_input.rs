//! Malformed user input in every field of PhysicalHost, Beskar7Machine(Template) and
//! Beskar7Cluster(Template), against a real API server, the sushy BMC lab and the manager process.
//! Where the API server refuses a value (schema, enum, CEL), the refusal names the field. Where it
//! accepts it, the manager sets a condition whose reason and message say what to fix, does not
//! panic, keeps its memory bounded (a 1 MiB password), and the other hosts keep working: a good
//! host next to the bad ones is inventoried and provisioned.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use beskar7_api::{HostState, PhysicalHost};
use beskar7_test::fixtures::LAB_CA_SECRET;
use beskar7_test::{BmcLab, ControlPlane};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, PostParams};
use support::*;

const NS: &str = "default";
const INFRA: &str = "infrastructure.cluster.x-k8s.io";

/// Creates `kind` from `body`; the error message when the API server refuses it.
async fn try_create(
    client: &kube::Client,
    kind: &str,
    body: serde_json::Value,
) -> Result<(), String> {
    let api = dynamic_api(client, NS, INFRA, "v1alpha1", kind);
    let mut obj: DynamicObject = serde_json::from_value(body).unwrap();
    obj.types = Some(kube::core::TypeMeta {
        api_version: format!("{INFRA}/v1alpha1"),
        kind: kind.into(),
    });
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{kind}: refused with {e:?}");
            Err(e.message)
        }
        Err(e) => panic!("{kind}: {e}"),
    }
}

/// Asserts the API server refuses `body` with a message naming `field` (and `also`, if given).
async fn refused(
    client: &kube::Client,
    kind: &str,
    body: serde_json::Value,
    field: &str,
    also: &str,
) {
    let what = body.to_string();
    match try_create(client, kind, body).await {
        Ok(()) => panic!("{kind} accepted, expected a refusal naming {field}: {what}"),
        Err(msg) => {
            assert!(
                msg.contains(field),
                "{kind}: refusal does not name {field}: {msg}"
            );
            assert!(
                msg.contains(also),
                "{kind}: refusal does not say {also:?}: {msg}"
            );
        }
    }
}

fn host_body(name: &str, conn: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({"redfishConnection": conn});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    serde_json::json!({"metadata": {"name": name, "namespace": NS}, "spec": spec})
}

async fn secret(client: &kube::Client, name: &str, data: BTreeMap<String, Vec<u8>>) {
    let s = Secret {
        metadata: kube::core::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &s)
        .await
        .unwrap_or_else(|e| panic!("Secret {name}: {e}"));
}

fn creds(user: Option<&[u8]>, password: Option<&[u8]>) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    if let Some(u) = user {
        m.insert("username".into(), u.to_vec());
    }
    if let Some(p) = password {
        m.insert("password".into(), p.to_vec());
    }
    m
}

/// What a bad host must come to: a False condition with one of `reasons` whose message (or
/// `status.lastError`) contains `says`.
struct Expect {
    host: &'static str,
    reasons: &'static [&'static str],
    says: &'static str,
}

async fn host_get(client: &kube::Client, name: &str) -> Option<PhysicalHost> {
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .ok()
}

/// The condition of `e.host` that matches, as "type reason: message".
async fn wait_condition(client: &kube::Client, manager: &Manager, e: &Expect) -> String {
    eventually(
        &format!(
            "{}: a condition {:?} saying {:?}",
            e.host, e.reasons, e.says
        ),
        Duration::from_secs(150),
        Some(manager),
        || async {
            let st = host_get(client, e.host).await?.status?;
            let last = st.last_error.clone().unwrap_or_default();
            st.conditions
                .iter()
                .find(|c| {
                    c.status == "False"
                        && e.reasons.contains(&c.reason.as_str())
                        && (c.message.contains(e.says) || last.contains(e.says))
                })
                .map(|c| format!("{} {}: {}", c.type_, c.reason, c.message))
        },
    )
    .await
}

/// A BMC that answers every request with `body` (`None`: an endless chunked stream), over plain
/// HTTP on loopback. Bounded: it stops writing after 1 GiB per connection.
async fn hostile_bmc(body: Option<Vec<u8>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    if head.len() > 1 << 16 {
                        return;
                    }
                }
                match body {
                    Some(b) => {
                        let h = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            b.len()
                        );
                        let _ = sock.write_all(h.as_bytes()).await;
                        let _ = sock.write_all(&b).await;
                    }
                    None => {
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").await;
                        let chunk = format!("{:x}\r\n{}\r\n", 1 << 16, "x".repeat(1 << 16));
                        for _ in 0..(1 << 14) {
                            if sock.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn assert_manager_healthy(manager: &mut Manager) {
    assert!(
        manager.try_wait().is_none(),
        "the manager exited:\n{}",
        manager.log_tail(60)
    );
    let log = manager.log_text();
    assert!(
        !log.contains("panicked"),
        "the manager panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_or_a_clear_condition() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::start().await.expect("control plane");
    let lab = BmcLab::start(8).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let iso = build_test_iso(work.path(), "/boot/grub/grub.cfg").unwrap();
    let image_url = lab.add_image("kairos.iso", &iso).unwrap();
    let missing_image = format!(
        "{}/no-such-image.iso",
        image_url.rsplit_once('/').unwrap().0
    );
    let mut manager = start_manager(&cp, &[]);
    let s0 = lab.systems[0].clone();
    let lab_hostport = s0.address.trim_start_matches("https://").to_string();
    let conn = |address: &str, secret: &str| serde_json::json!({"address": address, "credentialsSecretRef": secret, "systemId": s0.system_id, "caBundleSecretRef": LAB_CA_SECRET});

    // ---- Refused by the API server, naming the field. ----
    let good_conn = conn(&s0.address, "good-bmc");
    for (address, field_says) in [
        ("bmc example.com", "spec.redfishConnection.address"),
        ("", "spec.redfishConnection.address"),
        ("ftp://bmc.example", "spec.redfishConnection.address"),
        ("https://:443", "spec.redfishConnection.address"),
        ("https://bmc\u{0}.example", "spec.redfishConnection.address"),
        (
            "https://bmc.example:443:1",
            "spec.redfishConnection.address",
        ),
    ] {
        refused(
            &client,
            "PhysicalHost",
            host_body("refused", conn(address, "x"), serde_json::json!({})),
            field_says,
            "",
        )
        .await;
    }
    refused(
        &client,
        "PhysicalHost",
        host_body(
            "refused",
            serde_json::json!({"address": s0.address, "credentialsSecretRef": ""}),
            serde_json::json!({}),
        ),
        "spec.redfishConnection.credentialsSecretRef",
        "",
    )
    .await;
    refused(
        &client,
        "PhysicalHost",
        host_body(
            "refused",
            serde_json::json!({"address": s0.address, "credentialsSecretRef": "x", "systemId": ""}),
            serde_json::json!({}),
        ),
        "spec.redfishConnection.systemId",
        "",
    )
    .await;
    refused(&client, "PhysicalHost", host_body("refused", serde_json::json!({"address": s0.address, "credentialsSecretRef": "x", "insecureSkipVerify": true, "caBundleSecretRef": "ca"}), serde_json::json!({})), "spec.redfishConnection", "exclude each other").await;
    refused(
        &client,
        "PhysicalHost",
        host_body(
            "refused",
            good_conn.clone(),
            serde_json::json!({"bootIsoSource": "file:///etc/passwd"}),
        ),
        "spec.bootIsoSource",
        "",
    )
    .await;
    let prov = |p: serde_json::Value| {
        let mut base = serde_json::json!({"imageURL": image_url, "osFamily": "kairos", "mode": "BootstrapData", "bootstrapDataSecretRef": "b"});
        base.as_object_mut()
            .unwrap()
            .extend(p.as_object().unwrap().clone());
        serde_json::json!({"consumerRef": {"name": "m"}, "provisioning": base})
    };
    for (p, field, says) in [
        (
            serde_json::json!({"imageURL": "ftp://images/os.iso"}),
            "spec.provisioning.imageURL",
            "",
        ),
        (
            serde_json::json!({"imageURL": "https://images/os .iso"}),
            "spec.provisioning.imageURL",
            "",
        ),
        (
            serde_json::json!({"imageChecksum": "sha256:1234"}),
            "spec.provisioning.imageChecksum",
            "",
        ),
        (
            serde_json::json!({"imageChecksum": "md5:d41d8cd98f00b204e9800998ecf8427e"}),
            "spec.provisioning.imageChecksum",
            "",
        ),
        (
            serde_json::json!({"osFamily": "windows"}),
            "spec.provisioning.osFamily",
            "windows",
        ),
        (
            serde_json::json!({"mode": "Magic"}),
            "spec.provisioning.mode",
            "Magic",
        ),
        (
            serde_json::json!({"bootMode": "BIOS-ish"}),
            "spec.provisioning.bootMode",
            "",
        ),
        (
            serde_json::json!({"configURL": "https://cfg/x"}),
            "spec.provisioning",
            "configURL",
        ),
    ] {
        refused(
            &client,
            "PhysicalHost",
            host_body("refused", good_conn.clone(), prov(p)),
            field,
            says,
        )
        .await;
    }
    refused(
        &client,
        "PhysicalHost",
        host_body(
            "refused",
            good_conn.clone(),
            serde_json::json!({"consumerRef": {"name": "m"}}),
        ),
        "spec",
        "consumerRef and provisioning",
    )
    .await;

    let machine = |p: serde_json::Value| {
        let mut spec = serde_json::json!({"osFamily": "kairos", "imageURL": image_url, "provisioningMode": "BootstrapData"});
        spec.as_object_mut()
            .unwrap()
            .extend(p.as_object().unwrap().clone());
        spec
    };
    for (p, field, says) in [
        (
            serde_json::json!({"osFamily": "windows"}),
            "spec.osFamily",
            "windows",
        ),
        (serde_json::json!({"osFamily": ""}), "spec.osFamily", ""),
        (
            serde_json::json!({"imageURL": "not a url"}),
            "spec.imageURL",
            "",
        ),
        (
            serde_json::json!({"imageURL": "gopher://x/y.iso"}),
            "spec.imageURL",
            "",
        ),
        (serde_json::json!({"imageURL": ""}), "spec.imageURL", ""),
        (
            serde_json::json!({"imageChecksum": "sha256:zz"}),
            "spec.imageChecksum",
            "",
        ),
        (
            serde_json::json!({"provisioningMode": "Telepathy"}),
            "spec.provisioningMode",
            "Telepathy",
        ),
        (serde_json::json!({"bootMode": 7}), "spec.bootMode", ""),
        (
            serde_json::json!({"configURL": "https://cfg/x"}),
            "spec",
            "configURL",
        ),
        (
            serde_json::json!({"provisioningMode": "RemoteConfig"}),
            "spec",
            "configURL",
        ),
        (
            serde_json::json!({"provisioningMode": "RemoteConfig", "configURL": "javascript:alert(1)"}),
            "spec.configURL",
            "",
        ),
        (
            serde_json::json!({"providerID": "aws:///i-123"}),
            "spec.providerID",
            "",
        ),
        (
            serde_json::json!({"hostSelector": {"matchLabels": {"bad key!": "x"}}}),
            "spec.hostSelector",
            "",
        ),
    ] {
        let body = serde_json::json!({"metadata": {"name": "refused", "namespace": NS}, "spec": machine(p.clone())});
        // hostSelector label syntax is not checked by the schema: accepted, then it matches nothing.
        if field == "spec.hostSelector" {
            if try_create(&client, "Beskar7Machine", body).await.is_ok() {
                dynamic_api(&client, NS, INFRA, "v1alpha1", "Beskar7Machine")
                    .delete("refused", &Default::default())
                    .await
                    .unwrap();
            }
            continue;
        }
        refused(&client, "Beskar7Machine", body, field, says).await;
        let tpl = serde_json::json!({"metadata": {"name": "refused", "namespace": NS}, "spec": {"template": {"spec": machine(p)}}});
        let tpl_field = field.replacen("spec", "spec.template.spec", 1);
        refused(&client, "Beskar7MachineTemplate", tpl, &tpl_field, says).await;
    }
    for (endpoint, field, says) in [
        (
            serde_json::json!({"host": "10.0.0.1", "port": 70000}),
            "spec.controlPlaneEndpoint",
            "port",
        ),
        (
            serde_json::json!({"host": "10.0.0.1", "port": 0}),
            "spec.controlPlaneEndpoint",
            "port",
        ),
        (
            serde_json::json!({"host": "10.0.0.1", "port": "https"}),
            "spec.controlPlaneEndpoint.port",
            "",
        ),
        (
            serde_json::json!({"host": "h".repeat(600), "port": 6443}),
            "spec.controlPlaneEndpoint.host",
            "",
        ),
    ] {
        refused(&client, "Beskar7Cluster", serde_json::json!({"metadata": {"name": "refused", "namespace": NS}, "spec": {"controlPlaneEndpoint": endpoint}}), field, says).await;
        let tpl_field = field.replacen("spec", "spec.template.spec", 1);
        refused(&client, "Beskar7ClusterTemplate", serde_json::json!({"metadata": {"name": "refused", "namespace": NS}, "spec": {"template": {"spec": {"controlPlaneEndpoint": endpoint}}}}), &tpl_field, says).await;
    }
    let many: Vec<serde_json::Value> = (0..65)
        .map(|i| serde_json::json!({"name": format!("fd{i}")}))
        .collect();
    refused(&client, "Beskar7Cluster", serde_json::json!({"metadata": {"name": "refused", "namespace": NS}, "spec": {"failureDomains": many}}), "spec.failureDomains", "").await;

    // ---- Accepted by the API server: the manager answers with conditions. ----
    // Credentials Secrets, each wrong in its own way.
    let (user, pw) = (s0.username.as_bytes(), s0.password.as_bytes());
    // 1 MiB: the most a Secret holds (its data, all keys together).
    let huge_password = vec![b'p'; 1024 * 1024 - user.len()];
    for (name, data) in [
        ("no-username", creds(None, Some(pw))),
        ("no-password", creds(Some(user), None)),
        ("empty-password", creds(Some(user), Some(b"\n"))),
        (
            "binary-password",
            creds(Some(user), Some(&[0xff, 0xfe, 0x00, 0x80])),
        ),
        ("huge-password", creds(Some(user), Some(&huge_password))),
        ("good-bmc", creds(Some(user), Some(pw))),
    ] {
        secret(&client, &format!("{name}-bmc"), data).await;
    }
    enroll_lab(&client, NS, &lab, &[]).await;
    // enroll_lab made server-00..07 with their Secrets; the bad hosts below use system 0's BMC.
    let rss_before = rss_kib(manager.pid(), "VmRSS:");
    let bad_hosts: Vec<(&str, serde_json::Value)> = vec![
        ("no-username", conn(&s0.address, "no-username-bmc")),
        ("no-password", conn(&s0.address, "no-password-bmc")),
        ("empty-password", conn(&s0.address, "empty-password-bmc")),
        ("binary-password", conn(&s0.address, "binary-password-bmc")),
        ("huge-password", conn(&s0.address, "huge-password-bmc")),
        // The schema's pattern cannot bound the port's value.
        ("bad-port", conn("https://127.0.0.1:99999", "good-bmc-bmc")),
        (
            "plain-http-to-tls",
            conn(&format!("http://{lab_hostport}"), "good-bmc-bmc"),
        ),
        (
            "no-such-system",
            serde_json::json!({"address": s0.address, "credentialsSecretRef": "good-bmc-bmc", "systemId": "no-such-system", "caBundleSecretRef": LAB_CA_SECRET}),
        ),
        (
            "no-ca-secret",
            serde_json::json!({"address": s0.address, "credentialsSecretRef": "good-bmc-bmc", "systemId": s0.system_id, "caBundleSecretRef": "no-such-ca"}),
        ),
    ];
    for (name, c) in &bad_hosts {
        try_create(
            &client,
            "PhysicalHost",
            host_body(name, c.clone(), serde_json::json!({})),
        )
        .await
        .unwrap_or_else(|m| panic!("{name} refused: {m}"));
    }
    // BMCs that answer with a stream without end, and with JSON nested 100k levels deep.
    let endless = hostile_bmc(None).await;
    let deep: Vec<u8> = std::iter::repeat_n(&b"{\"a\":"[..], 100_000)
        .flatten()
        .copied()
        .chain(*b"1")
        .chain(std::iter::repeat_n(b'}', 100_000))
        .collect();
    let nested = hostile_bmc(Some(deep)).await;
    for (name, address) in [("endless-bmc", &endless), ("nested-json-bmc", &nested)] {
        try_create(
            &client,
            "PhysicalHost",
            host_body(
                name,
                serde_json::json!({"address": address, "credentialsSecretRef": "good-bmc-bmc"}),
                serde_json::json!({}),
            ),
        )
        .await
        .unwrap_or_else(|m| panic!("{name} refused: {m}"));
    }
    // A host with no scheme in its address: https is assumed, and it works.
    try_create(
        &client,
        "PhysicalHost",
        host_body(
            "no-scheme",
            conn(&lab_hostport, "good-bmc-bmc"),
            serde_json::json!({}),
        ),
    )
    .await
    .unwrap();

    let expectations = [
        Expect {
            host: "no-username",
            reasons: &["CredentialsSecretInvalid"],
            says: "has no key \"username\"",
        },
        Expect {
            host: "no-password",
            reasons: &["CredentialsSecretInvalid"],
            says: "has no key \"password\"",
        },
        Expect {
            host: "empty-password",
            reasons: &["CredentialsSecretInvalid"],
            says: "\"password\" is empty",
        },
        Expect {
            host: "binary-password",
            reasons: &["CredentialsSecretInvalid"],
            says: "not UTF-8",
        },
        Expect {
            host: "huge-password",
            reasons: &["CredentialsSecretInvalid"],
            says: "longer than 4096 bytes",
        },
        Expect {
            host: "bad-port",
            reasons: &["InvalidBMCConfiguration"],
            says: "invalid port",
        },
        Expect {
            host: "plain-http-to-tls",
            reasons: &["BMCUnreachable", "RedfishProtocolError"],
            says: "",
        },
        Expect {
            host: "no-such-system",
            reasons: &["RedfishResourceNotFound", "InvalidBMCConfiguration"],
            says: "no-such-system",
        },
        Expect {
            host: "no-ca-secret",
            reasons: &["CABundleSecretInvalid"],
            says: "default/no-such-ca",
        },
    ];
    let hostile = [
        Expect {
            host: "endless-bmc",
            reasons: &["RedfishResponseTooLarge"],
            says: "exceeds the limit of 16777216 bytes",
        },
        Expect {
            host: "nested-json-bmc",
            reasons: &["RedfishProtocolError"],
            says: "recursion limit exceeded",
        },
    ];
    for e in expectations.iter().chain(&hostile) {
        let c = wait_condition(&client, &manager, e).await;
        println!("{}: {c}", e.host);
        let st = host_get(&client, e.host).await.unwrap().status.unwrap();
        assert_eq!(st.state, Some(HostState::Error), "{}: {st:?}", e.host);
        assert!(
            !c.contains(&s0.password),
            "{}: the password reached the condition",
            e.host
        );
        assert!(
            c.len() < 2000,
            "{}: a short message, not {} bytes",
            e.host,
            c.len()
        );
    }
    assert_manager_healthy(&mut manager);

    // ---- Bad machine input on lab hosts: image, checksum, bootstrap data per OS family. ----
    // The good host (server-00) is provisioned next to them.
    let binary: Vec<u8> = (0..=255u8).rev().cycle().take(4096).collect();
    let good_bootstrap = b"#cloud-config\nruncmd:\n  - echo hello\n".to_vec();
    // Parses as YAML but cannot be written back (a mapping as a key): once a panic in the manager.
    let complex_key = b"#cloud-config\nwrite_files: { {a: 1}: c }\n".to_vec();
    let bootstrap_secrets: [(&str, &[u8], Option<&str>); 7] = [
        ("bs-good", &good_bootstrap, Some("cloud-config")),
        ("bs-binary-cloud-config", &binary, Some("cloud-config")),
        ("bs-binary-ignition", &binary, Some("ignition")),
        ("bs-unknown-format", &good_bootstrap, Some("xml")),
        ("bs-no-value", b"", None),
        ("bs-binary-format", &good_bootstrap, None),
        ("bs-complex-key", &complex_key, Some("cloud-config")),
    ];
    for (name, value, format) in bootstrap_secrets {
        let mut data = BTreeMap::new();
        if name != "bs-no-value" {
            data.insert("value".to_string(), value.to_vec());
        }
        match (name, format) {
            ("bs-binary-format", _) => {
                data.insert("format".into(), vec![0xff, 0x00, 0xfe]);
            }
            (_, Some(f)) => {
                data.insert("format".into(), f.as_bytes().to_vec());
            }
            _ => {}
        }
        secret(&client, name, data).await;
    }
    let hosts_api: Api<PhysicalHost> = Api::namespaced(client.clone(), NS);
    let provision = |os: &str,
                     mode: &str,
                     secret: Option<&str>,
                     image: &str,
                     checksum: Option<String>| {
        let mut p = serde_json::json!({"imageURL": image, "osFamily": os, "mode": mode});
        if let Some(s) = secret {
            p["bootstrapDataSecretRef"] = serde_json::json!(s);
        }
        if let Some(c) = checksum {
            p["imageChecksum"] = serde_json::json!(c);
        }
        serde_json::json!({"spec": {"consumerRef": {"name": "consumer", "namespace": NS, "kind": "Beskar7Machine"}, "provisioning": p}})
    };
    let wrong_checksum = format!("sha256:{}", "0".repeat(64));
    let machine_cases: Vec<(&str, serde_json::Value, &[&str], &str)> = vec![
        (
            "server-01",
            provision(
                "kairos",
                "BootstrapData",
                Some("bs-binary-cloud-config"),
                &image_url,
                None,
            ),
            &["OSConfigurationInvalid", "BootstrapDataInvalid"],
            "UTF-8",
        ),
        (
            "server-02",
            provision(
                "talos",
                "BootstrapData",
                Some("bs-binary-cloud-config"),
                &image_url,
                None,
            ),
            &["OSConfigurationInvalid", "BootstrapDataInvalid"],
            "talos",
        ),
        (
            "server-03",
            provision(
                "flatcar",
                "BootstrapData",
                Some("bs-binary-ignition"),
                &image_url,
                None,
            ),
            &["OSConfigurationInvalid", "BootstrapDataInvalid"],
            "Ignition",
        ),
        (
            "server-04",
            provision(
                "LeapMicro",
                "BootstrapData",
                Some("bs-binary-ignition"),
                &image_url,
                None,
            ),
            &["OSConfigurationInvalid", "BootstrapDataInvalid"],
            "Ignition",
        ),
        (
            "server-05",
            provision(
                "kairos",
                "BootstrapData",
                Some("bs-good"),
                &missing_image,
                None,
            ),
            &["BootImageUnavailable", "BootImageInvalid"],
            "no-such-image.iso",
        ),
        (
            "server-06",
            provision(
                "kairos",
                "BootstrapData",
                Some("bs-good"),
                &image_url,
                Some(wrong_checksum),
            ),
            &["BootImageInvalid", "BootImageUnavailable"],
            "sha256 mismatch",
        ),
        (
            "server-07",
            provision(
                "kairos",
                "BootstrapData",
                Some("bs-unknown-format"),
                &image_url,
                None,
            ),
            &["BootstrapDataInvalid"],
            "unknown bootstrap data format \"xml\"",
        ),
    ];
    // Hosts must be Available before they can be provisioned; then claim them all at once.
    for i in 0..8 {
        let h = format!("server-{i:02}");
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(120),
            Some(&manager),
            || async {
                (host_get(&client, &h).await?.status?.state == Some(HostState::Available))
                    .then_some(())
            },
        )
        .await;
    }
    hosts_api
        .patch(
            "server-00",
            &Default::default(),
            &kube::api::Patch::Merge(provision(
                "kairos",
                "BootstrapData",
                Some("bs-good"),
                &image_url,
                None,
            )),
        )
        .await
        .unwrap();
    for (h, patch, _, _) in &machine_cases {
        hosts_api
            .patch(
                h,
                &Default::default(),
                &kube::api::Patch::Merge(patch.clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("{h}: {e}"));
    }
    for (h, _, reasons, says) in &machine_cases {
        let c = wait_condition(
            &client,
            &manager,
            &Expect {
                host: h,
                reasons,
                says,
            },
        )
        .await;
        println!("{h}: {c}");
    }
    // A Secret without `value`, a non-UTF-8 `format`, a cloud-config that parses but cannot be
    // written back: clear refusals, one after the other on the same host.
    for (secret, says) in [
        ("bs-no-value", "has no key \"value\""),
        ("bs-binary-format", "unknown bootstrap data format"),
        ("bs-complex-key", "cannot be written back as YAML"),
    ] {
        hosts_api
            .patch(
                "server-07",
                &Default::default(),
                &kube::api::Patch::Merge(provision(
                    "kairos",
                    "BootstrapData",
                    Some(secret),
                    &image_url,
                    None,
                )),
            )
            .await
            .unwrap();
        let c = wait_condition(
            &client,
            &manager,
            &Expect {
                host: "server-07",
                reasons: &["BootstrapDataInvalid", "OSConfigurationInvalid"],
                says,
            },
        )
        .await;
        println!("server-07 with {secret}: {c}");
    }
    // The good host provisions among all of this.
    eventually(
        "server-00 Provisioned",
        Duration::from_secs(180),
        Some(&manager),
        || async {
            (host_get(&client, "server-00").await?.status?.state == Some(HostState::Provisioned))
                .then_some(())
        },
    )
    .await;
    eventually(
        "no-scheme Available",
        Duration::from_secs(60),
        Some(&manager),
        || async {
            (host_get(&client, "no-scheme").await?.status?.state == Some(HostState::Available))
                .then_some(())
        },
    )
    .await;

    assert_manager_healthy(&mut manager);
    let rss = rss_kib(manager.pid(), "VmRSS:");
    let hwm = rss_kib(manager.pid(), "VmHWM:");
    println!("BENCH resilience_input_manager_rss_before {rss_before} KiB");
    println!("BENCH resilience_input_manager_rss_after {rss} KiB");
    println!("BENCH resilience_input_manager_rss_peak {hwm} KiB");
    // A 1 MiB password (and its Secret watched in the cache) and a BMC's endless body must not
    // balloon the manager.
    assert!(hwm > 0, "read the manager's memory");
    // The endless BMC alone would take the manager past this without the body cap.
    assert!(hwm < 256 * 1024, "manager peak RSS {hwm} KiB");
    let log = manager.log_text();
    assert!(
        !log.contains(&s0.password),
        "a BMC password reached the log"
    );
    assert!(
        !log.contains("pppppppppppppppp"),
        "the huge password reached the log"
    );
}

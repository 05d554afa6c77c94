//! Secrets stay secret through the whole flow: a host enrolled with the lab's known BMC password,
//! a Machine whose bootstrap data carries a kubeadm token and a marker, provisioned and then
//! released, with the manager logging at debug (trace for our crates). Neither the password, the
//! token nor the marker (nor their base64 forms), nor the artifact server's URL token for the
//! machine's config, appears in the manager's log, any Event of the namespace (core/v1 and
//! events.k8s.io/v1), the status or metadata of any object, or the metrics page.
//! The bootstrap data does reach the host's config volume (so the secrets really went through).
//! The BMC lab's own log is not ours to police.

mod support;

use std::time::Duration;

use beskar7_api::{Beskar7Machine, HostState, PhysicalHost};
use beskar7_redfish as redfish;
use beskar7_test::{BmcLab, ControlPlane};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use support::*;

const NS: &str = "default";
const INFRA: &str = "infrastructure.cluster.x-k8s.io";
const TOKEN: &str = "abcdef.0123456789abcdef";
const MARKER: &str = "beskar7-secret-marker-7f3e91";

/// Waits for `f`, printing the manager log's tail on timeout.
async fn wait<T, F, Fut>(what: &str, secs: u64, m: &Manager, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let log = m.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "timed out waiting for {what}\nmanager log:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every form of a secret that must not show: the text, and base64 of it (an Authorization
/// header, a Secret's `data`) — the latter without padding and from each of the three alignments,
/// so it is found inside a longer base64 string too.
fn forms(secret: &str) -> Vec<String> {
    let mut v = vec![secret.to_string()];
    for skip in 0..3 {
        let shifted: Vec<u8> = std::iter::repeat_n(b'x', skip)
            .chain(secret.bytes())
            .collect();
        let enc = b64(&shifted);
        // Drop the characters that depend on the prefix or on what follows.
        let start = if skip == 0 { 0 } else { 4 };
        let end = enc.len().saturating_sub(4);
        if end > start + 8 {
            v.push(enc[start..end].to_string());
        }
    }
    v
}

fn find_leaks(place: &str, text: &str, secrets: &[(&str, Vec<String>)], leaks: &mut Vec<String>) {
    for (name, forms) in secrets {
        for f in forms {
            if let Some(i) = text.find(f.as_str()) {
                let from = text[..i]
                    .char_indices()
                    .rev()
                    .nth(120)
                    .map_or(0, |(j, _)| j);
                let context: String = text[from..].chars().take(300).collect();
                leaks.push(format!("{name} ({f}) in {place}: ...{context}..."));
            }
        }
    }
}

fn api(client: &kube::Client, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), NS, &ar)
}

/// Status of every object the flow touches, Events of both APIs, as text per place.
async fn cluster_texts(client: &kube::Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (group, version, kind) in [
        (INFRA, "v1alpha1", "PhysicalHost"),
        (INFRA, "v1alpha1", "Beskar7Machine"),
        (INFRA, "v1alpha1", "Beskar7Cluster"),
        ("cluster.x-k8s.io", "v1beta2", "Machine"),
        ("cluster.x-k8s.io", "v1beta2", "Cluster"),
    ] {
        for o in api(client, group, version, kind)
            .list(&Default::default())
            .await
            .unwrap()
            .items
        {
            let name = o.metadata.name.clone().unwrap_or_default();
            out.push((
                format!("{kind} {name} status"),
                o.data["status"].to_string(),
            ));
            // Annotations and labels are ours to write too.
            out.push((
                format!("{kind} {name} metadata"),
                serde_json::to_string(&o.metadata).unwrap(),
            ));
        }
    }
    for (group, version, kind) in [("", "v1", "Event"), ("events.k8s.io", "v1", "Event")] {
        let events = api(client, group, version, kind)
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        for e in events {
            out.push((
                format!(
                    "{group}/{version} Event {}",
                    e.metadata.name.as_deref().unwrap_or("")
                ),
                serde_json::to_string(&e).unwrap(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_token_and_bootstrap_data_never_leak() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::builder()
        .with_capi()
        .start()
        .await
        .expect("control plane with CAPI");
    let lab = BmcLab::start(1).await.expect("BMC lab");
    let client = cp.client();
    let work = tempfile::tempdir().unwrap();
    let iso = build_test_iso(work.path(), "/boot/grub/grub.cfg").unwrap();
    let image_url = lab.add_image("kairos.iso", &iso).unwrap();
    let sys = lab.systems[0].clone();
    assert!(sys.password.len() >= 12, "a distinctive password");

    let manager = Manager::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_beskar7")),
        cp.kubeconfig_path(),
        &[],
        &[(
            "RUST_LOG",
            "debug,beskar7=trace,beskar7_controllers=trace,beskar7_redfish=trace,beskar7_boot=trace",
        )],
    )
    .expect("start beskar7 manager");
    let hosts = enroll_lab(&client, NS, &lab, &[("role", "secret-test")]).await;
    let host = hosts[0].clone();
    let hosts_api: Api<PhysicalHost> = Api::namespaced(client.clone(), NS);
    wait("host Available", 120, &manager, || async {
        (hosts_api.get(&host).await.ok()?.status?.state == Some(HostState::Available)).then_some(())
    })
    .await;

    let bootstrap = format!(
        "#cloud-config\nruncmd:\n  - kubeadm join 10.0.0.100:6443 --token {TOKEN} --discovery-token-unsafe-skip-ca-verification\n  - echo {MARKER}\n"
    );
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "s1-bootstrap"},
                "stringData": {"value": bootstrap, "format": "cloud-config"},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    create_cluster(&client, NS, "sec").await;
    let spec = serde_json::json!({
        "osFamily": "kairos", "imageURL": image_url, "provisioningMode": "BootstrapData",
        "hostSelector": {"matchLabels": {"role": "secret-test"}},
    });
    create_machine(&client, NS, "sec", "s1", spec, "s1-bootstrap").await;

    let machines: Api<Beskar7Machine> = Api::namespaced(client.clone(), NS);
    wait("s1 provisioned", 240, &manager, || async {
        machines
            .get("s1")
            .await
            .ok()?
            .status?
            .initialization?
            .provisioned
            .filter(|p| *p)
    })
    .await;
    assert_eq!(
        hosts_api.get(&host).await.unwrap().status.unwrap().state,
        Some(HostState::Provisioned)
    );

    // The secrets did go through: the config volume the BMC was given carries the bootstrap data.
    let mut config = redfish::ClientConfig::new(
        sys.address.clone(),
        redfish::Credentials::new(sys.username.clone(), sys.password.clone()),
    );
    config.tls = redfish::Tls::CaBundle(lab.ca_pem.as_bytes().to_vec());
    let bmc = redfish::Client::new(config).unwrap();
    let d = bmc.discover(Some(&sys.system_id)).await.unwrap();
    let mut volume_url = None;
    for slot in &d.slots {
        let s = bmc.read_slot(&slot.path).await.unwrap();
        if let Some(image) = s.media.current_image()
            && (image.ends_with("/config.iso") || image.ends_with("/config.img"))
        {
            volume_url = Some(image.to_string());
        }
    }
    let volume_url = volume_url.expect("a config volume inserted");
    // The artifact token in the URL is a capability: whoever has it reads the bootstrap data.
    let artifact_token = volume_url
        .rsplit('/')
        .nth(1)
        .expect("<base>/<token>/config.*")
        .to_string();
    assert!(artifact_token.len() >= 32, "a token: {volume_url}");
    let volume = reqwest::get(&volume_url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let vol_path = work.path().join("config-volume");
    std::fs::write(&vol_path, &volume).unwrap();
    let user_data = if volume_url.ends_with(".iso") {
        iso_extract(&vol_path, "/user-data", &work.path().join("ud")).unwrap()
    } else {
        fat_extract(&vol_path, "user-data").unwrap()
    };
    let user_data = String::from_utf8_lossy(&user_data);
    assert!(
        user_data.contains(TOKEN) && user_data.contains(MARKER),
        "the bootstrap data reached the host"
    );

    let secrets = [
        ("BMC password", forms(&sys.password)),
        (
            "BMC basic credentials",
            forms(&format!("{}:{}", sys.username, sys.password)),
        ),
        ("bootstrap token", forms(TOKEN)),
        ("bootstrap token secret", forms("0123456789abcdef")),
        ("bootstrap marker", forms(MARKER)),
        ("artifact URL token", vec![artifact_token.clone()]),
    ];
    let mut leaks = Vec::new();
    let mut places = 0;
    // While provisioned (the CAPI Machine still exists) ...
    for (place, text) in cluster_texts(&client).await {
        find_leaks(&place, &text, &secrets, &mut leaks);
        places += 1;
    }
    let metrics_url = format!("{}/metrics", manager.metrics);
    let metrics = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("# TYPE"), "a metrics page: {metrics:.200}");
    find_leaks("metrics page", &metrics, &secrets, &mut leaks);

    // ... and after the Machine is deleted and the host released.
    api(&client, "cluster.x-k8s.io", "v1beta2", "Machine")
        .delete("s1", &DeleteParams::default())
        .await
        .unwrap();
    wait("host Available again", 180, &manager, || async {
        (hosts_api.get(&host).await.ok()?.status?.state == Some(HostState::Available)).then_some(())
    })
    .await;
    wait("Beskar7Machine s1 gone", 90, &manager, || async {
        machines.get_opt("s1").await.ok()?.is_none().then_some(())
    })
    .await;
    for (place, text) in cluster_texts(&client).await {
        find_leaks(&place, &text, &secrets, &mut leaks);
        places += 1;
    }
    let metrics = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    find_leaks("metrics page", &metrics, &secrets, &mut leaks);

    let log = manager.log_text();
    // The log really was verbose, and saw the flow.
    assert!(log.contains("DEBUG"), "the manager logged at debug");
    assert!(
        log.lines().count() > 100,
        "a verbose log: {} lines",
        log.lines().count()
    );
    find_leaks("manager log", &log, &secrets, &mut leaks);
    assert!(
        !log.contains("panicked"),
        "the manager panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "checked {places} object statuses/metadata and events, 2 metrics pages, {} log lines",
        log.lines().count()
    );
    assert!(
        places >= 6,
        "statuses and events were read: {places} places"
    );
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

#[test]
fn base64_forms_find_secrets_inside_longer_base64() {
    // The finder itself must be able to fail: a password inside an Authorization header is found.
    let header = format!("Basic {}", b64(b"admin:lab-0123456789abcdef"));
    let mut leaks = Vec::new();
    find_leaks(
        "header",
        &header,
        &[("pw", forms("lab-0123456789abcdef"))],
        &mut leaks,
    );
    assert!(!leaks.is_empty(), "{header}");
    assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64(b"fo"), "Zm8=");
}

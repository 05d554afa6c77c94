//! Bad input on PhysicalHosts gives a clear condition on that host and disturbs nothing else:
//! a missing credentials Secret, a wrong password, an unreachable BMC, and a BMC with no
//! virtual media (a real capture, the DMTF rack server, with its VirtualMedia removed).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use beskar7_api::{HostState, PhysicalHost};
use beskar7_test::{BmcLab, ControlPlane, LabSystem};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::*;

const NS: &str = "default";

/// The DMTF rackmount capture served read-only without any VirtualMedia resource or link.
async fn serve_bmc_without_virtual_media() -> SocketAddr {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/redfish-mockups/dmtf-public-rackmount1");
    let app = Router::new().fallback(move |method: Method, uri: Uri| {
        let root = root.clone();
        async move {
            let path = uri.path().trim_end_matches('/');
            if method != Method::GET {
                return (StatusCode::METHOD_NOT_ALLOWED, String::new()).into_response();
            }
            let Some(rest) = path.strip_prefix("/redfish/v1") else {
                return StatusCode::NOT_FOUND.into_response();
            };
            if rest.contains("VirtualMedia") || rest.contains("..") {
                return StatusCode::NOT_FOUND.into_response();
            }
            let file = root.join(rest.trim_start_matches('/')).join("index.json");
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    strip_virtual_media(&mut v);
                    ([("content-type", "application/json")], v.to_string()).into_response()
                }
                Err(_) => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn strip_virtual_media(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("VirtualMedia");
            m.values_mut().for_each(strip_virtual_media);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_virtual_media),
        _ => {}
    }
}

async fn host(client: &kube::Client, name: &str) -> PhysicalHost {
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

/// Waits until `name` has condition `type_` False with `reason`; returns the host.
async fn condition(
    client: &kube::Client,
    manager: &Manager,
    name: &str,
    type_: &str,
    reason: &str,
) -> PhysicalHost {
    eventually(
        &format!("{name}: {type_}=False/{reason}"),
        Duration::from_secs(120),
        Some(manager),
        || async {
            let h = host(client, name).await;
            let ok = h
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "False" && c.reason == reason);
            ok.then_some(h)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bmc_input_is_a_clear_condition_on_that_host_only() {
    beskar7_test::install_crypto_provider();
    let cp = ControlPlane::start().await.expect("control plane");
    let lab = BmcLab::start(2).await.expect("BMC lab");
    let client = cp.client();
    let manager = start_manager(&cp, &[]);
    let hosts = enroll_lab(&client, NS, &lab, &[]).await;

    // 1. Credentials Secret missing.
    let ghost = LabSystem {
        ..lab.systems[0].clone()
    };
    let h: PhysicalHost = serde_json::from_value(serde_json::json!({
        "apiVersion": beskar7_api::API_VERSION, "kind": "PhysicalHost",
        "metadata": {"name": "no-secret"},
        "spec": {"redfishConnection": {"address": ghost.address, "credentialsSecretRef": "does-not-exist", "systemId": ghost.system_id, "caBundleSecretRef": beskar7_test::fixtures::LAB_CA_SECRET}},
    }))
    .unwrap();
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &h)
        .await
        .unwrap();

    // 2. Wrong password.
    let mut wrong = lab.systems[1].clone();
    wrong.password = "not-the-password".into();
    enroll(
        &client,
        NS,
        "wrong-password",
        &wrong,
        Some(beskar7_test::fixtures::LAB_CA_SECRET),
        &[],
    )
    .await
    .unwrap();

    // 3. Unreachable BMC (nothing listens there).
    let mut unreachable = lab.systems[0].clone();
    unreachable.address = format!("https://127.0.0.1:{}", free_port());
    enroll(&client, NS, "unreachable", &unreachable, None, &[])
        .await
        .unwrap();

    // 4. A BMC without virtual media.
    let addr = serve_bmc_without_virtual_media().await;
    let mut no_vm = lab.systems[0].clone();
    no_vm.address = format!("http://{addr}");
    no_vm.system_id = "437XR1138R2".into();
    enroll(&client, NS, "no-virtual-media", &no_vm, None, &[])
        .await
        .unwrap();

    let missing = condition(
        &client,
        &manager,
        "no-secret",
        "BMCConnected",
        "CredentialsSecretInvalid",
    )
    .await;
    let st = missing.status.unwrap();
    assert_eq!(st.state, Some(HostState::Error));
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("default/does-not-exist"),
        "{:?}",
        st.last_error
    );

    let auth = condition(
        &client,
        &manager,
        "wrong-password",
        "BMCConnected",
        "BMCAuthenticationFailed",
    )
    .await;
    let message = &auth.status.as_ref().unwrap().last_error;
    assert!(
        !message
            .as_deref()
            .unwrap_or("")
            .contains("not-the-password"),
        "the password leaked into status: {message:?}"
    );

    condition(
        &client,
        &manager,
        "unreachable",
        "BMCConnected",
        "BMCUnreachable",
    )
    .await;

    let no_vm_host = condition(
        &client,
        &manager,
        "no-virtual-media",
        "VirtualMediaReady",
        "NoVirtualMediaCD",
    )
    .await;
    assert_eq!(
        no_vm_host.status.as_ref().unwrap().state,
        Some(HostState::Error)
    );
    assert!(
        no_vm_host
            .status
            .as_ref()
            .unwrap()
            .hardware_details
            .is_some(),
        "inventory is still read from a BMC without virtual media"
    );

    // The good hosts are untouched by their neighbours' trouble.
    for h in &hosts {
        eventually(
            &format!("{h} Available"),
            Duration::from_secs(60),
            Some(&manager),
            || async {
                (host(&client, h).await.status?.state == Some(HostState::Available)).then_some(())
            },
        )
        .await;
    }

    // Fixing the input heals the host: create the missing Secret.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "does-not-exist"},
        "stringData": {"username": ghost.username, "password": ghost.password},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // The Secret watch wakes the host; nudge with a label too in case the watch is slow to start.
    Api::<PhysicalHost>::namespaced(client.clone(), NS)
        .patch(
            "no-secret",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"fixed": "yes"}}})),
        )
        .await
        .unwrap();
    eventually(
        "no-secret Available once its Secret exists",
        Duration::from_secs(120),
        Some(&manager),
        || async {
            (host(&client, "no-secret").await.status?.state == Some(HostState::Available))
                .then_some(())
        },
    )
    .await;

    // No credential reached the manager's log.
    let log = manager.log_text();
    for s in &lab.systems {
        assert!(!log.contains(&s.password), "a BMC password reached the log");
    }
    assert!(!log.contains("not-the-password"));
}

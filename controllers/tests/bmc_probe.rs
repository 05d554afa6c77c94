//! `beskar7 bmc probe` against the vendor mockups, run as the built binary, checked field by field.

#[path = "../../redfish/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;

use common::{Reply, Server};
use serde_json::{Value, json};

const PASSWORD: &str = "hunter2-secret";

fn password_file() -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "beskar7-probe-pw-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
    p
}

async fn probe(srv: &Server, extra: &[&str]) -> Output {
    let pw = password_file();
    let mut args = vec![
        "bmc".to_string(),
        "probe".to_string(),
        srv.url(),
        "--username".into(),
        "root".into(),
        "--password-file".into(),
        pw.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_beskar7"))
        .args(&args)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(pw);
    out
}

async fn probe_json(mockup: &str) -> (Value, Server) {
    let srv = Server::mockup(mockup, None).await;
    let out = probe(&srv, &["--output", "json"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mockup}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{mockup}: not one JSON object: {e}\n{stdout}"));
    assert!(!stdout.contains(PASSWORD));
    (v, srv)
}

fn slot(path: &str, types: &[&str], inserted: bool, method: &str) -> Value {
    json!({"path": path, "mediaTypes": types, "inserted": inserted, "insertMethod": method})
}

/// The keys the issue requires, with their values.
fn check_common(v: &Value, want: &Value) {
    for key in [
        "manufacturer",
        "model",
        "serialNumber",
        "uuid",
        "systemPath",
        "powerState",
        "virtualMedia",
        "bootMedia",
        "configMedia",
        "bootOverride",
    ] {
        assert_eq!(v[key], want[key], "field {key}: got {}", v[key]);
    }
    assert!(v["problems"].is_array());
}

#[tokio::test]
async fn probe_hpe() {
    let (v, srv) = probe_json("hpe-ilo").await;
    let vm = "/redfish/v1/Managers/1/VirtualMedia";
    check_common(
        &v,
        &json!({
            "manufacturer": "HPE",
            "model": "ProLiant DL385 Gen10 Plus v2",
            "serialNumber": "MXQ302099S",
            "uuid": "34383350-3131-584D-5133-303230393953",
            "systemPath": "/redfish/v1/Systems/1",
            "powerState": "On",
            "virtualMedia": [
                slot(&format!("{vm}/1"), &["Floppy", "USBStick"], false, "action"),
                slot(&format!("{vm}/2"), &["CD", "DVD"], false, "action"),
            ],
            "bootMedia": {"path": format!("{vm}/2"), "insertMethod": "action"},
            "configMedia": {"path": format!("{vm}/1"), "insertMethod": "action", "imageFormat": "fat"},
            "bootOverride": {"target": "Cd", "mode": "UEFI", "patchPath": "/redfish/v1/Systems/1"},
        }),
    );
    assert_eq!(v["problems"], json!([]));
    assert_eq!(v["authentication"], "session");
    // Read-only: only the session was created and deleted.
    let writes: Vec<String> = srv
        .writes()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        writes,
        vec![
            "POST /redfish/v1/SessionService/Sessions".to_string(),
            "DELETE /redfish/v1/SessionService/Sessions/s1".to_string(),
        ]
    );
}

#[tokio::test]
async fn probe_supermicro() {
    let (v, srv) = probe_json("supermicro").await;
    let vm = "/redfish/v1/Managers/1/VirtualMedia";
    let all = ["CD", "DVD", "Floppy", "USBStick"];
    check_common(
        &v,
        &json!({
            "manufacturer": "Supermicro",
            "model": "SYS-821GE-TNHR",
            "serialNumber": "S889914X3710910",
            "uuid": "00000000-0000-0000-0000-7CC25550A8FF",
            "systemPath": "/redfish/v1/Systems/1",
            "powerState": "On",
            "virtualMedia": [
                slot(&format!("{vm}/VirtualMedia1"), &all, false, "action"),
                slot(&format!("{vm}/VirtualMedia2"), &all, false, "action"),
                slot(&format!("{vm}/VirtualMedia3"), &all, false, "action"),
            ],
            "bootMedia": {"path": format!("{vm}/VirtualMedia1"), "insertMethod": "action"},
            "configMedia": {"path": format!("{vm}/VirtualMedia2"), "insertMethod": "action", "imageFormat": "iso"},
            "bootOverride": {"target": "UsbCd", "mode": "UEFI", "patchPath": "/redfish/v1/Systems/1"},
        }),
    );
    assert_eq!(v["problems"], json!([]));
    assert!(
        v["resetTypes"]
            .as_array()
            .unwrap()
            .contains(&json!("ForceRestart"))
    );
    assert!(
        srv.writes()
            .iter()
            .all(|r| r.path.contains("SessionService"))
    );
}

#[tokio::test]
async fn probe_dmtf_rackmount() {
    let (v, _srv) = probe_json("dmtf-public-rackmount1").await;
    let vm = "/redfish/v1/Systems/437XR1138R2/VirtualMedia";
    check_common(
        &v,
        &json!({
            "manufacturer": "Contoso",
            "model": "3500",
            "serialNumber": "437XR1138R2",
            "uuid": "38947555-7742-3448-3784-823347823834",
            "systemPath": "/redfish/v1/Systems/437XR1138R2",
            "powerState": "On",
            "virtualMedia": [
                slot(&format!("{vm}/Floppy1"), &["Floppy", "USBStick"], true, "patch"),
                slot(&format!("{vm}/CD1"), &["CD", "DVD"], true, "patch"),
                slot(&format!("{vm}/CD2"), &["CD", "DVD"], true, "patch"),
            ],
            "bootMedia": {"path": format!("{vm}/CD1"), "insertMethod": "patch"},
            "configMedia": {"path": format!("{vm}/CD2"), "insertMethod": "patch", "imageFormat": "iso"},
            "bootOverride": {"target": "Cd", "mode": "UEFI", "patchPath": "/redfish/v1/Systems/437XR1138R2"},
        }),
    );
    // All three slots hold media: each is reported.
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems
            .iter()
            .all(|p| p.as_str().unwrap().contains("inserted"))
    );
}

#[tokio::test]
async fn probe_dmtf_tower() {
    let (v, _srv) = probe_json("dmtf-public-tower").await;
    let vm = "/redfish/v1/Managers/BMC/VirtualMedia";
    check_common(
        &v,
        &json!({
            "manufacturer": "Contoso",
            "model": "3500",
            "serialNumber": "437XR1238R2",
            "uuid": "38947555-7742-3448-3784-823347823834",
            "systemPath": "/redfish/v1/Systems/437XR1238R2",
            "powerState": "On",
            "virtualMedia": [
                slot(&format!("{vm}/Floppy1"), &["Floppy", "USBStick"], true, "patch"),
                slot(&format!("{vm}/CD1"), &["CD", "DVD"], true, "patch"),
            ],
            "bootMedia": {"path": format!("{vm}/CD1"), "insertMethod": "patch"},
            "configMedia": {"path": format!("{vm}/Floppy1"), "insertMethod": "patch", "imageFormat": "fat"},
            "bootOverride": {"target": "Cd", "mode": "UEFI", "patchPath": "/redfish/v1/Systems/437XR1238R2"},
        }),
    );
}

#[tokio::test]
async fn probe_text_output_is_a_table() {
    let srv = Server::mockup("hpe-ilo", None).await;
    let out = probe(&srv, &[]).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("System         /redfish/v1/Systems/1"),
        "{text}"
    );
    assert!(
        text.contains("Boot media     /redfish/v1/Managers/1/VirtualMedia/2 (action)"),
        "{text}"
    );
    assert!(
        text.contains("Config media   /redfish/v1/Managers/1/VirtualMedia/1 (action, fat)"),
        "{text}"
    );
    assert!(
        text.contains("PATH") && text.contains("MEDIA TYPES"),
        "{text}"
    );
}

#[tokio::test]
async fn probe_fails_with_one_line_reasons() {
    // Wrong password.
    let srv = Server::mockup(
        "hpe-ilo",
        Some(Arc::new(|r, _s: &Server| {
            (r.method == "POST").then(|| Reply::json(401, &json!({"error": {"code": "Base.1.0.GeneralError", "message": "bad credentials"}})))
        })),
    )
    .await;
    let out = probe(&srv, &["--output", "json"]).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no report on failure");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: BMCAuthenticationFailed:"), "{err}");
    assert!(!err.contains(PASSWORD));

    // Nothing listening.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut dead = srv.clone();
    dead.addr = format!("127.0.0.1:{port}").parse().unwrap();
    let out = probe(&dead, &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: BMCUnreachable:"), "{err}");

    // Not Redfish: garbage at the service root.
    let srv = Server::mockup(
        "hpe-ilo",
        Some(Arc::new(|r, _s: &Server| {
            (r.method == "GET")
                .then(|| Reply::new(200, "<html>hello</html>").header("content-type", "text/html"))
        })),
    )
    .await;
    let out = probe(&srv, &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: RedfishProtocolError:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// The binary against the live emulator over verified TLS.
#[tokio::test]
async fn probe_the_bmc_lab_over_verified_tls() {
    let lab = beskar7_test::BmcLab::start(2).await.expect("BMC lab");
    let dir = std::env::temp_dir().join(format!("beskar7-probe-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("password");
    std::fs::write(&pw, format!("{}\n", lab.password)).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &lab.ca_pem).unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(
        &other_ca,
        beskar7_test::certs::Ca::new("other").unwrap().cert_pem(),
    )
    .unwrap();
    let run = |extra: Vec<String>| {
        let mut args: Vec<String> = vec![
            "bmc".into(),
            "probe".into(),
            lab.address.clone(),
            "--username".into(),
            lab.username.clone(),
            "--password-file".into(),
            pw.display().to_string(),
        ];
        args.extend(extra);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_beskar7"))
            .args(args)
            .output()
    };
    let sys = &lab.systems[1];
    let out = run(vec![
        "--ca-file".into(),
        ca.display().to_string(),
        "--system-id".into(),
        sys.system_id.clone(),
        "--output".into(),
        "json".into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = format!("/redfish/v1/Systems/{}", sys.system_id);
    assert_eq!(v["manufacturer"], "Sushy Emulator");
    assert_eq!(v["uuid"], sys.system_id.as_str());
    assert_eq!(v["systemPath"], path.as_str());
    assert_eq!(v["powerState"], "Off");
    assert_eq!(
        v["bootMedia"],
        json!({"path": format!("{path}/VirtualMedia/Cd"), "insertMethod": "action"})
    );
    assert_eq!(
        v["configMedia"],
        json!({"path": format!("{path}/VirtualMedia/Floppy"), "insertMethod": "action", "imageFormat": "fat"})
    );
    assert_eq!(
        v["bootOverride"],
        json!({"target": "Cd", "mode": "UEFI", "patchPath": path})
    );
    assert_eq!(v["authentication"], "basic");
    assert_eq!(v["problems"], json!([]));

    // Two systems and no --system-id.
    let out = run(vec!["--ca-file".into(), ca.display().to_string()])
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: InvalidBMCConfiguration:"), "{err}");
    assert!(err.contains(&lab.systems[0].system_id), "{err}");

    // Wrong CA, and system roots: TLS verification fails.
    for extra in [
        vec!["--ca-file".to_string(), other_ca.display().to_string()],
        vec![],
    ] {
        let out = run(extra).await.unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("error: BMCTLSVerificationFailed:"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }

    // --insecure skips verification.
    let out = run(vec![
        "--insecure".into(),
        "--system-id".into(),
        sys.system_id.clone(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("Sushy Emulator")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

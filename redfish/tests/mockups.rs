//! Discovery and request shapes against real vendor captures (../shared/redfish-mockups).

mod common;

use std::sync::Arc;

use beskar7_redfish::{BootMode, ImageFormat, InsertMethod, Outcome, PowerAction, Vendor};
use common::{Reply, Server, paths};
use serde_json::{Value, json};

const ISO: &str = "http://10.0.0.5:8080/boot/node-1.iso";

/// Answer GET of `slot` with the mockup's slot marked as inserted.
fn inserted_slot(slot: &'static str, image: &'static str) -> common::Hook {
    Arc::new(move |r, s: &Server| {
        if r.method == "GET" && r.path == slot {
            let mut v = s.resource(slot).unwrap();
            v["Inserted"] = json!(true);
            v["Image"] = json!(image);
            return Some(Reply::json(200, &v));
        }
        None
    })
}

#[tokio::test]
async fn hpe_discovery_slots_and_session() {
    let srv = Server::mockup("hpe-ilo", None).await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    assert_eq!(d.system_path, "/redfish/v1/Systems/1");
    assert_eq!(d.vendor, Vendor::Hpe);
    assert_eq!(
        d.virtual_media_collections,
        vec!["/redfish/v1/Managers/1/VirtualMedia"]
    );
    let boot = d.boot_slot().unwrap();
    assert_eq!(boot.path, "/redfish/v1/Managers/1/VirtualMedia/2");
    assert_eq!(boot.insert_method(), InsertMethod::Action);
    let (cfg, fmt) = d.config_slot().unwrap();
    assert_eq!(cfg.path, "/redfish/v1/Managers/1/VirtualMedia/1");
    assert_eq!(fmt, ImageFormat::Fat);
    assert!(d.reset_types.contains(&"ForceRestart".to_string()));
    // A session was created and used for everything after the service root.
    assert!(c.uses_session().await);
    let reqs = srv.requests();
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].path, "/redfish/v1/SessionService/Sessions");
    assert_eq!(
        reqs[1].json(),
        json!({"UserName": "root", "Password": "hunter2-secret"})
    );
    for r in &reqs[2..] {
        assert_eq!(
            r.header("x-auth-token").as_deref(),
            Some("tok-1"),
            "{}",
            r.path
        );
        assert!(r.header("authorization").is_none());
    }
    // Discovery is cached: no new request.
    let n = srv.requests().len();
    c.discover(None).await.unwrap();
    assert_eq!(srv.requests().len(), n);

    let inv = c.inventory(&d).await.unwrap();
    assert_eq!(inv.manufacturer.as_deref(), Some("HPE"));
    assert_eq!(inv.serial_number.as_deref(), Some("MXQ302099S"));
    assert_eq!(
        inv.uuid.as_deref(),
        Some("34383350-3131-584D-5133-303230393953")
    );
    assert_eq!(inv.cpu_count, Some(2));
    assert_eq!(inv.memory_gib, Some(1024.0));
    assert!(!inv.nic_macs.is_empty(), "{inv:?}");
    assert!(
        inv.nic_macs
            .iter()
            .all(|m| m.len() == 17 && m == &m.to_lowercase()),
        "{inv:?}"
    );

    c.logout().await.unwrap();
    let last = srv.requests().pop().unwrap();
    assert_eq!(last.method, "DELETE");
    assert_eq!(last.path, "/redfish/v1/SessionService/Sessions/s1");
    assert_eq!(last.header("x-auth-token").as_deref(), Some("tok-1"));
}

#[tokio::test]
async fn hpe_insert_boot_override_and_eject_shapes() {
    let srv = Server::mockup(
        "hpe-ilo",
        Some(Arc::new(|r, s: &Server| {
            // Slot 1 holds a stale image; HPE refuses an eject without a JSON body.
            if r.method == "GET" && r.path == "/redfish/v1/Managers/1/VirtualMedia/1" {
                let mut v = s.resource(&r.path).unwrap();
                v["Inserted"] = json!(true);
                v["Image"] = json!("http://old/stale.img");
                return Some(Reply::json(200, &v));
            }
            if r.method == "POST"
                && r.path.ends_with("/1/Actions/VirtualMedia.EjectMedia")
                && r.body.is_empty()
            {
                return Some(Reply::json(
                    415,
                    &json!({"error": {"code": "Base.1.4.UnsupportedMediaType"}}),
                ));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    srv.clear();

    assert_eq!(
        c.insert_media("/redfish/v1/Managers/1/VirtualMedia/2", ISO)
            .await
            .unwrap(),
        Outcome::Changed
    );
    let w = srv.writes();
    assert_eq!(
        paths(&w),
        vec!["POST /redfish/v1/Managers/1/VirtualMedia/2/Actions/VirtualMedia.InsertMedia"]
    );
    assert_eq!(w[0].json(), json!({"Image": ISO}), "smallest body");
    assert_eq!(
        w[0].header("content-type").as_deref(),
        Some("application/json")
    );

    srv.clear();
    assert_eq!(
        c.eject_media("/redfish/v1/Managers/1/VirtualMedia/1")
            .await
            .unwrap(),
        Outcome::Changed
    );
    let w = srv.writes();
    assert_eq!(w.len(), 2, "{:?}", paths(&w));
    assert!(w[0].body.is_empty(), "first eject has an empty body");
    assert_eq!(w[1].json(), json!({}), "retry with {{}} after 415");

    srv.clear();
    assert_eq!(
        c.set_boot_once_cd(&d, Some(BootMode::Uefi)).await.unwrap(),
        Outcome::Changed
    );
    let w = srv.writes();
    assert_eq!(paths(&w), vec!["PATCH /redfish/v1/Systems/1"]);
    assert_eq!(
        w[0].json(),
        json!({"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
    );
    assert_eq!(w[0].header("if-match").as_deref(), Some("W/\"9B9F7D67\""));

    // Empty slot 2: eject is a no-op.
    srv.clear();
    assert_eq!(
        c.eject_media("/redfish/v1/Managers/1/VirtualMedia/2")
            .await
            .unwrap(),
        Outcome::Unchanged
    );
    assert!(srv.writes().is_empty());
}

#[tokio::test]
async fn supermicro_usbcd_and_patch_eject() {
    let slot1 = "/redfish/v1/Managers/1/VirtualMedia/VirtualMedia1";
    let srv = Server::mockup("supermicro", Some(inserted_slot(slot1, "http://old/x.iso"))).await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    assert_eq!(d.vendor, Vendor::Supermicro);
    assert_eq!(d.boot_slot().unwrap().path, slot1);
    let (cfg, fmt) = d.config_slot().unwrap();
    assert_eq!(
        cfg.path,
        "/redfish/v1/Managers/1/VirtualMedia/VirtualMedia2"
    );
    assert_eq!(fmt, ImageFormat::Iso);
    // Reset types came from the ActionInfo resource.
    assert!(
        d.reset_types.contains(&"ForceOn".to_string()),
        "{:?}",
        d.reset_types
    );
    let plan = d.boot_override_plan(Some(BootMode::Uefi)).unwrap();
    assert_eq!(plan.target, "UsbCd");

    srv.clear();
    c.set_boot_once_cd(&d, Some(BootMode::Uefi)).await.unwrap();
    let w = srv.writes();
    assert_eq!(paths(&w), vec!["PATCH /redfish/v1/Systems/1"]);
    assert_eq!(w[0].json()["Boot"]["BootSourceOverrideTarget"], "UsbCd");
    assert_eq!(w[0].json()["Boot"]["BootSourceOverrideEnabled"], "Once");
    assert_eq!(
        w[0].header("if-match").as_deref(),
        Some("\"a0a7128477b3552049bdbf0d3286de78\"")
    );

    // No EjectMedia action: PATCH Image/Inserted with the slot's ETag.
    srv.clear();
    assert_eq!(c.eject_media(slot1).await.unwrap(), Outcome::Changed);
    let w = srv.writes();
    assert_eq!(paths(&w), vec![format!("PATCH {slot1}")]);
    assert_eq!(w[0].json(), json!({"Image": null, "Inserted": false}));
    assert_eq!(
        w[0].header("if-match").as_deref(),
        Some("\"b6ebedbe321f5be9472d5c9bdb6d6261\"")
    );
}

#[tokio::test]
async fn supermicro_insert_adds_transfer_protocol_only_when_asked() {
    let slot2 = "/redfish/v1/Managers/1/VirtualMedia/VirtualMedia2";
    let srv = Server::mockup(
        "supermicro",
        Some(Arc::new(|r, _s: &Server| {
            if r.method == "POST" && r.path.ends_with("VirtualMedia2/Actions/VirtualMedia.InsertMedia") {
                let body = r.json();
                if body.get("TransferProtocolType").is_none() {
                    return Some(Reply::json(400, &json!({"error": {"code": "Base.1.10.GeneralError", "@Message.ExtendedInfo": [
                        {"MessageId": "Base.1.10.ActionParameterMissing", "Message": "The action requires the parameter TransferProtocolType.",
                         "MessageArgs": ["InsertMedia", "TransferProtocolType"]}]}})));
                }
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    c.discover(None).await.unwrap();
    srv.clear();
    c.insert_media(slot2, ISO).await.unwrap();
    let w = srv.writes();
    assert_eq!(w.len(), 2, "{:?}", paths(&w));
    assert_eq!(w[0].json(), json!({"Image": ISO}));
    assert_eq!(
        w[1].json(),
        json!({"Image": ISO, "TransferProtocolType": "HTTP"})
    );
}

#[tokio::test]
async fn dmtf_rackmount_slots_under_system_patch_insert_and_reset() {
    let srv = Server::mockup("dmtf-public-rackmount1", None).await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    assert_eq!(d.system_path, "/redfish/v1/Systems/437XR1138R2");
    assert_eq!(
        d.virtual_media_collections,
        vec!["/redfish/v1/Systems/437XR1138R2/VirtualMedia"]
    );
    assert!(
        srv.requests()
            .iter()
            .all(|r| !r.path.starts_with("/redfish/v1/Managers")),
        "slots found under the system: managers not read"
    );
    let boot = d.boot_slot().unwrap();
    assert_eq!(
        boot.path,
        "/redfish/v1/Systems/437XR1138R2/VirtualMedia/CD1"
    );
    assert_eq!(boot.insert_method(), InsertMethod::Patch);
    let (cfg, fmt) = d.config_slot().unwrap();
    assert_eq!(cfg.path, "/redfish/v1/Systems/437XR1138R2/VirtualMedia/CD2");
    assert_eq!(fmt, ImageFormat::Iso);

    // CD1 holds another image: eject (PATCH) then insert (PATCH).
    srv.clear();
    c.insert_media(&boot.path, ISO).await.unwrap();
    let w = srv.writes();
    assert_eq!(
        paths(&w),
        vec![
            format!("PATCH {}", boot.path),
            format!("PATCH {}", boot.path)
        ]
    );
    assert_eq!(w[0].json(), json!({"Image": null, "Inserted": false}));
    assert_eq!(w[1].json(), json!({"Image": ISO, "Inserted": true}));

    // Same image already in: nothing to do.
    srv.clear();
    let same = "redfish.dmtf.org/freeImages/freeOS.1.1.iso";
    assert_eq!(
        c.insert_media(&boot.path, same).await.unwrap(),
        Outcome::Unchanged
    );
    assert!(srv.writes().is_empty());

    // Power is On: restart forces a restart; On is a no-op.
    srv.clear();
    assert_eq!(
        c.set_power(&d, PowerAction::On).await.unwrap(),
        Outcome::Unchanged
    );
    assert!(srv.writes().is_empty());
    c.set_power(&d, PowerAction::Restart).await.unwrap();
    let w = srv.writes();
    assert_eq!(
        paths(&w),
        vec!["POST /redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset"]
    );
    assert_eq!(w[0].json(), json!({"ResetType": "ForceRestart"}));
}

#[tokio::test]
async fn dmtf_tower_slots_under_manager() {
    let srv = Server::mockup("dmtf-public-tower", None).await;
    let c = srv.client();
    let d = c.discover(Some("437XR1238R2")).await.unwrap();
    assert_eq!(
        d.virtual_media_collections,
        vec!["/redfish/v1/Managers/BMC/VirtualMedia"]
    );
    assert_eq!(
        d.boot_slot().unwrap().path,
        "/redfish/v1/Managers/BMC/VirtualMedia/CD1"
    );
    let (cfg, fmt) = d.config_slot().unwrap();
    assert_eq!(cfg.path, "/redfish/v1/Managers/BMC/VirtualMedia/Floppy1");
    assert_eq!(fmt, ImageFormat::Fat);
    let plan = d.boot_override_plan(Some(BootMode::Uefi)).unwrap();
    assert_eq!(plan.target, "Cd");
    assert_eq!(plan.mode.as_deref(), Some("UEFI"));
    assert_eq!(plan.patch_path, "/redfish/v1/Systems/437XR1238R2");

    srv.clear();
    c.set_boot_once_cd(&d, Some(BootMode::Uefi)).await.unwrap();
    let w = srv.writes();
    assert_eq!(paths(&w), vec!["PATCH /redfish/v1/Systems/437XR1238R2"]);
    assert!(
        w[0].header("if-match").is_none(),
        "no ETag known: no If-Match"
    );

    // An unknown system id is NotFound.
    let c2 = srv.client();
    let e = c2.discover(Some("nope")).await.unwrap_err();
    assert!(matches!(e, beskar7_redfish::Error::NotFound(_)), "{e:?}");
}

#[tokio::test]
async fn probe_reports_never_leak_the_password() {
    for m in [
        "hpe-ilo",
        "supermicro",
        "dmtf-public-rackmount1",
        "dmtf-public-tower",
    ] {
        let srv = Server::mockup(m, None).await;
        let c = srv.client();
        let report = beskar7_redfish::ProbeReport::probe(&c, None).await.unwrap();
        let v: Value = serde_json::to_value(&report).unwrap();
        assert!(!v.to_string().contains("hunter2-secret"));
        assert!(!report.to_text().contains("hunter2-secret"));
        assert!(!format!("{c:?}").contains("hunter2-secret"));
        assert!(report.boot_media.is_some(), "{m}: {v}");
    }
}

/// The rackmount mockup's system has four EthernetInterfaces: two NICs and a VLAN with static
/// addresses, and `ToManager`, the Redfish Host Interface (the host's end of the BMC link).
/// Every IPv6 address in them is link-local.
#[tokio::test]
async fn dmtf_rackmount_nic_addresses_skip_host_interface_and_link_local() {
    let srv = Server::mockup("dmtf-public-rackmount1", None).await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    let inv = c.inventory(&d).await.unwrap();
    let got: Vec<String> = inv.nic_addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        got,
        ["192.168.0.10", "192.168.0.11", "192.168.150.236"],
        "{inv:?}"
    );
}

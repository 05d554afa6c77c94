//! Vendor quirks and client limits on top of the mockups: settings objects, RDOC slots, Lenovo
//! style PATCH insert with If-Match, Inserted/WriteProtected on request, concurrency limit,
//! timeouts, session deletion on drop.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use beskar7_redfish::{BootMode, Error, InsertMethod, ProbeReport};
use common::{Reply, Server, paths};
use serde_json::json;

const SYS: &str = "/redfish/v1/Systems/437XR1138R2";
const MOCK: &str = "dmtf-public-rackmount1";
const ISO: &str = "https://10.0.0.5/boot.iso";

#[tokio::test]
async fn boot_override_goes_to_the_settings_object_when_it_carries_boot() {
    let settings = format!("{SYS}/Settings");
    let st = settings.clone();
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(move |r, s: &Server| {
            if r.method == "GET" && r.path == SYS {
                let mut v = s.resource(SYS).unwrap();
                v["@Redfish.Settings"] = json!({"SettingsObject": {"@odata.id": st}});
                return Some(Reply::json(200, &v));
            }
            if r.method == "GET" && r.path == st {
                return Some(
                    Reply::json(200, &json!({"@odata.id": st, "Boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}}))
                        .header("ETag", "\"settings-1\""),
                );
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    assert_eq!(d.boot_patch_path, settings);
    srv.clear();
    c.set_boot_once_cd(&d, Some(BootMode::Uefi)).await.unwrap();
    let w = srv.writes();
    assert_eq!(paths(&w), vec![format!("PATCH {settings}")]);
    assert_eq!(w[0].header("if-match").as_deref(), Some("\"settings-1\""));
    // The settings object has no BootSourceOverrideMode: mode is still the system's (UEFI supported).
    assert_eq!(w[0].json()["Boot"]["BootSourceOverrideTarget"], "Cd");
}

#[tokio::test]
async fn rdoc_slots_are_skipped_and_lenovo_style_patch_uses_if_match() {
    let vm = format!("{SYS}/VirtualMedia");
    let v2 = vm.clone();
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(move |r, s: &Server| {
            if r.method == "GET" && r.path == v2 {
                let mut v = s.resource(&v2).unwrap();
                let mut m = vec![json!({"@odata.id": format!("{v2}/RDOC1")})];
                m.extend(v["Members"].as_array().unwrap().iter().cloned());
                v["Members"] = json!(m);
                return Some(Reply::json(200, &v));
            }
            if r.method == "GET" && r.path.ends_with("/VirtualMedia/CD2") {
                let mut v = s.resource(&r.path).unwrap();
                v["Inserted"] = json!(false);
                v["Image"] = json!(null);
                return Some(Reply::json(200, &v).header("ETag", "W/\"cd2-7\""));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    assert!(d.slots[0].skipped);
    assert_eq!(d.slots[0].insert_method(), InsertMethod::None);
    assert_eq!(
        srv.count("GET", &format!("{vm}/RDOC1")),
        0,
        "RDOC slots are not even read"
    );
    assert_eq!(d.boot_slot().unwrap().path, format!("{vm}/CD1"));
    let report = ProbeReport::from_discovery(&d, "session");
    assert_eq!(report.virtual_media[0].insert_method, InsertMethod::None);

    srv.clear();
    c.insert_media(&format!("{vm}/CD2"), ISO).await.unwrap();
    let w = srv.writes();
    assert_eq!(paths(&w), vec![format!("PATCH {vm}/CD2")]);
    assert_eq!(w[0].json(), json!({"Image": ISO, "Inserted": true}));
    assert_eq!(w[0].header("if-match").as_deref(), Some("W/\"cd2-7\""));
}

#[tokio::test]
async fn inserted_and_write_protected_are_added_only_when_asked() {
    let srv = Server::mockup(
        "hpe-ilo",
        Some(Arc::new(|r, _s: &Server| {
            if r.method == "POST" && r.path.ends_with("VirtualMedia.InsertMedia") && r.json().get("Inserted").is_none() {
                return Some(Reply::json(400, &json!({"error": {"code": "Base.1.8.GeneralError", "@Message.ExtendedInfo": [
                    {"MessageId": "Base.1.8.PropertyMissing", "Message": "The property Inserted is a required property.", "RelatedProperties": ["#/Inserted"]}]}})));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    c.discover(None).await.unwrap();
    srv.clear();
    c.insert_media("/redfish/v1/Managers/1/VirtualMedia/2", ISO)
        .await
        .unwrap();
    let w = srv.writes();
    assert_eq!(w.len(), 2);
    assert_eq!(w[0].json(), json!({"Image": ISO}));
    assert_eq!(
        w[1].json(),
        json!({"Image": ISO, "Inserted": true, "WriteProtected": true})
    );

    // An unrelated 400 is not retried with more fields: the BMC refused the insert, with its
    // message.
    let srv = Server::mockup(
        "hpe-ilo",
        Some(Arc::new(|r, _s: &Server| {
            (r.method == "POST" && r.path.ends_with("VirtualMedia.InsertMedia")).then(|| {
                Reply::json(400, &json!({"error": {"code": "Base.1.8.GeneralError", "@Message.ExtendedInfo": [
                    {"MessageId": "Base.1.8.ResourceInUse", "Message": "The image URL is unreachable."}]}}))
            })
        })),
    )
    .await;
    let c = srv.client();
    c.discover(None).await.unwrap();
    let e = c
        .insert_media("/redfish/v1/Managers/1/VirtualMedia/2", ISO)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{e:?}");
    assert_eq!(e.reason(), "RedfishRequestRefused");
    assert!(
        e.to_string().contains("The image URL is unreachable."),
        "{e}"
    );
    assert_eq!(
        srv.count(
            "POST",
            "/redfish/v1/Managers/1/VirtualMedia/2/Actions/VirtualMedia.InsertMedia"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn concurrency_is_limited_per_client() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (f, p) = (in_flight.clone(), peak.clone());
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(move |r, _s: &Server| {
            if r.path == SYS {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(150));
                f.fetch_sub(1, Ordering::SeqCst);
            }
            None
        })),
    )
    .await;
    let mut cfg = srv.config();
    cfg.max_concurrency = 2;
    let c = beskar7_redfish::Client::new(cfg).unwrap();
    c.service_root().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get::<serde_json::Value>(SYS).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "at most 2 requests in flight, and the limit is reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bmc_times_out_as_unreachable() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, _s: &Server| {
            if r.path == SYS {
                std::thread::sleep(Duration::from_millis(700));
            }
            None
        })),
    )
    .await;
    let mut cfg = srv.config();
    cfg.request_timeout = Duration::from_millis(200);
    cfg.max_retries = 1;
    let c = beskar7_redfish::Client::new(cfg).unwrap();
    let e = c.discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(
        srv.count("GET", SYS),
        2,
        "a GET that timed out is retried once"
    );
    assert_eq!(c.stats().retries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn session_is_deleted_when_the_client_is_dropped() {
    let srv = Server::mockup(MOCK, None).await;
    {
        let c = srv.client();
        c.discover(None).await.unwrap();
        assert!(c.uses_session().await);
    }
    for _ in 0..100 {
        if srv.count("DELETE", "/redfish/v1/SessionService/Sessions/s1") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let del: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(del.len(), 1);
    assert_eq!(del[0].path, "/redfish/v1/SessionService/Sessions/s1");
    assert_eq!(del[0].header("x-auth-token").as_deref(), Some("tok-1"));
}

#[tokio::test]
async fn discovery_is_cached_until_a_path_disappears() {
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let g = gone.clone();
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(move |r, _s: &Server| {
            (g.load(Ordering::SeqCst) && r.path.ends_with("/VirtualMedia/CD1")).then(|| {
                Reply::json(
                    404,
                    &json!({"error": {"code": "Base.1.0.ResourceMissingAtURI"}}),
                )
            })
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    let systems_reads = srv.count("GET", "/redfish/v1/Systems");
    c.discover(None).await.unwrap();
    assert_eq!(
        srv.count("GET", "/redfish/v1/Systems"),
        systems_reads,
        "cached"
    );
    // Firmware update renamed the slots: the next operation fails NotFound and discovery is redone.
    gone.store(true, Ordering::SeqCst);
    let e = c
        .eject_media(&d.boot_slot().unwrap().path)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    assert!(
        c.discover(None).await.is_err(),
        "rediscovery reads the slots again (and CD1 is gone)"
    );
    assert_eq!(srv.count("GET", "/redfish/v1/Systems"), systems_reads + 1);

    // A TTL of zero never caches.
    let mut cfg = srv.config();
    cfg.discovery_ttl = Duration::ZERO;
    gone.store(false, Ordering::SeqCst);
    let c = beskar7_redfish::Client::new(cfg).unwrap();
    c.discover(None).await.unwrap();
    c.discover(None).await.unwrap();
    assert_eq!(srv.count("GET", "/redfish/v1/Systems"), systems_reads + 3);
}

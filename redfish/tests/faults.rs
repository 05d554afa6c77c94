//! Fault cases against a scripted test server (on top of the DMTF rackmount mockup).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use beskar7_redfish::{AuthMode, Error, PowerAction};
use common::{Reply, Server, paths};
use serde_json::json;

const SYS: &str = "/redfish/v1/Systems/437XR1138R2";
const MOCK: &str = "dmtf-public-rackmount1";

#[tokio::test]
async fn relogin_on_401_mid_session() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, _s: &Server| {
            // The BMC forgets session 1 as soon as discovery is done.
            if r.header("x-auth-token").as_deref() == Some("tok-1")
                && r.path == SYS
                && r.method == "GET"
            {
                let n = _s.count("GET", SYS);
                if n >= 2 {
                    return Some(Reply::json(
                        401,
                        &json!({"error": {"code": "Base.1.0.NoValidSession"}}),
                    ));
                }
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    assert_eq!(srv.sessions_created(), 1);
    let state = c.power_state(&d).await.unwrap();
    assert_eq!(state.as_deref(), Some("On"));
    assert_eq!(srv.sessions_created(), 2, "logged in again after 401");
    let reqs = srv.requests();
    let last = reqs.last().unwrap();
    assert_eq!(last.path, SYS);
    assert_eq!(last.header("x-auth-token").as_deref(), Some("tok-2"));
}

#[tokio::test]
async fn wrong_password_is_authentication_and_never_leaks() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, _s: &Server| {
            if r.method == "POST" && r.path.ends_with("SessionService/Sessions") {
                return Some(Reply::json(401, &json!({"error": {"code": "Base.1.0.GeneralError", "message": "Invalid username or password"}})));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let e = c.discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Authentication(_)), "{e:?}");
    assert_eq!(e.reason(), "BMCAuthenticationFailed");
    assert!(!format!("{e} {e:?}").contains("hunter2-secret"));
    assert_eq!(srv.sessions_created(), 0);
}

#[tokio::test]
async fn basic_auth_when_no_session_service() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, s: &Server| {
            if r.method == "GET" && r.path.trim_end_matches('/') == "/redfish/v1" {
                let mut v = s.resource("/redfish/v1").unwrap();
                v.as_object_mut().unwrap().remove("SessionService");
                v.as_object_mut().unwrap().remove("Links");
                return Some(Reply::json(200, &v));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    c.discover(None).await.unwrap();
    assert!(!c.uses_session().await);
    assert_eq!(srv.count("POST", "/redfish/v1/SessionService/Sessions"), 0);
    for r in srv.requests() {
        assert_eq!(
            r.header("authorization").as_deref(),
            Some("Basic cm9vdDpodW50ZXIyLXNlY3JldA=="),
            "{}",
            r.path
        );
    }
}

#[tokio::test]
async fn basic_fallback_when_session_creation_refused() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, _s: &Server| {
            if r.method == "POST" && r.path.ends_with("SessionService/Sessions") {
                return Some(Reply::new(405, ""));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    c.discover(None).await.unwrap();
    assert!(!c.uses_session().await);
    assert!(
        srv.requests()
            .last()
            .unwrap()
            .header("authorization")
            .is_some()
    );
    // Session mode insists.
    let mut cfg = srv.config();
    cfg.auth = AuthMode::Session;
    let strict = beskar7_redfish::Client::new(cfg).unwrap();
    assert!(strict.discover(None).await.is_err());
}

#[tokio::test]
async fn stale_etag_412_refetches_and_retries_once() {
    let gets = Arc::new(AtomicUsize::new(0));
    let g = gets.clone();
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(move |r, s: &Server| {
            if r.path == SYS && r.method == "GET" {
                let n = g.fetch_add(1, Ordering::SeqCst);
                let v = s.resource(SYS).unwrap();
                return Some(Reply::json(200, &v).header("ETag", &format!("\"v{n}\"")));
            }
            if r.path == SYS && r.method == "PATCH" {
                let want = format!("\"v{}\"", g.load(Ordering::SeqCst) - 1);
                if r.header("if-match").as_deref() != Some(want.as_str()) {
                    return Some(Reply::json(
                        412,
                        &json!({"error": {"code": "Base.1.0.PreconditionFailed"}}),
                    ));
                }
                return Some(Reply::new(204, ""));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap(); // GET v0
    // Someone else changes the system between our read and our write.
    c.patch(
        SYS,
        &json!({"Boot": {"BootSourceOverrideEnabled": "Once"}}),
        Some("\"stale\""),
    )
    .await
    .unwrap();
    let patches: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 2);
    assert_eq!(patches[0].header("if-match").as_deref(), Some("\"stale\""));
    assert_eq!(patches[1].header("if-match").as_deref(), Some("\"v1\""));
    drop(d);
    // Always stale: one retry only, then an error.
    let srv2 = Server::mockup(
        MOCK,
        Some(Arc::new(|r, _s: &Server| {
            (r.method == "PATCH").then(|| {
                Reply::json(
                    428,
                    &json!({"error": {"code": "Base.1.0.PreconditionRequired"}}),
                )
            })
        })),
    )
    .await;
    let c2 = srv2.client();
    let e = c2.patch(SYS, &json!({}), None).await.unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert_eq!(srv2.count("PATCH", SYS), 2);
}

#[tokio::test]
async fn retry_after_503_is_honoured() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, s: &Server| {
            if r.path == "/redfish/v1/Systems" && s.count("GET", "/redfish/v1/Systems") <= 2 {
                return Some(Reply::new(503, "").header("Retry-After", "1"));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let t = Instant::now();
    c.discover(None).await.unwrap();
    let took = t.elapsed();
    assert_eq!(srv.count("GET", "/redfish/v1/Systems"), 3);
    assert!(
        took >= Duration::from_millis(1900),
        "Retry-After 1 s honoured twice: {took:?}"
    );
    assert_eq!(c.stats().total(), srv.requests().len() as u64);
}

#[tokio::test]
async fn busy_503_beyond_retries_is_bmc_busy() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, _s: &Server| {
            (r.path == SYS).then(|| Reply::new(503, ""))
        })),
    )
    .await;
    let mut cfg = srv.config();
    cfg.max_retries = 2;
    let c = beskar7_redfish::Client::new(cfg).unwrap();
    let e = c.discover(None).await.unwrap_err();
    assert!(matches!(e, Error::BmcBusy(_)), "{e:?}");
    assert_eq!(srv.count("GET", SYS), 3, "1 attempt + 2 retries");
}

#[tokio::test]
async fn task_monitor_202_is_polled_to_completion() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, s: &Server| {
            if r.method == "POST" && r.path.ends_with("ComputerSystem.Reset") {
                return Some(
                    Reply::new(202, "")
                        .header("Location", "/redfish/v1/TaskService/TaskMonitors/7"),
                );
            }
            if r.path == "/redfish/v1/TaskService/TaskMonitors/7" {
                if s.count("GET", &r.path) < 3 {
                    return Some(Reply::json(202, &json!({"TaskState": "Running"})));
                }
                return Some(Reply::json(
                    200,
                    &json!({"Id": "7", "TaskState": "Completed", "TaskStatus": "OK"}),
                ));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    c.set_power(&d, PowerAction::Restart).await.unwrap();
    assert_eq!(
        srv.count("GET", "/redfish/v1/TaskService/TaskMonitors/7"),
        3
    );

    // A task that fails is an error with its messages.
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, _s: &Server| {
            if r.method == "POST" && r.path.ends_with("ComputerSystem.Reset") {
                return Some(Reply::new(202, "").header("Location", "/redfish/v1/TaskService/Tasks/8"));
            }
            if r.path == "/redfish/v1/TaskService/Tasks/8" {
                return Some(Reply::json(200, &json!({"Id": "8", "TaskState": "Exception",
                    "Messages": [{"MessageId": "Base.1.0.InternalError", "Message": "power controller fault"}]})));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    let e = c.set_power(&d, PowerAction::Restart).await.unwrap_err();
    assert!(e.to_string().contains("power controller fault"), "{e}");
}

#[tokio::test]
async fn hpe_in_post_is_bmc_busy() {
    let srv = Server::mockup(
        "hpe-ilo",
        Some(Arc::new(|r, _s: &Server| {
            (r.method == "PATCH").then(|| {
                Reply::json(400, &json!({"error": {"code": "iLO.0.10.ExtendedInfo", "message": "See @Message.ExtendedInfo for more information.",
                    "@Message.ExtendedInfo": [{"MessageId": "iLO.2.15.UnableToModifyDuringSystemPOST"}]}}))
            })
        })),
    )
    .await;
    let c = srv.client();
    let d = c.discover(None).await.unwrap();
    let e = c.set_boot_once_cd(&d, None).await.unwrap_err();
    assert!(matches!(e, Error::BmcBusy(_)), "{e:?}");
    assert_eq!(e.reason(), "BMCBusy");
    assert!(
        e.to_string().contains("UnableToModifyDuringSystemPOST"),
        "{e}"
    );
}

#[tokio::test]
async fn truncated_and_invalid_json_are_protocol_errors() {
    for bad in [
        r#"{"Id": "437XR1138R2", "Boot": {"BootSourceOverrideTarget": "#,
        "<html><body>Internal</body></html>",
        "",
    ] {
        let srv = Server::mockup(
            MOCK,
            Some(Arc::new(move |r, _s: &Server| {
                (r.method == "GET" && r.path == SYS)
                    .then(|| Reply::new(200, bad).header("content-type", "application/json"))
            })),
        )
        .await;
        let c = srv.client();
        let e = c.discover(None).await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{bad:?}: {e:?}");
        assert!(e.to_string().contains(SYS), "{e}");
    }
}

#[tokio::test]
async fn several_systems_need_an_id() {
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, s: &Server| {
            if r.method == "GET" && r.path == "/redfish/v1/Systems" {
                let mut v = s.resource(&r.path).unwrap();
                v["Members"] =
                    json!([{"@odata.id": SYS}, {"@odata.id": "/redfish/v1/Systems/Other"}]);
                return Some(Reply::json(200, &v));
            }
            None
        })),
    )
    .await;
    let e = srv.client().discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert!(
        e.to_string().contains("437XR1138R2") && e.to_string().contains("Other"),
        "{e}"
    );
    let d = srv.client().discover(Some("437XR1138R2")).await.unwrap();
    assert_eq!(d.system_path, SYS);
}

#[tokio::test]
async fn unreachable_bmc() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut cfg = beskar7_redfish::ClientConfig::new(
        format!("http://127.0.0.1:{port}"),
        beskar7_redfish::Credentials::new("u", "p"),
    );
    cfg.max_retries = 2;
    cfg.backoff_base = Duration::from_millis(5);
    let c = beskar7_redfish::Client::new(cfg).unwrap();
    let e = c.discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert_eq!(e.reason(), "BMCUnreachable");
    assert_eq!(c.stats().total(), 3, "connect errors are retried");
}

#[tokio::test]
async fn request_counts_for_a_provisioning_sequence() {
    // A generic BMC (DMTF rackmount) whose slots are empty: what one provisioning costs.
    let srv = Server::mockup(
        MOCK,
        Some(Arc::new(|r, s: &Server| {
            if r.method == "GET"
                && r.path
                    .starts_with("/redfish/v1/Systems/437XR1138R2/VirtualMedia/")
            {
                let mut v = s.resource(&r.path).unwrap();
                v["Inserted"] = json!(false);
                v["Image"] = json!(null);
                return Some(Reply::json(200, &v));
            }
            None
        })),
    )
    .await;
    let c = srv.client();
    let mut counts = Vec::new();
    let mut last = 0;
    let mut step = |name: &str, c: &beskar7_redfish::Client| {
        let now = c.stats().total();
        counts.push((name.to_string(), now - last));
        last = now;
    };
    let d = c.discover(None).await.unwrap();
    step("discovery (login included)", &c);
    let boot = d.boot_slot().unwrap().path.clone();
    let (cfg, _) = d.config_slot().unwrap();
    let cfg = cfg.path.clone();
    c.eject_media(&boot).await.unwrap();
    c.eject_media(&cfg).await.unwrap();
    step("eject stale media (2 slots, empty)", &c);
    c.insert_media(&boot, "http://x/boot.iso").await.unwrap();
    step("insert boot ISO", &c);
    c.insert_media(&cfg, "http://x/cidata.iso").await.unwrap();
    step("insert config volume", &c);
    c.set_boot_once_cd(&d, Some(beskar7_redfish::BootMode::Uefi))
        .await
        .unwrap();
    step("boot override", &c);
    c.set_power(&d, PowerAction::Restart).await.unwrap();
    step("power on / restart", &c);
    c.power_state(&d).await.unwrap();
    step("one power-state poll", &c);
    c.logout().await.unwrap();
    step("logout", &c);
    let total = c.stats().total();
    assert_eq!(
        total,
        srv.requests().len() as u64,
        "{:?}",
        paths(&srv.requests())
    );
    for (name, n) in &counts {
        println!("{n:>3}  {name}");
    }
    println!("{total:>3}  total");
    let got: Vec<u64> = counts.iter().map(|(_, n)| *n).collect();
    assert_eq!(got, vec![8, 2, 2, 2, 2, 2, 1, 1], "{counts:?}");
}

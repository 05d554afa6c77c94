//! The Redfish client against a live sushy-emulator (BmcLab): basic auth, TLS verified against
//! the lab's CA, real state changes.

use std::time::Duration;

use beskar7_redfish::{
    BootMode, Client, ClientConfig, Credentials, Error, ImageFormat, Outcome, PowerAction,
    ProbeReport, Tls,
};
use beskar7_test::BmcLab;

fn client(lab: &BmcLab, tls: Tls, password: &str) -> Client {
    let mut cfg = ClientConfig::new(
        lab.address.clone(),
        Credentials::new(&lab.username, password),
    );
    cfg.tls = tls;
    cfg.backoff_base = Duration::from_millis(50);
    Client::new(cfg).unwrap()
}

#[tokio::test]
async fn bmc_lab_answers_redfish_with_auth_and_tls() {
    let lab = BmcLab::start(2).await.unwrap();
    assert_eq!(lab.systems.len(), 2);
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(lab.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let root: serde_json::Value = http
        .get(format!("{}/redfish/v1/", lab.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["Systems"]["@odata.id"], "/redfish/v1/Systems");
    let unauth = http
        .get(format!("{}/redfish/v1/Systems", lab.address))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status().as_u16(), 401);
    let s = &lab.systems[1];
    let vm: serde_json::Value = http
        .get(format!(
            "{}/redfish/v1/Systems/{}/VirtualMedia",
            s.address, s.system_id
        ))
        .basic_auth(&s.username, Some(&s.password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vm["Members@odata.count"], 2, "{vm}");
    // The image server honours Range.
    let url = lab.add_image("r.bin", b"0123456789").unwrap();
    let part = reqwest::Client::new()
        .get(&url)
        .header("Range", "bytes=2-4")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"234");
}

#[tokio::test]
async fn virtual_media_boot_override_and_power_against_the_emulator() {
    let lab = BmcLab::start(2).await.unwrap();
    let c = client(
        &lab,
        Tls::CaBundle(lab.ca_pem.clone().into_bytes()),
        &lab.password,
    );
    // Two systems: an id is required.
    assert!(matches!(
        c.discover(None).await.unwrap_err(),
        Error::Config(_)
    ));
    let sys = &lab.systems[0];
    let d = c.discover(Some(&sys.system_id)).await.unwrap();
    assert!(
        !c.uses_session().await,
        "sushy has no SessionService: basic auth"
    );
    let inv = c.inventory(&d).await.unwrap();
    assert_eq!(inv.uuid.as_deref(), Some(sys.system_id.as_str()));
    assert_eq!(inv.nic_macs, vec![sys.mac.clone()]);

    // Virtual media.
    let boot = d.boot_slot().expect("CD slot").path.clone();
    let (cfg_slot, fmt) = d.config_slot().expect("config slot");
    assert_eq!(fmt, ImageFormat::Fat, "sushy's second slot is a Floppy");
    let cfg_slot = cfg_slot.path.clone();
    let iso = lab.add_image("boot.iso", &vec![7u8; 64 * 1024]).unwrap();
    assert_eq!(c.insert_media(&boot, &iso).await.unwrap(), Outcome::Changed);
    let slot = c.read_slot(&boot).await.unwrap();
    assert_eq!(slot.media.inserted, Some(true));
    assert_eq!(slot.media.current_image(), Some(iso.as_str()));
    assert_eq!(
        c.insert_media(&boot, &iso).await.unwrap(),
        Outcome::Unchanged
    );
    // A different image replaces the first (eject, then insert).
    let iso2 = lab.add_image("boot2.iso", b"second").unwrap();
    assert_eq!(
        c.insert_media(&boot, &iso2).await.unwrap(),
        Outcome::Changed
    );
    assert_eq!(
        c.read_slot(&boot).await.unwrap().media.current_image(),
        Some(iso2.as_str())
    );
    let img = lab.add_image("config.img", b"fat").unwrap();
    c.insert_media(&cfg_slot, &img).await.unwrap();
    assert_eq!(c.eject_media(&boot).await.unwrap(), Outcome::Changed);
    assert_eq!(c.eject_media(&boot).await.unwrap(), Outcome::Unchanged);
    let slot = c.read_slot(&boot).await.unwrap();
    assert_eq!(slot.media.inserted, Some(false));
    c.eject_media(&cfg_slot).await.unwrap();

    // Boot override.
    assert_eq!(
        c.set_boot_once_cd(&d, Some(BootMode::Uefi)).await.unwrap(),
        Outcome::Changed
    );
    let s: serde_json::Value = c.get(&d.system_path).await.unwrap().value;
    assert_eq!(s["Boot"]["BootSourceOverrideTarget"], "Cd", "{s}");
    // sushy's fake driver stores target and mode but always reports Enabled "Continuous", so the
    // override is never seen as already pending there and a second call PATCHes again.
    assert_eq!(s["Boot"]["BootSourceOverrideMode"], "UEFI");
    c.set_boot_once_cd(&d, Some(BootMode::Uefi)).await.unwrap();

    // Power: on, restart (cycle), off. The fake driver applies changes after 1-11 s.
    let poll = Duration::from_millis(500);
    let wait = Duration::from_secs(30);
    assert_eq!(c.power_state(&d).await.unwrap().as_deref(), Some("Off"));
    assert_eq!(
        c.set_power(&d, PowerAction::On).await.unwrap(),
        Outcome::Changed
    );
    c.wait_power_state(&d, "On", wait, poll).await.unwrap();
    assert_eq!(
        c.set_power(&d, PowerAction::On).await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        c.set_power(&d, PowerAction::Restart).await.unwrap(),
        Outcome::Changed
    );
    c.wait_power_state(&d, "On", wait, poll).await.unwrap();
    assert_eq!(
        c.set_power(&d, PowerAction::ForceOff).await.unwrap(),
        Outcome::Changed
    );
    c.wait_power_state(&d, "Off", wait, poll).await.unwrap();
    // The other system was not touched.
    let other = c
        .get::<serde_json::Value>(&format!("/redfish/v1/Systems/{}", lab.systems[1].system_id))
        .await
        .unwrap()
        .value;
    assert_eq!(other["PowerState"], "Off");

    let report = ProbeReport::probe(&c, Some(&sys.system_id)).await.unwrap();
    assert_eq!(report.manufacturer, "Sushy Emulator");
    assert_eq!(report.boot_override.target, "Cd");
    println!("requests to the lab: {:?}", c.stats().snapshot());
}

#[tokio::test]
async fn wrong_password_and_wrong_ca_are_typed_errors() {
    let lab = BmcLab::start(1).await.unwrap();
    let ca = Tls::CaBundle(lab.ca_pem.clone().into_bytes());
    let e = client(&lab, ca.clone(), "not-the-password")
        .discover(None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Authentication(_)), "{e:?}");
    assert!(!e.to_string().contains("not-the-password"));

    let other_ca = beskar7_test::certs::Ca::new("some other CA").unwrap();
    let e = client(
        &lab,
        Tls::CaBundle(other_ca.cert_pem().into_bytes()),
        &lab.password,
    )
    .discover(None)
    .await
    .unwrap_err();
    assert!(matches!(e, Error::TlsVerification(_)), "{e:?}");
    assert_eq!(e.reason(), "BMCTLSVerificationFailed");

    // System roots do not know the lab's CA either.
    let e = client(&lab, Tls::Verify, &lab.password)
        .discover(None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TlsVerification(_)), "{e:?}");

    // Opt-in insecure works.
    let d = client(&lab, Tls::Insecure, &lab.password)
        .discover(None)
        .await
        .unwrap();
    assert_eq!(
        d.system_path,
        format!("/redfish/v1/Systems/{}", lab.systems[0].system_id)
    );
}

//! Redfish model parsing and what discovery derives from the models: any bytes a BMC sends must
//! parse to a model or a `serde_json` error, and the helpers never panic on what parsed.
#![no_main]

use beskar7_redfish::models::{
    self, ActionInfo, Collection, ComputerSystem, ErrorBody, EthernetInterface, Manager,
    ServiceRoot, SettingsResource, Task, VirtualMedia,
};
use beskar7_redfish::ops::choose_reset_type;
use beskar7_redfish::{BootMode, Discovery, Slot, Vendor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The address parser sees user input (PhysicalHost spec.bmc.address).
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = beskar7_redfish::client::base_url(text);
    }

    let root = models::parse::<ServiceRoot>(data).ok();
    if let Ok(c) = models::parse::<Collection>(data) {
        let _ = c.member_paths();
    }
    if let Ok(m) = models::parse::<Manager>(data) {
        let _ = format!("{m:?}");
    }
    let _ = models::parse::<SettingsResource>(data);
    let _ = models::parse::<EthernetInterface>(data);
    if let Ok(t) = models::parse::<Task>(data) {
        let _ = (t.is_finished(), t.is_failed());
    }
    if let Ok(e) = models::parse::<ErrorBody>(data) {
        let _ = (
            e.message_ids(),
            e.summary(),
            e.mentions("PropertyValueNotInList"),
        );
    }
    if let Ok(a) = models::parse::<ActionInfo>(data) {
        if let Some(v) = a.allowable_values("ResetType") {
            let _ = choose_reset_type(&v, &["ForceRestart", "PowerCycle", "On"]);
        }
    }
    let media = models::parse::<VirtualMedia>(data).ok();
    if let Some(m) = &media {
        let _ = (
            m.insert_target(),
            m.eject_target(),
            m.current_image(),
            m.is_inserted(),
            m.has_media_type(&["CD", "DVD"]),
        );
    }
    let Ok(system) = models::parse::<ComputerSystem>(data) else {
        return;
    };
    let _ = (system.manager_paths(), system.reset_action());
    let root = root.unwrap_or_default();
    let vendor = Vendor::detect(&root, &system);
    let _ = vendor.name();
    // A discovery as `Client::discover` would assemble it from these documents.
    let slots = media
        .into_iter()
        .enumerate()
        .map(|(i, media)| Slot {
            path: format!("/redfish/v1/Managers/1/VirtualMedia/{i}"),
            skipped: media.id.as_deref().is_some_and(|id| id.starts_with("RDOC")),
            media,
            etag: None,
        })
        .collect::<Vec<_>>();
    let d = Discovery {
        root,
        system_path: "/redfish/v1/Systems/1".into(),
        boot_patch_path: "/redfish/v1/Systems/1".into(),
        manager_paths: system.manager_paths(),
        reset_types: Vec::new(),
        virtual_media_collections: Vec::new(),
        vendor,
        system,
        slots,
    };
    if let Some(s) = d.boot_slot() {
        let _ = s.insert_method();
    }
    let _ = d.config_slot();
    let _ = d.boot_override_plan(Some(BootMode::Uefi));
    let _ = d.boot_override_plan(Some(BootMode::Legacy));
    let _ = d.boot_override_plan(None);
});

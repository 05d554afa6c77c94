//! Bootstrap data (user input from the Machine's bootstrap Secret) rendered for each OS family
//! and built into a config volume: a rendered config or a `ProfileError`, never a panic.
#![no_main]

use beskar7_boot::{BootstrapFormat, MetaData, OsFamily, VolumeFormat, build_config_volume};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let meta = MetaData {
        instance_id: "default/m1".into(),
        local_hostname: "m1".into(),
        provider_id: "beskar7://default/server-00".into(),
        ..Default::default()
    };
    for os in [
        OsFamily::Kairos,
        OsFamily::Talos,
        OsFamily::Flatcar,
        OsFamily::LeapMicro,
    ] {
        for format in [BootstrapFormat::CloudConfig, BootstrapFormat::Ignition] {
            let Ok(r) = os.render(data, format, &meta) else {
                continue;
            };
            if r.volume_label.is_some() {
                for vf in [VolumeFormat::Iso, VolumeFormat::Fat] {
                    let _ = build_config_volume(os, vf, &r);
                }
            }
        }
    }
});

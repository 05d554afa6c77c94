//! What the BMC says about the server, as the PhysicalHost status shows it.

use beskar7_api::{
    BmcDetails, HardwareDetails, MachineAddress, MachineAddressType, Nic, VirtualMediaSlotInfo,
};
use beskar7_redfish as redfish;

pub fn hardware_details(inv: &redfish::Inventory) -> HardwareDetails {
    HardwareDetails {
        manufacturer: inv.manufacturer.clone(),
        model: inv.model.clone(),
        serial_number: inv.serial_number.clone(),
        system_uuid: inv.uuid.clone(),
        cpu: inv.cpu_count.map(|c| c as i64),
        memory: inv.memory_gib.map(|g| format!("{}Gi", g.round() as i64)),
        nics: inv
            .nic_macs
            .iter()
            .map(|m| Nic {
                mac: m.clone(),
                name: None,
            })
            .collect(),
    }
}

/// The host's NIC addresses as the BMC reported them when it was inventoried (as Metal3 takes
/// them from inspection): CAPI copies them to the Machine.
pub fn addresses(inv: &redfish::Inventory) -> Vec<MachineAddress> {
    inv.nic_addresses
        .iter()
        .map(|ip| MachineAddress {
            type_: MachineAddressType::InternalIP,
            address: ip.to_string(),
        })
        .collect()
}

pub fn bmc_details(d: &redfish::Discovery) -> BmcDetails {
    let boot = d.boot_slot().map(|s| s.path.clone());
    let config = d.config_slot().map(|(s, _)| s.path.clone());
    BmcDetails {
        vendor: Some(d.vendor.name().to_string()),
        virtual_media_slots: d
            .slots
            .iter()
            .map(|s| VirtualMediaSlotInfo {
                path: s.path.clone(),
                media_types: s.media.media_types.clone().unwrap_or_default(),
                inserted: s.media.inserted,
                role: if Some(&s.path) == boot.as_ref() {
                    Some("boot".into())
                } else if Some(&s.path) == config.as_ref() {
                    Some("config".into())
                } else {
                    None
                },
            })
            .collect(),
        boot_override_targets: d
            .system
            .boot
            .as_ref()
            .and_then(|b| b.target_allowable_values.clone())
            .unwrap_or_default(),
    }
}

//! `beskar7 bmc probe`: what the provider would do with a BMC, read-only.

use serde::Serialize;

use crate::client::Client;
use crate::error::Result;
use crate::ops::{BootMode, Discovery, ImageFormat, InsertMethod};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeSlot {
    pub path: String,
    #[serde(rename = "mediaTypes")]
    pub media_types: Vec<String>,
    pub inserted: Option<bool>,
    #[serde(rename = "insertMethod")]
    pub insert_method: InsertMethod,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeMedia {
    pub path: String,
    #[serde(rename = "insertMethod")]
    pub insert_method: InsertMethod,
    #[serde(rename = "imageFormat", skip_serializing_if = "Option::is_none")]
    pub image_format: Option<ImageFormat>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeBootOverride {
    pub target: String,
    pub mode: Option<String>,
    #[serde(rename = "patchPath")]
    pub patch_path: String,
}

/// The probe's report. Serializes to the JSON the issue specifies (plus a few extra keys).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    pub manufacturer: String,
    pub model: String,
    #[serde(rename = "serialNumber")]
    pub serial_number: Option<String>,
    pub uuid: Option<String>,
    #[serde(rename = "systemPath")]
    pub system_path: String,
    #[serde(rename = "powerState")]
    pub power_state: Option<String>,
    #[serde(rename = "virtualMedia")]
    pub virtual_media: Vec<ProbeSlot>,
    #[serde(rename = "bootMedia")]
    pub boot_media: Option<ProbeMedia>,
    #[serde(rename = "configMedia")]
    pub config_media: Option<ProbeMedia>,
    #[serde(rename = "bootOverride")]
    pub boot_override: ProbeBootOverride,
    pub problems: Vec<String>,
    /// Extra: detected vendor.
    pub vendor: String,
    /// Extra: `session` or `basic`.
    pub authentication: String,
    /// Extra: reset types the BMC allows.
    #[serde(rename = "resetTypes")]
    pub reset_types: Vec<String>,
}

impl ProbeReport {
    /// Discover (read-only) and build the report.
    pub async fn probe(client: &Client, system_id: Option<&str>) -> Result<ProbeReport> {
        let d = client.discover(system_id).await?;
        let auth = if client.uses_session().await {
            "session"
        } else {
            "basic"
        };
        Ok(Self::from_discovery(&d, auth))
    }

    pub fn from_discovery(d: &Discovery, authentication: &str) -> ProbeReport {
        let s = &d.system;
        let mut problems = Vec::new();
        if s.manufacturer.is_none() {
            problems.push("the system reports no Manufacturer".to_string());
        }
        let virtual_media: Vec<ProbeSlot> = d
            .slots
            .iter()
            .map(|slot| ProbeSlot {
                path: slot.path.clone(),
                media_types: slot.media.media_types.clone().unwrap_or_default(),
                inserted: slot.media.inserted,
                insert_method: slot.insert_method(),
            })
            .collect();
        if d.slots.is_empty() {
            problems.push(
                "no virtual media found under the system or its managers: cannot boot from an ISO"
                    .to_string(),
            );
        }
        let boot_media = d.boot_slot().map(|slot| ProbeMedia {
            path: slot.path.clone(),
            insert_method: slot.insert_method(),
            image_format: None,
        });
        if boot_media.is_none() && !d.slots.is_empty() {
            problems.push("no CD/DVD virtual media slot for the boot ISO".to_string());
        }
        let config_media = d.config_slot().map(|(slot, fmt)| ProbeMedia {
            path: slot.path.clone(),
            insert_method: slot.insert_method(),
            image_format: Some(fmt),
        });
        if config_media.is_none() && boot_media.is_some() {
            problems.push(
                "no second slot for a config volume: only config URLs (kernel arguments) can be used"
                    .to_string(),
            );
        }
        for slot in d
            .slots
            .iter()
            .filter(|s| s.media.is_inserted() && !s.skipped)
        {
            problems.push(format!(
                "{} has media inserted ({}): it will be ejected before provisioning",
                slot.path,
                slot.media.current_image().unwrap_or("unknown image")
            ));
        }
        let boot_override = match d.boot_override_plan(Some(BootMode::Uefi)) {
            Ok(p) => ProbeBootOverride {
                target: p.target,
                mode: p.mode,
                patch_path: p.patch_path,
            },
            Err(e) => {
                problems.push(e.to_string());
                ProbeBootOverride {
                    target: String::new(),
                    mode: None,
                    patch_path: d.boot_patch_path.clone(),
                }
            }
        };
        if d.reset_types.is_empty() && s.reset_action().is_none() {
            problems.push("the system has no ComputerSystem.Reset action".to_string());
        }
        ProbeReport {
            manufacturer: s.manufacturer.clone().unwrap_or_default(),
            model: s.model.clone().unwrap_or_default(),
            serial_number: s.serial_number.clone(),
            uuid: s.uuid.clone(),
            system_path: d.system_path.clone(),
            power_state: s.power_state.clone(),
            virtual_media,
            boot_media,
            config_media,
            boot_override,
            problems,
            vendor: d.vendor.name().to_string(),
            authentication: authentication.to_string(),
            reset_types: d.reset_types.clone(),
        }
    }

    /// A short readable table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let method = |m: InsertMethod| match m {
            InsertMethod::Action => "action",
            InsertMethod::Patch => "patch",
            InsertMethod::None => "none",
        };
        let rows = [
            ("System", self.system_path.clone()),
            (
                "Vendor",
                format!("{} ({} {})", self.vendor, self.manufacturer, self.model),
            ),
            ("Serial", opt(&self.serial_number)),
            ("UUID", opt(&self.uuid)),
            ("Power", opt(&self.power_state)),
            ("Auth", self.authentication.clone()),
            (
                "Boot media",
                self.boot_media
                    .as_ref()
                    .map(|m| format!("{} ({})", m.path, method(m.insert_method)))
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "Config media",
                self.config_media
                    .as_ref()
                    .map(|m| {
                        format!(
                            "{} ({}, {})",
                            m.path,
                            method(m.insert_method),
                            match m.image_format {
                                Some(ImageFormat::Fat) => "fat",
                                _ => "iso",
                            }
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "Boot override",
                format!(
                    "{} once, mode {} via PATCH {}",
                    if self.boot_override.target.is_empty() {
                        "-"
                    } else {
                        &self.boot_override.target
                    },
                    self.boot_override.mode.as_deref().unwrap_or("-"),
                    self.boot_override.patch_path
                ),
            ),
            ("Reset types", self.reset_types.join(", ")),
        ];
        for (k, v) in rows {
            out.push_str(&format!("{k:<14} {v}\n"));
        }
        out.push_str("\nVirtual media:\n");
        out.push_str(&format!(
            "  {:<56} {:<26} {:<9} {}\n",
            "PATH", "MEDIA TYPES", "INSERTED", "INSERT"
        ));
        for s in &self.virtual_media {
            out.push_str(&format!(
                "  {:<56} {:<26} {:<9} {}\n",
                s.path,
                s.media_types.join(","),
                s.inserted.map(|b| b.to_string()).unwrap_or("-".into()),
                method(s.insert_method)
            ));
        }
        if !self.problems.is_empty() {
            out.push_str("\nProblems:\n");
            for p in &self.problems {
                out.push_str(&format!("  - {p}\n"));
            }
        }
        out
    }
}

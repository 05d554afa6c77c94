//! What the provider does with a BMC: discovery, inventory, power, virtual media, boot override.
//! Every operation is idempotent: it reads the current state first and changes only what differs.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{Body, Client};
use crate::error::{Error, Result};
use crate::models::{
    ActionInfo, Collection, ComputerSystem, EthernetInterface, InsertMediaRequest, Manager,
    ServiceRoot, SettingsResource, VirtualMedia,
};

/// Vendor, for the few places behaviour differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Vendor {
    Dell,
    Hpe,
    Supermicro,
    Lenovo,
    Generic(String),
}

impl Vendor {
    pub fn detect(root: &ServiceRoot, system: &ComputerSystem) -> Vendor {
        let mut hay = String::new();
        for s in [&root.vendor, &root.product, &system.manufacturer]
            .into_iter()
            .flatten()
        {
            hay.push_str(&s.to_ascii_lowercase());
            hay.push(' ');
        }
        if let Some(Value::Object(oem)) = root.extra.get("Oem") {
            for k in oem.keys() {
                hay.push_str(&k.to_ascii_lowercase());
                hay.push(' ');
            }
        }
        if hay.contains("dell") {
            Vendor::Dell
        } else if hay.contains("hpe") || hay.contains("hewlett") {
            Vendor::Hpe
        } else if hay.contains("supermicro") {
            Vendor::Supermicro
        } else if hay.contains("lenovo") {
            Vendor::Lenovo
        } else {
            Vendor::Generic(system.manufacturer.clone().unwrap_or_default())
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Vendor::Dell => "Dell",
            Vendor::Hpe => "HPE",
            Vendor::Supermicro => "Supermicro",
            Vendor::Lenovo => "Lenovo",
            Vendor::Generic(s) if !s.is_empty() => s,
            Vendor::Generic(_) => "Generic",
        }
    }
}

/// How a slot takes an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InsertMethod {
    /// `VirtualMedia.InsertMedia` action.
    Action,
    /// PATCH of `Image`/`Inserted` (Lenovo XCC, services without actions).
    Patch,
    /// Neither (or a slot we skip, such as `RDOC*`).
    None,
}

/// Format of the config volume for the slot it goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Iso,
    Fat,
}

/// A virtual media slot as discovered.
#[derive(Clone, Debug)]
pub struct Slot {
    pub path: String,
    pub media: VirtualMedia,
    pub etag: Option<String>,
    /// Not used by the provider (`RDOC*` remote-console slots).
    pub skipped: bool,
}

impl Slot {
    pub fn insert_method(&self) -> InsertMethod {
        if self.skipped {
            InsertMethod::None
        } else if self.media.insert_target().is_some() {
            InsertMethod::Action
        } else {
            // No action (Lenovo XCC, DMTF reference services): PATCH Image/Inserted.
            InsertMethod::Patch
        }
    }

    fn is_cd(&self) -> bool {
        !self.skipped && self.media.has_media_type(&["CD", "DVD"])
    }

    fn is_removable(&self) -> bool {
        !self.skipped && self.media.has_media_type(&["USBStick", "Floppy"])
    }
}

/// What discovery learned about one system of a BMC. Cached per client.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub root: ServiceRoot,
    pub system_path: String,
    pub system: ComputerSystem,
    pub vendor: Vendor,
    pub manager_paths: Vec<String>,
    /// Reset types the BMC allows (inline or from ActionInfo); empty when it does not say.
    pub reset_types: Vec<String>,
    /// Where boot override is PATCHed: the system, or its `@Redfish.Settings` object when that carries `Boot`.
    pub boot_patch_path: String,
    /// Collection(s) the slots came from.
    pub virtual_media_collections: Vec<String>,
    pub slots: Vec<Slot>,
}

/// The one-time boot override the provider would set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootOverridePlan {
    pub target: String,
    pub mode: Option<String>,
    #[serde(rename = "patchPath")]
    pub patch_path: String,
}

/// Boot mode wanted for the override.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BootMode {
    #[default]
    Uefi,
    Legacy,
}

impl BootMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        }
    }
}

/// Hardware facts for `PhysicalHost.status.hardwareDetails`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Inventory {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub uuid: Option<String>,
    pub cpu_count: Option<u64>,
    pub memory_gib: Option<f64>,
    pub nic_macs: Vec<String>,
    /// Routable addresses the BMC reports on the host's NICs, in the BMC's order (often none:
    /// many BMCs learn them only from an agent in the running OS).
    pub nic_addresses: Vec<std::net::IpAddr>,
}

/// Power changes, each a no-op when the system is already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    On,
    /// Graceful shutdown (falls back to ForceOff when the BMC offers no graceful shutdown).
    GracefulOff,
    ForceOff,
    /// Force a restart when on; power on when off.
    Restart,
}

/// What an idempotent operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
}

/// The ids of the first few members, for a message that stays short on a BMC with many systems.
fn some_ids(members: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut ids: Vec<String> = members
        .iter()
        .take(SHOWN)
        .map(|m| last_segment(m).chars().take(64).collect())
        .collect();
    if members.len() > SHOWN {
        ids.push(format!("and {} more", members.len() - SHOWN));
    }
    ids.join(", ")
}

fn last_segment(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Pick a reset type from what the BMC allows, in order of preference.
pub fn choose_reset_type(allowed: &[String], preferences: &[&str]) -> Option<String> {
    if allowed.is_empty() {
        return preferences.first().map(|s| s.to_string());
    }
    preferences
        .iter()
        .find(|p| allowed.iter().any(|a| a == *p))
        .map(|s| s.to_string())
}

impl Discovery {
    /// The slot for the boot ISO: the first CD/DVD slot.
    pub fn boot_slot(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| s.is_cd())
    }

    /// The slot for the config volume: another CD/DVD slot (ISO), else a USBStick/Floppy slot (FAT).
    pub fn config_slot(&self) -> Option<(&Slot, ImageFormat)> {
        let boot = self.boot_slot().map(|s| s.path.as_str());
        let others = || {
            self.slots
                .iter()
                .filter(move |s| Some(s.path.as_str()) != boot)
        };
        if let Some(s) = others().find(|s| s.is_cd()) {
            return Some((s, ImageFormat::Iso));
        }
        others()
            .find(|s| s.is_removable())
            .map(|s| (s, ImageFormat::Fat))
    }

    pub fn slot(&self, path: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.path == path)
    }

    /// The boot override the provider would PATCH: target `Cd` (or `UsbCd` where the BMC offers
    /// that for virtual media), `Once`, the wanted mode where the BMC has a mode.
    pub fn boot_override_plan(&self, mode: Option<BootMode>) -> Result<BootOverridePlan> {
        let boot = self.system.boot.clone().unwrap_or_default();
        let allowed = boot.target_allowable_values.clone().unwrap_or_default();
        let has = |t: &str| allowed.iter().any(|a| a == t);
        let target = if self.vendor == Vendor::Supermicro && has("UsbCd") {
            "UsbCd"
        } else if allowed.is_empty() || has("Cd") {
            "Cd"
        } else if has("UsbCd") {
            "UsbCd"
        } else {
            return Err(Error::NotSupported(format!(
                "boot override to a virtual CD: BootSourceOverrideTarget allows only {allowed:?}"
            )));
        };
        let mode = match mode {
            None => None,
            Some(m) => {
                let modes = boot.mode_allowable_values.clone().unwrap_or_default();
                let supported = boot.mode.is_some() || !modes.is_empty();
                if !supported {
                    None
                } else if !modes.is_empty() && !modes.iter().any(|x| x == m.as_str()) {
                    return Err(Error::NotSupported(format!(
                        "boot mode {}: BootSourceOverrideMode allows only {modes:?}",
                        m.as_str()
                    )));
                } else {
                    Some(m.as_str().to_string())
                }
            }
        };
        Ok(BootOverridePlan {
            target: target.to_string(),
            mode,
            patch_path: self.boot_patch_path.clone(),
        })
    }
}

impl Client {
    /// Discover the system (the only one, or `system_id`), its managers and virtual media.
    /// Cached: later calls return the cached result until [`Client::invalidate_discovery`].
    pub async fn discover(&self, system_id: Option<&str>) -> Result<Arc<Discovery>> {
        let mut cache = self.inner.discovery.lock().await;
        if let Some((at, d)) = cache.as_ref()
            && at.elapsed() < self.inner.config.discovery_ttl
            && system_id.is_none_or(|id| last_segment(&d.system_path).eq_ignore_ascii_case(id))
        {
            return Ok(d.clone());
        }
        let d = Arc::new(self.discover_uncached(system_id).await?);
        *cache = Some((tokio::time::Instant::now(), d.clone()));
        Ok(d)
    }

    async fn forget_if_gone<T>(&self, r: Result<T>) -> Result<T> {
        if matches!(r, Err(Error::NotFound(_))) {
            self.invalidate_discovery().await;
        }
        r
    }

    /// Forget the cached discovery (the operations below also do this when a path they use is gone).
    pub async fn invalidate_discovery(&self) {
        *self.inner.discovery.lock().await = None;
    }

    async fn discover_uncached(&self, system_id: Option<&str>) -> Result<Discovery> {
        let root = self.service_root().await?;
        let systems_path = root
            .systems
            .as_ref()
            .and_then(|s| s.path())
            .unwrap_or("/redfish/v1/Systems")
            .to_string();
        let systems: Collection = self.get(&systems_path).await?.value;
        let members = systems.member_paths();
        let system_path = match system_id {
            Some(id) => members
                .iter()
                .find(|m| last_segment(m).eq_ignore_ascii_case(id) || m.as_str() == id)
                .cloned()
                .ok_or_else(|| {
                    Error::NotFound(format!("system {id:?} not among {}", some_ids(&members)))
                })?,
            None => match members.as_slice() {
                [] => return Err(Error::NotFound(format!("{systems_path} has no system"))),
                [one] => one.clone(),
                many => {
                    return Err(Error::Config(format!(
                        "the BMC manages {} systems ({}): set a system id",
                        many.len(),
                        some_ids(many)
                    )));
                }
            },
        };
        let system: ComputerSystem = self.get(&system_path).await?.value;
        let vendor = Vendor::detect(&root, &system);
        let manager_paths = system.manager_paths();

        let mut reset_types = system
            .reset_action()
            .and_then(|a| a.reset_type_allowable_values.clone())
            .unwrap_or_default();
        if reset_types.is_empty()
            && let Some(info) = system
                .reset_action()
                .and_then(|a| a.action_info.as_deref())
                .filter(|p| !p.is_empty())
        {
            match self.get::<ActionInfo>(info).await {
                Ok(f) => reset_types = f.value.allowable_values("ResetType").unwrap_or_default(),
                Err(e) => tracing::debug!(error = %e, "reset ActionInfo unreadable"),
            }
        }

        let mut boot_patch_path = system_path.clone();
        if let Some(settings) = system
            .redfish_settings
            .as_ref()
            .and_then(|s| s.settings_object.as_ref())
            .and_then(|o| o.path())
            && settings != system_path
        {
            match self.get::<SettingsResource>(settings).await {
                Ok(f) if f.value.boot.is_some() => boot_patch_path = settings.to_string(),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "settings object unreadable"),
            }
        }

        // Virtual media: under the system first, then under its managers.
        let mut collections = Vec::new();
        let mut slot_paths = Vec::new();
        if let Some(p) = system.virtual_media.as_ref().and_then(|v| v.path()) {
            match self.get::<Collection>(p).await {
                Ok(c) => {
                    collections.push(p.to_string());
                    slot_paths.extend(c.value.member_paths());
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if slot_paths.is_empty() {
            for m in &manager_paths {
                let manager: Manager = match self.get(m).await {
                    Ok(f) => f.value,
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                let Some(p) = manager.virtual_media.as_ref().and_then(|v| v.path()) else {
                    continue;
                };
                if collections.iter().any(|c| c == p) {
                    continue;
                }
                match self.get::<Collection>(p).await {
                    Ok(c) => {
                        collections.push(p.to_string());
                        slot_paths.extend(c.value.member_paths());
                    }
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                if !slot_paths.is_empty() {
                    break;
                }
            }
        }
        let mut slots = Vec::new();
        for p in slot_paths {
            if last_segment(&p).to_ascii_uppercase().starts_with("RDOC") {
                slots.push(Slot {
                    path: p,
                    media: VirtualMedia::default(),
                    etag: None,
                    skipped: true,
                });
                continue;
            }
            let f = self.get::<VirtualMedia>(&p).await?;
            let skipped = f
                .value
                .id
                .as_deref()
                .is_some_and(|id| id.to_ascii_uppercase().starts_with("RDOC"));
            slots.push(Slot {
                path: p,
                media: f.value,
                etag: f.etag,
                skipped,
            });
        }
        Ok(Discovery {
            root,
            system_path,
            system,
            vendor,
            manager_paths,
            reset_types,
            boot_patch_path,
            virtual_media_collections: collections,
            slots,
        })
    }

    /// Hardware facts. Reads the NICs (one request per interface).
    pub async fn inventory(&self, d: &Discovery) -> Result<Inventory> {
        let s = &d.system;
        let mut macs = Vec::new();
        let mut addresses = Vec::new();
        if let Some(p) = s.ethernet_interfaces.as_ref().and_then(|e| e.path()) {
            let c: Collection = self.get(p).await?.value;
            for m in c.member_paths() {
                let nic: EthernetInterface = self.get(&m).await?.value;
                for ip in nic.routable_addresses() {
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                }
                if let Some(mac) = nic
                    .mac_address
                    .or(nic.permanent_mac_address)
                    .filter(|m| !m.is_empty())
                {
                    let mac = mac.to_ascii_lowercase();
                    if !macs.contains(&mac) {
                        macs.push(mac);
                    }
                }
            }
        }
        Ok(Inventory {
            manufacturer: s.manufacturer.clone(),
            model: s.model.clone(),
            serial_number: s.serial_number.clone(),
            uuid: s.uuid.clone(),
            cpu_count: s.processor_summary.as_ref().and_then(|p| p.count),
            memory_gib: s
                .memory_summary
                .as_ref()
                .and_then(|m| m.total_system_memory_gib),
            nic_macs: macs,
            nic_addresses: addresses,
        })
    }

    /// Whether the system's next boot enforces UEFI Secure Boot, from its `SecureBoot` resource;
    /// None when the BMC has no such resource or does not say.
    pub async fn secure_boot_enforced(&self, d: &Discovery) -> Result<Option<bool>> {
        let Some(path) = d.system.secure_boot.as_ref().and_then(|l| l.path()) else {
            return Ok(None);
        };
        match self.get::<crate::models::SecureBoot>(path).await {
            Ok(f) => Ok(f.value.enforced()),
            // Listed but absent (some BMCs link resources they do not serve).
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The system's power state now (`On`, `Off`, `PoweringOn` ...).
    pub async fn power_state(&self, d: &Discovery) -> Result<Option<String>> {
        let s: ComputerSystem = self
            .forget_if_gone(self.get(&d.system_path).await)
            .await?
            .value;
        Ok(s.power_state)
    }

    /// Change power, choosing a reset type the BMC allows. No-op when already there.
    pub async fn set_power(&self, d: &Discovery, action: PowerAction) -> Result<Outcome> {
        let state = self.power_state(d).await?.unwrap_or_default();
        let is_on = matches!(state.as_str(), "On" | "PoweringOn");
        let is_off = matches!(state.as_str(), "Off" | "PoweringOff");
        let prefs: &[&str] = match action {
            PowerAction::On if is_on => return Ok(Outcome::Unchanged),
            PowerAction::On => &["On", "ForceOn", "PushPowerButton"],
            PowerAction::GracefulOff | PowerAction::ForceOff if is_off => {
                return Ok(Outcome::Unchanged);
            }
            PowerAction::GracefulOff => &["GracefulShutdown", "ForceOff"],
            PowerAction::ForceOff => &["ForceOff", "GracefulShutdown"],
            PowerAction::Restart if is_off => &["On", "ForceOn", "PushPowerButton"],
            PowerAction::Restart => &["ForceRestart", "PowerCycle", "GracefulRestart"],
        };
        let reset_type = choose_reset_type(&d.reset_types, prefs).ok_or_else(|| {
            Error::NotSupported(format!(
                "no reset type for {action:?} among {:?}",
                d.reset_types
            ))
        })?;
        let target = d
            .system
            .reset_action()
            .and_then(|a| a.target.clone())
            .unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", d.system_path));
        self.post(&target, &Body::Json(json!({ "ResetType": reset_type })))
            .await?;
        Ok(Outcome::Changed)
    }

    /// Poll until the power state is `want` (`On`/`Off`) or the timeout passes.
    pub async fn wait_power_state(
        &self,
        d: &Discovery,
        want: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.power_state(d).await?;
            if s.as_deref() == Some(want) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::BmcBusy(format!(
                    "power state still {s:?} after {timeout:?}, wanted {want}"
                )));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Read a slot fresh (state and ETag).
    pub async fn read_slot(&self, path: &str) -> Result<Slot> {
        let f = self
            .forget_if_gone(self.get::<VirtualMedia>(path).await)
            .await?;
        Ok(Slot {
            path: path.to_string(),
            media: f.value,
            etag: f.etag,
            skipped: false,
        })
    }

    /// Attach `image` to the slot. No-op when that image is already in; ejects anything else first.
    pub async fn insert_media(&self, slot_path: &str, image: &str) -> Result<Outcome> {
        let mut slot = self.read_slot(slot_path).await?;
        if slot.media.is_inserted() && slot.media.current_image() == Some(image) {
            return Ok(Outcome::Unchanged);
        }
        if slot.media.is_inserted() || slot.media.current_image().is_some() {
            self.eject_slot(&slot).await?;
            if slot.insert_method() == InsertMethod::Patch {
                // The eject PATCH changed the ETag.
                slot = self.read_slot(slot_path).await?;
            }
        }
        let mut req = InsertMediaRequest {
            image: image.to_string(),
            ..Default::default()
        };
        match slot.media.insert_target().map(str::to_string) {
            Some(target) => {
                let first = self.send_post(&target, &Body::json(&req)).await?;
                if first.is_success() || first.status == 202 {
                    self.finish("POST", &target, first).await?;
                    return Ok(Outcome::Changed);
                }
                // Add only what the BMC asks for.
                let err: Option<crate::models::ErrorBody> =
                    serde_json::from_slice(&first.body).ok();
                let mut changed = false;
                if let Some(e) = &err
                    && (first.status == 400 || first.status == 422)
                {
                    if e.mentions("TransferProtocolType") {
                        req.transfer_protocol_type = Some(transfer_protocol(image));
                        changed = true;
                    }
                    if e.mentions("Inserted") || e.mentions("WriteProtected") {
                        req.inserted = Some(true);
                        req.write_protected = Some(true);
                        changed = true;
                    }
                }
                if !changed {
                    self.finish("POST", &target, first).await?;
                    return Ok(Outcome::Changed);
                }
                self.post(&target, &Body::json(&req)).await?;
                Ok(Outcome::Changed)
            }
            None if slot.insert_method() == InsertMethod::Patch => {
                self.patch(
                    slot_path,
                    &json!({ "Image": image, "Inserted": true }),
                    slot.etag.as_deref(),
                )
                .await?;
                Ok(Outcome::Changed)
            }
            None => Err(Error::NotSupported(format!(
                "{slot_path}: neither an InsertMedia action nor a writable Image"
            ))),
        }
    }

    /// Detach whatever is in the slot. No-op when empty.
    pub async fn eject_media(&self, slot_path: &str) -> Result<Outcome> {
        let slot = self.read_slot(slot_path).await?;
        if !slot.media.is_inserted() && slot.media.current_image().is_none() {
            return Ok(Outcome::Unchanged);
        }
        self.eject_slot(&slot).await?;
        Ok(Outcome::Changed)
    }

    async fn eject_slot(&self, slot: &Slot) -> Result<()> {
        match slot.media.eject_target().map(str::to_string) {
            Some(target) => {
                let first = self.send_post(&target, &Body::None).await?;
                if first.status == 400 || first.status == 415 {
                    // HPE wants a JSON body, even an empty one.
                    self.post(&target, &Body::Json(json!({}))).await?;
                } else {
                    self.finish("POST", &target, first).await?;
                }
            }
            None => {
                self.patch(
                    &slot.path,
                    &json!({ "Image": null, "Inserted": false }),
                    slot.etag.as_deref(),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn send_post(&self, path: &str, body: &Body) -> Result<crate::client::Response> {
        self.send(reqwest::Method::POST, path, body, None).await
    }

    /// One-time boot from the virtual CD. No-op when that override is already pending.
    pub async fn set_boot_once_cd(&self, d: &Discovery, mode: Option<BootMode>) -> Result<Outcome> {
        let plan = d.boot_override_plan(mode)?;
        let current = self
            .forget_if_gone(self.get::<SettingsResource>(&plan.patch_path).await)
            .await?;
        let boot = current.value.boot.clone().unwrap_or_default();
        if boot.target.as_deref() == Some(plan.target.as_str())
            && boot.enabled.as_deref() == Some("Once")
            && (plan.mode.is_none() || boot.mode == plan.mode)
        {
            return Ok(Outcome::Unchanged);
        }
        let mut b = serde_json::Map::new();
        b.insert("BootSourceOverrideTarget".into(), json!(plan.target));
        // Supermicro wants Enabled in every PATCH; everyone accepts it.
        b.insert("BootSourceOverrideEnabled".into(), json!("Once"));
        if let Some(m) = &plan.mode {
            b.insert("BootSourceOverrideMode".into(), json!(m));
        }
        self.patch(
            &plan.patch_path,
            &json!({ "Boot": Value::Object(b) }),
            current.etag.as_deref(),
        )
        .await?;
        Ok(Outcome::Changed)
    }
}

fn transfer_protocol(image: &str) -> String {
    let scheme = image.split("://").next().unwrap_or("http");
    match scheme.to_ascii_lowercase().as_str() {
        "https" => "HTTPS",
        "nfs" => "NFS",
        "cifs" | "smb" => "CIFS",
        "ftp" => "FTP",
        _ => "HTTP",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_type_choice() {
        let allowed: Vec<String> = ["ForceOn", "ForceOff", "ForceRestart"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            choose_reset_type(&allowed, &["On", "ForceOn"]).as_deref(),
            Some("ForceOn")
        );
        assert_eq!(
            choose_reset_type(&allowed, &["GracefulShutdown", "ForceOff"]).as_deref(),
            Some("ForceOff")
        );
        assert_eq!(choose_reset_type(&allowed, &["PowerCycle"]), None);
        assert_eq!(choose_reset_type(&[], &["On"]).as_deref(), Some("On"));
    }

    #[test]
    fn protocol_from_url() {
        assert_eq!(transfer_protocol("https://a/b.iso"), "HTTPS");
        assert_eq!(transfer_protocol("http://a/b.iso"), "HTTP");
    }
}

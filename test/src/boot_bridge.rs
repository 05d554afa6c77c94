//! The BMC-to-VM bridge: boots, in a real virtual machine, what the provider left in a BMC.
//!
//! After the provider has provisioned a host in the [`BmcLab`](crate::BmcLab), [`read_bmc`]
//! reads the emulator's state for that system over Redfish (its own small client on `reqwest`,
//! independent of the provider's): power, the boot override (target, enabled, mode) and every
//! virtual media slot (media types, inserted image URL). [`boot_from_bmc`] then downloads the
//! inserted images from their URLs with a plain HTTP GET, exactly as a BMC fetches them, and
//! boots them with [`crate::vm::boot`]: the image in the slot the one-time boot override points
//! at (the first CD/DVD slot) as the boot CD, a CD/DVD slot's image as a further CD, a
//! Floppy/USBStick slot's image as a USB stick; Legacy BIOS when the override's mode is Legacy,
//! UEFI otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::LabSystem;
use crate::vm::{self, BootOutput, Firmware, Medium, VmSpec};

/// One virtual media slot as the BMC shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// `@odata.id` of the slot.
    pub path: String,
    pub media_types: Vec<String>,
    pub image: Option<String>,
    pub inserted: Option<bool>,
}

impl SlotView {
    pub fn is_cd(&self) -> bool {
        self.media_types.iter().any(|t| t == "CD" || t == "DVD")
    }

    pub fn is_removable(&self) -> bool {
        self.media_types
            .iter()
            .any(|t| t == "USBStick" || t == "Floppy")
    }
}

/// What the BMC says about one system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmcView {
    pub power: Option<String>,
    pub boot_target: Option<String>,
    pub boot_enabled: Option<String>,
    pub boot_mode: Option<String>,
    pub slots: Vec<SlotView>,
}

impl BmcView {
    /// Slots holding an image.
    pub fn inserted(&self) -> impl Iterator<Item = &SlotView> {
        self.slots
            .iter()
            .filter(|s| s.image.is_some() && s.inserted != Some(false))
    }
}

fn http(ca_pem: &str) -> Result<reqwest::Client> {
    crate::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("lab CA")?;
    Ok(reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn get(c: &reqwest::Client, s: &LabSystem, path: &str) -> Result<Value> {
    let url = format!("{}{path}", s.address);
    let r = c
        .get(&url)
        .basic_auth(&s.username, Some(&s.password))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = r.status();
    if !status.is_success() {
        bail!(
            "GET {url}: {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    r.json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))
}

fn odata_ids(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["@odata.id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the emulator's view of one system: power, boot override and virtual media (under the
/// system first, then under its managers, as the provider looks for them).
pub async fn read_bmc(s: &LabSystem, ca_pem: &str) -> Result<BmcView> {
    let c = http(ca_pem)?;
    let sys = get(&c, s, &format!("/redfish/v1/Systems/{}", s.system_id)).await?;
    let boot = &sys["Boot"];
    let mut collections = Vec::new();
    if let Some(p) = sys["VirtualMedia"]["@odata.id"].as_str() {
        collections.push(p.to_string());
    }
    for m in odata_ids(&sys["Links"]["ManagedBy"]) {
        let mgr = get(&c, s, &m).await?;
        if let Some(p) = mgr["VirtualMedia"]["@odata.id"].as_str() {
            collections.push(p.to_string());
        }
    }
    let mut slots = Vec::new();
    for coll in collections {
        let Ok(list) = get(&c, s, &coll).await else {
            continue;
        };
        for member in odata_ids(&list["Members"]) {
            if slots.iter().any(|x: &SlotView| x.path == member) {
                continue;
            }
            let vm = get(&c, s, &member).await?;
            let image = vm["Image"]
                .as_str()
                .filter(|i| !i.is_empty())
                .map(str::to_string);
            slots.push(SlotView {
                path: member,
                media_types: vm["MediaTypes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                image,
                inserted: vm["Inserted"].as_bool(),
            });
        }
        if !slots.is_empty() {
            break;
        }
    }
    let text = |v: &Value| v.as_str().map(str::to_string);
    Ok(BmcView {
        power: text(&sys["PowerState"]),
        boot_target: text(&boot["BootSourceOverrideTarget"]),
        boot_enabled: text(&boot["BootSourceOverrideEnabled"]),
        boot_mode: text(&boot["BootSourceOverrideMode"]),
        slots,
    })
}

/// An image fetched from an inserted URL.
#[derive(Clone, Debug)]
pub struct Downloaded {
    pub url: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Slot media types.
    pub media_types: Vec<String>,
}

/// One bridged boot: what the BMC showed, what was downloaded, how the VM was set up and what
/// the guest printed.
#[derive(Clone, Debug)]
pub struct BridgedBoot {
    pub view: BmcView,
    pub boot_image: Downloaded,
    pub config_images: Vec<Downloaded>,
    pub firmware: Firmware,
    pub download_time: Duration,
    pub output: BootOutput,
}

async fn download(url: &str, to: &Path) -> Result<u64> {
    let r = reqwest::get(url)
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = r.status();
    if !status.is_success() {
        bail!("GET {url}: {status}");
    }
    let body = r
        .bytes()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    std::fs::write(to, &body).with_context(|| format!("write {}", to.display()))?;
    Ok(body.len() as u64)
}

/// Reads the BMC, downloads the inserted images into `work_dir` and boots them (see the module
/// docs). Fails when the BMC does not show a powered-on system with a one-time boot to its CD.
pub async fn boot_from_bmc(
    s: &LabSystem,
    ca_pem: &str,
    work_dir: &Path,
    timeout: Duration,
) -> Result<BridgedBoot> {
    let view = read_bmc(s, ca_pem).await?;
    if view.power.as_deref() != Some("On") {
        bail!(
            "{}: the BMC shows power {:?}, not On: nothing would boot; {view:?}",
            s.system_id,
            view.power
        );
    }
    if !matches!(view.boot_target.as_deref(), Some("Cd" | "UsbCd"))
        || view.boot_enabled.as_deref() == Some("Disabled")
    {
        bail!(
            "{}: the boot override does not point at the virtual CD: {view:?}",
            s.system_id
        );
    }
    let firmware = if view.boot_mode.as_deref() == Some("Legacy") {
        Firmware::Legacy
    } else {
        Firmware::Uefi
    };
    std::fs::create_dir_all(work_dir)?;
    let started = Instant::now();
    let mut boot_image = None;
    let mut config_images = Vec::new();
    let mut media = Vec::new();
    for (i, slot) in view.inserted().enumerate() {
        let url = slot.image.clone().unwrap_or_default();
        let name = url.rsplit('/').next().unwrap_or("image");
        let path = work_dir.join(format!("slot{i}-{name}"));
        let bytes = download(&url, &path).await?;
        let d = Downloaded {
            url,
            path: path.clone(),
            bytes,
            media_types: slot.media_types.clone(),
        };
        if boot_image.is_none() && slot.is_cd() {
            boot_image = Some(d);
        } else if slot.is_cd() {
            media.push(Medium::Cd(path));
            config_images.push(d);
        } else if slot.is_removable() {
            media.push(Medium::UsbStick(path));
            config_images.push(d);
        } else {
            bail!(
                "{}: slot {} has media types {:?}: cannot attach it",
                s.system_id,
                slot.path,
                slot.media_types
            );
        }
    }
    let download_time = started.elapsed();
    let boot_image =
        boot_image.with_context(|| format!("{}: no image in a CD slot: {view:?}", s.system_id))?;
    let mut spec = VmSpec::new(firmware, &boot_image.path, work_dir.join("vm"));
    spec.timeout = timeout;
    for m in media {
        spec = spec.with_volume(m);
    }
    let output = tokio::task::spawn_blocking(move || vm::boot(&spec))
        .await
        .context("boot task")??;
    Ok(BridgedBoot {
        view,
        boot_image,
        config_images,
        firmware,
        download_time,
        output,
    })
}

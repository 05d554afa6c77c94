//! systemd-boot EFI images (Talos >= 1.10 on UEFI): the kernel arguments reach the kernel through
//! a Type #1 loader entry that starts the UKI with `options` = its own `.cmdline` plus ours.
//!
//! Why this way (boot/UPSTREAM.md): systemd-stub uses a command line passed by the loader instead
//! of the UKI's `.cmdline` when Secure Boot is off, so the entry repeats the original arguments;
//! `default` in `loader.conf` selects the entry; the UKI's long name is changed so it is no longer
//! a Type #2 entry (an installed Talos leaves `LoaderEntryDefault=Talos-<v>.efi` in NVRAM, which
//! would otherwise select the UKI without our arguments). The UKI's bytes stay as they are.

use crate::fatfs::{FatEdit, FatFs};
use crate::patch::{ConfigFound, Loader, PatchError, fat_read_range};
use crate::pe;
use crate::source::ReadAt;

/// The loader entry the patch writes (its id is the file name, `default` names it).
pub const ENTRY_PATH: &str = "loader/entries/beskar7.conf";
pub const ENTRY_ID: &str = "beskar7.conf";
const LOADER_CONF: &str = "loader/loader.conf";
/// Appended to a UKI's long name so systemd-boot no longer lists it (`\EFI\Linux\*.efi`).
const HIDDEN_SUFFIX: &str = ".b7";

/// What patching one systemd-boot image gave.
pub(crate) struct SdBootResult {
    pub configs: Vec<ConfigFound>,
    /// UKIs whose boot carries the arguments.
    pub kernel_lines: usize,
    /// The arguments are passed as options (ignored under Secure Boot), not embedded.
    pub needs_secure_boot_off: bool,
}

struct Uki {
    /// Path as stored now (maybe already hidden by an earlier patch).
    path: String,
    /// Path without [`HIDDEN_SUFFIX`].
    name: String,
    cmdline: String,
    signed: bool,
    title: Option<String>,
}

fn map_fat(image: &str) -> impl Fn(crate::fatfs::FatError) -> PatchError + '_ {
    move |source| PatchError::Fat {
        image: image.to_string(),
        source,
    }
}

fn read_uki(
    fs: &FatFs,
    src: &dyn ReadAt,
    path: &str,
    image: &str,
) -> Result<Option<Uki>, PatchError> {
    let head = fat_read_range(fs, src, path, 0, pe::HEADER_BYTES as u64).map_err(map_fat(image))?;
    let Ok(img) = pe::parse(&head) else {
        return Ok(None);
    };
    if !img.is_uki() {
        return Ok(None);
    }
    let section = |name: &str| -> Result<Option<String>, PatchError> {
        let Some(s) = img.base_section(name) else {
            return Ok(None);
        };
        let bytes = fat_read_range(
            fs,
            src,
            path,
            s.raw_offset as u64,
            s.data_len().min(64 << 10) as u64,
        )
        .map_err(map_fat(image))?;
        Ok(Some(pe::section_text(&bytes)))
    };
    let cmdline = section(".cmdline")?.unwrap_or_default();
    let title = section(".osrel")?.and_then(|osrel| {
        osrel.lines().find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
    });
    let name = path.strip_suffix(HIDDEN_SUFFIX).unwrap_or(path).to_string();
    Ok(Some(Uki {
        path: path.to_string(),
        name,
        cmdline,
        signed: img.is_signed(),
        title,
    }))
}

/// The UKIs systemd-boot would list (and ones an earlier patch hid), newest name first.
fn ukis(fs: &FatFs, src: &dyn ReadAt, image: &str) -> Result<Vec<Uki>, PatchError> {
    let mut out = Vec::new();
    for e in fs.entries() {
        let p = crate::isofs::normalise(&e.path);
        let lower = p.to_ascii_lowercase();
        if e.is_dir
            || !lower.starts_with("/efi/linux/")
            || !(lower.ends_with(".efi") || lower.ends_with(&format!(".efi{HIDDEN_SUFFIX}")))
        {
            continue;
        }
        if let Some(u) = read_uki(fs, src, &p, image)? {
            out.push(u);
        }
    }
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// `loader.conf` with `default` naming our entry (other lines kept, line endings kept).
fn loader_conf(old: &str) -> String {
    let eol = if old.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::new();
    for line in old.split_inclusive('\n') {
        let key = line.split_whitespace().next().unwrap_or("");
        if key == "default" {
            continue;
        }
        out.push_str(line);
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push_str(eol);
    }
    out.push_str(&format!("default {ENTRY_ID}{eol}"));
    out
}

/// Adds the arguments to the boot of a systemd-boot image, in place (`edit`).
pub(crate) fn patch(
    fs: &FatFs,
    src: &dyn ReadAt,
    edit: &mut FatEdit,
    args: &[String],
    image: &str,
) -> Result<SdBootResult, PatchError> {
    if fs.lookup("loader/keys/auto").is_some() {
        return Err(PatchError::SecureBootImage(format!(
            "{image} is a Secure Boot image (systemd-boot enrols the keys in loader/keys/auto): its boot cannot carry extra kernel arguments; use an image that already has them (for Talos an Image Factory schematic with extraKernelArgs, e.g. talos.config=metal-iso with the config volume), or provisioningMode PreBakedISO"
        )));
    }
    let ukis = ukis(fs, src, image)?;
    let Some(uki) = ukis.first() else {
        return Ok(SdBootResult {
            configs: Vec::new(),
            kernel_lines: 0,
            needs_secure_boot_off: false,
        });
    };
    let words: Vec<&str> = uki.cmdline.split_whitespace().collect();
    let missing: Vec<&String> = args
        .iter()
        .filter(|a| !words.contains(&a.as_str()))
        .collect();
    let entry_path = format!("[{image}]/{ENTRY_PATH}");
    if missing.is_empty() && fs.lookup(ENTRY_PATH).is_none() {
        // The UKI's own command line has everything (e.g. baked in by Image Factory).
        return Ok(SdBootResult {
            configs: vec![ConfigFound {
                path: format!("[{image}]{}", uki.path),
                loader: Loader::SystemdBoot,
                kernel_lines: 1,
                rewritten: false,
            }],
            kernel_lines: 1,
            needs_secure_boot_off: false,
        });
    }
    if uki.signed {
        return Err(PatchError::SecureBootImage(format!(
            "{image}: the UKI {} is signed, and under Secure Boot systemd-stub ignores any command line but its own, which lacks {}: use an image whose UKI already carries the arguments (for Talos an Image Factory schematic with extraKernelArgs), or provisioningMode PreBakedISO",
            uki.name,
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    let mut options = uki.cmdline.clone();
    for a in &missing {
        options.push(' ');
        options.push_str(a);
    }
    let hidden = format!("{}{HIDDEN_SUFFIX}", uki.name);
    let title = uki
        .title
        .clone()
        .unwrap_or_else(|| uki.name.rsplit('/').next().unwrap_or("").to_string());
    let entry = format!(
        "# Written by Beskar7: the UKI's own command line plus the machine's arguments.\ntitle {title} (Beskar7)\nefi {hidden}\noptions {options}\n"
    );
    if options.contains('\n') || options.contains('\0') {
        return Err(PatchError::Unsupported(
            "kernel arguments must not contain line breaks".into(),
        ));
    }
    let old_entry = fs.read_file(src, ENTRY_PATH, 64 << 10).ok();
    let entry_changed = old_entry.as_deref() != Some(entry.as_bytes());
    if entry_changed {
        if fs.lookup("loader/entries").is_none() {
            edit.mkdir("loader/entries").map_err(map_fat(image))?;
        }
        edit.write_file(ENTRY_PATH, entry.as_bytes())
            .map_err(map_fat(image))?;
    }
    let old_conf = fs
        .read_file(src, LOADER_CONF, 64 << 10)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let new_conf = loader_conf(&old_conf);
    if new_conf != old_conf {
        if fs.lookup("loader").is_none() {
            edit.mkdir("loader").map_err(map_fat(image))?;
        }
        edit.write_file(LOADER_CONF, new_conf.as_bytes())
            .map_err(map_fat(image))?;
    }
    if uki.path != hidden {
        let new_name = hidden.rsplit('/').next().unwrap_or(&hidden).to_string();
        edit.rename(&uki.path, &new_name).map_err(map_fat(image))?;
    }
    Ok(SdBootResult {
        configs: vec![
            ConfigFound {
                path: entry_path,
                loader: Loader::SystemdBoot,
                kernel_lines: 1,
                rewritten: entry_changed,
            },
            ConfigFound {
                path: format!("[{image}]/{LOADER_CONF}"),
                loader: Loader::SystemdBoot,
                kernel_lines: 0,
                rewritten: new_conf != old_conf,
            },
        ],
        kernel_lines: 1,
        needs_secure_boot_off: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_conf_gets_our_default() {
        assert_eq!(
            loader_conf("# systemd-boot configuration\n\ntimeout 10\n\nsecure-boot-enroll off\n"),
            "# systemd-boot configuration\n\ntimeout 10\n\nsecure-boot-enroll off\ndefault beskar7.conf\n"
        );
        assert_eq!(
            loader_conf("timeout 3\r\ndefault talos-*.efi\r\n"),
            "timeout 3\r\ndefault beskar7.conf\r\n"
        );
        assert_eq!(loader_conf(""), "default beskar7.conf\n");
        assert_eq!(
            loader_conf("timeout 1"),
            "timeout 1\ndefault beskar7.conf\n"
        );
    }
}

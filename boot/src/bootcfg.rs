//! The bootloader configuration files a boot path really reads, found by following them from
//! the bootloader's own starting point, and their rewritten contents.
//!
//! - ISOLINUX looks for its config in `/boot/isolinux`, `/isolinux`, `/boot/syslinux`,
//!   `/syslinux` and `/` (`isolinux.cfg`, then `syslinux.cfg`), changes to that directory, and
//!   reads further files named by `INCLUDE`, `MENU INCLUDE` and `CONFIG` (relative names from the
//!   working directory). Debian's installer keeps `txt.cfg`, `adtxt.cfg` ... next to it; Flatcar's
//!   `isolinux.cfg` holds only `INCLUDE /syslinux/syslinux.cfg`.
//! - GRUB starts from a prefix built into its core image (`/boot/grub` for grub-mkrescue and
//!   Debian, `/boot/grub2` for kiwi and Kairos) or from a small config in the EFI image that
//!   searches for the ISO and `configfile`s the real one. Every `grub.cfg`/`loopback.cfg`, and every
//!   `.cfg` under a `grub`/`grub2` directory, is a starting point; `source` and `configfile`
//!   lead to more.

use std::collections::{BTreeSet, VecDeque};

use crate::isofs::normalise;
use crate::kargs::{
    ConfigKind, PatchedConfig, RewriteContext, append_kernel_args_with, parent_dir, scan_config,
};

/// Largest config file read.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most config files followed for one boot path (against include loops and hostile images).
const MAX_FILES: usize = 256;

/// A file system a boot path reads configs from: the ISO 9660 tree, or a FAT EFI image.
pub(crate) trait ConfigVolume {
    /// Paths of all regular files (`/a/b`), for finding starting points.
    fn paths(&self) -> Vec<String>;
    /// The file's contents, when it exists and is at most [`MAX_CONFIG_BYTES`].
    fn read(&self, path: &str) -> Option<Vec<u8>>;
    /// The canonical path of `path` on this volume (case as stored), when it exists.
    fn resolve(&self, path: &str) -> Option<String>;
}

/// Where a config file lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Place {
    /// On the ISO 9660 tree.
    Iso(String),
    /// In the FAT image of an EFI boot entry (index into the patch's EFI images).
    Esp(usize, String),
}

impl Place {
    pub(crate) fn display(&self, esp_names: &[String]) -> String {
        match self {
            Place::Iso(p) => p.clone(),
            Place::Esp(i, p) => format!("[{}]{p}", esp_names[*i]),
        }
    }
}

/// One config file of a boot path.
#[derive(Clone, Debug)]
pub(crate) struct ConfigFile {
    pub place: Place,
    pub kind: ConfigKind,
    pub data: Vec<u8>,
}

/// The config files of one bootloader, in the order found.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfigSet {
    pub files: Vec<ConfigFile>,
    /// References that could not be followed (a variable the files do not set; ISOLINUX: a
    /// missing file, which ISOLINUX reports as an error).
    pub unresolved: Vec<String>,
}

impl ConfigSet {
    fn contains(&self, place: &Place) -> bool {
        self.files.iter().any(|f| &f.place == place)
    }

    /// The context every file of the set is rewritten with.
    pub(crate) fn context(&self) -> RewriteContext {
        let mut ctx = RewriteContext::default();
        for f in &self.files {
            let s = scan_config(f.kind, &f.data);
            ctx.grub_kernel_vars.extend(s.kernel_vars);
            ctx.isolinux_global_append |= s.global_append;
        }
        ctx
    }

    /// Each file rewritten with `args`.
    pub(crate) fn rewrite(&self, args: &[String]) -> Vec<(Place, PatchedConfig)> {
        let ctx = self.context();
        self.files
            .iter()
            .map(|f| {
                (
                    f.place.clone(),
                    append_kernel_args_with(f.kind, &f.data, args, &ctx),
                )
            })
            .collect()
    }
}

/// Where ISOLINUX looks for its config, in order.
const ISOLINUX_DIRS: [&str; 5] = [
    "/boot/isolinux",
    "/isolinux",
    "/boot/syslinux",
    "/syslinux",
    "/",
];
const ISOLINUX_NAMES: [&str; 2] = ["isolinux.cfg", "syslinux.cfg"];

/// The ISOLINUX config and everything it includes. `loader_dir` is the directory of the
/// `isolinux.bin` the El Torito entry boots (searched first).
pub(crate) fn isolinux_configs(iso: &dyn ConfigVolume, loader_dir: Option<&str>) -> ConfigSet {
    let mut set = ConfigSet::default();
    let mut dirs: Vec<String> = loader_dir.map(normalise).into_iter().collect();
    dirs.extend(ISOLINUX_DIRS.iter().map(|d| d.to_string()));
    let root = dirs.iter().find_map(|d| {
        ISOLINUX_NAMES
            .iter()
            .find_map(|n| iso.resolve(&format!("{}/{n}", d.trim_end_matches('/'))))
    });
    let Some(root) = root else {
        return set;
    };
    let mut queue = VecDeque::from([(root.clone(), parent_dir(&root))]);
    let mut seen = BTreeSet::new();
    while let Some((path, cwd)) = queue.pop_front() {
        if !seen.insert(path.clone()) || set.files.len() >= MAX_FILES {
            continue;
        }
        let Some(data) = iso.read(&path) else {
            set.unresolved.push(path);
            continue;
        };
        for r in scan_config(ConfigKind::Isolinux, &data).references {
            let full = if r.path.starts_with('/') {
                r.path.clone()
            } else {
                format!("{}/{}", cwd.trim_end_matches('/'), r.path)
            };
            let next_cwd = match &r.new_directory {
                Some(d) if d.starts_with('/') => d.clone(),
                Some(d) if !d.is_empty() => format!("{}/{d}", cwd.trim_end_matches('/')),
                Some(_) => parent_dir(&normalise(&full)),
                None => cwd.clone(),
            };
            match iso.resolve(&full) {
                Some(p) => queue.push_back((p, normalise(&next_cwd))),
                None => set.unresolved.push(normalise(&full)),
            }
        }
        set.files.push(ConfigFile {
            place: Place::Iso(path),
            kind: ConfigKind::Isolinux,
            data,
        });
    }
    set
}

/// Whether a path is a GRUB config starting point.
pub(crate) fn is_grub_start(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').filter(|p| !p.is_empty()).collect();
    let Some(name) = parts.last() else {
        return false;
    };
    let dirs = &parts[..parts.len() - 1];
    *name == "grub.cfg"
        || *name == "loopback.cfg"
        || (name.ends_with(".cfg") && dirs.iter().any(|d| *d == "grub" || *d == "grub2"))
}

/// GRUB configs of the ISO tree and of the given EFI images (`(index, volume)`), followed
/// through `source`/`configfile`. A reference is looked up on the ISO first (the EFI image's
/// small config searches for the ISO and sets `root` to it), then on the volume it came from.
pub(crate) fn grub_configs(
    iso: &dyn ConfigVolume,
    esps: &[(usize, &dyn ConfigVolume)],
) -> ConfigSet {
    let mut set = ConfigSet::default();
    let mut queue: VecDeque<Place> = VecDeque::new();
    for p in iso.paths() {
        if is_grub_start(&p) {
            queue.push_back(Place::Iso(p));
        }
    }
    for (i, v) in esps {
        for p in v.paths() {
            if p.to_ascii_lowercase().ends_with("/grub.cfg") {
                queue.push_back(Place::Esp(*i, p));
            }
        }
    }
    let esp_of = |i: usize| esps.iter().find(|(k, _)| *k == i).map(|(_, v)| *v);
    let mut unresolved = BTreeSet::new();
    while let Some(place) = queue.pop_front() {
        if set.contains(&place) || set.files.len() >= MAX_FILES {
            continue;
        }
        let data = match &place {
            Place::Iso(p) => iso.read(p),
            Place::Esp(i, p) => esp_of(*i).and_then(|v| v.read(p)),
        };
        let Some(data) = data else {
            continue;
        };
        for r in scan_config(ConfigKind::Grub, &data).references {
            if r.path.contains('$') {
                unresolved.insert(r.path);
                continue;
            }
            let target = iso
                .resolve(&r.path)
                .map(Place::Iso)
                .or_else(|| match &place {
                    Place::Esp(i, _) => esp_of(*i)
                        .and_then(|v| v.resolve(&r.path))
                        .map(|p| Place::Esp(*i, p)),
                    Place::Iso(_) => None,
                });
            // A file that is not there is no boot path either (kiwi sources
            // `/.snapshots/grub-snapshot.cfg` only `if [ -f ... ]`).
            if let Some(t) = target {
                queue.push_back(t);
            }
        }
        set.files.push(ConfigFile {
            place,
            kind: ConfigKind::Grub,
            data,
        });
    }
    set.unresolved = unresolved.into_iter().collect();
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A [`ConfigVolume`] over files held in memory.
    #[derive(Default)]
    struct MemVolume(BTreeMap<String, Vec<u8>>);

    impl ConfigVolume for MemVolume {
        fn paths(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn read(&self, path: &str) -> Option<Vec<u8>> {
            self.resolve(path).and_then(|p| self.0.get(&p).cloned())
        }
        fn resolve(&self, path: &str) -> Option<String> {
            let p = normalise(path);
            if self.0.contains_key(&p) {
                return Some(p);
            }
            self.0.keys().find(|k| k.eq_ignore_ascii_case(&p)).cloned()
        }
    }

    fn vol(files: &[(&str, &str)]) -> MemVolume {
        MemVolume(
            files
                .iter()
                .map(|(p, d)| (p.to_string(), d.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn isolinux_follows_includes_from_the_config_directory() {
        // Debian mini.iso: everything at the root; Flatcar: isolinux.cfg includes another dir.
        let iso = vol(&[
            ("/isolinux.cfg", "include menu.cfg\ndefault vesamenu.c32\n"),
            (
                "/menu.cfg",
                "menu hshift 7\ninclude txt.cfg\nmenu begin advanced\n  include adtxt.cfg\nmenu end\nlabel help\n  config prompt.cfg\n",
            ),
            (
                "/txt.cfg",
                "label install\n\tkernel linux\n\tappend vga=788 initrd=initrd.gz --- quiet\n",
            ),
            (
                "/adtxt.cfg",
                "label expert\n\tkernel linux\n\tappend priority=low vga=788 initrd=initrd.gz ---\ninclude rqtxt.cfg\n",
            ),
            (
                "/rqtxt.cfg",
                "label rescue\n\tkernel linux\n\tappend vga=788 initrd=initrd.gz rescue/enable=true --- quiet\n",
            ),
            ("/prompt.cfg", "include menu.cfg\ndefault install\n"),
            ("/unrelated.cfg", "label x\n kernel /k\n append a\n"),
        ]);
        let set = isolinux_configs(&iso, Some("/"));
        let names: Vec<String> = set.files.iter().map(|f| f.place.display(&[])).collect();
        assert_eq!(
            names,
            vec![
                "/isolinux.cfg",
                "/menu.cfg",
                "/txt.cfg",
                "/adtxt.cfg",
                "/prompt.cfg",
                "/rqtxt.cfg"
            ]
        );
        let out = set.rewrite(&["a=1".into()]);
        let lines: usize = out.iter().map(|(_, p)| p.kernel_lines).sum();
        assert_eq!(lines, 3);

        let flatcar = vol(&[
            ("/isolinux/isolinux.cfg", "INCLUDE /syslinux/syslinux.cfg\n"),
            (
                "/syslinux/syslinux.cfg",
                "default flatcar\nlabel flatcar\n  kernel /flatcar/vmlinuz\n  append initrd=/flatcar/cpio.gz flatcar.autologin\n",
            ),
        ]);
        let set = isolinux_configs(&flatcar, Some("/isolinux"));
        assert_eq!(set.files.len(), 2);
        assert!(set.unresolved.is_empty());
    }

    #[test]
    fn grub_follows_the_efi_chain_to_the_iso() {
        // Kairos/kiwi: the EFI image's grub.cfg searches the ISO and configfiles the real one.
        let iso = vol(&[
            (
                "/boot/grub2/grub.cfg",
                "set linux=linux\nif [ \"${grub_platform}\" = \"efi\" ]; then set linux=linuxefi; fi\nmenuentry k {\n $linux ($root)/boot/kernel cdroot\n}\nsource /boot/grub2/extra.cfg\n",
            ),
            (
                "/boot/grub2/extra.cfg",
                "menuentry r {\n $linux ($root)/boot/kernel recovery\n}\n",
            ),
            ("/boot/kernel", "k"),
        ]);
        let esp = vol(&[(
            "/EFI/BOOT/grub.cfg",
            "search --no-floppy --file --set=root /boot/kernel\nset prefix=($root)/boot/grub2\nconfigfile $prefix/grub.cfg\n",
        )]);
        let set = grub_configs(&iso, &[(0, &esp)]);
        assert_eq!(set.files.len(), 3, "{:?}", set.files);
        assert!(set.unresolved.is_empty(), "{:?}", set.unresolved);
        let out = set.rewrite(&["config_url=u".into()]);
        let total: usize = out.iter().map(|(_, p)| p.kernel_lines).sum();
        assert_eq!(
            total, 2,
            "the variable set in grub.cfg counts in extra.cfg too"
        );
    }
}

//! Our UEFI loader and its boot entry, for the EFI system partition the provider adds to ISOs that
//! boot only in BIOS mode (Flatcar: ISOLINUX is its only El Torito entry).
//!
//! [`LOADER_X64`] is `boot/efi-loader/loader.rs`, a dependency-free `#![no_std]` UEFI application
//! built by `boot/build.rs` for `x86_64-unknown-uefi`. Placed at [`LOADER_PATH`] it reads
//! [`CONFIG_PATH`] of the same volume (written by [`LoaderEntry::render`]) and starts the Linux
//! EFI-stub kernel named there, with the options and `initrd=` arguments for the initrds.

use thiserror::Error;

/// The loader as a PE32+ EFI application for x86-64.
pub const LOADER_X64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/beskar7-loader-x64.efi"));

/// Where the loader reads its boot entry, relative to the root of its volume.
pub const CONFIG_PATH: &str = "EFI/beskar7/boot.conf";

/// The removable-media boot path of x86-64 UEFI, which firmware boots without a boot entry.
pub const LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// The loader refuses longer boot entries.
pub const CONFIG_MAX: usize = 64 * 1024;

/// What the loader boots: a subset of the Boot Loader Specification's Type #1 entry keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderEntry {
    /// The kernel (an EFI-stub bzImage), absolute on the loader's volume, e.g. `/flatcar/vmlinuz`.
    pub linux: String,
    /// Initrds on the same volume, passed in this order as `initrd=\...`.
    pub initrds: Vec<String>,
    /// The kernel command line, without the `initrd=` arguments.
    pub options: String,
}

/// Why a [`LoaderEntry`] cannot be rendered. Never quotes the options: they carry secrets.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoaderEntryError {
    #[error(
        "{key} path {path:?}: must be absolute on the EFI partition ('/' or '\\' separated) \
         and use printable ASCII without spaces or any of \" * ? < > | :"
    )]
    BadPath { key: &'static str, path: String },
    #[error(
        "the kernel options contain a control character (line break, NUL ...) or a character beyond U+FFFF"
    )]
    BadOptions,
    #[error("the boot entry is {0} bytes, more than the loader reads ({CONFIG_MAX})")]
    TooLarge(usize),
}

impl LoaderEntry {
    /// The content of [`CONFIG_PATH`].
    pub fn render(&self) -> Result<Vec<u8>, LoaderEntryError> {
        check_path("linux", &self.linux)?;
        for initrd in &self.initrds {
            check_path("initrd", initrd)?;
        }
        // The loader passes tabs and any character UCS-2 can hold; a line break or NUL would cut
        // the options short, other control characters have no place on a command line.
        if self
            .options
            .chars()
            .any(|c| (c.is_control() && c != '\t') || u32::from(c) > 0xffff)
        {
            return Err(LoaderEntryError::BadOptions);
        }
        let mut text = String::from(
            "# Boot entry of the beskar7 UEFI loader (Boot Loader Specification keys)\n",
        );
        text.push_str(&format!("linux {}\n", self.linux));
        for initrd in &self.initrds {
            text.push_str(&format!("initrd {initrd}\n"));
        }
        if !self.options.trim().is_empty() {
            text.push_str(&format!("options {}\n", self.options.trim()));
        }
        if text.len() > CONFIG_MAX {
            return Err(LoaderEntryError::TooLarge(text.len()));
        }
        Ok(text.into_bytes())
    }
}

/// Paths the loader and the kernel's `initrd=` parsing take as they are: absolute, non-empty
/// components, no blanks or quotes (the command line splits on them), no characters FAT refuses.
fn check_path(key: &'static str, path: &str) -> Result<(), LoaderEntryError> {
    let bad = || LoaderEntryError::BadPath {
        key,
        path: path.to_string(),
    };
    let rest = path.strip_prefix(['/', '\\']).ok_or_else(bad)?;
    let components_ok = rest.split(['/', '\\']).all(|component| {
        !component.is_empty()
            && component
                .chars()
                .all(|c| c.is_ascii_graphic() && !"\"*?<>|:".contains(c))
    });
    if components_ok { Ok(()) } else { Err(bad()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatcar() -> LoaderEntry {
        LoaderEntry {
            linux: "/flatcar/vmlinuz".into(),
            initrds: vec!["/flatcar/cpio.gz".into()],
            options: "flatcar.first_boot=1 ignition.config.url=http://10.0.0.1/t/abc".into(),
        }
    }

    /// What the loader makes of a boot entry, following the rules of `efi-loader/loader.rs`
    /// (the QEMU test in tests/efi_loader.rs checks the loader itself): (kernel, command line).
    fn as_the_loader_reads(text: &str) -> (String, String) {
        let entries: Vec<(&str, &str)> = text
            .split('\n')
            .map(|l| l.trim_ascii())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once([' ', '\t']).unwrap_or((l, ""));
                (k, v.trim_ascii_start())
            })
            .collect();
        let values = |key| {
            entries
                .iter()
                .filter(move |(k, _)| *k == key)
                .map(|(_, v)| *v)
        };
        let backslashes = |p: &str| p.replace('/', "\\");
        let linux: Vec<_> = values("linux").collect();
        assert_eq!(linux.len(), 1, "exactly one linux line");
        let mut cmdline: Vec<String> = values("options")
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        cmdline.extend(values("initrd").map(|p| format!("initrd={}", backslashes(p))));
        (backslashes(linux[0]), cmdline.join(" "))
    }

    #[test]
    fn loader_is_an_x86_64_efi_application() {
        let pe = LOADER_X64;
        assert_eq!(&pe[..2], b"MZ");
        let at = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
        assert_eq!(&pe[at..at + 4], b"PE\0\0");
        let machine = u16::from_le_bytes([pe[at + 4], pe[at + 5]]);
        assert_eq!(machine, 0x8664, "IMAGE_FILE_MACHINE_AMD64");
        let optional = at + 24;
        assert_eq!(
            u16::from_le_bytes([pe[optional], pe[optional + 1]]),
            0x20b,
            "PE32+"
        );
        let subsystem = u16::from_le_bytes([pe[optional + 68], pe[optional + 69]]);
        assert_eq!(subsystem, 10, "IMAGE_SUBSYSTEM_EFI_APPLICATION");
        assert!(pe.len() < 20 * 1024, "loader grew to {} bytes", pe.len());
    }

    /// Every core panic carries its source location (`.../core/src/....rs`): none in the image
    /// means no code path can reach the panic handler.
    #[test]
    fn loader_has_no_panic_paths() {
        assert!(
            !LOADER_X64.windows(3).any(|w| w == b".rs"),
            "the loader can panic: a `.rs` location is in the image"
        );
    }

    #[test]
    fn rendered_entry_reads_back_as_the_loader_reads_it() {
        let mut entry = flatcar();
        entry.initrds.push("\\flatcar/oem.cpio".into());
        let text = String::from_utf8(entry.render().unwrap()).unwrap();
        assert_eq!(
            text,
            "# Boot entry of the beskar7 UEFI loader (Boot Loader Specification keys)\n\
             linux /flatcar/vmlinuz\n\
             initrd /flatcar/cpio.gz\n\
             initrd \\flatcar/oem.cpio\n\
             options flatcar.first_boot=1 ignition.config.url=http://10.0.0.1/t/abc\n"
        );
        let (kernel, cmdline) = as_the_loader_reads(&text);
        assert_eq!(kernel, "\\flatcar\\vmlinuz");
        assert_eq!(
            cmdline,
            "flatcar.first_boot=1 ignition.config.url=http://10.0.0.1/t/abc \
             initrd=\\flatcar\\cpio.gz initrd=\\flatcar\\oem.cpio"
        );
    }

    #[test]
    fn entry_without_options_or_initrds() {
        let entry = LoaderEntry {
            options: " ".into(),
            initrds: vec![],
            ..flatcar()
        };
        let text = String::from_utf8(entry.render().unwrap()).unwrap();
        assert!(!text.contains("options"), "{text}");
        assert_eq!(
            as_the_loader_reads(&text),
            ("\\flatcar\\vmlinuz".into(), String::new())
        );
    }

    #[test]
    fn refuses_paths_the_loader_cannot_pass() {
        for bad in [
            "",
            "/",
            "flatcar/vmlinuz",
            "/flatcar//vmlinuz",
            "/flatcar/",
            "/flat car/vmlinuz",
            "/flatcar/vm\"linuz",
            "/flatcar/vmlinuz\t",
            "/flatcar/vmlinüz",
            "C:/vmlinuz",
        ] {
            let entry = LoaderEntry {
                linux: bad.into(),
                ..flatcar()
            };
            assert!(
                matches!(
                    entry.render(),
                    Err(LoaderEntryError::BadPath { key: "linux", .. })
                ),
                "{bad:?}"
            );
            let entry = LoaderEntry {
                initrds: vec![bad.into()],
                ..flatcar()
            };
            assert!(
                matches!(
                    entry.render(),
                    Err(LoaderEntryError::BadPath { key: "initrd", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_options_that_would_break_the_entry() {
        for bad in [
            "a\nlinux /evil",
            "a\rb",
            "a\0b",
            "a\u{1b}b",
            "emoji \u{1f600}",
        ] {
            let entry = LoaderEntry {
                options: bad.into(),
                ..flatcar()
            };
            let err = entry.render().unwrap_err();
            assert_eq!(err, LoaderEntryError::BadOptions, "{bad:?}");
            assert!(
                !err.to_string().contains(bad),
                "the error must not quote the options"
            );
        }
        let tabs_and_unicode = LoaderEntry {
            options: "a\tb café".into(),
            ..flatcar()
        };
        assert!(tabs_and_unicode.render().is_ok());
    }

    #[test]
    fn refuses_entries_the_loader_would_not_read() {
        let entry = LoaderEntry {
            options: "x".repeat(CONFIG_MAX),
            ..flatcar()
        };
        assert!(matches!(entry.render(), Err(LoaderEntryError::TooLarge(_))));
    }
}

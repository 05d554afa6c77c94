//! A UEFI boot path for an image that boots only with ISOLINUX (Flatcar's ISO: BIOS only, see
//! boot/UPSTREAM.md): a new FAT EFI system partition, appended after the image, holding Beskar7's
//! loader ([`crate::efi_loader`]) as the removable-media boot file, its `boot.conf`, and the
//! kernel and initrds of ISOLINUX's default label. Their data is the ISO's own files: the new
//! partition references the source image's bytes, so nothing large is held in memory.

use std::collections::BTreeMap;

use crate::bootcfg::{ConfigSet, ConfigVolume};
use crate::efi_loader::{self, LoaderEntry};
use crate::fatfs::{FatEdit, FatFs, FatImage, FileData, NewFile, Piece, build_fat_pieces};
use crate::isofs::{IsoFile, IsoFs, normalise};
use crate::kargs::parent_dir;
use crate::patch::{ConfigFound, Loader, PatchError, TailPiece};
use crate::source::ReadAt;

/// Volume label of the added partition.
const LABEL: &str = "BESKAR7EFI";

/// What ISOLINUX's default label boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IsolinuxBoot {
    pub label: String,
    pub kernel: String,
    pub initrds: Vec<String>,
    /// The label's arguments without `initrd=` (the loader passes those itself).
    pub options: Vec<String>,
}

#[derive(Default)]
struct LabelDef {
    name: String,
    kernel: Option<String>,
    append: Option<String>,
    initrd: Option<String>,
}

/// Reads the labels of the ISOLINUX configs (in the order they are included) and returns the
/// one that boots by default: `DEFAULT`/`ONTIMEOUT` naming a label, else the first that boots
/// a Linux kernel.
pub(crate) fn default_label(
    set: &ConfigSet,
    _iso: &dyn ConfigVolume,
) -> Result<Option<IsolinuxBoot>, PatchError> {
    let mut labels: Vec<LabelDef> = Vec::new();
    let mut global_append: Option<String> = None;
    let mut default: Option<String> = None;
    let mut cwd = String::from("/");
    for (i, f) in set.files.iter().enumerate() {
        if i == 0
            && let crate::bootcfg::Place::Iso(p) = &f.place
        {
            cwd = parent_dir(p);
        }
        let text = String::from_utf8_lossy(&f.data);
        let mut in_label = false;
        for line in text.lines() {
            let line = line.trim();
            let (kw, rest) = match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k.to_ascii_lowercase(), r.trim()),
                None => (line.to_ascii_lowercase(), ""),
            };
            match kw.as_str() {
                "label" => {
                    in_label = true;
                    labels.push(LabelDef {
                        name: rest.to_string(),
                        ..Default::default()
                    });
                }
                "kernel" | "linux" if in_label => {
                    labels.last_mut().unwrap().kernel =
                        rest.split_whitespace().next().map(str::to_string);
                }
                "append" if in_label => labels.last_mut().unwrap().append = Some(rest.to_string()),
                "append" => global_append = Some(rest.to_string()),
                "initrd" if in_label => labels.last_mut().unwrap().initrd = Some(rest.to_string()),
                "default" | "ontimeout" if default.is_none() && !rest.is_empty() => {
                    default = rest.split_whitespace().next().map(str::to_string);
                }
                _ => {}
            }
        }
    }
    let boots_linux = |l: &LabelDef| {
        l.kernel.as_deref().is_some_and(|k| {
            let k = k.to_ascii_lowercase();
            ![".c32", ".com", ".cbt", ".bs", ".bss", ".0", ".bin"]
                .iter()
                .any(|e| k.ends_with(e))
        })
    };
    let chosen = default
        .as_deref()
        .and_then(|d| labels.iter().find(|l| l.name.eq_ignore_ascii_case(d)))
        .filter(|l| boots_linux(l))
        .or_else(|| labels.iter().find(|l| boots_linux(l)));
    let Some(l) = chosen else {
        return Ok(None);
    };
    let abs = |p: &str| {
        if p.starts_with('/') {
            normalise(p)
        } else {
            normalise(&format!("{cwd}/{p}"))
        }
    };
    let append = match l.append.as_deref().or(global_append.as_deref()) {
        Some("-") | None => "",
        Some(a) => a,
    };
    let mut initrds: Vec<String> = l
        .initrd
        .iter()
        .flat_map(|i| i.split(','))
        .map(|p| abs(p.trim()))
        .collect();
    let mut options = Vec::new();
    for w in append.split_whitespace() {
        match w.strip_prefix("initrd=") {
            Some(list) => initrds.extend(list.split(',').map(|p| abs(p.trim()))),
            None => options.push(w.to_string()),
        }
    }
    Ok(Some(IsolinuxBoot {
        label: l.name.clone(),
        kernel: abs(l.kernel.as_deref().unwrap_or_default()),
        initrds,
        options,
    }))
}

/// The added partition: its FAT image, and where each external file's data is in the source.
pub(crate) struct NewEsp {
    image: FatImage,
    sources: Vec<u64>,
}

impl NewEsp {
    pub(crate) fn len(&self) -> u64 {
        self.image.len
    }

    /// Its pieces in the tail of the patched image, from absolute offset `at`.
    pub(crate) fn place(&self, at: u64, tail: &mut BTreeMap<u64, TailPiece>) {
        let mut pos = at;
        for p in &self.image.pieces {
            let (piece, n) = match p {
                Piece::Bytes(b) => (TailPiece::Bytes(b.clone()), b.len() as u64),
                Piece::Zeros(n) => (TailPiece::Zeros(*n), *n),
                Piece::External {
                    id,
                    offset_in_file,
                    len,
                } => (
                    TailPiece::Source {
                        offset: self.sources[*id] + offset_in_file,
                        len: *len,
                    },
                    *len,
                ),
            };
            if n > 0 && !matches!(piece, TailPiece::Zeros(_)) {
                tail.insert(pos, piece);
            }
            pos += n;
        }
    }
}

fn loader_options(boot: &IsolinuxBoot, args: &[String]) -> String {
    let mut words = boot.options.clone();
    for a in args {
        if !words.contains(a) {
            words.push(a.clone());
        }
    }
    words.join(" ")
}

/// Builds the partition for `boot` with `args` added to its arguments.
pub(crate) fn build(
    boot: &IsolinuxBoot,
    files: &BTreeMap<String, IsoFile>,
    args: &[String],
) -> Result<NewEsp, PatchError> {
    let find = |p: &str| {
        IsoFs::lookup(files, p).cloned().ok_or_else(|| {
            PatchError::Unsupported(format!(
                "ISOLINUX label {:?} boots {p}, which is not in the ISO tree",
                boot.label
            ))
        })
    };
    let kernel = find(&boot.kernel)?;
    let initrds = boot
        .initrds
        .iter()
        .map(|p| find(p))
        .collect::<Result<Vec<_>, _>>()?;
    let entry = LoaderEntry {
        linux: kernel.path.clone(),
        initrds: initrds.iter().map(|f| f.path.clone()).collect(),
        options: loader_options(boot, args),
    };
    let conf = entry
        .render()
        .map_err(|e| PatchError::Unsupported(format!("the loader entry: {e}")))?;
    let mut new_files = vec![
        NewFile {
            path: efi_loader::LOADER_PATH.into(),
            data: FileData::Bytes(efi_loader::LOADER_X64.to_vec()),
        },
        NewFile {
            path: efi_loader::CONFIG_PATH.into(),
            data: FileData::Bytes(conf),
        },
    ];
    let mut sources = Vec::new();
    for f in std::iter::once(&kernel).chain(&initrds) {
        new_files.push(NewFile {
            path: f.path.trim_start_matches('/').to_string(),
            data: FileData::External {
                id: sources.len(),
                len: f.size as u64,
            },
        });
        sources.push(f.offset);
    }
    let image = build_fat_pieces(LABEL, &new_files).map_err(|source| PatchError::Fat {
        image: "the added EFI system partition".into(),
        source,
    })?;
    Ok(NewEsp { image, sources })
}

/// An image this patch gave a UEFI path before: the arguments go into its `boot.conf`.
pub(crate) fn repatch(
    fs: &FatFs,
    src: &dyn ReadAt,
    edit: &mut FatEdit,
    args: &[String],
    image: &str,
) -> Result<crate::sdboot::SdBootResult, PatchError> {
    let fat = |source| PatchError::Fat {
        image: image.to_string(),
        source,
    };
    let old = fs
        .read_file(src, efi_loader::CONFIG_PATH, 64 << 10)
        .map_err(fat)?;
    let text = String::from_utf8_lossy(&old);
    let mut out = String::new();
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let eol = &line[body.len()..];
        match body.strip_prefix("options") {
            Some(rest) if !changed => {
                let mut words: Vec<&str> = rest.split_whitespace().collect();
                for a in args {
                    if !words.contains(&a.as_str()) {
                        words.push(a);
                    }
                }
                out.push_str(&format!("options {}{eol}", words.join(" ")));
                changed = true;
            }
            _ => out.push_str(line),
        }
    }
    if !changed {
        out.push_str(&format!("options {}\n", args.join(" ")));
    }
    let rewritten = out.as_bytes() != old.as_slice();
    if rewritten {
        edit.write_file(efi_loader::CONFIG_PATH, out.as_bytes())
            .map_err(fat)?;
    }
    Ok(crate::sdboot::SdBootResult {
        configs: vec![ConfigFound {
            path: format!("[{image}]/{}", efi_loader::CONFIG_PATH),
            loader: Loader::Beskar7,
            kernel_lines: 1,
            rewritten,
        }],
        kernel_lines: 1,
        needs_secure_boot_off: true,
    })
}

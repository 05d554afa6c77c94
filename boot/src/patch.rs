//! Kernel-argument patching of OS ISO images, described as the original bytes plus replaced
//! ranges plus pieces appended after the end, readable at any offset without holding the image.
//!
//! What a patch does (facts behind each step: boot/UPSTREAM.md):
//! 1. Reads the image's structures: every ISO 9660 descriptor set and tree ([`crate::isofs`]),
//!    the El Torito catalog, the MBR and GPT ([`crate::partition`]), and the FAT file system of
//!    each El Torito UEFI image ([`crate::fatfs`]), whether a file of the ISO tree or a partition
//!    appended outside it.
//! 2. Finds each boot path the image has (BIOS: ISOLINUX or GRUB; UEFI: GRUB, systemd-boot or
//!    Beskar7's own loader) and the config files each really reads ([`crate::bootcfg`]).
//! 3. Puts the arguments on every kernel line of those files: files of the ISO tree get new
//!    extents (in unused zero blocks inside the ISO volume when there are enough, else after the
//!    end, padded to a 32 KiB boundary plus 300 KiB as xorriso does); files inside a FAT image are
//!    edited in place there. systemd-boot gets a loader entry ([`crate::sdboot`]).
//! 4. Re-points every directory record of every tree at the new extents, updates volume sizes,
//!    moves the backup GPT to the new end and extends the partitions that covered the old one.
//! 5. Optionally adds a UEFI path to an image that has only ISOLINUX ([`crate::uefi_add`]).
//!
//! A boot path the image has whose configs carry no kernel line is an error, never a silent
//! success, and so is an image whose boot cannot carry new arguments (Secure Boot).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::sync::Arc;

use crate::bootcfg::{self, ConfigSet, ConfigVolume, Place};
use crate::eltorito::{self, Catalog, Platform};
use crate::fatfs::{FatEdit, FatError, FatFs};
use crate::iso9660::both32;
use crate::isofs::{IsoError, IsoFile, IsoFs, SECTOR_U64, normalise, read_vec};
use crate::kargs::ConfigKind;
use crate::partition::{PartitionError, PartitionTables};
use crate::pe;
use crate::source::ReadAt;

/// The image ends on this boundary when it grows (GRUB reads CDs in 32 KiB blocks) ...
const END_ALIGN: u64 = 32 << 10;
/// ... after at least this much padding, as xorriso pads by default.
const END_PADDING: u64 = 300 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("reading the image: {0}")]
    Io(#[from] io::Error),
    #[error("not an ISO 9660 image: {0}")]
    NotIso(String),
    #[error("the image's partition table: {0}")]
    Partition(#[from] PartitionError),
    #[error("the EFI image {image}: {source}")]
    Fat {
        image: String,
        #[source]
        source: FatError,
    },
    #[error(
        "no bootloader configuration found in the ISO (looked for GRUB grub.cfg, ISOLINUX/SYSLINUX *.cfg and systemd-boot loader entries)"
    )]
    NoBootloaderConfig,
    #[error(
        "the {path} boot path has no kernel line to carry the arguments (read {files}); the image would boot without them"
    )]
    NoKernelLine { path: String, files: String },
    #[error(
        "the {path} boot path uses a loader the patch does not know ({what}): it cannot be given kernel arguments"
    )]
    UnknownLoader { path: String, what: String },
    #[error("{0}")]
    SecureBootImage(String),
    #[error("no kernel arguments given")]
    NoArgs,
    #[error("{0}")]
    Unsupported(String),
}

impl From<IsoError> for PatchError {
    fn from(e: IsoError) -> Self {
        match e {
            IsoError::Io(e) => Self::Io(e),
            IsoError::NotIso(s) => Self::NotIso(s),
        }
    }
}

/// The bootloader a config belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    Grub,
    Isolinux,
    SystemdBoot,
    /// Beskar7's own UEFI loader, added by [`PatchOptions::add_uefi_path`].
    Beskar7,
}

impl From<ConfigKind> for Loader {
    fn from(k: ConfigKind) -> Self {
        match k {
            ConfigKind::Grub => Self::Grub,
            ConfigKind::Isolinux => Self::Isolinux,
        }
    }
}

/// Firmware of a boot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// One bootloader config found in the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigFound {
    pub path: String,
    pub loader: Loader,
    pub kernel_lines: usize,
    /// True when the file was rewritten (false when every line already had the arguments).
    pub rewritten: bool,
}

/// One way the image boots, and how many kernel lines on it carry the arguments.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BootPath {
    pub firmware: Firmware,
    pub loader: Loader,
    /// What the El Torito entry boots (a file of the ISO tree, or an image outside it).
    pub image: String,
    pub kernel_lines: usize,
    /// The patch created this path.
    pub added: bool,
    /// The arguments reach the kernel on this path only with Secure Boot off: Beskar7's loader
    /// is not signed, and systemd-stub ignores options passed to a UKI under Secure Boot.
    pub needs_secure_boot_off: bool,
}

/// What to do to an image.
#[derive(Clone, Debug, Default)]
pub struct PatchOptions {
    pub kernel_args: Vec<String>,
    /// Give an image whose only boot path is ISOLINUX (Flatcar) a UEFI path with Beskar7's
    /// loader, booting the same kernel, initrd and arguments.
    pub add_uefi_path: bool,
}

/// Bytes of the patched image after the end of the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailPiece {
    Bytes(Vec<u8>),
    Zeros(u64),
    /// A range of the source image (e.g. a kernel file referenced by a new FAT image).
    Source {
        offset: u64,
        len: u64,
    },
}

impl TailPiece {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Zeros(n) => *n,
            Self::Source { len, .. } => *len,
        }
    }
}

/// Where a run of bytes of the patched image comes from ([`IsoPatch::pieces`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// `len` bytes of the source from `offset`.
    Source {
        offset: u64,
        len: u64,
    },
    /// Bytes the patch holds.
    Bytes(&'a [u8]),
    Zeros(u64),
}

impl Piece<'_> {
    pub fn len(&self) -> u64 {
        match self {
            Self::Source { len, .. } | Self::Zeros(len) => *len,
            Self::Bytes(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the patched image differs from the source.
#[derive(Clone, Debug)]
pub struct IsoPatch {
    source_len: u64,
    len: u64,
    /// Replaced ranges inside the source, sorted and disjoint.
    replaced: Vec<(u64, Vec<u8>)>,
    /// After the end of the source: (absolute offset, piece), contiguous up to `len`.
    tail: Vec<(u64, TailPiece)>,
    configs: Vec<ConfigFound>,
    boot_paths: Vec<BootPath>,
    warnings: Vec<String>,
}

impl IsoPatch {
    /// Length of the patched image.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the source it applies to.
    pub fn source_len(&self) -> u64 {
        self.source_len
    }

    /// True when the patched image equals the source.
    pub fn is_identity(&self) -> bool {
        self.replaced.is_empty() && self.tail.is_empty()
    }

    /// The bootloader configs found and whether they were rewritten.
    pub fn configs(&self) -> &[ConfigFound] {
        &self.configs
    }

    /// The image's boot paths after the patch.
    pub fn boot_paths(&self) -> &[BootPath] {
        &self.boot_paths
    }

    /// Whether some UEFI path carries the arguments only with Secure Boot off.
    pub fn uefi_needs_secure_boot_off(&self) -> bool {
        self.boot_paths
            .iter()
            .any(|p| p.firmware == Firmware::Uefi && p.needs_secure_boot_off)
    }

    /// Problems that did not stop the patch.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bytes of the patch held in memory (replaced ranges and in-memory tail pieces).
    pub fn memory_bytes(&self) -> usize {
        self.replaced.iter().map(|(_, d)| d.len()).sum::<usize>()
            + self
                .tail
                .iter()
                .map(|(_, p)| match p {
                    TailPiece::Bytes(b) => b.len(),
                    _ => 0,
                })
                .sum::<usize>()
    }

    /// Where the bytes `start..end` of the patched image (clamped to its length) come from, in
    /// order: ranges of the source (a server can send those straight from the file), bytes the
    /// patch holds, and zeros.
    pub fn pieces(&self, start: u64, end: u64) -> Vec<Piece<'_>> {
        let end = end.min(self.len);
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        if start < self.source_len {
            let src_end = end.min(self.source_len);
            let mut pos = start;
            // the first replaced range that could overlap
            let first = self
                .replaced
                .partition_point(|(o, d)| o + d.len() as u64 <= start);
            for (roff, data) in &self.replaced[first..] {
                if *roff >= src_end {
                    break;
                }
                if *roff > pos {
                    out.push(Piece::Source {
                        offset: pos,
                        len: roff - pos,
                    });
                    pos = *roff;
                }
                let rend = (roff + data.len() as u64).min(src_end);
                out.push(Piece::Bytes(
                    &data[(pos - roff) as usize..(rend - roff) as usize],
                ));
                pos = rend;
            }
            if pos < src_end {
                out.push(Piece::Source {
                    offset: pos,
                    len: src_end - pos,
                });
            }
        }
        if end > self.source_len {
            let mut pos = start.max(self.source_len);
            let mut i = self.tail.partition_point(|(o, p)| o + p.len() <= pos);
            while pos < end && i < self.tail.len() {
                let (poff, piece) = &self.tail[i];
                let pend = (poff + piece.len()).min(end);
                let at = pos - poff;
                let len = pend - pos;
                out.push(match piece {
                    TailPiece::Bytes(b) => Piece::Bytes(&b[at as usize..(at + len) as usize]),
                    TailPiece::Zeros(_) => Piece::Zeros(len),
                    TailPiece::Source { offset: so, .. } => Piece::Source {
                        offset: so + at,
                        len,
                    },
                });
                pos = pend;
                i += 1;
            }
        }
        out
    }

    /// Fills `buf` with the patched image from `offset` (clamped to the end). Returns bytes read.
    pub fn read_at(&self, src: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        let mut at = 0;
        for piece in self.pieces(offset, offset + n as u64) {
            let dst = &mut buf[at..at + piece.len() as usize];
            match piece {
                Piece::Source { offset, .. } => src.read_exact_at(offset, dst)?,
                Piece::Bytes(b) => dst.copy_from_slice(b),
                Piece::Zeros(_) => dst.fill(0),
            }
            at += dst.len();
        }
        debug_assert_eq!(at, n, "the pieces cover the range");
        Ok(n)
    }

    /// Writes the whole patched image.
    pub fn write_to(&self, src: &dyn ReadAt, w: &mut dyn Write) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < self.len {
            let n = self.read_at(src, off, &mut buf)?;
            w.write_all(&buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }
}

/// A patched ISO: a source plus an [`IsoPatch`], readable at any offset.
pub struct PatchedIso<S> {
    source: S,
    patch: Arc<IsoPatch>,
}

impl<S: ReadAt> PatchedIso<S> {
    pub fn new(source: S, patch: Arc<IsoPatch>) -> Self {
        Self { source, patch }
    }

    /// Patches `source` with `args` (see [`patch_iso`]).
    pub fn open(source: S, args: &[String]) -> Result<Self, PatchError> {
        let patch = patch_iso(&source, args)?;
        Ok(Self {
            source,
            patch: Arc::new(patch),
        })
    }

    pub fn len(&self) -> u64 {
        self.patch.len
    }

    pub fn is_empty(&self) -> bool {
        self.patch.len == 0
    }

    pub fn patch(&self) -> &Arc<IsoPatch> {
        &self.patch
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.patch.read_at(&self.source, offset, buf)
    }

    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        self.patch.write_to(&self.source, w)
    }
}

impl<S: ReadAt> ReadAt for PatchedIso<S> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len())
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.read_at(offset, buf)? != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the image

/// The ISO 9660 tree as a [`ConfigVolume`].
struct IsoVolume<'a> {
    src: &'a dyn ReadAt,
    files: &'a BTreeMap<String, IsoFile>,
}

impl ConfigVolume for IsoVolume<'_> {
    fn paths(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let f = IsoFs::lookup(self.files, path)?;
        if f.size as u64 > bootcfg::MAX_CONFIG_BYTES {
            return None;
        }
        read_vec(self.src, f.offset, f.size as usize).ok()
    }
    fn resolve(&self, path: &str) -> Option<String> {
        IsoFs::lookup(self.files, path).map(|f| f.path.clone())
    }
}

/// A FAT EFI image as a [`ConfigVolume`].
struct FatVolume<'a> {
    fs: &'a FatFs,
    src: &'a dyn ReadAt,
}

impl ConfigVolume for FatVolume<'_> {
    fn paths(&self) -> Vec<String> {
        self.fs
            .entries()
            .iter()
            .filter(|e| !e.is_dir)
            .map(|e| normalise(&e.path))
            .collect()
    }
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.fs
            .read_file(self.src, path, bootcfg::MAX_CONFIG_BYTES)
            .ok()
    }
    fn resolve(&self, path: &str) -> Option<String> {
        self.fs.lookup(path).map(|e| normalise(&e.path))
    }
}

/// What the UEFI loader of an EFI image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UefiLoader {
    Grub,
    SystemdBoot,
    Beskar7,
    Unknown,
}

/// An El Torito UEFI image.
struct Esp {
    name: String,
    fs: FatFs,
    loader: UefiLoader,
}

/// What the El Torito BIOS entry boots.
#[derive(Clone, Debug)]
struct BiosEntry {
    image: String,
    loader: Option<ConfigKind>,
    /// Directory of the loader file on the ISO tree (where ISOLINUX looks first).
    dir: Option<String>,
}

/// `len` bytes of a FAT file from `offset` (less at its end).
pub(crate) fn fat_read_range(
    fs: &FatFs,
    src: &dyn ReadAt,
    path: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, FatError> {
    let size = fs
        .lookup(path)
        .ok_or_else(|| FatError::NotFound(path.to_string()))?
        .size as u64;
    let end = (offset + len).min(size);
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    let mut pos = 0u64;
    for (at, n) in fs.file_ranges(path)? {
        let (s, e) = (pos.max(offset), (pos + n).min(end));
        if s < e {
            out.extend_from_slice(&read_vec(src, at + (s - pos), (e - s) as usize)?);
        }
        pos += n;
        if pos >= end {
            break;
        }
    }
    Ok(out)
}

/// The edit of EFI image `i`, started on first use.
fn fat_edit<'m, 's>(
    edits: &'m mut BTreeMap<usize, FatEdit<'s>>,
    i: usize,
    esp: &Esp,
    src: &'s dyn ReadAt,
) -> Result<&'m mut FatEdit<'s>, PatchError> {
    Ok(match edits.entry(i) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => v.insert(
            FatEdit::new(&esp.fs, src).map_err(|source| PatchError::Fat {
                image: esp.name.clone(),
                source,
            })?,
        ),
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn classify_bios(
    src: &dyn ReadAt,
    len: u64,
    files: &BTreeMap<String, IsoFile>,
    lba: u32,
) -> io::Result<BiosEntry> {
    let off = lba as u64 * SECTOR_U64;
    let file = IsoFs::file_at(files, off);
    let head = read_vec(src, off, (64 << 10).min(len.saturating_sub(off)) as usize)?;
    let name = file
        .map(|f| f.path.to_ascii_lowercase())
        .unwrap_or_default();
    let loader = if name.ends_with("isolinux.bin") || contains(&head, b"ISOLINUX") {
        Some(ConfigKind::Isolinux)
    } else if name.contains("grub") || name.ends_with("eltorito.img") || contains(&head, b"GRUB") {
        Some(ConfigKind::Grub)
    } else {
        None
    };
    Ok(BiosEntry {
        image: file
            .map(|f| f.path.clone())
            .unwrap_or_else(|| format!("image at block {lba}")),
        loader,
        dir: file.map(|f| crate::kargs::parent_dir(&f.path)),
    })
}

fn classify_uefi(fs: &FatFs, src: &dyn ReadAt) -> UefiLoader {
    if fs.lookup(crate::efi_loader::CONFIG_PATH).is_some() {
        return UefiLoader::Beskar7;
    }
    let boot = fat_read_range(fs, src, "EFI/BOOT/BOOTX64.EFI", 0, pe::HEADER_BYTES as u64);
    if let Ok(head) = &boot
        && let Ok(img) = pe::parse(head)
        && let Some(s) = img.section(".sdmagic")
        && let Ok(m) = fat_read_range(
            fs,
            src,
            "EFI/BOOT/BOOTX64.EFI",
            s.raw_offset as u64,
            s.data_len().min(256) as u64,
        )
        && pe::section_text(&m).contains("systemd-boot")
    {
        return UefiLoader::SystemdBoot;
    }
    // grub-mkimage's EFI images carry their modules in a section named `mods`.
    let grub_pe = boot
        .as_ref()
        .ok()
        .and_then(|h| pe::parse(h).ok())
        .is_some_and(|img| img.section("mods").is_some());
    let has = |p: &str| fs.lookup(p).is_some();
    let grub_cfg = fs
        .entries()
        .iter()
        .any(|e| e.path.to_ascii_lowercase().ends_with("/grub.cfg"));
    let grub_binary = grub_pe
        || has("EFI/BOOT/grubx64.efi")
        || has("EFI/BOOT/grub.efi")
        || boot
            .as_ref()
            .is_ok_and(|h| contains(h, b"GRUB") || contains(h, b"grub"));
    if grub_cfg || grub_binary {
        UefiLoader::Grub
    } else {
        UefiLoader::Unknown
    }
}

// ---------------------------------------------------------------------------------------------
// The patch

/// Computes the patch that appends `args` to every kernel line of the ISO's boot paths.
pub fn patch_iso(src: &dyn ReadAt, args: &[String]) -> Result<IsoPatch, PatchError> {
    patch_iso_with(
        src,
        &PatchOptions {
            kernel_args: args.to_vec(),
            add_uefi_path: false,
        },
    )
}

/// Everything that changes, collected before the bytes are laid out.
#[derive(Default)]
struct Changes {
    /// Replaced ranges inside the source (may overlap: later ones win).
    replaced: BTreeMap<u64, Vec<u8>>,
    /// Pieces after the end of the source, by absolute offset.
    tail: BTreeMap<u64, TailPiece>,
}

impl Changes {
    fn replace(&mut self, offset: u64, data: Vec<u8>) {
        self.replaced.insert(offset, data);
    }
}

/// Computes the patch described by `opts`.
pub fn patch_iso_with(src: &dyn ReadAt, opts: &PatchOptions) -> Result<IsoPatch, PatchError> {
    let args = &opts.kernel_args;
    if args.is_empty() || args.iter().any(|a| a.trim().is_empty()) {
        return Err(PatchError::NoArgs);
    }
    let len = src.size()?;
    let tables = PartitionTables::read(src, len)?;
    let starts: Vec<u64> = tables
        .partitions()
        .iter()
        .map(|p| p.byte_range().start)
        .collect();
    let iso = IsoFs::read(src, len, &starts)?;
    let files = iso.files();
    let catalog = eltorito::read_catalog(src, len, iso.sets[0].boot_record)?;
    let iso_vol = IsoVolume { src, files: &files };

    // Boot paths.
    let mut bios = Vec::new();
    let mut esps: Vec<Esp> = Vec::new();
    for e in catalog.iter().flat_map(|c| &c.entries) {
        match e.platform {
            Platform::Bios => bios.push(classify_bios(src, len, &files, e.lba)?),
            Platform::Efi => {
                let base = e.lba as u64 * SECTOR_U64;
                if base >= len || esps.iter().any(|x| x.fs.extent().0 == base) {
                    continue;
                }
                let name = match IsoFs::file_at(&files, base) {
                    Some(f) => f.path.clone(),
                    None => describe_hidden_image(&tables, base, e.lba),
                };
                let fs = FatFs::open(src, base, len - base).map_err(|source| PatchError::Fat {
                    image: name.clone(),
                    source,
                })?;
                let loader = classify_uefi(&fs, src);
                esps.push(Esp { name, fs, loader });
            }
            Platform::Other(_) => {}
        }
    }
    if bios.is_empty() && esps.is_empty() {
        // No El Torito boot at all (a data ISO, or a loader booted some other way): patch
        // whatever configs the tree has, as before.
        bios.push(BiosEntry {
            image: "no El Torito entry".into(),
            loader: None,
            dir: None,
        });
    }
    let esp_names: Vec<String> = esps.iter().map(|e| e.name.clone()).collect();

    // The configs each loader reads.
    let isolinux_dir = bios
        .iter()
        .find(|b| b.loader == Some(ConfigKind::Isolinux))
        .and_then(|b| b.dir.clone());
    let wants_isolinux = bios.iter().any(|b| b.loader != Some(ConfigKind::Grub));
    let isolinux = if wants_isolinux {
        bootcfg::isolinux_configs(&iso_vol, isolinux_dir.as_deref())
    } else {
        ConfigSet::default()
    };
    let fat_vols: Vec<FatVolume> = esps.iter().map(|e| FatVolume { fs: &e.fs, src }).collect();
    let grub_esps: Vec<(usize, &dyn ConfigVolume)> = esps
        .iter()
        .enumerate()
        .filter(|(_, e)| e.loader == UefiLoader::Grub)
        .map(|(i, _)| (i, &fat_vols[i] as &dyn ConfigVolume))
        .collect();
    let grub = bootcfg::grub_configs(&iso_vol, &grub_esps);

    let mut changes = Changes::default();
    let mut configs = Vec::new();
    let mut warnings = Vec::new();
    let mut iso_rewrites: Vec<(IsoFile, Vec<u8>)> = Vec::new();
    let mut fat_edits: BTreeMap<usize, FatEdit> = BTreeMap::new();
    // kernel lines per (loader, place-kind): ISO GRUB lines count for every GRUB path.
    let mut lines_iso_grub = 0;
    let mut lines_isolinux = 0;
    let mut lines_esp_grub: BTreeMap<usize, usize> = BTreeMap::new();

    for (set, kind) in [(&isolinux, ConfigKind::Isolinux), (&grub, ConfigKind::Grub)] {
        for u in &set.unresolved {
            warnings.push(format!(
                "{kind:?} config refers to {u}, which the patch could not follow"
            ));
        }
        for (place, p) in set.rewrite(args) {
            match (&place, kind) {
                (Place::Iso(_), ConfigKind::Isolinux) => lines_isolinux += p.kernel_lines,
                (Place::Iso(_), ConfigKind::Grub) => lines_iso_grub += p.kernel_lines,
                (Place::Esp(i, _), _) => *lines_esp_grub.entry(*i).or_default() += p.kernel_lines,
            }
            let rewritten = p.changed_lines > 0;
            if rewritten {
                match &place {
                    Place::Iso(path) => {
                        let f = IsoFs::lookup(&files, path).expect("config came from the tree");
                        iso_rewrites.push((f.clone(), p.data.clone()));
                    }
                    Place::Esp(i, path) => {
                        let edit = fat_edit(&mut fat_edits, *i, &esps[*i], src)?;
                        edit.write_file(path, &p.data)
                            .map_err(|source| PatchError::Fat {
                                image: esps[*i].name.clone(),
                                source,
                            })?;
                    }
                }
            }
            configs.push(ConfigFound {
                path: place.display(&esp_names),
                loader: kind.into(),
                kernel_lines: p.kernel_lines,
                rewritten,
            });
        }
    }

    // systemd-boot and Beskar7 loader images.
    let mut boot_paths = Vec::new();
    for (i, esp) in esps.iter().enumerate() {
        let mut needs_secure_boot_off = false;
        let lines = match esp.loader {
            UefiLoader::Grub => lines_esp_grub.get(&i).copied().unwrap_or(0) + lines_iso_grub,
            UefiLoader::SystemdBoot | UefiLoader::Beskar7 => {
                let edit = fat_edit(&mut fat_edits, i, esp, src)?;
                let r = if esp.loader == UefiLoader::SystemdBoot {
                    crate::sdboot::patch(&esp.fs, src, edit, args, &esp.name)?
                } else {
                    crate::uefi_add::repatch(&esp.fs, src, edit, args, &esp.name)?
                };
                configs.extend(r.configs);
                needs_secure_boot_off = r.needs_secure_boot_off;
                r.kernel_lines
            }
            UefiLoader::Unknown => {
                return Err(PatchError::UnknownLoader {
                    path: format!("UEFI ({})", esp.name),
                    what: "EFI/BOOT/BOOTX64.EFI is neither GRUB nor systemd-boot".into(),
                });
            }
        };
        boot_paths.push(BootPath {
            firmware: Firmware::Uefi,
            loader: match esp.loader {
                UefiLoader::Grub => Loader::Grub,
                UefiLoader::SystemdBoot => Loader::SystemdBoot,
                _ => Loader::Beskar7,
            },
            image: esp.name.clone(),
            kernel_lines: lines,
            added: false,
            needs_secure_boot_off,
        });
    }
    for b in &bios {
        let (loader, lines) = match b.loader {
            Some(ConfigKind::Isolinux) => (Loader::Isolinux, lines_isolinux),
            Some(ConfigKind::Grub) => (Loader::Grub, lines_iso_grub),
            // No El Torito entry, or one we cannot name: whatever config the tree has.
            None if lines_isolinux > 0 => (Loader::Isolinux, lines_isolinux),
            None => (Loader::Grub, lines_iso_grub),
        };
        boot_paths.push(BootPath {
            firmware: Firmware::Bios,
            loader,
            image: b.image.clone(),
            kernel_lines: lines,
            added: false,
            needs_secure_boot_off: false,
        });
    }
    if configs.is_empty() {
        return Err(PatchError::NoBootloaderConfig);
    }
    for p in &boot_paths {
        if p.kernel_lines == 0 {
            let read: Vec<&str> = configs
                .iter()
                .filter(|c| c.loader == p.loader)
                .map(|c| c.path.as_str())
                .collect();
            return Err(PatchError::NoKernelLine {
                path: format!("{:?} {:?} ({})", p.firmware, p.loader, p.image),
                files: if read.is_empty() {
                    "no config file".into()
                } else {
                    read.join(", ")
                },
            });
        }
    }

    // A UEFI path for an ISOLINUX-only image.
    let mut new_esp = None;
    if opts.add_uefi_path && esps.is_empty() {
        let label = isolinux
            .files
            .first()
            .map(|_| crate::uefi_add::default_label(&isolinux, &iso_vol))
            .transpose()?
            .flatten()
            .ok_or_else(|| {
                PatchError::Unsupported(
                    "a UEFI boot path can only be added to an image that boots Linux with ISOLINUX"
                        .into(),
                )
            })?;
        new_esp = Some(crate::uefi_add::build(&label, &files, args)?);
    }

    let fat_replaced: Vec<(u64, Vec<u8>)> =
        fat_edits.into_values().flat_map(FatEdit::finish).collect();
    for (o, d) in fat_replaced {
        changes.replace(o, d);
    }

    let layout = lay_out(
        src,
        len,
        &tables,
        &iso,
        catalog.as_ref(),
        &iso_rewrites,
        new_esp.as_ref(),
        &mut changes,
    )?;
    if let Some(at) = layout.new_esp {
        boot_paths.push(BootPath {
            firmware: Firmware::Uefi,
            loader: Loader::Beskar7,
            image: format!("EFI system partition appended at block {}", at / SECTOR_U64),
            kernel_lines: 1,
            added: true,
            needs_secure_boot_off: true,
        });
        configs.push(ConfigFound {
            path: format!(
                "[appended EFI system partition]/{}",
                crate::efi_loader::CONFIG_PATH
            ),
            loader: Loader::Beskar7,
            kernel_lines: 1,
            rewritten: true,
        });
    }
    configs.sort_by(|a, b| a.path.cmp(&b.path));
    boot_paths.sort_by_key(|p| (p.firmware, p.loader));
    Ok(IsoPatch {
        source_len: len,
        len: layout.len,
        replaced: flatten_replaced(changes.replaced),
        tail: fill_tail(len, layout.len, changes.tail),
        configs,
        boot_paths,
        warnings,
    })
}

fn describe_hidden_image(tables: &PartitionTables, base: u64, lba: u32) -> String {
    match tables
        .partitions()
        .iter()
        .position(|p| p.byte_range().start == base)
    {
        Some(i) => format!("partition {} of the image", i + 1),
        None => format!("EFI image at block {lba}"),
    }
}

/// Where the new bytes went.
struct Layout {
    len: u64,
    /// Absolute offset of the added EFI system partition.
    new_esp: Option<u64>,
}

fn block_of(offset: u64) -> Result<u32, PatchError> {
    u32::try_from(offset / SECTOR_U64).map_err(|_| PatchError::NotIso("image too large".into()))
}

/// Places rewritten ISO files and an added ESP, and updates every structure that names them.
///
/// When the image grows, the rewritten files go right after its old end. A partition holding
/// a partition-relative ISO 9660 tree (xorriso `-partition_offset`) is extended over them, so
/// that tree can name them too; the partitions appended after it (the EFI image, xorriso's gap)
/// move behind the new files, their bytes served from where they were, their El Torito entries
/// and GPT entries following them.
#[allow(clippy::too_many_arguments)]
fn lay_out(
    src: &dyn ReadAt,
    len: u64,
    tables: &PartitionTables,
    iso: &IsoFs,
    catalog: Option<&Catalog>,
    rewrites: &[(IsoFile, Vec<u8>)],
    new_esp: Option<&crate::uefi_add::NewEsp>,
    changes: &mut Changes,
) -> Result<Layout, PatchError> {
    let need: u64 = rewrites
        .iter()
        .map(|(_, d)| (d.len() as u64).div_ceil(SECTOR_U64) * SECTOR_U64)
        .sum();
    let free = if new_esp.is_none() && need > 0 {
        free_run(src, len, tables, iso, catalog, need)?
    } else {
        None
    };
    let in_place = free.is_some();
    let mut next = free.unwrap_or(len.next_multiple_of(SECTOR_U64));
    let mut moved: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    for (f, data) in rewrites {
        moved.insert(f.offset, (next, data.len() as u32));
        let mut block = data.clone();
        block.resize((data.len() as u64).next_multiple_of(SECTOR_U64) as usize, 0);
        let n = block.len() as u64;
        if in_place {
            changes.replace(next, block);
        } else {
            changes.tail.insert(next, TailPiece::Bytes(block));
        }
        next += n;
    }
    for r in iso.records.iter().filter(|r| !r.is_dir) {
        if let Some((at, size)) = moved.get(&iso.data_offset(r)) {
            let mut v = both32(block_of(at - iso.sets[r.set].base)?).to_vec();
            v.extend_from_slice(&both32(*size));
            changes.replace(r.offset + 2, v);
        }
    }
    if in_place || (need == 0 && new_esp.is_none()) {
        return Ok(Layout { len, new_esp: None });
    }

    let files_end = next;
    let parts = tables.partitions();
    let mut edit = tables.edit();
    let mut catalog_bytes = catalog.map(|c| c.bytes.clone());
    // The partition of a partition-relative tree, and what follows it.
    let relative_part = parts.iter().position(|p| {
        let start = p.byte_range().start;
        start > 0 && iso.sets.iter().any(|s| s.base == start)
    });
    let mut partition_end: BTreeMap<u64, u64> = BTreeMap::new();
    if let Some(pi) = relative_part {
        let p_end = parts[pi].byte_range().end;
        let mut after: Vec<usize> = (0..parts.len())
            .filter(|&q| {
                let r = parts[q].byte_range();
                q != pi && r.start >= p_end && r.end <= len
            })
            .collect();
        after.sort_by_key(|&q| parts[q].byte_range().start);
        for q in after {
            let r = parts[q].byte_range();
            let at = next.next_multiple_of(SECTOR_U64);
            relocate(changes, r.start, r.end, at);
            edit.set_range(q, at / 512, (at + (r.end - r.start)) / 512 - 1)?;
            if let (Some(c), Some(bytes)) = (catalog, catalog_bytes.as_mut()) {
                *bytes = c.with_moved_image(bytes, block_of(r.start)?, block_of(at)?);
            }
            next = at + (r.end - r.start);
        }
        if files_end > p_end {
            edit.extend_partition_to(pi, files_end)?;
        }
        partition_end.insert(parts[pi].byte_range().start, files_end.max(p_end));
    }
    let mut esp_at = None;
    if let Some(esp) = new_esp {
        // Partitions start on a 1 MiB boundary, as partitioning tools align them.
        let at = next.next_multiple_of(1 << 20);
        esp.place(at, &mut changes.tail);
        next = at + esp.len();
        esp_at = Some(at);
    }
    let new_len = (next + END_PADDING).next_multiple_of(END_ALIGN);
    edit.resize(new_len)?;
    if relative_part.is_none() {
        // A partition that covered the whole image (isohybrid's partition 1) covers the files.
        for (i, p) in parts.iter().enumerate() {
            let end = p.byte_range().end;
            let cover = esp_at.unwrap_or(files_end);
            if end >= len.saturating_sub(tables.backup_gpt_bytes()) && end <= len && cover > end {
                edit.extend_partition_to(i, cover)?;
            }
        }
    }
    if let (Some(esp), Some(at)) = (new_esp, esp_at) {
        if tables.mbr().is_some_and(|m| !m.is_protective()) || tables.is_empty() {
            edit.add_mbr_partition(0xEF, at / 512, esp.len() / 512, false)?;
        }
        if tables.gpt().is_some() {
            edit.add_gpt_partition(
                crate::partition::ESP_TYPE_GUID,
                "EFI system partition",
                at / 512,
                (at + esp.len()) / 512 - 1,
            )?;
        }
        let cat = catalog.ok_or_else(|| {
            PatchError::Unsupported(
                "the image has no El Torito catalog to add a UEFI entry to".into(),
            )
        })?;
        let load = u16::try_from(esp.len() / 512).unwrap_or(0);
        catalog_bytes = Some(cat.with_efi_entry(block_of(at)?, load).ok_or_else(|| {
            PatchError::Unsupported("the El Torito catalog has no room for a UEFI entry".into())
        })?);
    }
    if let (Some(c), Some(bytes)) = (catalog, catalog_bytes)
        && bytes != c.bytes
    {
        changes.replace(c.offset, bytes);
    }
    let pc = edit.build()?;
    for (o, d) in pc.replaced {
        changes.replace(o, d);
    }
    for (o, d) in pc.tail {
        changes.tail.insert(o, TailPiece::Bytes(d));
    }

    // Volume sizes: the main set covers what it covered (the whole image, for xorriso); a
    // partition-relative set covers its partition.
    for s in &iso.sets {
        for d in &s.descriptors {
            let covered = s.base + d.volume_blocks as u64 * SECTOR_U64;
            let end = if s.base == 0 {
                if covered >= len {
                    new_len
                } else {
                    covered.max(files_end)
                }
            } else {
                partition_end.get(&s.base).copied().unwrap_or(covered)
            };
            let blocks = block_of(end - s.base)?;
            if blocks != d.volume_blocks {
                changes.replace(d.offset + 80, both32(blocks).to_vec());
            }
        }
    }
    Ok(Layout {
        len: new_len,
        new_esp: esp_at,
    })
}

/// Serves the source bytes `[start, end)` at `to` in the tail, with the replaced ranges that fell
/// inside them (edits of a FAT image) moved along.
fn relocate(changes: &mut Changes, start: u64, end: u64, to: u64) {
    let inside: Vec<u64> = changes
        .replaced
        .range(start..end)
        .map(|(o, _)| *o)
        .collect();
    let mut pos = start;
    for o in inside {
        let data = changes.replaced.remove(&o).expect("listed above");
        if o > pos {
            changes.tail.insert(
                to + (pos - start),
                TailPiece::Source {
                    offset: pos,
                    len: o - pos,
                },
            );
        }
        let n = data.len() as u64;
        changes
            .tail
            .insert(to + (o - start), TailPiece::Bytes(data));
        pos = pos.max(o + n);
    }
    if end > pos {
        changes.tail.insert(
            to + (pos - start),
            TailPiece::Source {
                offset: pos,
                len: end - pos,
            },
        );
    }
}

/// The first block of a run of `need` unused, all-zero bytes after the ISO 9660 data, inside the
/// ISO volume and inside the partition that holds it (xorriso's padding and cylinder alignment).
fn free_run(
    src: &dyn ReadAt,
    len: u64,
    tables: &PartitionTables,
    iso: &IsoFs,
    catalog: Option<&Catalog>,
    need: u64,
) -> Result<Option<u64>, PatchError> {
    let main = &iso.sets[0];
    let volume_end = main
        .descriptors
        .iter()
        .map(|d| d.volume_blocks as u64 * SECTOR_U64)
        .min()
        .unwrap_or(0)
        .min(len);
    let mut iso_used: Vec<(u64, u64)> = iso
        .used_blocks()
        .into_iter()
        .map(|(b, n)| (b * SECTOR_U64, (b + n) * SECTOR_U64))
        .collect();
    // Boot images are files of the tree, or lie outside it (an appended partition); one hidden
    // in the tree is not zeros, which the check below requires.
    if let Some(c) = catalog {
        iso_used.push((c.offset, c.offset + SECTOR_U64));
    }
    let data_end = iso_used.iter().map(|r| r.1).max().unwrap_or(0);
    // Partitions that hold a descriptor set are the ISO's own; any other is used space.
    let superblocks: BTreeSet<u64> = iso.sets.iter().map(|s| s.base + 16 * SECTOR_U64).collect();
    let mut limit = volume_end;
    for p in tables.partitions() {
        let r = p.byte_range();
        let holds_iso = superblocks.iter().any(|s| r.contains(s));
        if holds_iso {
            if r.contains(&data_end.saturating_sub(1)) {
                limit = limit.min(r.end);
            }
        } else if r.end > data_end {
            limit = limit.min(r.start.max(data_end));
        }
    }
    if let Some(g) = tables.gpt() {
        limit = limit.min(g.last_usable_lba.saturating_add(1) * 512);
    }
    let start = data_end.next_multiple_of(SECTOR_U64);
    if start + need > limit {
        return Ok(None);
    }
    // Only zeros may be reused: anything else might be data no structure here describes.
    let mut buf = vec![0u8; need.min(1 << 20) as usize];
    let mut off = start;
    while off < start + need {
        let n = (start + need - off).min(buf.len() as u64) as usize;
        src.read_exact_at(off, &mut buf[..n])?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(None);
        }
        off += n as u64;
    }
    Ok(Some(start))
}

/// Replaced ranges sorted and disjoint; a later insertion at the same offset has already
/// replaced the earlier one, overlapping ranges are merged (later bytes win).
fn flatten_replaced(map: BTreeMap<u64, Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for (o, d) in map {
        if let Some((lo, ld)) = out.last_mut() {
            let lend = *lo + ld.len() as u64;
            if o <= lend {
                let start = (o - *lo) as usize;
                let end = start + d.len();
                if end > ld.len() {
                    ld.resize(end, 0);
                }
                ld[start..end].copy_from_slice(&d);
                continue;
            }
        }
        out.push((o, d));
    }
    out
}

/// The tail as contiguous pieces from `start` to `end`, zeros in the gaps.
fn fill_tail(start: u64, end: u64, map: BTreeMap<u64, TailPiece>) -> Vec<(u64, TailPiece)> {
    if end <= start {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut pos = start;
    for (o, p) in map {
        debug_assert!(o >= pos, "tail pieces overlap at {o}");
        if o > pos {
            out.push((pos, TailPiece::Zeros(o - pos)));
        }
        pos = o + p.len();
        out.push((o, p));
    }
    if end > pos {
        out.push((pos, TailPiece::Zeros(end - pos)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100-byte source with bytes 10..20 and 40..45 replaced and a tail of 5 patch bytes,
    /// 3 zeros and 4 source bytes from offset 60.
    fn patch() -> IsoPatch {
        IsoPatch {
            source_len: 100,
            len: 112,
            replaced: vec![(10, vec![1; 10]), (40, vec![2; 5])],
            tail: vec![
                (100, TailPiece::Bytes(vec![3; 5])),
                (105, TailPiece::Zeros(3)),
                (108, TailPiece::Source { offset: 60, len: 4 }),
            ],
            configs: Vec::new(),
            boot_paths: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn pieces_split_a_range_at_every_replaced_range_and_tail_piece() {
        let p = patch();
        use Piece::*;
        assert_eq!(
            p.pieces(0, 112),
            vec![
                Source { offset: 0, len: 10 },
                Bytes(&[1; 10]),
                Source {
                    offset: 20,
                    len: 20
                },
                Bytes(&[2; 5]),
                Source {
                    offset: 45,
                    len: 55
                },
                Bytes(&[3; 5]),
                Zeros(3),
                Source { offset: 60, len: 4 },
            ]
        );
        // starting and ending inside replaced ranges and tail pieces
        assert_eq!(
            p.pieces(15, 42),
            vec![
                Bytes(&[1; 5]),
                Source {
                    offset: 20,
                    len: 20
                },
                Bytes(&[2; 2]),
            ]
        );
        assert_eq!(
            p.pieces(98, 110),
            vec![
                Source { offset: 98, len: 2 },
                Bytes(&[3; 5]),
                Zeros(3),
                Source { offset: 60, len: 2 },
            ]
        );
        // clamped to the end; empty past it
        assert_eq!(p.pieces(111, 500), vec![Source { offset: 63, len: 1 }]);
        assert!(p.pieces(112, 500).is_empty());
        assert!(p.pieces(30, 30).is_empty());
    }

    #[test]
    fn read_at_follows_the_pieces() {
        let p = patch();
        let src: Vec<u8> = (0..100u8).collect();
        let mut buf = vec![0xffu8; 200];
        assert_eq!(p.read_at(&src, 0, &mut buf).unwrap(), 112);
        let mut want: Vec<u8> = (0..100u8).collect();
        want[10..20].fill(1);
        want[40..45].fill(2);
        want.extend([3, 3, 3, 3, 3, 0, 0, 0, 60, 61, 62, 63]);
        assert_eq!(&buf[..112], &want[..]);
        let mut small = [0u8; 7];
        assert_eq!(p.read_at(&src, 38, &mut small).unwrap(), 7);
        assert_eq!(small, [38, 39, 2, 2, 2, 2, 2]);
    }
}

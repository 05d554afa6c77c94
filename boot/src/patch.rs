//! Kernel-argument patching of ISO 9660 images, described as the original bytes plus replaced ranges.
//!
//! What is read from the source: the volume descriptors, the directory trees (primary with its
//! Rock Ridge names, Joliet, any other supplementary tree) and the bootloader config files. Nothing
//! else. What the patched image is: the source bytes, with
//! - each rewritten config file placed in a new extent after the end of the source (sector aligned),
//! - every directory record that pointed at the old extent (primary/Rock Ridge and Joliet records
//!   share the same extent) updated with the new extent and size (Rock Ridge carries no size of
//!   its own: its `PX`/`NM` entries live in the primary record, which is updated),
//! - the volume space size of every primary/supplementary descriptor updated to the new end.
//!
//! The old extents stay in place, unreferenced. Path tables do not change (no directory moves).
//!
//! El Torito EFI images: a UEFI boot of a GRUB-based ISO runs the GRUB inside the El Torito EFI
//! image (`efi.img`). The ones built by `grub-mkrescue` (checked by a test) and by the
//! distributions carry only `bootx64.efi` with an embedded config that searches the ISO file
//! system (`search --fs-uuid`/`--file`) and loads `grub.cfg` from it, so they read the patched
//! file. The GRUB file-system UUID of an ISO comes from the descriptor dates, which are not
//! changed. Should an EFI image carry its own `grub.cfg` with kernel lines, it is patched in place
//! inside the FAT image ([`crate::eltorito`]), or reported in [`IsoPatch::warnings`] when the
//! longer file does not fit its clusters.
//! An HFS+ hybrid tree (grub-mkrescue adds one for Macs) is not updated.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::sync::Arc;

use crate::iso9660::{SECTOR, both32};
use crate::kargs::{ConfigKind, append_kernel_args};
use crate::source::ReadAt;

const SECTOR_U64: u64 = SECTOR as u64;
/// Upper bounds against malformed or hostile images.
const MAX_DIR_BYTES: u64 = 64 << 20;
const MAX_CONFIG_BYTES: u32 = 1 << 20;
const MAX_DESCRIPTORS: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("reading the image: {0}")]
    Io(#[from] io::Error),
    #[error("not an ISO 9660 image: {0}")]
    NotIso(String),
    #[error(
        "no bootloader configuration found in the ISO (looked for GRUB grub.cfg and ISOLINUX/SYSLINUX *.cfg)"
    )]
    NoBootloaderConfig,
    #[error(
        "bootloader configuration found ({0}) but it has no kernel lines (linux, linuxefi, linux16, append)"
    )]
    NoKernelLines(String),
    #[error("no kernel arguments given")]
    NoArgs,
}

/// One bootloader config found in the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigFound {
    pub path: String,
    pub kind: ConfigKind,
    pub kernel_lines: usize,
    /// True when the file was rewritten (false when every line already had the arguments).
    pub rewritten: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    /// Absolute byte offset of the directory record.
    offset: u64,
    extent: u32,
    size: u32,
    is_dir: bool,
    multi_extent: bool,
    path: String,
}

/// How the patched image differs from the source.
#[derive(Clone, Debug)]
pub struct IsoPatch {
    source_len: u64,
    len: u64,
    /// Replaced ranges inside the source, sorted and disjoint.
    replaced: Vec<(u64, Vec<u8>)>,
    /// Bytes after the end of the source.
    tail: Vec<u8>,
    configs: Vec<ConfigFound>,
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

    /// Problems that did not stop the patch (e.g. an EFI image's own grub.cfg that could not be rewritten).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Fills `buf` with the patched image from `offset` (clamped to the end). Returns bytes read.
    pub fn read_at(&self, src: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        let buf = &mut buf[..n];
        let end = offset + n as u64;
        // source part
        if offset < self.source_len {
            let src_end = end.min(self.source_len);
            let part = &mut buf[..(src_end - offset) as usize];
            src.read_exact_at(offset, part)?;
            for (roff, data) in &self.replaced {
                let rend = roff + data.len() as u64;
                if rend <= offset || *roff >= src_end {
                    continue;
                }
                let s = offset.max(*roff);
                let e = src_end.min(rend);
                part[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&data[(s - roff) as usize..(e - roff) as usize]);
            }
        }
        if end > self.source_len {
            let s = offset.max(self.source_len);
            buf[(s - offset) as usize..].copy_from_slice(
                &self.tail[(s - self.source_len) as usize..(end - self.source_len) as usize],
            );
        }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TreeKind {
    Primary,
    Joliet,
    Other,
}

struct Descriptor {
    offset: u64,
    kind: TreeKind,
    root_extent: u32,
    root_size: u32,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn read_vec(src: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    src.read_exact_at(offset, &mut v)?;
    Ok(v)
}

fn descriptors(src: &dyn ReadAt, len: u64) -> Result<(Vec<Descriptor>, Option<u64>), PatchError> {
    let mut out = Vec::new();
    let mut boot_record = None;
    let mut found_primary = false;
    for i in 0..MAX_DESCRIPTORS {
        let off = (16 + i) * SECTOR_U64;
        if off + SECTOR_U64 > len {
            break;
        }
        let d = read_vec(src, off, SECTOR)?;
        if &d[1..6] != b"CD001" {
            if i == 0 {
                return Err(PatchError::NotIso(
                    "no CD001 volume descriptor at sector 16".into(),
                ));
            }
            break;
        }
        let ty = d[0];
        if ty == 255 {
            break;
        }
        if ty == 0 && boot_record.is_none() {
            boot_record = Some(off);
        }
        if ty != 1 && ty != 2 {
            continue;
        }
        if u16::from_le_bytes([d[128], d[129]]) as usize != SECTOR {
            return Err(PatchError::NotIso("logical block size is not 2048".into()));
        }
        let root = &d[156..190];
        let kind = if ty == 1 {
            found_primary = true;
            TreeKind::Primary
        } else if d[6] == 1 && d[88] == b'%' && d[89] == b'/' && matches!(d[90], b'@' | b'C' | b'E')
        {
            TreeKind::Joliet
        } else {
            TreeKind::Other
        };
        out.push(Descriptor {
            offset: off,
            kind,
            root_extent: le32(&root[2..6]),
            root_size: le32(&root[10..14]),
        });
    }
    if !found_primary {
        return Err(PatchError::NotIso("no primary volume descriptor".into()));
    }
    Ok((out, boot_record))
}

/// Parses SUSP entries of a record's system-use area, following `CE` continuations, and returns
/// (Rock Ridge name if any, whether an `SP` entry was seen).
fn susp_name(src: &dyn ReadAt, su: &[u8]) -> io::Result<(Option<String>, bool)> {
    let mut name: Option<Vec<u8>> = None;
    let mut sp = false;
    let mut area = su.to_vec();
    let mut hops = 0;
    loop {
        let mut next: Option<(u64, usize)> = None;
        let mut i = 0;
        while i + 4 <= area.len() {
            let len = area[i + 2] as usize;
            if len < 4 || i + len > area.len() {
                break;
            }
            let e = &area[i..i + len];
            match &e[..2] {
                b"SP" => sp = true,
                b"NM" if len >= 5 => {
                    let flags = e[4];
                    if flags & 0x06 == 0 {
                        name.get_or_insert_with(Vec::new).extend_from_slice(&e[5..]);
                    }
                }
                b"CE" if len >= 28 => {
                    next = Some((
                        le32(&e[4..8]) as u64 * SECTOR_U64 + le32(&e[12..16]) as u64,
                        le32(&e[20..24]) as usize,
                    ));
                }
                b"ST" => break,
                _ => {}
            }
            i += len;
        }
        match next {
            Some((off, len)) if hops < 16 && len <= SECTOR => {
                area = read_vec(src, off, len)?;
                hops += 1;
            }
            _ => break,
        }
    }
    Ok((name.map(|n| String::from_utf8_lossy(&n).into_owned()), sp))
}

fn decode_id(kind: TreeKind, id: &[u8]) -> String {
    let s = if kind == TreeKind::Joliet {
        let units: Vec<u16> = id
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(id).into_owned()
    };
    let s = match s.rfind(';') {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let s = s.strip_suffix('.').map(str::to_string).unwrap_or(s);
    if kind == TreeKind::Primary {
        s.to_ascii_lowercase()
    } else {
        s
    }
}

/// Walks one directory tree; returns every record below the root.
fn walk_tree(
    src: &dyn ReadAt,
    d: &Descriptor,
    len: u64,
    budget: &mut u64,
) -> Result<Vec<Record>, PatchError> {
    let mut out = Vec::new();
    let mut rock_ridge = false;
    let mut skip = 0usize;
    let mut seen = HashSet::new();
    let mut stack = vec![(d.root_extent, d.root_size, String::new())];
    let mut first = true;
    while let Some((extent, size, path)) = stack.pop() {
        if !seen.insert(extent) {
            continue;
        }
        let start = extent as u64 * SECTOR_U64;
        let size = (size as u64).div_ceil(SECTOR_U64) * SECTOR_U64;
        if start + size > len || size > *budget {
            return Err(PatchError::NotIso(format!(
                "directory at sector {extent} lies outside the image or is too large"
            )));
        }
        *budget -= size;
        let data = read_vec(src, start, size as usize)?;
        let mut pos = 0usize;
        while pos < data.len() {
            let rl = data[pos] as usize;
            if rl == 0 {
                pos = (pos / SECTOR + 1) * SECTOR;
                continue;
            }
            if rl < 34 || pos + rl > data.len() {
                return Err(PatchError::NotIso(format!(
                    "bad directory record in sector {extent}"
                )));
            }
            let r = &data[pos..pos + rl];
            let id_len = r[32] as usize;
            if 33 + id_len > rl {
                return Err(PatchError::NotIso(format!(
                    "bad directory record in sector {extent}"
                )));
            }
            let id = &r[33..33 + id_len];
            let su_start = 33 + id_len + (1 - id_len % 2);
            let su = if su_start + skip <= rl {
                &r[su_start + skip..]
            } else {
                &[][..]
            };
            if id_len == 1 && (id[0] == 0 || id[0] == 1) {
                if first && id[0] == 0 && d.kind == TreeKind::Primary && su_start <= rl {
                    let root_su = &r[su_start..];
                    if root_su.len() >= 7
                        && &root_su[..2] == b"SP"
                        && root_su[4] == 0xBE
                        && root_su[5] == 0xEF
                    {
                        rock_ridge = true;
                        skip = root_su[6] as usize;
                    }
                }
                pos += rl;
                continue;
            }
            let flags = r[25];
            let rr_name = if rock_ridge {
                susp_name(src, su)?.0
            } else {
                None
            };
            let name = rr_name.unwrap_or_else(|| decode_id(d.kind, id));
            let full = format!("{path}/{name}");
            let rec = Record {
                offset: start + pos as u64,
                extent: le32(&r[2..6]),
                size: le32(&r[10..14]),
                is_dir: flags & 0x02 != 0,
                multi_extent: flags & 0x80 != 0,
                path: full.clone(),
            };
            if rec.is_dir {
                stack.push((rec.extent, rec.size, full));
            }
            out.push(rec);
            pos += rl;
        }
        first = false;
    }
    Ok(out)
}

fn classify(path: &str) -> Option<ConfigKind> {
    let lower = path.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').filter(|p| !p.is_empty()).collect();
    let name = *parts.last()?;
    let dirs = &parts[..parts.len() - 1];
    if name == "isolinux.cfg" || name == "syslinux.cfg" || name == "extlinux.conf" {
        return Some(ConfigKind::Isolinux);
    }
    if !name.ends_with(".cfg") {
        return None;
    }
    if dirs
        .last()
        .is_some_and(|d| *d == "isolinux" || *d == "syslinux" || *d == "extlinux")
    {
        return Some(ConfigKind::Isolinux);
    }
    if name == "grub.cfg"
        || name == "loopback.cfg"
        || dirs.iter().any(|d| *d == "grub" || *d == "grub2")
    {
        return Some(ConfigKind::Grub);
    }
    None
}

/// Computes the patch that appends `args` to every kernel line of the ISO's bootloader configs.
pub fn patch_iso(src: &dyn ReadAt, args: &[String]) -> Result<IsoPatch, PatchError> {
    if args.is_empty() || args.iter().any(|a| a.trim().is_empty()) {
        return Err(PatchError::NoArgs);
    }
    let len = src.size()?;
    let (descs, boot_record) = descriptors(src, len)?;
    let mut budget = MAX_DIR_BYTES;
    let mut records: Vec<(TreeKind, Record)> = Vec::new();
    for d in &descs {
        for r in walk_tree(src, d, len, &mut budget)? {
            records.push((d.kind, r));
        }
    }
    // candidate config files by extent, named from the best tree (Rock Ridge/primary, then Joliet)
    let mut candidates: BTreeMap<u32, (String, ConfigKind, u32)> = BTreeMap::new();
    for kind in [TreeKind::Primary, TreeKind::Joliet, TreeKind::Other] {
        for (k, r) in &records {
            if *k != kind || r.is_dir || r.multi_extent || r.size > MAX_CONFIG_BYTES {
                continue;
            }
            if let Some(ck) = classify(&r.path) {
                candidates
                    .entry(r.extent)
                    .or_insert((r.path.clone(), ck, r.size));
            }
        }
    }
    let efi = crate::eltorito::patch_efi_images(src, len, boot_record, args)?;
    if candidates.is_empty() && efi.is_empty() {
        return Err(PatchError::NoBootloaderConfig);
    }
    let base = len.div_ceil(SECTOR_U64) * SECTOR_U64;
    let mut tail = vec![0u8; (base - len) as usize];
    let mut moved: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    let mut configs = Vec::new();
    let mut total_kernel_lines = 0;
    for (extent, (path, kind, size)) in &candidates {
        let off = *extent as u64 * SECTOR_U64;
        if off + *size as u64 > len {
            return Err(PatchError::NotIso(format!("{path} lies outside the image")));
        }
        let data = read_vec(src, off, *size as usize)?;
        let p = append_kernel_args(*kind, &data, args);
        total_kernel_lines += p.kernel_lines;
        let rewritten = p.changed_lines > 0;
        if rewritten {
            let new_extent = (len + tail.len() as u64).div_ceil(SECTOR_U64);
            debug_assert_eq!((base + tail.len() as u64) / SECTOR_U64, new_extent);
            moved.insert(*extent, (new_extent as u32, p.data.len() as u32));
            tail.extend_from_slice(&p.data);
            let pad = (SECTOR - p.data.len() % SECTOR) % SECTOR;
            tail.resize(tail.len() + pad, 0);
        }
        configs.push(ConfigFound {
            path: path.clone(),
            kind: *kind,
            kernel_lines: p.kernel_lines,
            rewritten,
        });
    }
    let mut warnings = Vec::new();
    let mut efi_replaced = Vec::new();
    for e in efi {
        total_kernel_lines += e.kernel_lines;
        configs.push(ConfigFound {
            path: e.path,
            kind: ConfigKind::Grub,
            kernel_lines: e.kernel_lines,
            rewritten: e.rewritten,
        });
        warnings.extend(e.warning);
        efi_replaced.extend(e.replaced);
    }
    configs.sort_by(|a, b| a.path.cmp(&b.path));
    if total_kernel_lines == 0 {
        let names: Vec<&str> = configs.iter().map(|c| c.path.as_str()).collect();
        return Err(PatchError::NoKernelLines(names.join(", ")));
    }
    if moved.is_empty() {
        efi_replaced.sort_by_key(|(o, _)| *o);
        return Ok(IsoPatch {
            source_len: len,
            len,
            replaced: efi_replaced,
            tail: Vec::new(),
            configs,
            warnings,
        });
    }
    let new_len = len + tail.len() as u64;
    let new_sectors = u32::try_from(new_len / SECTOR_U64)
        .map_err(|_| PatchError::NotIso("image too large".into()))?;
    let mut replaced: Vec<(u64, Vec<u8>)> = Vec::new();
    for d in &descs {
        replaced.push((d.offset + 80, both32(new_sectors).to_vec()));
    }
    for (_, r) in &records {
        if r.is_dir {
            continue;
        }
        if let Some((ne, ns)) = moved.get(&r.extent) {
            let mut v = both32(*ne).to_vec();
            v.extend_from_slice(&both32(*ns));
            replaced.push((r.offset + 2, v));
        }
    }
    replaced.extend(efi_replaced);
    replaced.sort_by_key(|(o, _)| *o);
    replaced.dedup_by_key(|(o, _)| *o);
    Ok(IsoPatch {
        warnings,
        source_len: len,
        len: new_len,
        replaced,
        tail,
        configs,
    })
}

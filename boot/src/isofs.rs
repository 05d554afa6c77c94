//! Reading the ISO 9660 side of an image: every volume-descriptor set, every directory tree
//! (primary with Rock Ridge names, Joliet, other supplementary trees) and where each record is.
//!
//! A hybrid image can hold more than one descriptor set: `xorriso -partition_offset 16` (Talos,
//! Kairos, kiwi) writes a second superblock and a second copy of the directory records at the start
//! of partition 1, with block addresses relative to that partition. A file rewritten by the
//! patch must be re-pointed in every tree of every set, or a reader that mounts the partition
//! instead of the whole disk sees the old file.

use std::collections::{BTreeMap, HashSet};
use std::io;

use crate::iso9660::SECTOR;
use crate::source::ReadAt;

pub(crate) const SECTOR_U64: u64 = SECTOR as u64;
/// Upper bounds against malformed or hostile images.
const MAX_DIR_BYTES: u64 = 64 << 20;
const MAX_DESCRIPTORS: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("reading the image: {0}")]
    Io(#[from] io::Error),
    #[error("not an ISO 9660 image: {0}")]
    NotIso(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TreeKind {
    Primary,
    Joliet,
    Other,
}

/// A primary or supplementary volume descriptor.
#[derive(Clone, Debug)]
pub struct Descriptor {
    /// Absolute byte offset of the descriptor.
    pub offset: u64,
    pub kind: TreeKind,
    pub root_extent: u32,
    pub root_size: u32,
    /// Volume space size, in blocks.
    pub volume_blocks: u32,
    /// Path tables (L and M, relative block, size in bytes).
    pub path_tables: [u32; 2],
    pub path_table_bytes: u32,
}

/// The descriptors that start at `base` (16 blocks after it).
#[derive(Clone, Debug)]
pub struct DescriptorSet {
    /// Absolute byte offset that block numbers in this set count from.
    pub base: u64,
    pub descriptors: Vec<Descriptor>,
    /// Absolute offset of the El Torito boot record descriptor, if any.
    pub boot_record: Option<u64>,
    /// Blocks (relative) holding the descriptors, up to and including the terminator.
    pub descriptor_blocks: u32,
}

/// One directory record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Absolute byte offset of the directory record.
    pub offset: u64,
    /// Index of the descriptor set.
    pub set: usize,
    pub tree: TreeKind,
    /// Block number, relative to the set's base.
    pub extent: u32,
    pub size: u32,
    pub is_dir: bool,
    pub multi_extent: bool,
    /// `/dir/name`, Rock Ridge or Joliet names where the tree has them, primary names in lower case.
    pub path: String,
}

/// A file of the image, named by its best tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsoFile {
    pub path: String,
    /// Absolute byte offset of its data.
    pub offset: u64,
    pub size: u32,
}

/// Everything the ISO 9660 structures of an image say.
#[derive(Clone, Debug)]
pub struct IsoFs {
    pub len: u64,
    pub sets: Vec<DescriptorSet>,
    pub records: Vec<Record>,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn read_vec(src: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    src.read_exact_at(offset, &mut v)?;
    Ok(v)
}

fn descriptor_set(src: &dyn ReadAt, base: u64, len: u64) -> Result<DescriptorSet, IsoError> {
    let mut set = DescriptorSet {
        base,
        descriptors: Vec::new(),
        boot_record: None,
        descriptor_blocks: 16,
    };
    let mut found_primary = false;
    for i in 0..MAX_DESCRIPTORS {
        let off = base + (16 + i) * SECTOR_U64;
        if off + SECTOR_U64 > len {
            break;
        }
        let d = read_vec(src, off, SECTOR)?;
        if &d[1..6] != b"CD001" {
            if i == 0 {
                return Err(IsoError::NotIso(format!(
                    "no CD001 volume descriptor at byte {}",
                    base + 16 * SECTOR_U64
                )));
            }
            break;
        }
        set.descriptor_blocks = 17 + i as u32;
        let ty = d[0];
        if ty == 255 {
            break;
        }
        if ty == 0 && set.boot_record.is_none() {
            set.boot_record = Some(off);
        }
        if ty != 1 && ty != 2 {
            continue;
        }
        if u16::from_le_bytes([d[128], d[129]]) as usize != SECTOR {
            return Err(IsoError::NotIso("logical block size is not 2048".into()));
        }
        let root = &d[156..190];
        let kind = if ty == 1 {
            found_primary = true;
            TreeKind::Primary
        } else if d[88] == b'%' && d[89] == b'/' && matches!(d[90], b'@' | b'C' | b'E') {
            TreeKind::Joliet
        } else {
            TreeKind::Other
        };
        set.descriptors.push(Descriptor {
            offset: off,
            kind,
            root_extent: le32(&root[2..6]),
            root_size: le32(&root[10..14]),
            volume_blocks: le32(&d[80..84]),
            path_tables: [
                le32(&d[140..144]),
                u32::from_be_bytes([d[148], d[149], d[150], d[151]]),
            ],
            path_table_bytes: le32(&d[132..136]),
        });
    }
    if !found_primary {
        return Err(IsoError::NotIso("no primary volume descriptor".into()));
    }
    Ok(set)
}

/// Parses SUSP entries of a record's system-use area, following `CE` continuations, and returns
/// the Rock Ridge name if any.
fn susp_name(src: &dyn ReadAt, base: u64, su: &[u8]) -> io::Result<Option<String>> {
    let mut name: Option<Vec<u8>> = None;
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
                // flags 0x02/0x04: "." and "..", not a name
                b"NM" if len >= 5 && e[4] & 0x06 == 0 => {
                    name.get_or_insert_with(Vec::new).extend_from_slice(&e[5..]);
                }
                b"CE" if len >= 28 => {
                    next = Some((
                        base + le32(&e[4..8]) as u64 * SECTOR_U64 + le32(&e[12..16]) as u64,
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
    Ok(name.map(|n| String::from_utf8_lossy(&n).into_owned()))
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
    set_index: usize,
    set: &DescriptorSet,
    d: &Descriptor,
    len: u64,
    budget: &mut u64,
) -> Result<Vec<Record>, IsoError> {
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
        let start = set.base + extent as u64 * SECTOR_U64;
        let size = (size as u64).div_ceil(SECTOR_U64) * SECTOR_U64;
        if start + size > len || size > *budget {
            return Err(IsoError::NotIso(format!(
                "directory at block {extent} lies outside the image or is too large"
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
                return Err(IsoError::NotIso(format!(
                    "bad directory record in block {extent}"
                )));
            }
            let r = &data[pos..pos + rl];
            let id_len = r[32] as usize;
            if 33 + id_len > rl {
                return Err(IsoError::NotIso(format!(
                    "bad directory record in block {extent}"
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
                susp_name(src, set.base, su)?
            } else {
                None
            };
            let name = rr_name.unwrap_or_else(|| decode_id(d.kind, id));
            let full = format!("{path}/{name}");
            let rec = Record {
                offset: start + pos as u64,
                set: set_index,
                tree: d.kind,
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

impl IsoFs {
    /// Reads the descriptor set at the start of the image and those at `partition_starts`
    /// (absolute byte offsets of partitions that may hold a partition-relative copy).
    pub fn read(src: &dyn ReadAt, len: u64, partition_starts: &[u64]) -> Result<IsoFs, IsoError> {
        let mut sets = vec![descriptor_set(src, 0, len)?];
        for &p in partition_starts {
            if p == 0 || p % SECTOR_U64 != 0 || sets.iter().any(|s| s.base == p) {
                continue;
            }
            if let Ok(s) = descriptor_set(src, p, len) {
                sets.push(s);
            }
        }
        let mut budget = MAX_DIR_BYTES;
        let mut records = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            for d in &set.descriptors {
                records.extend(walk_tree(src, i, set, d, len, &mut budget)?);
            }
        }
        Ok(IsoFs { len, sets, records })
    }

    /// Absolute offset of a record's data.
    pub fn data_offset(&self, r: &Record) -> u64 {
        self.sets[r.set].base + r.extent as u64 * SECTOR_U64
    }

    /// Files (not directories) by path, named from the best tree of the main set (Rock Ridge
    /// or primary, then Joliet, then others). Multi-extent files are left out.
    pub fn files(&self) -> BTreeMap<String, IsoFile> {
        let mut out = BTreeMap::new();
        for kind in [TreeKind::Primary, TreeKind::Joliet, TreeKind::Other] {
            for r in &self.records {
                if r.set != 0 || r.tree != kind || r.is_dir || r.multi_extent {
                    continue;
                }
                let offset = self.data_offset(r);
                if out
                    .values()
                    .any(|f: &IsoFile| f.offset == offset && f.size == r.size)
                {
                    continue;
                }
                out.entry(r.path.clone()).or_insert(IsoFile {
                    path: r.path.clone(),
                    offset,
                    size: r.size,
                });
            }
        }
        out
    }

    /// The file at `path` (exact, else ignoring case), from [`Self::files`].
    pub fn lookup<'a>(files: &'a BTreeMap<String, IsoFile>, path: &str) -> Option<&'a IsoFile> {
        let p = normalise(path);
        files.get(&p).or_else(|| {
            files
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&p))
                .map(|(_, v)| v)
        })
    }

    /// The file whose data starts at this absolute offset.
    pub fn file_at(files: &BTreeMap<String, IsoFile>, offset: u64) -> Option<&IsoFile> {
        files.values().find(|f| f.offset == offset)
    }

    /// Absolute block ranges (start, blocks) the ISO 9660 structures and files use.
    pub fn used_blocks(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for s in &self.sets {
            let b = s.base / SECTOR_U64;
            v.push((b, s.descriptor_blocks as u64));
            for d in &s.descriptors {
                for pt in d.path_tables {
                    if pt != 0 {
                        v.push((
                            b + pt as u64,
                            (d.path_table_bytes as u64).div_ceil(SECTOR_U64).max(1),
                        ));
                    }
                }
                v.push((
                    b + d.root_extent as u64,
                    (d.root_size as u64).div_ceil(SECTOR_U64).max(1),
                ));
            }
        }
        for r in &self.records {
            let start = self.data_offset(r) / SECTOR_U64;
            v.push((start, (r.size as u64).div_ceil(SECTOR_U64)));
        }
        v
    }
}

/// `/a/b` form: one leading slash, `\` as `/`, no trailing slash, no `.` components.
pub(crate) fn normalise(path: &str) -> String {
    let mut out = String::new();
    for part in path.split(['/', '\\']) {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            if let Some(i) = out.rfind('/') {
                out.truncate(i);
            }
            continue;
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        assert_eq!(normalise("boot//grub/./grub.cfg"), "/boot/grub/grub.cfg");
        assert_eq!(normalise("\\EFI\\BOOT\\grub.cfg"), "/EFI/BOOT/grub.cfg");
        assert_eq!(normalise("/isolinux/../txt.cfg"), "/txt.cfg");
        assert_eq!(normalise(""), "/");
    }
}

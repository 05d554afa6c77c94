//! FAT12/16/32 file systems inside larger images: a reader, an in-place editor whose result is a
//! set of replaced byte ranges, and a builder of new volumes whose big files live elsewhere.
//!
//! - [`FatFs`] reads a volume at `base` of a [`ReadAt`] without loading it: the boot sector, the
//!   used part of one FAT and the directories it is asked about. Everything read from the image
//!   is bounded (directory size, nesting, chain length) so hostile images give errors.
//! - [`FatEdit`] changes files and directories of a [`FatFs`] in an overlay of modified sectors;
//!   [`FatEdit::finish`] returns the replaced ranges, to be laid over the source image.
//! - [`build_fat_pieces`] lays out a new FAT16/FAT32 volume as [`Piece`]s: metadata in memory,
//!   file contents either in memory or named by an id, to be read from elsewhere when the image is
//!   served.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Write};

use crate::fat::{lfn_checksum, lfn_entries, short_alias, short_entry, short_exact, volume_serial};
use crate::source::ReadAt;

/// The FAT limit of 65536 entries per directory.
const MAX_DIR_BYTES: u64 = 65536 * 32;
const MAX_DEPTH: usize = 32;
/// Entries read by [`FatFs::open`], against directory fan-out on hostile images.
const MAX_ENTRIES: usize = 1 << 16;
/// The part of one FAT held in memory (16 Mi FAT32 clusters).
const MAX_TABLE_BYTES: u64 = 64 << 20;
const MAX_FILE: u64 = u32::MAX as u64;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LABEL: u8 = 0x08;
const FSINFO_FREE: usize = 488;
const FSINFO_NEXT: usize = 492;

/// What went wrong reading, editing or building a FAT volume.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("reading the FAT image: {0}")]
    Io(#[from] io::Error),
    #[error("not a FAT file system: {0}")]
    NotFat(&'static str),
    #[error("the FAT volume needs {needed} bytes but only {limit} are available")]
    Truncated { needed: u64, limit: u64 },
    #[error("the FAT of {0} bytes is larger than this reader handles ({MAX_TABLE_BYTES} bytes)")]
    FatTooLarge(u64),
    #[error("cluster number {0} is outside the volume")]
    BadCluster(u32),
    #[error(
        "cluster chain starting at {start}: cluster {cluster} is followed by {value:#x}, a free, reserved or out-of-range value"
    )]
    BadChain {
        start: u32,
        cluster: u32,
        value: u32,
    },
    #[error("cluster chain starting at {start} loops (of the {clusters} clusters of the volume)")]
    ChainLoop { start: u32, clusters: u32 },
    #[error("{path}: {size} bytes, but its cluster chain holds only {capacity}")]
    ChainTooShort {
        path: String,
        size: u64,
        capacity: u64,
    },
    #[error("{0}: the directory is larger than {MAX_DIR_BYTES} bytes, or its chain loops")]
    DirectoryTooLarge(String),
    #[error("{0}: directories nested deeper than {MAX_DEPTH}")]
    TooDeep(String),
    #[error("{0}: directory loop (a directory is reachable twice)")]
    DirectoryLoop(String),
    #[error("more than {MAX_ENTRIES} entries in the volume")]
    TooManyEntries,
    #[error("{0}: directory entry without a valid first cluster")]
    BadEntry(String),
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0:?}: not a valid FAT long file name")]
    BadName(String),
    #[error("{path}: {size} bytes is more than the {max} allowed")]
    FileTooLarge { path: String, size: u64, max: u64 },
    #[error("{0}: no unique short name left in its directory")]
    NoShortName(String),
    #[error("not enough free space in the FAT volume: {needed} bytes needed, {free} bytes free")]
    NoSpace { needed: u64, free: u64 },
    #[error("the fixed root directory of the FAT12/16 volume is full")]
    RootDirectoryFull,
    #[error("{0}: the directory cannot grow past {MAX_DIR_BYTES} bytes")]
    DirectoryFull(String),
    #[error("write at {offset} (+{len}) outside the FAT volume")]
    OutOfVolume { offset: u64, len: u64 },
    #[error(
        "bad volume label {0:?}: 1 to 11 characters from A-Z, 0-9, space and !#$%&'()-@^_`{{}}~"
    )]
    BadLabel(String),
    #[error("{0}: path given twice, empty, or used both as a file and as a directory")]
    BadPath(String),
    #[error("a FAT32 volume on 512-byte sectors cannot hold {0} bytes")]
    VolumeTooLarge(u64),
}

type Result<T, E = FatError> = std::result::Result<T, E>;

/// FAT type, decided as every driver does: by the count of data clusters (FAT32 when the BPB has
/// the FAT32 layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

impl FatKind {
    /// 12, 16 or 32.
    pub fn bits(self) -> u8 {
        match self {
            FatKind::Fat12 => 12,
            FatKind::Fat16 => 16,
            FatKind::Fat32 => 32,
        }
    }
    fn eoc_min(self) -> u32 {
        match self {
            FatKind::Fat12 => 0xFF8,
            FatKind::Fat16 => 0xFFF8,
            FatKind::Fat32 => 0x0FFF_FFF8,
        }
    }
    fn eoc(self) -> u32 {
        match self {
            FatKind::Fat12 => 0xFFF,
            FatKind::Fat16 => 0xFFFF,
            FatKind::Fat32 => 0x0FFF_FFFF,
        }
    }
    /// Bytes of the FAT holding entries 0..n.
    fn table_bytes(self, n: u64) -> u64 {
        match self {
            FatKind::Fat12 => (n * 3).div_ceil(2),
            FatKind::Fat16 => n * 2,
            FatKind::Fat32 => n * 4,
        }
    }
}

/// A file or directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatEntry {
    /// `/EFI/BOOT/BOOTX64.EFI`: the names as stored, from the root.
    pub path: String,
    /// The long name, or else the short name with the NT lower-case flags applied.
    pub name: String,
    pub long_name: Option<String>,
    /// The 8.3 name as stored, e.g. `TALOS-~1.EFI`.
    pub short_name: String,
    pub attr: u8,
    pub is_dir: bool,
    pub size: u32,
    pub first_cluster: u32,
    /// Absolute offset of the 32-byte short entry.
    pub entry_offset: u64,
    /// Absolute offsets of the long-name slots, in on-disk order (last part first).
    pub lfn_offsets: Vec<u64>,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn fat_get(kind: FatKind, t: &[u8], c: u32) -> u32 {
    let c = c as usize;
    // out-of-table reads give 1 (reserved), which every caller treats as a bad link
    match kind {
        FatKind::Fat12 => {
            let o = c * 3 / 2;
            match t.get(o..o + 2) {
                Some(b) => {
                    let w = le16(b, 0) as u32;
                    if c.is_multiple_of(2) {
                        w & 0xFFF
                    } else {
                        w >> 4
                    }
                }
                None => 1,
            }
        }
        FatKind::Fat16 => t.get(c * 2..c * 2 + 2).map_or(1, |b| le16(b, 0) as u32),
        FatKind::Fat32 => t
            .get(c * 4..c * 4 + 4)
            .map_or(1, |b| le32(b, 0) & 0x0FFF_FFFF),
    }
}

/// Sets entry `c` and returns the byte range of the table it touched.
fn fat_put(kind: FatKind, t: &mut [u8], c: u32, v: u32) -> (usize, usize) {
    let c = c as usize;
    match kind {
        FatKind::Fat12 => {
            let o = c * 3 / 2;
            if c.is_multiple_of(2) {
                t[o] = v as u8;
                t[o + 1] = (t[o + 1] & 0xF0) | ((v >> 8) as u8 & 0x0F);
            } else {
                t[o] = (t[o] & 0x0F) | ((v << 4) as u8);
                t[o + 1] = (v >> 4) as u8;
            }
            (o, 2)
        }
        FatKind::Fat16 => {
            t[c * 2..c * 2 + 2].copy_from_slice(&(v as u16).to_le_bytes());
            (c * 2, 2)
        }
        FatKind::Fat32 => {
            // the top 4 bits are reserved and kept
            let old = le32(t, c * 4);
            let n = (old & 0xF000_0000) | (v & 0x0FFF_FFFF);
            t[c * 4..c * 4 + 4].copy_from_slice(&n.to_le_bytes());
            (c * 4, 4)
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Root {
    Fixed { off: u64, entries: u32 },
    Cluster(u32),
}

/// The layout of an opened volume. Offsets are absolute in the source image.
#[derive(Clone, Debug)]
struct Geo {
    base: u64,
    end: u64,
    bps: u64,
    cluster_bytes: u64,
    kind: FatKind,
    /// Data clusters; valid cluster numbers are 2..clusters+2.
    clusters: u32,
    fat_start: u64,
    fat_bytes: u64,
    nfats: u32,
    root: Root,
    data_start: u64,
    fsinfo: Option<u64>,
    bpb_label: Option<String>,
}

impl Geo {
    fn valid(&self, c: u32) -> bool {
        c >= 2 && c < self.clusters + 2
    }
    fn cluster_off(&self, c: u32) -> u64 {
        self.data_start + (c as u64 - 2) * self.cluster_bytes
    }
}

/// Positioned reads within the volume: the source, or the source under an editor's overlay.
trait Media {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()>;
}

/// For the functions that only follow the FAT.
struct NoMedia;

impl Media for NoMedia {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        Err(FatError::OutOfVolume {
            offset: off,
            len: buf.len() as u64,
        })
    }
}

struct SrcMedia<'a> {
    src: &'a dyn ReadAt,
    base: u64,
    end: u64,
}

impl Media for SrcMedia<'_> {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        if off < self.base || off.checked_add(len).is_none_or(|e| e > self.end) {
            return Err(FatError::OutOfVolume { offset: off, len });
        }
        Ok(self.src.read_exact_at(off, buf)?)
    }
}

enum Link {
    Next(u32),
    End,
    Bad(u32),
}

/// One directory read whole, with every slot's position.
struct DirScan {
    /// Absolute offset of each 32-byte slot, in directory order.
    slots: Vec<u64>,
    data: Vec<u8>,
    free: Vec<bool>,
    /// Index of the first 0x00 slot (end of directory).
    end: Option<usize>,
    entries: Vec<FatEntry>,
    /// Slot index of each entry's short entry.
    short_slot: Vec<usize>,
    shorts: HashSet<[u8; 11]>,
    label: Option<String>,
}

impl DirScan {
    fn find(&self, name: &str) -> Option<usize> {
        let want = name.to_uppercase();
        self.entries.iter().position(|e| name_matches(e, &want))
    }
    fn raw(&self, slot: usize) -> [u8; 32] {
        self.data[slot * 32..slot * 32 + 32].try_into().unwrap()
    }
    /// First run of `n` free slots.
    fn free_run(&self, n: usize) -> Option<usize> {
        let mut run = 0;
        for (i, f) in self.free.iter().enumerate() {
            run = if *f { run + 1 } else { 0 };
            if run == n {
                return Some(i + 1 - n);
            }
        }
        None
    }
}

fn short_display(raw: &[u8], case_flags: u8) -> (String, String) {
    let mut n = [0u8; 11];
    n.copy_from_slice(&raw[..11]);
    if n[0] == 0x05 {
        n[0] = 0xE5;
    }
    // bytes above 0x7F are OEM code page characters; shown as Latin-1, which is at least stable
    let part = |b: &[u8]| -> String {
        let s: String = b.iter().map(|&c| c as char).collect();
        s.trim_end_matches(' ').to_string()
    };
    let stem = part(&n[..8]);
    let ext = part(&n[8..]);
    let join = |s: &str, e: &str| {
        if e.is_empty() {
            s.to_string()
        } else {
            format!("{s}.{e}")
        }
    };
    let plain = join(&stem, &ext);
    let stem_c = if case_flags & 0x08 != 0 {
        stem.to_ascii_lowercase()
    } else {
        stem.clone()
    };
    let ext_c = if case_flags & 0x10 != 0 {
        ext.to_ascii_lowercase()
    } else {
        ext
    };
    (plain, join(&stem_c, &ext_c))
}

struct LfnPart {
    slot: usize,
    seq: u8,
    sum: u8,
    units: [u16; 13],
}

/// Parses directory `data`; `dir_path` is the directory's path (`""` for the root).
fn parse_dir(geo: &Geo, dir_path: &str, slots: Vec<u64>, data: Vec<u8>) -> DirScan {
    let n = slots.len();
    let mut free = vec![false; n];
    let mut end = None;
    let mut entries = Vec::new();
    let mut short_slot = Vec::new();
    let mut shorts = HashSet::new();
    let mut label = None;
    let mut lfn: Vec<LfnPart> = Vec::new();
    for i in 0..n {
        let e = &data[i * 32..i * 32 + 32];
        if end.is_some() {
            free[i] = true;
            continue;
        }
        if e[0] == 0 {
            end = Some(i);
            free[i] = true;
            continue;
        }
        if e[0] == 0xE5 {
            free[i] = true;
            lfn.clear();
            continue;
        }
        let attr = e[11];
        if attr & 0x3F == 0x0F {
            let mut units = [0u16; 13];
            for (k, p) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .into_iter()
                .enumerate()
            {
                units[k] = le16(e, p);
            }
            let part = LfnPart {
                slot: i,
                seq: e[0] & 0x1F,
                sum: e[13],
                units,
            };
            if e[0] & 0x40 != 0 {
                lfn.clear();
                if (1..=20).contains(&part.seq) {
                    lfn.push(part);
                }
            } else if lfn
                .last()
                .is_some_and(|l| part.seq + 1 == l.seq && part.sum == l.sum && e[0] & 0xE0 == 0)
            {
                lfn.push(part);
            } else {
                lfn.clear();
            }
            continue;
        }
        let mut raw = [0u8; 11];
        raw.copy_from_slice(&e[..11]);
        // a long name belongs to this entry only when complete and its checksum matches
        let long = (lfn.last().is_some_and(|l| l.seq == 1)
            && lfn.iter().all(|l| l.sum == lfn_checksum(&raw)))
        .then(|| {
            let mut units = Vec::new();
            'name: for p in lfn.iter().rev() {
                for u in p.units {
                    if u == 0 {
                        break 'name;
                    }
                    units.push(u);
                }
            }
            (
                String::from_utf16_lossy(&units),
                lfn.iter().map(|p| slots[p.slot]).collect::<Vec<_>>(),
            )
        })
        .filter(|(s, _)| !s.is_empty());
        lfn.clear();
        if &raw == b".          " || &raw == b"..         " {
            continue;
        }
        if attr & ATTR_LABEL != 0 {
            if attr & ATTR_DIR == 0 && label.is_none() {
                // the label is 11 raw characters, not a name with an extension
                let s: String = raw.iter().map(|&c| c as char).collect();
                label = Some(s.trim_end().to_string()).filter(|s| !s.is_empty());
            }
            continue;
        }
        shorts.insert(raw);
        let (short_name, cased) = short_display(&raw, e[12]);
        let first_cluster = if geo.kind == FatKind::Fat32 {
            ((le16(e, 20) as u32) << 16) | le16(e, 26) as u32
        } else {
            le16(e, 26) as u32
        };
        let (long_name, lfn_offsets) = match long {
            Some((l, o)) => (Some(l), o),
            None => (None, Vec::new()),
        };
        let name = long_name.clone().unwrap_or(cased);
        entries.push(FatEntry {
            path: format!("{dir_path}/{name}"),
            name,
            long_name,
            short_name,
            attr,
            is_dir: attr & ATTR_DIR != 0,
            size: le32(e, 28),
            first_cluster,
            entry_offset: slots[i],
            lfn_offsets,
        });
        short_slot.push(i);
    }
    DirScan {
        slots,
        data,
        free,
        end,
        entries,
        short_slot,
        shorts,
        label,
    }
}

fn split_path(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Reading functions shared by the reader and the editor (which reads through its overlay).
struct View<'v> {
    geo: &'v Geo,
    table: &'v [u8],
    media: &'v dyn Media,
}

impl View<'_> {
    fn link(&self, c: u32) -> Link {
        let v = fat_get(self.geo.kind, self.table, c);
        if v >= self.geo.kind.eoc_min() {
            Link::End
        } else if self.geo.valid(v) {
            Link::Next(v)
        } else {
            Link::Bad(v)
        }
    }

    /// At most `cap` clusters of the chain from `start`, and whether its end was reached.
    fn walk_chain(&self, start: u32, cap: usize) -> Result<(Vec<u32>, bool)> {
        if !self.geo.valid(start) {
            return Err(FatError::BadCluster(start));
        }
        let mut v = vec![start];
        // clusters seen: a set while the chain is short, a bitmap of the volume beyond
        let mut few = HashSet::from([start]);
        let mut bits: Vec<u64> = Vec::new();
        let mut c = start;
        loop {
            match self.link(c) {
                Link::End => return Ok((v, true)),
                Link::Bad(value) => {
                    return Err(FatError::BadChain {
                        start,
                        cluster: c,
                        value,
                    });
                }
                Link::Next(n) => {
                    if v.len() >= cap {
                        return Ok((v, false));
                    }
                    let again = if v.len() < 1024 {
                        !few.insert(n)
                    } else {
                        if bits.is_empty() {
                            bits = vec![0; (self.geo.clusters as usize + 2).div_ceil(64)];
                            for x in &v {
                                bits[*x as usize / 64] |= 1 << (x % 64);
                            }
                        }
                        let (w, b) = (n as usize / 64, 1u64 << (n % 64));
                        let seen = bits[w] & b != 0;
                        bits[w] |= b;
                        seen
                    };
                    if again {
                        return Err(FatError::ChainLoop {
                            start,
                            clusters: self.geo.clusters,
                        });
                    }
                    v.push(n);
                    c = n;
                }
            }
        }
    }

    /// The whole chain; longer than the volume means a loop.
    fn full_chain(&self, start: u32) -> Result<Vec<u32>> {
        let (v, ended) = self.walk_chain(start, self.geo.clusters as usize)?;
        if !ended {
            return Err(FatError::ChainLoop {
                start,
                clusters: self.geo.clusters,
            });
        }
        Ok(v)
    }

    /// The clusters of directory `dir` (0 is the root); None for a fixed root.
    fn dir_chain(&self, dir: u32, path: &str) -> Result<Option<Vec<u32>>> {
        let first = match (dir, self.geo.root) {
            (0, Root::Fixed { .. }) => return Ok(None),
            (0, Root::Cluster(c)) => c,
            (c, _) => c,
        };
        let cap = (MAX_DIR_BYTES / self.geo.cluster_bytes).max(1) as usize;
        let (v, ended) = self.walk_chain(first, cap)?;
        if !ended {
            return Err(FatError::DirectoryTooLarge(path.to_string()));
        }
        Ok(Some(v))
    }

    fn scan(&self, dir: u32, path: &str) -> Result<DirScan> {
        let runs: Vec<(u64, u64)> = match self.dir_chain(dir, path)? {
            None => match self.geo.root {
                Root::Fixed { off, entries } => vec![(off, entries as u64 * 32)],
                Root::Cluster(_) => unreachable!("a cluster root has a chain"),
            },
            Some(chain) => chain
                .iter()
                .map(|c| (self.geo.cluster_off(*c), self.geo.cluster_bytes))
                .collect(),
        };
        let total: u64 = runs.iter().map(|r| r.1).sum();
        let mut data = vec![0u8; total as usize];
        let mut slots = Vec::with_capacity((total / 32) as usize);
        let mut pos = 0usize;
        for (off, len) in runs {
            self.media.read(off, &mut data[pos..pos + len as usize])?;
            slots.extend((0..len / 32).map(|i| off + i * 32));
            pos += len as usize;
        }
        data.truncate(slots.len() * 32);
        Ok(parse_dir(self.geo, path, slots, data))
    }

    fn subdir(&self, e: &FatEntry) -> Result<u32> {
        if !self.geo.valid(e.first_cluster) {
            return Err(FatError::BadEntry(e.path.clone()));
        }
        Ok(e.first_cluster)
    }

    /// The directory id (0 for the root) and path named by `comps`.
    fn find_dir(&self, comps: &[&str]) -> Result<(u32, String)> {
        let mut dir = 0;
        let mut path = String::new();
        for (i, c) in comps.iter().enumerate() {
            let scan = self.scan(dir, &path)?;
            let Some(k) = scan.find(c) else {
                return Err(FatError::NotFound(comps[..=i].join("/")));
            };
            let e = &scan.entries[k];
            if !e.is_dir {
                return Err(FatError::NotADirectory(e.path.clone()));
            }
            dir = self.subdir(e)?;
            path = e.path.clone();
        }
        Ok((dir, path))
    }

    /// (parent directory id, its path, its scan, index of the entry) for `path`.
    fn find(&self, path: &str) -> Result<(u32, String, DirScan, usize)> {
        let comps = split_path(path);
        let Some((name, parent)) = comps.split_last() else {
            return Err(FatError::NotFound("/".into()));
        };
        let (dir, dir_path) = self.find_dir(parent)?;
        let scan = self.scan(dir, &dir_path)?;
        match scan.find(name) {
            Some(k) => Ok((dir, dir_path, scan, k)),
            None => Err(FatError::NotFound(comps.join("/"))),
        }
    }

    fn list(&self, path: &str) -> Result<Vec<FatEntry>> {
        let (dir, dir_path) = self.find_dir(&split_path(path))?;
        Ok(self.scan(dir, &dir_path)?.entries)
    }

    /// Every entry below `dir`, depth first, with the index of its parent in `out`.
    fn walk(
        &self,
        dir: u32,
        path: &str,
        parent: Option<usize>,
        depth: usize,
        seen: &mut HashSet<u32>,
        out: &mut Vec<(FatEntry, Option<usize>)>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(FatError::TooDeep(path.to_string()));
        }
        for e in self.scan(dir, path)?.entries {
            if out.len() >= MAX_ENTRIES {
                return Err(FatError::TooManyEntries);
            }
            let sub = e.is_dir.then(|| self.subdir(&e)).transpose()?;
            let sub_path = e.path.clone();
            out.push((e, parent));
            if let Some(c) = sub {
                if !seen.insert(c) {
                    return Err(FatError::DirectoryLoop(sub_path));
                }
                self.walk(c, &sub_path, Some(out.len() - 1), depth + 1, seen, out)?;
            }
        }
        Ok(())
    }

    fn ranges(&self, e: &FatEntry) -> Result<Vec<(u64, u64)>> {
        let path = e.path.as_str();
        if e.is_dir {
            return Err(FatError::IsADirectory(path.to_string()));
        }
        let size = e.size as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        let need = size.div_ceil(self.geo.cluster_bytes);
        let (chain, _) = self.walk_chain(e.first_cluster, need as usize)?;
        if (chain.len() as u64) < need {
            return Err(FatError::ChainTooShort {
                path: path.to_string(),
                size,
                capacity: chain.len() as u64 * self.geo.cluster_bytes,
            });
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut left = size;
        for c in chain {
            let off = self.geo.cluster_off(c);
            let n = left.min(self.geo.cluster_bytes);
            left -= n;
            match out.last_mut() {
                Some(r) if r.0 + r.1 == off => r.1 += n,
                _ => out.push((off, n)),
            }
        }
        Ok(out)
    }

    fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let (_, _, scan, k) = self.find(path)?;
        self.read_entry(&scan.entries[k], max)
    }

    fn read_entry(&self, e: &FatEntry, max: u64) -> Result<Vec<u8>> {
        let path = e.path.as_str();
        if e.is_dir {
            return Err(FatError::IsADirectory(path.to_string()));
        }
        if e.size as u64 > max {
            return Err(FatError::FileTooLarge {
                path: path.to_string(),
                size: e.size as u64,
                max,
            });
        }
        let mut out = vec![0u8; e.size as usize];
        let mut pos = 0usize;
        for (off, len) in self.ranges(e)? {
            self.media.read(off, &mut out[pos..pos + len as usize])?;
            pos += len as usize;
        }
        Ok(out)
    }

    fn count_free(&self) -> u64 {
        (2..self.geo.clusters + 2)
            .filter(|c| fat_get(self.geo.kind, self.table, *c) == 0)
            .count() as u64
    }
}

/// A FAT12/16/32 volume inside a larger image.
///
/// Opening reads the boot sector, the used part of the FAT and the whole directory tree (bounded);
/// after that only file contents are read, from the source given again to [`FatFs::read_file`].
pub struct FatFs {
    geo: Geo,
    table: Vec<u8>,
    entries: Vec<FatEntry>,
    /// Index in `entries` of each entry's directory (None: the root).
    parents: Vec<Option<usize>>,
    label: Option<String>,
}

impl FatFs {
    /// Opens the volume whose boot sector is at `base`; `limit` is the number of bytes available
    /// from `base` (the partition or El Torito image size), which the volume must fit in.
    pub fn open(src: &dyn ReadAt, base: u64, limit: u64) -> Result<FatFs> {
        if limit < 512 {
            return Err(FatError::NotFat("smaller than a boot sector"));
        }
        let mut b = [0u8; 512];
        src.read_exact_at(base, &mut b)?;
        let bps = le16(&b, 11) as u64;
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(FatError::NotFat(
                "bytes per sector is not 512, 1024, 2048 or 4096",
            ));
        }
        let spc = b[13] as u64;
        if spc == 0 || !spc.is_power_of_two() {
            return Err(FatError::NotFat(
                "sectors per cluster is not a power of two",
            ));
        }
        if spc * bps > 65536 {
            return Err(FatError::NotFat("clusters larger than 64 KiB"));
        }
        let reserved = le16(&b, 14) as u64;
        let nfats = b[16] as u64;
        let root_entries = le16(&b, 17) as u64;
        let media = b[21];
        let total = match le16(&b, 19) {
            0 => le32(&b, 32) as u64,
            n => n as u64,
        };
        let (fat_sz, is32) = match le16(&b, 22) {
            0 => (le32(&b, 36) as u64, true),
            n => (n as u64, false),
        };
        if reserved == 0 {
            return Err(FatError::NotFat("no reserved sectors"));
        }
        if nfats == 0 || nfats > 4 {
            return Err(FatError::NotFat("number of FATs is not 1 to 4"));
        }
        if media < 0xF8 && media != 0xF0 {
            return Err(FatError::NotFat("bad media byte"));
        }
        if total == 0 || fat_sz == 0 {
            return Err(FatError::NotFat("zero total sectors or FAT size"));
        }
        if is32 && root_entries != 0 {
            return Err(FatError::NotFat("FAT32 BPB with a fixed root directory"));
        }
        if !is32 && root_entries == 0 {
            return Err(FatError::NotFat(
                "FAT12/16 BPB without root directory entries",
            ));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let meta = reserved + nfats * fat_sz + root_sectors;
        if total <= meta {
            return Err(FatError::NotFat("no data area"));
        }
        let needed = total * bps;
        if needed > limit {
            return Err(FatError::Truncated { needed, limit });
        }
        let end = base
            .checked_add(needed)
            .ok_or(FatError::NotFat("volume end overflows"))?;
        let clusters = (total - meta) / spc;
        let kind = if is32 {
            FatKind::Fat32
        } else if clusters < 4085 {
            FatKind::Fat12
        } else if clusters < 65525 {
            FatKind::Fat16
        } else {
            return Err(FatError::NotFat("FAT12/16 BPB with a FAT32 cluster count"));
        };
        if clusters == 0 || clusters > 0x0FFF_FFF5 - 2 {
            return Err(FatError::NotFat("cluster count out of range"));
        }
        let fat_bytes = fat_sz * bps;
        let required = kind.table_bytes(clusters + 2);
        if required > fat_bytes {
            return Err(FatError::NotFat("the FAT is too small for the data area"));
        }
        let table_len = required.div_ceil(bps) * bps;
        if table_len > MAX_TABLE_BYTES {
            return Err(FatError::FatTooLarge(table_len));
        }
        let clusters = clusters as u32;
        // the FAT copy read: FAT32 may disable mirroring and name the active one
        let mut active = 0;
        let mut root = Root::Fixed {
            off: base + (reserved + nfats * fat_sz) * bps,
            entries: root_entries as u32,
        };
        let mut fsinfo = None;
        let label_at = if is32 { 66 } else { 38 };
        if is32 {
            let flags = le16(&b, 40);
            if flags & 0x80 != 0 {
                active = (flags & 0x0F) as u32;
                if active as u64 >= nfats {
                    return Err(FatError::NotFat("active FAT number out of range"));
                }
            }
            if le16(&b, 42) != 0 {
                return Err(FatError::NotFat("unknown FAT32 version"));
            }
            let rc = le32(&b, 44);
            if rc < 2 || rc >= clusters + 2 {
                return Err(FatError::NotFat("FAT32 root cluster out of range"));
            }
            root = Root::Cluster(rc);
            let fs = le16(&b, 48) as u64;
            if fs >= 1 && fs < reserved {
                let mut s = vec![0u8; bps as usize];
                src.read_exact_at(base + fs * bps, &mut s)?;
                if le32(&s, 0) == 0x4161_5252
                    && le32(&s, 484) == 0x6141_7272
                    && le32(&s, 508) == 0xAA55_0000
                {
                    fsinfo = Some(base + fs * bps);
                }
            }
        }
        let bpb_label = (b[label_at] == 0x29)
            .then(|| {
                let s: String = b[label_at + 5..label_at + 16]
                    .iter()
                    .map(|&c| c as char)
                    .collect();
                s.trim_end().to_string()
            })
            .filter(|s| !s.is_empty() && s != "NO NAME");
        let fat_start = base + reserved * bps;
        let mut table = vec![0u8; table_len as usize];
        src.read_exact_at(fat_start + active as u64 * fat_bytes, &mut table)?;
        let geo = Geo {
            base,
            end,
            bps,
            cluster_bytes: spc * bps,
            kind,
            clusters,
            fat_start,
            fat_bytes,
            nfats: nfats as u32,
            root,
            data_start: base + meta * bps,
            fsinfo,
            bpb_label,
        };
        let media = SrcMedia { src, base, end };
        let view = View {
            geo: &geo,
            table: &table,
            media: &media,
        };
        let root_label = view.scan(0, "")?.label;
        let mut found = Vec::new();
        let mut seen = HashSet::from([0]);
        if let Root::Cluster(c) = geo.root {
            seen.insert(c);
        }
        view.walk(0, "", None, 0, &mut seen, &mut found)?;
        let (entries, parents) = found.into_iter().unzip();
        let label = root_label.or_else(|| geo.bpb_label.clone());
        Ok(FatFs {
            geo,
            table,
            entries,
            parents,
            label,
        })
    }

    fn view<'v>(&'v self, media: &'v dyn Media) -> View<'v> {
        View {
            geo: &self.geo,
            table: &self.table,
            media,
        }
    }

    pub fn kind(&self) -> FatKind {
        self.geo.kind
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.geo.cluster_bytes
    }

    /// The volume label: the root directory's label entry, else the boot sector's.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// Absolute offset of the volume and its length in bytes.
    pub fn extent(&self) -> (u64, u64) {
        (self.geo.base, self.geo.end - self.geo.base)
    }

    /// Free space in bytes, counted from the FAT.
    pub fn free_bytes(&self) -> u64 {
        self.view(&NoMedia).count_free() * self.geo.cluster_bytes
    }

    /// Every entry of the volume (without `.`, `..` and the label), depth first.
    pub fn entries(&self) -> &[FatEntry] {
        &self.entries
    }

    fn find(&self, comps: &[&str]) -> Option<usize> {
        let mut cur = None;
        for c in comps {
            let want = c.to_uppercase();
            cur = Some((0..self.entries.len()).find(|i| {
                self.parents[*i] == cur
                    && cur.is_none_or(|p| self.entries[p].is_dir)
                    && name_matches(&self.entries[*i], &want)
            })?);
        }
        cur
    }

    /// The entry at `path` (`a/b/c`, leading `/` optional), matched case-insensitively against
    /// long and short names, as FAT does.
    pub fn lookup(&self, path: &str) -> Option<&FatEntry> {
        let comps = split_path(path);
        if comps.is_empty() {
            return None;
        }
        self.find(&comps).map(|i| &self.entries[i])
    }

    /// The entries of directory `path` (`""` or `/` for the root).
    pub fn list_dir(&self, path: &str) -> Result<Vec<&FatEntry>> {
        let comps = split_path(path);
        let dir = if comps.is_empty() {
            None
        } else {
            let i = self
                .find(&comps)
                .ok_or_else(|| FatError::NotFound(path.to_string()))?;
            if !self.entries[i].is_dir {
                return Err(FatError::NotADirectory(path.to_string()));
            }
            Some(i)
        };
        Ok((0..self.entries.len())
            .filter(|i| self.parents[*i] == dir)
            .map(|i| &self.entries[i])
            .collect())
    }

    fn entry(&self, path: &str) -> Result<&FatEntry> {
        self.lookup(path)
            .ok_or_else(|| FatError::NotFound(path.to_string()))
    }

    /// The content of the file at `path`, refused when larger than `max` bytes. `src` is the
    /// image the volume was opened from.
    pub fn read_file(&self, src: &dyn ReadAt, path: &str, max: u64) -> Result<Vec<u8>> {
        let media = SrcMedia {
            src,
            base: self.geo.base,
            end: self.geo.end,
        };
        self.view(&media).read_entry(self.entry(path)?, max)
    }

    /// The file's data as absolute (offset, length) ranges of the image, consecutive clusters
    /// merged.
    pub fn file_ranges(&self, path: &str) -> Result<Vec<(u64, u64)>> {
        self.view(&NoMedia).ranges(self.entry(path)?)
    }
}

fn name_matches(e: &FatEntry, want_upper: &str) -> bool {
    e.short_name.to_uppercase() == want_upper
        || e.long_name
            .as_ref()
            .is_some_and(|l| l.to_uppercase() == want_upper)
}

/// Sectors as they were before the running operation (None: not modified), and the set of
/// those already recorded.
type Journal = (Vec<(u64, Option<Vec<u8>>)>, HashSet<u64>);

/// The modified sectors, over the source.
struct Overlay<'a> {
    src: &'a dyn ReadAt,
    base: u64,
    end: u64,
    bps: u64,
    sectors: BTreeMap<u64, Vec<u8>>,
    /// While an operation runs: the previous state of each sector it touched.
    journal: Option<Journal>,
}

impl Overlay<'_> {
    fn check(&self, off: u64, len: u64) -> Result<()> {
        if off < self.base || off.checked_add(len).is_none_or(|e| e > self.end) {
            return Err(FatError::OutOfVolume { offset: off, len });
        }
        Ok(())
    }

    fn sector_of(&self, a: u64) -> u64 {
        a - (a - self.base) % self.bps
    }

    fn note(&mut self, s: u64) {
        if let Some((log, touched)) = &mut self.journal
            && touched.insert(s)
        {
            log.push((s, self.sectors.get(&s).cloned()));
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) -> Result<()> {
        self.check(off, data.len() as u64)?;
        let bps = self.bps as usize;
        let mut pos = 0usize;
        while pos < data.len() {
            let a = off + pos as u64;
            let s = self.sector_of(a);
            let at = (a - s) as usize;
            let n = (bps - at).min(data.len() - pos);
            self.note(s);
            if !self.sectors.contains_key(&s) {
                let mut sec = vec![0u8; bps];
                if n < bps {
                    self.src.read_exact_at(s, &mut sec)?;
                }
                self.sectors.insert(s, sec);
            }
            self.sectors.get_mut(&s).unwrap()[at..at + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        Ok(())
    }
}

impl Media for Overlay<'_> {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len() as u64)?;
        let stop = off + buf.len() as u64;
        let mut pos = 0usize;
        while pos < buf.len() {
            let a = off + pos as u64;
            let s = self.sector_of(a);
            if let Some(sec) = self.sectors.get(&s) {
                let at = (a - s) as usize;
                let n = (self.bps as usize - at).min(buf.len() - pos);
                buf[pos..pos + n].copy_from_slice(&sec[at..at + n]);
                pos += n;
            } else {
                // one source read up to the next modified sector
                let next = self.sectors.range(s..).next().map_or(u64::MAX, |(k, _)| *k);
                let n = (next.min(stop) - a) as usize;
                self.src.read_exact_at(a, &mut buf[pos..pos + n])?;
                pos += n;
            }
        }
        Ok(())
    }
}

struct Saved {
    fat: Vec<(u32, u32)>,
    dirty: BTreeSet<u64>,
    free: u64,
    last_alloc: u32,
}

/// Changes to a [`FatFs`], kept as modified sectors. Reads through the editor see earlier edits.
/// Each operation is all or nothing: on error the editor is as before it.
pub struct FatEdit<'a> {
    geo: Geo,
    table: Vec<u8>,
    ov: Overlay<'a>,
    /// Sector indices (within one FAT copy) changed.
    dirty: BTreeSet<u64>,
    free: u64,
    /// Where the last allocation ended; the search for free clusters starts after it.
    last_alloc: u32,
    /// The FSInfo sector and whether its free count was known.
    fsinfo: Option<(u64, Vec<u8>, bool)>,
    saved: Option<Saved>,
}

impl<'a> FatEdit<'a> {
    /// An editor of `fs`, which was opened from `src`.
    pub fn new(fs: &FatFs, src: &'a dyn ReadAt) -> Result<FatEdit<'a>> {
        let geo = fs.geo.clone();
        let free = fs.view(&NoMedia).count_free();
        let mut last_alloc = 1;
        let mut fsinfo = None;
        if let Some(off) = geo.fsinfo {
            let mut s = vec![0u8; geo.bps as usize];
            src.read_exact_at(off, &mut s)?;
            // Linux and mtools keep the last allocated cluster here
            let hint = le32(&s, FSINFO_NEXT);
            if geo.valid(hint) {
                last_alloc = hint;
            }
            let known = le32(&s, FSINFO_FREE) != 0xFFFF_FFFF;
            fsinfo = Some((off, s, known));
        }
        Ok(FatEdit {
            ov: Overlay {
                src,
                base: geo.base,
                end: geo.end,
                bps: geo.bps,
                sectors: BTreeMap::new(),
                journal: None,
            },
            table: fs.table.clone(),
            geo,
            dirty: BTreeSet::new(),
            free,
            last_alloc,
            fsinfo,
            saved: None,
        })
    }

    fn view(&self) -> View<'_> {
        View {
            geo: &self.geo,
            table: &self.table,
            media: &self.ov,
        }
    }

    /// Runs `f` as one operation, undoing its changes when it fails.
    fn atomic<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.saved = Some(Saved {
            fat: Vec::new(),
            dirty: self.dirty.clone(),
            free: self.free,
            last_alloc: self.last_alloc,
        });
        self.ov.journal = Some((Vec::new(), HashSet::new()));
        let r = f(self);
        let saved = self.saved.take().unwrap();
        let (log, _) = self.ov.journal.take().unwrap();
        if r.is_err() {
            for (s, old) in log.into_iter().rev() {
                match old {
                    Some(v) => self.ov.sectors.insert(s, v),
                    None => self.ov.sectors.remove(&s),
                };
            }
            for (c, v) in saved.fat.into_iter().rev() {
                fat_put(self.geo.kind, &mut self.table, c, v);
            }
            self.dirty = saved.dirty;
            self.free = saved.free;
            self.last_alloc = saved.last_alloc;
        }
        r
    }

    fn fat_set(&mut self, c: u32, v: u32) {
        let old = fat_get(self.geo.kind, &self.table, c);
        if let Some(s) = &mut self.saved {
            s.fat.push((c, old));
        }
        let (o, n) = fat_put(self.geo.kind, &mut self.table, c, v);
        let bps = self.geo.bps as usize;
        for s in o / bps..=(o + n - 1) / bps {
            self.dirty.insert(s as u64);
        }
        match (old == 0, v == 0) {
            (true, false) => self.free -= 1,
            (false, true) => self.free += 1,
            _ => {}
        }
    }

    fn no_space(&self, clusters: u64) -> FatError {
        FatError::NoSpace {
            needed: clusters * self.geo.cluster_bytes,
            free: self.free * self.geo.cluster_bytes,
        }
    }

    /// Allocates `n` free clusters as one chain (ending in end-of-chain).
    fn alloc(&mut self, n: u64) -> Result<Vec<u32>> {
        if n > self.free {
            return Err(self.no_space(n));
        }
        let mut got = Vec::with_capacity(n as usize);
        let mut c = self.last_alloc;
        for _ in 0..self.geo.clusters {
            if got.len() as u64 == n {
                break;
            }
            c = if c + 1 >= self.geo.clusters + 2 {
                2
            } else {
                c + 1
            };
            if fat_get(self.geo.kind, &self.table, c) == 0 {
                got.push(c);
            }
        }
        if (got.len() as u64) < n {
            return Err(self.no_space(n));
        }
        let eoc = self.geo.kind.eoc();
        for (i, c) in got.iter().enumerate() {
            self.fat_set(*c, got.get(i + 1).copied().unwrap_or(eoc));
        }
        if let Some(l) = got.last() {
            self.last_alloc = *l;
        }
        Ok(got)
    }

    fn zero_cluster(&mut self, c: u32) -> Result<()> {
        let off = self.geo.cluster_off(c);
        self.ov
            .write(off, &vec![0u8; self.geo.cluster_bytes as usize])
    }

    fn write_data(&mut self, chain: &[u32], data: &[u8]) -> Result<()> {
        let cb = self.geo.cluster_bytes as usize;
        for (i, c) in chain.iter().enumerate() {
            let s = i * cb;
            let e = (s + cb).min(data.len());
            if s >= e {
                break;
            }
            let off = self.geo.cluster_off(*c);
            self.ov.write(off, &data[s..e])?;
        }
        Ok(())
    }

    /// Writes `entries` (long-name slots then the short entry) into free slots of `dir`, growing
    /// it when no run of free slots is long enough.
    fn place(&mut self, dir: u32, dir_path: &str, entries: &[[u8; 32]]) -> Result<()> {
        let n = entries.len();
        let mut scan = self.view().scan(dir, dir_path)?;
        if scan.free_run(n).is_none() {
            let Some(chain) = self.view().dir_chain(dir, dir_path)? else {
                return Err(FatError::RootDirectoryFull);
            };
            let trailing = scan.free.iter().rev().take_while(|f| **f).count();
            let more = ((n - trailing) as u64 * 32).div_ceil(self.geo.cluster_bytes);
            if (chain.len() as u64 + more) * self.geo.cluster_bytes > MAX_DIR_BYTES {
                return Err(FatError::DirectoryFull(format!("{dir_path}/")));
            }
            let new = self.alloc(more)?;
            for c in &new {
                self.zero_cluster(*c)?;
            }
            self.fat_set(*chain.last().unwrap(), new[0]);
            scan = self.view().scan(dir, dir_path)?;
        }
        let at = scan
            .free_run(n)
            .ok_or_else(|| FatError::DirectoryFull(format!("{dir_path}/")))?;
        for (i, e) in entries.iter().enumerate() {
            self.ov.write(scan.slots[at + i], e)?;
        }
        // past the old end marker the slots are free whatever they hold: keep an end marker
        // after the new entries
        let after = at + n;
        if scan.end.is_some_and(|end| after > end) && after < scan.slots.len() {
            self.ov.write(scan.slots[after], &[0u8; 32])?;
        }
        Ok(())
    }

    /// Adds an entry named `name` to `dir`, `template` giving everything but the name.
    fn add_entry(
        &mut self,
        dir: u32,
        dir_path: &str,
        name: &str,
        template: [u8; 32],
    ) -> Result<()> {
        let scan = self.view().scan(dir, dir_path)?;
        let path = format!("{dir_path}/{name}");
        if scan.find(name).is_some() {
            return Err(FatError::AlreadyExists(path));
        }
        let (short, lfn) = pick_short(name, &scan.shorts, &path)?;
        let mut e = template;
        e[..11].copy_from_slice(&short);
        e[12] = 0;
        let mut entries = if lfn {
            lfn_entries(name, &short)
        } else {
            Vec::new()
        };
        entries.push(e);
        self.place(dir, dir_path, &entries)
    }

    /// (parent directory id, its path, new entry name) for a path to create, checking the name.
    fn parent_of<'p>(&self, path: &'p str) -> Result<(u32, String, &'p str)> {
        let comps = split_path(path);
        let Some((name, parent)) = comps.split_last() else {
            return Err(FatError::BadName(path.to_string()));
        };
        check_name(name)?;
        let (dir, dir_path) = self.view().find_dir(parent)?;
        Ok((dir, dir_path, name))
    }

    /// Replaces the content of the file at `path`, or creates it (its directory must exist).
    /// The existing cluster chain is reused, its surplus freed or new clusters appended.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        if data.len() as u64 > MAX_FILE {
            return Err(FatError::FileTooLarge {
                path: path.to_string(),
                size: data.len() as u64,
                max: MAX_FILE,
            });
        }
        self.atomic(|ed| {
            let (dir, dir_path, name) = ed.parent_of(path)?;
            let scan = ed.view().scan(dir, &dir_path)?;
            let need = (data.len() as u64).div_ceil(ed.geo.cluster_bytes) as usize;
            let Some(k) = scan.find(name) else {
                let chain = ed.alloc(need as u64)?;
                ed.write_data(&chain, data)?;
                let first = chain.first().copied().unwrap_or(0);
                let t = new_entry(&[b' '; 11], ATTR_ARCHIVE, first, data.len() as u32);
                return ed.add_entry(dir, &dir_path, name, t);
            };
            let e = scan.entries[k].clone();
            if e.is_dir {
                return Err(FatError::IsADirectory(path.to_string()));
            }
            let mut chain = if e.first_cluster == 0 {
                Vec::new()
            } else {
                ed.view().full_chain(e.first_cluster)?
            };
            if chain.len() >= need {
                for c in chain.split_off(need) {
                    ed.fat_set(c, 0);
                }
                if let Some(l) = chain.last() {
                    ed.fat_set(*l, ed.geo.kind.eoc());
                }
            } else {
                let extra = ed.alloc((need - chain.len()) as u64)?;
                if let Some(l) = chain.last() {
                    ed.fat_set(*l, extra[0]);
                }
                chain.extend(extra);
            }
            ed.write_data(&chain, data)?;
            let first = chain.first().copied().unwrap_or(0);
            let mut fields = [0u8; 8];
            fields[..2].copy_from_slice(&((first >> 16) as u16).to_le_bytes());
            ed.ov.write(e.entry_offset + 20, &fields[..2])?;
            fields[2..4].copy_from_slice(&(first as u16).to_le_bytes());
            fields[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
            ed.ov.write(e.entry_offset + 26, &fields[2..8])
        })
    }

    /// Creates directory `path` (its parent must exist).
    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        self.atomic(|ed| {
            let (dir, dir_path, name) = ed.parent_of(path)?;
            if ed.view().scan(dir, &dir_path)?.find(name).is_some() {
                return Err(FatError::AlreadyExists(path.to_string()));
            }
            let c = ed.alloc(1)?[0];
            ed.zero_cluster(c)?;
            // `..` names the root as cluster 0, also on FAT32
            let dot = new_entry(b".          ", ATTR_DIR, c, 0);
            let dotdot = new_entry(b"..         ", ATTR_DIR, dir, 0);
            let off = ed.geo.cluster_off(c);
            ed.ov.write(off, &dot)?;
            ed.ov.write(off + 32, &dotdot)?;
            ed.add_entry(dir, &dir_path, name, new_entry(&[b' '; 11], ATTR_DIR, c, 0))
        })
    }

    /// Renames the entry at `path` to `new_name` in the same directory, keeping its data.
    pub fn rename(&mut self, path: &str, new_name: &str) -> Result<()> {
        check_name(new_name)?;
        self.atomic(|ed| {
            let (dir, dir_path, scan, k) = ed.view().find(path)?;
            let e = scan.entries[k].clone();
            if e.long_name.as_deref().unwrap_or(&e.name) == new_name {
                return Ok(());
            }
            if scan.find(new_name).is_some_and(|j| j != k) {
                return Err(FatError::AlreadyExists(new_name.to_string()));
            }
            let raw = scan.raw(scan.short_slot[k]);
            let short: [u8; 11] = raw[..11].try_into().unwrap();
            let slots = new_name.encode_utf16().count().div_ceil(13);
            // the short name stays valid when it is a generated alias (~N) or the 8.3 form of
            // the new name; then the long-name checksum still matches and the slots are reused
            let short_ok = short.contains(&b'~')
                || short_exact(&new_name.to_uppercase()).is_some_and(|s| s == short);
            if short_exact(new_name).is_none() && e.lfn_offsets.len() == slots && short_ok {
                for (off, ent) in e.lfn_offsets.iter().zip(lfn_entries(new_name, &short)) {
                    ed.ov.write(*off, &ent)?;
                }
                return Ok(());
            }
            for off in e.lfn_offsets.iter().chain([&e.entry_offset]) {
                ed.ov.write(*off, &[0xE5])?;
            }
            ed.add_entry(dir, &dir_path, new_name, raw)
        })
    }

    pub fn list_dir(&self, path: &str) -> Result<Vec<FatEntry>> {
        self.view().list(path)
    }

    /// The entry at `path` as edited so far; None when it (or a directory on the way) is absent.
    pub fn lookup(&self, path: &str) -> Result<Option<FatEntry>> {
        match self.view().find(path) {
            Ok((_, _, mut scan, k)) => Ok(Some(scan.entries.swap_remove(k))),
            Err(FatError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        self.view().read_file(path, max)
    }

    pub fn free_bytes(&self) -> u64 {
        self.free * self.geo.cluster_bytes
    }

    /// The replaced ranges (absolute offset, bytes), sorted and disjoint, adjacent sectors
    /// merged. Every FAT copy gets the changed FAT sectors; FSInfo gets the new free count.
    pub fn finish(mut self) -> Vec<(u64, Vec<u8>)> {
        let bps = self.geo.bps;
        if !self.dirty.is_empty()
            && let Some((off, mut s, known)) = self.fsinfo.take()
        {
            let free = if known { self.free as u32 } else { 0xFFFF_FFFF };
            s[FSINFO_FREE..FSINFO_FREE + 4].copy_from_slice(&free.to_le_bytes());
            s[FSINFO_NEXT..FSINFO_NEXT + 4].copy_from_slice(&self.last_alloc.to_le_bytes());
            self.ov.sectors.insert(off, s);
        }
        for i in std::mem::take(&mut self.dirty) {
            let sec = &self.table[(i * bps) as usize..((i + 1) * bps) as usize];
            for k in 0..self.geo.nfats as u64 {
                let off = self.geo.fat_start + k * self.geo.fat_bytes + i * bps;
                self.ov.sectors.insert(off, sec.to_vec());
            }
        }
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for (off, sec) in std::mem::take(&mut self.ov.sectors) {
            match out.last_mut() {
                Some((o, v)) if *o + v.len() as u64 == off => v.extend_from_slice(&sec),
                _ => out.push((off, sec)),
            }
        }
        out
    }
}

/// A short entry with the cluster's high half set (FAT32), dated 2020-01-01.
fn new_entry(short: &[u8; 11], attr: u8, cluster: u32, size: u32) -> [u8; 32] {
    let mut e = short_entry(short, attr, cluster, size);
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e
}

fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.ends_with('.')
        || name.ends_with(' ')
        || name.encode_utf16().count() > 255
        || name
            .chars()
            .any(|c| c < ' ' || c == '\u{7F}' || "\"*/:<>?\\|".contains(c));
    if bad {
        return Err(FatError::BadName(name.to_string()));
    }
    Ok(())
}

/// The short name for `name` in a directory holding `used`, and whether a long name is needed.
fn pick_short(name: &str, used: &HashSet<[u8; 11]>, path: &str) -> Result<([u8; 11], bool)> {
    if let Some(s) = short_exact(name)
        && !used.contains(&s)
    {
        return Ok((s, false));
    }
    (1..1_000_000)
        .map(|n| short_alias(name, n))
        .find(|s| !used.contains(s))
        .map(|s| (s, true))
        .ok_or_else(|| FatError::NoShortName(path.to_string()))
}

/// A file of a new volume.
#[derive(Clone, Debug)]
pub struct NewFile {
    /// `a/b/c`; directories are created as needed.
    pub path: String,
    pub data: FileData,
}

#[derive(Clone, Debug)]
pub enum FileData {
    Bytes(Vec<u8>),
    /// `len` bytes supplied later by the caller under `id` (e.g. a byte range of a source ISO).
    External {
        id: usize,
        len: u64,
    },
}

impl FileData {
    pub fn len(&self) -> u64 {
        match self {
            FileData::Bytes(b) => b.len() as u64,
            FileData::External { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A run of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Bytes(Vec<u8>),
    Zeros(u64),
    /// Bytes `offset_in_file..offset_in_file+len` of the external file `id`.
    External {
        id: usize,
        offset_in_file: u64,
        len: u64,
    },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Zeros(n) => *n,
            Piece::External { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A new volume as consecutive pieces whose lengths sum to `len`.
#[derive(Clone, Debug)]
pub struct FatImage {
    pub len: u64,
    pub kind: FatKind,
    pub cluster_bytes: u64,
    pub pieces: Vec<Piece>,
}

impl FatImage {
    /// Bytes held in memory by the pieces.
    pub fn bytes_in_memory(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Bytes(b) => b.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Writes the whole image to `out`; `external(id, offset_in_file, buf)` fills `buf` from the
    /// external file `id`.
    pub fn materialise(
        &self,
        mut out: impl Write,
        mut external: impl FnMut(usize, u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        for p in &self.pieces {
            match p {
                Piece::Bytes(b) => out.write_all(b)?,
                Piece::Zeros(n) => {
                    let zeros = vec![0u8; CHUNK.min(*n) as usize];
                    let mut left = *n;
                    while left > 0 {
                        let k = left.min(CHUNK);
                        out.write_all(&zeros[..k as usize])?;
                        left -= k;
                    }
                }
                Piece::External {
                    id,
                    offset_in_file,
                    len,
                } => {
                    let mut done = 0;
                    while done < *len {
                        let k = (*len - done).min(CHUNK) as usize;
                        external(*id, offset_in_file + done, &mut buf[..k])?;
                        out.write_all(&buf[..k])?;
                        done += k as u64;
                    }
                }
            }
        }
        out.flush()
    }
}

#[derive(Default)]
struct Pieces {
    v: Vec<Piece>,
    len: u64,
}

impl Pieces {
    fn bytes(&mut self, b: &[u8]) {
        // trailing zeros of metadata cost nothing as Zeros
        let keep = b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
        if keep > 0 {
            self.len += keep as u64;
            if let Some(Piece::Bytes(p)) = self.v.last_mut() {
                p.extend_from_slice(&b[..keep]);
            } else {
                self.v.push(Piece::Bytes(b[..keep].to_vec()));
            }
        }
        self.zeros((b.len() - keep) as u64);
    }
    fn zeros(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.len += n;
        if let Some(Piece::Zeros(z)) = self.v.last_mut() {
            *z += n;
        } else {
            self.v.push(Piece::Zeros(n));
        }
    }
    fn external(&mut self, id: usize, len: u64) {
        if len > 0 {
            self.len += len;
            self.v.push(Piece::External {
                id,
                offset_in_file: 0,
                len,
            });
        }
    }
}

enum Node {
    Dir(usize),
    File(usize),
}

/// A directory of the new volume: entries in name order.
#[derive(Default)]
struct NewDir {
    parent: usize,
    /// upper-case name → (name, node)
    names: BTreeMap<String, (String, Node)>,
    /// (name, short name, long name needed, dir or file index, is a directory), once short
    /// names are chosen.
    entries: Vec<(String, [u8; 11], bool, usize, bool)>,
    slots: u64,
    cluster: u32,
    nclusters: u64,
}

const HEADROOM: u64 = 1 << 20;
/// Keep cluster counts this far from the FAT12/16/32 thresholds, so no driver's off-by-one
/// decides differently.
const MARGIN: u64 = 64;

fn check_label(label: &str) -> Result<[u8; 11]> {
    let ok = !label.is_empty()
        && label.len() <= 11
        && !label.starts_with(' ')
        && label.bytes().all(|b| {
            b.is_ascii_uppercase()
                || b.is_ascii_digit()
                || b == b' '
                || b"!#$%&'()-@^_`{}~".contains(&b)
        });
    if !ok {
        return Err(FatError::BadLabel(label.to_string()));
    }
    let mut l = [b' '; 11];
    l[..label.len()].copy_from_slice(label.as_bytes());
    Ok(l)
}

/// Lays out a new FAT16 or FAT32 volume (512-byte sectors) labelled `label` holding `files`,
/// each file in consecutive clusters. FAT16 with clusters up to 8 KiB when the content fits
/// (below about 512 MiB), else FAT32 with the largest cluster size (up to 32 KiB) that keeps it
/// a FAT32 cluster count, so the FATs held in memory stay small. About 1 MiB is left free.
pub fn build_fat_pieces(label: &str, files: &[NewFile]) -> Result<FatImage> {
    let lab = check_label(label)?;
    // the directory tree
    let mut dirs: Vec<NewDir> = vec![NewDir::default()];
    for (i, f) in files.iter().enumerate() {
        let comps = split_path(&f.path);
        let bad = || FatError::BadPath(f.path.clone());
        let Some((name, parents)) = comps.split_last() else {
            return Err(bad());
        };
        if f.data.len() > MAX_FILE {
            return Err(FatError::FileTooLarge {
                path: f.path.clone(),
                size: f.data.len(),
                max: MAX_FILE,
            });
        }
        let mut d = 0;
        for p in parents {
            check_name(p)?;
            let next = dirs.len();
            let found = dirs[d].names.get(&p.to_uppercase()).map(|(_, n)| match n {
                Node::Dir(c) => Some(*c),
                Node::File(_) => None,
            });
            match found {
                Some(Some(c)) => d = c,
                Some(None) => return Err(bad()),
                None => {
                    dirs[d]
                        .names
                        .insert(p.to_uppercase(), (p.to_string(), Node::Dir(next)));
                    dirs.push(NewDir {
                        parent: d,
                        ..NewDir::default()
                    });
                    d = next;
                }
            }
        }
        check_name(name)?;
        if dirs[d].names.contains_key(&name.to_uppercase()) {
            return Err(bad());
        }
        dirs[d]
            .names
            .insert(name.to_uppercase(), (name.to_string(), Node::File(i)));
    }
    for (k, d) in dirs.iter_mut().enumerate() {
        let mut used = HashSet::new();
        let mut slots = if k == 0 { 1 } else { 2 };
        for (name, node) in d.names.values() {
            let (short, lfn) = pick_short(name, &used, name)?;
            used.insert(short);
            slots += 1 + if lfn {
                name.encode_utf16().count().div_ceil(13) as u64
            } else {
                0
            };
            let (idx, is_dir) = match node {
                Node::Dir(c) => (*c, true),
                Node::File(i) => (*i, false),
            };
            d.entries.push((name.clone(), short, lfn, idx, is_dir));
        }
        d.slots = slots;
    }
    if dirs.iter().any(|d| d.slots * 32 > MAX_DIR_BYTES) {
        return Err(FatError::DirectoryFull("a new directory".into()));
    }

    // clusters needed with cluster size `cb`; the FAT32 root is a cluster chain too
    let needed = |cb: u64, fat32: bool| -> u64 {
        let d: u64 = dirs
            .iter()
            .enumerate()
            .filter(|(k, _)| *k > 0 || fat32)
            .map(|(_, d)| (d.slots * 32).div_ceil(cb))
            .sum();
        let f: u64 = files.iter().map(|f| f.data.len().div_ceil(cb)).sum();
        d + f + HEADROOM.div_ceil(cb)
    };
    let fat16 = [2048u64, 4096, 8192].into_iter().find_map(|cb| {
        let n = needed(cb, false).max(4085 + MARGIN);
        (n <= 65524 - MARGIN).then_some((cb, n))
    });
    let (kind, cb, count) = match fat16 {
        Some((cb, n)) => (FatKind::Fat16, cb, n),
        None => {
            let (cb, n) = [32768u64, 16384, 8192, 4096]
                .into_iter()
                .map(|cb| (cb, needed(cb, true)))
                .find(|(_, n)| *n >= 65525 + MARGIN)
                .unwrap_or((4096, needed(4096, true).max(65525 + MARGIN)));
            (FatKind::Fat32, cb, n)
        }
    };
    if count > 0x0FFF_FFF5 - 2 {
        return Err(FatError::VolumeTooLarge(count * cb));
    }
    let spc = cb / 512;
    let fat_sectors = kind.table_bytes(count + 2).div_ceil(512);
    let root_entries = if kind == FatKind::Fat32 {
        0
    } else {
        dirs[0].slots.max(512).div_ceil(16) * 16
    };
    if root_entries > 0xFFF0 {
        return Err(FatError::RootDirectoryFull);
    }
    let root_sectors = root_entries * 32 / 512;
    let mut reserved: u64 = if kind == FatKind::Fat32 { 32 } else { 1 };
    // data area aligned to the cluster size
    while !(reserved + 2 * fat_sectors + root_sectors).is_multiple_of(spc) {
        reserved += 1;
    }
    let total = reserved + 2 * fat_sectors + root_sectors + count * spc;
    if total > u32::MAX as u64 {
        return Err(FatError::VolumeTooLarge(total * 512));
    }

    // clusters: the FAT32 root, the other directories, then the files in the order given
    let mut next = 2u32;
    for (k, d) in dirs.iter_mut().enumerate() {
        if k > 0 || kind == FatKind::Fat32 {
            d.cluster = next;
            d.nclusters = (d.slots * 32).div_ceil(cb);
            next += d.nclusters as u32;
        }
    }
    let mut file_cluster = Vec::with_capacity(files.len());
    for f in files {
        let n = f.data.len().div_ceil(cb) as u32;
        file_cluster.push(if n == 0 { 0 } else { next });
        next += n;
    }
    let used_end = next;

    let mut fat = vec![0u8; kind.table_bytes(used_end as u64) as usize];
    fat_put(kind, &mut fat, 0, kind.eoc() & !0xFF | 0xF8);
    fat_put(kind, &mut fat, 1, kind.eoc());
    let mut chain = |start: u32, n: u64| {
        for i in 0..n as u32 {
            let v = if i as u64 + 1 == n {
                kind.eoc()
            } else {
                start + i + 1
            };
            fat_put(kind, &mut fat, start + i, v);
        }
    };
    for d in &dirs {
        if d.nclusters > 0 {
            chain(d.cluster, d.nclusters);
        }
    }
    for (f, c) in files.iter().zip(&file_cluster) {
        if *c != 0 {
            chain(*c, f.data.len().div_ceil(cb));
        }
    }

    let serial = volume_serial(label);
    let mut b = vec![0u8; 512];
    b[0..3].copy_from_slice(if kind == FatKind::Fat32 {
        &[0xEB, 0x58, 0x90]
    } else {
        &[0xEB, 0x3C, 0x90]
    });
    b[3..11].copy_from_slice(b"BESKAR7 ");
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = spc as u8;
    b[14..16].copy_from_slice(&(reserved as u16).to_le_bytes());
    b[16] = 2;
    b[17..19].copy_from_slice(&(root_entries as u16).to_le_bytes());
    if total < 65536 {
        b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
    } else {
        b[32..36].copy_from_slice(&(total as u32).to_le_bytes());
    }
    b[21] = 0xF8;
    b[24..26].copy_from_slice(&63u16.to_le_bytes());
    b[26..28].copy_from_slice(&255u16.to_le_bytes());
    let ext = if kind == FatKind::Fat32 {
        b[36..40].copy_from_slice(&(fat_sectors as u32).to_le_bytes());
        b[44..48].copy_from_slice(&dirs[0].cluster.to_le_bytes());
        b[48..50].copy_from_slice(&1u16.to_le_bytes());
        b[50..52].copy_from_slice(&6u16.to_le_bytes());
        64
    } else {
        b[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
        36
    };
    b[ext] = 0x80;
    b[ext + 2] = 0x29;
    b[ext + 3..ext + 7].copy_from_slice(&serial.to_le_bytes());
    b[ext + 7..ext + 18].copy_from_slice(&lab);
    b[ext + 18..ext + 26].copy_from_slice(if kind == FatKind::Fat32 {
        b"FAT32   "
    } else {
        b"FAT16   "
    });
    // no boot code: halt
    b[ext + 26..ext + 30].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;

    let mut out = Pieces::default();
    out.bytes(&b);
    if kind == FatKind::Fat32 {
        let mut fsinfo = vec![0u8; 512];
        fsinfo[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        fsinfo[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        let free = count + 2 - used_end as u64;
        fsinfo[FSINFO_FREE..FSINFO_FREE + 4].copy_from_slice(&(free as u32).to_le_bytes());
        fsinfo[FSINFO_NEXT..FSINFO_NEXT + 4].copy_from_slice(&(used_end - 1).to_le_bytes());
        fsinfo[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
        out.bytes(&fsinfo);
        out.zeros(4 * 512);
        out.bytes(&b);
        out.bytes(&fsinfo);
        out.zeros((reserved - 8) * 512);
    } else {
        out.zeros((reserved - 1) * 512);
    }
    for _ in 0..2 {
        out.bytes(&fat);
        out.zeros(fat_sectors * 512 - fat.len() as u64);
    }

    let dir_bytes = |k: usize| -> Vec<u8> {
        let d = &dirs[k];
        let mut v = Vec::with_capacity((d.slots * 32) as usize);
        if k == 0 {
            v.extend_from_slice(&new_entry(&lab, ATTR_LABEL, 0, 0));
        } else {
            let parent = if d.parent == 0 {
                0
            } else {
                dirs[d.parent].cluster
            };
            v.extend_from_slice(&new_entry(b".          ", ATTR_DIR, d.cluster, 0));
            v.extend_from_slice(&new_entry(b"..         ", ATTR_DIR, parent, 0));
        }
        for (name, short, lfn, idx, is_dir) in &d.entries {
            if *lfn {
                v.extend(lfn_entries(name, short).iter().flatten());
            }
            let e = if *is_dir {
                new_entry(short, ATTR_DIR, dirs[*idx].cluster, 0)
            } else {
                let len = files[*idx].data.len() as u32;
                new_entry(short, ATTR_ARCHIVE, file_cluster[*idx], len)
            };
            v.extend_from_slice(&e);
        }
        v
    };
    if kind != FatKind::Fat32 {
        let root = dir_bytes(0);
        out.bytes(&root);
        out.zeros(root_sectors * 512 - root.len() as u64);
    }
    let pad = |n: u64| n.next_multiple_of(cb) - n;
    for (k, d) in dirs.iter().enumerate() {
        if d.nclusters > 0 {
            let v = dir_bytes(k);
            out.bytes(&v);
            out.zeros(d.nclusters * cb - v.len() as u64);
        }
    }
    for f in files {
        match &f.data {
            FileData::Bytes(v) => out.bytes(v),
            FileData::External { id, len } => out.external(*id, *len),
        }
        out.zeros(pad(f.data.len()));
    }
    out.zeros((count + 2 - used_end as u64) * cb);
    debug_assert_eq!(out.len, total * 512);
    Ok(FatImage {
        len: out.len,
        kind,
        cluster_bytes: cb,
        pieces: out.v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn materialise(img: &FatImage) -> Vec<u8> {
        let mut v = Vec::new();
        img.materialise(&mut v, |id, off, buf| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (id as u64 * 7 + off + i as u64) as u8;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(v.len() as u64, img.len);
        v
    }

    fn apply(src: &[u8], edits: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut v = src.to_vec();
        for (o, d) in edits {
            v[*o as usize..*o as usize + d.len()].copy_from_slice(d);
        }
        v
    }

    fn small() -> Vec<u8> {
        let files = vec![
            NewFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                data: FileData::External { id: 1, len: 5000 },
            },
            NewFile {
                path: "loader/loader.conf".into(),
                data: FileData::Bytes(b"timeout 3\n".to_vec()),
            },
        ];
        let img = build_fat_pieces("EFI", &files).unwrap();
        assert_eq!(img.kind, FatKind::Fat16);
        materialise(&img)
    }

    #[test]
    fn builder_output_reads_back() {
        let v = small();
        let fs = FatFs::open(&v, 0, v.len() as u64).unwrap();
        assert_eq!(fs.kind(), FatKind::Fat16);
        assert_eq!(fs.label(), Some("EFI"));
        assert_eq!(
            fs.read_file(&v, "/loader/LOADER.CONF", 100).unwrap(),
            b"timeout 3\n"
        );
        let boot = fs.read_file(&v, "efi/boot/bootx64.efi", 1 << 20).unwrap();
        assert_eq!(boot.len(), 5000);
        assert!(
            boot.iter()
                .enumerate()
                .all(|(i, b)| *b == (7 + i as u64) as u8)
        );
        let ranges = fs.file_ranges("EFI/BOOT/BOOTX64.EFI").unwrap();
        assert_eq!(ranges.len(), 1, "contiguous file in one range");
        assert_eq!(ranges[0].1, 5000);
        let paths: Vec<&str> = fs.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/EFI",
                "/EFI/BOOT",
                "/EFI/BOOT/BOOTX64.EFI",
                "/loader",
                "/loader/loader.conf"
            ]
        );
        assert!(matches!(
            fs.read_file(&v, "loader/loader.conf", 5),
            Err(FatError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn edits_are_seen_by_later_reads_and_undone_on_error() {
        let v = small();
        let fs = FatFs::open(&v, 0, v.len() as u64).unwrap();
        let mut ed = FatEdit::new(&fs, &v).unwrap();
        ed.mkdir("loader/entries").unwrap();
        ed.write_file("loader/entries/beskar7.conf", b"title x\n")
            .unwrap();
        assert_eq!(
            ed.read_file("loader/entries/beskar7.conf", 100).unwrap(),
            b"title x\n"
        );
        let before = ed.free_bytes();
        let huge = vec![1u8; (before + 1) as usize];
        assert!(matches!(
            ed.write_file("loader/entries/big", &huge),
            Err(FatError::NoSpace { .. })
        ));
        assert_eq!(ed.free_bytes(), before);
        assert_eq!(ed.lookup("loader/entries/big").unwrap(), None);
        let out = apply(&v, &ed.finish());
        let fs2 = FatFs::open(&out, 0, out.len() as u64).unwrap();
        assert_eq!(
            fs2.read_file(&out, "LOADER/ENTRIES/BESKAR7.CONF", 100)
                .unwrap(),
            b"title x\n"
        );
        assert_eq!(fs2.free_bytes(), before);
    }

    #[test]
    fn fat12_entries_round_trip() {
        let mut t = vec![0u8; 30];
        for c in 0..20u32 {
            fat_put(FatKind::Fat12, &mut t, c, 0xF00 + c * 3);
        }
        for c in 0..20u32 {
            assert_eq!(fat_get(FatKind::Fat12, &t, c), 0xF00 + c * 3);
        }
    }

    #[test]
    fn mutated_boot_sectors_and_fats_give_errors_not_panics() {
        let v = small();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut m = v.clone();
            for _ in 0..1 + rnd() % 4 {
                let at = (rnd() % 4096) as usize;
                m[at] = rnd() as u8;
            }
            if let Ok(fs) = FatFs::open(&m, 0, m.len() as u64) {
                let _ = fs.read_file(&m, "EFI/BOOT/BOOTX64.EFI", 1 << 20);
                let _ = fs.file_ranges("loader/loader.conf");
                if let Ok(mut ed) = FatEdit::new(&fs, &m) {
                    let _ = ed.write_file("loader/x.conf", &[1; 3000]);
                    let _ = ed.rename("loader/loader.conf", "loader.conf.old");
                    let _ = ed.finish();
                }
            }
        }
    }
}

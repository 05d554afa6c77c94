//! MBR and GPT partition tables of hybrid ISOs (512-byte LBAs): reading them and describing the
//! changes that keep them consistent when an image grows or gains a partition.
//!
//! Hybrid ISOs carry a partition table in the ISO 9660 system area so that a USB stick or a
//! virtual disk boots too: `isohybrid` writes an MBR-only table (one partition covering the
//! image), xorriso/grub-mkrescue write a protective (or hybrid) MBR plus a GPT whose backup sits at
//! the end of the image. When the patched image is longer than the source, the backup GPT must
//! move to the new end and both GPT headers and the protective MBR must describe the new size.
//!
//! Nothing here reads the whole image: [`PartitionTables::read`] reads the MBR, the GPT headers
//! and the entry arrays (bounded by [`MAX_ENTRY_ARRAY_BYTES`]). A [`PartitionEdit`] turns the
//! requested changes into [`PartitionChanges`]: byte ranges replaced inside the source plus bytes
//! written after its end, in the same shape as [`crate::patch::IsoPatch`].
//!
//! Checks of an edit: a changed or added range may not overlap another partition of the same
//! table, the MBR/primary GPT area below the first usable LBA or the (new) backup GPT, unless
//! both ranges existed and already overlapped in the source. xorriso's layouts overlap on purpose
//! (a GPT "ISOHybrid" entry from LBA 0 over the whole ISO with the El Torito EFI image inside it,
//! an MBR partition over the whole image), so only overlaps an edit introduces are refused. MBR
//! and GPT entries are not checked against each other (hybrid MBRs mirror or cover GPT entries).
//! The old backup GPT is zeroed when it moves, unless a partition covers it.
//!
//! Not handled: extended/logical MBR partitions (the extended entry is listed, its chain is not
//! followed), sector sizes other than 512 and GPTs at other LBAs than 1 / the last LBA.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

use crate::source::ReadAt;

/// Logical block size of the partition tables.
pub const LBA_SIZE: u64 = 512;
/// Upper bound of a GPT entry array (entry count * entry size) read from an image.
pub const MAX_ENTRY_ARRAY_BYTES: u64 = 1 << 20;
/// GPT type GUID of an EFI system partition.
pub const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// MBR partition type of an EFI system partition.
pub const MBR_TYPE_ESP: u8 = 0xEF;
/// MBR partition type of a GPT protective entry.
pub const MBR_TYPE_PROTECTIVE: u8 = 0xEE;

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_MIN_HEADER: usize = 92;
const GPT_NAME_UNITS: usize = 36;
const MBR_TABLE: usize = 446;
/// Keeps LBA * 512 arithmetic far from overflow on hostile input.
const MAX_LBA: u64 = (u64::MAX / LBA_SIZE) >> 1;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("reading the image: {0}")]
    Io(#[from] io::Error),
    #[error("invalid MBR: {0}")]
    Mbr(String),
    #[error("no valid GPT (primary: {primary}; backup: {backup})")]
    Gpt { primary: String, backup: String },
    #[error("no partition {0} (the image has {1})")]
    UnknownPartition(usize, usize),
    #[error("the image has no {0}")]
    NoTable(&'static str),
    #[error("no free MBR slot: all 4 primary entries are in use")]
    NoFreeMbrSlot,
    #[error("no free GPT entry: all {0} are in use")]
    NoFreeGptEntry(u32),
    #[error(
        "the MBR is protective (type 0xEE, the image has a GPT): add the partition to the GPT instead"
    )]
    ProtectiveMbr,
    #[error("invalid partition range: {0}")]
    Range(String),
    #[error("{0} would overlap {1}")]
    Overlap(String, String),
    #[error("invalid image length {0}: {1}")]
    Length(u64, String),
    #[error("GPT partition name {0:?} is longer than 36 UTF-16 code units")]
    NameTooLong(String),
    #[error("invalid GUID {0:?} (expected XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)")]
    Guid(String),
    #[error("cannot rebuild the damaged primary GPT: {0}")]
    Rebuild(String),
}

// ---------------------------------------------------------------------------------------------
// CRC32 (IEEE 802.3, reflected, as UEFI uses for GPT headers and entry arrays)

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC32 (IEEE) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, b| {
        CRC_TABLE[((c ^ *b as u32) & 0xFF) as usize] ^ (c >> 8)
    })
}

// ---------------------------------------------------------------------------------------------
// GUIDs: stored as on-disk bytes, shown in the mixed-endian text form (first three groups little
// endian), upper case as sgdisk and sfdisk print them.

fn guid_to_string(b: &[u8]) -> String {
    let hex = |idx: &[usize]| -> String { idx.iter().map(|i| format!("{:02X}", b[*i])).collect() };
    format!(
        "{}-{}-{}-{}-{}",
        hex(&[3, 2, 1, 0]),
        hex(&[5, 4]),
        hex(&[7, 6]),
        hex(&[8, 9]),
        hex(&[10, 11, 12, 13, 14, 15])
    )
}

/// Parses a GUID in text form into its on-disk bytes.
pub fn parse_guid(s: &str) -> Result<[u8; 16], PartitionError> {
    let bad = || PartitionError::Guid(s.to_string());
    let groups: Vec<&str> = s.split('-').collect();
    if groups.len() != 5
        || groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .any(|(g, n)| g.len() != n || !g.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let mut be = [0u8; 16];
    for (i, b) in be.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    let mut out = be;
    out[0..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Little-endian helpers

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// MBR

/// A used primary MBR entry (sector count not zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MbrEntry {
    /// 0-based slot (0..4).
    pub slot: usize,
    /// Boot indicator: 0x80 bootable, 0x00 not.
    pub status: u8,
    pub type_byte: u8,
    pub first_lba: u32,
    pub sectors: u32,
}

impl MbrEntry {
    pub fn bootable(&self) -> bool {
        self.status == 0x80
    }
    pub fn is_protective(&self) -> bool {
        self.type_byte == MBR_TYPE_PROTECTIVE
    }
    fn end_lba(&self) -> u64 {
        self.first_lba as u64 + self.sectors as u64
    }
}

/// The MBR in sector 0.
#[derive(Clone, Debug)]
pub struct Mbr {
    /// The 32-bit disk signature at offset 440.
    pub disk_signature: u32,
    /// Used entries, in slot order (the 0xEE protective entry included).
    pub entries: Vec<MbrEntry>,
    raw: [u8; 512],
    /// Cylinder geometry (heads, sectors per track) the existing CHS fields use.
    geometry: (u32, u32),
}

impl Mbr {
    /// True when an entry has type 0xEE: the MBR protects (or, with other entries, mirrors) a GPT.
    pub fn is_protective(&self) -> bool {
        self.entries.iter().any(MbrEntry::is_protective)
    }

    fn raw_entry(&self, slot: usize) -> &[u8] {
        &self.raw[MBR_TABLE + 16 * slot..MBR_TABLE + 16 * slot + 16]
    }

    fn parse(raw: [u8; 512]) -> Result<Option<Mbr>, PartitionError> {
        if raw[510] != 0x55 || raw[511] != 0xAA {
            return Ok(None);
        }
        let mut entries = Vec::new();
        for slot in 0..4 {
            let e = &raw[MBR_TABLE + 16 * slot..MBR_TABLE + 16 * slot + 16];
            // Boot indicators other than 0x00/0x80 mean this is boot code, not a partition table
            // (the check the Linux kernel and libblkid make too).
            if e[0] != 0 && e[0] != 0x80 {
                return Err(PartitionError::Mbr(format!(
                    "signature 0x55AA present but entry {} has boot indicator {:#04x} (not 0x00 or 0x80)",
                    slot + 1,
                    e[0]
                )));
            }
            let sectors = le32(e, 12);
            if sectors != 0 {
                entries.push(MbrEntry {
                    slot,
                    status: e[0],
                    type_byte: e[4],
                    first_lba: le32(e, 8),
                    sectors,
                });
            }
        }
        let mut mbr = Mbr {
            disk_signature: le32(&raw, 440),
            entries,
            raw,
            geometry: (255, 63),
        };
        mbr.geometry = mbr.infer_geometry();
        Ok(Some(mbr))
    }

    /// Finds the heads/sectors geometry under which the existing CHS fields match their LBAs, so
    /// that rewritten entries stay in the same style (isohybrid and xorriso use 64/32).
    fn infer_geometry(&self) -> (u32, u32) {
        let fits = |h: u32, s: u32| {
            self.entries.iter().all(|e| {
                let raw = self.raw_entry(e.slot);
                chs_matches(&raw[1..4], e.first_lba as u64, h, s)
                    && chs_matches(&raw[5..8], e.end_lba().saturating_sub(1), h, s)
            })
        };
        if self.entries.is_empty() {
            return (255, 63);
        }
        for (h, s) in [(255, 63), (64, 32), (16, 63), (128, 32), (255, 32)] {
            if fits(h, s) {
                return (h, s);
            }
        }
        for h in 1..=255 {
            for s in 1..=63 {
                if fits(h, s) {
                    return (h, s);
                }
            }
        }
        (255, 63)
    }
}

/// CHS bytes (head, sector | cylinder high bits, cylinder low) of `lba`, `None` beyond 1023 cylinders.
fn chs(lba: u64, heads: u32, sectors: u32) -> Option<[u8; 3]> {
    let per_cyl = heads as u64 * sectors as u64;
    let c = lba / per_cyl;
    if c > 1023 {
        return None;
    }
    let h = (lba % per_cyl) / sectors as u64;
    let s = lba % sectors as u64 + 1;
    Some([h as u8, (s as u8) | (((c >> 8) as u8) << 6), c as u8])
}

/// True when a CHS field is consistent with `lba` (fields of LBAs beyond CHS reach are not checked).
fn chs_matches(field: &[u8], lba: u64, heads: u32, sectors: u32) -> bool {
    match chs(lba, heads, sectors) {
        Some(c) => c == field,
        None => true,
    }
}

/// CHS bytes for a rewritten entry; beyond reach, 0xFFFFFF for a protective entry (UEFI) and the
/// last addressable cylinder otherwise (what fdisk writes).
fn chs_or_max(lba: u64, geometry: (u32, u32), protective: bool) -> [u8; 3] {
    let (h, s) = geometry;
    chs(lba, h, s).unwrap_or(if protective {
        [0xFF, 0xFF, 0xFF]
    } else {
        [(h - 1) as u8, s as u8 | 0xC0, 0xFF]
    })
}

// ---------------------------------------------------------------------------------------------
// GPT

/// A used GPT entry (type GUID not zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptEntry {
    /// 0-based index in the entry array (partition number - 1).
    pub index: u32,
    /// Type GUID, text form (e.g. [`ESP_TYPE_GUID`]).
    pub type_guid: String,
    /// Unique partition GUID, text form.
    pub unique_guid: String,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// The GPT: the header and entry array of the copy that was valid.
#[derive(Clone, Debug)]
pub struct Gpt {
    pub disk_guid: String,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// The alternate-header LBA of the copy used (for the primary: where its backup is).
    pub alternate_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    /// LBA of the primary entry array (taken from the backup header when the primary is damaged,
    /// which is LBA 2, where the primary is rebuilt).
    pub primary_entries_lba: u64,
    /// True when the primary header or array was damaged and the backup was used.
    pub used_backup: bool,
    pub entries: Vec<GptEntry>,
    /// The header (header-size bytes) of the copy used.
    header: Vec<u8>,
    /// The whole entry array (count * size bytes), unused entries included.
    array: Vec<u8>,
    /// A backup copy found in the image (header LBA, entry array LBA and sectors when valid), to
    /// clear once the backup moves.
    old_backup: Option<(u64, Option<(u64, u64)>)>,
}

impl Gpt {
    /// Sectors of one entry array.
    pub fn array_sectors(&self) -> u64 {
        (self.entry_count as u64 * self.entry_size as u64).div_ceil(LBA_SIZE)
    }
}

/// A GPT header copy read and checked at `lba`, with its entry array.
struct GptCopy {
    header: Vec<u8>,
    array: Vec<u8>,
    entries: Vec<GptEntry>,
}

impl GptCopy {
    fn field(&self, at: usize) -> u64 {
        le64(&self.header, at)
    }
}

fn read_sector(src: &dyn ReadAt, lba: u64) -> Result<[u8; 512], PartitionError> {
    let mut b = [0u8; 512];
    src.read_exact_at(lba * LBA_SIZE, &mut b)?;
    Ok(b)
}

/// Reads and validates a GPT header at `lba` and its entry array. `Err(reason)` for an invalid copy.
fn read_gpt_copy(src: &dyn ReadAt, len: u64, lba: u64) -> Result<GptCopy, String> {
    let sectors = len / LBA_SIZE;
    if lba >= sectors {
        return Err(format!("LBA {lba} is beyond the image ({sectors} sectors)"));
    }
    let sector = read_sector(src, lba).map_err(|e| e.to_string())?;
    if &sector[0..8] != GPT_SIGNATURE {
        return Err(format!("no \"EFI PART\" signature at LBA {lba}"));
    }
    let revision = le32(&sector, 8);
    if revision >> 16 != 1 {
        return Err(format!(
            "unsupported revision {revision:#010x} at LBA {lba}"
        ));
    }
    let header_size = le32(&sector, 12) as usize;
    if !(GPT_MIN_HEADER..=512).contains(&header_size) {
        return Err(format!("header size {header_size} at LBA {lba}"));
    }
    let mut header = sector[..header_size].to_vec();
    let stored = le32(&header, 16);
    put32(&mut header, 16, 0);
    let computed = crc32(&header);
    put32(&mut header, 16, stored);
    if stored != computed {
        return Err(format!(
            "header CRC32 {stored:#010x} at LBA {lba}, computed {computed:#010x}"
        ));
    }
    let my_lba = le64(&header, 24);
    if my_lba != lba {
        return Err(format!("header at LBA {lba} says it is at LBA {my_lba}"));
    }
    let (first_usable, last_usable) = (le64(&header, 40), le64(&header, 48));
    if first_usable > last_usable.saturating_add(1) || last_usable >= sectors {
        return Err(format!(
            "usable LBAs {first_usable}..={last_usable} do not fit the image ({sectors} sectors)"
        ));
    }
    let (entries_lba, count, size) = (le64(&header, 72), le32(&header, 80), le32(&header, 84));
    if size < 128 || !size.is_multiple_of(8) {
        return Err(format!("entry size {size}"));
    }
    let bytes = count as u64 * size as u64;
    if bytes > MAX_ENTRY_ARRAY_BYTES {
        return Err(format!(
            "entry array of {count} * {size} bytes exceeds {MAX_ENTRY_ARRAY_BYTES}"
        ));
    }
    let array_sectors = bytes.div_ceil(LBA_SIZE);
    if entries_lba >= sectors || sectors - entries_lba < array_sectors {
        return Err(format!(
            "entry array at LBA {entries_lba} ({array_sectors} sectors) is beyond the image"
        ));
    }
    if (entries_lba..entries_lba + array_sectors).contains(&lba) {
        return Err(format!(
            "entry array at LBA {entries_lba} covers its header"
        ));
    }
    let mut array = vec![0u8; bytes as usize];
    src.read_exact_at(entries_lba * LBA_SIZE, &mut array)
        .map_err(|e| e.to_string())?;
    let (stored, computed) = (le32(&header, 88), crc32(&array));
    if stored != computed {
        return Err(format!(
            "entry array CRC32 {stored:#010x} at LBA {entries_lba}, computed {computed:#010x}"
        ));
    }
    let mut entries = Vec::new();
    for (index, e) in array.chunks_exact(size as usize).enumerate() {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first_lba, last_lba) = (le64(e, 32), le64(e, 40));
        if first_lba > last_lba || last_lba > MAX_LBA {
            return Err(format!(
                "entry {} has LBAs {first_lba}..={last_lba}",
                index + 1
            ));
        }
        let units: Vec<u16> = (0..GPT_NAME_UNITS)
            .map(|i| le16(e, 56 + 2 * i))
            .take_while(|u| *u != 0)
            .collect();
        entries.push(GptEntry {
            index: index as u32,
            type_guid: guid_to_string(&e[0..16]),
            unique_guid: guid_to_string(&e[16..32]),
            first_lba,
            last_lba,
            attributes: le64(e, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(GptCopy {
        header,
        array,
        entries,
    })
}

fn read_gpt(src: &dyn ReadAt, len: u64, expected: bool) -> Result<Option<Gpt>, PartitionError> {
    let sectors = len / LBA_SIZE;
    if sectors < 2 {
        return if expected {
            Err(PartitionError::Gpt {
                primary: "image shorter than 2 sectors".into(),
                backup: "image shorter than 2 sectors".into(),
            })
        } else {
            Ok(None)
        };
    }
    let primary = read_gpt_copy(src, len, 1);
    // Where the backup is: the primary's alternate LBA (even when the primary is damaged its
    // signature may be intact and the field right) and the last LBA.
    let p1 = read_sector(src, 1)?;
    let mut candidates = Vec::new();
    if &p1[0..8] == GPT_SIGNATURE {
        let alt = le64(&p1, 32);
        if alt > 1 && alt < sectors {
            candidates.push(alt);
        }
    }
    if !candidates.contains(&(sectors - 1)) {
        candidates.push(sectors - 1);
    }
    let mut backup = Err(String::new());
    let mut backup_lba = None;
    let mut backup_signed = None;
    let mut reasons = Vec::new();
    for lba in candidates {
        if read_sector(src, lba)?[0..8] == *GPT_SIGNATURE && backup_signed.is_none() {
            backup_signed = Some(lba);
        }
        match read_gpt_copy(src, len, lba) {
            Ok(c) => {
                backup = Ok(c);
                backup_lba = Some(lba);
                break;
            }
            Err(r) => reasons.push(r),
        }
    }
    if backup.is_err() {
        backup = Err(reasons.join("; "));
    }
    let signed = &p1[0..8] == GPT_SIGNATURE || backup_signed.is_some();
    let old_backup = match (&backup, backup_lba, backup_signed) {
        (Ok(b), Some(lba), _) => Some((
            lba,
            Some((
                b.field(72),
                (le32(&b.header, 80) as u64 * le32(&b.header, 84) as u64).div_ceil(LBA_SIZE),
            )),
        )),
        (_, _, Some(lba)) => Some((lba, None)),
        _ => None,
    };
    let (copy, used_backup, primary_entries_lba) = match (primary, backup) {
        (Ok(p), _) => {
            let at = p.field(72);
            (p, false, at)
        }
        (Err(_), Ok(b)) => {
            // The primary is rebuilt where UEFI puts it: header at LBA 1, entries from LBA 2.
            (b, true, 2)
        }
        (Err(primary), Err(backup)) => {
            return if expected || signed {
                Err(PartitionError::Gpt { primary, backup })
            } else {
                Ok(None)
            };
        }
    };
    let h = &copy.header;
    Ok(Some(Gpt {
        disk_guid: guid_to_string(&h[56..72]),
        first_usable_lba: le64(h, 40),
        last_usable_lba: le64(h, 48),
        alternate_lba: le64(h, 32),
        entry_count: le32(h, 80),
        entry_size: le32(h, 84),
        primary_entries_lba,
        used_backup,
        entries: copy.entries,
        header: copy.header,
        array: copy.array,
        old_backup,
    }))
}

// ---------------------------------------------------------------------------------------------
// Tables and partitions

/// Which tables describe a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum DescribedBy {
    Mbr,
    Gpt,
    /// A hybrid MBR entry with the same range as a GPT entry.
    Both,
}

/// A partition of the image, from the GPT, the MBR or both (an MBR entry with the same first and
/// last LBA as a GPT entry). The 0xEE protective entry is not a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub mbr: Option<MbrEntry>,
    pub gpt: Option<GptEntry>,
}

impl Partition {
    /// Byte range in the image (end exclusive).
    pub fn byte_range(&self) -> std::ops::Range<u64> {
        self.first_lba * LBA_SIZE..(self.last_lba + 1) * LBA_SIZE
    }
    pub fn described_by(&self) -> DescribedBy {
        match (&self.mbr, &self.gpt) {
            (Some(_), Some(_)) => DescribedBy::Both,
            (Some(_), None) => DescribedBy::Mbr,
            _ => DescribedBy::Gpt,
        }
    }
    /// GPT name, if any.
    pub fn name(&self) -> Option<&str> {
        self.gpt.as_ref().map(|g| g.name.as_str())
    }
    fn label(&self) -> String {
        let mut s = String::new();
        if let Some(g) = &self.gpt {
            s += &format!("GPT partition {} {:?}", g.index + 1, g.name);
        }
        if let Some(m) = &self.mbr {
            if !s.is_empty() {
                s += " / ";
            }
            s += &format!("MBR partition {} (type {:#04x})", m.slot + 1, m.type_byte);
        }
        s
    }
}

/// The partition tables of an image.
#[derive(Clone, Debug)]
pub struct PartitionTables {
    len: u64,
    mbr: Option<Mbr>,
    gpt: Option<Gpt>,
    partitions: Vec<Partition>,
}

impl PartitionTables {
    /// Reads the MBR and, when present, the GPT of an image of `len` bytes. An image with neither
    /// (a plain ISO) gives empty tables; a table that is present but broken is an error.
    pub fn read(src: &dyn ReadAt, len: u64) -> Result<PartitionTables, PartitionError> {
        let mbr = if len >= LBA_SIZE {
            Mbr::parse(read_sector(src, 0)?)?
        } else {
            None
        };
        let protective = mbr.as_ref().is_some_and(Mbr::is_protective);
        let gpt = read_gpt(src, len, protective)?;
        let mut partitions = Vec::new();
        let mut matched = BTreeSet::new();
        if let Some(g) = &gpt {
            for e in &g.entries {
                let m = mbr.as_ref().and_then(|m| {
                    m.entries.iter().find(|m| {
                        !m.is_protective()
                            && !matched.contains(&m.slot)
                            && m.first_lba as u64 == e.first_lba
                            && m.end_lba() == e.last_lba + 1
                    })
                });
                if let Some(m) = m {
                    matched.insert(m.slot);
                }
                partitions.push(Partition {
                    first_lba: e.first_lba,
                    last_lba: e.last_lba,
                    mbr: m.cloned(),
                    gpt: Some(e.clone()),
                });
            }
        }
        if let Some(m) = &mbr {
            for e in &m.entries {
                if !e.is_protective() && !matched.contains(&e.slot) {
                    partitions.push(Partition {
                        first_lba: e.first_lba as u64,
                        last_lba: e.end_lba() - 1,
                        mbr: Some(e.clone()),
                        gpt: None,
                    });
                }
            }
        }
        Ok(PartitionTables {
            len,
            mbr,
            gpt,
            partitions,
        })
    }

    /// Length of the image the tables were read from.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.mbr.is_none() && self.gpt.is_none()
    }
    pub fn mbr(&self) -> Option<&Mbr> {
        self.mbr.as_ref()
    }
    pub fn gpt(&self) -> Option<&Gpt> {
        self.gpt.as_ref()
    }
    /// GPT partitions in entry order (with their hybrid MBR entry), then MBR-only partitions in
    /// slot order.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// Bytes the backup GPT (entry array + header) takes at the end of the image, 0 without a
    /// GPT: the space a caller appending data must leave before the new end.
    pub fn backup_gpt_bytes(&self) -> u64 {
        self.gpt
            .as_ref()
            .map_or(0, |g| (g.array_sectors() + 1) * LBA_SIZE)
    }

    /// Starts describing changes.
    pub fn edit(&self) -> PartitionEdit<'_> {
        PartitionEdit {
            tables: self,
            new_len: self.len,
            ranges: BTreeMap::new(),
            new_mbr: Vec::new(),
            new_gpt: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edits

/// The bytes that change: inside the source and after its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionChanges {
    /// Ranges replaced inside the source, sorted and disjoint.
    pub replaced: Vec<(u64, Vec<u8>)>,
    /// Bytes at absolute offsets at or after the old end, sorted and disjoint; the rest of the new
    /// tail is the caller's.
    pub tail: Vec<(u64, Vec<u8>)>,
}

struct NewMbr {
    slot: usize,
    type_byte: u8,
    first_lba: u64,
    sectors: u64,
    bootable: bool,
}

struct NewGpt {
    index: u32,
    type_guid: [u8; 16],
    name: Vec<u16>,
    first_lba: u64,
    last_lba: u64,
}

/// Changes to the partition tables of an image, turned into bytes by [`PartitionEdit::build`].
pub struct PartitionEdit<'a> {
    tables: &'a PartitionTables,
    new_len: u64,
    /// Partition index -> new (first, last) LBA.
    ranges: BTreeMap<usize, (u64, u64)>,
    new_mbr: Vec<NewMbr>,
    new_gpt: Vec<NewGpt>,
}

/// One range taking part in the overlap check of a table.
struct Span {
    label: String,
    orig: Option<(u64, u64)>,
    new: (u64, u64),
    changed: bool,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn lbas(r: (u64, u64)) -> String {
    format!("LBA {}..={}", r.0, r.1)
}

/// Refuses a changed or added range that overlaps another one, unless both existed and already
/// overlapped: xorriso nests partitions on purpose (a GPT "ISOHybrid" entry covering the whole
/// ISO, the El Torito EFI image inside it, entries starting at LBA 0 over the GPT itself), and
/// such a pair stays acceptable when one of them is resized.
fn check_overlaps(spans: &[Span]) -> Result<(), PartitionError> {
    for (i, a) in spans.iter().enumerate() {
        if !a.changed {
            continue;
        }
        for (j, b) in spans.iter().enumerate() {
            if i == j || !overlaps(a.new, b.new) {
                continue;
            }
            let before = matches!((a.orig, b.orig), (Some(x), Some(y)) if overlaps(x, y));
            if !before {
                return Err(PartitionError::Overlap(
                    format!("{} at {}", a.label, lbas(a.new)),
                    format!("{} at {}", b.label, lbas(b.new)),
                ));
            }
        }
    }
    Ok(())
}

/// Sorted writes, later ones winning where they overlap earlier ones.
#[derive(Default)]
struct Writes(BTreeMap<u64, Vec<u8>>);

impl Writes {
    fn put(&mut self, at: u64, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let end = at + bytes.len() as u64;
        let hit: Vec<u64> = self
            .0
            .range(..end)
            .filter(|(o, b)| **o + b.len() as u64 > at)
            .map(|(o, _)| *o)
            .collect();
        for o in hit {
            let old = self.0.remove(&o).unwrap();
            let old_end = o + old.len() as u64;
            if o < at {
                self.0.insert(o, old[..(at - o) as usize].to_vec());
            }
            if old_end > end {
                self.0.insert(end, old[(end - o) as usize..].to_vec());
            }
        }
        self.0.insert(at, bytes);
    }

    /// Splits into (inside the source, at or after its end).
    fn split(self, source_len: u64) -> PartitionChanges {
        let mut out = PartitionChanges::default();
        for (at, mut b) in self.0 {
            let end = at + b.len() as u64;
            if end <= source_len {
                out.replaced.push((at, b));
            } else if at >= source_len {
                out.tail.push((at, b));
            } else {
                let t = b.split_off((source_len - at) as usize);
                out.replaced.push((at, b));
                out.tail.push((source_len, t));
            }
        }
        out
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A version-4-shaped GUID derived from the disk GUID and an entry index, so that the same edit
/// of the same image gives the same bytes.
fn derive_guid(disk: &[u8], index: u32, attempt: u32) -> [u8; 16] {
    let a = le64(disk, 0);
    let b = le64(disk, 8);
    let seed = a ^ b.rotate_left(17) ^ ((index as u64) << 32 | attempt as u64);
    let mut out = [0u8; 16];
    out[0..8].copy_from_slice(&splitmix(seed).to_le_bytes());
    out[8..16].copy_from_slice(&splitmix(seed ^ 0x5DEE_CE66_D1CE_4E5B).to_le_bytes());
    out[7] = (out[7] & 0x0F) | 0x40;
    out[8] = (out[8] & 0x3F) | 0x80;
    out
}

fn mbr_entry_bytes(
    status: u8,
    type_byte: u8,
    first: u64,
    sectors: u64,
    geometry: (u32, u32),
    start_chs: Option<[u8; 3]>,
) -> [u8; 16] {
    let protective = type_byte == MBR_TYPE_PROTECTIVE;
    let mut e = [0u8; 16];
    e[0] = status;
    e[1..4].copy_from_slice(&start_chs.unwrap_or_else(|| chs_or_max(first, geometry, protective)));
    e[4] = type_byte;
    e[5..8].copy_from_slice(&chs_or_max(first + sectors - 1, geometry, protective));
    put32(&mut e, 8, first as u32);
    put32(&mut e, 12, sectors as u32);
    e
}

impl PartitionEdit<'_> {
    /// Sets the new image length (a multiple of 512, at least the old length): the protective MBR
    /// entry is extended to it and the backup GPT moves to its end. Partitions keep their size
    /// unless [`Self::extend_partition_to`] asks otherwise.
    pub fn resize(&mut self, new_len: u64) -> Result<&mut Self, PartitionError> {
        if !new_len.is_multiple_of(LBA_SIZE) {
            return Err(PartitionError::Length(
                new_len,
                "not a multiple of 512".into(),
            ));
        }
        if new_len < self.tables.len {
            return Err(PartitionError::Length(
                new_len,
                format!("shorter than the image ({} bytes)", self.tables.len),
            ));
        }
        self.new_len = new_len;
        Ok(self)
    }

    fn partition(&self, part: usize) -> Result<&Partition, PartitionError> {
        self.tables
            .partitions
            .get(part)
            .ok_or(PartitionError::UnknownPartition(
                part,
                self.tables.partitions.len(),
            ))
    }

    /// Moves the end of partition `part` (an index into [`PartitionTables::partitions`]) to byte
    /// offset `end` (exclusive, a multiple of 512, not before its current end), e.g. to let an
    /// isohybrid partition that covered the whole image cover the grown one.
    pub fn extend_partition_to(
        &mut self,
        part: usize,
        end: u64,
    ) -> Result<&mut Self, PartitionError> {
        let p = self.partition(part)?;
        let (first, last) = (p.first_lba, p.last_lba);
        if !end.is_multiple_of(LBA_SIZE) || end / LBA_SIZE <= last {
            return Err(PartitionError::Range(format!(
                "end {end} is not a multiple of 512 after the current end {}",
                (last + 1) * LBA_SIZE
            )));
        }
        self.set_range(part, first, end / LBA_SIZE - 1)
    }

    /// Moves/resizes partition `part` (both its GPT and MBR entries), keeping everything else of
    /// it. `last_lba` is inclusive.
    pub fn set_range(
        &mut self,
        part: usize,
        first_lba: u64,
        last_lba: u64,
    ) -> Result<&mut Self, PartitionError> {
        let p = self.partition(part)?;
        if first_lba > last_lba || last_lba > MAX_LBA {
            return Err(PartitionError::Range(format!(
                "{}: {first_lba}..={last_lba}",
                p.label()
            )));
        }
        if p.mbr.is_some() {
            check_mbr_range(&p.label(), first_lba, last_lba - first_lba + 1)?;
        }
        self.ranges.insert(part, (first_lba, last_lba));
        Ok(self)
    }

    /// Adds a primary MBR partition in the first free slot (all 16 bytes zero); returns the
    /// 0-based slot. Refused on a protective MBR: its 0xEE entry covers the disk, the GPT is the
    /// table to extend.
    pub fn add_mbr_partition(
        &mut self,
        type_byte: u8,
        first_lba: u64,
        sectors: u64,
        bootable: bool,
    ) -> Result<usize, PartitionError> {
        let mbr = self
            .tables
            .mbr
            .as_ref()
            .ok_or(PartitionError::NoTable("MBR"))?;
        if mbr.is_protective() {
            return Err(PartitionError::ProtectiveMbr);
        }
        if type_byte == 0 || type_byte == MBR_TYPE_PROTECTIVE {
            return Err(PartitionError::Range(format!(
                "MBR type {type_byte:#04x} cannot be added"
            )));
        }
        check_mbr_range("new MBR partition", first_lba, sectors)?;
        let slot = (0..4)
            .find(|s| {
                mbr.raw_entry(*s).iter().all(|b| *b == 0)
                    && !self.new_mbr.iter().any(|n| n.slot == *s)
            })
            .ok_or(PartitionError::NoFreeMbrSlot)?;
        self.new_mbr.push(NewMbr {
            slot,
            type_byte,
            first_lba,
            sectors,
            bootable,
        });
        Ok(slot)
    }

    /// Adds a GPT partition in the first free entry (type GUID zero); returns the 0-based entry
    /// index. Its unique GUID is derived from the disk GUID and the index; attributes are 0.
    pub fn add_gpt_partition(
        &mut self,
        type_guid: &str,
        name: &str,
        first_lba: u64,
        last_lba: u64,
    ) -> Result<u32, PartitionError> {
        let gpt = self
            .tables
            .gpt
            .as_ref()
            .ok_or(PartitionError::NoTable("GPT"))?;
        let type_guid = parse_guid(type_guid)?;
        if type_guid == [0; 16] {
            return Err(PartitionError::Guid(
                "00000000-0000-0000-0000-000000000000".into(),
            ));
        }
        let units: Vec<u16> = name.encode_utf16().collect();
        if units.len() > GPT_NAME_UNITS {
            return Err(PartitionError::NameTooLong(name.to_string()));
        }
        if first_lba > last_lba || last_lba > MAX_LBA {
            return Err(PartitionError::Range(format!(
                "new GPT partition: {first_lba}..={last_lba}"
            )));
        }
        let size = gpt.entry_size as usize;
        let index = (0..gpt.entry_count)
            .find(|i| {
                let at = *i as usize * size;
                gpt.array[at..at + 16].iter().all(|b| *b == 0)
                    && !self.new_gpt.iter().any(|n| n.index == *i)
            })
            .ok_or(PartitionError::NoFreeGptEntry(gpt.entry_count))?;
        self.new_gpt.push(NewGpt {
            index,
            type_guid,
            name: units,
            first_lba,
            last_lba,
        });
        Ok(index)
    }

    /// Checks the whole edit and produces the bytes.
    pub fn build(&self) -> Result<PartitionChanges, PartitionError> {
        let t = self.tables;
        let old_sectors = t.len / LBA_SIZE;
        let new_sectors = self.new_len / LBA_SIZE;
        let resized = self.new_len != t.len;
        let mut w = Writes::default();

        let new_range = |i: usize, p: &Partition| {
            self.ranges
                .get(&i)
                .copied()
                .unwrap_or((p.first_lba, p.last_lba))
        };

        // Where the GPT structures are: below the first usable LBA, and after the last usable
        // one (old and new). MBR-only partitions must keep off them too.
        let gpt_layout = t.gpt.as_ref().map(|g| {
            let e = g.array_sectors();
            let new_last = new_sectors - 1;
            (g, e, new_last, new_last.saturating_sub(e))
        });
        let mut head = (0u64, 0u64);
        let mut backup_span = None;
        if let Some((g, e, new_last, new_entries)) = gpt_layout {
            if new_entries < g.first_usable_lba + 1 || new_last < e + 2 {
                return Err(PartitionError::Length(
                    self.new_len,
                    "too short for the GPT".into(),
                ));
            }
            head = (0, g.first_usable_lba.max(1) - 1);
            let old_end = old_sectors.saturating_sub(1).max(g.last_usable_lba + 1);
            let orig = (g.last_usable_lba + 1, old_end);
            let new = (new_entries, new_last);
            backup_span = Some(Span {
                label: "the backup GPT".into(),
                orig: Some(orig),
                new,
                changed: orig != new,
            });
        }
        let reserved = |label: &str| Span {
            label: label.into(),
            orig: Some(head),
            new: head,
            changed: false,
        };

        // MBR
        if let Some(m) = &t.mbr {
            let mut spans = vec![reserved(if t.gpt.is_some() {
                "the MBR and primary GPT"
            } else {
                "the MBR"
            })];
            if let Some(b) = &backup_span {
                spans.push(Span {
                    label: b.label.clone(),
                    orig: b.orig,
                    new: b.new,
                    changed: b.changed,
                });
            }
            for (i, p) in t.partitions.iter().enumerate() {
                let Some(e) = &p.mbr else { continue };
                let r = new_range(i, p);
                let changed = r != (p.first_lba, p.last_lba);
                if changed {
                    let sectors = r.1 - r.0 + 1;
                    if r.1 >= new_sectors {
                        return Err(PartitionError::Range(format!(
                            "{} at {} ends after the image ({new_sectors} sectors)",
                            p.label(),
                            lbas(r)
                        )));
                    }
                    let start_chs = (r.0 == p.first_lba).then(|| {
                        let raw = m.raw_entry(e.slot);
                        [raw[1], raw[2], raw[3]]
                    });
                    let bytes =
                        mbr_entry_bytes(e.status, e.type_byte, r.0, sectors, m.geometry, start_chs);
                    w.put((MBR_TABLE + 16 * e.slot) as u64, bytes.to_vec());
                }
                spans.push(Span {
                    label: p.label(),
                    orig: Some((p.first_lba, p.last_lba)),
                    new: r,
                    changed,
                });
            }
            for n in &self.new_mbr {
                let r = (n.first_lba, n.first_lba + n.sectors - 1);
                let label = format!(
                    "new MBR partition {} (type {:#04x})",
                    n.slot + 1,
                    n.type_byte
                );
                if r.1 >= new_sectors {
                    return Err(PartitionError::Range(format!(
                        "{label} at {} ends after the image ({new_sectors} sectors)",
                        lbas(r)
                    )));
                }
                let status = if n.bootable { 0x80 } else { 0 };
                let bytes = mbr_entry_bytes(status, n.type_byte, r.0, n.sectors, m.geometry, None);
                w.put((MBR_TABLE + 16 * n.slot) as u64, bytes.to_vec());
                spans.push(Span {
                    label,
                    orig: None,
                    new: r,
                    changed: true,
                });
            }
            check_overlaps(&spans)?;
            // A protective entry that reached the old end reaches the new one.
            if resized {
                for e in m.entries.iter().filter(|e| e.is_protective()) {
                    if e.end_lba() == old_sectors || e.sectors == u32::MAX {
                        let sectors = (new_sectors - e.first_lba as u64).min(u32::MAX as u64);
                        let raw = m.raw_entry(e.slot);
                        let bytes = mbr_entry_bytes(
                            e.status,
                            e.type_byte,
                            e.first_lba as u64,
                            sectors,
                            m.geometry,
                            Some([raw[1], raw[2], raw[3]]),
                        );
                        w.put((MBR_TABLE + 16 * e.slot) as u64, bytes.to_vec());
                    }
                }
            }
        }

        // GPT
        if let Some((g, e, new_last, new_entries)) = gpt_layout {
            let size = g.entry_size as usize;
            let mut array = g.array.clone();
            let mut dirty = BTreeSet::new();
            let mut spans = vec![reserved("the MBR and primary GPT")];
            spans.extend(backup_span);
            for (i, p) in t.partitions.iter().enumerate() {
                let Some(ge) = &p.gpt else { continue };
                let r = new_range(i, p);
                let changed = r != (p.first_lba, p.last_lba);
                if changed {
                    if r.1 > new_last {
                        return Err(PartitionError::Range(format!(
                            "{} at {} ends after the image",
                            p.label(),
                            lbas(r)
                        )));
                    }
                    let at = ge.index as usize * size;
                    put64(&mut array, at + 32, r.0);
                    put64(&mut array, at + 40, r.1);
                    dirty.insert(ge.index);
                }
                spans.push(Span {
                    label: p.label(),
                    orig: Some((p.first_lba, p.last_lba)),
                    new: r,
                    changed,
                });
            }
            let mut guids: BTreeSet<[u8; 16]> = array
                .chunks_exact(size)
                .map(|c| <[u8; 16]>::try_from(&c[16..32]).unwrap())
                .collect();
            guids.insert(g.header[56..72].try_into().unwrap());
            for n in &self.new_gpt {
                let at = n.index as usize * size;
                let entry = &mut array[at..at + size];
                entry.fill(0);
                entry[0..16].copy_from_slice(&n.type_guid);
                let mut attempt = 0;
                let unique = loop {
                    let u = derive_guid(&g.header[56..72], n.index, attempt);
                    if guids.insert(u) {
                        break u;
                    }
                    attempt += 1;
                };
                entry[16..32].copy_from_slice(&unique);
                put64(entry, 32, n.first_lba);
                put64(entry, 40, n.last_lba);
                for (k, u) in n.name.iter().enumerate() {
                    entry[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
                }
                dirty.insert(n.index);
                spans.push(Span {
                    label: format!(
                        "new GPT partition {} {:?}",
                        n.index + 1,
                        String::from_utf16_lossy(&n.name)
                    ),
                    orig: None,
                    new: (n.first_lba, n.last_lba),
                    changed: true,
                });
            }
            check_overlaps(&spans)?;

            if resized || !dirty.is_empty() || g.used_backup {
                let new_last_usable = new_entries - 1;
                let array_crc = crc32(&array);
                let header = |my: u64, alt: u64, entries_lba: u64| {
                    let mut h = g.header.clone();
                    put64(&mut h, 24, my);
                    put64(&mut h, 32, alt);
                    put64(&mut h, 48, new_last_usable);
                    put64(&mut h, 72, entries_lba);
                    put32(&mut h, 88, array_crc);
                    put32(&mut h, 16, 0);
                    let crc = crc32(&h);
                    put32(&mut h, 16, crc);
                    h.resize(LBA_SIZE as usize, 0);
                    h
                };
                let mut padded = array.clone();
                padded.resize((e * LBA_SIZE) as usize, 0);

                // The old backup goes away (zeroed) unless a partition covers it, so that no stale
                // "EFI PART" header is left behind for recovery tools to find.
                if let Some((hdr, entries)) = g.old_backup {
                    let covered =
                        |a: u64, b: u64| {
                            t.partitions.iter().enumerate().any(|(i, p)| {
                                overlaps((a, b), (p.first_lba, p.last_lba))
                                    || overlaps((a, b), new_range(i, p))
                            }) || self.new_mbr.iter().any(|n| {
                                overlaps((a, b), (n.first_lba, n.first_lba + n.sectors - 1))
                            }) || self
                                .new_gpt
                                .iter()
                                .any(|n| overlaps((a, b), (n.first_lba, n.last_lba)))
                        };
                    // Only what lies after the old last usable LBA, where a backup belongs.
                    if hdr > g.last_usable_lba && !covered(hdr, hdr) {
                        w.put(hdr * LBA_SIZE, vec![0; LBA_SIZE as usize]);
                    }
                    if let Some((at, n)) = entries
                        && n > 0
                        && at > g.last_usable_lba
                        && !covered(at, at + n - 1)
                    {
                        w.put(at * LBA_SIZE, vec![0; (n * LBA_SIZE) as usize]);
                    }
                }

                let primary = header(1, new_last, g.primary_entries_lba);
                if g.used_backup {
                    if g.primary_entries_lba + e > g.first_usable_lba {
                        return Err(PartitionError::Rebuild(format!(
                            "{e} entry sectors from LBA {} do not fit below the first usable LBA {}",
                            g.primary_entries_lba, g.first_usable_lba
                        )));
                    }
                    w.put(LBA_SIZE, primary);
                    w.put(g.primary_entries_lba * LBA_SIZE, padded.clone());
                } else {
                    w.put(LBA_SIZE, primary[..g.header.len()].to_vec());
                    for i in &dirty {
                        let at = *i as usize * size;
                        w.put(
                            g.primary_entries_lba * LBA_SIZE + at as u64,
                            array[at..at + size].to_vec(),
                        );
                    }
                }
                w.put(new_entries * LBA_SIZE, padded);
                w.put(new_last * LBA_SIZE, header(new_last, 1, new_entries));
            }
        }
        Ok(w.split(t.len))
    }
}

fn check_mbr_range(label: &str, first: u64, sectors: u64) -> Result<(), PartitionError> {
    if sectors == 0 || first > u32::MAX as u64 || sectors > u32::MAX as u64 {
        return Err(PartitionError::Range(format!(
            "{label}: start {first}, {sectors} sectors do not fit an MBR entry (32-bit, not empty)"
        )));
    }
    Ok(())
}

impl fmt::Display for DescribedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DescribedBy::Mbr => "MBR",
            DescribedBy::Gpt => "GPT",
            DescribedBy::Both => "MBR+GPT",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_text_round_trip() {
        let b = parse_guid(ESP_TYPE_GUID).unwrap();
        assert_eq!(
            b,
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(guid_to_string(&b), ESP_TYPE_GUID);
        assert_eq!(
            parse_guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap(),
            b
        );
        for bad in [
            "",
            "C12A7328F81F11D2BA4B00A0C93EC93B",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93",
            "G12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        ] {
            assert!(parse_guid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chs_like_isohybrid() {
        // isohybrid's 0x17 entry over 2048 sectors, 64 heads / 32 sectors: 00 01 00 .. 3f 20 00.
        assert_eq!(chs(0, 64, 32), Some([0, 1, 0]));
        assert_eq!(chs(2047, 64, 32), Some([0x3f, 0x20, 0]));
        // xorriso's protective entry end for 6808 sectors: 14 18 03.
        assert_eq!(chs(6807, 64, 32), Some([0x14, 0x18, 0x03]));
        assert_eq!(chs(1024 * 64 * 32, 64, 32), None);
        assert_eq!(chs_or_max(u32::MAX as u64, (255, 63), true), [0xFF; 3]);
        assert_eq!(
            chs_or_max(u32::MAX as u64, (255, 63), false),
            [0xFE, 0xFF, 0xFF]
        );
    }

    #[test]
    fn writes_later_wins() {
        let mut w = Writes::default();
        w.put(0, vec![1; 10]);
        w.put(4, vec![2; 2]);
        w.put(8, vec![3; 4]);
        let c = w.split(10);
        assert_eq!(
            c.replaced,
            vec![
                (0, vec![1; 4]),
                (4, vec![2; 2]),
                (6, vec![1; 2]),
                (8, vec![3; 2])
            ]
        );
        assert_eq!(c.tail, vec![(10, vec![3; 2])]);
    }

    #[test]
    fn derived_guids_are_stable_and_v4() {
        let disk = parse_guid("B2CACAFB-B020-4067-8F80-06F9602E8ECA").unwrap();
        let a = derive_guid(&disk, 3, 0);
        assert_eq!(a, derive_guid(&disk, 3, 0));
        assert_ne!(a, derive_guid(&disk, 4, 0));
        assert_eq!(a[7] >> 4, 4);
        assert_eq!(a[8] >> 6, 2);
    }
}

//! The El Torito boot catalog: which images the firmware boots (BIOS and UEFI entries), and a
//! UEFI entry added to it.
//!
//! Entries name an image by its first 2048-byte block; a UEFI entry names a FAT image, either a
//! file of the ISO tree (`efi.img`) or a partition appended after it (xorriso
//! `--interval:appended_partition_2:all::`, as Talos, Kairos and kiwi build them).

use crate::source::ReadAt;

const SECTOR: u64 = 2048;

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn read(src: &dyn ReadAt, off: u64, n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    src.read_exact_at(off, &mut v)?;
    Ok(v)
}

/// Platform of an El Torito boot entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// 0x00: x86 BIOS.
    Bios,
    /// 0xEF: UEFI.
    Efi,
    Other(u8),
}

impl Platform {
    fn from_byte(b: u8) -> Self {
        match b {
            0x00 => Self::Bios,
            0xEF => Self::Efi,
            o => Self::Other(o),
        }
    }
}

/// One bootable entry of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub platform: Platform,
    /// Boot media type (0 = no emulation).
    pub media: u8,
    /// Sectors loaded, in 512-byte units (0 or 1 for EFI images: "up to the end", see below).
    pub load_sectors: u16,
    /// Start, in 2048-byte blocks.
    pub lba: u32,
    /// Byte offset of the entry in the catalog block.
    pub offset: usize,
}

/// The boot catalog: where it is and what it lists.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Absolute byte offset of the catalog block.
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub entries: Vec<BootEntry>,
    /// Byte offset in `bytes` just after the last entry (where a new section can go).
    end: usize,
    /// Offset of the final section header (0x91), if any.
    last_header: Option<usize>,
}

/// Reads the El Torito catalog named by the boot record descriptor at `boot_record`.
pub fn read_catalog(
    src: &dyn ReadAt,
    len: u64,
    boot_record: Option<u64>,
) -> Result<Option<Catalog>, std::io::Error> {
    let Some(br) = boot_record else {
        return Ok(None);
    };
    let d = read(src, br, 2048)?;
    if &d[7..30] != b"EL TORITO SPECIFICATION" {
        return Ok(None);
    }
    let offset = le32(&d[0x47..]) as u64 * SECTOR;
    if offset + SECTOR > len {
        return Ok(None);
    }
    let c = read(src, offset, 2048)?;
    if c[0] != 1 || c[30] != 0x55 || c[31] != 0xAA {
        return Ok(None);
    }
    let entry = |c: &[u8], at: usize, platform: u8| {
        let e = &c[at..at + 32];
        BootEntry {
            platform: Platform::from_byte(platform),
            media: e[1] & 0x0F,
            load_sectors: le16(&e[6..]),
            lba: le32(&e[8..]),
            offset: at,
        }
    };
    let mut entries = Vec::new();
    if c[32] == 0x88 {
        entries.push(entry(&c, 32, c[1]));
    }
    let mut i = 64;
    let mut last_header = None;
    while i + 32 <= c.len() {
        let h = &c[i..i + 32];
        if h[0] != 0x90 && h[0] != 0x91 {
            break;
        }
        if h[0] == 0x91 {
            last_header = Some(i);
        }
        let platform = h[1];
        let count = le16(&h[2..]) as usize;
        i += 32;
        let mut seen = 0;
        while seen < count && i + 32 <= c.len() {
            let at = i;
            i += 32;
            if c[at] == 0x44 {
                // extension record of the previous entry
                continue;
            }
            if c[at] == 0x88 {
                entries.push(entry(&c, at, platform));
            }
            seen += 1;
        }
        if h[0] == 0x91 {
            break;
        }
    }
    Ok(Some(Catalog {
        offset,
        bytes: c,
        entries,
        end: i,
        last_header,
    }))
}

impl Catalog {
    /// The catalog with the entries that load from block `from` loading from `to` instead.
    pub fn with_moved_image(&self, bytes: &[u8], from: u32, to: u32) -> Vec<u8> {
        let mut c = bytes.to_vec();
        for e in self.entries.iter().filter(|e| e.lba == from) {
            c[e.offset + 8..e.offset + 12].copy_from_slice(&to.to_le_bytes());
        }
        c
    }

    /// The catalog with one more bootable UEFI entry: a final section header for platform
    /// 0xEF and a no-emulation entry loading from `lba`. `load_sectors` is what UEFI firmware
    /// takes as the image size; xorriso writes 0 or 1 for an appended partition too large for
    /// the 16-bit field, and EDK2 then uses the medium up to its end.
    pub fn with_efi_entry(&self, lba: u32, load_sectors: u16) -> Option<Vec<u8>> {
        let mut c = self.bytes.clone();
        if self.end + 64 > c.len() || c[self.end..self.end + 64].iter().any(|b| *b != 0) {
            return None;
        }
        if let Some(h) = self.last_header {
            c[h] = 0x90;
        }
        let h = self.end;
        c[h] = 0x91;
        c[h + 1] = 0xEF;
        c[h + 2..h + 4].copy_from_slice(&1u16.to_le_bytes());
        let e = h + 32;
        c[e] = 0x88;
        c[e + 1] = 0;
        c[e + 6..e + 8].copy_from_slice(&load_sectors.to_le_bytes());
        c[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
        Some(c)
    }
}

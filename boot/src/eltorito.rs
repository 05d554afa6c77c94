//! Bootloader configs inside El Torito EFI images (FAT), patched in place.
//!
//! A UEFI boot from CD runs the EFI image named by the El Torito catalog (platform 0xEF). The
//! images made by `grub-mkrescue` and by most distributions hold only `bootx64.efi` whose embedded
//! config searches the ISO file system and loads its `grub.cfg`, so patching the ISO tree is
//! enough. Some images carry a `grub.cfg` of their own; when it has kernel lines, it is patched
//! here, in place: the new content must fit in the clusters already allocated to the file (the
//! directory entry's size is updated, the FAT chain is unchanged). When it does not fit, the
//! patch reports a warning instead of failing.

use crate::kargs::{ConfigKind, append_kernel_args};
use crate::patch::PatchError;
use crate::source::ReadAt;

const SECTOR: u64 = 2048;
const MAX_FAT_BYTES: usize = 16 << 20;
const MAX_FILE: u32 = 1 << 20;

pub(crate) struct EfiConfig {
    pub path: String,
    pub kernel_lines: usize,
    pub rewritten: bool,
    pub replaced: Vec<(u64, Vec<u8>)>,
    pub warning: Option<String>,
}

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

/// Start offsets (bytes) of the EFI no-emulation boot images listed in the El Torito catalog.
pub(crate) fn efi_images(
    src: &dyn ReadAt,
    len: u64,
    boot_record: Option<u64>,
) -> Result<Vec<u64>, PatchError> {
    let Some(br) = boot_record else {
        return Ok(Vec::new());
    };
    let d = read(src, br, 2048)?;
    if &d[7..30] != b"EL TORITO SPECIFICATION" {
        return Ok(Vec::new());
    }
    let cat = le32(&d[0x47..]) as u64 * SECTOR;
    if cat + SECTOR > len {
        return Ok(Vec::new());
    }
    let c = read(src, cat, 2048)?;
    if c[0] != 1 || c[30] != 0x55 || c[31] != 0xAA {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut add = |e: &[u8], platform: u8| {
        if platform == 0xEF && e[0] == 0x88 && e[1] & 0x0F == 0 {
            let off = le32(&e[8..]) as u64 * SECTOR;
            if off + 512 <= len && !out.contains(&off) {
                out.push(off);
            }
        }
    };
    add(&c[32..64], c[1]);
    let mut i = 64;
    while i + 32 <= c.len() {
        let h = &c[i..i + 32];
        if h[0] != 0x90 && h[0] != 0x91 {
            break;
        }
        let platform = h[1];
        let count = le16(&h[2..]) as usize;
        i += 32;
        let mut seen = 0;
        while seen < count && i + 32 <= c.len() {
            let e = &c[i..i + 32];
            i += 32;
            if e[0] == 0x44 {
                continue;
            }
            add(e, platform);
            seen += 1;
        }
        if h[0] == 0x91 {
            break;
        }
    }
    Ok(out)
}

struct Fat {
    cluster_bytes: u64,
    data_start: u64,
    kind: u8,
    table: Vec<u8>,
    root_fixed: Option<(u64, usize)>,
    root_cluster: u32,
    clusters: u32,
}

impl Fat {
    fn open(src: &dyn ReadAt, base: u64, len: u64) -> Result<Option<Fat>, PatchError> {
        let b = read(src, base, 512)?;
        if b[510] != 0x55 || b[511] != 0xAA {
            return Ok(None);
        }
        let bps = le16(&b[11..]) as u64;
        let spc = b[13] as u64;
        let reserved = le16(&b[14..]) as u64;
        let nfats = b[16] as u64;
        let root_entries = le16(&b[17..]) as u64;
        let total = if le16(&b[19..]) != 0 {
            le16(&b[19..]) as u64
        } else {
            le32(&b[32..]) as u64
        };
        let fat_sz = if le16(&b[22..]) != 0 {
            le16(&b[22..]) as u64
        } else {
            le32(&b[36..]) as u64
        };
        if !matches!(bps, 512 | 1024 | 2048 | 4096)
            || spc == 0
            || !spc.is_power_of_two()
            || nfats == 0
            || fat_sz == 0
        {
            return Ok(None);
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_sec = reserved + nfats * fat_sz + root_sectors;
        if total <= data_sec || base + total * bps > len {
            return Ok(None);
        }
        let clusters = ((total - data_sec) / spc) as u32;
        let kind = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        let fat_bytes = (fat_sz * bps) as usize;
        if fat_bytes > MAX_FAT_BYTES {
            return Ok(None);
        }
        let table = read(src, base + reserved * bps, fat_bytes)?;
        let root_fixed = (kind != 32).then(|| {
            (
                base + (reserved + nfats * fat_sz) * bps,
                (root_entries * 32) as usize,
            )
        });
        Ok(Some(Fat {
            cluster_bytes: spc * bps,
            data_start: base + data_sec * bps,
            kind,
            table,
            root_fixed,
            root_cluster: le32(&b[44..]),
            clusters,
        }))
    }

    fn next(&self, c: u32) -> Option<u32> {
        let v = match self.kind {
            12 => {
                let o = c as usize * 3 / 2;
                let w = le16(self.table.get(o..o + 2)?) as u32;
                if c.is_multiple_of(2) {
                    w & 0xFFF
                } else {
                    w >> 4
                }
            }
            16 => le16(self.table.get(c as usize * 2..c as usize * 2 + 2)?) as u32,
            _ => le32(self.table.get(c as usize * 4..c as usize * 4 + 4)?) & 0x0FFF_FFFF,
        };
        let end = match self.kind {
            12 => 0xFF8,
            16 => 0xFFF8,
            _ => 0x0FFF_FFF8,
        };
        (v >= 2 && v < end && v < self.clusters + 2).then_some(v)
    }

    fn chain(&self, start: u32) -> Vec<u32> {
        let mut v = Vec::new();
        let mut c = start;
        while c >= 2 && c < self.clusters + 2 && v.len() < 1 << 16 {
            v.push(c);
            match self.next(c) {
                Some(n) => c = n,
                None => break,
            }
        }
        v
    }

    fn cluster_off(&self, c: u32) -> u64 {
        self.data_start + (c as u64 - 2) * self.cluster_bytes
    }

    /// Directory bytes with the absolute offset of each byte run (per cluster).
    fn read_dir(
        &self,
        src: &dyn ReadAt,
        first_cluster: Option<u32>,
    ) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
        match (first_cluster, self.root_fixed) {
            (None, Some((off, n))) => Ok(vec![(off, read(src, off, n)?)]),
            (None, None) => self.read_dir(src, Some(self.root_cluster)),
            (Some(c), _) => self
                .chain(c)
                .into_iter()
                .map(|c| {
                    Ok((
                        self.cluster_off(c),
                        read(src, self.cluster_off(c), self.cluster_bytes as usize)?,
                    ))
                })
                .collect(),
        }
    }
}

struct FatFile {
    path: String,
    entry_off: u64,
    first_cluster: u32,
    size: u32,
}

fn walk(
    src: &dyn ReadAt,
    fat: &Fat,
    dir: Option<u32>,
    path: &str,
    depth: usize,
    out: &mut Vec<FatFile>,
) -> std::io::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    let mut lfn: Vec<(u8, Vec<u16>)> = Vec::new();
    for (off, data) in fat.read_dir(src, dir)? {
        for (i, e) in data.chunks_exact(32).enumerate() {
            if e[0] == 0 {
                return Ok(());
            }
            if e[0] == 0xE5 {
                lfn.clear();
                continue;
            }
            let attr = e[11];
            if attr == 0x0F {
                let mut units = Vec::new();
                for p in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30] {
                    let u = le16(&e[p..]);
                    if u == 0 || u == 0xFFFF {
                        break;
                    }
                    units.push(u);
                }
                lfn.push((e[0] & 0x1F, units));
                continue;
            }
            let name = if lfn.is_empty() {
                // NT case flags: 0x08 lower-case base name, 0x10 lower-case extension
                let mut stem = String::from_utf8_lossy(&e[..8]).trim_end().to_string();
                let mut ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
                if e[12] & 0x08 != 0 {
                    stem = stem.to_ascii_lowercase();
                }
                if e[12] & 0x10 != 0 {
                    ext = ext.to_ascii_lowercase();
                }
                if ext.is_empty() {
                    stem
                } else {
                    format!("{stem}.{ext}")
                }
            } else {
                lfn.sort_by_key(|(n, _)| *n);
                String::from_utf16_lossy(
                    &lfn.iter().flat_map(|(_, u)| u.clone()).collect::<Vec<_>>(),
                )
            };
            lfn.clear();
            if attr & 0x08 != 0 || name == "." || name == ".." {
                continue;
            }
            let cluster = ((le16(&e[20..]) as u32) << 16) | le16(&e[26..]) as u32;
            let full = format!("{path}/{name}");
            if attr & 0x10 != 0 {
                if cluster >= 2 {
                    walk(src, fat, Some(cluster), &full, depth + 1, out)?;
                }
            } else {
                out.push(FatFile {
                    path: full,
                    entry_off: off + i as u64 * 32,
                    first_cluster: cluster,
                    size: le32(&e[28..]),
                });
            }
        }
    }
    Ok(())
}

/// Finds `grub.cfg` files in the EFI images and patches those with kernel lines in place.
pub(crate) fn patch_efi_images(
    src: &dyn ReadAt,
    len: u64,
    boot_record: Option<u64>,
    args: &[String],
) -> Result<Vec<EfiConfig>, PatchError> {
    let mut out = Vec::new();
    for base in efi_images(src, len, boot_record)? {
        let Some(fat) = Fat::open(src, base, len)? else {
            continue;
        };
        let mut files = Vec::new();
        walk(src, &fat, None, "", 0, &mut files)?;
        for f in files {
            if !f.path.to_ascii_lowercase().ends_with("/grub.cfg")
                || f.size > MAX_FILE
                || f.size == 0
            {
                continue;
            }
            let chain = fat.chain(f.first_cluster);
            let capacity = chain.len() as u64 * fat.cluster_bytes;
            if capacity < f.size as u64 {
                continue;
            }
            let mut data = Vec::with_capacity(f.size as usize);
            for c in &chain {
                let want = (f.size as usize - data.len()).min(fat.cluster_bytes as usize);
                if want == 0 {
                    break;
                }
                data.extend_from_slice(&read(src, fat.cluster_off(*c), want)?);
            }
            let p = append_kernel_args(ConfigKind::Grub, &data, args);
            let path = format!(
                "[El Torito EFI image at sector {}]{}",
                base / SECTOR,
                f.path
            );
            let mut cfg = EfiConfig {
                path,
                kernel_lines: p.kernel_lines,
                rewritten: false,
                replaced: Vec::new(),
                warning: None,
            };
            if p.changed_lines > 0 {
                if p.data.len() as u64 <= capacity {
                    for (k, c) in chain.iter().enumerate() {
                        let s = k * fat.cluster_bytes as usize;
                        if s >= p.data.len() {
                            break;
                        }
                        let e = (s + fat.cluster_bytes as usize).min(p.data.len());
                        cfg.replaced
                            .push((fat.cluster_off(*c), p.data[s..e].to_vec()));
                    }
                    cfg.replaced.push((
                        f.entry_off + 28,
                        (p.data.len() as u32).to_le_bytes().to_vec(),
                    ));
                    cfg.rewritten = true;
                } else {
                    cfg.warning = Some(format!(
                        "{}: {} kernel line(s) not patched: the new content ({} bytes) does not fit the {} bytes allocated in the FAT image; a UEFI boot may not see the arguments",
                        cfg.path,
                        p.kernel_lines,
                        p.data.len(),
                        capacity
                    ));
                }
            }
            out.push(cfg);
        }
    }
    Ok(out)
}

//! In-memory FAT12 writer with VFAT long names, for config volumes in Floppy/USBStick slots.
//!
//! Geometry: 512-byte sectors, one reserved sector, two FATs, a 224-entry root directory.
//! The image is at least 1.44 MB (the classic floppy geometry, accepted by every BMC) and grows
//! with the content, doubling the cluster size to stay a FAT12 volume (fewer than 4085 clusters).

use std::collections::BTreeMap;

use crate::volume::{VolumeError, VolumeFile, normalise_files};

const BPS: usize = 512;
const ROOT_ENTRIES: usize = 224;
const MIN_SECTORS: usize = 2880;
const MAX_CLUSTERS: usize = 4084;
/// 2020-01-01 in FAT date format.
pub(crate) const FAT_DATE: u16 = ((2020 - 1980) << 9) | (1 << 5) | 1;

#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    files: BTreeMap<String, usize>,
    cluster: u32,
    clusters: u32,
}

fn lfn_needed(name: &str) -> bool {
    short_exact(name).is_none()
}

/// The 11-byte short name when `name` is already a valid upper-case 8.3 name.
pub(crate) fn short_exact(name: &str) -> Option<[u8; 11]> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, ""),
    };
    let ok = |s: &str| {
        s.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || b"_-~!#$%&'()@^`{}".contains(&b)
        })
    };
    if stem.is_empty()
        || stem.len() > 8
        || ext.len() > 3
        || !ok(stem)
        || !ok(ext)
        || (name.contains('.') && ext.is_empty())
    {
        return None;
    }
    let mut s = [b' '; 11];
    s[..stem.len()].copy_from_slice(stem.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

pub(crate) fn short_alias(name: &str, n: usize) -> [u8; 11] {
    let clean = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|b| *b != b' ' && *b != b'.')
            .map(|b| {
                let b = b.to_ascii_uppercase();
                if b.is_ascii_uppercase() || b.is_ascii_digit() || b"_-~!#$%&'()@^`{}".contains(&b)
                {
                    b
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let mut stem = clean(stem);
    let mut ext = clean(ext);
    ext.truncate(3);
    let tail = format!("~{n}");
    stem.truncate(8 - tail.len());
    stem.extend_from_slice(tail.as_bytes());
    let mut s = [b' '; 11];
    s[..stem.len()].copy_from_slice(&stem);
    s[8..8 + ext.len()].copy_from_slice(&ext);
    s
}

pub(crate) fn lfn_checksum(short: &[u8; 11]) -> u8 {
    let mut sum: u8 = 0;
    for &b in short {
        sum = sum.rotate_right(1).wrapping_add(b);
    }
    sum
}

pub(crate) fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[16..18].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[18..20].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[24..26].copy_from_slice(&FAT_DATE.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

pub(crate) fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if !units.len().is_multiple_of(13) {
        units.push(0);
        while !units.len().is_multiple_of(13) {
            units.push(0xFFFF);
        }
    }
    let n = units.len() / 13;
    let sum = lfn_checksum(short);
    let mut out = Vec::new();
    for i in (0..n).rev() {
        let mut e = [0u8; 32];
        e[0] = (i + 1) as u8 | if i == n - 1 { 0x40 } else { 0 };
        e[11] = 0x0F;
        e[13] = sum;
        let chunk = &units[i * 13..i * 13 + 13];
        let pos = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, p) in chunk.iter().zip(pos) {
            e[p..p + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

/// Directory entries (without `.`/`..`) for `d`, given cluster numbers already assigned.
fn dir_entries(d: &Dir, files: &[VolumeFile], file_clusters: &[u32]) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    let mut used: Vec<[u8; 11]> = Vec::new();
    let mut names: Vec<(&String, bool)> = d.dirs.keys().map(|k| (k, true)).collect();
    names.extend(d.files.keys().map(|k| (k, false)));
    names.sort();
    for (name, is_dir) in names {
        let short = match short_exact(name) {
            Some(s) if !used.contains(&s) => s,
            _ => {
                let mut n = 1;
                loop {
                    let s = short_alias(name, n);
                    if !used.contains(&s) {
                        break s;
                    }
                    n += 1;
                }
            }
        };
        used.push(short);
        if lfn_needed(name) {
            out.extend(lfn_entries(name, &short));
        }
        if is_dir {
            out.push(short_entry(&short, 0x10, d.dirs[name].cluster, 0));
        } else {
            let i = d.files[name];
            out.push(short_entry(
                &short,
                0x01,
                file_clusters[i],
                files[i].data.len() as u32,
            ));
        }
    }
    out
}

fn walk_dirs<'a>(d: &'a Dir, out: &mut Vec<&'a Dir>) {
    for c in d.dirs.values() {
        out.push(c);
        walk_dirs(c, out);
    }
}

fn walk_dirs_mut(d: &mut Dir, f: &mut impl FnMut(&mut Dir)) {
    for c in d.dirs.values_mut() {
        f(c);
        walk_dirs_mut(c, f);
    }
}

/// Builds a FAT12 image labelled `label` holding `files`.
pub fn build_fat(label: &str, files: &[VolumeFile]) -> Result<Vec<u8>, VolumeError> {
    if label.is_empty()
        || label.len() > 11
        || !label.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(VolumeError::BadLabel(label.to_string()));
    }
    let files = normalise_files(files)?;
    let mut root = Dir::default();
    for (i, f) in files.iter().enumerate() {
        let parts: Vec<&str> = f.path.split('/').collect();
        if parts.iter().any(|p| p.encode_utf16().count() > 255) {
            return Err(VolumeError::BadPath(f.path.clone()));
        }
        let mut d = &mut root;
        for p in &parts[..parts.len() - 1] {
            d = d.dirs.entry((*p).to_string()).or_default();
        }
        d.files.insert(parts[parts.len() - 1].to_string(), i);
    }
    let zero = vec![0u32; files.len()];
    let root_entries = dir_entries(&root, &files, &zero).len() + 1; // + volume label
    if root_entries > ROOT_ENTRIES {
        return Err(VolumeError::TooLarge("the FAT root directory"));
    }
    let root_sectors = ROOT_ENTRIES * 32 / BPS;

    // choose cluster size and total size
    let mut spc = 1usize;
    let (total, fat_sectors, clusters_needed) = loop {
        let cbytes = spc * BPS;
        let mut need = 0usize;
        for f in &files {
            need += f.data.len().div_ceil(cbytes);
        }
        let mut dirs = Vec::new();
        walk_dirs(&root, &mut dirs);
        for d in &dirs {
            need += ((dir_entries(d, &files, &zero).len() + 2) * 32).div_ceil(cbytes);
        }
        let data_sectors = (need * spc).max(MIN_SECTORS - 1 - root_sectors - 18);
        let clusters = data_sectors / spc;
        if clusters <= MAX_CLUSTERS {
            let fat_sectors = ((clusters + 2) * 3 / 2).div_ceil(BPS).max(9);
            let total = 1 + 2 * fat_sectors + root_sectors + clusters * spc;
            break (total, fat_sectors, need);
        }
        spc *= 2;
        if spc > 64 {
            return Err(VolumeError::TooLarge("a FAT12 volume"));
        }
    };
    let cbytes = spc * BPS;
    // assign clusters: directories first (depth-first), then files in path order
    let mut next = 2u32;
    // sizes need final short names; compute with placeholder clusters
    let mut sizes: Vec<u32> = Vec::new();
    {
        let mut dirs = Vec::new();
        walk_dirs(&root, &mut dirs);
        for d in &dirs {
            sizes.push((((dir_entries(d, &files, &zero).len() + 2) * 32).div_ceil(cbytes)) as u32);
        }
    }
    let mut k = 0;
    walk_dirs_mut(&mut root, &mut |d: &mut Dir| {
        d.cluster = next;
        d.clusters = sizes[k];
        next += sizes[k];
        k += 1;
    });
    let mut file_clusters = Vec::new();
    let mut file_counts = Vec::new();
    for f in &files {
        let c = f.data.len().div_ceil(cbytes) as u32;
        file_clusters.push(if c == 0 { 0 } else { next });
        file_counts.push(c);
        next += c;
    }
    debug_assert_eq!((next - 2) as usize, clusters_needed);

    let mut img = vec![0u8; total * BPS];
    // boot sector
    let b = &mut img[..BPS];
    b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    b[3..11].copy_from_slice(b"BESKAR7 ");
    b[11..13].copy_from_slice(&(BPS as u16).to_le_bytes());
    b[13] = spc as u8;
    b[14..16].copy_from_slice(&1u16.to_le_bytes());
    b[16] = 2;
    b[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    let media = if total == MIN_SECTORS { 0xF0 } else { 0xF8 };
    if total < 65536 {
        b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
    } else {
        b[32..36].copy_from_slice(&(total as u32).to_le_bytes());
    }
    b[21] = media;
    b[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
    b[24..26].copy_from_slice(&18u16.to_le_bytes());
    b[26..28].copy_from_slice(&2u16.to_le_bytes());
    b[36] = 0x00;
    b[38] = 0x29;
    b[39..43].copy_from_slice(&volume_serial(label).to_le_bytes());
    let mut lab = [b' '; 11];
    lab[..label.len()].copy_from_slice(label.as_bytes());
    b[43..54].copy_from_slice(&lab);
    b[54..62].copy_from_slice(b"FAT12   ");
    b[510] = 0x55;
    b[511] = 0xAA;

    // FAT
    let mut fat = vec![0u8; fat_sectors * BPS];
    let mut set = |n: u32, v: u16| {
        let off = (n as usize) * 3 / 2;
        if n.is_multiple_of(2) {
            fat[off] = v as u8;
            fat[off + 1] = (fat[off + 1] & 0xF0) | ((v >> 8) as u8 & 0x0F);
        } else {
            fat[off] = (fat[off] & 0x0F) | ((v << 4) as u8);
            fat[off + 1] = (v >> 4) as u8;
        }
    };
    set(0, 0xF00 | media as u16);
    set(1, 0xFFF);
    let mut chain = |start: u32, count: u32| {
        for i in 0..count {
            let c = start + i;
            set(
                c,
                if i + 1 == count {
                    0xFFF
                } else {
                    (c + 1) as u16
                },
            );
        }
    };
    let mut dirs = Vec::new();
    walk_dirs(&root, &mut dirs);
    for d in &dirs {
        chain(d.cluster, d.clusters);
    }
    for (s, c) in file_clusters.iter().zip(&file_counts) {
        if *c > 0 {
            chain(*s, *c);
        }
    }
    for i in 0..2 {
        let o = (1 + i * fat_sectors) * BPS;
        img[o..o + fat.len()].copy_from_slice(&fat);
    }
    let root_off = (1 + 2 * fat_sectors) * BPS;
    let data_off = root_off + root_sectors * BPS;
    let cluster_off = |c: u32| data_off + (c as usize - 2) * cbytes;

    // root directory: label first
    let mut off = root_off;
    img[off..off + 32].copy_from_slice(&short_entry(&lab, 0x08, 0, 0));
    off += 32;
    for e in dir_entries(&root, &files, &file_clusters) {
        img[off..off + 32].copy_from_slice(&e);
        off += 32;
    }
    // subdirectories
    fn write_sub(
        img: &mut [u8],
        d: &Dir,
        parent_cluster: u32,
        files: &[VolumeFile],
        fc: &[u32],
        at: &dyn Fn(u32) -> usize,
    ) {
        for c in d.dirs.values() {
            let mut off = at(c.cluster);
            let mut dot = [b' '; 11];
            dot[0] = b'.';
            img[off..off + 32].copy_from_slice(&short_entry(&dot, 0x10, c.cluster, 0));
            off += 32;
            dot[1] = b'.';
            img[off..off + 32].copy_from_slice(&short_entry(&dot, 0x10, parent_cluster, 0));
            off += 32;
            for e in dir_entries(c, files, fc) {
                img[off..off + 32].copy_from_slice(&e);
                off += 32;
            }
            write_sub(img, c, c.cluster, files, fc, at);
        }
    }
    write_sub(&mut img, &root, 0, &files, &file_clusters, &cluster_off);
    for (f, c) in files.iter().zip(&file_clusters) {
        if !f.data.is_empty() {
            let o = cluster_off(*c);
            img[o..o + f.data.len()].copy_from_slice(&f.data);
        }
    }
    Ok(img)
}

/// A stable volume serial number derived from the label (FNV-1a).
pub(crate) fn volume_serial(label: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in label.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

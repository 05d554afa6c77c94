//! ISO 9660 constants and the in-memory writer for small config volumes.
//!
//! The image carries three views of the same files: the primary ISO 9660 tree (level-2 style
//! upper-case names), Rock Ridge (RRIP 1991A: `PX` and `NM` entries, `SP`/`ER` on the root)
//! giving the exact POSIX names, and a Joliet supplementary tree (UCS-2 names). Output is
//! deterministic: fixed timestamps, volume ids derived from the label only, files sorted.

use std::collections::BTreeMap;

use crate::volume::{VolumeError, VolumeFile, normalise_files};

pub const SECTOR: usize = 2048;
/// Fixed timestamp written into every record and descriptor: 2020-01-01 00:00:00 UTC.
pub const FIXED_YEAR: u16 = 2020;

const ER_ID: &[u8] = b"RRIP_1991A";
const ER_DES: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const ER_SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

pub(crate) fn both16(v: u16) -> [u8; 4] {
    let l = v.to_le_bytes();
    let b = v.to_be_bytes();
    [l[0], l[1], b[0], b[1]]
}

pub(crate) fn both32(v: u32) -> [u8; 8] {
    let l = v.to_le_bytes();
    let b = v.to_be_bytes();
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn rec_date() -> [u8; 7] {
    [(FIXED_YEAR - 1900) as u8, 1, 1, 0, 0, 0, 0]
}

fn vd_date() -> [u8; 17] {
    let mut d = [b'0'; 17];
    d[..16].copy_from_slice(format!("{FIXED_YEAR:04}010100000000").as_bytes());
    d[16] = 0;
    d
}

fn pad_str(dst: &mut [u8], s: &[u8]) {
    for (i, b) in dst.iter_mut().enumerate() {
        *b = *s.get(i).unwrap_or(&b' ');
    }
}

fn pad_ucs2(dst: &mut [u8], s: &str) {
    let units: Vec<u16> = s.encode_utf16().collect();
    for i in 0..dst.len() / 2 {
        let u = units.get(i).copied().unwrap_or(0x0020);
        dst[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
    }
}

/// Upper-case d-character form of a name component for the primary tree.
fn iso_name(name: &str, is_dir: bool) -> String {
    let map = |s: &str| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    if is_dir {
        let mut n = map(name);
        n.truncate(31);
        return n;
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let mut stem = map(stem);
    let mut ext = map(ext);
    ext.truncate(8);
    stem.truncate(30 - ext.len());
    format!("{stem}.{ext};1")
}

#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    files: BTreeMap<String, usize>,
    // filled in during layout
    number: u16,
    parent_number: u16,
    extent: u32,
    size: u32,
    j_extent: u32,
    j_size: u32,
}

struct Entry<'a> {
    iso_id: Vec<u8>,
    joliet_id: Vec<u8>,
    rr_name: &'a str,
    is_dir: bool,
    target: Target,
}

enum Target {
    Dir(Vec<String>),
    File(usize),
}

fn dir_at<'a>(root: &'a Dir, path: &[String]) -> &'a Dir {
    let mut d = root;
    for p in path {
        d = &d.dirs[p];
    }
    d
}

fn dir_at_mut<'a>(root: &'a mut Dir, path: &[String]) -> &'a mut Dir {
    let mut d = root;
    for p in path {
        d = d.dirs.get_mut(p).expect("dir exists");
    }
    d
}

fn entries<'a>(d: &'a Dir, path: &[String]) -> Vec<Entry<'a>> {
    let mut v = Vec::new();
    for name in d.dirs.keys() {
        let mut p = path.to_vec();
        p.push(name.clone());
        v.push(Entry {
            iso_id: iso_name(name, true).into_bytes(),
            joliet_id: joliet_bytes(name),
            rr_name: name,
            is_dir: true,
            target: Target::Dir(p),
        });
    }
    for (name, &idx) in &d.files {
        v.push(Entry {
            iso_id: iso_name(name, false).into_bytes(),
            joliet_id: joliet_bytes(name),
            rr_name: name,
            is_dir: false,
            target: Target::File(idx),
        });
    }
    v
}

fn joliet_bytes(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .take(64)
        .flat_map(|u| u.to_be_bytes())
        .collect()
}

fn px(mode: u32, links: u32) -> Vec<u8> {
    let mut v = vec![b'P', b'X', 36, 1];
    v.extend_from_slice(&both32(mode));
    v.extend_from_slice(&both32(links));
    v.extend_from_slice(&both32(0));
    v.extend_from_slice(&both32(0));
    v
}

fn nm(name: &str) -> Vec<u8> {
    let mut v = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
    v.extend_from_slice(name.as_bytes());
    v
}

fn dir_record(id: &[u8], extent: u32, size: u32, is_dir: bool, su: &[u8]) -> Vec<u8> {
    let mut len = 33 + id.len();
    if len % 2 == 1 {
        len += 1;
    }
    let total = len + su.len() + (su.len() % 2);
    let mut r = vec![0u8; total];
    r[0] = total as u8;
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(&rec_date());
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    r[len..len + su.len()].copy_from_slice(su);
    r
}

/// Lays records into sectors so that no record crosses a sector boundary.
fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let used = out.len() % SECTOR;
        if used + r.len() > SECTOR {
            out.resize(out.len() + SECTOR - used, 0);
        }
        out.extend_from_slice(r);
    }
    let rem = out.len() % SECTOR;
    if rem != 0 || out.is_empty() {
        out.resize(out.len() + SECTOR - rem, 0);
    }
    out
}

fn sectors(bytes: usize) -> u32 {
    bytes.div_ceil(SECTOR) as u32
}

/// Builds an ISO 9660 image (Joliet + Rock Ridge) holding `files` under volume `label`.
pub fn build_iso(label: &str, files: &[VolumeFile]) -> Result<Vec<u8>, VolumeError> {
    if label.is_empty() || label.len() > 32 || !label.is_ascii() {
        return Err(VolumeError::BadLabel(label.to_string()));
    }
    let files = normalise_files(files)?;
    // tree
    let mut root = Dir::default();
    for (i, f) in files.iter().enumerate() {
        let parts: Vec<&str> = f.path.split('/').collect();
        let mut d = &mut root;
        for p in &parts[..parts.len() - 1] {
            d = d.dirs.entry((*p).to_string()).or_default();
        }
        let name = parts[parts.len() - 1].to_string();
        if d.dirs.contains_key(&name) {
            return Err(VolumeError::Conflict(f.path.clone()));
        }
        d.files.insert(name, i);
    }
    for f in &files {
        for p in f.path.split('/') {
            if p.len() > 160 {
                return Err(VolumeError::BadPath(f.path.clone()));
            }
        }
    }
    // directories in breadth-first order (path table order), numbered from 1
    let mut order: Vec<Vec<String>> = vec![vec![]];
    let mut i = 0;
    while i < order.len() {
        let p = order[i].clone();
        let n = (i + 1) as u16;
        let d = dir_at_mut(&mut root, &p);
        d.number = n;
        let children: Vec<Vec<String>> = d
            .dirs
            .keys()
            .map(|k| {
                let mut c = p.clone();
                c.push(k.clone());
                c
            })
            .collect();
        for c in children {
            dir_at_mut(&mut root, &c).parent_number = n;
            order.push(c);
        }
        i += 1;
    }
    root.parent_number = 1;

    // Sizes of directory extents do not depend on extent numbers, so compute them first
    // with placeholder locations.
    let build_dir =
        |root: &Dir, p: &[String], joliet: bool, ce: Option<u32>, locs: &[(u32, u32)]| -> Vec<u8> {
            let d = dir_at(root, p);
            let parent = if p.is_empty() {
                d
            } else {
                dir_at(root, &p[..p.len() - 1])
            };
            let (ext, size, pext, psize) = if joliet {
                (d.j_extent, d.j_size, parent.j_extent, parent.j_size)
            } else {
                (d.extent, d.size, parent.extent, parent.size)
            };
            let mut recs = Vec::new();
            let mut dot_su = Vec::new();
            let mut dotdot_su = Vec::new();
            if !joliet {
                if p.is_empty() {
                    dot_su.extend_from_slice(&[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
                }
                dot_su.extend_from_slice(&px(0o040555, 2));
                if p.is_empty() {
                    let mut ce_e = vec![b'C', b'E', 28, 1];
                    ce_e.extend_from_slice(&both32(ce.unwrap_or(0)));
                    ce_e.extend_from_slice(&both32(0));
                    ce_e.extend_from_slice(&both32(er_entry().len() as u32));
                    dot_su.extend_from_slice(&ce_e);
                }
                dotdot_su.extend_from_slice(&px(0o040555, 2));
            }
            recs.push(dir_record(&[0], ext, size, true, &dot_su));
            recs.push(dir_record(&[1], pext, psize, true, &dotdot_su));
            let mut es = entries(d, p);
            if joliet {
                es.sort_by(|a, b| a.joliet_id.cmp(&b.joliet_id));
            } else {
                es.sort_by(|a, b| a.iso_id.cmp(&b.iso_id));
            }
            for e in es {
                let (extent, size) = match &e.target {
                    Target::Dir(cp) => {
                        let c = dir_at(root, cp);
                        if joliet {
                            (c.j_extent, c.j_size)
                        } else {
                            (c.extent, c.size)
                        }
                    }
                    Target::File(idx) => locs[*idx],
                };
                let (id, su) = if joliet {
                    (e.joliet_id.clone(), Vec::new())
                } else {
                    let mut su = px(
                        if e.is_dir { 0o040555 } else { 0o100444 },
                        if e.is_dir { 2 } else { 1 },
                    );
                    su.extend_from_slice(&nm(e.rr_name));
                    (e.iso_id.clone(), su)
                };
                recs.push(dir_record(&id, extent, size, e.is_dir, &su));
            }
            pack(&recs)
        };

    // pass 1: sizes
    let zero_locs = vec![(0u32, 0u32); files.len()];
    for p in &order {
        let sz = build_dir(&root, p, false, None, &zero_locs).len() as u32;
        let jsz = build_dir(&root, p, true, None, &zero_locs).len() as u32;
        let d = dir_at_mut(&mut root, p);
        d.size = sz;
        d.j_size = jsz;
    }
    // path tables
    let path_table = |root: &Dir, joliet: bool, big: bool| -> Vec<u8> {
        let mut t = Vec::new();
        for p in &order {
            let d = dir_at(root, p);
            let id: Vec<u8> = if p.is_empty() {
                vec![0]
            } else if joliet {
                joliet_bytes(p.last().unwrap())
            } else {
                iso_name(p.last().unwrap(), true).into_bytes()
            };
            t.push(id.len() as u8);
            t.push(0);
            let ext = if joliet { d.j_extent } else { d.extent };
            if big {
                t.extend_from_slice(&ext.to_be_bytes());
                t.extend_from_slice(&d.parent_number.to_be_bytes());
            } else {
                t.extend_from_slice(&ext.to_le_bytes());
                t.extend_from_slice(&d.parent_number.to_le_bytes());
            }
            t.extend_from_slice(&id);
            if id.len() % 2 == 1 {
                t.push(0);
            }
        }
        t
    };
    let pt_len = path_table(&root, false, false).len();
    let jpt_len = path_table(&root, true, false).len();
    // layout: 16 system, 16 PVD, 17 SVD, 18 terminator, then path tables
    let mut next = 19u32;
    let pt_l = next;
    next += sectors(pt_len);
    let pt_m = next;
    next += sectors(pt_len);
    let jpt_l = next;
    next += sectors(jpt_len);
    let jpt_m = next;
    next += sectors(jpt_len);
    let ce_sector = next;
    next += 1;
    for p in &order {
        let d = dir_at_mut(&mut root, p);
        d.extent = next;
        next += d.size / SECTOR as u32;
    }
    for p in &order {
        let d = dir_at_mut(&mut root, p);
        d.j_extent = next;
        next += d.j_size / SECTOR as u32;
    }
    let mut locs = Vec::new();
    for f in &files {
        locs.push((next, f.data.len() as u32));
        next += sectors(f.data.len());
    }
    let total = next;

    let mut img = vec![0u8; total as usize * SECTOR];
    let put = |img: &mut Vec<u8>, sector: u32, data: &[u8]| {
        let o = sector as usize * SECTOR;
        img[o..o + data.len()].copy_from_slice(data);
    };
    // descriptors
    let root_rec = |joliet: bool| {
        if joliet {
            dir_record(&[0], root.j_extent, root.j_size, true, &[])
        } else {
            dir_record(&[0], root.extent, root.size, true, &[])
        }
    };
    let vd = |joliet: bool| -> Vec<u8> {
        let mut d = vec![0u8; SECTOR];
        d[0] = if joliet { 2 } else { 1 };
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        if joliet {
            pad_ucs2(&mut d[8..40], "");
            pad_ucs2(&mut d[40..72], label);
            d[88..91].copy_from_slice(b"%/E");
        } else {
            pad_str(&mut d[8..40], b"");
            pad_str(&mut d[40..72], label.as_bytes());
        }
        d[80..88].copy_from_slice(&both32(total));
        d[120..124].copy_from_slice(&both16(1));
        d[124..128].copy_from_slice(&both16(1));
        d[128..132].copy_from_slice(&both16(SECTOR as u16));
        let (ptl, l, m) = if joliet {
            (jpt_len, jpt_l, jpt_m)
        } else {
            (pt_len, pt_l, pt_m)
        };
        d[132..140].copy_from_slice(&both32(ptl as u32));
        d[140..144].copy_from_slice(&l.to_le_bytes());
        d[148..152].copy_from_slice(&m.to_be_bytes());
        let rr = root_rec(joliet);
        d[156..156 + 34].copy_from_slice(&rr[..34]);
        let texts: [(usize, usize, &str); 6] = [
            (190, 318, ""),
            (318, 446, "BESKAR7"),
            (446, 574, "BESKAR7"),
            (574, 702, "BESKAR7-BOOT"),
            (702, 739, ""),
            (739, 776, ""),
        ];
        for (a, b, s) in texts {
            if joliet {
                pad_ucs2(&mut d[a..b - (b - a) % 2], s);
                if (b - a) % 2 == 1 {
                    d[b - 1] = 0x20;
                }
            } else {
                pad_str(&mut d[a..b], s.as_bytes());
            }
        }
        if joliet {
            pad_ucs2(&mut d[776..812], "");
        } else {
            pad_str(&mut d[776..813], b"");
        }
        d[813..830].copy_from_slice(&vd_date());
        d[830..847].copy_from_slice(&vd_date());
        d[847..864].copy_from_slice(b"0000000000000000\0");
        d[864..881].copy_from_slice(b"0000000000000000\0");
        d[881] = 1;
        d
    };
    put(&mut img, 16, &vd(false));
    put(&mut img, 17, &vd(true));
    let mut term = vec![0u8; SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(&mut img, 18, &term);
    put(&mut img, pt_l, &path_table(&root, false, false));
    put(&mut img, pt_m, &path_table(&root, false, true));
    put(&mut img, jpt_l, &path_table(&root, true, false));
    put(&mut img, jpt_m, &path_table(&root, true, true));
    put(&mut img, ce_sector, &er_entry());
    for p in &order {
        let d = dir_at(&root, p);
        put(
            &mut img,
            d.extent,
            &build_dir(&root, p, false, Some(ce_sector), &locs),
        );
        put(
            &mut img,
            d.j_extent,
            &build_dir(&root, p, true, None, &locs),
        );
    }
    for (f, (ext, _)) in files.iter().zip(locs.iter().copied()) {
        put(&mut img, ext, &f.data);
    }
    Ok(img)
}

fn er_entry() -> Vec<u8> {
    let mut v = vec![
        b'E',
        b'R',
        (8 + ER_ID.len() + ER_DES.len() + ER_SRC.len()) as u8,
        1,
        ER_ID.len() as u8,
        ER_DES.len() as u8,
        ER_SRC.len() as u8,
        1,
    ];
    v.extend_from_slice(ER_ID);
    v.extend_from_slice(ER_DES);
    v.extend_from_slice(ER_SRC);
    v
}

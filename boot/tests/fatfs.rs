//! The FAT reader, editor and builder checked against dosfstools, mtools and util-linux.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use beskar7_boot::fatfs::{
    FatEdit, FatError, FatFs, FatKind, FileData, NewFile, Piece, build_fat_pieces,
};
use common::*;

fn mtool(name: &str) -> Command {
    let mut c = Command::new(tool(name, "mtools"));
    c.env("MTOOLS_SKIP_CHECK", "1");
    c
}

/// A fresh image made by mkfs.vfat: FAT `bits`, `kib` KiB, `spc` sectors per cluster.
fn mkfs(
    t: &TempDir,
    name: &str,
    bits: u8,
    kib: u64,
    sector: u32,
    spc: u32,
    extra: &[&str],
) -> PathBuf {
    let p = t.join(name);
    run(Command::new(tool("mkfs.vfat", "dosfstools"))
        .args(["-C", "-F", &bits.to_string(), "-S", &sector.to_string()])
        .args(["-s", &spc.to_string(), "-n", "B7TEST"])
        .args(extra)
        .arg(&p)
        .arg(kib.to_string()));
    p
}

fn mmd(img: &Path, dir: &str) {
    run(mtool("mmd").arg("-i").arg(img).arg(format!("::{dir}")));
}

fn mcopy_in(t: &TempDir, img: &Path, path: &str, data: &[u8]) {
    let local = t.join("mcopy-in");
    std::fs::write(&local, data).unwrap();
    run(mtool("mcopy")
        .arg("-i")
        .arg(img)
        .arg(&local)
        .arg(format!("::{path}")));
}

fn mcopy_out(t: &TempDir, img: &Path, path: &str) -> Vec<u8> {
    let local = t.join("mcopy-out");
    let _ = std::fs::remove_file(&local);
    run(mtool("mcopy")
        .args(["-n", "-i"])
        .arg(img)
        .arg(format!("::{path}"))
        .arg(&local));
    std::fs::read(&local).unwrap()
}

fn mtype(img: &Path, path: &str) -> Vec<u8> {
    run(mtool("mtype").arg("-i").arg(img).arg(format!("::{path}"))).stdout
}

/// Every path mtools sees, directories with a trailing `/`.
fn mdir_all(img: &Path) -> BTreeSet<String> {
    stdout(
        mtool("mdir")
            .args(["-/", "-b", "-a", "-i"])
            .arg(img)
            .arg("::/"),
    )
    .lines()
    .filter_map(|l| l.strip_prefix("::").map(str::to_string))
    .collect()
}

fn fsck(img: &Path) {
    let out = stdout(
        Command::new(tool("fsck.fat", "dosfstools"))
            .args(["-n", "-v"])
            .arg(img),
    );
    for bad in [
        "differ",
        "wrong",
        "Free cluster",
        "orphan",
        "Unused",
        "bad",
        "shared",
    ] {
        assert!(!out.contains(bad), "fsck.fat on {}:\n{out}", img.display());
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 17) >> 3) as u8 ^ seed as u8)
        .collect()
}

/// Applies the editor's replaced ranges to a copy of `src`, checking they are sorted, disjoint
/// and inside the volume.
fn apply(src: &Path, dst: &Path, fs: &FatFs, ranges: &[(u64, Vec<u8>)]) {
    std::fs::copy(src, dst).unwrap();
    let (base, len) = fs.extent();
    let mut end = 0;
    for (o, d) in ranges {
        assert!(*o >= end, "ranges overlap or are unsorted at {o}");
        assert!(
            *o >= base && o + d.len() as u64 <= base + len,
            "range outside the volume"
        );
        end = o + d.len() as u64;
    }
    let f = std::fs::OpenOptions::new().write(true).open(dst).unwrap();
    for (o, d) in ranges {
        f.write_all_at(d, *o).unwrap();
    }
}

struct Case {
    name: &'static str,
    bits: u8,
    kib: u64,
    sector: u32,
    spc: u32,
    kind: FatKind,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "fat12",
            bits: 12,
            kib: 1440,
            sector: 512,
            spc: 1,
            kind: FatKind::Fat12,
        },
        Case {
            name: "fat12-4k",
            bits: 12,
            kib: 4096,
            sector: 512,
            spc: 8,
            kind: FatKind::Fat12,
        },
        Case {
            name: "fat16",
            bits: 16,
            kib: 16384,
            sector: 512,
            spc: 4,
            kind: FatKind::Fat16,
        },
        Case {
            name: "fat16-2k-sectors",
            bits: 16,
            kib: 65536,
            sector: 2048,
            spc: 1,
            kind: FatKind::Fat16,
        },
        Case {
            name: "fat32",
            bits: 32,
            kib: 40000,
            sector: 512,
            spc: 1,
            kind: FatKind::Fat32,
        },
        Case {
            name: "fat32-4k-sectors",
            bits: 32,
            kib: 300000,
            sector: 4096,
            spc: 1,
            kind: FatKind::Fat32,
        },
    ]
}

const LONG_DIR: &str = "/A Long Directory Name/nested/deeper";
const LONG_FILE: &str = "a file with a very long name that needs three slots.txt";
const TALOS: &str = "/EFI/Linux/Talos-v1.10.0.efi";

/// The usual tree: ESP-like files, long names, nesting, an empty file and one filling its
/// clusters exactly. Returns (path, content).
fn populate(t: &TempDir, img: &Path, cluster: usize) -> Vec<(String, Vec<u8>)> {
    for d in [
        "/EFI",
        "/EFI/BOOT",
        "/EFI/Linux",
        "/loader",
        "/boot",
        "/boot/grub",
    ] {
        mmd(img, d);
    }
    mmd(img, "/A Long Directory Name");
    mmd(img, "/A Long Directory Name/nested");
    mmd(img, LONG_DIR);
    let files = vec![
        ("/EFI/BOOT/BOOTX64.EFI".to_string(), pattern(1, 3000)),
        (TALOS.to_string(), pattern(2, 20000)),
        (
            "/loader/loader.conf".to_string(),
            b"timeout 10\nsecure-boot-enroll off\n".to_vec(),
        ),
        (
            "/boot/grub/grub.cfg".to_string(),
            b"linux /boot/vmlinuz quiet\ninitrd /boot/initrd\n".to_vec(),
        ),
        ("/README.TXT".to_string(), b"short name only\n".to_vec()),
        ("/exact.bin".to_string(), pattern(3, cluster * 3)),
        ("/empty.txt".to_string(), Vec::new()),
        (format!("{LONG_DIR}/{LONG_FILE}"), pattern(4, 777)),
    ];
    for (p, d) in &files {
        mcopy_in(t, img, p, d);
    }
    files
}

#[test]
fn reader_matches_mtools() {
    for c in cases() {
        let t = TempDir::new("fat-read");
        let img = mkfs(&t, "a.img", c.bits, c.kib, c.sector, c.spc, &[]);
        let cluster = (c.sector * c.spc) as usize;
        let files = populate(&t, &img, cluster);
        let src = std::fs::File::open(&img).unwrap();
        let len = src.metadata().unwrap().len();
        let fs = FatFs::open(&src, 0, len).unwrap();
        assert_eq!(fs.kind(), c.kind, "{}", c.name);
        assert_eq!(fs.cluster_bytes(), cluster as u64, "{}", c.name);
        assert_eq!(fs.label(), Some("B7TEST"), "{}", c.name);

        let ours: BTreeSet<String> = fs
            .entries()
            .iter()
            .map(|e| format!("{}{}", e.path, if e.is_dir { "/" } else { "" }))
            .collect();
        assert_eq!(ours, mdir_all(&img), "{}", c.name);

        let raw = std::fs::read(&img).unwrap();
        for (p, data) in &files {
            assert_eq!(
                &fs.read_file(&src, p, 1 << 20).unwrap(),
                data,
                "{} {p}",
                c.name
            );
            assert_eq!(&mtype(&img, p), data, "{} mtype {p}", c.name);
            // the ranges hold the file, merged when consecutive (mcopy writes fresh files so)
            let ranges = fs.file_ranges(p).unwrap();
            let joined: Vec<u8> = ranges
                .iter()
                .flat_map(|(o, n)| raw[*o as usize..(*o + *n) as usize].to_vec())
                .collect();
            assert_eq!(&joined, data, "{} ranges {p}", c.name);
            assert!(ranges.len() <= 1, "{} {p}: {ranges:?}", c.name);
        }
        // case-insensitive, by short name too, leading slash optional
        let e = fs.lookup("efi/linux/TALOS-V1.10.0.EFI").unwrap();
        assert_eq!(e.long_name.as_deref(), Some("Talos-v1.10.0.efi"));
        assert_eq!(e.short_name, "TALOS-~1.EFI");
        assert_eq!(fs.lookup("EFI/LINUX/TALOS-~1.EFI"), Some(e));
        assert_eq!(&raw[e.entry_offset as usize..][..11], b"TALOS-~1EFI");
        assert_eq!(e.lfn_offsets.len(), 2);
        for o in &e.lfn_offsets {
            assert_eq!(raw[*o as usize + 11], 0x0F, "LFN slot attribute");
        }
        let r = fs.lookup("README.TXT").unwrap();
        assert!(r.long_name.is_none() && r.lfn_offsets.is_empty());
        let d = fs.lookup("a long directory name/NESTED").unwrap();
        assert!(d.is_dir);
        assert_eq!(
            fs.list_dir("/A Long Directory Name/nested").unwrap().len(),
            1
        );
        assert_eq!(fs.lookup("empty.txt").unwrap().size, 0);
        assert!(fs.file_ranges("empty.txt").unwrap().is_empty());
        assert!(fs.lookup("EFI/nothing").is_none());
        assert!(matches!(
            fs.read_file(&src, "/EFI/Linux/Talos-v1.10.0.efi", 100),
            Err(FatError::FileTooLarge { .. })
        ));
        assert!(matches!(
            fs.read_file(&src, "/EFI", 100),
            Err(FatError::IsADirectory(_))
        ));
    }
}

/// A volume inside a larger image, at an offset, as an appended ESP is.
#[test]
fn reader_at_an_offset_within_a_limit() {
    let t = TempDir::new("fat-offset");
    let img = mkfs(&t, "a.img", 32, 40000, 512, 1, &[]);
    populate(&t, &img, 512);
    let vol = std::fs::read(&img).unwrap();
    let mut big = vec![0xAAu8; 1 << 20];
    big.extend_from_slice(&vol);
    big.extend_from_slice(&[0x55; 4096]);
    let fs = FatFs::open(&big, 1 << 20, vol.len() as u64).unwrap();
    assert_eq!(
        fs.read_file(&big, TALOS, 1 << 20).unwrap(),
        pattern(2, 20000)
    );
    assert!(matches!(
        FatFs::open(&big, 1 << 20, vol.len() as u64 - 512),
        Err(FatError::Truncated { .. })
    ));
}

#[test]
fn edits_checked_by_fsck_and_mtools() {
    for c in cases() {
        let t = TempDir::new("fat-edit");
        let img = mkfs(&t, "a.img", c.bits, c.kib, c.sector, c.spc, &[]);
        let cluster = (c.sector * c.spc) as usize;
        let files = populate(&t, &img, cluster);
        let src = std::fs::File::open(&img).unwrap();
        let fs = FatFs::open(&src, 0, src.metadata().unwrap().len()).unwrap();
        let free_before = fs.free_bytes();
        let talos = fs.lookup(TALOS).unwrap().clone();
        let mut ed = FatEdit::new(&fs, &src).unwrap();

        // systemd-boot: new directory and entry, longer loader.conf, UKI renamed in place
        ed.mkdir("loader/entries").unwrap();
        let entry =
            b"title Beskar7\nefi /EFI/Linux/Talos-v1.10.0.efi.b7\noptions talos.platform=metal\n";
        ed.write_file("/loader/entries/beskar7.conf", entry)
            .unwrap();
        let conf = format!("default beskar7.conf\n{}", "# padding line\n".repeat(400));
        ed.write_file("loader/loader.conf", conf.as_bytes())
            .unwrap();
        ed.rename(TALOS, "Talos-v1.10.0.efi.b7").unwrap();
        let renamed = ed
            .lookup("/EFI/Linux/Talos-v1.10.0.efi.b7")
            .unwrap()
            .unwrap();
        assert_eq!(renamed.entry_offset, talos.entry_offset, "renamed in place");
        assert_eq!(renamed.lfn_offsets, talos.lfn_offsets);
        assert_eq!(renamed.first_cluster, talos.first_cluster);
        // a rename that needs a long name where there was none: new slots
        ed.rename("README.TXT", "readme, renamed.txt").unwrap();
        // a rename to a name needing more slots
        ed.rename(
            &format!("{LONG_DIR}/{LONG_FILE}"),
            &format!("{LONG_FILE} and longer still, with more"),
        )
        .unwrap();
        // shrink (frees clusters), grow from nothing, replace, create in a deep directory
        ed.write_file("/exact.bin", &pattern(5, cluster + 1))
            .unwrap();
        ed.write_file("/empty.txt", &pattern(6, cluster * 2 + 5))
            .unwrap();
        ed.write_file(
            "/boot/grub/grub.cfg",
            b"linux /boot/vmlinuz quiet beskar7=1\n",
        )
        .unwrap();
        ed.write_file(&format!("{LONG_DIR}/new file.cfg"), b"deep\n")
            .unwrap();
        ed.mkdir("/EFI/Linux/sub dir").unwrap();
        ed.write_file("/EFI/Linux/sub dir/x", b"x").unwrap();
        // truncating to nothing frees the whole chain
        ed.write_file("/EFI/BOOT/BOOTX64.EFI", b"").unwrap();
        // reads through the editor see the edits
        assert_eq!(
            ed.read_file("LOADER/LOADER.CONF", 1 << 20).unwrap(),
            conf.as_bytes()
        );
        assert!(ed.lookup(TALOS).unwrap().is_none());
        assert!(matches!(
            ed.mkdir("loader/entries"),
            Err(FatError::AlreadyExists(_))
        ));
        assert!(matches!(
            ed.write_file("nodir/x", b""),
            Err(FatError::NotFound(_))
        ));
        assert!(matches!(
            ed.write_file("loader", b""),
            Err(FatError::IsADirectory(_))
        ));
        assert!(matches!(
            ed.rename("loader/loader.conf", "a/b"),
            Err(FatError::BadName(_))
        ));
        assert!(matches!(
            ed.rename("loader/loader.conf", "ENTRIES"),
            Err(FatError::AlreadyExists(_))
        ));
        let ranges = ed.finish();
        let out = t.join("out.img");
        apply(&img, &out, &fs, &ranges);

        fsck(&out);
        let want_paths: BTreeSet<String> = [
            "/A Long Directory Name/",
            "/A Long Directory Name/nested/",
            "/A Long Directory Name/nested/deeper/",
            &format!("{LONG_DIR}/{LONG_FILE} and longer still, with more"),
            &format!("{LONG_DIR}/new file.cfg"),
            "/EFI/",
            "/EFI/BOOT/",
            "/EFI/BOOT/BOOTX64.EFI",
            "/EFI/Linux/",
            "/EFI/Linux/Talos-v1.10.0.efi.b7",
            "/EFI/Linux/sub dir/",
            "/EFI/Linux/sub dir/x",
            "/boot/",
            "/boot/grub/",
            "/boot/grub/grub.cfg",
            "/empty.txt",
            "/exact.bin",
            "/loader/",
            "/loader/entries/",
            "/loader/entries/beskar7.conf",
            "/loader/loader.conf",
            "/readme, renamed.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(mdir_all(&out), want_paths, "{}", c.name);
        let get = |p: &str| files.iter().find(|f| f.0 == p).unwrap().1.clone();
        assert_eq!(
            mtype(&out, "/loader/entries/beskar7.conf"),
            entry,
            "{}",
            c.name
        );
        assert_eq!(
            mtype(&out, "/loader/loader.conf"),
            conf.as_bytes(),
            "{}",
            c.name
        );
        assert_eq!(
            mcopy_out(&t, &out, "/EFI/Linux/Talos-v1.10.0.efi.b7"),
            get(TALOS),
            "{}",
            c.name
        );
        assert_eq!(
            mtype(&out, "/readme, renamed.txt"),
            get("/README.TXT"),
            "{}",
            c.name
        );
        assert_eq!(
            mtype(
                &out,
                &format!("{LONG_DIR}/{LONG_FILE} and longer still, with more")
            ),
            get(&format!("{LONG_DIR}/{LONG_FILE}")),
            "{}",
            c.name
        );
        assert_eq!(
            mcopy_out(&t, &out, "/exact.bin"),
            pattern(5, cluster + 1),
            "{}",
            c.name
        );
        assert_eq!(
            mcopy_out(&t, &out, "/empty.txt"),
            pattern(6, cluster * 2 + 5),
            "{}",
            c.name
        );
        assert_eq!(
            mtype(&out, "/boot/grub/grub.cfg"),
            b"linux /boot/vmlinuz quiet beskar7=1\n"
        );
        assert_eq!(mtype(&out, &format!("{LONG_DIR}/new file.cfg")), b"deep\n");
        assert!(mtype(&out, "/EFI/BOOT/BOOTX64.EFI").is_empty());
        // `..` of a directory in the root is cluster 0
        let dots = stdout(
            mtool("mdir")
                .args(["-a", "-i"])
                .arg(&out)
                .arg("::/loader/entries"),
        );
        assert!(dots.contains(".."), "{dots}");

        // our reader agrees, and the free space adds up
        let o = std::fs::File::open(&out).unwrap();
        let fs2 = FatFs::open(&o, 0, o.metadata().unwrap().len()).unwrap();
        let cl = |n: usize| n.div_ceil(cluster) as i64 * cluster as i64;
        // new: the entry, two directories, sub dir/x, new file.cfg, empty.txt's content;
        // changed: loader.conf, exact.bin; freed: BOOTX64.EFI
        let used = cl(entry.len()) + 3 * cl(1) + cl(5) + cl(cluster * 2 + 5) + cl(conf.len())
            - cl(34)
            + cl(cluster + 1)
            - cl(cluster * 3)
            - cl(3000);
        let grown = free_before as i64 - fs2.free_bytes() as i64 - used;
        // directories may have grown by a cluster each (with 512-byte clusters)
        assert!(
            grown >= 0 && grown % cluster as i64 == 0 && grown <= 4 * cluster as i64,
            "{} {grown}",
            c.name
        );
        assert_eq!(
            fs2.read_file(&o, "/EFI/Linux/TALOS-~1.EFI", 1 << 20)
                .unwrap(),
            get(TALOS)
        );
    }
}

#[test]
fn directories_grow_by_a_cluster() {
    for (bits, kib) in [(16u8, 16384u64), (32, 40000)] {
        let t = TempDir::new("fat-grow");
        let img = mkfs(&t, "a.img", bits, kib, 512, 1, &[]);
        mmd(&img, "/d");
        let src = std::fs::File::open(&img).unwrap();
        let fs = FatFs::open(&src, 0, src.metadata().unwrap().len()).unwrap();
        let mut ed = FatEdit::new(&fs, &src).unwrap();
        // 3 slots each, 16 slots per 512-byte cluster: the directories need several clusters
        let names: Vec<String> = (0..40)
            .map(|i| format!("entry number {i:02} of many"))
            .collect();
        for n in &names {
            ed.write_file(&format!("/d/{n}"), n.as_bytes()).unwrap();
            // the FAT32 root grows too; the FAT16 root has 512 fixed slots
            ed.write_file(&format!("/{n}"), n.as_bytes()).unwrap();
        }
        let out = t.join("out.img");
        apply(&img, &out, &fs, &ed.finish());
        fsck(&out);
        let all = mdir_all(&out);
        for n in &names {
            assert!(all.contains(&format!("/d/{n}")), "{bits}: {n}");
            assert_eq!(mtype(&out, &format!("/{n}")), n.as_bytes());
        }
    }
}

#[test]
fn full_volume_gives_no_space_and_changes_nothing() {
    let t = TempDir::new("fat-full");
    let img = mkfs(&t, "a.img", 12, 1440, 512, 1, &[]);
    mcopy_in(&t, &img, "/keep.txt", b"keep\n");
    let src = std::fs::File::open(&img).unwrap();
    let fs = FatFs::open(&src, 0, src.metadata().unwrap().len()).unwrap();
    let free = fs.free_bytes();
    let mut ed = FatEdit::new(&fs, &src).unwrap();
    ed.mkdir("/dir").unwrap();
    let left = ed.free_bytes();
    assert_eq!(left, free - 512);
    let err = ed
        .write_file("/dir/big file.bin", &vec![7u8; left as usize + 1])
        .unwrap_err();
    assert!(
        matches!(err, FatError::NoSpace { needed, free } if needed == left + 512 && free == left),
        "{err}"
    );
    // growing an existing file past the free space fails the same way, and keeps the file
    let err = ed
        .write_file("/keep.txt", &vec![1u8; left as usize + 513])
        .unwrap_err();
    assert!(matches!(err, FatError::NoSpace { .. }), "{err}");
    assert_eq!(ed.read_file("/keep.txt", 100).unwrap(), b"keep\n");
    assert_eq!(ed.free_bytes(), left);
    // /dir's one cluster holds 16 slots: `.`, `..` and 14 empty files fill it; then the data
    // fits but the directory cannot grow, and the data clusters must be given back
    for i in 0..14 {
        ed.write_file(&format!("/dir/E{i}.TXT"), b"").unwrap();
    }
    let err = ed
        .write_file("/dir/LAST.BIN", &vec![3u8; left as usize])
        .unwrap_err();
    assert!(
        matches!(
            err,
            FatError::NoSpace {
                needed: 512,
                free: 0
            }
        ),
        "{err}"
    );
    assert_eq!(ed.free_bytes(), left);
    assert_eq!(ed.lookup("/dir/LAST.BIN").unwrap(), None);
    // exactly the free space fits; then nothing more does
    ed.write_file("/big file.bin", &pattern(9, left as usize))
        .unwrap();
    assert_eq!(ed.free_bytes(), 0);
    assert!(matches!(
        ed.mkdir("/another"),
        Err(FatError::NoSpace { .. })
    ));
    let out = t.join("out.img");
    apply(&img, &out, &fs, &ed.finish());
    fsck(&out);
    assert_eq!(
        mcopy_out(&t, &out, "/big file.bin"),
        pattern(9, left as usize)
    );
    assert!(mdir_all(&out).contains("/dir/E13.TXT"));
    assert_eq!(mtype(&out, "/keep.txt"), b"keep\n");
}

#[test]
fn fixed_root_full_gives_root_directory_full() {
    for bits in [12u8, 16] {
        let t = TempDir::new("fat-root");
        let kib = if bits == 12 { 1440 } else { 16384 };
        let img = mkfs(&t, "a.img", bits, kib, 512, 4, &["-r", "16"]);
        // mkfs.vfat may round the root up (to a cluster for FAT16)
        let info = stdout(mtool("minfo").arg("-i").arg(&img).arg("::"));
        let slots: usize = info
            .lines()
            .find_map(|l| l.strip_prefix("max available root directory slots: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // the label takes one slot; short names fill the rest
        for i in 0..slots - 1 {
            mcopy_in(&t, &img, &format!("/F{i}.TXT"), b"x");
        }
        let src = std::fs::File::open(&img).unwrap();
        let fs = FatFs::open(&src, 0, src.metadata().unwrap().len()).unwrap();
        let mut ed = FatEdit::new(&fs, &src).unwrap();
        let r = ed.write_file("/NEW.TXT", b"y");
        assert!(matches!(r, Err(FatError::RootDirectoryFull)), "{r:?}");
        assert!(matches!(ed.mkdir("/D"), Err(FatError::RootDirectoryFull)));
        // a rename needing long-name slots has no room either; one keeping one slot does
        assert!(matches!(
            ed.rename("/F1.TXT", "a long name.txt"),
            Err(FatError::RootDirectoryFull)
        ));
        ed.rename("/F1.TXT", "G1.TXT").unwrap();
        // the failed operations left no trace: the FAT is unchanged
        let ranges = ed.finish();
        assert_eq!(ranges.len(), 1, "only the root sector changed: {ranges:?}");
        let out = t.join("out.img");
        apply(&img, &out, &fs, &ranges);
        fsck(&out);
        let all = mdir_all(&out);
        assert!(
            all.contains("/G1.TXT") && !all.contains("/F1.TXT"),
            "{all:?}"
        );
    }
}

/// Patches little-endian fields of the boot sector.
fn with(img: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut v = img.to_vec();
    v[at..at + bytes.len()].copy_from_slice(bytes);
    v
}

#[test]
fn hostile_images_give_errors_not_panics() {
    let t = TempDir::new("fat-hostile");
    let img16 = mkfs(&t, "16.img", 16, 16384, 512, 4, &[]);
    populate(&t, &img16, 2048);
    let img32 = mkfs(&t, "32.img", 32, 40000, 512, 1, &[]);
    populate(&t, &img32, 512);
    let v16 = std::fs::read(&img16).unwrap();
    let v32 = std::fs::read(&img32).unwrap();
    let open = |v: &Vec<u8>| FatFs::open(v, 0, v.len() as u64).map(|_| ());
    let not_fat = |r: Result<(), FatError>| matches!(r, Err(FatError::NotFat(_)));
    assert!(
        not_fat(open(&with(&v16, 11, &[0, 0]))),
        "bytes per sector 0"
    );
    assert!(
        not_fat(open(&with(&v16, 11, &[0xB8, 0x0B]))),
        "bytes per sector 3000"
    );
    assert!(
        not_fat(open(&with(&v16, 13, &[3]))),
        "3 sectors per cluster"
    );
    assert!(
        not_fat(open(&with(&v16, 13, &[0]))),
        "0 sectors per cluster"
    );
    assert!(not_fat(open(&with(&v16, 16, &[0]))), "no FATs");
    assert!(
        not_fat(open(&with(&v16, 14, &[0, 0]))),
        "no reserved sectors"
    );
    assert!(
        not_fat(open(&with(&v16, 17, &[0, 0]))),
        "FAT16 without root entries"
    );
    assert!(not_fat(open(&with(&v16, 22, &[1, 0]))), "FAT too small");
    assert!(not_fat(open(&with(&v16, 21, &[0x12]))), "media byte");
    assert!(not_fat(open(&with(&v16, 19, &[10, 0]))), "no data area");
    assert!(matches!(
        open(&with(&v16, 19, &[0xFF, 0xFF])),
        Err(FatError::Truncated { .. })
    ));
    assert!(
        not_fat(open(&with(&v32, 44, &[0xFF, 0xFF, 0xFF, 0x0F]))),
        "root cluster"
    );
    assert!(
        not_fat(open(&with(&v32, 44, &[0, 0, 0, 0]))),
        "root cluster 0"
    );
    assert!(not_fat(open(&with(&v32, 42, &[1, 0]))), "FAT32 version");
    assert!(not_fat(open(&vec![0u8; 4096])));
    assert!(matches!(
        FatFs::open(&v16, 0, 100),
        Err(FatError::NotFat(_))
    ));
    assert!(FatFs::open(&v16[..1000].to_vec(), 0, 1 << 20).is_err());

    // cluster loops: a file chain, a directory chain, the FAT32 root chain, a directory cycle
    let fs = FatFs::open(&v32, 0, v32.len() as u64).unwrap();
    let fat_off = 32 * 512; // mkfs.vfat reserves 32 sectors for FAT32
    let fat_bytes = u32::from_le_bytes(v32[36..40].try_into().unwrap()) as usize * 512;
    let set = |v: &mut Vec<u8>, c: u32, n: u32| {
        for k in 0..2 {
            let o = fat_off + k * fat_bytes + c as usize * 4;
            v[o..o + 4].copy_from_slice(&n.to_le_bytes());
        }
    };
    let talos = fs.lookup(TALOS).unwrap().first_cluster;
    let mut m = v32.clone();
    set(&mut m, talos + 2, talos);
    let fs_m = FatFs::open(&m, 0, m.len() as u64).unwrap();
    assert!(matches!(
        fs_m.read_file(&m, TALOS, 1 << 20),
        Err(FatError::ChainLoop { .. })
    ));
    assert!(matches!(
        fs_m.file_ranges(TALOS),
        Err(FatError::ChainLoop { .. })
    ));
    let mut ed = FatEdit::new(&fs_m, &m).unwrap();
    assert!(matches!(
        ed.write_file(TALOS, &[0; 100_000]),
        Err(FatError::ChainLoop { .. })
    ));
    let loader = fs.lookup("loader").unwrap().first_cluster;
    let mut m = v32.clone();
    set(&mut m, loader, loader);
    assert!(matches!(
        open(&m),
        Err(FatError::ChainLoop { .. } | FatError::DirectoryTooLarge(_))
    ));
    let mut m = v32.clone();
    set(&mut m, 2, 2);
    assert!(open(&m).is_err(), "root chain loop");
    let mut m = v32.clone();
    set(&mut m, loader, 0);
    assert!(matches!(open(&m), Err(FatError::BadChain { .. })));
    // /loader's entry made to point at the root cluster: a directory cycle
    let e = fs.lookup("loader").unwrap();
    let mut m = v32.clone();
    m[e.entry_offset as usize + 26..][..2].copy_from_slice(&2u16.to_le_bytes());
    m[e.entry_offset as usize + 20..][..2].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(open(&m), Err(FatError::DirectoryLoop(_))));
    // a file size larger than its chain
    let e = fs.lookup("/loader/loader.conf").unwrap();
    let mut m = v32.clone();
    m[e.entry_offset as usize + 28..][..4].copy_from_slice(&100_000u32.to_le_bytes());
    let fs_m = FatFs::open(&m, 0, m.len() as u64).unwrap();
    assert!(matches!(
        fs_m.read_file(&m, "/loader/loader.conf", 1 << 20),
        Err(FatError::ChainTooShort { .. })
    ));

    // random damage to the boot sector, FATs and directories: errors or results, never panics
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for v in [&v16, &v32] {
        let fs = FatFs::open(v, 0, v.len() as u64).unwrap();
        let hot: Vec<(u64, u64)> = fs
            .entries()
            .iter()
            .map(|e| (e.entry_offset & !511, 512))
            .chain([(0, 1024), (16384, 2048), (fat_off as u64, 2048)])
            .collect();
        for _ in 0..1500 {
            let mut m = v.clone();
            for _ in 0..1 + rnd() % 6 {
                let (o, n) = hot[(rnd() % hot.len() as u64) as usize];
                m[(o + rnd() % n) as usize] = rnd() as u8;
            }
            let Ok(fs) = FatFs::open(&m, 0, m.len() as u64) else {
                continue;
            };
            for e in fs.entries() {
                if !e.is_dir {
                    let _ = fs.read_file(&m, &e.path, 1 << 20);
                    let _ = fs.file_ranges(&e.path);
                }
            }
            if let Ok(mut ed) = FatEdit::new(&fs, &m) {
                let _ = ed.mkdir("loader/entries");
                let _ = ed.write_file("loader/entries/beskar7.conf", &[b'x'; 3000]);
                let _ = ed.write_file("loader/loader.conf", &[b'y'; 5000]);
                let _ = ed.rename(TALOS, "Talos-v1.10.0.efi.b7");
                let (base, len) = fs.extent();
                for (o, d) in ed.finish() {
                    assert!(o >= base && o + d.len() as u64 <= base + len);
                }
            }
        }
    }
}

/// Fills `buf` from external file `id` at `off`: a pattern unique to (id, offset).
fn external(id: usize, off: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let p = off + i as u64;
        *b = ((p * 7 + (p >> 9)) as u8) ^ (id as u8).wrapping_mul(0x5B);
    }
}

fn external_vec(id: usize, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    external(id, 0, &mut v);
    v
}

/// Writes the image, skipping zero runs (a sparse file).
fn write_sparse(img: &beskar7_boot::fatfs::FatImage, path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(img.len).unwrap();
    let mut off = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for p in &img.pieces {
        match p {
            Piece::Bytes(b) => f.write_all_at(b, off).unwrap(),
            Piece::Zeros(_) => {}
            Piece::External {
                id,
                offset_in_file,
                len,
            } => {
                let mut done = 0;
                while done < *len {
                    let n = (*len - done).min(buf.len() as u64) as usize;
                    external(*id, offset_in_file + done, &mut buf[..n]);
                    f.write_all_at(&buf[..n], off + done).unwrap();
                    done += n as u64;
                }
            }
        }
        off += p.len();
    }
    assert_eq!(off, img.len);
}

fn check_built(t: &TempDir, path: &Path, label: &str, files: &[NewFile]) {
    fsck(path);
    assert_eq!(blkid(path), (label.to_string(), "vfat".to_string()));
    let all = mdir_all(path);
    for f in files {
        let p = format!("/{}", f.path.trim_start_matches('/'));
        assert!(all.contains(&p), "mdir lacks {p}: {all:?}");
        let want = match &f.data {
            FileData::Bytes(b) => b.clone(),
            FileData::External { id, len } => external_vec(*id, *len),
        };
        assert!(mcopy_out(t, path, &p) == want, "{p} differs");
    }
}

#[test]
fn builder_64mib_volume_checked_by_fsck_blkid_mtools() {
    let t = TempDir::new("fat-build");
    let files = vec![
        NewFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: FileData::External {
                id: 0,
                len: 30 << 20,
            },
        },
        NewFile {
            path: "flatcar/vmlinuz".into(),
            data: FileData::External {
                id: 1,
                len: (25 << 20) + 123,
            },
        },
        NewFile {
            path: "EFI/beskar7/boot.conf".into(),
            data: FileData::Bytes(b"kernel /flatcar/vmlinuz\nargs flatcar.first_boot=1\n".to_vec()),
        },
        NewFile {
            path: "EFI/beskar7/a long file name, with spaces.txt".into(),
            data: FileData::Bytes(Vec::new()),
        },
    ];
    let img = build_fat_pieces("EFI-SYSTEM", &files).unwrap();
    assert_eq!(img.kind, FatKind::Fat16);
    assert_eq!(img.pieces.iter().map(Piece::len).sum::<u64>(), img.len);
    assert!(
        img.bytes_in_memory() < 256 << 10,
        "{} bytes",
        img.bytes_in_memory()
    );
    // deterministic
    assert_eq!(
        build_fat_pieces("EFI-SYSTEM", &files).unwrap().pieces,
        img.pieces
    );
    let path = t.join("esp.img");
    let mut out = std::fs::File::create(&path).unwrap();
    img.materialise(&mut out, |id, off, buf| {
        external(id, off, buf);
        Ok(())
    })
    .unwrap();
    drop(out);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), img.len);
    check_built(&t, &path, "EFI-SYSTEM", &files);

    // our reader: each big file is one contiguous range, at the offset of its External piece
    let src = std::fs::File::open(&path).unwrap();
    let fs = FatFs::open(&src, 0, img.len).unwrap();
    assert_eq!(fs.label(), Some("EFI-SYSTEM"));
    let mut at = 0;
    let mut ext = Vec::new();
    for p in &img.pieces {
        if let Piece::External { id, len, .. } = p {
            ext.push((*id, at, *len));
        }
        at += p.len();
    }
    for (id, path) in [(0, "EFI/BOOT/BOOTX64.EFI"), (1, "flatcar/vmlinuz")] {
        let r = fs.file_ranges(path).unwrap();
        assert_eq!(r.len(), 1, "{path}");
        let (_, off, len) = ext.iter().find(|e| e.0 == id).unwrap();
        assert_eq!(r[0], (*off, *len), "{path}");
        assert_eq!(
            off % img.cluster_bytes,
            0,
            "{path}: data area aligned to clusters"
        );
    }

    // the built volume takes edits too
    let mut ed = FatEdit::new(&fs, &src).unwrap();
    ed.write_file("EFI/beskar7/boot.conf", b"changed\n")
        .unwrap();
    let out = t.join("edited.img");
    apply(&path, &out, &fs, &ed.finish());
    fsck(&out);
    assert_eq!(mtype(&out, "/EFI/beskar7/boot.conf"), b"changed\n");
}

#[test]
fn builder_fat32_volume_checked_by_fsck_blkid_mtools() {
    // past FAT16 with 8 KiB clusters: FAT32
    let t = TempDir::new("fat-build32");
    let files = vec![
        NewFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: FileData::External {
                id: 3,
                len: 200 << 10,
            },
        },
        NewFile {
            path: "flatcar/cpio.gz".into(),
            data: FileData::External {
                id: 4,
                len: (530 << 20) + 17,
            },
        },
        NewFile {
            path: "flatcar/vmlinuz".into(),
            data: FileData::External {
                id: 5,
                len: 60 << 20,
            },
        },
        NewFile {
            path: "EFI/beskar7/boot.conf".into(),
            data: FileData::Bytes(b"x\n".to_vec()),
        },
    ];
    let img = build_fat_pieces("EFI-SYSTEM", &files).unwrap();
    assert_eq!(img.kind, FatKind::Fat32);
    assert!(
        img.bytes_in_memory() < 1 << 20,
        "{} bytes",
        img.bytes_in_memory()
    );
    let path = t.join("esp.img");
    write_sparse(&img, &path);
    check_built(&t, &path, "EFI-SYSTEM", &files[..1]);
    let src = std::fs::File::open(&path).unwrap();
    let fs = FatFs::open(&src, 0, img.len).unwrap();
    assert_eq!(fs.kind(), FatKind::Fat32);
    for f in &files[1..3] {
        let FileData::External { id, len } = f.data else {
            unreachable!()
        };
        let r = fs.file_ranges(&f.path).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, len);
        let mut got = vec![0u8; 1 << 20];
        let mut want = vec![0u8; 1 << 20];
        for off in [0, len / 2, len - (1 << 20)] {
            src.read_exact_at(&mut got, r[0].0 + off).unwrap();
            external(id, off, &mut want);
            assert!(got == want, "{} at {off}", f.path);
        }
    }
    assert_eq!(mtype(&path, "/EFI/beskar7/boot.conf"), b"x\n");
}

#[test]
fn builder_700mib_layout_keeps_memory_small() {
    let files = vec![
        NewFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: FileData::External {
                id: 0,
                len: 300 << 10,
            },
        },
        NewFile {
            path: "flatcar/vmlinuz".into(),
            data: FileData::External {
                id: 1,
                len: 60 << 20,
            },
        },
        NewFile {
            path: "flatcar/cpio.gz".into(),
            data: FileData::External {
                id: 2,
                len: 640 << 20,
            },
        },
        NewFile {
            path: "EFI/beskar7/boot.conf".into(),
            data: FileData::Bytes(vec![b'a'; 300]),
        },
    ];
    let img = build_fat_pieces("EFI-SYSTEM", &files).unwrap();
    assert_eq!(img.kind, FatKind::Fat32);
    assert!(img.len >= 700 << 20);
    assert_eq!(img.pieces.iter().map(Piece::len).sum::<u64>(), img.len);
    assert!(
        img.bytes_in_memory() < 1 << 20,
        "{} bytes in memory",
        img.bytes_in_memory()
    );
    // the FAT32 cluster count is well inside the FAT32 range
    let clusters = img.len / img.cluster_bytes;
    assert!(clusters > 65525 + 64, "{clusters}");
    let exts: Vec<_> = img
        .pieces
        .iter()
        .filter(|p| matches!(p, Piece::External { .. }))
        .collect();
    assert_eq!(exts.len(), 3, "each file one piece");
}

#[test]
fn builder_rejects_bad_input() {
    let f = |p: &str| NewFile {
        path: p.into(),
        data: FileData::Bytes(vec![1]),
    };
    assert!(matches!(
        build_fat_pieces("", &[]),
        Err(FatError::BadLabel(_))
    ));
    assert!(matches!(
        build_fat_pieces("lower", &[]),
        Err(FatError::BadLabel(_))
    ));
    assert!(matches!(
        build_fat_pieces("TWELVE CHARS", &[]),
        Err(FatError::BadLabel(_))
    ));
    assert!(matches!(
        build_fat_pieces("L", &[f("a"), f("A")]),
        Err(FatError::BadPath(_))
    ));
    assert!(matches!(
        build_fat_pieces("L", &[f("a/b"), f("a")]),
        Err(FatError::BadPath(_))
    ));
    assert!(matches!(
        build_fat_pieces("L", &[f("a"), f("a/b")]),
        Err(FatError::BadPath(_))
    ));
    assert!(matches!(
        build_fat_pieces("L", &[f("a?")]),
        Err(FatError::BadName(_))
    ));
    assert!(matches!(
        build_fat_pieces("L", &[f("/")]),
        Err(FatError::BadPath(_))
    ));
    let big = NewFile {
        path: "x".into(),
        data: FileData::External {
            id: 0,
            len: 1 << 32,
        },
    };
    assert!(matches!(
        build_fat_pieces("L", &[big]),
        Err(FatError::FileTooLarge { .. })
    ));
}

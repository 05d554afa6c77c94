//! MBR/GPT reading and editing of hybrid ISOs built by xorriso and isohybrid, checked with
//! sgdisk, sfdisk, xorriso, blkid and mtools.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use beskar7_boot::partition::{
    DescribedBy, ESP_TYPE_GUID, LBA_SIZE, PartitionChanges, PartitionError, PartitionTables,
};
use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// grub-mkrescue's options for Talos (`-append_partition 2 0xef ... -appended_part_as_gpt ...`).
const TALOS: &[&str] = &[
    "-append_partition",
    "2",
    "0xef",
    "@EFI@",
    "-appended_part_as_gpt",
    "-partition_cyl_align",
    "all",
    "-partition_offset",
    "16",
    "-iso_mbr_part_type",
    "0x83",
];

struct Image {
    _t: TempDir,
    dir: PathBuf,
    iso: PathBuf,
    efi: Vec<u8>,
}

/// A FAT image with EFI/hello.txt, as the appended EFI system partition (2 MiB, 4096 sectors).
fn efi_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let efi = dir.join("efi.img");
    run(Command::new(tool("mkfs.vfat", "dosfstools"))
        .args(["-C", "-n", "EFIPART", "-i", "12345678"])
        .arg(&efi)
        .arg("2048"));
    let hello = dir.join("hello.txt");
    std::fs::write(&hello, b"hello from the ESP\n").unwrap();
    run(Command::new(tool("mmd", "mtools"))
        .arg("-i")
        .arg(&efi)
        .arg("::/EFI")
        .env("MTOOLS_SKIP_CHECK", "1"));
    run(Command::new(tool("mcopy", "mtools"))
        .arg("-i")
        .arg(&efi)
        .arg(&hello)
        .arg("::/EFI/hello.txt")
        .env("MTOOLS_SKIP_CHECK", "1"));
    let bytes = std::fs::read(&efi).unwrap();
    (efi, bytes)
}

fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), vec![0x4bu8; 300_000]).unwrap();
    std::fs::write(root.join("readme.txt"), b"hello\n").unwrap();
    root
}

/// `xorriso -as mkisofs` of a small tree with `opts` (`@EFI@` stands for the FAT image).
fn xorriso_iso(tag: &str, opts: &[&str]) -> Image {
    let t = TempDir::new(tag);
    let dir = t.path().to_path_buf();
    let root = tree(&dir);
    let (efi_path, efi) = efi_image(&dir);
    let iso = dir.join("in.iso");
    let mut cmd = Command::new(tool("xorriso", "xorriso"));
    cmd.args(["-as", "mkisofs", "-R", "-J", "-V", "TEST", "-o"])
        .arg(&iso);
    for o in opts {
        if *o == "@EFI@" {
            cmd.arg(&efi_path);
        } else {
            cmd.arg(o);
        }
    }
    cmd.arg(&root);
    run(&mut cmd);
    Image {
        _t: t,
        dir,
        iso,
        efi,
    }
}

/// An isolinux ISO made hybrid by `isohybrid` (MBR only, one 0x17 partition over the image), as
/// Flatcar's.
fn isohybrid_iso() -> Image {
    let t = TempDir::new("isohybrid");
    let dir = t.path().to_path_buf();
    let root = tree(&dir);
    let (_, efi) = efi_image(&dir);
    std::fs::create_dir_all(root.join("isolinux")).unwrap();
    for f in [
        "/usr/lib/ISOLINUX/isolinux.bin",
        "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    ] {
        let src = Path::new(f);
        assert!(
            src.is_file(),
            "{f} missing: install the Debian packages isolinux and syslinux-common"
        );
        std::fs::copy(src, root.join("isolinux").join(src.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        root.join("isolinux/isolinux.cfg"),
        "DEFAULT x\nLABEL x\n KERNEL /boot/vmlinuz\n",
    )
    .unwrap();
    let iso = dir.join("in.iso");
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-as", "mkisofs", "-R", "-J", "-V", "FLATCAR", "-o"])
        .arg(&iso)
        .args([
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ])
        .arg(&root));
    run(Command::new(tool("isohybrid", "syslinux-utils"))
        .args(["-i", "0x12345678"])
        .arg(&iso));
    Image {
        _t: t,
        dir,
        iso,
        efi,
    }
}

fn read_tables(img: &Path) -> PartitionTables {
    let f = std::fs::File::open(img).unwrap();
    let len = f.metadata().unwrap().len();
    PartitionTables::read(&f, len).unwrap()
}

/// Writes the edited image: the source, the replaced ranges, zeros up to `new_len` and the tail.
fn write_image(src: &Path, changes: &PartitionChanges, new_len: u64, out: &Path) {
    let old_len = std::fs::metadata(src).unwrap().len();
    let mut prev = 0;
    for (at, b) in &changes.replaced {
        assert!(*at >= prev, "replaced ranges sorted and disjoint");
        prev = at + b.len() as u64;
        assert!(prev <= old_len, "replaced range inside the source");
    }
    for (at, b) in &changes.tail {
        assert!(
            *at >= old_len.max(prev),
            "tail at or after the old end, sorted"
        );
        prev = at + b.len() as u64;
        assert!(prev <= new_len, "tail inside the new image");
    }
    std::fs::copy(src, out).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(out).unwrap();
    f.set_len(new_len).unwrap();
    for (at, b) in changes.replaced.iter().chain(&changes.tail) {
        f.seek(SeekFrom::Start(*at)).unwrap();
        f.write_all(b).unwrap();
    }
}

fn put_bytes(img: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

fn sfdisk_json(img: &Path, nested_dos: bool) -> Value {
    let mut cmd = Command::new(tool("sfdisk", "fdisk"));
    cmd.arg("-J");
    if nested_dos {
        cmd.args(["--label-nested", "dos"]);
    }
    let out = stdout(cmd.arg(img));
    serde_json::from_str::<Value>(&out).unwrap()["partitiontable"].clone()
}

/// `sgdisk -v` and `sfdisk -V` must find nothing wrong.
fn assert_gpt_verifies(img: &Path) {
    let out = Command::new(tool("sgdisk", "gdisk"))
        .arg("-v")
        .arg(img)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // sgdisk exits 0 with "No problems found" even when it had to fall back from a damaged
    // header or array: its cautions (on stderr) count too. Only xorriso's own layout note
    // (Gap1 not ending on a 64-sector boundary, present in the source) is accepted.
    let notes: String = text
        .lines()
        .filter(|l| {
            !l.contains("doesn't end on a 64-sector boundary")
                && !l.contains("problems with some disk encryption tools")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success()
            && text.contains("No problems found")
            && !["Caution", "Warning", "ERROR", "corrupt", "invalid"]
                .iter()
                .any(|w| notes.contains(w)),
        "sgdisk -v {}:\n{text}",
        img.display()
    );
    let v = stdout(Command::new(tool("sfdisk", "fdisk")).arg("-V").arg(img));
    assert!(v.contains("No errors detected"), "sfdisk -V: {v}");
}

fn xorriso_report(img: &Path) -> String {
    stdout(
        Command::new(tool("xorriso", "xorriso"))
            .arg("-indev")
            .arg(img)
            .args(["-report_system_area", "plain"])
            .stderr(std::process::Stdio::null()),
    )
}

/// The report lines starting with `prefix`, whitespace collapsed.
fn report_lines(report: &str, prefix: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// (start, size, type, uuid, name) of each GPT partition as sfdisk shows them.
fn sfdisk_parts(table: &Value) -> Vec<(u64, u64, String, String, String)> {
    table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
                p["uuid"].as_str().unwrap_or("").to_string(),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn our_gpt_parts(t: &PartitionTables) -> Vec<(u64, u64, String, String, String)> {
    t.partitions()
        .iter()
        .map(|p| {
            let g = p.gpt.as_ref().unwrap();
            (
                p.first_lba,
                p.last_lba - p.first_lba + 1,
                g.type_guid.clone(),
                g.unique_guid.clone(),
                g.name.clone(),
            )
        })
        .collect()
}

fn sectors(img: &Path) -> u64 {
    std::fs::metadata(img).unwrap().len() / LBA_SIZE
}

fn read_sector(img: &Path, lba: u64) -> Vec<u8> {
    let f = std::fs::File::open(img).unwrap();
    let mut b = vec![0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, lba * 512).unwrap();
    b
}

fn talos_variants() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut protective = TALOS.to_vec();
    protective.push("--protective-msdos-label");
    vec![
        ("talos", TALOS.to_vec()),
        ("talos-pmbr", protective),
        (
            "appended-gpt",
            vec![
                "-append_partition",
                "2",
                "0xef",
                "@EFI@",
                "-appended_part_as_gpt",
            ],
        ),
    ]
}

#[test]
fn talos_like_hybrid_reads_like_sgdisk_and_sfdisk() {
    for (tag, opts) in talos_variants() {
        let img = xorriso_iso(tag, &opts);
        let t = read_tables(&img.iso);
        let sf = sfdisk_json(&img.iso, false);
        assert_eq!(sf["label"], "gpt", "{tag}");
        assert_eq!(our_gpt_parts(&t), sfdisk_parts(&sf), "{tag}");
        let g = t.gpt().unwrap();
        assert!(!g.used_backup);
        assert_eq!(Value::from(g.disk_guid.clone()), sf["id"], "{tag}");
        assert_eq!(Value::from(g.first_usable_lba), sf["firstlba"], "{tag}");
        assert_eq!(Value::from(g.last_usable_lba), sf["lastlba"], "{tag}");
        assert_eq!(g.alternate_lba, sectors(&img.iso) - 1);
        let sg = stdout(
            Command::new(tool("sgdisk", "gdisk"))
                .arg("-p")
                .arg(&img.iso),
        );
        assert!(
            sg.contains(&format!("Disk identifier (GUID): {}", g.disk_guid)),
            "{sg}"
        );
        assert!(
            sg.contains(&format!("holds up to {} entries", g.entry_count)),
            "{sg}"
        );

        let names: Vec<_> = t.partitions().iter().map(|p| p.name().unwrap()).collect();
        // without -partition_offset xorriso names the ISO 9660 area "Gap0"
        let iso = if tag == "appended-gpt" {
            "Gap0"
        } else {
            "ISO9660"
        };
        assert_eq!(names, [iso, "Appended2", "Gap1"], "{tag}");
        let esp = &t.partitions()[1];
        assert_eq!(esp.gpt.as_ref().unwrap().type_guid, ESP_TYPE_GUID);
        assert_eq!(esp.described_by(), DescribedBy::Gpt);
        // the ESP's bytes are the FAT image
        let f = std::fs::read(&img.iso).unwrap();
        let r = esp.byte_range();
        assert_eq!(&f[r.start as usize..r.end as usize], &img.efi[..], "{tag}");

        let mbr = t.mbr().unwrap();
        assert!(mbr.is_protective(), "{tag}");
        let pm = sfdisk_json(&img.iso, true);
        let e = &pm["partitions"][0];
        assert_eq!(
            (e["start"].as_u64(), e["size"].as_u64(), e["type"].as_str()),
            (
                Some(mbr.entries[0].first_lba as u64),
                Some(mbr.entries[0].sectors as u64),
                Some("ee")
            ),
            "{tag}"
        );
    }
}

/// Grows each Talos-like image by 3 MiB and checks the result with sgdisk, sfdisk and xorriso.
#[test]
fn grown_talos_like_hybrid_verifies() {
    for (tag, opts) in talos_variants() {
        let img = xorriso_iso(tag, &opts);
        let t = read_tables(&img.iso);
        let old = sectors(&img.iso);
        let before = sfdisk_parts(&sfdisk_json(&img.iso, false));
        let report_before = xorriso_report(&img.iso);

        let new_len = (old * 512) + 3 * MIB;
        let changes = t.edit().resize(new_len).unwrap().build().unwrap();
        assert!(!changes.tail.is_empty());
        let out = img.dir.join("grown.iso");
        write_image(&img.iso, &changes, new_len, &out);
        assert_gpt_verifies(&out);

        let sf = sfdisk_json(&out, false);
        assert_eq!(sfdisk_parts(&sf), before, "{tag}: same partitions");
        let new = new_len / 512;
        let array = t.gpt().unwrap().array_sectors();
        assert_eq!(sf["lastlba"].as_u64(), Some(new - 2 - array), "{tag}");
        assert_eq!(sf["id"].as_str(), Some(t.gpt().unwrap().disk_guid.as_str()));
        let pm = sfdisk_json(&out, true);
        assert_eq!(pm["partitions"][0]["size"].as_u64(), Some(new - 1), "{tag}");

        let report = xorriso_report(&out);
        assert_eq!(
            report_lines(&report, "MBR partition      :"),
            [format!("MBR partition : 1 0x00 0xee 1 {}", new - 1)],
            "{tag}: {report}"
        );
        assert_eq!(
            report_lines(&report, "GPT lba range"),
            [format!(
                "GPT lba range : 64 {} {}",
                new - 2 - array,
                new - 1
            )],
            "{tag}: {report}"
        );
        // entries, names, GUIDs, flags and the separated array are as before
        for p in [
            "GPT entry array",
            "GPT disk GUID",
            "GPT start and size",
            "GPT partition name",
            "GPT partition GUID",
            "GPT type GUID",
            "GPT partition flags",
            "System area summary",
        ] {
            assert_eq!(
                report_lines(&report, p),
                report_lines(&report_before, p),
                "{tag}: {p}"
            );
        }
        // the old backup header is gone, the ISO file system still reads
        assert_ne!(&read_sector(&out, old - 1)[..8], b"EFI PART");
        let ls = stdout(
            Command::new(tool("xorriso", "xorriso"))
                .arg("-indev")
                .arg(&out)
                .args(["-lsl", "/readme.txt"])
                .stderr(std::process::Stdio::null()),
        );
        assert!(ls.contains("readme.txt"), "{ls}");

        // our reader agrees with what we wrote
        let t2 = read_tables(&out);
        let g2 = t2.gpt().unwrap();
        assert_eq!(g2.alternate_lba, new - 1);
        assert_eq!(our_gpt_parts(&t2), our_gpt_parts(&t));
        // same edit, same bytes
        assert_eq!(t.edit().resize(new_len).unwrap().build().unwrap(), changes);
    }
}

/// Moves the ESP (p2) into the grown tail, copying its FAT bytes there, as a caller adding an
/// ESP of its own would.
#[test]
fn esp_moved_to_the_new_end_is_readable() {
    let img = xorriso_iso("talos-move", TALOS);
    let t = read_tables(&img.iso);
    let old = sectors(&img.iso);
    let esp_sectors = img.efi.len() as u64 / 512;
    let first = old.next_multiple_of(2048);
    let new_len = (first + esp_sectors) * 512 + t.backup_gpt_bytes();
    let changes = t
        .edit()
        .resize(new_len)
        .unwrap()
        .set_range(1, first, first + esp_sectors - 1)
        .unwrap()
        .build()
        .unwrap();
    let out = img.dir.join("moved.iso");
    write_image(&img.iso, &changes, new_len, &out);
    put_bytes(&out, first * 512, &img.efi);
    assert_gpt_verifies(&out);

    let sf = sfdisk_parts(&sfdisk_json(&out, false));
    assert_eq!((sf[1].0, sf[1].1), (first, esp_sectors));
    assert_eq!(sf[1].4, "Appended2");
    assert_eq!(sf[1].3, t.partitions()[1].gpt.as_ref().unwrap().unique_guid);
    let offset = (first * 512).to_string();
    let probe = stdout(
        Command::new(tool("blkid", "util-linux"))
            .args(["-p", "-o", "export", "-O", &offset])
            .arg(&out),
    );
    assert!(probe.contains("TYPE=vfat"), "{probe}");
    assert!(probe.contains("LABEL=EFIPART"), "{probe}");
    let listing = stdout(
        Command::new(tool("mdir", "mtools"))
            .args(["-b", "-i"])
            .arg(format!("{}@@{offset}", out.display()))
            .arg("::/EFI")
            .env("MTOOLS_SKIP_CHECK", "1"),
    );
    assert!(listing.to_lowercase().contains("hello.txt"), "{listing}");
    let report = xorriso_report(&out);
    assert_eq!(
        report_lines(&report, "GPT start and size :   2"),
        [format!("GPT start and size : 2 {first} {esp_sectors}")]
    );

    // Moving it onto Gap1 or growing Gap1 into the backup GPT is refused, naming both.
    let err = t
        .edit()
        .set_range(1, 6144, 6200)
        .unwrap()
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PartitionError::Overlap(..))
            && msg.contains("\"Appended2\"")
            && msg.contains("\"Gap1\""),
        "{msg}"
    );
    let gap = &t.partitions()[2];
    let err = t
        .edit()
        .resize(new_len)
        .unwrap()
        .extend_partition_to(2, new_len)
        .unwrap()
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"Gap1\"") && msg.contains("backup GPT"),
        "{msg}"
    );
    // ...while growing it up to the new last usable LBA is fine
    let lu = new_len / 512 - 2 - t.gpt().unwrap().array_sectors();
    let changes = t
        .edit()
        .resize(new_len)
        .unwrap()
        .extend_partition_to(2, (lu + 1) * 512)
        .unwrap()
        .build()
        .unwrap();
    let out = img.dir.join("gap.iso");
    write_image(&img.iso, &changes, new_len, &out);
    assert_gpt_verifies(&out);
    let sf = sfdisk_parts(&sfdisk_json(&out, false));
    assert_eq!((sf[2].0, sf[2].1), (gap.first_lba, lu - gap.first_lba + 1));
}

#[test]
fn gpt_partition_added_in_the_tail() {
    let img = xorriso_iso("talos-add", TALOS);
    let t = read_tables(&img.iso);
    let old = sectors(&img.iso);
    let esp_sectors = img.efi.len() as u64 / 512;
    let first = old.next_multiple_of(2048);
    let new_len = (first + esp_sectors) * 512 + t.backup_gpt_bytes();
    let build = || {
        let mut e = t.edit();
        e.resize(new_len).unwrap();
        let index = e
            .add_gpt_partition(ESP_TYPE_GUID, "Beskar7 ESP", first, first + esp_sectors - 1)
            .unwrap();
        assert_eq!(index, 3, "first free entry");
        e.build().unwrap()
    };
    let changes = build();
    assert_eq!(build(), changes, "reproducible");
    let out = img.dir.join("added.iso");
    write_image(&img.iso, &changes, new_len, &out);
    put_bytes(&out, first * 512, &img.efi);
    assert_gpt_verifies(&out);
    let sf = sfdisk_parts(&sfdisk_json(&out, false));
    assert_eq!(sf.len(), 4);
    assert_eq!(sf[..3], sfdisk_parts(&sfdisk_json(&img.iso, false))[..]);
    assert_eq!(
        (sf[3].0, sf[3].1, sf[3].2.as_str(), sf[3].4.as_str()),
        (first, esp_sectors, ESP_TYPE_GUID, "Beskar7 ESP")
    );
    let t2 = read_tables(&out);
    let uuids: std::collections::BTreeSet<_> = t2
        .partitions()
        .iter()
        .map(|p| p.gpt.as_ref().unwrap().unique_guid.clone())
        .collect();
    assert_eq!(uuids.len(), 4, "unique GUIDs differ");
    assert_eq!(
        sf[3].3,
        t2.partitions()[3].gpt.as_ref().unwrap().unique_guid
    );
    let listing = stdout(
        Command::new(tool("mdir", "mtools"))
            .args(["-b", "-i"])
            .arg(format!("{}@@{}", out.display(), first * 512))
            .arg("::/EFI")
            .env("MTOOLS_SKIP_CHECK", "1"),
    );
    assert!(listing.to_lowercase().contains("hello.txt"), "{listing}");

    // Overlapping an existing partition, or reaching into the GPT, is refused.
    for (a, b, what) in [(6000, 6100, "\"Appended2\""), (10, 100, "primary GPT")] {
        let mut e = t.edit();
        e.add_gpt_partition(ESP_TYPE_GUID, "x", a, b).unwrap();
        let msg = e.build().unwrap_err().to_string();
        assert!(
            msg.contains(what) && msg.contains("new GPT partition 4"),
            "{msg}"
        );
    }
    let mut e = t.edit();
    assert!(matches!(
        e.add_gpt_partition(ESP_TYPE_GUID, &"n".repeat(37), first, first),
        Err(PartitionError::NameTooLong(_))
    ));
    assert!(matches!(
        e.add_gpt_partition("not-a-guid", "x", first, first),
        Err(PartitionError::Guid(_))
    ));
    assert!(matches!(
        e.add_mbr_partition(0xef, first, 10, false),
        Err(PartitionError::ProtectiveMbr)
    ));
}

/// The MBR-only layout of Flatcar's isohybrid ISO.
#[test]
fn isohybrid_mbr_gets_an_esp_and_extends_only_when_asked() {
    let img = isohybrid_iso();
    let t = read_tables(&img.iso);
    let old = sectors(&img.iso);
    assert!(t.gpt().is_none());
    let sf = sfdisk_json(&img.iso, false);
    assert_eq!(sf["label"], "dos");
    assert_eq!(sf["id"], "0x12345678");
    assert_eq!(t.mbr().unwrap().disk_signature, 0x12345678);
    let [p] = t.partitions() else {
        panic!("{:?}", t.partitions())
    };
    let m = p.mbr.as_ref().unwrap();
    assert_eq!(p.described_by(), DescribedBy::Mbr);
    assert_eq!((m.type_byte, m.bootable(), p.first_lba), (0x17, true, 0));
    assert_eq!(p.last_lba + 1, old, "covers the image");
    assert_eq!(sf["partitions"][0]["size"].as_u64(), Some(old));

    // add an ESP after the end; the 0x17 partition stays as it was
    let esp_sectors = img.efi.len() as u64 / 512;
    let new_len = (old + esp_sectors) * 512;
    let mut e = t.edit();
    e.resize(new_len).unwrap();
    assert_eq!(
        e.add_mbr_partition(0xef, old, esp_sectors, false).unwrap(),
        1
    );
    let changes = e.build().unwrap();
    assert!(changes.tail.is_empty(), "only the MBR changes");
    let out = img.dir.join("esp.iso");
    write_image(&img.iso, &changes, new_len, &out);
    put_bytes(&out, old * 512, &img.efi);
    let sf = sfdisk_json(&out, false);
    let parts: Vec<_> = sf["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
                p["bootable"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            (0, old, "17".to_string(), true),
            (old, esp_sectors, "ef".to_string(), false)
        ]
    );
    assert_eq!(sf["id"], "0x12345678");
    let v = stdout(Command::new(tool("sfdisk", "fdisk")).arg("-V").arg(&out));
    assert!(v.contains("No errors detected"), "{v}");
    let listing = stdout(
        Command::new(tool("mdir", "mtools"))
            .args(["-b", "-i"])
            .arg(format!("{}@@{}", out.display(), old * 512))
            .arg("::/EFI")
            .env("MTOOLS_SKIP_CHECK", "1"),
    );
    assert!(listing.to_lowercase().contains("hello.txt"), "{listing}");
    let report = xorriso_report(&out);
    assert_eq!(
        report_lines(&report, "MBR partition      :"),
        [
            format!("MBR partition : 1 0x80 0x17 0 {old}"),
            format!("MBR partition : 2 0x00 0xef {old} {esp_sectors}")
        ],
        "{report}"
    );
    // the boot code and disk signature are untouched: only the new entry differs
    let (a, b) = (read_sector(&img.iso, 0), read_sector(&out, 0));
    let diff: Vec<usize> = (0..512).filter(|i| a[*i] != b[*i]).collect();
    assert!(diff.iter().all(|i| (462..478).contains(i)), "{diff:?}");
    let t2 = read_tables(&out);
    assert_eq!(t2.partitions().len(), 2);

    // the 0x17 partition covers the grown image when asked
    let changes = t
        .edit()
        .resize(new_len)
        .unwrap()
        .extend_partition_to(0, new_len)
        .unwrap()
        .build()
        .unwrap();
    let out2 = img.dir.join("extended.iso");
    write_image(&img.iso, &changes, new_len, &out2);
    let sf = sfdisk_json(&out2, false);
    assert_eq!(sf["partitions"][0]["size"].as_u64(), Some(new_len / 512));
    assert_eq!(sf["partitions"][0]["type"], "17");
    // isohybrid itself, run again on the source padded to the new length, writes the same MBR
    // (size and CHS of the 0x17 entry; geometry 64/32)
    let padded = img.dir.join("padded.iso");
    std::fs::copy(&img.iso, &padded).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&padded)
        .unwrap()
        .set_len(new_len)
        .unwrap();
    run(Command::new(tool("isohybrid", "syslinux-utils"))
        .args(["-i", "0x12345678"])
        .arg(&padded));
    assert_eq!(std::fs::metadata(&padded).unwrap().len(), new_len);
    assert_eq!(read_sector(&out2, 0), read_sector(&padded, 0));
    // ...but not over the new ESP
    let mut e = t.edit();
    e.resize(new_len).unwrap();
    e.add_mbr_partition(0xef, old, esp_sectors, false).unwrap();
    e.extend_partition_to(0, new_len).unwrap();
    let msg = e.build().unwrap_err().to_string();
    assert!(
        msg.contains("type 0x17") && msg.contains("type 0xef"),
        "{msg}"
    );

    // three more slots fill the MBR
    let mut e = t.edit();
    e.resize(new_len + 3 * 512).unwrap();
    for i in 0..3 {
        e.add_mbr_partition(0x83, old + i, 1, false).unwrap();
    }
    assert!(matches!(
        e.add_mbr_partition(0x83, old + 3, 1, false),
        Err(PartitionError::NoFreeMbrSlot)
    ));
    assert!(e.build().is_ok());
    assert!(matches!(
        t.edit().add_gpt_partition(ESP_TYPE_GUID, "x", 1, 2),
        Err(PartitionError::NoTable("GPT"))
    ));
    // a partition beyond the new end
    let mut e = t.edit();
    e.add_mbr_partition(0xef, old, 1, false).unwrap();
    assert!(matches!(e.build(), Err(PartitionError::Range(_))));
}

/// xorriso's isohybrid GPT layout: an MBR (no 0xEE) whose entries mirror GPT entries, nested
/// GPT partitions (the El Torito EFI image inside the whole-ISO entry).
#[test]
fn hybrid_mbr_entries_match_their_gpt_entries() {
    let img = {
        let t = TempDir::new("gptbasdat");
        let dir = t.path().to_path_buf();
        let root = tree(&dir);
        let (efi_path, efi) = efi_image(&dir);
        std::fs::create_dir_all(root.join("isolinux")).unwrap();
        for f in [
            "/usr/lib/ISOLINUX/isolinux.bin",
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        ] {
            let src = Path::new(f);
            std::fs::copy(src, root.join("isolinux").join(src.file_name().unwrap())).unwrap();
        }
        std::fs::copy(&efi_path, root.join("efi.img")).unwrap();
        let iso = dir.join("in.iso");
        run(Command::new(tool("xorriso", "xorriso"))
            .args(["-as", "mkisofs", "-R", "-J", "-V", "H", "-o"])
            .arg(&iso)
            .args(["-isohybrid-mbr", "/usr/lib/ISOLINUX/isohdpfx.bin"])
            .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
            .args(["-eltorito-alt-boot", "-e", "efi.img", "-no-emul-boot"])
            .args(["-isohybrid-gpt-basdat", "-append_partition", "2", "0xef"])
            .arg(&efi_path)
            .arg(&root));
        Image {
            _t: t,
            dir,
            iso,
            efi,
        }
    };
    let t = read_tables(&img.iso);
    let report = xorriso_report(&img.iso);
    assert!(!t.mbr().unwrap().is_protective());
    let got: Vec<_> = t
        .partitions()
        .iter()
        .map(|p| {
            (
                p.name().map(str::to_string),
                p.mbr.as_ref().map(|m| m.slot + 1),
                p.described_by(),
            )
        })
        .collect();
    let name = |s: &str| Some(s.to_string());
    assert_eq!(
        got,
        [
            (name("ISOHybrid"), Some(1), DescribedBy::Both),
            (name("ISOHybrid1"), None, DescribedBy::Gpt),
            (name("Appended2"), Some(2), DescribedBy::Both),
        ],
        "{report}"
    );
    // ranges as xorriso reports them
    let want: Vec<String> = t
        .partitions()
        .iter()
        .map(|p| {
            format!(
                "GPT start and size : {} {} {}",
                p.gpt.as_ref().unwrap().index + 1,
                p.first_lba,
                p.last_lba - p.first_lba + 1
            )
        })
        .collect();
    assert_eq!(report_lines(&report, "GPT start and size"), want);

    // grow: the GPT follows, the nested entries stay, the MBR (no 0xEE) is not touched
    let old = sectors(&img.iso);
    let new_len = old * 512 + MIB;
    let changes = t.edit().resize(new_len).unwrap().build().unwrap();
    assert!(changes.replaced.iter().all(|(at, _)| *at >= 512));
    let out = img.dir.join("grown.iso");
    write_image(&img.iso, &changes, new_len, &out);
    let r2 = xorriso_report(&out);
    let new = new_len / 512;
    let array = t.gpt().unwrap().array_sectors();
    assert_eq!(
        report_lines(&r2, "GPT lba range"),
        [format!(
            "GPT lba range : 64 {} {}",
            new - 2 - array,
            new - 1
        )]
    );
    for p in [
        "MBR partition",
        "GPT start and size",
        "GPT partition name",
        "GPT entry array",
    ] {
        assert_eq!(report_lines(&r2, p), report_lines(&report, p), "{p}");
    }
    // sgdisk finds the same (pre-existing) problem in both: the array overlaps ISOHybrid at LBA 0
    let sg = |p: &Path| {
        let o = Command::new(tool("sgdisk", "gdisk"))
            .arg("-v")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(sg(&out), sg(&img.iso));

    // growing the nested El Torito entry by a sector keeps it inside the whole-ISO entry
    let p2 = &t.partitions()[1];
    let changes = t
        .edit()
        .resize(new_len)
        .unwrap()
        .set_range(1, p2.first_lba, p2.last_lba + 1)
        .unwrap()
        .build()
        .unwrap();
    write_image(&img.iso, &changes, new_len, &out);
    assert_eq!(
        report_lines(&xorriso_report(&out), "GPT start and size :   2"),
        [format!(
            "GPT start and size : 2 {} {}",
            p2.first_lba,
            p2.last_lba - p2.first_lba + 2
        )]
    );
    // extending the whole-ISO entry (MBR and GPT) now overlaps Appended2, which it did not before
    let lu = new - 2 - array;
    let err = t
        .edit()
        .resize(new_len)
        .unwrap()
        .set_range(0, 0, lu)
        .unwrap()
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("\"Appended2\""), "{err}");
}

#[test]
fn damaged_primary_gpt_falls_back_to_the_backup() {
    let img = xorriso_iso("talos-damaged", TALOS);
    let good = read_tables(&img.iso);
    let old = sectors(&img.iso);
    for (what, at) in [
        ("header (disk GUID byte)", 512 + 60),
        ("entry array (p1 name)", 1024 + 56),
    ] {
        let bad = img.dir.join("bad.iso");
        std::fs::copy(&img.iso, &bad).unwrap();
        let mut byte = read_sector(&bad, at / 512)[(at % 512) as usize];
        byte ^= 0x55;
        put_bytes(&bad, at, &[byte]);
        let t = read_tables(&bad);
        let g = t.gpt().unwrap();
        assert!(g.used_backup, "{what}");
        assert_eq!(g.disk_guid, good.gpt().unwrap().disk_guid, "{what}");
        assert_eq!(our_gpt_parts(&t), our_gpt_parts(&good), "{what}");
        // editing rebuilds the primary from the backup
        let new_len = old * 512 + MIB;
        let changes = t.edit().resize(new_len).unwrap().build().unwrap();
        let out = img.dir.join("repaired.iso");
        write_image(&bad, &changes, new_len, &out);
        assert_gpt_verifies(&out);
        assert_eq!(
            sfdisk_parts(&sfdisk_json(&out, false)),
            sfdisk_parts(&sfdisk_json(&img.iso, false)),
            "{what}"
        );
        assert!(!read_tables(&out).gpt().unwrap().used_backup);
    }
    // both copies damaged: an error naming both
    let bad = img.dir.join("bad2.iso");
    std::fs::copy(&img.iso, &bad).unwrap();
    put_bytes(&bad, 512 + 60, &[0xAA, 0xBB]);
    put_bytes(&bad, (old - 1) * 512 + 60, &[0xAA, 0xBB]);
    let f = std::fs::File::open(&bad).unwrap();
    let err = PartitionTables::read(&f, old * 512).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PartitionError::Gpt { .. })
            && msg.contains("LBA 1")
            && msg.contains(&format!("LBA {}", old - 1))
            && msg.contains("CRC32"),
        "{msg}"
    );
}

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

fn crc(data: &[u8]) -> u32 {
    beskar7_boot::partition::crc32(data)
}

/// A minimal GPT disk in memory: protective MBR, header at LBA 1 with `count` entries of 128
/// bytes at LBA 2 (none used), CRCs right.
fn gpt_disk(sectors: u64, count: u32, entries_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; (sectors * 512) as usize];
    d[446 + 4] = 0xEE;
    d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    d[446 + 12..446 + 16].copy_from_slice(&((sectors - 1) as u32).to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xAA;
    let h = &mut d[512..512 + 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&count.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    // (an oversized array never gets to its CRC)
    let array_crc = crc(&vec![0u8; (count as usize).min(8192) * 128]);
    h[88..92].copy_from_slice(&array_crc.to_le_bytes());
    let c = crc(h);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    d
}

#[test]
fn garbage_gives_clear_errors_not_panics() {
    let read = |d: &[u8]| PartitionTables::read(&d, d.len() as u64);
    // nothing there: no tables, not an error (a plain ISO)
    for d in [vec![], vec![0u8; 100], vec![0u8; 512], vec![0u8; 4096]] {
        assert!(read(&d).unwrap().is_empty());
    }
    // boot-sector-like bytes with a 0x55AA signature
    let mut d = vec![0u8; 4096];
    d[446] = 0x12;
    d[510] = 0x55;
    d[511] = 0xAA;
    let msg = read(&d).unwrap_err().to_string();
    assert!(msg.contains("boot indicator 0x12"), "{msg}");
    // a protective MBR without a GPT
    let mut d = gpt_disk(100, 128, 2);
    d[512] = b'X';
    let msg = read(&d).unwrap_err().to_string();
    assert!(
        msg.contains("no valid GPT") && msg.contains("signature"),
        "{msg}"
    );
    // the reference disk itself is fine and can grow
    let d = gpt_disk(100, 128, 2);
    let t = read(&d).unwrap();
    assert!(t.partitions().is_empty());
    assert!(t.edit().resize(200 * 512).unwrap().build().is_ok());
    assert!(matches!(
        t.edit().resize(200 * 512 + 1),
        Err(PartitionError::Length(..))
    ));
    assert!(matches!(
        t.edit().resize(99 * 512),
        Err(PartitionError::Length(..))
    ));
    assert!(matches!(
        t.edit().set_range(0, 1, 2),
        Err(PartitionError::UnknownPartition(0, 0))
    ));
    // hostile entry arrays: huge (with valid CRCs) or beyond the end
    for (count, lba, want) in [
        (u32::MAX, 2, "exceeds"),
        (128, 1000, "beyond the image"),
        (128, 1, "covers its header"),
    ] {
        let d = gpt_disk(100, count, lba);
        let msg = read(&d).unwrap_err().to_string();
        assert!(msg.contains(want), "{msg}");
    }
    // random bytes, and random damage to a real image's tables: never a panic
    let mut seed = 7;
    for n in 0..300 {
        let len = (lcg(&mut seed) % 70_000) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| lcg(&mut seed) as u8).collect();
        if n % 2 == 0 && d.len() >= 1024 {
            d[510] = 0x55;
            d[511] = 0xAA;
            d[512..520].copy_from_slice(b"EFI PART");
            for s in 0..4 {
                d[446 + 16 * s] = 0;
            }
        }
        if let Ok(t) = read(&d) {
            let _ = t
                .edit()
                .resize((len as u64 + 512).next_multiple_of(512))
                .map(|e| e.build());
        }
    }
    let img = xorriso_iso("talos-fuzz", TALOS);
    let base = std::fs::read(&img.iso).unwrap();
    let tables = 512..(64 * 512);
    let mut ok = 0;
    for _ in 0..300 {
        let mut d = base.clone();
        for _ in 0..1 + lcg(&mut seed) % 4 {
            let at = tables.start + (lcg(&mut seed) as usize) % tables.len();
            d[at] = lcg(&mut seed) as u8;
        }
        // recompute the primary CRCs now and then, so that damaged fields get past them
        if lcg(&mut seed).is_multiple_of(2) {
            let array = crc(&d[1024..1024 + 248 * 128]);
            d[512 + 88..512 + 92].copy_from_slice(&array.to_le_bytes());
            d[512 + 16..512 + 20].fill(0);
            let h = crc(&d[512..512 + 92]);
            d[512 + 16..512 + 20].copy_from_slice(&h.to_le_bytes());
        }
        if let Ok(t) = read(&d) {
            ok += 1;
            let mut e = t.edit();
            let _ = e.resize(d.len() as u64 + MIB);
            let _ = e.build();
            if !t.partitions().is_empty() {
                let _ = e.set_range(0, 64, u64::MAX / 1024);
                let _ = e.build();
            }
        }
    }
    assert!(ok > 0);
}

/// Beyond 2 TiB the protective entry saturates at 0xFFFFFFFF sectors and CHS 0xFFFFFF (UEFI);
/// nothing of the new length is allocated.
#[test]
fn protective_mbr_saturates_beyond_2_tib() {
    let d = gpt_disk(100, 128, 2);
    let t = PartitionTables::read(&d.as_slice(), d.len() as u64).unwrap();
    let new_len = 3u64 << 40;
    let c = t.edit().resize(new_len).unwrap().build().unwrap();
    let (at, e) = &c.replaced[0];
    assert_eq!(*at, 446);
    assert_eq!(
        &e[..16],
        &[
            0, 0, 0, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF
        ]
    );
    let (at, h) = c.tail.last().unwrap();
    assert_eq!(*at, new_len - 512);
    assert_eq!(&h[..8], b"EFI PART");
    assert_eq!(
        u64::from_le_bytes(h[24..32].try_into().unwrap()),
        new_len / 512 - 1
    );
}

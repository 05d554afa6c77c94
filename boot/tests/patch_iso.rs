//! Kernel-argument patching of ISOs built by xorriso and grub-mkrescue, checked with xorriso and isoinfo.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use beskar7_boot::{
    ConfigKind, PatchError, PatchedIso, ReadAt, SeekSource, append_kernel_args, patch_iso,
};
use common::*;

const GRUB_CFG: &str = "set timeout=3\n\
menuentry 'Live' {\n\
    linux /boot/vmlinuz root=live:CDLABEL=TEST quiet # live\n\
    initrd /boot/initrd\n\
}\n\
menuentry 'Install' --class os {\n\
\tlinuxefi /boot/vmlinuz install=1\n\
\tinitrdefi /boot/initrd\n\
}\n\
menuentry 'Legacy' {\n\
  linux16 /boot/vmlinuz\n\
}\n";

const EFI_STUB_CFG: &str = "search --no-floppy --file /boot/grub2/grub.cfg --set=root\nset prefix=($root)/boot/grub2\nconfigfile $prefix/grub.cfg\n";

const ISOLINUX_CFG: &str = "DEFAULT live\nTIMEOUT 30\nLABEL live\n  KERNEL /boot/vmlinuz\n  APPEND initrd=/boot/initrd quiet\nLABEL rescue\n  kernel /boot/vmlinuz\n  append initrd=/boot/initrd single\nLABEL local\n  LOCALBOOT 0\n";

fn args() -> Vec<String> {
    vec![
        "talos.config=https://artifacts.example:8082/0123456789abcdef0123456789abcdef/config"
            .to_string(),
        "console=ttyS0".to_string(),
    ]
}

/// Writes the common payload: kernel, initrd, a larger file and some files the patch must leave alone.
fn payload(dir: &Path) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("boot/vmlinuz"), vec![0x4bu8; 300_000]).unwrap();
    std::fs::write(
        dir.join("boot/initrd"),
        (0..1_000_000u32)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("docs/A Long Directory Name")).unwrap();
    std::fs::write(
        dir.join("docs/A Long Directory Name/readme with spaces.txt"),
        b"hello\n",
    )
    .unwrap();
    std::fs::write(dir.join("docs/grub.cfg.example"), b"linux /not/a/config\n").unwrap();
}

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn mkisofs(dir: &Path, out: &Path, extra: &[&str]) {
    let mut c = Command::new(tool("xorriso", "xorriso"));
    c.args(["-as", "mkisofs", "-quiet", "-V", "TEST"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(dir);
    run(&mut c);
}

fn copy_isolinux(dir: &Path) {
    let isolinux_bin = Path::new("/usr/lib/ISOLINUX/isolinux.bin");
    let ldlinux = Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32");
    assert!(
        isolinux_bin.is_file(),
        "{} missing: install the Debian package `isolinux`",
        isolinux_bin.display()
    );
    assert!(
        ldlinux.is_file(),
        "{} missing: install the Debian package `syslinux-common`",
        ldlinux.display()
    );
    std::fs::create_dir_all(dir.join("isolinux")).unwrap();
    std::fs::copy(isolinux_bin, dir.join("isolinux/isolinux.bin")).unwrap();
    std::fs::copy(ldlinux, dir.join("isolinux/ldlinux.c32")).unwrap();
}

struct Case {
    name: &'static str,
    iso: PathBuf,
    /// Config files with kernel lines (paths inside the ISO) and their syntax.
    configs: Vec<(&'static str, ConfigKind)>,
    _tmp: TempDir,
}

fn grub_only_xorriso() -> Case {
    let t = TempDir::new("grub");
    let d = t.join("root");
    payload(&d);
    write(&d, "boot/grub/grub.cfg", GRUB_CFG);
    let iso = t.join("grub.iso");
    mkisofs(&d, &iso, &["-R", "-J"]);
    Case {
        name: "grub /boot/grub (xorriso -R -J)",
        iso,
        configs: vec![("boot/grub/grub.cfg", ConfigKind::Grub)],
        _tmp: t,
    }
}

fn grub2_with_efi_stub() -> Case {
    let t = TempDir::new("grub2");
    let d = t.join("root");
    payload(&d);
    write(&d, "boot/grub2/grub.cfg", GRUB_CFG);
    write(&d, "EFI/BOOT/grub.cfg", EFI_STUB_CFG);
    let iso = t.join("grub2.iso");
    mkisofs(&d, &iso, &["-R", "-J"]);
    Case {
        name: "grub /boot/grub2 + EFI stub",
        iso,
        configs: vec![("boot/grub2/grub.cfg", ConfigKind::Grub)],
        _tmp: t,
    }
}

fn isolinux_boot() -> Case {
    let t = TempDir::new("isolinux");
    let d = t.join("root");
    payload(&d);
    copy_isolinux(&d);
    write(&d, "isolinux/isolinux.cfg", ISOLINUX_CFG);
    let iso = t.join("isolinux.iso");
    mkisofs(
        &d,
        &iso,
        &[
            "-R",
            "-J",
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ],
    );
    Case {
        name: "isolinux El Torito",
        iso,
        configs: vec![("isolinux/isolinux.cfg", ConfigKind::Isolinux)],
        _tmp: t,
    }
}

fn isolinux_and_grub2_plain_names() -> Case {
    // No Rock Ridge, no Joliet: names come from the primary tree only.
    let t = TempDir::new("plain");
    let d = t.join("root");
    payload(&d);
    copy_isolinux(&d);
    write(&d, "isolinux/isolinux.cfg", ISOLINUX_CFG);
    write(&d, "boot/grub2/grub.cfg", GRUB_CFG);
    let iso = t.join("plain.iso");
    mkisofs(
        &d,
        &iso,
        &[
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ],
    );
    Case {
        name: "isolinux + grub2, ISO 9660 names only",
        iso,
        configs: vec![
            ("boot/grub2/grub.cfg", ConfigKind::Grub),
            ("isolinux/isolinux.cfg", ConfigKind::Isolinux),
        ],
        _tmp: t,
    }
}

fn grub_mkrescue_with_isolinux_cfg() -> Case {
    let t = TempDir::new("mkrescue");
    let d = t.join("root");
    payload(&d);
    write(&d, "boot/grub/grub.cfg", GRUB_CFG);
    write(&d, "isolinux/isolinux.cfg", ISOLINUX_CFG);
    write(&d, "syslinux/syslinux.cfg", ISOLINUX_CFG);
    let iso = t.join("rescue.iso");
    let mut c = Command::new(tool(
        "grub-mkrescue",
        "grub-common (with grub-efi-amd64-bin, grub-pc-bin, mtools, xorriso)",
    ));
    c.arg("-o").arg(&iso).arg(&d);
    run(&mut c);
    // GRUB boots both firmware modes: the ISOLINUX configs are on no boot path and stay as
    // they are.
    Case {
        name: "grub-mkrescue (BIOS + UEFI) with unused isolinux and syslinux configs",
        iso,
        configs: vec![("boot/grub/grub.cfg", ConfigKind::Grub)],
        _tmp: t,
    }
}

fn all_cases() -> Vec<Case> {
    vec![
        grub_only_xorriso(),
        grub2_with_efi_stub(),
        isolinux_boot(),
        isolinux_and_grub2_plain_names(),
        grub_mkrescue_with_isolinux_cfg(),
    ]
}

/// Every kernel line of `text` carries every argument exactly once.
fn assert_kernel_lines_carry(
    case: &str,
    path: &str,
    kind: ConfigKind,
    text: &str,
    args: &[String],
) {
    let mut kernel_lines = 0;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let is_kernel = match kind {
            ConfigKind::Grub => matches!(first, "linux" | "linuxefi" | "linux16"),
            ConfigKind::Isolinux => first.eq_ignore_ascii_case("append"),
        };
        if !is_kernel {
            continue;
        }
        kernel_lines += 1;
        let words: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
        for a in args {
            assert_eq!(
                words.iter().filter(|w| **w == a.as_str()).count(),
                1,
                "{case}: {path}: line {line:?} lacks or repeats {a}"
            );
        }
    }
    assert!(
        kernel_lines >= 2,
        "{case}: {path}: only {kernel_lines} kernel lines in {text}"
    );
}

/// A source that records which byte ranges were read.
struct Counting<S> {
    inner: S,
    reads: Mutex<Vec<(u64, usize)>>,
}

impl<S: ReadAt> ReadAt for Counting<S> {
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.lock().unwrap().push((offset, buf.len()));
        self.inner.read_exact_at(offset, buf)
    }
}

#[test]
fn patched_isos_boot_configs_carry_args_and_other_files_are_identical() {
    let isoinfo = tool("isoinfo", "genisoimage");
    for case in all_cases() {
        let name = case.name;
        let t = TempDir::new("patched");
        let src = std::fs::File::open(&case.iso).unwrap();
        let patched = PatchedIso::open(src, &args()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (p, _) in &case.configs {
            let found = patched
                .patch()
                .configs()
                .iter()
                .find(|c| c.path == format!("/{p}"))
                .unwrap_or_else(|| {
                    panic!("{name}: {p} not found: {:?}", patched.patch().configs())
                });
            assert!(found.rewritten, "{name}: {p} not rewritten");
        }
        let out = t.join("patched.iso");
        let mut f = std::fs::File::create(&out).unwrap();
        patched.write_to(&mut f).unwrap();
        drop(f);
        let full = std::fs::read(&out).unwrap();
        assert_eq!(full.len() as u64, patched.len());
        assert_eq!(full.len() % 2048, 0, "{name}");

        // xorriso reads the patched image without complaint and extracts everything
        let a = t.join("orig");
        let b = t.join("new");
        xorriso_extract(&case.iso, &a);
        let o = run(Command::new(tool("xorriso", "xorriso"))
            .args(["-osirrox", "on", "-indev"])
            .arg(&out)
            .args(["-extract", "/"])
            .arg(&b));
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(
            !log.contains("FAILURE") && !log.contains("SORRY"),
            "{name}: {log}"
        );
        let ta = read_tree(&a);
        let tb = read_tree(&b);
        assert_eq!(
            ta.iter().map(|x| &x.0).collect::<Vec<_>>(),
            tb.iter().map(|x| &x.0).collect::<Vec<_>>(),
            "{name}: file lists differ"
        );
        for ((pa, da), (_, db)) in ta.iter().zip(&tb) {
            if let Some((_, kind)) = case.configs.iter().find(|(p, _)| p == pa) {
                assert_ne!(da, db, "{name}: {pa} unchanged");
                assert_eq!(
                    db,
                    &append_kernel_args(*kind, da, &args()).data,
                    "{name}: {pa}"
                );
                assert_kernel_lines_carry(name, pa, *kind, &String::from_utf8_lossy(db), &args());
                // the Joliet tree points at the new content too (when the image has one)
                let dinfo = stdout(Command::new(&isoinfo).args(["-d", "-i"]).arg(&out));
                if dinfo.contains("Joliet with UCS level") {
                    let j = run(Command::new(&isoinfo)
                        .args(["-J", "-i"])
                        .arg(&out)
                        .args(["-x", &format!("/{pa}")]))
                    .stdout;
                    assert_eq!(&j, db, "{name}: Joliet view of {pa}");
                }
            } else {
                assert_eq!(da, db, "{name}: {pa} changed");
            }
        }
        // the volume space size covers the new extents
        let info = stdout(Command::new(&isoinfo).args(["-d", "-i"]).arg(&out));
        let vs: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("Volume size is: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(vs * 2048, patched.len(), "{name}: volume size");

        // range reads equal slices of the written file (edges, descriptors, records, tail)
        let len = patched.len();
        let mut offsets: Vec<(u64, usize)> = vec![
            (0, 1),
            (0, 70_000),
            (16 * 2048, 4096),
            (len - 1, 1),
            (len - 5000, 5000),
            (len - 2048, 2048),
        ];
        let src_len = std::fs::metadata(&case.iso).unwrap().len();
        offsets.push((src_len - 100, 300.min((len - (src_len - 100)) as usize)));
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % len;
            let n = ((x >> 32) % 20_000) as usize + 1;
            offsets.push((off, n.min((len - off) as usize)));
        }
        for (off, n) in offsets {
            let mut buf = vec![0u8; n];
            let got = patched.read_at(off, &mut buf).unwrap();
            assert_eq!(got, n);
            assert_eq!(
                &buf[..],
                &full[off as usize..off as usize + n],
                "{name}: range {off}+{n}"
            );
        }
        let mut buf = [0u8; 10];
        assert_eq!(patched.read_at(len, &mut buf).unwrap(), 0);
        assert_eq!(patched.read_at(len - 3, &mut buf).unwrap(), 3);

        // idempotent: patching the patched image with the same args changes nothing
        let again = patch_iso(&full, &args()).unwrap();
        assert!(
            again.is_identity(),
            "{name}: second patch is not the identity"
        );
        assert!(again.configs().iter().all(|c| !c.rewritten));
        let mut twice = Vec::new();
        PatchedIso::new(full.as_slice(), std::sync::Arc::new(again))
            .write_to(&mut twice)
            .unwrap();
        assert_eq!(twice, full, "{name}: twice-patched image differs");
        // the patched view can itself be a source (no need to write it out)
        assert!(
            patch_iso(&patched, &args()).unwrap().is_identity(),
            "{name}"
        );
        // a Read + Seek source gives the same patch
        let seek = SeekSource::new(std::fs::File::open(&case.iso).unwrap());
        let p2 = PatchedIso::open(seek, &args()).unwrap();
        let mut v = Vec::new();
        p2.write_to(&mut v).unwrap();
        assert_eq!(v, full, "{name}: SeekSource");
    }
}

#[test]
fn patching_reads_only_descriptors_directories_and_configs() {
    let case = grub_mkrescue_with_isolinux_cfg();
    let src = Counting {
        inner: std::fs::File::open(&case.iso).unwrap(),
        reads: Mutex::new(Vec::new()),
    };
    let patch = patch_iso(&src, &args()).unwrap();
    let reads = src.reads.lock().unwrap();
    let total: usize = reads.iter().map(|r| r.1).sum();
    let len = std::fs::metadata(&case.iso).unwrap().len();
    eprintln!(
        "read {total} bytes in {} reads of a {len} byte ISO",
        reads.len()
    );
    assert!(total < 512 * 1024, "read {total} bytes of {len}");
    // none of the reads touched the initrd
    let iso_list = stdout(
        Command::new(tool("xorriso", "xorriso"))
            .args(["-indev"])
            .arg(&case.iso)
            .args(["-find", "/boot/initrd", "-exec", "report_lba"]),
    );
    let lba: u64 = iso_list
        .lines()
        .find(|l| l.contains("/boot/initrd"))
        .and_then(|l| l.split(',').nth(1))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no LBA for /boot/initrd: {iso_list}"));
    let (s, e) = (lba * 2048, lba * 2048 + 1_000_000);
    assert!(
        reads.iter().all(|(o, n)| o + *n as u64 <= s || *o >= e),
        "initrd was read"
    );
    assert!(patch.len() >= len);
}

#[test]
fn iso_without_bootloader_config_is_a_clear_error() {
    let t = TempDir::new("noboot");
    let d = t.join("root");
    payload(&d);
    let iso = t.join("x.iso");
    mkisofs(&d, &iso, &["-R", "-J"]);
    let err = patch_iso(&std::fs::File::open(&iso).unwrap(), &args()).unwrap_err();
    assert!(matches!(err, PatchError::NoBootloaderConfig), "{err}");
    assert!(
        err.to_string().contains("no bootloader configuration"),
        "{err}"
    );

    write(&d, "boot/grub/grub.cfg", EFI_STUB_CFG);
    mkisofs(&d, &iso, &["-R", "-J"]);
    let err = patch_iso(&std::fs::File::open(&iso).unwrap(), &args()).unwrap_err();
    assert!(
        matches!(err, PatchError::NoKernelLine { ref files, .. } if files.contains("/boot/grub/grub.cfg")),
        "{err}"
    );

    let err = patch_iso(&vec![0u8; 64 * 1024], &args()).unwrap_err();
    assert!(matches!(err, PatchError::NotIso(_)), "{err}");
    assert!(matches!(
        patch_iso(&vec![0u8; 64 * 1024], &[]).unwrap_err(),
        PatchError::NoArgs
    ));
}

#[test]
fn grub_mkrescue_efi_image_defers_to_the_iso_grub_cfg() {
    // The documented decision: the El Torito EFI image is not patched because grub-mkrescue's
    // EFI GRUB loads /boot/grub/grub.cfg from the ISO file system. Check the image holds no
    // grub.cfg of its own with kernel lines.
    let case = grub_mkrescue_with_isolinux_cfg();
    let t = TempDir::new("eltorito");
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-osirrox", "on", "-indev"])
        .arg(&case.iso)
        .args(["-extract_boot_images"])
        .arg(format!("{}/", t.path().display())));
    let efi = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains("uefi"))
        .expect("grub-mkrescue ISO has a UEFI El Torito image");
    let listing = stdout(
        Command::new(tool("mdir", "mtools"))
            .args(["-/", "-b", "-i"])
            .arg(&efi)
            .arg("::/")
            .env("MTOOLS_SKIP_CHECK", "1"),
    );
    assert!(
        listing
            .lines()
            .any(|l| l.to_ascii_lowercase().ends_with("bootx64.efi")),
        "{listing}"
    );
    assert!(
        !listing.to_ascii_lowercase().contains("grub.cfg"),
        "EFI image carries its own grub.cfg: {listing}"
    );
}

#[test]
fn grub_cfg_inside_the_el_torito_efi_image_is_patched_in_place() {
    let t = TempDir::new("efiimg");
    let d = t.join("root");
    payload(&d);
    write(&d, "boot/grub/grub.cfg", GRUB_CFG);
    // an EFI image (FAT12, 512-byte clusters) with its own grub.cfg, as some distributions ship
    let efi = d.join("efi.img");
    run(Command::new(tool("mkfs.vfat", "dosfstools"))
        .args(["-C", "-n", "EFIBOOT", "-S", "512", "-s", "1"])
        .arg(&efi)
        .arg("1440"));
    let mt = |args: &[&str]| {
        let mut c = Command::new(tool(args[0], "mtools"));
        c.args(["-i"])
            .arg(&efi)
            .args(&args[1..])
            .env("MTOOLS_SKIP_CHECK", "1");
        run(&mut c);
    };
    mt(&["mmd", "::/EFI", "::/EFI/BOOT", "::/big"]);
    let small = t.join("grub.cfg");
    std::fs::write(
        &small,
        "menuentry a {\n linuxefi /boot/vmlinuz quiet\n initrdefi /boot/initrd\n}\n",
    )
    .unwrap();
    mt(&["mcopy", small.to_str().unwrap(), "::/EFI/BOOT/grub.cfg"]);
    // exactly two clusters: the patched file needs a third one
    let mut full = "menuentry b {\n linux /boot/vmlinuz\n}\n".to_string();
    full.push_str(&"#".repeat(1023 - full.len()));
    full.push('\n');
    assert_eq!(full.len(), 1024);
    let big = t.join("big.cfg");
    std::fs::write(&big, &full).unwrap();
    mt(&["mcopy", big.to_str().unwrap(), "::/big/grub.cfg"]);
    let bootx = t.join("BOOTX64.EFI");
    std::fs::write(&bootx, vec![0x4du8; 3000]).unwrap();
    mt(&["mcopy", bootx.to_str().unwrap(), "::/EFI/BOOT/BOOTX64.EFI"]);
    let iso = t.join("efi.iso");
    mkisofs(&d, &iso, &["-R", "-J", "-e", "efi.img", "-no-emul-boot"]);

    let patched = PatchedIso::open(std::fs::File::open(&iso).unwrap(), &args()).unwrap();
    let cfgs = patched.patch().configs();
    let efi_cfg = cfgs
        .iter()
        .find(|c| c.path.ends_with("]/EFI/BOOT/grub.cfg"))
        .unwrap_or_else(|| panic!("{cfgs:?}"));
    assert!(efi_cfg.rewritten && efi_cfg.kernel_lines == 1);
    let big_cfg = cfgs
        .iter()
        .find(|c| c.path.ends_with("]/big/grub.cfg"))
        .unwrap();
    assert!(big_cfg.rewritten && big_cfg.kernel_lines == 1);
    assert!(
        patched.patch().warnings().is_empty(),
        "{:?}",
        patched.patch().warnings()
    );
    let out = t.join("patched.iso");
    let mut f = std::fs::File::create(&out).unwrap();
    patched.write_to(&mut f).unwrap();
    drop(f);

    let bi = t.join("bi");
    std::fs::create_dir(&bi).unwrap();
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-osirrox", "on", "-indev"])
        .arg(&out)
        .args(["-extract_boot_images"])
        .arg(format!("{}/", bi.display())));
    let img = std::fs::read_dir(&bi)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("uefi"))
        .expect("UEFI boot image");
    run(Command::new(tool("fsck.fat", "dosfstools"))
        .args(["-n"])
        .arg(&img));
    let got = run(Command::new(tool("mcopy", "mtools"))
        .args(["-n", "-i"])
        .arg(&img)
        .args(["::/EFI/BOOT/grub.cfg", "-"])
        .env("MTOOLS_SKIP_CHECK", "1"))
    .stdout;
    let want = append_kernel_args(ConfigKind::Grub, &std::fs::read(&small).unwrap(), &args()).data;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    assert_kernel_lines_carry_min("efi", &String::from_utf8_lossy(&got), &args());
    let got_big = run(Command::new(tool("mcopy", "mtools"))
        .args(["-n", "-i"])
        .arg(&img)
        .args(["::/big/grub.cfg", "-"])
        .env("MTOOLS_SKIP_CHECK", "1"))
    .stdout;
    assert_eq!(
        String::from_utf8_lossy(&got_big),
        String::from_utf8_lossy(
            &append_kernel_args(ConfigKind::Grub, full.as_bytes(), &args()).data
        )
    );
    let got_boot = run(Command::new(tool("mcopy", "mtools"))
        .args(["-n", "-i"])
        .arg(&img)
        .args(["::/EFI/BOOT/BOOTX64.EFI", "-"])
        .env("MTOOLS_SKIP_CHECK", "1"))
    .stdout;
    assert_eq!(got_boot, std::fs::read(&bootx).unwrap());
    // the ISO tree's grub.cfg is patched as well, and a second patch is the identity
    let a = t.join("x");
    xorriso_extract(&out, &a);
    assert_kernel_lines_carry(
        "efi",
        "boot/grub/grub.cfg",
        ConfigKind::Grub,
        &std::fs::read_to_string(a.join("boot/grub/grub.cfg")).unwrap(),
        &args(),
    );
    assert!(
        patch_iso(&std::fs::read(&out).unwrap(), &args())
            .unwrap()
            .is_identity()
    );
}

fn assert_kernel_lines_carry_min(case: &str, text: &str, args: &[String]) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("linux"))
        .collect();
    assert!(!lines.is_empty(), "{case}: no kernel line");
    for l in lines {
        for a in args {
            assert_eq!(
                l.split_whitespace().filter(|w| *w == a).count(),
                1,
                "{case}: {l}"
            );
        }
    }
}

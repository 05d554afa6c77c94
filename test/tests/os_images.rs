//! The OS image layouts of `beskar7_test::os_images`, patched by `beskar7_boot`, checked with
//! independent tools: xorriso (El Torito, system area, both ISO 9660 trees), sgdisk and sfdisk
//! (partition tables), fsck.fat and mtools (the EFI system partition), and a second patch of the
//! output (which must change nothing: every kernel line already carries the arguments).
//! Booting the same images in QEMU is `controllers/tests/boot_proof.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use beskar7_boot::{
    BootPath, Firmware as PatchFirmware, Loader, PatchError, PatchOptions, patch_iso_with,
};
use beskar7_test::vm::{BootKit, IsoLayout};

fn kit() -> BootKit {
    BootKit::get().expect("boot kit (make debs installs the tools it needs)")
}

fn out(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(cmd: &mut Command) -> String {
    let (success, stdout, stderr) = out(cmd);
    assert!(success, "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn args() -> Vec<String> {
    vec![
        "beskar7.test=https://artifacts.example:8082/0123456789abcdef/config".into(),
        "b7.marker=1".into(),
    ]
}

/// Patches `layout` into `dir/patched.iso`; returns the patch's boot paths and warnings.
fn patch(layout: IsoLayout, add_uefi: bool, dir: &Path) -> (PathBuf, beskar7_boot::IsoPatch) {
    let src = std::fs::File::open(kit().iso(layout)).unwrap();
    let p = patch_iso_with(
        &src,
        &PatchOptions {
            kernel_args: args(),
            add_uefi_path: add_uefi,
        },
    )
    .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
    let path = dir.join("patched.iso");
    let mut f = std::fs::File::create(&path).unwrap();
    p.write_to(&src, &mut f).unwrap();
    (path, p)
}

fn xorriso_report(iso: &Path) -> String {
    let (_, stdout, stderr) = out(Command::new("xorriso").args(["-indev"]).arg(iso).args([
        "-report_el_torito",
        "plain",
        "-report_system_area",
        "plain",
    ]));
    assert!(
        !stderr.contains("FAILURE") && !stderr.contains("SORRY"),
        "{}: {stderr}",
        iso.display()
    );
    stdout + &stderr
}

fn extract(iso: &Path, path: &str, to: &Path) -> Vec<u8> {
    let f = to.join(path.replace('/', "_"));
    ok(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", path])
        .arg(&f));
    std::fs::read(&f).unwrap()
}

/// `sgdisk -v` accepts the GPT (it exits 0 even for a bad backup CRC, so its words are read).
fn gpt_valid(iso: &Path) {
    let (_, stdout, stderr) = out(Command::new("sgdisk").arg("-v").arg(iso));
    assert!(
        stdout.contains("No problems found") && !stderr.to_lowercase().contains("warning"),
        "{}: sgdisk -v:\n{stdout}\n{stderr}",
        iso.display()
    );
}

/// Start (bytes) and size of partition `n` (1-based) as sfdisk reads it.
fn partition(iso: &Path, n: usize) -> (u64, u64) {
    let j: serde_json::Value =
        serde_json::from_str(&ok(Command::new("sfdisk").arg("-J").arg(iso))).unwrap();
    let p = &j["partitiontable"]["partitions"][n - 1];
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

fn slice(iso: &Path, off: u64, len: u64, to: &Path) -> PathBuf {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(iso).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v).unwrap();
    std::fs::write(to, v).unwrap();
    to.to_path_buf()
}

fn mtype(img: &Path, path: &str) -> String {
    ok(Command::new("mtype")
        .args(["-i"])
        .arg(img)
        .arg(format!("::{path}"))
        .env("MTOOLS_SKIP_CHECK", "1"))
}

fn fsck_fat(img: &Path) {
    let (success, stdout, stderr) = out(Command::new("fsck.fat").args(["-n", "-v"]).arg(img));
    assert!(
        success && !stdout.contains("Free cluster summary wrong"),
        "fsck.fat {}:\n{stdout}\n{stderr}",
        img.display()
    );
}

/// Every kernel line of the output already has the arguments: a second patch is the identity.
fn second_patch_is_identity(iso: &Path, add_uefi: bool) {
    let f = std::fs::File::open(iso).unwrap();
    let again = patch_iso_with(
        &f,
        &PatchOptions {
            kernel_args: args(),
            add_uefi_path: add_uefi,
        },
    )
    .unwrap();
    assert!(
        again.is_identity(),
        "{}: second patch changes {:?}",
        iso.display(),
        again.configs()
    );
}

fn path_of(paths: &[BootPath], fw: PatchFirmware) -> &BootPath {
    paths
        .iter()
        .find(|p| p.firmware == fw)
        .unwrap_or_else(|| panic!("no {fw:?} path: {paths:?}"))
}

fn assert_line_has_args(text: &str, line_start: &str) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(line_start))
        .collect();
    assert!(!lines.is_empty(), "no {line_start} line in\n{text}");
    for l in lines {
        for a in args() {
            assert_eq!(
                l.split_whitespace().filter(|w| *w == a).count(),
                1,
                "{l:?} lacks or repeats {a}"
            );
        }
    }
}

#[test]
fn fixtures_have_the_upstream_boot_layouts() {
    let k = kit();
    let report = |l| xorriso_report(&k.iso(l));
    // Talos: BIOS GRUB from the tree, UEFI from the appended GPT partition 2 (ESP type).
    let r = report(IsoLayout::TalosHybrid);
    assert!(
        r.contains("El Torito boot img :   1  BIOS")
            && r.contains("/boot/grub/i386-pc/eltorito.img"),
        "{r}"
    );
    assert!(r.contains("El Torito boot img :   2  UEFI"), "{r}");
    assert!(r.contains("Partition offset   : 16"), "{r}");
    assert!(
        r.contains("GPT type GUID      :   2  28732ac11ff8d211ba4b00a0c93ec93b"),
        "{r}"
    );
    // Secure Boot Talos: UEFI only.
    let r = report(IsoLayout::TalosSecureBoot);
    assert!(r.contains("UEFI") && !r.contains("BIOS  y"), "{r}");
    // Kairos and Leap Micro: GRUB El Torito for BIOS, appended EFI image for UEFI.
    for (l, bin) in [
        (IsoLayout::Kairos, "/boot/eltorito.img"),
        (IsoLayout::LeapMicro, "/boot/x86_64/loader/eltorito.img"),
    ] {
        let r = report(l);
        assert!(r.contains(bin) && r.contains("  UEFI  "), "{l:?}: {r}");
        assert!(r.contains("Partition offset   : 16"), "{l:?}: {r}");
    }
    // Flatcar: ISOLINUX only, isohybrid MBR (partition 1 type 0x17 from 0), no GPT.
    let r = report(IsoLayout::Flatcar);
    assert!(
        r.contains("/isolinux/isolinux.bin") && !r.contains("UEFI"),
        "{r}"
    );
    assert!(r.contains("MBR partition      :   1   0x80  0x17"), "{r}");
    assert!(!r.contains("GPT "), "{r}");
}

#[test]
fn talos_hybrid_gets_a_loader_entry_in_its_esp_and_grub_arguments() {
    let t = tempfile::tempdir().unwrap();
    let (iso, p) = patch(IsoLayout::TalosHybrid, false, t.path());
    let src_len = std::fs::metadata(kit().iso(IsoLayout::TalosHybrid))
        .unwrap()
        .len();
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    // The rewritten grub.cfg went into xorriso's padding inside partition 1: nothing grew.
    assert_eq!(p.len(), src_len);
    let bios = path_of(p.boot_paths(), PatchFirmware::Bios);
    let uefi = path_of(p.boot_paths(), PatchFirmware::Uefi);
    assert_eq!(
        (bios.loader, uefi.loader),
        (Loader::Grub, Loader::SystemdBoot)
    );
    xorriso_report(&iso);
    gpt_valid(&iso);
    // BIOS: grub.cfg of the whole-disk tree and of partition 1's own tree.
    let whole = String::from_utf8(extract(&iso, "/boot/grub/grub.cfg", t.path())).unwrap();
    assert_line_has_args(&whole, "linux ");
    let (p1_start, p1_size) = partition(&iso, 1);
    let p1 = slice(&iso, p1_start, p1_size, &t.path().join("p1.img"));
    let part = String::from_utf8(extract(&p1, "/boot/grub/grub.cfg", &t.path().join("."))).unwrap();
    assert_eq!(
        part, whole,
        "partition 1's tree names the rewritten grub.cfg"
    );
    // UEFI: the ESP (partition 2) has the entry, the default and the hidden UKI.
    let (p2_start, p2_size) = partition(&iso, 2);
    let esp = slice(&iso, p2_start, p2_size, &t.path().join("esp.img"));
    fsck_fat(&esp);
    let entry = mtype(&esp, "/loader/entries/beskar7.conf");
    let uki = format!(
        "/EFI/Linux/Talos-{}.efi",
        beskar7_test::os_images::TALOS_VERSION
    );
    assert!(entry.contains(&format!("efi {uki}.b7\n")), "{entry}");
    let options = entry.lines().find(|l| l.starts_with("options ")).unwrap();
    assert!(
        options.contains(beskar7_test::os_images::TALOS_CMDLINE_EXTRA),
        "the UKI's own arguments are repeated: {options}"
    );
    assert_line_has_args(&entry, "options ");
    let conf = mtype(&esp, "/loader/loader.conf");
    assert!(
        conf.contains("default beskar7.conf") && conf.contains("timeout 1"),
        "{conf}"
    );
    let listing = ok(Command::new("mdir")
        .args(["-b", "-i"])
        .arg(&esp)
        .arg("::/EFI/Linux")
        .env("MTOOLS_SKIP_CHECK", "1"));
    assert!(
        listing.contains(".efi.b7") && !listing.lines().any(|l| l.ends_with(".efi")),
        "{listing}"
    );
    // The UKI's bytes are untouched (a signature on it would stay valid).
    let src_esp = slice(
        &kit().iso(IsoLayout::TalosHybrid),
        p2_start,
        p2_size,
        &t.path().join("esp0.img"),
    );
    let a = ok(Command::new("mtype")
        .args(["-i"])
        .arg(&src_esp)
        .arg(format!("::{uki}"))
        .env("MTOOLS_SKIP_CHECK", "1"));
    let b = ok(Command::new("mtype")
        .args(["-i"])
        .arg(&esp)
        .arg(format!("::{uki}.b7"))
        .env("MTOOLS_SKIP_CHECK", "1"));
    assert!(a == b && a.len() > 1 << 20);
    second_patch_is_identity(&iso, false);
}

#[test]
fn secure_boot_talos_is_refused() {
    let src = std::fs::File::open(kit().iso(IsoLayout::TalosSecureBoot)).unwrap();
    let e = patch_iso_with(
        &src,
        &PatchOptions {
            kernel_args: args(),
            add_uefi_path: false,
        },
    )
    .unwrap_err();
    assert!(matches!(e, PatchError::SecureBootImage(_)), "{e}");
    assert!(e.to_string().contains("Image Factory"), "{e}");
}

#[test]
fn kairos_and_leap_micro_grub_paths_on_both_firmwares() {
    for (layout, cfg, kernel_word) in [
        (IsoLayout::Kairos, "/boot/grub2/grub.cfg", "linux "),
        (IsoLayout::LeapMicro, "/boot/grub2/grub.cfg", "$linux "),
    ] {
        let t = tempfile::tempdir().unwrap();
        let (iso, p) = patch(layout, false, t.path());
        assert!(p.warnings().is_empty(), "{layout:?}: {:?}", p.warnings());
        for fw in [PatchFirmware::Bios, PatchFirmware::Uefi] {
            let b = path_of(p.boot_paths(), fw);
            assert!(
                b.loader == Loader::Grub && b.kernel_lines >= 2,
                "{layout:?}: {b:?}"
            );
        }
        xorriso_report(&iso);
        gpt_valid(&iso);
        let text = String::from_utf8(extract(&iso, cfg, t.path())).unwrap();
        assert_line_has_args(&text, kernel_word);
        // The EFI chain stubs have no kernel line and stay as they are.
        if layout == IsoLayout::Kairos {
            let stub = String::from_utf8(extract(&iso, "/EFI/BOOT/grub.cfg", t.path())).unwrap();
            assert!(!stub.contains("b7.marker"), "{stub}");
        }
        let (p1_start, p1_size) = partition(&iso, 1);
        let p1 = slice(&iso, p1_start, p1_size, &t.path().join("p1.img"));
        assert_eq!(
            String::from_utf8(extract(&p1, cfg, &t.path().join("."))).unwrap(),
            text,
            "{layout:?}: partition 1's tree"
        );
        second_patch_is_identity(&iso, false);
    }
}

#[test]
fn flatcar_gets_its_syslinux_config_and_an_added_uefi_path() {
    let t = tempfile::tempdir().unwrap();
    let (iso, p) = patch(IsoLayout::Flatcar, true, t.path());
    assert_eq!(p.len() % (32 << 10), 0, "ends on a 32 KiB boundary");
    let bios = path_of(p.boot_paths(), PatchFirmware::Bios);
    assert_eq!(bios.loader, Loader::Isolinux);
    let uefi = path_of(p.boot_paths(), PatchFirmware::Uefi);
    assert!(uefi.added && uefi.loader == Loader::Beskar7, "{uefi:?}");
    let r = xorriso_report(&iso);
    assert!(r.contains("  UEFI  "), "{r}");
    // isolinux.cfg only INCLUDEs syslinux.cfg, which holds the kernel line.
    let isolinux = String::from_utf8(extract(&iso, "/isolinux/isolinux.cfg", t.path())).unwrap();
    assert_eq!(isolinux, "INCLUDE /syslinux/syslinux.cfg\n");
    let sys = String::from_utf8(extract(&iso, "/syslinux/syslinux.cfg", t.path())).unwrap();
    assert_line_has_args(&sys, "append ");
    // MBR: partition 1 (0x17) now covers the rewritten file, partition 2 is the ESP (0xEF).
    let j: serde_json::Value =
        serde_json::from_str(&ok(Command::new("sfdisk").arg("-J").arg(&iso))).unwrap();
    let parts = j["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{j}");
    assert_eq!(parts[0]["type"], "17");
    assert_eq!(parts[1]["type"], "ef");
    ok(Command::new("sfdisk").arg("-V").arg(&iso));
    let (s2, n2) = partition(&iso, 2);
    let esp = slice(&iso, s2, n2, &t.path().join("esp.img"));
    fsck_fat(&esp);
    let conf = mtype(&esp, "/EFI/beskar7/boot.conf");
    assert!(
        conf.contains("linux /flatcar/vmlinuz") && conf.contains("initrd /flatcar/cpio.gz"),
        "{conf}"
    );
    assert_line_has_args(&conf, "options ");
    assert!(
        conf.contains("flatcar.autologin"),
        "the label's own arguments: {conf}"
    );
    // The ESP's kernel is the ISO's kernel, byte for byte.
    let mut cp = Command::new("mcopy");
    cp.args(["-n", "-i"])
        .arg(&esp)
        .arg("::/flatcar/vmlinuz")
        .arg(t.path().join("k"))
        .env("MTOOLS_SKIP_CHECK", "1");
    ok(&mut cp);
    assert_eq!(
        std::fs::read(t.path().join("k")).unwrap(),
        std::fs::read(&kit().kernel).unwrap()
    );
    assert!(
        p.memory_bytes() < 256 << 10,
        "the added ESP references the ISO's files instead of holding them: {} bytes",
        p.memory_bytes()
    );
    second_patch_is_identity(&iso, true);
    // Without the UEFI path: only the ISOLINUX config changes.
    let t2 = tempfile::tempdir().unwrap();
    let (_, p2) = patch(IsoLayout::Flatcar, false, t2.path());
    assert_eq!(p2.boot_paths().len(), 1);
}

#[test]
fn debian_mini_includes_are_followed_and_crlf_kept() {
    let t = tempfile::tempdir().unwrap();
    let (iso, p) = patch(IsoLayout::DebianMini, false, t.path());
    let b = path_of(p.boot_paths(), PatchFirmware::Bios);
    assert!(b.loader == Loader::Isolinux && b.kernel_lines == 3, "{b:?}");
    for f in ["/txt.cfg", "/adtxt.cfg", "/rqtxt.cfg"] {
        let c = p
            .configs()
            .iter()
            .find(|c| c.path == f)
            .unwrap_or_else(|| panic!("{f}: {:?}", p.configs()));
        assert!(c.rewritten, "{f}");
        let text = String::from_utf8(extract(&iso, f, t.path())).unwrap();
        assert_line_has_args(&text, "append ");
    }
    let txt = extract(&iso, "/txt.cfg", t.path());
    let lines = txt.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(
        txt.windows(2).filter(|w| w == b"\r\n").count(),
        lines,
        "every line keeps its CRLF"
    );
    second_patch_is_identity(&iso, false);
}

#[test]
fn grub_mkrescue_grows_to_a_32k_boundary_with_padding() {
    let t = tempfile::tempdir().unwrap();
    let src_len = std::fs::metadata(kit().iso(IsoLayout::GrubMkrescue))
        .unwrap()
        .len();
    let (iso, p) = patch(IsoLayout::GrubMkrescue, false, t.path());
    assert!(
        p.len() >= src_len + (300 << 10) && p.len() % (32 << 10) == 0,
        "{} -> {}",
        src_len,
        p.len()
    );
    xorriso_report(&iso);
    gpt_valid(&iso);
    // The volume covers the new extent.
    let info = ok(Command::new("isoinfo").args(["-d", "-i"]).arg(&iso));
    let blocks: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Volume size is: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(blocks * 2048, p.len());
    let text = String::from_utf8(extract(&iso, "/boot/grub/grub.cfg", t.path())).unwrap();
    assert_line_has_args(&text, "linux ");
    second_patch_is_identity(&iso, false);
}

#[test]
fn a_boot_path_without_a_kernel_line_is_an_error() {
    // ISOLINUX whose only label starts a COM32 module: nothing carries the arguments.
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("isolinux")).unwrap();
    std::fs::copy(
        "/usr/lib/ISOLINUX/isolinux.bin",
        root.join("isolinux/isolinux.bin"),
    )
    .unwrap();
    std::fs::write(
        root.join("isolinux/isolinux.cfg"),
        "default menu\nlabel menu\n  kernel vesamenu.c32\n",
    )
    .unwrap();
    // A grub.cfg with a kernel line elsewhere does not count for the ISOLINUX path.
    std::fs::create_dir_all(root.join("boot/grub")).unwrap();
    std::fs::write(
        root.join("boot/grub/grub.cfg"),
        "menuentry x {\n linux /k\n}\n",
    )
    .unwrap();
    let iso = t.path().join("x.iso");
    ok(Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-o",
        ])
        .arg(&iso)
        .arg(&root));
    let e = patch_iso_with(
        &std::fs::File::open(&iso).unwrap(),
        &PatchOptions {
            kernel_args: args(),
            add_uefi_path: false,
        },
    )
    .unwrap_err();
    match &e {
        PatchError::NoKernelLine { path, files } => {
            assert!(
                path.contains("Isolinux") && files.contains("/isolinux/isolinux.cfg"),
                "{e}"
            );
        }
        other => panic!("{other}"),
    }
}

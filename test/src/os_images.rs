//! Test ISOs with the boot layouts the supported OSes really ship, built with the real tools
//! Debian packages (grub-mkrescue, grub-mkimage, xorriso, genisoimage, isohybrid, mkfs.vfat,
//! mtools, objcopy on systemd's stub, sbsign) around the test kernel and initrd.
//!
//! Each layout follows the facts in `boot/UPSTREAM.md` (the build code of each OS): file paths,
//! config idioms, bootloaders per firmware, how the EFI image is attached. Menu timeouts are
//! shortened so test boots do not wait; everything else keeps the upstream shape.
//!
//! | layout | BIOS | UEFI |
//! |---|---|---|
//! | [`IsoLayout::TalosHybrid`] | GRUB `/boot/grub/grub.cfg` | systemd-boot + UKI in the appended ESP |
//! | [`IsoLayout::TalosSecureBoot`] | none | signed systemd-boot + signed UKI, key enrolment |
//! | [`IsoLayout::Kairos`] | GRUB (`/boot/eltorito.img`, prefix `/boot/grub2`) | GRUB from the appended ESP, `EFI/BOOT/grub.cfg` chains to the ISO |
//! | [`IsoLayout::LeapMicro`] | GRUB (`boot/x86_64/loader/eltorito.img`) | GRUB with an embedded config chaining to the ISO; `$linux` variables |
//! | [`IsoLayout::Flatcar`] | ISOLINUX, `INCLUDE /syslinux/syslinux.cfg`, isohybrid | none |
//! | [`IsoLayout::DebianMini`] | ISOLINUX, configs at the root pulled in by `include` | none |
//! | [`IsoLayout::GrubMkrescue`] | GRUB | GRUB (`efi.img` in the tree), HFS+ and APM as grub-mkrescue makes them |

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::vm::{BASE_KERNEL_ARGS, Firmware};

/// Boot layout of a test ISO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IsoLayout {
    TalosHybrid,
    TalosSecureBoot,
    Kairos,
    LeapMicro,
    Flatcar,
    DebianMini,
    GrubMkrescue,
}

/// Talos's version in file names (`EFI/Linux/Talos-<version>.efi`).
pub const TALOS_VERSION: &str = "v1.10.0";
/// The Talos command line the fixtures carry (grub.cfg and the UKI's `.cmdline`).
pub const TALOS_CMDLINE_EXTRA: &str = "talos.platform=metal talos.halt_if_installed=1";
/// The Leap Micro SelfInstall id file (`/boot/0x<id>`) the GRUB configs search for.
const KIWI_MBRID: &str = "0xb7b7b7b7";

impl IsoLayout {
    pub const ALL: [IsoLayout; 7] = [
        Self::TalosHybrid,
        Self::TalosSecureBoot,
        Self::Kairos,
        Self::LeapMicro,
        Self::Flatcar,
        Self::DebianMini,
        Self::GrubMkrescue,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Self::TalosHybrid => "talos-metal-amd64.iso",
            Self::TalosSecureBoot => "talos-metal-amd64-secureboot.iso",
            Self::Kairos => "kairos.iso",
            Self::LeapMicro => "leap-micro-selfinstall.iso",
            Self::Flatcar => "flatcar_production_iso_image.iso",
            Self::DebianMini => "debian-mini.iso",
            Self::GrubMkrescue => "grub-mkrescue.iso",
        }
    }

    /// The firmware modes the image boots in.
    pub fn firmwares(self) -> &'static [Firmware] {
        match self {
            Self::TalosSecureBoot => &[Firmware::Uefi],
            Self::Flatcar | Self::DebianMini => &[Firmware::Legacy],
            _ => &[Firmware::Uefi, Firmware::Legacy],
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("run {what} (Debian packages: make debs)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) -> Result<()> {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap())?;
    std::fs::write(&p, data).with_context(|| format!("write {}", p.display()))
}

fn copy(from: &Path, root: &Path, rel: &str) -> Result<()> {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap())?;
    std::fs::copy(from, &p)
        .with_context(|| format!("copy {} to {}", from.display(), p.display()))?;
    Ok(())
}

/// A FAT image of `mib` MiB (or sized to `dir` plus `extra_mib`) holding the tree `dir`.
fn fat_image(out: &Path, dir: &Path, label: &str, fat32: bool, extra_mib: u64) -> Result<()> {
    let mut size = 0u64;
    for e in walk(dir)? {
        size += std::fs::metadata(&e)?.len().div_ceil(1 << 20) << 20;
    }
    let mut bytes = size + (extra_mib << 20);
    if fat32 {
        // FAT32 needs at least 65525 clusters, or readers (mtools, firmware) take it for FAT16.
        // Talos's UKI is ~100 MiB, so its efiboot.img is large enough; the test UKI is small.
        bytes = bytes.max(40 << 20);
    }
    let f = std::fs::File::create(out)?;
    f.set_len(bytes)?;
    drop(f);
    let mut mkfs = Command::new("mkfs.vfat");
    if fat32 {
        mkfs.args(["-F", "32"]);
    }
    run(
        mkfs.args(["-n", label, "--invariant"]).arg(out),
        "mkfs.vfat (dosfstools)",
    )?;
    let entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    for e in entries {
        run(
            Command::new("mcopy")
                .args(["-s", "-p", "-Q", "-m", "-i"])
                .arg(out)
                .arg(e.path())
                .arg("::")
                .env("MTOOLS_SKIP_CHECK", "1"),
            "mcopy (mtools)",
        )?;
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// A UKI as systemd's `ukify` lays one out: Debian's stub with `.osrel`, `.cmdline`, `.linux`,
/// `.initrd` sections (objcopy at section addresses after the stub's).
fn uki(kernel: &Path, initrd: &Path, cmdline: &str, work: &Path, out: &Path) -> Result<()> {
    let stub = Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    if !stub.is_file() {
        bail!(
            "{} missing (Debian package systemd-boot-efi: make debs)",
            stub.display()
        );
    }
    let osrel = work.join("os-release");
    std::fs::write(
        &osrel,
        format!(
            "NAME=\"Talos\"\nID=talos\nVERSION_ID={TALOS_VERSION}\nPRETTY_NAME=\"Talos ({TALOS_VERSION})\"\n"
        ),
    )?;
    let cmd = work.join("cmdline");
    std::fs::write(&cmd, cmdline)?;
    run(
        Command::new("objcopy")
            .arg(format!("--add-section=.osrel={}", osrel.display()))
            .arg("--change-section-vma=.osrel=0x20000")
            .arg(format!("--add-section=.cmdline={}", cmd.display()))
            .arg("--change-section-vma=.cmdline=0x30000")
            .arg(format!("--add-section=.linux={}", kernel.display()))
            .arg("--change-section-vma=.linux=0x2000000")
            .arg(format!("--add-section=.initrd={}", initrd.display()))
            .arg("--change-section-vma=.initrd=0x3000000")
            .arg(stub)
            .arg(out),
        "objcopy (binutils)",
    )
}

/// A self-signed key and certificate for sbsign.
fn signing_key(work: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let key = work.join("db.key");
    let crt = work.join("db.crt");
    run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            ])
            .args(["-subj", "/CN=beskar7 test db/"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt),
        "openssl",
    )?;
    Ok((key, crt))
}

fn sbsign(file: &Path, key: &Path, crt: &Path) -> Result<()> {
    let signed = file.with_extension("signed");
    run(
        Command::new("sbsign")
            .arg("--key")
            .arg(key)
            .arg("--cert")
            .arg(crt)
            .arg("--output")
            .arg(&signed)
            .arg(file),
        "sbsign (sbsigntool)",
    )?;
    std::fs::rename(&signed, file)?;
    Ok(())
}

fn talos_cmdline() -> String {
    format!("{TALOS_CMDLINE_EXTRA} {BASE_KERNEL_ARGS}")
}

/// Builds `layout` at `out` from the test kernel and initrd; `work` is scratch space.
pub fn build(
    layout: IsoLayout,
    kernel: &Path,
    initrd: &Path,
    work: &Path,
    out: &Path,
) -> Result<()> {
    let root = work.join(format!("root-{}", layout.file_name()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    match layout {
        IsoLayout::TalosHybrid => talos_hybrid(kernel, initrd, work, &root, out),
        IsoLayout::TalosSecureBoot => talos_secureboot(kernel, initrd, work, &root, out),
        IsoLayout::Kairos => kairos(kernel, initrd, work, &root, out),
        IsoLayout::LeapMicro => leap_micro(kernel, initrd, work, &root, out),
        IsoLayout::Flatcar => flatcar(kernel, initrd, &root, out),
        IsoLayout::DebianMini => debian_mini(kernel, initrd, &root, out),
        IsoLayout::GrubMkrescue => grub_mkrescue(kernel, initrd, &root, out),
    }
    .with_context(|| format!("building the {layout:?} test ISO"))
}

/// pkg/imager/iso/{grub.go,uefi.go,hybrid.go}: GRUB for BIOS, systemd-boot + UKI in the appended
/// ESP for UEFI, copies of EFI/ and loader/ in the ISO tree as well.
fn talos_hybrid(kernel: &Path, initrd: &Path, work: &Path, root: &Path, out: &Path) -> Result<()> {
    let cmdline = talos_cmdline();
    copy(kernel, root, "boot/vmlinuz")?;
    copy(initrd, root, "boot/initramfs.xz")?;
    write(
        root,
        "boot/grub/grub.cfg",
        format!(
            "set default=0\nset timeout=0\n\ninsmod all_video\n\nterminal_input console\nterminal_output console\n\n\
             menuentry \"Talos ISO\" {{\n\tset gfxmode=auto\n\tset gfxpayload=text\n\tlinux /boot/vmlinuz {cmdline}\n\tinitrd /boot/initramfs.xz\n}}\n\
             menuentry \"Reset Talos installation\" {{\n\tset gfxmode=auto\n\tset gfxpayload=text\n\tlinux /boot/vmlinuz {cmdline} talos.experimental.wipe=system\n\tinitrd /boot/initramfs.xz\n}}\n"
        ),
    )?;
    let esp = work.join("talos-esp");
    let _ = std::fs::remove_dir_all(&esp);
    copy(
        Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        &esp,
        "EFI/BOOT/BOOTX64.EFI",
    )
    .context("systemd-boot (Debian package systemd-boot-efi)")?;
    let uki_path = esp.join(format!("EFI/Linux/Talos-{TALOS_VERSION}.efi"));
    std::fs::create_dir_all(uki_path.parent().unwrap())?;
    uki(kernel, initrd, &cmdline, work, &uki_path)?;
    // Upstream: `timeout 10`; one second is enough for a test boot.
    write(
        &esp,
        "loader/loader.conf",
        "# systemd-boot configuration\n\ntimeout 1\n\nsecure-boot-enroll off\n",
    )?;
    // The ISO tree carries copies that UEFI boot never reads.
    for rel in ["EFI/BOOT/BOOTX64.EFI", "loader/loader.conf"] {
        copy(&esp.join(rel), root, rel)?;
    }
    let efiboot = work.join("efiboot.img");
    // Upstream: 10 MiB plus the files, FAT32, label EFI.
    fat_image(&efiboot, &esp, "EFI", true, 10)?;
    run(
        Command::new("grub-mkrescue")
            .args(["--compress=xz", "--directory=/usr/lib/grub/i386-pc"])
            .arg(format!("--output={}", out.display()))
            .args(["-m", "efiboot.img", "-iso-level", "3"])
            .arg(root)
            .args([
                "-eltorito-alt-boot",
                "-e",
                "--interval:appended_partition_2:all::",
            ])
            .args(["-append_partition", "2", "0xef"])
            .arg(&efiboot)
            .args(["-appended_part_as_gpt", "-partition_cyl_align", "all"])
            .args([
                "-partition_offset",
                "16",
                "-iso_mbr_part_type",
                "0x83",
                "-no-emul-boot",
            ])
            .args(["--", "-volid", "TALOS_V1_10_0"]),
        "grub-mkrescue (grub-pc-bin, xorriso, mtools)",
    )
}

/// CreateUEFI: UEFI only, everything signed, keys to enrol.
fn talos_secureboot(
    kernel: &Path,
    initrd: &Path,
    work: &Path,
    root: &Path,
    out: &Path,
) -> Result<()> {
    let (key, crt) = signing_key(work)?;
    let esp = work.join("talos-sb-esp");
    let _ = std::fs::remove_dir_all(&esp);
    copy(
        Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        &esp,
        "EFI/BOOT/BOOTX64.EFI",
    )?;
    sbsign(&esp.join("EFI/BOOT/BOOTX64.EFI"), &key, &crt)?;
    let uki_path = esp.join(format!("EFI/Linux/Talos-{TALOS_VERSION}.efi"));
    std::fs::create_dir_all(uki_path.parent().unwrap())?;
    uki(kernel, initrd, &talos_cmdline(), work, &uki_path)?;
    sbsign(&uki_path, &key, &crt)?;
    write(
        &esp,
        "loader/loader.conf",
        "# systemd-boot configuration\n\ntimeout 1\n\nsecure-boot-enroll if-safe\n",
    )?;
    for k in ["PK", "KEK", "db"] {
        write(&esp, &format!("loader/keys/auto/{k}.auth"), b"test key")?;
    }
    copy(&crt, &esp, "EFI/keys/uki-signing-cert.der")?;
    write(root, "loader/loader.conf", b"timeout 1\n")?;
    let efiboot = work.join("efiboot-sb.img");
    fat_image(&efiboot, &esp, "EFI", true, 10)?;
    run(
        Command::new("xorriso")
            .args([
                "-as",
                "mkisofs",
                "-e",
                "--interval:appended_partition_2:all::",
            ])
            .args(["-append_partition", "2", "0xef"])
            .arg(&efiboot)
            .args(["-partition_cyl_align", "all", "-partition_offset", "16"])
            .args([
                "-iso_mbr_part_type",
                "0x83",
                "-no-emul-boot",
                "-iso-level",
                "3",
            ])
            .args(["-V", "TALOS_V1_10_0", "-o"])
            .arg(out)
            .arg(root),
        "xorriso",
    )
}

/// grub-mkimage builds of GRUB for the Kairos and Leap Micro layouts.
fn grub_images(
    work: &Path,
    prefix: &str,
    efi_embedded: Option<&str>,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let mods = [
        "part_gpt",
        "part_msdos",
        "iso9660",
        "fat",
        "normal",
        "search",
        "search_fs_file",
        "search_label",
        "configfile",
        "linux",
        "echo",
        "test",
        "all_video",
        "gzio",
    ];
    let elt = work.join(format!("eltorito-{}.img", prefix.replace('/', "_")));
    let mut bios = Command::new("grub-mkimage");
    bios.args(["-O", "i386-pc-eltorito", "-p", prefix, "-o"])
        .arg(&elt)
        .args(mods)
        .arg("biosdisk");
    run(&mut bios, "grub-mkimage (grub-pc-bin)")?;
    let efi = work.join(format!("bootx64-{}.efi", prefix.replace('/', "_")));
    let mut c = Command::new("grub-mkimage");
    c.args(["-O", "x86_64-efi", "-o"]).arg(&efi);
    match efi_embedded {
        Some(cfg) => {
            let early = work.join("earlyboot.cfg");
            std::fs::write(&early, cfg)?;
            c.args(["-p", prefix, "-c"]).arg(early);
        }
        None => {
            c.args(["-p", "/EFI/BOOT"]);
        }
    }
    // `linuxefi`/`initrdefi`: the command the `$linux` idiom switches to under EFI.
    run(
        c.args(mods).arg("linuxefi"),
        "grub-mkimage (grub-efi-amd64-bin)",
    )?;
    Ok((elt, efi))
}

/// The xorriso native commands AuroraBoot and kiwi use: GRUB El Torito for BIOS with its hybrid
/// MBR, the EFI image appended as GPT partition 2, partition offset 16.
fn xorriso_grub_hybrid(
    root: &Path,
    out: &Path,
    volid: &str,
    bin_path: &str,
    cat: &str,
    efi_img: &Path,
) -> Result<()> {
    let ba = |v: &str| ["-boot_image".to_string(), "any".to_string(), v.to_string()];
    let mut c = Command::new("xorriso");
    c.args(["-report_about", "SORRY", "-as", "mkisofs"])
        .args(["-quiet", "-R", "-J", "-V", volid, "-o"])
        .arg(out)
        .arg(root)
        .arg("--");
    c.args(["-boot_image", "grub", &format!("bin_path={bin_path}")])
        .args([
            "-boot_image",
            "grub",
            "grub2_mbr=/usr/lib/grub/i386-pc/boot_hybrid.img",
        ])
        .args(["-boot_image", "grub", "grub2_boot_info=on"]);
    for v in [
        "partition_offset=16".to_string(),
        format!("cat_path={cat}"),
        "cat_hidden=on".into(),
        "boot_info_table=on".into(),
        "platform_id=0x00".into(),
        "emul_type=no_emulation".into(),
        "load_size=2048".into(),
    ] {
        c.args(ba(&v));
    }
    c.arg("-append_partition").arg("2").arg("0xef").arg(efi_img);
    for v in [
        "next",
        "platform_id=0xef",
        "emul_type=no_emulation",
        "efi_path=--interval:appended_partition_2:all::",
        "appended_part_as=gpt",
        "mbr_force_bootable=on",
    ] {
        c.args(ba(v));
    }
    run(&mut c, "xorriso")
}

/// AuroraBoot (current Kairos): `/boot/grub2/grub.cfg` with plain `linux` lines and a submenu
/// (its `hiddenentry` is a distribution patch Debian's GRUB lacks, left out);
/// the appended EFI image's `EFI/BOOT/grub.cfg` searches `/boot/kernel` and configfiles it.
fn kairos(kernel: &Path, initrd: &Path, work: &Path, root: &Path, out: &Path) -> Result<()> {
    copy(kernel, root, "boot/kernel")?;
    copy(initrd, root, "boot/initrd")?;
    write(root, "rootfs.squashfs", vec![0x5au8; 64 << 10])?;
    let opts = format!(
        "cdroot root=live:CDLABEL=COS_LIVE rd.live.dir=/ rd.live.squashimg=rootfs.squashfs net.ifnames=1 {BASE_KERNEL_ARGS} rd.cos.disable install-mode selinux=0 $thor_options rd.live.overlay.overlayfs"
    );
    write(
        root,
        "boot/grub2/grub.cfg",
        format!(
            "search --file --set=root /boot/kernel\nset default=0\nset timeout=0\nset timeout_style=menu\nset thor_options=\"\"\nexport thor_options\n\n\
             menuentry \"Kairos\" --id kairos {{\n  linux ($root)/boot/kernel {opts}\n  initrd ($root)/boot/initrd\n}}\n\n\
             menuentry \"Kairos (manual)\" --id kairos-manual {{\n  linux ($root)/boot/kernel {}\n  initrd ($root)/boot/initrd\n}}\n\n\
             submenu \"Kairos (boot to RAM)\" {{\n  menuentry \"Kairos (boot to RAM)\" {{\n    linux ($root)/boot/kernel {opts} kairos.ram\n    initrd ($root)/boot/initrd\n  }}\n}}\n",
            opts.replace(" install-mode", "")
        ),
    )?;
    let chain = "search --no-floppy --file --set=root /boot/kernel\nset prefix=($root)/boot/grub2\nconfigfile $prefix/grub.cfg\n";
    write(root, "EFI/BOOT/grub.cfg", chain)?;
    write(root, "boot/grub/grub.cfg", chain)?;
    let (elt, efi) = grub_images(work, "/boot/grub2", None)?;
    copy(&elt, root, "boot/eltorito.img")?;
    let esp = work.join("kairos-esp");
    let _ = std::fs::remove_dir_all(&esp);
    copy(&efi, &esp, "EFI/BOOT/bootx64.efi")?;
    write(&esp, "EFI/BOOT/grub.cfg", chain)?;
    let img = work.join("uefi.img");
    fat_image(&img, &esp, "EFI_LIVE", false, 1)?;
    xorriso_grub_hybrid(
        root,
        out,
        "COS_LIVE",
        "/boot/eltorito.img",
        "/boot/boot.catalog",
        &img,
    )
}

/// kiwi before 10.0.1 (Leap Micro SelfInstall): `$linux`/`$initrd` switched to `linuxefi` under
/// EFI and exported, the id file search, `loopback.cfg`, and an EFI GRUB whose embedded config
/// searches the id file and configfiles the ISO's config.
fn leap_micro(kernel: &Path, initrd: &Path, work: &Path, root: &Path, out: &Path) -> Result<()> {
    copy(kernel, root, "boot/x86_64/loader/linux")?;
    copy(initrd, root, "boot/x86_64/loader/initrd")?;
    write(
        root,
        &format!("boot/{KIWI_MBRID}"),
        format!("{KIWI_MBRID}\n"),
    )?;
    write(root, "boot/mbrid", format!("{KIWI_MBRID}\n"))?;
    write(
        root,
        "boot/grub2/grub.cfg",
        format!(
            "set btrfs_relative_path=\"y\"\nexport btrfs_relative_path\nsearch --file --set=root /boot/{KIWI_MBRID}\n\
             set default=1\nset timeout=0\n\
             set linux=linux\nset initrd=initrd\n\
             if [ \"${{grub_cpu}}\" = \"x86_64\" -o \"${{grub_cpu}}\" = \"i386\" ];then\n    if [ \"${{grub_platform}}\" = \"efi\" ]; then\n        set linux=linuxefi\n        set initrd=initrdefi\n    fi\nfi\nexport linux initrd\n\
             if [ -n \"${{iso_path}}\" ]; then\n    isoboot=\"iso-scan/filename=${{iso_path}}\"\nfi\n\
             menuentry \"Boot from Hard Disk\" --class os --unrestricted {{\n    exit\n}}\n\
             menuentry \"Install openSUSE Leap Micro\" --class os --unrestricted {{\n    set gfxpayload=keep\n    echo Loading kernel...\n    $linux ($root)/boot/x86_64/loader/linux cdinst=1 ${{extra_cmdline}} {BASE_KERNEL_ARGS} loglevel=0 root=install:CDLABEL=INSTALL\n    echo Loading initrd...\n    $initrd ($root)/boot/x86_64/loader/initrd\n}}\n\
             menuentry \"Failsafe -- Install openSUSE Leap Micro\" --class os --unrestricted {{\n    set gfxpayload=keep\n    $linux ($root)/boot/x86_64/loader/linux cdinst=1 ${{extra_cmdline}} {BASE_KERNEL_ARGS} ide=nodma apm=off noresume edd=off nomodeset 3 root=install:CDLABEL=INSTALL\n    $initrd ($root)/boot/x86_64/loader/initrd\n}}\n\
             if [ -f \"/.snapshots/grub-snapshot.cfg\" ]; then\n    source \"/.snapshots/grub-snapshot.cfg\"\nfi\n"
        ),
    )?;
    write(
        root,
        "boot/grub2/loopback.cfg",
        "source /boot/grub2/grub.cfg\n",
    )?;
    let early = format!(
        "search --file --set=root /boot/{KIWI_MBRID}\nset prefix=($root)/boot/grub2\nconfigfile ($root)/boot/grub2/grub.cfg\n"
    );
    let (elt, efi) = grub_images(work, "/boot/grub2", Some(&early))?;
    copy(&elt, root, "boot/x86_64/loader/eltorito.img")?;
    let esp = work.join("leap-esp");
    let _ = std::fs::remove_dir_all(&esp);
    copy(&efi, &esp, "EFI/BOOT/bootx64.efi")?;
    copy(&efi, root, "EFI/BOOT/bootx64.efi")?;
    let img = work.join("leap-efi.img");
    fat_image(&img, &esp, "BOOT", false, 1)?;
    xorriso_grub_hybrid(
        root,
        out,
        "INSTALL",
        "boot/x86_64/loader/eltorito.img",
        "boot/x86_64/boot.catalog",
        &img,
    )
}

/// flatcar/scripts `_write_iso_disk`: mkisofs with ISOLINUX, then isohybrid.
fn flatcar(kernel: &Path, initrd: &Path, root: &Path, out: &Path) -> Result<()> {
    copy(kernel, root, "flatcar/vmlinuz")?;
    copy(initrd, root, "flatcar/cpio.gz")?;
    copy(
        Path::new("/usr/lib/ISOLINUX/isolinux.bin"),
        root,
        "isolinux/isolinux.bin",
    )
    .context("isolinux.bin (Debian package isolinux)")?;
    copy(
        Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        root,
        "isolinux/ldlinux.c32",
    )
    .context("ldlinux.c32 (Debian package syslinux-common)")?;
    write(
        root,
        "isolinux/isolinux.cfg",
        "INCLUDE /syslinux/syslinux.cfg\n",
    )?;
    // Upstream: `timeout 15` (1.5 s) and no console argument; the test kernel needs the serial one.
    write(
        root,
        "syslinux/syslinux.cfg",
        format!(
            "default flatcar\nprompt 1\ntimeout 1\n\nlabel flatcar\n  menu default\n  kernel /flatcar/vmlinuz\n  append initrd=/flatcar/cpio.gz flatcar.autologin {BASE_KERNEL_ARGS}\n"
        ),
    )?;
    run(
        Command::new("genisoimage")
            .args(["-quiet", "-l", "-r", "-J", "-o"])
            .arg(out)
            .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
            .arg(root),
        "genisoimage",
    )?;
    run(
        Command::new("isohybrid").arg(out),
        "isohybrid (syslinux-utils)",
    )
}

/// debian-installer's mini.iso: isolinux.bin and its configs at the root, `include` chains,
/// CRLF line endings in one of them, `---` on the kernel line.
fn debian_mini(kernel: &Path, initrd: &Path, root: &Path, out: &Path) -> Result<()> {
    copy(kernel, root, "linux")?;
    copy(initrd, root, "initrd.gz")?;
    copy(
        Path::new("/usr/lib/ISOLINUX/isolinux.bin"),
        root,
        "isolinux.bin",
    )?;
    copy(
        Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        root,
        "ldlinux.c32",
    )?;
    write(
        root,
        "isolinux.cfg",
        "# D-I config version 2.0\n# search path for the c32 support libraries (libcom32, libutil etc.)\npath \ninclude menu.cfg\ndefault install\nprompt 0\ntimeout 0\n",
    )?;
    write(
        root,
        "menu.cfg",
        "menu hshift 7\nmenu width 61\n\nmenu title Debian GNU/Linux installer menu (BIOS mode)\ninclude stdmenu.cfg\ninclude txt.cfg\nmenu begin advanced\n    menu label ^Advanced options\n\tmenu title Advanced options\n\tinclude stdmenu.cfg\n\tlabel mainmenu\n\t\tmenu label ^Back..\n\t\tmenu exit\n\tinclude adtxt.cfg\nmenu end\n",
    )?;
    write(
        root,
        "stdmenu.cfg",
        "menu color title\t* #FFFFFFFF *\nmenu tabmsg Press ENTER to boot or TAB to edit a menu entry\n",
    )?;
    write(
        root,
        "txt.cfg",
        format!(
            "default install\r\nlabel install\r\n\tmenu label ^Install\r\n\tkernel linux\r\n\tappend vga=788 initrd=initrd.gz {BASE_KERNEL_ARGS} --- quiet \r\n"
        ),
    )?;
    write(
        root,
        "adtxt.cfg",
        format!(
            "label expert\n\tmenu label E^xpert install\n\tkernel linux\n\tappend priority=low vga=788 initrd=initrd.gz {BASE_KERNEL_ARGS} --- \ninclude rqtxt.cfg\n"
        ),
    )?;
    write(
        root,
        "rqtxt.cfg",
        format!(
            "label rescue\n\tmenu label ^Rescue mode\n\tkernel linux\n\tappend vga=788 initrd=initrd.gz rescue/enable=true {BASE_KERNEL_ARGS} --- quiet \n"
        ),
    )?;
    run(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-r", "-J", "-V", "ISOIMAGE"])
            .args(["-b", "isolinux.bin", "-c", "boot.cat"])
            .args([
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "-o",
            ])
            .arg(out)
            .arg(root),
        "xorriso",
    )
}

/// Plain grub-mkrescue (GRUB for BIOS and UEFI, efi.img in the tree, HFS+ and APM): no zero
/// padding inside a partition of its own, so a patch has to grow it.
fn grub_mkrescue(kernel: &Path, initrd: &Path, root: &Path, out: &Path) -> Result<()> {
    copy(kernel, root, "boot/vmlinuz")?;
    copy(initrd, root, "boot/initrd")?;
    write(
        root,
        "boot/grub/grub.cfg",
        format!(
            "set timeout=0\nset default=0\nmenuentry 'grub-mkrescue test OS' {{\n  linux /boot/vmlinuz {BASE_KERNEL_ARGS}\n  initrd /boot/initrd\n}}\n"
        ),
    )?;
    run(
        Command::new("grub-mkrescue")
            .arg("-o")
            .arg(out)
            .arg(root)
            .args(["--", "-volid", "B7_GRUB_MKRESCUE"]),
        "grub-mkrescue (grub-efi-amd64-bin, grub-pc-bin, xorriso, mtools)",
    )
}

//! Boots our UEFI loader in QEMU with real firmware (OVMF): a FAT EFI system partition holding the
//! loader, its boot entry, a Debian kernel and a busybox initrd whose /init prints the kernel
//! command line and powers off. Booted as a USB stick and as the El Torito EFI image of a CD.
//!
//! Needs the Debian packages qemu-system-x86, ovmf, linux-image-amd64, busybox-static, dosfstools,
//! mtools and xorriso (hack/ensure-debs.sh). TCG, no KVM: each boot takes 15-30 s on two cores.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use beskar7_boot::efi_loader::{CONFIG_PATH, LOADER_PATH, LOADER_X64, LoaderEntry};
use common::{TempDir, run, tool};

const OPTIONS: &str = "console=ttyS0 loglevel=3 panic=-1 flatcar.first_boot=1 \
                       ignition.config.url=http://10.0.0.1/t/config";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// One VM at a time: TCG on two shared cores would otherwise push boots past the timeout.
static QEMU: Mutex<()> = Mutex::new(());

const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo B7:CMDLINE-BEGIN
/bin/busybox cat /proc/cmdline
echo B7:CMDLINE-END
[ -f /second ] && /bin/busybox cat /second
/bin/busybox poweroff -f
";

#[test]
fn boots_the_kernel_with_its_options_and_initrd_from_a_usb_stick() {
    let dir = TempDir::new("efi-usb");
    let entry = LoaderEntry {
        linux: "/flatcar/vmlinuz".into(),
        initrds: vec!["/flatcar/cpio.gz".into()],
        options: OPTIONS.into(),
    };
    let esp = esp(&dir, &entry.render().unwrap(), &[]);
    let log = boot(&dir, &usb(&esp), Until::PowerOff);

    assert!(
        log.contains(r"beskar7-loader: starting \flatcar\vmlinuz"),
        "{log}"
    );
    let cmdline = cmdline(&log);
    for option in OPTIONS.split(' ').chain([r"initrd=\flatcar\cpio.gz"]) {
        assert!(
            cmdline.split(' ').any(|a| a == option),
            "{option} missing in {cmdline:?}"
        );
    }
    for line in log.lines().filter(|l| l.contains("beskar7-loader")) {
        assert!(
            !line.contains("ignition"),
            "the loader printed the options: {line}"
        );
    }
}

/// An entry as a person might edit it (CRLF, comments, tabs, two `options` lines, `\` paths, an
/// unknown key, two initrds), on a CD: OVMF exposes the El Torito EFI image as its own volume.
/// The uncompressed initrd comes first: the EFI stub concatenates initrds without padding, and the
/// kernel only takes an uncompressed cpio that starts 4-byte aligned.
#[test]
fn boots_from_the_el_torito_efi_image_of_a_cd() {
    let dir = TempDir::new("efi-cd");
    let conf = "# edited by hand\r\n\
                title\tFlatcar\r\n\
                linux\t\\flatcar\\vmlinuz\r\n\
                \r\n\
                options  console=ttyS0 loglevel=3 panic=-1   \r\n\
                initrd \\flatcar/second.cpio\r\n\
                \t# indented comment\r\n\
                initrd /flatcar/cpio.gz\r\n\
                options flatcar.first_boot=1 ignition.config.url=http://10.0.0.1/t/config";
    let second = newc(&[Entry::File("second", 0o644, b"B7:SECOND-INITRD\n")]);
    let esp = esp(&dir, conf.as_bytes(), &[("flatcar/second.cpio", &second)]);
    let root = dir.join("cd");
    fs::create_dir(&root).unwrap();
    fs::copy(&esp, root.join("efi.img")).unwrap();
    let iso = dir.join("cd.iso");
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-as", "mkisofs", "-quiet", "-V", "B7EFITEST"])
        .args(["-e", "efi.img", "-no-emul-boot", "-o"])
        .arg(&iso)
        .arg(&root));
    let mut cd = "file=".to_string();
    cd.push_str(iso.to_str().unwrap());
    cd.push_str(",media=cdrom,if=none,id=cd0,format=raw");
    let args = vec![
        "-drive".into(),
        cd,
        "-device".into(),
        "ide-cd,drive=cd0,bus=ide.0,bootindex=0".into(),
    ];
    let log = boot(&dir, &args, Until::PowerOff);

    assert!(
        log.contains(r"beskar7-loader: starting \flatcar\vmlinuz"),
        "{log}"
    );
    let cmdline = cmdline(&log);
    let expected = format!(r"{OPTIONS} initrd=\flatcar\second.cpio initrd=\flatcar\cpio.gz");
    assert!(cmdline.contains(&expected), "{cmdline:?}");
    assert!(
        log.contains("B7:SECOND-INITRD"),
        "second initrd not loaded: {log}"
    );
}

#[test]
fn reports_a_missing_kernel_and_returns_to_the_firmware() {
    let dir = TempDir::new("efi-missing");
    let conf = b"linux /flatcar/missing\ninitrd /flatcar/cpio.gz\noptions console=ttyS0\n";
    let esp = esp(&dir, conf, &[]);
    let line = r"beskar7-loader: cannot load \flatcar\missing: 0x800000000000000E";
    // After its 5 s pause the loader returns the error and OVMF reports it and moves on.
    let log = boot(&dir, &usb(&esp), Until::Printed("BdsDxe: failed to start"));
    let failed_at = log.find(line).unwrap_or_else(|| panic!("{log}"));
    let firmware_reacted = log.find("BdsDxe: failed to start").unwrap();
    assert!(failed_at < firmware_reacted, "{log}");
    assert!(!log.contains("B7:CMDLINE"), "{log}");
}

fn usb(img: &Path) -> Vec<String> {
    vec![
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-drive".into(),
        format!("if=none,id=u0,format=raw,file={}", img.display()),
        "-device".into(),
        "usb-storage,bus=xhci.0,drive=u0,bootindex=0".into(),
    ]
}

/// The FAT EFI system partition: the loader, its entry, the kernel, the busybox initrd and `extra`.
fn esp(dir: &TempDir, conf: &[u8], extra: &[(&str, &[u8])]) -> PathBuf {
    let kernel = debian_kernel();
    let busybox = fs::read(tool("busybox", "busybox-static")).unwrap();
    let cpio = newc(&[
        Entry::Dir("bin"),
        Entry::Dir("dev"),
        Entry::Dir("proc"),
        Entry::CharDev("dev/console", 5, 1),
        Entry::File("bin/busybox", 0o755, &busybox),
        Entry::File("init", 0o755, INIT.as_bytes()),
    ]);
    fs::write(dir.join("cpio"), &cpio).unwrap();
    run(Command::new(tool("gzip", "gzip"))
        .args(["-n", "-f"])
        .arg(dir.join("cpio")));

    let mut files: Vec<(String, PathBuf)> = vec![
        (LOADER_PATH.into(), write(dir, "loader.efi", LOADER_X64)),
        (CONFIG_PATH.into(), write(dir, "boot.conf", conf)),
        ("flatcar/vmlinuz".into(), kernel),
        ("flatcar/cpio.gz".into(), dir.join("cpio.gz")),
    ];
    for (i, (path, bytes)) in extra.iter().enumerate() {
        files.push((path.to_string(), write(dir, &format!("extra{i}"), bytes)));
    }
    let bytes: u64 = files
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .sum();
    let img = dir.join("esp.img");
    run(Command::new(tool("mkfs.vfat", "dosfstools"))
        .args(["-C", "-n", "B7EFI"])
        .arg(&img)
        .arg((bytes / 1024 + 2048).to_string()));
    for d in ["EFI", "EFI/BOOT", "EFI/beskar7", "flatcar"] {
        run(mtools("mmd", &img).arg(format!("::/{d}")));
    }
    for (path, src) in &files {
        run(mtools("mcopy", &img).arg(src).arg(format!("::/{path}")));
    }
    img
}

fn mtools(name: &str, img: &Path) -> Command {
    let mut cmd = Command::new(tool(name, "mtools"));
    cmd.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(img);
    cmd
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn debian_kernel() -> PathBuf {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    kernels.retain(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("vmlinuz-")
    });
    kernels.sort();
    kernels
        .pop()
        .expect("no /boot/vmlinuz-*: install the Debian package `linux-image-amd64`")
}

enum Entry<'a> {
    Dir(&'a str),
    CharDev(&'a str, u32, u32),
    File(&'a str, u32, &'a [u8]),
}

/// A newc cpio archive (the initramfs format), written here so that device nodes need no root.
fn newc(entries: &[Entry]) -> Vec<u8> {
    fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    fn record(out: &mut Vec<u8>, ino: usize, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            ino as u32,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(out);
        out.extend_from_slice(data);
        pad(out);
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match *e {
            Entry::Dir(name) => record(&mut out, i + 1, name, 0o040755, (0, 0), &[]),
            Entry::CharDev(name, major, minor) => {
                record(&mut out, i + 1, name, 0o020600, (major, minor), &[])
            }
            Entry::File(name, perm, data) => {
                record(&mut out, i + 1, name, 0o100000 | perm, (0, 0), data)
            }
        }
    }
    record(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

enum Until<'a> {
    /// The guest powers itself off (the initrd's /init does).
    PowerOff,
    /// The serial log shows this text (OVMF then tries its next boot option, forever).
    Printed(&'a str),
}

/// Boots OVMF with `media` in QEMU (TCG) and returns the serial log.
fn boot(dir: &TempDir, media: &[String], until: Until) -> String {
    let _one_at_a_time = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        Path::new(OVMF_CODE).is_file(),
        "{OVMF_CODE} missing: install the Debian package `ovmf`"
    );
    let vars = dir.join("OVMF_VARS.fd");
    fs::copy(OVMF_VARS, &vars).unwrap();
    let log_path = dir.join("serial.log");
    let mut child = Command::new(tool("qemu-system-x86_64", "qemu-system-x86"))
        .args(["-machine", "q35,accel=tcg", "-m", "1024", "-nic", "none"])
        .args([
            "-nographic",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log_path.display()))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .args(media)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let started = Instant::now();
    let read_log =
        || String::from_utf8_lossy(&fs::read(&log_path).unwrap_or_default()).into_owned();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let log = read_log();
            let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default();
            assert!(status.success(), "qemu failed ({status}): {stderr}\n{log}");
            assert!(
                matches!(until, Until::PowerOff),
                "the VM stopped before printing the expected line:\n{log}"
            );
            eprintln!("booted and powered off in {:.1?}", started.elapsed());
            return log;
        }
        if let Until::Printed(text) = until
            && read_log().contains(text)
        {
            eprintln!("{text:?} printed after {:.1?}", started.elapsed());
            // Let the rest of the line and the firmware's reaction reach the log.
            std::thread::sleep(Duration::from_secs(1));
            let _ = child.kill();
            let _ = child.wait();
            return read_log();
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no result within {BOOT_TIMEOUT:?}; serial log:\n{}",
                read_log()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The command line /init printed between its markers.
fn cmdline(log: &str) -> String {
    let start = log
        .find("B7:CMDLINE-BEGIN")
        .unwrap_or_else(|| panic!("/init did not run:\n{log}"));
    let rest = &log[start + "B7:CMDLINE-BEGIN".len()..];
    let end = rest.find("B7:CMDLINE-END").expect("end marker");
    rest[..end].trim().to_string()
}

//! Booting media in a real virtual machine: test boot ISOs shaped like the real OS ISOs, built
//! from Debian packages, and a `qemu-system-x86_64` runner that returns what the guest printed
//! on its serial console.
//!
//! - The guest is Debian's kernel (`linux-image-amd64`, `/boot/vmlinuz-*`) with a tiny busybox
//!   (`busybox-static`) initrd. Its `/init` loads the storage modules with busybox `insmod`
//!   (Debian builds SCSI, ATA, CD-ROM, ISO 9660, FAT and USB storage as modules), prints
//!   `/proc/cmdline` between markers, finds the config volume by the labels the OSes use
//!   (`cidata`, `metal-iso`, `combustion`, `ignition`, any case), reading the ISO 9660 volume
//!   descriptor or FAT boot sector of each CD and disk with `dd` (busybox `findfs` found the
//!   label of a 370 KiB xorriso ISO but not of the provider's 56 KiB config ISO, whose
//!   descriptors `blkid` reads fine; busybox's prober reads a 68 KiB buffer first), mounts it
//!   read-only and prints its files between markers, then powers off (`poweroff -f`).
//!   [`BootOutput`] parses those markers.
//! - How many config volumes to wait for is passed through QEMU's fw_cfg
//!   (`opt/beskar7/volumes`, read from `/sys/firmware/qemu_fw_cfg` in the guest), so a boot
//!   without a config volume does not wait for one, and a USB stick that enumerates late is
//!   still found.
//! - [`IsoLayout`] ([`crate::os_images`]) gives the boot layouts of the supported OSes' own ISOs
//!   (Talos's hybrid with systemd-boot, Kairos, Leap Micro SelfInstall, Flatcar) and of two more
//!   (Debian's mini.iso, plain grub-mkrescue), built with the real tools around this kernel and
//!   initrd. [`VmSpec::boot_device`] boots one as a CD (El Torito) or as a USB disk (its GPT/MBR).
//! - Kernel, initrd and ISOs are cached under `~/.cache/beskar7/boot-proof/<key>/`
//!   (`$BESKAR7_BOOT_PROOF_CACHE` overrides the base), keyed by the kernel, busybox, the init
//!   script and the layouts, built once under a file lock.
//! - [`boot`] runs `qemu-system-x86_64 -machine q35 -m 1024`: OVMF (`OVMF_CODE_4M.fd` read-only
//!   plus a writable copy of `OVMF_VARS_4M.fd`) for UEFI, SeaBIOS (no pflash) for Legacy; the
//!   boot CD on `ide.0` (boot index 0), further CDs on `ide.1`..., USB sticks on a `qemu-xhci`
//!   controller. KVM is used when `/dev/kvm` opens and really runs a guest: on nested or
//!   restricted hosts (this project's machines) `/dev/kvm` opens but QEMU stops in the firmware
//!   with "KVM internal error ... emulation failure"; the runner sees that (or any failure of
//!   the first KVM boot), boots again with TCG and stays with TCG for the process.
//!   `BESKAR7_QEMU_ACCEL=tcg|kvm` forces one. A hard timeout
//!   fails with the serial log's tail. Boots are serialised within a process so their times
//!   are comparable and two TCG guests do not starve a small machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use crate::os_images::IsoLayout;

/// Bumped when the way artifacts are built changes, so old caches are not reused.
const CACHE_VERSION: &str = "boot-proof-v3";

/// Labels of the config volumes the supported OSes read (`boot::OsFamily::volume_label`, and
/// `ignition` which Leap Micro also reads). The guest looks for each, lower and upper case.
pub const VOLUME_LABELS: [&str; 4] = ["cidata", "metal-iso", "combustion", "ignition"];

/// Kernel arguments every test ISO carries (the OS's own arguments, before any the provider
/// appends): serial console, quiet kernel, and an immediate reboot (so QEMU `-no-reboot`
/// exits) if the init fails.
pub const BASE_KERNEL_ARGS: &str = "console=ttyS0 loglevel=3 panic=-1";

/// Modules the init loads; their dependencies come from `modules.dep`, loaded first.
/// `nls_ascii`: Debian's FAT default iocharset is `ascii`; without it a vfat mount fails with
/// EINVAL.
const WANTED_MODULES: [&str; 12] = [
    "ahci",
    "sr_mod",
    "sd_mod",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_utf8",
    "nls_ascii",
    "xhci_pci",
    "usb_storage",
    "qemu_fw_cfg",
    "nls_iso8859_1",
];

const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# beskar7 boot-proof init: report the kernel command line and the config volume, then power off.
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "B7:CMDLINE-BEGIN"
cat /proc/cmdline
echo "B7:CMDLINE-END"
for m in $(cat /lib/modules/order); do
  a=""
  [ "$m" = usb-storage ] && a="delay_use=0"
  insmod "/lib/modules/$m.ko" $a 2>/dev/null || echo "B7:INSMOD-FAILED $m"
done
want=0
f=/sys/firmware/qemu_fw_cfg/by_name/opt/beskar7/volumes/raw
[ -r $f ] && want=$(cat $f)
echo "B7:EXPECT-VOLUMES $want"
# The label of an ISO 9660 (primary volume descriptor) or FAT (boot sector) volume, read
# directly (busybox findfs missed the label of a 56 KiB config ISO that blkid reads).
label_of() {
  if [ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ]; then
    echo "iso9660 $(dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000')"
  elif [ "$(dd if="$1" bs=1 skip=82 count=5 2>/dev/null)" = FAT32 ]; then
    echo "vfat $(dd if="$1" bs=1 skip=71 count=11 2>/dev/null | tr -d ' \000')"
  elif [ "$(dd if="$1" bs=1 skip=54 count=3 2>/dev/null)" = FAT ]; then
    echo "vfat $(dd if="$1" bs=1 skip=43 count=11 2>/dev/null | tr -d ' \000')"
  fi
}
is_config_label() {
  l=$(echo "$1" | tr A-Z a-z)
  for k in @LABELS@; do [ "$l" = "$k" ] && return 0; done
  return 1
}
scan() {
  for b in /sys/class/block/sr* /sys/class/block/sd*; do
    [ -e "$b" ] || continue
    n=${b##*/}
    [ -e "$b/partition" ] && continue
    set -- $(label_of "/dev/$n")
    [ -n "$2" ] && is_config_label "$2" && echo "/dev/$n $1 $2"
  done
}
deadline=$(( $(cut -d. -f1 /proc/uptime) + 30 ))
while :; do
  found=$(scan | wc -l)
  [ "$found" -ge "$want" ] && break
  if [ "$(cut -d. -f1 /proc/uptime)" -ge $deadline ]; then echo "B7:VOLUME-WAIT-TIMEOUT found=$found"; break; fi
  sleep 0.2
done
echo "B7:BLOCK-DEVICES $(cd /sys/class/block && echo *)"
mkdir -p /mnt/v
scan > /tmp/volumes
while read d t l; do
  if mount -t "$t" -o ro "$d" /mnt/v; then
    echo "B7:VOLUME dev=$d label=$l type=$t"
    for p in $(cd /mnt/v && find . -type f | sort); do
      echo "B7:FILE-BEGIN ${p#./}"
      cat "/mnt/v/$p"
      echo ""
      echo "B7:FILE-END ${p#./}"
    done
    umount /mnt/v
  else
    echo "B7:MOUNT-FAILED dev=$d label=$l type=$t"
  fi
done < /tmp/volumes
echo "B7:DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#;

/// The test kernel, initrd and ISOs, built once and cached.
#[derive(Clone, Debug)]
pub struct BootKit {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel release the modules come from.
    pub kernel_release: String,
    /// Modules loaded by the init, in order.
    pub modules: Vec<String>,
}

impl BootKit {
    /// The cached kit, built on first use (seconds; `grub-mkrescue` and `xorriso` do the work).
    pub fn get() -> Result<BootKit> {
        static KIT: Mutex<Option<BootKit>> = Mutex::new(None);
        let mut k = KIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kit) = k.as_ref() {
            return Ok(kit.clone());
        }
        let kit = build_kit()?;
        *k = Some(kit.clone());
        Ok(kit)
    }

    /// The test ISO with this bootloader layout.
    pub fn iso(&self, layout: IsoLayout) -> PathBuf {
        self.dir.join(layout.file_name())
    }
}

fn cache_base() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("BESKAR7_BOOT_PROOF_CACHE") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .context("HOME is not set; set BESKAR7_BOOT_PROOF_CACHE to a cache directory")?;
    Ok(PathBuf::from(home).join(".cache/beskar7/boot-proof"))
}

fn fnv1a(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
}

/// The newest `/boot/vmlinuz-<release>` that has `/lib/modules/<release>/modules.dep`.
fn find_kernel() -> Result<(PathBuf, String)> {
    if let Some(k) = std::env::var_os("BESKAR7_TEST_KERNEL") {
        let k = PathBuf::from(k);
        let name = k
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let release = name.trim_start_matches("vmlinuz-").to_string();
        return Ok((k, release));
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir("/boot")
        .context("read /boot (Debian package linux-image-amd64: make debs)")?
    {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-")
            && Path::new("/lib/modules")
                .join(release)
                .join("modules.dep")
                .exists()
        {
            found.push((e.path(), release.to_string()));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found.pop().context(
        "no /boot/vmlinuz-* with /lib/modules/<release>/modules.dep: install linux-image-amd64 (make debs)",
    )
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Module file paths (relative to `/lib/modules/<release>`) for `wanted` and their
/// dependencies, dependencies first. Built-in modules are skipped; missing ones are errors,
/// except `nls_iso8859_1`, `nls_ascii` and `qemu_fw_cfg`, which are only nice to have.
fn module_closure(release: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let base = Path::new("/lib/modules").join(release);
    let dep = std::fs::read_to_string(base.join("modules.dep"))
        .with_context(|| format!("read {}/modules.dep", base.display()))?;
    let builtin = std::fs::read_to_string(base.join("modules.builtin")).unwrap_or_default();
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let ds = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), ds));
    }
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, ds)) = deps.get(name) else {
            return;
        };
        // modules.dep lists the whole closure; the last entries are the most basic.
        for d in ds.iter().rev() {
            visit(&module_name(d), deps, seen, out);
        }
        out.push(path.clone());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in wanted {
        let w = w.replace('-', "_");
        if builtin.contains(&w) {
            continue;
        }
        if !deps.contains_key(&w) {
            if matches!(w.as_str(), "nls_iso8859_1" | "nls_ascii" | "qemu_fw_cfg") {
                continue;
            }
            bail!("kernel {release} has no module {w} (neither in modules.dep nor built in)");
        }
        visit(&w, &deps, &mut seen, &mut out);
    }
    Ok(out)
}

/// A module file as busybox `insmod` needs it: uncompressed.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let s = path.to_string_lossy();
    let tool = if s.ends_with(".ko.xz") {
        Some("xz")
    } else if s.ends_with(".ko.zst") {
        Some("zstd")
    } else if s.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).with_context(|| format!("read {}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("run {tool} -dc {}", path.display()))?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(out.stdout)
        }
    }
}

/// A `newc` cpio archive writer (what the kernel unpacks as initramfs).
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

fn build_kit() -> Result<BootKit> {
    let (kernel, release) = find_kernel()?;
    let busybox = PathBuf::from(
        std::env::var_os("BESKAR7_TEST_BUSYBOX").unwrap_or_else(|| "/bin/busybox".into()),
    );
    let modules = module_closure(&release, &WANTED_MODULES)?;
    let init = INIT_SCRIPT.replace("@LABELS@", &VOLUME_LABELS.join(" "));

    let mut h: u64 = 0xcbf29ce484222325;
    fnv1a(&mut h, CACHE_VERSION.as_bytes());
    for p in [&kernel, &busybox] {
        let m = std::fs::metadata(p).with_context(|| {
            format!(
                "{} (Debian packages linux-image-amd64 and busybox-static: make debs)",
                p.display()
            )
        })?;
        fnv1a(&mut h, p.to_string_lossy().as_bytes());
        fnv1a(&mut h, &m.len().to_le_bytes());
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        fnv1a(
            &mut h,
            &mtime.map(|d| d.as_secs()).unwrap_or(0).to_le_bytes(),
        );
    }
    fnv1a(&mut h, init.as_bytes());
    fnv1a(&mut h, modules.join(",").as_bytes());
    fnv1a(&mut h, BASE_KERNEL_ARGS.as_bytes());
    fnv1a(&mut h, include_str!("os_images.rs").as_bytes());
    let base = cache_base()?;
    std::fs::create_dir_all(&base).with_context(|| format!("mkdir {}", base.display()))?;
    let dir = base.join(format!("{release}-{:016x}", h));
    let names: Vec<String> = modules
        .iter()
        .map(|m| module_name(m).replace('_', "-"))
        .collect();
    let kit = BootKit {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd"),
        dir: dir.clone(),
        kernel_release: release.clone(),
        modules: names,
    };
    let marker = dir.join(".complete");
    if marker.exists() {
        return Ok(kit);
    }
    let lock = std::fs::File::create(base.join(".lock")).context("boot-proof cache lock file")?;
    lock.lock().context("lock boot-proof cache")?;
    if marker.exists() {
        return Ok(kit);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&base)
        .context("temp dir in the boot-proof cache")?;
    let t = tmp.path();

    // initrd: busybox, init, modules (uncompressed, named as insmod is given them), gzip'd.
    let mut cpio = Cpio::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "mnt",
        "tmp",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(d);
    }
    cpio.file(
        "bin/busybox",
        0o755,
        &std::fs::read(&busybox).with_context(|| format!("read {}", busybox.display()))?,
    );
    cpio.file("init", 0o755, init.as_bytes());
    let mut order = String::new();
    for m in &modules {
        let file = Path::new("/lib/modules").join(&release).join(m);
        // insmod is given the name as it appears in modules.dep (dashes kept).
        let base = m.rsplit('/').next().unwrap_or(m);
        let name = base.split(".ko").next().unwrap_or(base);
        cpio.file(
            &format!("lib/modules/{name}.ko"),
            0o644,
            &read_module(&file)?,
        );
        order.push_str(name);
        order.push('\n');
    }
    cpio.file("lib/modules/order", 0o644, order.as_bytes());
    let raw = cpio.finish();
    let mut gz = Command::new("gzip")
        .args(["-n", "-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(t.join("initrd")).context("create initrd")?)
        .spawn()
        .context("run gzip")?;
    gz.stdin
        .take()
        .context("gzip stdin")?
        .write_all(&raw)
        .context("write to gzip")?;
    if !gz.wait()?.success() {
        bail!("gzip failed building the initrd");
    }
    std::fs::copy(&kernel, t.join("vmlinuz"))
        .with_context(|| format!("copy {}", kernel.display()))?;
    for layout in IsoLayout::ALL {
        crate::os_images::build(
            layout,
            &t.join("vmlinuz"),
            &t.join("initrd"),
            t,
            &t.join(layout.file_name()),
        )?;
        std::fs::remove_dir_all(t.join(format!("root-{}", layout.file_name()))).ok();
    }
    // Keep only what tests use (the scratch FAT images and trees are tens of MiB).
    let keep: Vec<&str> = IsoLayout::ALL
        .iter()
        .map(|l| l.file_name())
        .chain(["vmlinuz", "initrd"])
        .collect();
    for e in std::fs::read_dir(t)? {
        let e = e?;
        if !keep.contains(&e.file_name().to_string_lossy().as_ref()) {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    std::fs::write(t.join(".complete"), b"")?;
    let tmp_path = tmp.keep();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ok();
    }
    std::fs::rename(&tmp_path, &dir)
        .with_context(|| format!("move the boot kit to {}", dir.display()))?;
    // Kits built from older fixture code are not used again.
    for e in std::fs::read_dir(&base)?.flatten() {
        let p = e.path();
        if p != dir && p.join(".complete").exists() {
            std::fs::remove_dir_all(&p).ok();
        }
    }
    Ok(kit)
}

/// Firmware of the virtual machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF.
    Uefi,
    /// SeaBIOS.
    Legacy,
}

/// A medium attached besides the boot CD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Medium {
    /// A CD-ROM on the next free AHCI port.
    Cd(PathBuf),
    /// A USB mass-storage stick on an xHCI controller.
    UsbStick(PathBuf),
}

/// How the boot image is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootDevice {
    /// A CD-ROM (El Torito), as a BMC's virtual CD/DVD presents it.
    Cd,
    /// A USB disk (the MBR/GPT), as a BMC's virtual USB stick presents it.
    UsbDisk,
}

/// One boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub firmware: Firmware,
    pub boot_cd: PathBuf,
    pub boot_device: BootDevice,
    pub extra: Vec<Medium>,
    /// How many labelled config volumes the guest should wait for.
    pub expect_volumes: usize,
    pub timeout: Duration,
    /// Where the serial log, QEMU's log and the firmware variables go.
    pub work_dir: PathBuf,
}

impl VmSpec {
    pub fn new(
        firmware: Firmware,
        boot_cd: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        VmSpec {
            firmware,
            boot_cd: boot_cd.into(),
            boot_device: BootDevice::Cd,
            extra: Vec::new(),
            expect_volumes: 0,
            timeout: Duration::from_secs(90),
            work_dir: work_dir.into(),
        }
    }

    /// Attach a config volume (counted in [`VmSpec::expect_volumes`]).
    pub fn with_volume(mut self, m: Medium) -> Self {
        self.extra.push(m);
        self.expect_volumes += 1;
        self
    }
}

/// A config volume as the guest saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSeen {
    pub device: String,
    pub label: String,
    pub fs_type: String,
    /// Path -> content (as printed; a trailing newline the guest adds is removed).
    pub files: BTreeMap<String, String>,
}

/// What a boot printed.
#[derive(Clone, Debug)]
pub struct BootOutput {
    pub serial: String,
    pub elapsed: Duration,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    pub firmware: Firmware,
}

impl BootOutput {
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.serial.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// The guest's `/proc/cmdline`.
    pub fn cmdline(&self) -> Option<String> {
        let mut it = self
            .lines()
            .skip_while(|l| !l.ends_with("B7:CMDLINE-BEGIN"));
        it.next()?;
        let line = it.next()?;
        Some(line.trim().to_string())
    }

    /// The kernel arguments, split on whitespace.
    pub fn kernel_args(&self) -> Vec<String> {
        self.cmdline()
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The init ran to its end.
    pub fn completed(&self) -> bool {
        self.lines().any(|l| l.starts_with("B7:DONE"))
    }

    /// Modules the init failed to load.
    pub fn insmod_failures(&self) -> Vec<String> {
        self.lines()
            .filter_map(|l| l.strip_prefix("B7:INSMOD-FAILED ").map(str::to_string))
            .collect()
    }

    /// Config volumes found, with their files.
    pub fn volumes(&self) -> Vec<VolumeSeen> {
        let mut out: Vec<VolumeSeen> = Vec::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for l in self.lines() {
            if let Some(rest) = l.strip_prefix("B7:VOLUME ") {
                let kv: HashMap<&str, &str> = rest
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .collect();
                out.push(VolumeSeen {
                    device: kv.get("dev").unwrap_or(&"").to_string(),
                    label: kv.get("label").unwrap_or(&"").to_string(),
                    fs_type: kv.get("type").unwrap_or(&"").to_string(),
                    files: BTreeMap::new(),
                });
            } else if let Some(p) = l.strip_prefix("B7:FILE-BEGIN ") {
                current = Some((p.to_string(), Vec::new()));
            } else if let Some(p) = l.strip_prefix("B7:FILE-END ") {
                if let Some((name, lines)) = current.take()
                    && name == p
                    && let Some(v) = out.last_mut()
                {
                    // The guest prints the file, then a newline: joining the lines gives
                    // the file back.
                    v.files.insert(name, lines.join("\n"));
                }
            } else if let Some((_, lines)) = current.as_mut() {
                lines.push(l.to_string());
            }
        }
        out
    }

    /// The volume with this label (any case).
    pub fn volume(&self, label: &str) -> Option<VolumeSeen> {
        self.volumes()
            .into_iter()
            .find(|v| v.label.eq_ignore_ascii_case(label))
    }

    /// The last `n` lines of the serial log.
    pub fn tail(&self, n: usize) -> String {
        tail_lines(&self.serial, n)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn tail_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// 0 unknown, 1 KVM works, 2 KVM unusable.
static KVM_STATE: AtomicU8 = AtomicU8::new(0);

fn want_kvm() -> bool {
    match std::env::var("BESKAR7_QEMU_ACCEL").as_deref() {
        Ok("tcg") => return false,
        Ok("kvm") => return true,
        _ => {}
    }
    if KVM_STATE.load(Ordering::Relaxed) == 2 {
        return false;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Boots `spec` and returns the serial output once the guest powers off. Fails if QEMU cannot
/// start, the guest does not power off within the timeout (with the serial log's tail), or
/// the init did not reach its end.
pub fn boot(spec: &VmSpec) -> Result<BootOutput> {
    static BOOTS: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let kvm = want_kvm();
    let forced = std::env::var("BESKAR7_QEMU_ACCEL").is_ok();
    match boot_with(spec, kvm) {
        // KVM not yet seen working: any failure (an internal error, a hang) may be KVM's, so
        // the boot is retried once with TCG and KVM is not tried again in this process.
        Err(e) if kvm && !forced && KVM_STATE.load(Ordering::Relaxed) != 1 => {
            KVM_STATE.store(2, Ordering::Relaxed);
            tracing::warn!("booting with KVM failed ({e:#}); booting with TCG");
            eprintln!(
                "beskar7-test vm: KVM opens but did not run the guest ({}); using TCG",
                first_line(&format!("{e:#}"))
            );
            boot_with(spec, false)
        }
        Ok(o) => {
            if kvm {
                KVM_STATE.store(1, Ordering::Relaxed);
            }
            Ok(o)
        }
        Err(e) => Err(e),
    }
}

fn boot_with(spec: &VmSpec, kvm: bool) -> Result<BootOutput> {
    std::fs::create_dir_all(&spec.work_dir)?;
    let accel = if kvm { "kvm" } else { "tcg" };
    let serial = spec.work_dir.join(format!("serial-{accel}.log"));
    let qemu_log = spec.work_dir.join(format!("qemu-{accel}.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", &format!("q35,accel={accel}")])
        .args(["-m", "1024", "-nographic", "-no-reboot", "-display", "none"])
        .args(["-monitor", "none", "-serial"])
        .arg(format!("file:{}", serial.display()));
    if kvm {
        cmd.args(["-cpu", "host"]);
    }
    if spec.firmware == Firmware::Uefi {
        let vars = spec.work_dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("copy {OVMF_VARS} (Debian package ovmf: make debs)"))?;
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    // No network boot: the firmware would try PXE before giving up on a medium.
    cmd.args(["-nic", "none"]);
    let mut port = 1;
    let mut usb = 0;
    match spec.boot_device {
        BootDevice::Cd => {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},media=cdrom,if=none,id=cd0,format=raw,readonly=on",
                    spec.boot_cd.display()
                ))
                .args(["-device", "ide-cd,drive=cd0,bus=ide.0,bootindex=0"]);
        }
        BootDevice::UsbDisk => {
            cmd.args(["-device", "qemu-xhci,id=xhci"])
                .arg("-drive")
                .arg(format!(
                    "if=none,id=boot0,format=raw,readonly=on,file={}",
                    spec.boot_cd.display()
                ))
                .args([
                    "-device",
                    "usb-storage,bus=xhci.0,drive=boot0,removable=on,bootindex=0",
                ]);
            usb = 1;
            port = 0;
        }
    }
    for m in &spec.extra {
        match m {
            Medium::Cd(p) => {
                cmd.arg("-drive")
                    .arg(format!(
                        "file={},media=cdrom,if=none,id=cd{port},format=raw,readonly=on",
                        p.display()
                    ))
                    .arg("-device")
                    .arg(format!("ide-cd,drive=cd{port},bus=ide.{port}"));
                port += 1;
            }
            Medium::UsbStick(p) => {
                if usb == 0 && spec.boot_device != BootDevice::UsbDisk {
                    cmd.args(["-device", "qemu-xhci,id=xhci"]);
                }
                cmd.arg("-drive")
                    .arg(format!(
                        "if=none,id=usb{usb},format=raw,readonly=on,file={}",
                        p.display()
                    ))
                    .arg("-device")
                    .arg(format!(
                        "usb-storage,bus=xhci.0,drive=usb{usb},removable=on"
                    ));
                usb += 1;
            }
        }
    }
    cmd.arg("-fw_cfg").arg(format!(
        "name=opt/beskar7/volumes,string={}",
        spec.expect_volumes
    ));
    let log = std::fs::File::create(&qemu_log)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .context("start qemu-system-x86_64 (Debian package qemu-system-x86: make debs)")?;
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let qlog = read(&qemu_log);
        if kvm && qlog.contains("KVM internal error") {
            let _ = child.kill();
            let _ = child.wait();
            let why = qlog
                .lines()
                .filter(|l| l.contains("KVM") || l.contains("failure") || l.contains("warning"))
                .collect::<Vec<_>>()
                .join("; ");
            bail!("QEMU stopped in the guest with a KVM internal error: {why}");
        }
        if start.elapsed() > spec.timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the VM did not power off within {:?} ({accel}, {:?}); QEMU said:\n{}\nlast serial lines ({}):\n{}",
                spec.timeout,
                spec.firmware,
                tail_lines(&qlog, 10),
                serial.display(),
                tail_lines(&read(&serial), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = start.elapsed();
    let out = BootOutput {
        serial: read(&serial),
        elapsed,
        accel,
        firmware: spec.firmware,
    };
    if !status.success() {
        bail!(
            "qemu-system-x86_64 exited with {status} after {elapsed:?}; QEMU said:\n{}\nlast serial lines:\n{}",
            tail_lines(&read(&qemu_log), 10),
            out.tail(40)
        );
    }
    if !out.completed() {
        bail!(
            "the guest powered off after {elapsed:?} without reaching the end of its init ({accel}, {:?}); last serial lines:\n{}",
            spec.firmware,
            out.tail(60)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_report() {
        let out = BootOutput {
            serial: "junk\r\nB7:CMDLINE-BEGIN\r\nBOOT_IMAGE=/boot/vmlinuz console=ttyS0 config_url=http://x/y\r\nB7:CMDLINE-END\r\n\
                     B7:INSMOD-FAILED foo\nB7:VOLUME dev=/dev/sda label=CIDATA type=vfat\nB7:FILE-BEGIN meta-data\nprovider-id: a\nlocal-hostname: m\n\n\
                     B7:FILE-END meta-data\nB7:FILE-BEGIN user-data\n#cloud-config\n\nB7:FILE-END user-data\nB7:DONE uptime=1\n"
                .into(),
            elapsed: Duration::from_secs(1),
            accel: "tcg",
            firmware: Firmware::Uefi,
        };
        assert_eq!(
            out.cmdline().as_deref(),
            Some("BOOT_IMAGE=/boot/vmlinuz console=ttyS0 config_url=http://x/y")
        );
        assert!(
            out.kernel_args()
                .contains(&"config_url=http://x/y".to_string())
        );
        assert!(out.completed());
        assert_eq!(out.insmod_failures(), vec!["foo"]);
        let v = out.volume("cidata").unwrap();
        assert_eq!(v.fs_type, "vfat");
        assert_eq!(v.files["meta-data"], "provider-id: a\nlocal-hostname: m\n");
        assert_eq!(v.files["user-data"], "#cloud-config\n");
    }

    #[test]
    fn cpio_is_newc() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"abc");
        let b = c.finish();
        assert!(b.starts_with(b"070701"));
        assert_eq!(b.len() % 4, 0);
        assert!(b.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}

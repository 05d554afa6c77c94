//! `beskar7 media config` and `beskar7 media patch-iso` run as the operator would, checked with Debian tools.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tool(name: &str, package: &str) -> PathBuf {
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
    {
        if d.join(name).is_file() {
            return d.join(name);
        }
    }
    panic!(
        "`{name}` not found: install the Debian package `{package}` (run `make debs` or hack/ensure-debs.sh)"
    );
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn beskar7() -> Command {
    Command::new(env!("CARGO_BIN_EXE_beskar7"))
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("beskar7-media-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn blkid(p: &Path) -> String {
    String::from_utf8(
        run(Command::new(tool("blkid", "util-linux"))
            .args(["-p", "-o", "export"])
            .arg(p))
        .stdout,
    )
    .unwrap()
}

#[test]
fn media_config_iso_and_fat() {
    let d = tmp("config");
    let user = d.join("user-data");
    std::fs::write(&user, "#cloud-config\nhostname: w0\n").unwrap();
    let iso = d.join("cidata.iso");
    run(beskar7()
        .args(["media", "config", "--os", "kairos", "--user-data"])
        .arg(&user)
        .args([
            "--meta-data",
            "instance-id=i-1",
            "--meta-data",
            "local-hostname=w0",
            "--meta-data",
            "provider-id=beskar7://ns/h0",
        ])
        .args(["--format", "iso", "-o"])
        .arg(&iso));
    let b = blkid(&iso);
    assert!(
        b.contains("LABEL=cidata") && b.contains("TYPE=iso9660"),
        "{b}"
    );
    let meta = run(Command::new(tool("isoinfo", "genisoimage"))
        .args(["-R", "-i"])
        .arg(&iso)
        .args(["-x", "/meta-data"]))
    .stdout;
    assert_eq!(
        String::from_utf8(meta).unwrap(),
        "instance-id: i-1\nlocal-hostname: w0\nprovider-id: beskar7://ns/h0\n"
    );
    let ud = String::from_utf8(
        run(Command::new(tool("isoinfo", "genisoimage"))
            .args(["-J", "-i"])
            .arg(&iso)
            .args(["-x", "/user-data"]))
        .stdout,
    )
    .unwrap();
    assert!(
        ud.starts_with("#cloud-config\n")
            && ud.contains("hostname: w0")
            && ud.contains("auto: true"),
        "{ud}"
    );

    let ign = d.join("config.ign");
    std::fs::write(&ign, r#"{"ignition":{"version":"3.3.0"}}"#).unwrap();
    let fat = d.join("combustion.img");
    run(beskar7()
        .args(["media", "config", "--os", "LeapMicro", "--user-data"])
        .arg(&ign)
        .args(["--format", "fat", "-o"])
        .arg(&fat));
    let b = blkid(&fat);
    assert!(
        b.contains("LABEL=ignition") && b.contains("TYPE=vfat"),
        "{b}"
    );
    let got = run(Command::new(tool("mcopy", "mtools"))
        .args(["-n", "-i"])
        .arg(&fat)
        .args(["::/ignition/config.ign", "-"])
        .env("MTOOLS_SKIP_CHECK", "1"))
    .stdout;
    assert_eq!(got, std::fs::read(&ign).unwrap());

    // Flatcar reads no volume: a clear error, no output file
    let out = beskar7()
        .args(["media", "config", "--os", "flatcar", "--user-data"])
        .arg(&ign)
        .args(["-o"])
        .arg(d.join("f.iso"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only passed by URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("f.iso").exists());
    // unknown OS spelling refused by the parser
    let out = beskar7()
        .args(["media", "config", "--os", "Kairos", "--user-data"])
        .arg(&user)
        .args(["-o"])
        .arg(d.join("x.iso"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn media_patch_iso() {
    let d = tmp("patch");
    std::fs::create_dir_all(d.join("root/boot/grub")).unwrap();
    std::fs::write(
        d.join("root/boot/grub/grub.cfg"),
        "menuentry x {\n  linux /vmlinuz quiet\n}\n",
    )
    .unwrap();
    std::fs::write(d.join("root/vmlinuz"), vec![1u8; 10_000]).unwrap();
    let src = d.join("in.iso");
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
        .arg(&src)
        .arg(d.join("root")));
    let out = d.join("out.iso");
    let o = run(beskar7()
        .args(["media", "patch-iso", "--in"])
        .arg(&src)
        .args([
            "--kernel-args",
            "talos.config=metal-iso console=ttyS0",
            "-o",
        ])
        .arg(&out));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/boot/grub/grub.cfg"));
    let cfg = run(Command::new(tool("xorriso", "xorriso"))
        .args(["-osirrox", "on", "-indev"])
        .arg(&out)
        .args(["-extract", "/boot/grub/grub.cfg"])
        .arg(d.join("grub.cfg")));
    drop(cfg);
    assert_eq!(
        std::fs::read_to_string(d.join("grub.cfg")).unwrap(),
        "menuentry x {\n  linux /vmlinuz quiet talos.config=metal-iso console=ttyS0\n}\n"
    );
    // patching the output again changes nothing
    let out2 = d.join("out2.iso");
    run(beskar7()
        .args(["media", "patch-iso", "--in"])
        .arg(&out)
        .args([
            "--kernel-args",
            "talos.config=metal-iso console=ttyS0",
            "-o",
        ])
        .arg(&out2));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    // an ISO without bootloader config is a clear error
    let plain = d.join("plain.iso");
    std::fs::remove_dir_all(d.join("root/boot")).unwrap();
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-as", "mkisofs", "-quiet", "-R", "-o"])
        .arg(&plain)
        .arg(d.join("root")));
    let o = beskar7()
        .args(["media", "patch-iso", "--in"])
        .arg(&plain)
        .args(["--kernel-args", "a=b", "-o"])
        .arg(d.join("p.iso"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no bootloader configuration"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&d);
}

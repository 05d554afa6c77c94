//! Config volumes read back by independent tools: blkid, xorriso, isoinfo, mtools, fsck.fat.

mod common;

use std::process::Command;

use beskar7_boot::{
    BootstrapFormat, MetaData, OsFamily, VolumeFile, VolumeFormat, build_config_volume,
    build_volume,
};
use common::*;

fn meta() -> MetaData {
    MetaData {
        instance_id: "default-worker-0".into(),
        local_hostname: "worker-0".into(),
        provider_id: "beskar7://default/host-0".into(),
        extra: [("region".to_string(), "lab".to_string())].into(),
    }
}

/// (case name, OS, bootstrap format, bootstrap data) for every OS that reads a volume.
fn cases() -> Vec<(&'static str, OsFamily, BootstrapFormat, Vec<u8>)> {
    vec![
        ("kairos", OsFamily::Kairos, BootstrapFormat::CloudConfig, b"#cloud-config\nusers:\n- name: kairos\n  passwd: kairos\nruncmd:\n- echo hello\n".to_vec()),
        ("talos", OsFamily::Talos, BootstrapFormat::CloudConfig, b"version: v1alpha1\nmachine:\n  type: worker\n  token: abc\ncluster:\n  controlPlane:\n    endpoint: https://10.0.0.1:6443\n".to_vec()),
        ("leapmicro-ignition", OsFamily::LeapMicro, BootstrapFormat::Ignition, br#"{"ignition":{"version":"3.2.0"},"passwd":{"users":[{"name":"root"}]}}"#.to_vec()),
        ("leapmicro-combustion", OsFamily::LeapMicro, BootstrapFormat::CloudConfig, b"#!/bin/bash\n# combustion: network\necho root:x | chpasswd\n".to_vec()),
    ]
}

fn expected_label(case: &str) -> &'static str {
    match case {
        "kairos" => "cidata",
        "talos" => "metal-iso",
        "leapmicro-ignition" => "ignition",
        "leapmicro-combustion" => "combustion",
        other => panic!("no label for {other}"),
    }
}

#[test]
fn iso_config_volumes_read_by_blkid_xorriso_isoinfo() {
    let isoinfo = tool("isoinfo", "genisoimage");
    for (name, os, format, data) in cases() {
        let rendered = os.render(&data, format, &meta()).unwrap();
        let img = build_config_volume(os, VolumeFormat::Iso, &rendered).unwrap();
        assert_eq!(
            img,
            build_config_volume(os, VolumeFormat::Iso, &rendered).unwrap(),
            "{name}: not deterministic"
        );
        assert!(
            img.len() <= 128 * 1024,
            "{name}: ISO is {} bytes",
            img.len()
        );
        eprintln!("{name}: config ISO {} bytes", img.len());
        let t = TempDir::new("vol-iso");
        let path = t.join("config.iso");
        std::fs::write(&path, &img).unwrap();

        let (label, ty) = blkid(&path);
        assert_eq!(ty, "iso9660", "{name}");
        assert_eq!(label, expected_label(name), "{name}");

        // xorriso extracts with Rock Ridge names; it must not complain about the image
        let out = t.join("x");
        let o = run(Command::new(tool("xorriso", "xorriso"))
            .args(["-osirrox", "on", "-indev"])
            .arg(&path)
            .args(["-extract", "/"])
            .arg(&out));
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(
            !log.contains("FAILURE") && !log.contains("SORRY") && !log.contains("WARNING"),
            "{name}: {log}"
        );
        let info = stdout(Command::new(&isoinfo).args(["-d", "-i"]).arg(&path));
        assert!(
            info.contains("Rock Ridge signatures version 1 found"),
            "{name}: {info}"
        );
        assert!(
            info.contains("Joliet with UCS level 3 found"),
            "{name}: {info}"
        );
        let mut want: Vec<(String, Vec<u8>)> = rendered
            .volume_files
            .iter()
            .map(|f| (f.path.clone(), f.data.clone()))
            .collect();
        want.sort();
        assert_eq!(read_tree(&out), want, "{name}: xorriso extract");

        // isoinfo: Joliet and Rock Ridge listings, and extraction by each
        let list_j = stdout(Command::new(&isoinfo).args(["-J", "-f", "-i"]).arg(&path));
        let list_r = stdout(Command::new(&isoinfo).args(["-R", "-f", "-i"]).arg(&path));
        for (p, content) in &want {
            let abs = format!("/{p}");
            assert!(
                list_j.lines().any(|l| l == abs),
                "{name}: Joliet listing lacks {abs}: {list_j}"
            );
            assert!(
                list_r.lines().any(|l| l == abs),
                "{name}: Rock Ridge listing lacks {abs}: {list_r}"
            );
            for flag in ["-J", "-R"] {
                let got = run(Command::new(&isoinfo)
                    .args([flag, "-i"])
                    .arg(&path)
                    .args(["-x", &abs]))
                .stdout;
                assert_eq!(&got, content, "{name}: isoinfo {flag} -x {abs}");
            }
        }
        // the plain ISO 9660 tree (no extensions) holds the same number of files
        let list_plain = stdout(Command::new(&isoinfo).args(["-f", "-i"]).arg(&path));
        assert_eq!(
            list_plain.lines().filter(|l| l.contains(";1")).count(),
            want.len(),
            "{name}: {list_plain}"
        );
    }
}

#[test]
fn fat_config_volumes_read_by_blkid_mtools_fsck() {
    let mdir = tool("mdir", "mtools");
    let mcopy = tool("mcopy", "mtools");
    let fsck = tool("fsck.fat", "dosfstools");
    for (name, os, format, data) in cases() {
        let rendered = os.render(&data, format, &meta()).unwrap();
        let img = build_config_volume(os, VolumeFormat::Fat, &rendered).unwrap();
        assert_eq!(
            img,
            build_config_volume(os, VolumeFormat::Fat, &rendered).unwrap(),
            "{name}: not deterministic"
        );
        eprintln!("{name}: config FAT image {} bytes", img.len());
        assert_eq!(
            img.len(),
            1_474_560,
            "{name}: small content fits the 1.44 MB geometry"
        );
        let t = TempDir::new("vol-fat");
        let path = t.join("config.img");
        std::fs::write(&path, &img).unwrap();

        let (label, ty) = blkid(&path);
        assert_eq!(ty, "vfat", "{name}");
        assert_eq!(label, expected_label(name), "{name}");

        run(Command::new(&fsck).args(["-n", "-v"]).arg(&path));

        let listing = stdout(
            Command::new(&mdir)
                .args(["-/", "-b", "-i"])
                .arg(&path)
                .arg("::/")
                .env("MTOOLS_SKIP_CHECK", "1"),
        );
        let mut want: Vec<(String, Vec<u8>)> = rendered
            .volume_files
            .iter()
            .map(|f| (f.path.clone(), f.data.clone()))
            .collect();
        want.sort();
        for (p, content) in &want {
            let abs = format!("::/{p}");
            assert!(
                listing.lines().any(|l| l == abs),
                "{name}: mdir lacks {abs}: {listing}"
            );
            let got = run(Command::new(&mcopy)
                .args(["-n", "-i"])
                .arg(&path)
                .arg(&abs)
                .arg("-")
                .env("MTOOLS_SKIP_CHECK", "1"))
            .stdout;
            assert_eq!(&got, content, "{name}: mcopy {abs}");
        }
        // mcopy -s extracts the whole tree with the same names
        let out = t.join("x");
        std::fs::create_dir(&out).unwrap();
        run(Command::new(&mcopy)
            .args(["-s", "-n", "-i"])
            .arg(&path)
            .arg("::/*")
            .arg(&out)
            .env("MTOOLS_SKIP_CHECK", "1"));
        assert_eq!(read_tree(&out), want, "{name}: mcopy -s");
    }
}

#[test]
fn many_and_large_files_on_both_formats() {
    // nested dirs, long names, a file spanning many clusters, and more than one LFN entry
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let files = vec![
        VolumeFile::new(
            "a/b/c/deeply-nested-file-with-a-long-name.yaml",
            b"x: 1\n".to_vec(),
        ),
        VolumeFile::new("big.bin", big.clone()),
        VolumeFile::new("UPPER.TXT", b"upper\n".to_vec()),
        VolumeFile::new("empty", Vec::new()),
        VolumeFile::new("a/b/sibling", b"s\n".to_vec()),
    ];
    let mut want: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| (f.path.clone(), f.data.clone()))
        .collect();
    want.sort();
    let t = TempDir::new("vol-many");
    let iso = t.join("v.iso");
    std::fs::write(
        &iso,
        build_volume(VolumeFormat::Iso, "cidata", &files).unwrap(),
    )
    .unwrap();
    let out = t.join("iso");
    xorriso_extract(&iso, &out);
    assert_eq!(read_tree(&out), want);

    let fat = t.join("v.img");
    std::fs::write(
        &fat,
        build_volume(VolumeFormat::Fat, "CIDATA", &files).unwrap(),
    )
    .unwrap();
    run(Command::new(tool("fsck.fat", "dosfstools"))
        .args(["-n"])
        .arg(&fat));
    let out = t.join("fat");
    std::fs::create_dir(&out).unwrap();
    run(Command::new(tool("mcopy", "mtools"))
        .args(["-s", "-n", "-i"])
        .arg(&fat)
        .arg("::/*")
        .arg(&out)
        .env("MTOOLS_SKIP_CHECK", "1"));
    assert_eq!(read_tree(&out), want);
    assert_eq!(blkid(&fat).0, "CIDATA");
}

#[test]
fn fat_grows_past_floppy_size() {
    let big = vec![7u8; 3 << 20];
    let img = build_volume(
        VolumeFormat::Fat,
        "combustion",
        &[VolumeFile::new("combustion/script", big.clone())],
    )
    .unwrap();
    assert!(img.len() > 3 << 20);
    let t = TempDir::new("vol-grow");
    let p = t.join("v.img");
    std::fs::write(&p, &img).unwrap();
    run(Command::new(tool("fsck.fat", "dosfstools"))
        .args(["-n"])
        .arg(&p));
    let got = run(Command::new(tool("mcopy", "mtools"))
        .args(["-n", "-i"])
        .arg(&p)
        .arg("::/combustion/script")
        .arg("-")
        .env("MTOOLS_SKIP_CHECK", "1"))
    .stdout;
    assert_eq!(got, big);
}

#[test]
fn bad_inputs_are_refused() {
    assert!(build_volume(VolumeFormat::Fat, "much-too-long-label", &[]).is_err());
    assert!(
        build_volume(
            VolumeFormat::Iso,
            "x",
            &[VolumeFile::new("../x", b"".to_vec())]
        )
        .is_err()
    );
    assert!(
        build_volume(
            VolumeFormat::Iso,
            "x",
            &[VolumeFile::new("/abs", b"".to_vec())]
        )
        .is_err()
    );
    assert!(
        build_volume(
            VolumeFormat::Iso,
            "x",
            &[
                VolumeFile::new("a", b"".to_vec()),
                VolumeFile::new("a/b", b"".to_vec())
            ]
        )
        .is_err()
    );
    assert!(
        build_config_volume(
            OsFamily::Flatcar,
            VolumeFormat::Iso,
            &OsFamily::Flatcar
                .render(
                    br#"{"ignition":{"version":"3.4.0"}}"#,
                    BootstrapFormat::Ignition,
                    &meta()
                )
                .unwrap()
        )
        .is_err()
    );
}

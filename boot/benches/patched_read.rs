//! Throughput of reading a patched ISO view against reading the source file directly.
//! Run: `cargo bench -p beskar7-boot --bench patched_read` (prints MB/s; no timing assertions).

use std::time::Instant;

use beskar7_boot::{PatchedIso, ReadAt, VolumeFile, VolumeFormat, build_volume, patch_iso};

fn main() {
    const SIZE: u64 = 512 << 20;
    const CHUNK: usize = 256 << 10;
    let dir = std::env::temp_dir().join(format!("beskar7-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("src.iso");
    let iso = build_volume(
        VolumeFormat::Iso,
        "BENCH",
        &[
            VolumeFile::new("boot/grub/grub.cfg", "menuentry x {\n linux /k quiet\n}\n"),
            VolumeFile::new("k", vec![1u8; 1 << 20]),
        ],
    )
    .unwrap();
    std::fs::write(&path, &iso).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let file = std::fs::File::open(&path).unwrap();

    let t = Instant::now();
    let patch = patch_iso(
        &file,
        &[
            "console=ttyS0".to_string(),
            "talos.config=metal-iso".to_string(),
        ],
    )
    .unwrap();
    println!("patch_iso on a {} MiB image: {:?}", SIZE >> 20, t.elapsed());
    let patched = PatchedIso::new(&file, std::sync::Arc::new(patch));

    let mut buf = vec![0u8; CHUNK];
    for round in 0..4 {
        let t = Instant::now();
        let mut off = 0;
        while off < SIZE {
            let n = CHUNK.min((SIZE - off) as usize);
            file.read_exact_at(off, &mut buf[..n]).unwrap();
            off += n as u64;
        }
        let plain = SIZE as f64 / t.elapsed().as_secs_f64() / 1e6;
        let t = Instant::now();
        let mut off = 0;
        while off < patched.len() {
            let n = patched.read_at(off, &mut buf).unwrap();
            off += n as u64;
        }
        let view = patched.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!(
            "round {round}: source {plain:.0} MB/s, patched view {view:.0} MB/s ({:.1}%)",
            view / plain * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

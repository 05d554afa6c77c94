//! The ISO 9660 reader behind kernel-argument patching: any image bytes give a patch or a
//! `PatchError`, and a patch reads back consistently at any offset.
#![no_main]

use beskar7_boot::{ReadAt, patch_iso};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args = vec!["beskar7.test=1".to_string(), "console=ttyS0".to_string()];
    let Ok(patch) = patch_iso(&data, &args) else {
        return;
    };
    let _ = (patch.configs(), patch.warnings(), patch.is_identity());
    assert_eq!(patch.source_len(), data.len() as u64);
    assert!(patch.len() >= patch.source_len());
    // Bounded: a patch adds the rewritten configs (each at most 1 MiB) and little else.
    assert!(
        patch.len() - patch.source_len() < 64 << 20,
        "patch grows by {}",
        patch.len() - patch.source_len()
    );
    // The whole image through read_at in odd-sized pieces equals write_to.
    let mut whole = Vec::new();
    patch
        .write_to(&data, &mut whole)
        .expect("write_to on an in-memory source");
    assert_eq!(whole.len() as u64, patch.len());
    let mut pieced = Vec::with_capacity(whole.len());
    let mut buf = [0u8; 3001];
    loop {
        let n = patch
            .read_at(&data, pieced.len() as u64, &mut buf)
            .expect("read_at");
        if n == 0 {
            break;
        }
        pieced.extend_from_slice(&buf[..n]);
    }
    assert_eq!(pieced, whole, "read_at and write_to disagree");
    // Past the end reads nothing.
    assert_eq!(
        patch
            .read_at(&data, patch.len() + 1, &mut buf)
            .expect("read_at past end"),
        0
    );
    let _ = data.size();
});

//! Bootloader config rewriting (GRUB, ISOLINUX) and kernel-argument splitting on any text.
#![no_main]

use beskar7_boot::{ConfigKind, append_kernel_args, split_kernel_args};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: the arguments; the rest: the config file.
    let (args, cfg) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"beskar7.test=1"[..], data),
    };
    let args = split_kernel_args(&String::from_utf8_lossy(args));
    for kind in [ConfigKind::Grub, ConfigKind::Isolinux] {
        let p = append_kernel_args(kind, cfg, &args);
        if args.is_empty() || p.kernel_lines == 0 {
            continue;
        }
        // Bounded growth: each kernel line gets the arguments once (quoted at most 4x + spaces).
        let added: usize = args.iter().map(|a| 4 * a.len() + 3).sum();
        assert!(
            p.data.len() <= cfg.len() + p.kernel_lines * added + 16,
            "grew too much"
        );
    }
});

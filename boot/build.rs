//! Builds the UEFI loader (`efi-loader/loader.rs`, a `#![no_std]` UEFI application) with the
//! rustc Cargo uses, for `src/efi_loader.rs` to embed. Nothing prebuilt is downloaded: the loader
//! is compiled from this repository like the rest of the provider.
//!
//! rustc is called directly, with only the flags below: RUSTFLAGS and the flags of the crate being
//! built (a fuzzer's `-Cpasses=sancov-module`, `-Zsanitizer=...`) only reach rustc through Cargo,
//! so they cannot leak into this freestanding build.

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, exit};

const TARGET: &str = "x86_64-unknown-uefi";
const SOURCE: &str = "efi-loader/loader.rs";
const OUTPUT: &str = "beskar7-loader-x64.efi";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by Cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by Cargo"));

    let version = rustc_output(&rustc, &["-V"]);
    let sysroot = PathBuf::from(rustc_output(&rustc, &["--print", "sysroot"]));
    // Checked up front: rustc's own error for a missing target ("can't find crate for `core`")
    // does not say what to do.
    if !sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
    {
        fail(&format!(
            "the {TARGET} target is not installed for {version}: run hack/ensure-rust-targets.sh \
             (rustup target add {TARGET})"
        ));
    }

    let output = out_dir.join(OUTPUT);
    let mut remap = OsString::from("--remap-path-prefix=");
    remap.push(&manifest_dir);
    remap.push("=beskar7-boot");
    let result = Command::new(&rustc)
        // rustc reads none of these; removed in case RUSTC is a wrapper script that forwards them.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(&manifest_dir)
        .args([
            "--edition",
            "2024",
            "--target",
            TARGET,
            "--crate-type",
            "bin",
        ])
        .args(["--crate-name", "beskar7_loader"])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "codegen-units=1",
        ])
        // Reproducible bytes: no debug info and no PDB (rustc asks the linker for one even when
        // stripping), and /Brepro makes the PE timestamp a hash of the image instead of the time.
        .args(["-C", "debuginfo=0", "-C", "strip=symbols"])
        .args(["-C", "link-arg=/DEBUG:NONE", "-C", "link-arg=/Brepro"])
        .arg(remap)
        .arg("-o")
        .arg(&output)
        .arg(SOURCE)
        .output()
        .unwrap_or_else(|e| fail(&format!("running {rustc:?}: {e}")));
    let stderr = String::from_utf8_lossy(&result.stderr);
    if !result.status.success() {
        fail(&format!(
            "building the UEFI loader ({SOURCE}) with {version} failed:\n{stderr}"
        ));
    }
    // Cargo hides a build script's output unless it fails: surface the loader's warnings.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=efi-loader: {line}");
    }
}

fn rustc_output(rustc: &OsString, args: &[&str]) -> String {
    let out = Command::new(rustc)
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("running {rustc:?}: {e}")));
    if !out.status.success() {
        fail(&format!(
            "{rustc:?} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}

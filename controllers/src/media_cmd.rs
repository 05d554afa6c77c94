//! `beskar7 media ...`: build config volumes and patch ISOs by hand, with the same code the
//! provider uses.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use beskar7_boot::{
    BootstrapFormat, MetaData, OsFamily, PatchOptions, PatchedIso, VolumeFormat,
    build_config_volume, patch_iso_with, split_kernel_args,
};

#[derive(Debug, clap::Subcommand)]
pub enum MediaCommand {
    /// Build the config volume an OS reads at boot (ISO 9660 or FAT) from bootstrap data.
    Config(ConfigArgs),
    /// Write a copy of an ISO whose bootloader configs carry extra kernel arguments.
    PatchIso(PatchIsoArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// kairos, talos, flatcar or LeapMicro.
    #[arg(long)]
    pub os: OsFamily,
    /// Bootstrap data (cloud-config, Talos machine config, Ignition JSON or a Combustion script).
    #[arg(long)]
    pub user_data: PathBuf,
    /// Format of the bootstrap data; by default Ignition when the file is JSON with an `ignition` key.
    #[arg(long, value_parser = ["cloud-config", "ignition"])]
    pub bootstrap_format: Option<String>,
    /// meta-data entries (`instance-id`, `local-hostname`, `provider-id`, anything else), repeatable.
    #[arg(long = "meta-data", value_name = "KEY=VALUE")]
    pub meta_data: Vec<String>,
    /// iso (CD/DVD slot) or fat (Floppy/USBStick slot).
    #[arg(long, default_value = "iso")]
    pub format: VolumeFormat,
    /// Output image file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct PatchIsoArgs {
    /// Source ISO.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Kernel arguments to append to every kernel line, e.g. "talos.config=metal-iso console=ttyS0".
    #[arg(long)]
    pub kernel_args: String,
    /// Output ISO.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Give an image that boots only with ISOLINUX (Flatcar) a UEFI boot path with Beskar7's
    /// own loader, booting the same kernel, initrd and arguments.
    #[arg(long)]
    pub add_uefi_path: bool,
}

/// Runs a `media` subcommand.
pub fn run(cmd: MediaCommand) -> anyhow::Result<()> {
    match cmd {
        MediaCommand::Config(a) => config(a),
        MediaCommand::PatchIso(a) => patch_iso(a),
    }
}

fn detect_format(data: &[u8]) -> BootstrapFormat {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) if v.get("ignition").is_some() => BootstrapFormat::Ignition,
        _ => BootstrapFormat::CloudConfig,
    }
}

pub fn config(a: ConfigArgs) -> anyhow::Result<()> {
    let data = std::fs::read(&a.user_data)
        .with_context(|| format!("reading {}", a.user_data.display()))?;
    let format = match a.bootstrap_format.as_deref() {
        Some(f) => BootstrapFormat::from_secret_format(Some(f)).map_err(anyhow::Error::msg)?,
        None => detect_format(&data),
    };
    let mut kv = BTreeMap::new();
    for m in &a.meta_data {
        let (k, v) = m
            .split_once('=')
            .with_context(|| format!("--meta-data {m:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--meta-data {m:?}: empty key");
        }
        kv.insert(k.to_string(), v.to_string());
    }
    let name = kv.remove("local-hostname").unwrap_or_default();
    let meta = MetaData {
        instance_id: kv.remove("instance-id").unwrap_or_else(|| {
            if name.is_empty() {
                "beskar7".into()
            } else {
                name.clone()
            }
        }),
        local_hostname: name,
        provider_id: kv.remove("provider-id").unwrap_or_default(),
        extra: kv,
    };
    let rendered = a.os.render(&data, format, &meta)?;
    let img = build_config_volume(a.os, a.format, &rendered)?;
    write_atomically(&a.output, |f| f.write_all(&img))?;
    eprintln!(
        "wrote {} ({} bytes, {} volume labelled {:?}: {})",
        a.output.display(),
        img.len(),
        a.format,
        rendered.volume_label.unwrap_or_default(),
        rendered
            .volume_files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

pub fn patch_iso(a: PatchIsoArgs) -> anyhow::Result<()> {
    let args = split_kernel_args(&a.kernel_args);
    if args.is_empty() {
        bail!("--kernel-args is empty");
    }
    let f =
        std::fs::File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let patch = patch_iso_with(
        &f,
        &PatchOptions {
            kernel_args: args,
            add_uefi_path: a.add_uefi_path,
        },
    )
    .with_context(|| format!("patching {}", a.input.display()))?;
    let patched = PatchedIso::new(f, std::sync::Arc::new(patch));
    write_atomically(&a.output, |out| {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
        patched.write_to(&mut w)?;
        w.flush()
    })?;
    for p in patched.patch().boot_paths() {
        eprintln!(
            "boot path {:?} {:?} ({}): {} kernel line(s) carry the arguments{}",
            p.firmware,
            p.loader,
            p.image,
            p.kernel_lines,
            if p.added { ", added by the patch" } else { "" }
        );
    }
    for c in patched.patch().configs() {
        eprintln!(
            "{} ({:?}): {} kernel line(s){}",
            c.path,
            c.loader,
            c.kernel_lines,
            if c.rewritten {
                ", rewritten"
            } else {
                ", unchanged"
            }
        );
    }
    for w in patched.patch().warnings() {
        eprintln!("warning: {w}");
    }
    eprintln!("wrote {} ({} bytes)", a.output.display(), patched.len());
    Ok(())
}

fn write_atomically(
    path: &std::path::Path,
    f: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("beskar7-tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let r = f(&mut file).and_then(|_| file.sync_all());
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

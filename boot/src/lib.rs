//! OS boot profiles, config-volume images and ISO kernel-argument patching. No network, no Kubernetes.
//!
//! - [`os`]: per-OS facts (kernel arguments, volume label and layout, bootstrap rendering) and
//!   the [`DeliveryPlan`] for a machine.
//! - [`volume`]: deterministic in-memory ISO 9660 (Joliet + Rock Ridge) and FAT12 config volumes.
//! - [`patch`]: appending kernel arguments to the bootloader configs of an ISO, described as the
//!   source bytes plus replaced ranges, readable at any offset.

pub(crate) mod bootcfg;
pub mod efi_loader;
pub mod eltorito;
pub mod fat;
pub mod fatfs;
pub mod iso9660;
pub mod isofs;
pub mod kargs;
pub mod network;
pub mod os;
pub mod partition;
pub mod patch;
pub mod pe;
pub(crate) mod sdboot;
pub mod source;
pub(crate) mod uefi_add;
pub mod volume;

pub use kargs::{ConfigKind, append_kernel_args, split_kernel_args};
pub use network::{Cidr, StaticInterface, StaticNetwork};
pub use os::{
    BootstrapFormat, DeliveryPlan, KernelArg, MetaData, OsFamily, PlanInput, ProfileError,
    ProvisioningMode, RenderedConfig, VolumePlan, build_config_volume, plan_delivery,
    resolve_kernel_args,
};
pub use patch::{
    BootPath, ConfigFound, Firmware, IsoPatch, Loader, PatchError, PatchOptions, PatchedIso, Piece,
    TailPiece, patch_iso, patch_iso_with,
};
pub use source::{ReadAt, SeekSource};
pub use volume::{VolumeError, VolumeFile, VolumeFormat, build_volume};

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Patch(#[from] PatchError),
}

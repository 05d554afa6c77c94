//! Config volumes: a label and a few small files, written as ISO 9660 or FAT.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A file to place on a config volume. `path` is relative, `/`-separated (`combustion/script`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub data: Vec<u8>,
}

impl VolumeFile {
    pub fn new(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            data: data.into(),
        }
    }
}

/// On-disk format of a config volume, chosen by the virtual-media slot it goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    /// ISO 9660 with Joliet and Rock Ridge, for a CD/DVD slot.
    Iso,
    /// FAT12, for a Floppy or USBStick slot.
    Fat,
}

impl VolumeFormat {
    /// The file name the artifact server uses for this format.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Iso => "config.iso",
            Self::Fat => "config.img",
        }
    }
}

impl fmt::Display for VolumeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Iso => "iso",
            Self::Fat => "fat",
        })
    }
}

impl FromStr for VolumeFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "iso" => Ok(Self::Iso),
            "fat" => Ok(Self::Fat),
            other => Err(format!(
                "unknown volume format {other:?}: expected iso or fat"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("invalid volume label {0:?} (ASCII, 1-32 characters for ISO 9660, 1-11 for FAT)")]
    BadLabel(String),
    #[error(
        "invalid file path {0:?} on a config volume (relative, no empty, `.` or `..` parts, names up to 160 bytes)"
    )]
    BadPath(String),
    #[error("path {0:?} is given twice or is both a file and a directory")]
    Conflict(String),
    #[error("config volume contents too large for {0}")]
    TooLarge(&'static str),
}

/// Checks paths and returns the files sorted by path.
pub(crate) fn normalise_files(files: &[VolumeFile]) -> Result<Vec<VolumeFile>, VolumeError> {
    let mut out: Vec<VolumeFile> = files.to_vec();
    for f in &out {
        if f.path.is_empty()
            || f.path.starts_with('/')
            || f.path.split('/').any(|p| {
                p.is_empty() || p == "." || p == ".." || p.contains('\0') || p.contains('\\')
            })
        {
            return Err(VolumeError::BadPath(f.path.clone()));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    for w in out.windows(2) {
        if w[0].path == w[1].path || w[1].path.starts_with(&format!("{}/", w[0].path)) {
            return Err(VolumeError::Conflict(w[1].path.clone()));
        }
    }
    Ok(out)
}

/// Builds a config volume in memory. Deterministic: the same input gives the same bytes.
pub fn build_volume(
    format: VolumeFormat,
    label: &str,
    files: &[VolumeFile],
) -> Result<Vec<u8>, VolumeError> {
    match format {
        VolumeFormat::Iso => crate::iso9660::build_iso(label, files),
        VolumeFormat::Fat => crate::fat::build_fat(label, files),
    }
}

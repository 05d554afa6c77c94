//! OS profiles: how each supported OS is told where its configuration is, and what it reads.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::network::StaticNetwork;
use crate::volume::{VolumeFile, VolumeFormat};

/// kiwi (`dracut/modules.d/59kiwi-dump-reboot`): pass the installer's kernel arguments to the
/// first boot of the installed system.
pub const LEAP_MICRO_PASS_BOOT_PARAMS: &str = "rd.kiwi.install.pass.bootparam";

/// The operating systems Beskar7 knows how to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OsFamily {
    #[serde(rename = "kairos")]
    Kairos,
    #[serde(rename = "talos")]
    Talos,
    #[serde(rename = "flatcar")]
    Flatcar,
    #[serde(rename = "LeapMicro")]
    LeapMicro,
}

impl OsFamily {
    pub const ALL: [OsFamily; 4] = [Self::Kairos, Self::Talos, Self::Flatcar, Self::LeapMicro];

    /// The spelling used in the API (`kairos`, `talos`, `flatcar`, `LeapMicro`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kairos => "kairos",
            Self::Talos => "talos",
            Self::Flatcar => "flatcar",
            Self::LeapMicro => "LeapMicro",
        }
    }

    /// Label of the config volume the OS reads at boot for a bootstrap format, if it reads one.
    /// Leap Micro: Ignition reads only a volume labelled `ignition` (Combustion reads that label
    /// too); a Combustion script goes on a volume labelled `combustion`.
    pub fn volume_label_for(self, format: BootstrapFormat) -> Option<&'static str> {
        match (self, format) {
            (Self::LeapMicro, BootstrapFormat::Ignition) => Some("ignition"),
            _ => self.volume_label(),
        }
    }

    /// Label of the config volume the OS reads at boot (for its cloud-config/script format).
    pub fn volume_label(self) -> Option<&'static str> {
        match self {
            Self::Kairos => Some("cidata"),
            Self::Talos => Some("metal-iso"),
            Self::Flatcar => None,
            Self::LeapMicro => Some("combustion"),
        }
    }

    /// Kernel arguments that point the OS at a configuration URL.
    pub fn config_url_args(self, url: &str, format: BootstrapFormat) -> Vec<String> {
        match self {
            Self::Kairos => vec![format!("config_url={url}")],
            Self::Talos => vec![format!("talos.config={url}")],
            Self::Flatcar => vec![
                format!("ignition.config.url={url}"),
                "flatcar.first_boot=1".into(),
            ],
            // Combustion and Ignition run on the first boot of the installed system; kiwi's
            // SelfInstall hands the installer's arguments to that boot only when asked to.
            Self::LeapMicro => vec![
                match format {
                    BootstrapFormat::Ignition => format!("ignition.config.url={url}"),
                    BootstrapFormat::CloudConfig => format!("combustion.url={url}"),
                },
                LEAP_MICRO_PASS_BOOT_PARAMS.into(),
            ],
        }
    }

    /// Kernel arguments needed for the OS to read its config volume (none for most).
    pub fn volume_args(self) -> Vec<String> {
        match self {
            Self::Talos => vec!["talos.config=metal-iso".into()],
            _ => Vec::new(),
        }
    }

    /// The official ISO of this OS has no UEFI boot path (Flatcar: ISOLINUX only), so the
    /// provider adds one when it serves the image for a UEFI boot.
    pub fn iso_lacks_uefi(self) -> bool {
        self == Self::Flatcar
    }
}

impl fmt::Display for OsFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OsFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown OS family {s:?}: expected one of kairos, talos, flatcar, LeapMicro"
                )
            })
    }
}

/// How the machine gets its configuration (mirrors the API's `provisioningMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProvisioningMode {
    PreBakedISO,
    RemoteConfig,
    BootstrapData,
}

impl FromStr for ProvisioningMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "PreBakedISO" => Ok(Self::PreBakedISO),
            "RemoteConfig" => Ok(Self::RemoteConfig),
            "BootstrapData" => Ok(Self::BootstrapData),
            _ => Err(format!(
                "unknown provisioning mode {s:?}: expected PreBakedISO, RemoteConfig or BootstrapData"
            )),
        }
    }
}

/// The format of CAPI bootstrap data (the bootstrap Secret's `format` key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BootstrapFormat {
    #[default]
    #[serde(rename = "cloud-config")]
    CloudConfig,
    #[serde(rename = "ignition")]
    Ignition,
}

impl BootstrapFormat {
    /// Reads the Secret's `format` value; absent or empty means cloud-config (the CAPI default).
    pub fn from_secret_format(v: Option<&str>) -> Result<Self, String> {
        match v.map(str::trim) {
            None | Some("") | Some("cloud-config") => Ok(Self::CloudConfig),
            Some("ignition") => Ok(Self::Ignition),
            Some(o) => Err(format!(
                "unknown bootstrap data format {o:?}: expected cloud-config or ignition"
            )),
        }
    }
}

/// Instance meta-data written next to the configuration (`meta-data`, NoCloud style).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaData {
    pub instance_id: String,
    pub local_hostname: String,
    pub provider_id: String,
    /// Further keys, written after the three above.
    pub extra: BTreeMap<String, String>,
}

impl MetaData {
    /// Renders YAML: `instance-id`, `local-hostname`, `provider-id`, then the extra keys sorted.
    pub fn render(&self) -> String {
        let mut m = serde_yaml::Mapping::new();
        m.insert("instance-id".into(), self.instance_id.clone().into());
        m.insert("local-hostname".into(), self.local_hostname.clone().into());
        m.insert("provider-id".into(), self.provider_id.clone().into());
        for (k, v) in &self.extra {
            if !matches!(k.as_str(), "instance-id" | "local-hostname" | "provider-id") {
                m.insert(k.clone().into(), v.clone().into());
            }
        }
        serde_yaml::to_string(&m).expect("mapping of strings serialises")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("{os} does not read {format:?} bootstrap data: {hint}")]
    UnsupportedFormat {
        os: OsFamily,
        format: BootstrapFormat,
        hint: &'static str,
    },
    #[error("bootstrap data for {os} is not valid {what}: {err}")]
    Invalid {
        os: OsFamily,
        what: &'static str,
        err: String,
    },
    #[error("{os} reads no config volume: its configuration is only passed by URL")]
    NoVolume { os: OsFamily },
    #[error("provisioning mode RemoteConfig needs a configURL")]
    MissingConfigUrl,
}

/// Bootstrap data rendered for one OS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedConfig {
    /// The document served at the config URL.
    pub document: Vec<u8>,
    /// Its media type.
    pub content_type: &'static str,
    /// Files of the config volume (for OSes that read one), including `meta-data`.
    pub volume_files: Vec<VolumeFile>,
    /// Label of that volume (None when the OS reads no volume).
    pub volume_label: Option<&'static str>,
}

/// First line of a cloud-config that cloud-init renders as a Jinja template (CAPI's kubeadm
/// bootstrap writes it so `{{ ds.meta_data.provider_id }}` reaches the kubelet flags).
const JINJA_HEADER: &str = "## template: jinja";

/// Kairos runs yip, not cloud-init, so nothing would render a Jinja cloud-config on the machine:
/// the instance-data variables are substituted here, from the same values as the config
/// volume's meta-data. Any other expression is refused rather than passed on unrendered.
fn render_instance_data(text: &str, meta: &MetaData) -> Result<String, ProfileError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| ProfileError::Invalid {
            os: OsFamily::Kairos,
            what: "Jinja cloud-config",
            err: "an expression opened with {{ is never closed".into(),
        })?;
        let value = match after[..end].trim() {
            "ds.meta_data.provider_id" | "ds.meta_data['provider-id']" => &meta.provider_id,
            "ds.meta_data.local_hostname" | "v1.local_hostname" | "local_hostname" => {
                &meta.local_hostname
            }
            "ds.meta_data.instance_id" | "v1.instance_id" | "instance_id" => &meta.instance_id,
            other => {
                return Err(ProfileError::Invalid {
                    os: OsFamily::Kairos,
                    what: "Jinja cloud-config",
                    err: format!(
                        "`{{{{ {other} }}}}` cannot be rendered: Kairos does not run cloud-init's \
                         Jinja, and only ds.meta_data.provider_id, local_hostname and \
                         instance_id are substituted"
                    ),
                });
            }
        };
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn kairos_user_data(
    data: &[u8],
    meta: &MetaData,
    network: &StaticNetwork,
) -> Result<Vec<u8>, ProfileError> {
    let text = std::str::from_utf8(data).map_err(|e| ProfileError::Invalid {
        os: OsFamily::Kairos,
        what: "UTF-8",
        err: e.to_string(),
    })?;
    let rendered;
    let text = match text.split_once('\n') {
        Some((first, body)) if first.trim_end() == JINJA_HEADER => {
            rendered = render_instance_data(body, meta)?;
            rendered.as_str()
        }
        _ => text,
    };
    let mut value: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text).map_err(|e| ProfileError::Invalid {
            os: OsFamily::Kairos,
            what: "cloud-config YAML",
            err: e.to_string(),
        })?
    };
    if value.is_null() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    let map = value.as_mapping_mut().ok_or(ProfileError::Invalid {
        os: OsFamily::Kairos,
        what: "cloud-config",
        err: "the document is not a YAML mapping".into(),
    })?;
    let install = map
        .entry("install".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let install = install.as_mapping_mut().ok_or(ProfileError::Invalid {
        os: OsFamily::Kairos,
        what: "cloud-config",
        err: "`install` is not a mapping".into(),
    })?;
    install.entry("auto".into()).or_insert(true.into());
    install.entry("device".into()).or_insert("auto".into());
    install.entry("reboot".into()).or_insert(true.into());
    network.merge_kairos(map)?;
    // A mapping used as a key (`{ {a: 1}: x }`, `? [a]: b`) parses but does not serialise back.
    let body = serde_yaml::to_string(&value).map_err(|e| ProfileError::Invalid {
        os: OsFamily::Kairos,
        what: "cloud-config",
        err: format!(
            "the document cannot be written back as YAML (a mapping or list used as a key?): {e}"
        ),
    })?;
    Ok(format!("#cloud-config\n{body}").into_bytes())
}

fn check_ignition(os: OsFamily, data: &[u8]) -> Result<(), ProfileError> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| ProfileError::Invalid {
        os,
        what: "Ignition JSON",
        err: e.to_string(),
    })?;
    if v.get("ignition").and_then(|i| i.get("version")).is_none() {
        return Err(ProfileError::Invalid {
            os,
            what: "Ignition",
            err: "missing ignition.version".into(),
        });
    }
    Ok(())
}

impl OsFamily {
    /// Renders CAPI bootstrap data for this OS: the document served by URL and the files of
    /// its config volume.
    pub fn render(
        self,
        data: &[u8],
        format: BootstrapFormat,
        meta: &MetaData,
    ) -> Result<RenderedConfig, ProfileError> {
        self.render_with_network(data, format, meta, &StaticNetwork::default())
    }

    /// [`Self::render`] with a static network configuration merged into the OS's own
    /// configuration (see [`crate::network`]); the kernel arguments come from
    /// [`StaticNetwork::kernel_args`].
    pub fn render_with_network(
        self,
        data: &[u8],
        format: BootstrapFormat,
        meta: &MetaData,
        network: &StaticNetwork,
    ) -> Result<RenderedConfig, ProfileError> {
        let mut r = self.render_files(data, format, meta, network)?;
        if !r.volume_files.is_empty() {
            r.volume_label = self.volume_label_for(format);
        }
        Ok(r)
    }

    /// Refuses bootstrap formats the OS never reads (Leap Micro's cloud-config format is
    /// accepted here: it may be a Combustion script, checked when rendering).
    pub fn check_format(self, format: BootstrapFormat) -> Result<(), ProfileError> {
        match (self, format) {
            (Self::Kairos, BootstrapFormat::Ignition)
            | (Self::Talos, BootstrapFormat::Ignition)
            | (Self::Flatcar, BootstrapFormat::CloudConfig) => self
                .render_files(b"", format, &MetaData::default(), &StaticNetwork::default())
                .map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The files, before the volume label is chosen.
    fn render_files(
        self,
        data: &[u8],
        format: BootstrapFormat,
        meta: &MetaData,
        network: &StaticNetwork,
    ) -> Result<RenderedConfig, ProfileError> {
        let meta_file = VolumeFile::new("meta-data", meta.render());
        let ignition = |data: &[u8]| -> Result<Vec<u8>, ProfileError> {
            check_ignition(self, data)?;
            if network.is_empty() {
                return Ok(data.to_vec());
            }
            let mut v: serde_json::Value =
                serde_json::from_slice(data).map_err(|e| ProfileError::Invalid {
                    os: self,
                    what: "Ignition JSON",
                    err: e.to_string(),
                })?;
            network.merge_ignition(self, &mut v)?;
            Ok(serde_json::to_vec(&v).expect("a JSON value serialises"))
        };
        match (self, format) {
            (Self::Kairos, BootstrapFormat::CloudConfig) => {
                let user = kairos_user_data(data, meta, network)?;
                Ok(RenderedConfig {
                    volume_label: None,
                    document: user.clone(),
                    content_type: "text/cloud-config",
                    volume_files: vec![VolumeFile::new("user-data", user), meta_file],
                })
            }
            (Self::Talos, BootstrapFormat::CloudConfig) => {
                let invalid = |e: String| ProfileError::Invalid {
                    os: self,
                    what: "Talos machine config YAML",
                    err: e,
                };
                let value: serde_yaml::Value =
                    serde_yaml::from_slice(data).map_err(|e| invalid(e.to_string()))?;
                let data = if network.is_empty() {
                    data.to_vec()
                } else {
                    let mut map = match value {
                        serde_yaml::Value::Mapping(m) => m,
                        _ => {
                            return Err(invalid("the machine config is not a YAML mapping".into()));
                        }
                    };
                    network.merge_talos(&mut map)?;
                    serde_yaml::to_string(&map)
                        .map_err(|e| invalid(e.to_string()))?
                        .into_bytes()
                };
                Ok(RenderedConfig {
                    volume_label: None,
                    document: data.clone(),
                    content_type: "application/yaml",
                    volume_files: vec![VolumeFile::new("config.yaml", data), meta_file],
                })
            }
            (Self::Flatcar, BootstrapFormat::Ignition) => {
                let data = ignition(data)?;
                Ok(RenderedConfig {
                    volume_label: None,
                    document: data,
                    content_type: "application/json",
                    volume_files: Vec::new(),
                })
            }
            (Self::LeapMicro, BootstrapFormat::Ignition) => {
                let data = ignition(data)?;
                Ok(RenderedConfig {
                    volume_label: None,
                    document: data.clone(),
                    content_type: "application/json",
                    volume_files: vec![VolumeFile::new("ignition/config.ign", data), meta_file],
                })
            }
            (Self::LeapMicro, BootstrapFormat::CloudConfig) if data.starts_with(b"#!") => {
                let data = if network.is_empty() {
                    data.to_vec()
                } else {
                    let script = std::str::from_utf8(data).map_err(|e| ProfileError::Invalid {
                        os: self,
                        what: "UTF-8 Combustion script",
                        err: e.to_string(),
                    })?;
                    network.merge_combustion(script).into_bytes()
                };
                Ok(RenderedConfig {
                    volume_label: None,
                    document: data.clone(),
                    content_type: "text/x-shellscript",
                    volume_files: vec![VolumeFile::new("combustion/script", data), meta_file],
                })
            }
            (Self::Kairos, BootstrapFormat::Ignition) => Err(ProfileError::UnsupportedFormat {
                os: self,
                format,
                hint: "Kairos reads cloud-config; set the bootstrap format to cloud-config",
            }),
            (Self::Talos, BootstrapFormat::Ignition) => Err(ProfileError::UnsupportedFormat {
                os: self,
                format,
                hint: "Talos reads its machine configuration (use the Talos bootstrap provider)",
            }),
            (Self::Flatcar, BootstrapFormat::CloudConfig) => Err(ProfileError::UnsupportedFormat {
                os: self,
                format,
                hint: "Flatcar is configured by Ignition; set the bootstrap format to ignition (KubeadmConfig spec.format: ignition)",
            }),
            (Self::LeapMicro, BootstrapFormat::CloudConfig) => {
                Err(ProfileError::UnsupportedFormat {
                    os: self,
                    format,
                    hint: "Leap Micro reads Ignition (set the bootstrap format to ignition) or a Combustion script starting with #!",
                })
            }
        }
    }
}

/// A kernel argument, possibly pointing at the config URL the artifact server will assign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelArg {
    Literal(String),
    /// `<prefix><served config URL>`, e.g. prefix `config_url=`.
    ServedConfigUrl {
        prefix: String,
    },
}

impl KernelArg {
    pub fn resolve(&self, served_config_url: &str) -> String {
        match self {
            Self::Literal(s) => s.clone(),
            Self::ServedConfigUrl { prefix } => format!("{prefix}{served_config_url}"),
        }
    }
}

/// Resolves a list of kernel arguments with the URL of the served config document.
pub fn resolve_kernel_args(args: &[KernelArg], served_config_url: &str) -> Vec<String> {
    args.iter().map(|a| a.resolve(served_config_url)).collect()
}

/// The config volume to build and insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePlan {
    pub format: VolumeFormat,
    pub label: &'static str,
}

/// What to do for one machine: kernel arguments to bake into the boot ISO, a config volume to
/// insert, whether the config document is served by URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryPlan {
    pub os: OsFamily,
    pub mode: ProvisioningMode,
    /// Empty: serve the boot ISO unchanged.
    pub kernel_args: Vec<KernelArg>,
    pub config_volume: Option<VolumePlan>,
    /// The rendered config document is served at the machine's config URL.
    pub serve_config: bool,
    /// The served ISO gets a UEFI boot path of the provider's (Flatcar) for a UEFI boot.
    pub add_uefi_path: bool,
}

/// Inputs to [`plan_delivery`].
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub os: OsFamily,
    pub mode: ProvisioningMode,
    pub format: BootstrapFormat,
    /// Format of the free virtual-media slot for a config volume (None: no second slot).
    pub config_slot: Option<VolumeFormat>,
    /// The user's `configURL` (RemoteConfig).
    pub config_url: Option<&'a str>,
}

/// Decides how configuration reaches the machine (DESIGN.md section 5).
pub fn plan_delivery(input: &PlanInput<'_>) -> Result<DeliveryPlan, ProfileError> {
    let os = input.os;
    let mut plan = DeliveryPlan {
        os,
        mode: input.mode,
        kernel_args: Vec::new(),
        config_volume: None,
        serve_config: false,
        add_uefi_path: os.iso_lacks_uefi() && input.mode != ProvisioningMode::PreBakedISO,
    };
    match input.mode {
        ProvisioningMode::PreBakedISO => {}
        ProvisioningMode::RemoteConfig => {
            let url = input
                .config_url
                .filter(|u| !u.trim().is_empty())
                .ok_or(ProfileError::MissingConfigUrl)?;
            plan.kernel_args = os
                .config_url_args(url, input.format)
                .into_iter()
                .map(KernelArg::Literal)
                .collect();
        }
        ProvisioningMode::BootstrapData => {
            // fail early on formats the OS cannot read
            os.check_format(input.format)?;
            match (os.volume_label_for(input.format), input.config_slot) {
                (Some(label), Some(format)) => {
                    plan.config_volume = Some(VolumePlan { format, label });
                    plan.kernel_args = os
                        .volume_args()
                        .into_iter()
                        .map(KernelArg::Literal)
                        .collect();
                }
                _ => {
                    plan.serve_config = true;
                    plan.kernel_args = os
                        .config_url_args("\u{0}", input.format)
                        .into_iter()
                        .map(|a| match a.split_once('\u{0}') {
                            Some((prefix, _)) => KernelArg::ServedConfigUrl {
                                prefix: prefix.to_string(),
                            },
                            None => KernelArg::Literal(a),
                        })
                        .collect();
                }
            }
        }
    }
    Ok(plan)
}

/// Builds the config volume an OS reads, from rendered files.
pub fn build_config_volume(
    os: OsFamily,
    format: VolumeFormat,
    rendered: &RenderedConfig,
) -> Result<Vec<u8>, crate::Error> {
    let label = rendered.volume_label.ok_or(ProfileError::NoVolume { os })?;
    Ok(crate::volume::build_volume(
        format,
        label,
        &rendered.volume_files,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MetaData {
        MetaData {
            instance_id: "ns-m1".into(),
            local_hostname: "m1".into(),
            provider_id: "beskar7://ns/host1".into(),
            extra: Default::default(),
        }
    }

    /// Found by the `os_render` fuzz target: a complex key parsed, then panicked on writing back.
    #[test]
    fn kairos_cloud_config_with_a_mapping_as_key_is_an_error_not_a_panic() {
        for doc in [
            "## template: jinja\n#cloud-config\nhostname: { {.dsmeta_data.local_hostname }}\n",
            "#cloud-config\nwrite_files: { {a: 1}: c }\n",
        ] {
            let e = OsFamily::Kairos
                .render(doc.as_bytes(), BootstrapFormat::CloudConfig, &meta())
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    ProfileError::Invalid {
                        what: "cloud-config",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("cannot be written back"), "{e}");
        }
    }

    #[test]
    fn os_family_spellings() {
        for os in OsFamily::ALL {
            assert_eq!(os.as_str().parse::<OsFamily>().unwrap(), os);
        }
        assert!("Kairos".parse::<OsFamily>().is_err());
        assert!("leapmicro".parse::<OsFamily>().is_err());
        assert_eq!(
            serde_json::to_string(&OsFamily::LeapMicro).unwrap(),
            "\"LeapMicro\""
        );
    }

    #[test]
    fn config_url_args_per_os() {
        let u = "https://a/t/config";
        assert_eq!(
            OsFamily::Kairos.config_url_args(u, BootstrapFormat::CloudConfig),
            vec!["config_url=https://a/t/config"]
        );
        assert_eq!(
            OsFamily::Talos.config_url_args(u, BootstrapFormat::CloudConfig),
            vec!["talos.config=https://a/t/config"]
        );
        assert_eq!(
            OsFamily::Flatcar.config_url_args(u, BootstrapFormat::Ignition),
            vec![
                "ignition.config.url=https://a/t/config",
                "flatcar.first_boot=1"
            ]
        );
        assert_eq!(
            OsFamily::LeapMicro.config_url_args(u, BootstrapFormat::CloudConfig),
            vec![
                "combustion.url=https://a/t/config",
                "rd.kiwi.install.pass.bootparam"
            ]
        );
    }

    #[test]
    fn kairos_gets_install_auto_and_header() {
        let r = OsFamily::Kairos
            .render(
                b"#cloud-config\nusers:\n- name: kairos\n",
                BootstrapFormat::CloudConfig,
                &meta(),
            )
            .unwrap();
        let s = String::from_utf8(r.document.clone()).unwrap();
        assert!(s.starts_with("#cloud-config\n"), "{s}");
        let v: serde_yaml::Value = serde_yaml::from_str(&s).unwrap();
        assert_eq!(v["install"]["auto"], serde_yaml::Value::Bool(true));
        assert_eq!(
            v["users"][0]["name"],
            serde_yaml::Value::String("kairos".into())
        );
        let explicit = OsFamily::Kairos
            .render(
                b"install:\n  auto: false\n",
                BootstrapFormat::CloudConfig,
                &meta(),
            )
            .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_slice(&explicit.document).unwrap();
        assert_eq!(v["install"]["auto"], serde_yaml::Value::Bool(false));
        assert_eq!(
            r.volume_files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
            vec!["user-data", "meta-data"]
        );
    }

    #[test]
    fn kairos_renders_the_jinja_instance_data_capi_writes() {
        let data = b"## template: jinja\n#cloud-config\nwrite_files:\n- path: /run/kubeadm/kubeadm.yaml\n  content: |\n    nodeRegistration:\n      name: '{{ ds.meta_data.local_hostname }}'\n      kubeletExtraArgs:\n      - name: provider-id\n        value: '{{ ds.meta_data.provider_id }}'\n";
        let m = meta();
        let r = OsFamily::Kairos
            .render(data, BootstrapFormat::CloudConfig, &m)
            .unwrap();
        let s = String::from_utf8(r.document).unwrap();
        assert!(s.starts_with("#cloud-config\n"), "{s}");
        assert!(!s.contains("{{") && !s.contains("jinja"), "{s}");
        let v: serde_yaml::Value = serde_yaml::from_str(&s).unwrap();
        let content = v["write_files"][0]["content"].as_str().unwrap();
        assert!(
            content.contains(&format!("value: '{}'", m.provider_id)),
            "{content}"
        );
        assert!(
            content.contains(&format!("name: '{}'", m.local_hostname)),
            "{content}"
        );

        // An expression only cloud-init could evaluate is refused, naming it.
        let err = OsFamily::Kairos
            .render(
                b"## template: jinja\n#cloud-config\nhostname: {{ v1.region }}\n",
                BootstrapFormat::CloudConfig,
                &m,
            )
            .unwrap_err();
        assert!(err.to_string().contains("v1.region"), "{err}");
        // Without the header, braces are data.
        let plain = OsFamily::Kairos
            .render(
                b"#cloud-config\nruncmd:\n- echo '{{ not jinja }}'\n",
                BootstrapFormat::CloudConfig,
                &m,
            )
            .unwrap();
        assert!(
            String::from_utf8(plain.document)
                .unwrap()
                .contains("{{ not jinja }}")
        );
    }

    #[test]
    fn meta_data_keys() {
        let s = meta().render();
        assert_eq!(
            s,
            "instance-id: ns-m1\nlocal-hostname: m1\nprovider-id: beskar7://ns/host1\n"
        );
    }

    #[test]
    fn unsupported_formats_are_errors() {
        assert!(matches!(
            OsFamily::Flatcar.render(b"#cloud-config\n", BootstrapFormat::CloudConfig, &meta()),
            Err(ProfileError::UnsupportedFormat { .. })
        ));
        assert!(matches!(
            OsFamily::Kairos.render(b"{}", BootstrapFormat::Ignition, &meta()),
            Err(ProfileError::UnsupportedFormat { .. })
        ));
        assert!(matches!(
            OsFamily::LeapMicro.render(b"#cloud-config\n", BootstrapFormat::CloudConfig, &meta()),
            Err(ProfileError::UnsupportedFormat { .. })
        ));
        let ign = br#"{"ignition":{"version":"3.4.0"}}"#;
        let r = OsFamily::LeapMicro
            .render(ign, BootstrapFormat::Ignition, &meta())
            .unwrap();
        assert_eq!(r.volume_files[0].path, "ignition/config.ign");
        let r = OsFamily::LeapMicro
            .render(
                b"#!/bin/sh\n# combustion: network\n",
                BootstrapFormat::CloudConfig,
                &meta(),
            )
            .unwrap();
        assert_eq!(r.volume_files[0].path, "combustion/script");
        assert!(
            OsFamily::Flatcar
                .render(b"not json", BootstrapFormat::Ignition, &meta())
                .is_err()
        );
    }

    #[test]
    fn plans() {
        let p = |os, mode, format, slot, url| {
            plan_delivery(&PlanInput {
                os,
                mode,
                format,
                config_slot: slot,
                config_url: url,
            })
        };
        use BootstrapFormat::*;
        use ProvisioningMode::*;
        let pre = p(OsFamily::Talos, PreBakedISO, CloudConfig, None, None).unwrap();
        assert!(pre.kernel_args.is_empty() && pre.config_volume.is_none() && !pre.serve_config);

        let rc = p(
            OsFamily::Kairos,
            RemoteConfig,
            CloudConfig,
            Some(VolumeFormat::Iso),
            Some("http://x/c"),
        )
        .unwrap();
        assert_eq!(
            rc.kernel_args,
            vec![KernelArg::Literal("config_url=http://x/c".into())]
        );
        assert!(!rc.serve_config && rc.config_volume.is_none());
        assert_eq!(
            p(OsFamily::Kairos, RemoteConfig, CloudConfig, None, None),
            Err(ProfileError::MissingConfigUrl)
        );

        let talos_vol = p(
            OsFamily::Talos,
            BootstrapData,
            CloudConfig,
            Some(VolumeFormat::Fat),
            None,
        )
        .unwrap();
        assert_eq!(
            talos_vol.config_volume,
            Some(VolumePlan {
                format: VolumeFormat::Fat,
                label: "metal-iso"
            })
        );
        assert_eq!(
            talos_vol.kernel_args,
            vec![KernelArg::Literal("talos.config=metal-iso".into())]
        );
        assert!(!talos_vol.serve_config);

        let talos_url = p(OsFamily::Talos, BootstrapData, CloudConfig, None, None).unwrap();
        assert!(talos_url.serve_config && talos_url.config_volume.is_none());
        assert_eq!(
            resolve_kernel_args(&talos_url.kernel_args, "https://s/t/config"),
            vec!["talos.config=https://s/t/config"]
        );

        let kairos_vol = p(
            OsFamily::Kairos,
            BootstrapData,
            CloudConfig,
            Some(VolumeFormat::Iso),
            None,
        )
        .unwrap();
        assert!(kairos_vol.kernel_args.is_empty());
        assert_eq!(kairos_vol.config_volume.unwrap().label, "cidata");

        let flatcar = p(
            OsFamily::Flatcar,
            BootstrapData,
            Ignition,
            Some(VolumeFormat::Iso),
            None,
        )
        .unwrap();
        assert!(flatcar.serve_config && flatcar.config_volume.is_none() && flatcar.add_uefi_path);
        assert!(
            !p(OsFamily::Flatcar, PreBakedISO, Ignition, None, None)
                .unwrap()
                .add_uefi_path
        );
        assert_eq!(
            resolve_kernel_args(&flatcar.kernel_args, "https://s/t/config"),
            vec![
                "ignition.config.url=https://s/t/config",
                "flatcar.first_boot=1"
            ]
        );
        assert!(matches!(
            p(OsFamily::Flatcar, BootstrapData, CloudConfig, None, None),
            Err(ProfileError::UnsupportedFormat { .. })
        ));

        let leap = p(
            OsFamily::LeapMicro,
            BootstrapData,
            Ignition,
            Some(VolumeFormat::Fat),
            None,
        )
        .unwrap();
        assert_eq!(leap.config_volume.unwrap().label, "ignition");
        let leap_script = p(
            OsFamily::LeapMicro,
            BootstrapData,
            CloudConfig,
            Some(VolumeFormat::Iso),
            None,
        );
        assert_eq!(
            leap_script.unwrap().config_volume.unwrap().label,
            "combustion"
        );
        let leap_url = p(OsFamily::LeapMicro, BootstrapData, Ignition, None, None).unwrap();
        assert_eq!(
            resolve_kernel_args(&leap_url.kernel_args, "u"),
            vec!["ignition.config.url=u", "rd.kiwi.install.pass.bootparam"]
        );
    }

    #[test]
    fn every_os_gets_the_static_network_in_its_own_configuration() {
        let net = StaticNetwork {
            interfaces: vec![crate::network::StaticInterface {
                mac: Some("52:54:00:aa:bb:cc".into()),
                name: None,
                addresses: vec![crate::network::Cidr::parse("10.1.0.5/24").unwrap()],
                gateway: Some("10.1.0.1".parse().unwrap()),
            }],
            nameservers: vec!["10.1.0.53".parse().unwrap()],
        };
        let ign = br#"{"ignition": {"version": "3.4.0"}}"#;
        for (os, data, format, file, needle) in [
            (
                OsFamily::Kairos,
                &b"#cloud-config\n"[..],
                BootstrapFormat::CloudConfig,
                "user-data",
                "MACAddress=52:54:00:aa:bb:cc",
            ),
            (
                OsFamily::Talos,
                &b"version: v1alpha1\nmachine: {type: worker}\n"[..],
                BootstrapFormat::CloudConfig,
                "config.yaml",
                "hardwareAddr: 52:54:00:aa:bb:cc",
            ),
            (
                OsFamily::LeapMicro,
                &ign[..],
                BootstrapFormat::Ignition,
                "ignition/config.ign",
                "beskar7-0.nmconnection",
            ),
            (
                OsFamily::LeapMicro,
                &b"#!/bin/bash\n# combustion: network\n"[..],
                BootstrapFormat::CloudConfig,
                "combustion/script",
                "mac-address=52:54:00:AA:BB:CC",
            ),
        ] {
            let r = os.render_with_network(data, format, &meta(), &net).unwrap();
            let f = r
                .volume_files
                .iter()
                .find(|f| f.path == file)
                .unwrap_or_else(|| panic!("{os}: no {file}"));
            let text = String::from_utf8_lossy(&f.data);
            assert!(text.contains(needle), "{os} {file}: {text}");
            assert_eq!(
                r.document, f.data,
                "{os}: the served document is the volume's"
            );
        }
        // Flatcar reads no volume: the served Ignition carries the networkd unit.
        let r = OsFamily::Flatcar
            .render_with_network(ign, BootstrapFormat::Ignition, &meta(), &net)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.document).unwrap();
        assert_eq!(
            v["storage"]["files"][0]["path"],
            "/etc/systemd/network/10-beskar7-0.network"
        );
        // Without a network the documents are the user's bytes.
        let r = OsFamily::Flatcar
            .render(ign, BootstrapFormat::Ignition, &meta())
            .unwrap();
        assert_eq!(r.document, ign.to_vec());
    }
}

//! The media of one claim: the OS configuration rendered from the bootstrap Secret, registered
//! with the artifact server under the claim's token, the boot ISO fetched and patched.

use beskar7_api::{
    BootMode, ConfigDelivery, ConsumerRef, PhysicalHost, Provisioning, ProvisioningMode,
    provider_id,
};
use beskar7_boot as boot;
use beskar7_redfish as redfish;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::{consumer_key, key, plan};
use crate::artifacts::{ArtifactSet, ArtifactUrls, BootIsoSource, ConfigDocument, ConfigVolume};
use crate::context::Context;
use crate::error::{Error, Result};

/// Kernel argument carrying the providerID for OSes without a config volume.
pub const PROVIDER_ID_KERNEL_ARG: &str = "beskar7.provider_id";

/// What [`prepare`] gives the plan and the status.
pub struct Prepared {
    pub media: plan::Media,
    pub delivery: ConfigDelivery,
}

/// Renders, registers and prepares the claim's media. `force_url`: the BMC refused a second
/// device for this claim, so the configuration goes by URL whatever the discovery says.
pub async fn prepare(
    host: &PhysicalHost,
    ctx: &Context,
    d: &redfish::Discovery,
    consumer: &ConsumerRef,
    prov: &Provisioning,
    force_url: bool,
) -> Result<Prepared> {
    let boot_slot = d
        .boot_slot()
        .map(|s| s.path.clone())
        .ok_or_else(|| Error::HostUnsuitable("no virtual media CD slot".into()))?;
    let config_slot = d.config_slot().filter(|_| !force_url);
    let bootstrap = match (prov.mode, &prov.bootstrap_data_secret_ref) {
        (ProvisioningMode::BootstrapData, Some(secret)) => {
            Some(read_bootstrap(ctx, &host.namespace().unwrap_or_default(), secret).await?)
        }
        (ProvisioningMode::BootstrapData, None) => {
            return Err(Error::Invalid(
                "provisioning mode BootstrapData without bootstrapDataSecretRef".into(),
            ));
        }
        _ => None,
    };
    let delivery_plan = boot::plan_delivery(&boot::PlanInput {
        os: to_boot_os(prov.os_family),
        mode: to_boot_mode(prov.mode),
        format: bootstrap.as_ref().map(|b| b.1).unwrap_or_default(),
        config_slot: config_slot.map(|(_, f)| match f {
            redfish::ImageFormat::Iso => boot::VolumeFormat::Iso,
            redfish::ImageFormat::Fat => boot::VolumeFormat::Fat,
        }),
        config_url: prov.config_url.as_deref(),
    })?;
    if prov.mode == ProvisioningMode::PreBakedISO {
        // The image carries its own configuration: the BMC fetches it from where it is.
        return Ok(Prepared {
            media: plan::Media {
                boot_slot,
                boot_url: prov.image_url.clone(),
                config: None,
                needs_secure_boot_off: false,
            },
            delivery: ConfigDelivery::External,
        });
    }
    let set = artifact_set(host, consumer, prov, &delivery_plan, bootstrap.as_ref())?;
    let token = ctx.artifact_token(
        host.metadata.uid.as_deref().unwrap_or(&host.name_any()),
        &consumer_key(host, consumer),
    );
    let k = key(host);
    let urls = ctx.artifacts.register_with_token(&k, &token, set)?;
    let facts = ctx.artifacts.prepare(&k).await?;
    let delivery = delivery_of(&urls);
    let boot_url = urls
        .boot_iso
        .ok_or_else(|| Error::Invalid("artifact server returned no boot ISO URL".into()))?;
    Ok(Prepared {
        media: plan::Media {
            boot_slot,
            boot_url,
            config: config_slot
                .map(|(s, _)| s.path.clone())
                .zip(urls.config_volume),
            needs_secure_boot_off: facts.uefi_needs_secure_boot_off,
        },
        delivery,
    })
}

/// How the claim's configuration reaches the OS, read from what the artifact server serves for
/// it: a volume, a document named on the kernel command line, or neither (the configuration is
/// the user's `configURL`).
pub fn delivery_of(urls: &ArtifactUrls) -> ConfigDelivery {
    if urls.config_volume.is_some() {
        ConfigDelivery::Volume
    } else if urls.config_document.is_some() {
        ConfigDelivery::Url
    } else {
        ConfigDelivery::External
    }
}

/// How a claim's configuration goes, said again from what is served for it (`None`: nothing
/// is served yet, the next preparation says it). A pre-baked ISO carries its own.
pub fn delivery_served(
    mode: ProvisioningMode,
    served: Option<&ArtifactUrls>,
) -> Option<ConfigDelivery> {
    match mode {
        ProvisioningMode::PreBakedISO => Some(ConfigDelivery::External),
        _ => served.map(delivery_of),
    }
}

/// What the artifact server serves for the claim: the patched boot ISO, and the rendered
/// configuration as a volume or a document.
fn artifact_set(
    host: &PhysicalHost,
    consumer: &ConsumerRef,
    prov: &Provisioning,
    plan: &boot::DeliveryPlan,
    bootstrap: Option<&(Vec<u8>, boot::BootstrapFormat)>,
) -> Result<ArtifactSet> {
    let os = to_boot_os(prov.os_family);
    let meta = boot::MetaData {
        instance_id: consumer
            .uid
            .clone()
            .unwrap_or_else(|| consumer.name.clone()),
        local_hostname: prov
            .hostname
            .clone()
            .unwrap_or_else(|| consumer.name.clone()),
        provider_id: provider_id(&host.namespace().unwrap_or_default(), &host.name_any()),
        extra: Default::default(),
    };
    // An OS that reads no config volume (Flatcar) finds its providerID on the kernel command
    // line, where the cluster templates read it for kubelet.
    let mut kernel_args = plan.kernel_args.clone();
    // Static addressing: the initrd brings the interfaces up from the command line, so the OS
    // reaches a served config URL without DHCP; its own configuration keeps them afterwards.
    let network = prov
        .network
        .as_ref()
        .map(crate::controllers::ipam::to_static)
        .unwrap_or_default();
    kernel_args.extend(
        network
            .kernel_args(os, &meta.local_hostname)
            .into_iter()
            .map(boot::KernelArg::Literal),
    );
    if plan.config_volume.is_none() {
        kernel_args.push(boot::KernelArg::Literal(format!(
            "{PROVIDER_ID_KERNEL_ARG}={}",
            meta.provider_id
        )));
    }
    let rendered = bootstrap
        .map(|(data, format)| os.render_with_network(data, *format, &meta, &network))
        .transpose()?;
    let mut set = ArtifactSet {
        boot_iso: Some(BootIsoSource {
            add_uefi_path: plan.add_uefi_path && prov.boot_mode == BootMode::Uefi,
            url: prov.image_url.clone(),
            sha256: prov.image_checksum.clone(),
            kernel_args,
        }),
        config_volume: None,
        config_document: None,
    };
    if let (Some(volume), Some(r)) = (&plan.config_volume, &rendered) {
        set.config_volume = Some(ConfigVolume {
            format: volume.format,
            data: boot::build_config_volume(os, volume.format, r)?.into(),
        });
    }
    if let (true, Some(r)) = (plan.serve_config, &rendered) {
        set.config_document = Some(ConfigDocument {
            content_type: r.content_type.to_string(),
            data: Bytes::from(r.document.clone()),
        });
    }
    Ok(set)
}

async fn read_bootstrap(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<(Vec<u8>, boot::BootstrapFormat)> {
    let err = |problem: String| Error::BootstrapData {
        secret: format!("{ns}/{name}"),
        problem,
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| err("not found".into()))?;
    let data = secret.data.unwrap_or_default();
    let value = data
        .get("value")
        .ok_or_else(|| err("has no key \"value\"".into()))?
        .0
        .clone();
    let format = data
        .get("format")
        .map(|f| String::from_utf8_lossy(&f.0).into_owned());
    let format = boot::BootstrapFormat::from_secret_format(format.as_deref()).map_err(err)?;
    Ok((value, format))
}

pub fn to_boot_os(os: beskar7_api::OsFamily) -> boot::OsFamily {
    match os {
        beskar7_api::OsFamily::Kairos => boot::OsFamily::Kairos,
        beskar7_api::OsFamily::Talos => boot::OsFamily::Talos,
        beskar7_api::OsFamily::Flatcar => boot::OsFamily::Flatcar,
        beskar7_api::OsFamily::LeapMicro => boot::OsFamily::LeapMicro,
    }
}

fn to_boot_mode(m: ProvisioningMode) -> boot::ProvisioningMode {
    match m {
        ProvisioningMode::PreBakedISO => boot::ProvisioningMode::PreBakedISO,
        ProvisioningMode::RemoteConfig => boot::ProvisioningMode::RemoteConfig,
        ProvisioningMode::BootstrapData => boot::ProvisioningMode::BootstrapData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(volume: bool, document: bool) -> ArtifactUrls {
        ArtifactUrls {
            token: "t".into(),
            boot_iso: Some("https://a/boot.iso".into()),
            config_volume: volume.then(|| "https://a/config.img".into()),
            config_document: document.then(|| "https://a/config".into()),
        }
    }

    #[test]
    fn the_delivery_is_said_from_what_is_served() {
        use ConfigDelivery::*;
        use ProvisioningMode::*;
        assert_eq!(
            delivery_served(RemoteConfig, Some(&served(true, false))),
            Some(Volume)
        );
        assert_eq!(
            delivery_served(RemoteConfig, Some(&served(false, true))),
            Some(Url)
        );
        assert_eq!(
            delivery_served(RemoteConfig, Some(&served(false, false))),
            Some(External)
        );
        assert_eq!(delivery_served(RemoteConfig, None), None);
        assert_eq!(delivery_served(PreBakedISO, None), Some(External));
    }
}

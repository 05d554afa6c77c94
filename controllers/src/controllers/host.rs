//! PhysicalHost controller: the only code that talks to a BMC.
//!
//! Stages: read (credentials, BMC discovery, power), decide from `spec.consumerRef` and the
//! persisted `status.state`, act on the BMC one idempotent step at a time, report status.
//! State machine (DESIGN.md section 4): Enrolling -> Available -> Claimed -> Provisioning ->
//! Provisioned -> Deprovisioning -> Available; Error from anywhere, left by retry with backoff.

use std::sync::Arc;

use beskar7_api::{
    BOOT_ISSUED_ANNOTATION, BmcDetails, BootMode, ConfigDelivery, ConsumerRef, HardwareDetails,
    HostState, Nic, PROVISIONING_LOCK_ANNOTATION, PhysicalHost, PhysicalHostStatus, PowerRequest,
    Provisioning, ProvisioningMode, VirtualMediaSlotInfo, provider_id,
};
use beskar7_boot as boot;
use beskar7_redfish as redfish;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::artifacts::{ArtifactSet, BootIsoSource, ConfigDocument, ConfigVolume};
use crate::conditions::{self, BMC_CONNECTED, READY, VIRTUAL_MEDIA_READY};
use crate::context::{Context, bmc_target};
use crate::error::{Error, Result};

pub const FIELD_MANAGER: &str = "beskar7-physicalhost";
/// Reason of `VirtualMediaReady` (and of the event) when a BMC refused the second device.
const SECOND_MEDIA_REFUSED: &str = "SecondMediaRefused";
/// Kernel argument carrying the providerID for OSes without a config volume.
pub const PROVIDER_ID_KERNEL_ARG: &str = "beskar7.provider_id";

fn key(host: &PhysicalHost) -> String {
    format!(
        "{}/{}",
        host.namespace().unwrap_or_default(),
        host.name_any()
    )
}

/// Identity of one claim: a new claim of the same host gets new artifact URLs. Namespace and
/// name, not uid: `clusterctl move` recreates the consumer with a new uid and the same claim.
fn consumer_key(host: &PhysicalHost, c: &ConsumerRef) -> String {
    let ns = c
        .namespace
        .clone()
        .or_else(|| host.namespace())
        .unwrap_or_default();
    format!("{ns}/{}", c.name)
}

fn boot_issued_annotation(host: &PhysicalHost) -> Option<&str> {
    host.annotations()
        .get(BOOT_ISSUED_ANNOTATION)
        .map(String::as_str)
}

/// Records (or clears) the issued boot in the annotation that survives `clusterctl move`, and
/// lets go of the provisioning lock.
async fn record_boot_issued(host: &PhysicalHost, ctx: &Context, claim: Option<&str>) -> Result<()> {
    if boot_issued_annotation(host) == claim
        && !host
            .annotations()
            .contains_key(PROVISIONING_LOCK_ANNOTATION)
    {
        return Ok(());
    }
    let api: Api<PhysicalHost> =
        Api::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {
        BOOT_ISSUED_ANNOTATION: claim,
        PROVISIONING_LOCK_ANNOTATION: null,
    }}});
    api.patch(
        &host.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

pub async fn reconcile(host: Arc<PhysicalHost>, ctx: Arc<Context>) -> Result<Action> {
    let k = key(&host);
    let mut status = host.status.clone().unwrap_or_default();
    let before = status.clone();
    let generation = host.metadata.generation;
    let result = reconcile_inner(&host, &ctx, &mut status).await;
    status.observed_generation = generation;
    let action = match &result {
        Ok(action) => {
            ctx.reset_backoff(&k);
            status.last_error = None;
            action.clone()
        }
        Err(e) => {
            warn!(host = %k, reason = e.reason(), error = %e, "reconcile failed");
            ctx.metrics.reconcile_error("physicalhost", e.reason());
            status.last_error = Some(e.to_string());
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                e.reason(),
                e.to_string(),
                generation,
            );
            if matches!(
                e,
                Error::Redfish(_) | Error::Credentials { .. } | Error::CaBundle { .. }
            ) {
                conditions::set(
                    &mut status.conditions,
                    BMC_CONNECTED,
                    false,
                    e.reason(),
                    e.to_string(),
                    generation,
                );
            }
            if !e.is_transient() || matches!(e, Error::Redfish(_)) {
                status.state = Some(HostState::Error);
            }
            Action::requeue(ctx.backoff(&k, e.is_transient()))
        }
    };
    write_status(&host, &ctx, &before, &status).await?;
    Ok(action)
}

async fn write_status(
    host: &PhysicalHost,
    ctx: &Context,
    before: &PhysicalHostStatus,
    after: &PhysicalHostStatus,
) -> Result<()> {
    if before == after {
        return Ok(());
    }
    let mut after = after.clone();
    after.last_updated = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    if before.state != after.state {
        let from = before.state.map(|s| s.as_str()).unwrap_or("New");
        let to = after.state.unwrap_or_default();
        info!(host = %key(host), %from, %to, "state changed");
        ctx.metrics.host_transition(to.as_str());
        let event = Event {
            type_: if to == HostState::Error {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: to.as_str().to_string(),
            note: Some(match (&after.last_error, to) {
                (Some(e), HostState::Error) => format!("{from} -> Error: {e}"),
                _ => format!("{from} -> {to}"),
            }),
            action: "StateChange".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder().publish(&event, &host.object_ref(&())).await {
            warn!(error = %e, "publishing event");
        }
    }
    patch_status(host, ctx, &after).await
}

async fn patch_status(
    host: &PhysicalHost,
    ctx: &Context,
    status: &PhysicalHostStatus,
) -> Result<()> {
    let api: Api<PhysicalHost> =
        Api::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": beskar7_api::API_VERSION,
        "kind": "PhysicalHost",
        "status": status,
    });
    api.patch_status(
        &host.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn reconcile_inner(
    host: &PhysicalHost,
    ctx: &Context,
    status: &mut PhysicalHostStatus,
) -> Result<Action> {
    let generation = host.metadata.generation;
    let k = key(host);
    if host.metadata.deletion_timestamp.is_some() {
        ctx.bmcs.forget(&k).await;
        ctx.artifacts.revoke(&k);
        return Ok(Action::await_change());
    }
    if status.state.is_none() {
        status.state = Some(HostState::Enrolling);
    }
    if status.boot_issued_for.is_none() {
        // Status lost (the host was moved to another cluster, or restored from a backup): the
        // annotation still says which claim's boot was issued, so it is not issued again.
        status.boot_issued_for = boot_issued_annotation(host).map(str::to_string);
    }

    // Read: credentials, the BMC's view of the system.
    let target = bmc_target(&ctx.client, host).await?;
    let system_id = target.system_id.clone();
    let bmc = ctx.bmcs.client(&k, target, &ctx.settings)?;
    let d = bmc.discover(system_id.as_deref()).await?;
    let power = bmc.power_state(&d).await?;
    conditions::set(
        &mut status.conditions,
        BMC_CONNECTED,
        true,
        "Connected",
        format!("{} {}", d.vendor.name(), d.system_path),
        generation,
    );
    status.observed_power_state = power.clone();
    if status.hardware_details.is_none() || status.state == Some(HostState::Enrolling) {
        status.hardware_details = Some(hardware_details(&bmc.inventory(&d).await?));
    }
    status.bmc = Some(bmc_details(&d));

    if d.boot_slot().is_none() {
        conditions::set(
            &mut status.conditions,
            VIRTUAL_MEDIA_READY,
            false,
            "NoVirtualMediaCD",
            "the BMC offers no virtual media slot that takes a CD or DVD",
            generation,
        );
        return Err(Error::HostUnsuitable("the BMC offers no virtual media slot that takes a CD or DVD: this host cannot boot an ISO over virtual media".into()));
    }
    // The configuration goes by URL although the BMC lists a second slot: it refused it.
    let refused = status.config_delivery == Some(ConfigDelivery::Url) && d.config_slot().is_some();
    let (reason, message) = if refused {
        (
            SECOND_MEDIA_REFUSED,
            "the BMC refused the config volume in its second virtual media slot; the configuration is served by URL".to_string(),
        )
    } else {
        (
            "CDSlotFound",
            d.boot_slot().map(|s| s.path.clone()).unwrap_or_default(),
        )
    };
    conditions::set(
        &mut status.conditions,
        VIRTUAL_MEDIA_READY,
        true,
        reason,
        message,
        generation,
    );

    // Decide and act.
    match (&host.spec.consumer_ref, &host.spec.provisioning) {
        (Some(consumer), Some(prov)) => {
            provision(host, ctx, &bmc, &d, consumer, prov, status).await
        }
        _ => release_if_needed(host, ctx, &bmc, &d, status).await,
    }
}

/// No consumer: make sure nothing of a past claim is left (power off, media ejected, URLs revoked).
async fn release_if_needed(
    host: &PhysicalHost,
    ctx: &Context,
    bmc: &redfish::Client,
    d: &redfish::Discovery,
    status: &mut PhysicalHostStatus,
) -> Result<Action> {
    let generation = host.metadata.generation;
    let was_used = status.boot_issued_for.is_some()
        || matches!(
            status.state,
            Some(
                HostState::Claimed
                    | HostState::Provisioning
                    | HostState::Provisioned
                    | HostState::Deprovisioning
            )
        );
    if was_used {
        if status.state != Some(HostState::Deprovisioning) {
            status.state = Some(HostState::Deprovisioning);
            patch_status(host, ctx, status).await?;
        }
        ctx.artifacts.revoke(&key(host));
        if status.observed_power_state.as_deref() != Some("Off") {
            request_power(ctx, bmc, d, status, redfish::PowerAction::ForceOff).await?;
        }
        for slot in &d.slots {
            if slot.skipped {
                continue;
            }
            let current = bmc.read_slot(&slot.path).await?;
            if current.media.is_inserted() || current.media.current_image().is_some() {
                bmc.eject_media(&slot.path).await?;
            }
        }
        let off = bmc.power_state(d).await?;
        status.observed_power_state = off.clone();
        if off.as_deref() != Some("Off") {
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "PoweringOff",
                "waiting for the server to power off",
                generation,
            );
            return Ok(Action::requeue(ctx.settings.host_poll));
        }
        record_boot_issued(host, ctx, None).await?;
        status.boot_issued_for = None;
    }
    status.config_delivery = None;
    status.state = Some(HostState::Available);
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "Available",
        "inventoried and free to be claimed",
        generation,
    );
    Ok(Action::requeue(ctx.settings.host_refresh))
}

/// A consumer claimed the host: bring it to Provisioned, one idempotent step per pass.
#[allow(clippy::too_many_arguments)]
async fn provision(
    host: &PhysicalHost,
    ctx: &Context,
    bmc: &redfish::Client,
    d: &redfish::Discovery,
    consumer: &ConsumerRef,
    prov: &Provisioning,
    status: &mut PhysicalHostStatus,
) -> Result<Action> {
    let generation = host.metadata.generation;
    let claim = consumer_key(host, consumer);
    if status
        .boot_issued_for
        .as_deref()
        .is_some_and(|b| b != claim)
    {
        // Left over from an earlier claim whose release we never saw: clean up first.
        return release_if_needed(host, ctx, bmc, d, status).await;
    }
    if matches!(
        status.state,
        Some(HostState::Available | HostState::Enrolling | HostState::Error) | None
    ) && status.boot_issued_for.is_none()
    {
        status.state = Some(HostState::Claimed);
    }

    // Build: the media this claim boots from. A BMC that refused the second device for this
    // claim gets the configuration by URL from then on.
    let force_url = status.config_delivery == Some(ConfigDelivery::Url);
    let media = prepare_media(host, ctx, d, consumer, prov, force_url).await?;
    status.config_delivery = Some(media.delivery);

    if status.boot_issued_for.as_deref() == Some(claim.as_str()) {
        // The boot was issued (maybe by a manager that since restarted): wait for power, never cycle again.
        return match status.observed_power_state.as_deref() {
            Some("On") => {
                status.state = Some(HostState::Provisioned);
                conditions::set(
                    &mut status.conditions,
                    READY,
                    true,
                    "Provisioned",
                    format!("booted {} from virtual media", prov.os_family),
                    generation,
                );
                Ok(Action::requeue(ctx.settings.host_refresh))
            }
            Some("Off") => {
                request_power(ctx, bmc, d, status, redfish::PowerAction::On).await?;
                Ok(Action::requeue(ctx.settings.host_poll))
            }
            _ => Ok(Action::requeue(ctx.settings.host_poll)),
        };
    }

    // A UEFI boot that needs Secure Boot off, on a host whose BMC says it is on, would boot
    // without the arguments (or not at all): say so instead of booting.
    if prov.boot_mode == BootMode::Uefi
        && media.needs_secure_boot_off
        && bmc.secure_boot_enforced(d).await? == Some(true)
    {
        return Err(Error::SecureBootEnabled(format!(
            "the host has UEFI Secure Boot enabled, and the {} image served for it carries the kernel arguments only with Secure Boot off (Beskar7's UEFI loader is unsigned; systemd-stub ignores passed options under Secure Boot): disable Secure Boot on the host, use bootMode: Legacy, or an image that carries the arguments itself (provisioningMode PreBakedISO)",
            prov.os_family
        )));
    }

    // Apply. The steps below change the server, so they run only on a fresh copy of the host
    // and by one manager at a time.
    if !take_provisioning_lock(host, ctx, &claim).await? {
        return Ok(Action::requeue(ctx.settings.host_poll));
    }
    // Start from a powered-off server so the one power-on below is the only boot.
    if status.observed_power_state.as_deref() != Some("Off") {
        request_power(ctx, bmc, d, status, redfish::PowerAction::ForceOff).await?;
        let now = bmc.power_state(d).await?;
        status.observed_power_state = now.clone();
        if now.as_deref() != Some("Off") {
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "PoweringOff",
                "powering the server off before inserting media",
                generation,
            );
            return Ok(Action::requeue(ctx.settings.host_poll));
        }
    }
    let boot_slot = d
        .boot_slot()
        .ok_or_else(|| Error::HostUnsuitable("no virtual media CD slot".into()))?;
    let config_slot = media
        .config_url
        .as_ref()
        .map(|_| d.config_slot().map(|(s, _)| s.path.clone()));
    let config_slot = match config_slot {
        Some(None) => {
            return Err(Error::HostUnsuitable(
                "the OS reads a config volume but the BMC has no second virtual media slot".into(),
            ));
        }
        Some(Some(p)) => Some(p),
        None => None,
    };
    // Eject what is not ours (stale media from before), then insert ours.
    for slot in &d.slots {
        if slot.skipped {
            continue;
        }
        let want = if slot.path == boot_slot.path {
            Some(media.boot_url.as_str())
        } else if Some(&slot.path) == config_slot.as_ref() {
            media.config_url.as_deref()
        } else {
            None
        };
        let current = bmc.read_slot(&slot.path).await?;
        let image = current.media.current_image().map(str::to_string);
        if (current.media.is_inserted() || image.is_some()) && image.as_deref() != want {
            bmc.eject_media(&slot.path).await?;
        }
        if let Some(url) = want
            && image.as_deref() != Some(url)
        {
            match bmc.insert_media(&slot.path, url).await {
                Err(redfish::Error::Refused(why) | redfish::Error::NotSupported(why))
                    if Some(&slot.path) == config_slot.as_ref() =>
                {
                    return fall_back_to_url(host, ctx, bmc, d, status, &why).await;
                }
                r => {
                    r?;
                }
            }
        }
    }
    let mode = if prov.boot_mode == BootMode::Legacy {
        redfish::BootMode::Legacy
    } else {
        redfish::BootMode::Uefi
    };
    bmc.set_boot_once_cd(d, Some(mode)).await?;

    // Record the intent before the power-on: a restart from here on waits instead of cycling.
    record_boot_issued(host, ctx, Some(&claim)).await?;
    status.boot_issued_for = Some(claim);
    status.state = Some(HostState::Provisioning);
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        "Booting",
        "media inserted, one-time boot from virtual CD set, powering on",
        generation,
    );
    patch_status(host, ctx, status).await?;
    request_power(ctx, bmc, d, status, redfish::PowerAction::On).await?;
    Ok(Action::requeue(ctx.settings.host_poll))
}

/// The BMC refused the config volume in its second slot (some take one virtual media device at a
/// time: Metal3 does not attach a second one on Dell): from now on this claim's configuration is
/// served by URL, named on the boot ISO's kernel command line. What is inserted is ejected, as
/// the boot ISO served under the same URL changes too; the next pass inserts it again.
async fn fall_back_to_url(
    host: &PhysicalHost,
    ctx: &Context,
    bmc: &redfish::Client,
    d: &redfish::Discovery,
    status: &mut PhysicalHostStatus,
    why: &str,
) -> Result<Action> {
    warn!(host = %key(host), reason = why, "second virtual media device refused; serving the configuration by URL");
    for slot in d.slots.iter().filter(|s| !s.skipped) {
        bmc.eject_media(&slot.path).await?;
    }
    status.config_delivery = Some(ConfigDelivery::Url);
    let message = format!(
        "the BMC refused the config volume in a second virtual media slot ({why}); the configuration is served by URL instead"
    );
    conditions::set(
        &mut status.conditions,
        VIRTUAL_MEDIA_READY,
        true,
        SECOND_MEDIA_REFUSED,
        message.clone(),
        host.metadata.generation,
    );
    let event = Event {
        type_: EventType::Warning,
        reason: SECOND_MEDIA_REFUSED.into(),
        note: Some(message),
        action: "InsertMedia".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&event, &host.object_ref(&())).await {
        warn!(error = %e, "publishing event");
    }
    patch_status(host, ctx, status).await?;
    Ok(Action::requeue(ctx.settings.host_poll))
}

/// How long a provisioning lock holds against other managers without being renewed. Its holder
/// renews it on every pass (every few seconds while the sequence runs), so this only decides how
/// soon the lock of a manager that died is taken over, like a leader-election lease.
const PROVISIONING_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes (or renews) the right to run `claim`'s boot sequence on this host. The host is read
/// from the API server, not the cache: if its boot was issued meanwhile, or another manager's
/// lock is live, the answer is no. The lock is written with the resourceVersion just read, so of
/// two managers racing only one gets it (the other sees a conflict and comes back).
async fn take_provisioning_lock(host: &PhysicalHost, ctx: &Context, claim: &str) -> Result<bool> {
    let api: Api<PhysicalHost> =
        Api::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&host.name_any()).await? else {
        return Ok(false);
    };
    let issued = boot_issued_annotation(&fresh).or(fresh
        .status
        .as_ref()
        .and_then(|s| s.boot_issued_for.as_deref()));
    let same_claim = fresh
        .spec
        .consumer_ref
        .as_ref()
        .is_some_and(|c| consumer_key(&fresh, c) == claim);
    if issued.is_some() || !same_claim {
        // Our copy was stale: the next pass works from the current one.
        return Ok(false);
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    if let Some(lock) = fresh.annotations().get(PROVISIONING_LOCK_ANNOTATION) {
        let mut parts = lock.splitn(3, ' ');
        let (holder, taken, for_claim) = (parts.next().unwrap_or(""), parts.next(), parts.next());
        let live = for_claim == Some(claim)
            && taken
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .is_some_and(|t| now.duration_since(t).unsigned_abs() < PROVISIONING_LOCK_TTL);
        if holder != ctx.identity && live {
            return Ok(false);
        }
    }
    let patch = json!({"metadata": {
        "resourceVersion": fresh.resource_version(),
        "annotations": {PROVISIONING_LOCK_ANNOTATION: format!("{} {now} {claim}", ctx.identity)},
    }});
    match api
        .patch(
            &host.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Asks the BMC for a power change unless the same one was asked within `power_grace`: BMCs
/// take seconds to carry it out (and report the old state meanwhile), and some refuse or restart
/// the transition when asked again. The request is kept in status, so a restart respects it too.
async fn request_power(
    ctx: &Context,
    bmc: &redfish::Client,
    d: &redfish::Discovery,
    status: &mut PhysicalHostStatus,
    action: redfish::PowerAction,
) -> Result<()> {
    let name = format!("{action:?}");
    let now = k8s_openapi::jiff::Timestamp::now();
    let recent = status.last_power_request.as_ref().is_some_and(|r| {
        r.action == name
            && now.duration_since(r.requested_at.0).unsigned_abs() < ctx.settings.power_grace
    });
    if recent {
        return Ok(());
    }
    bmc.set_power(d, action).await?;
    status.last_power_request = Some(PowerRequest {
        action: name,
        requested_at: Time(now),
    });
    Ok(())
}

/// URLs the BMC is given for one claim.
struct Media {
    boot_url: String,
    config_url: Option<String>,
    delivery: ConfigDelivery,
    /// The served ISO's UEFI boot carries the arguments only with Secure Boot off.
    needs_secure_boot_off: bool,
}

/// Renders the configuration for the OS, registers it with the artifact server under the
/// claim's token, and waits until the boot ISO is fetched, verified and patched.
async fn prepare_media(
    host: &PhysicalHost,
    ctx: &Context,
    d: &redfish::Discovery,
    consumer: &ConsumerRef,
    prov: &Provisioning,
    force_url: bool,
) -> Result<Media> {
    let ns = host.namespace().unwrap_or_default();
    let host_name = host.name_any();
    let os = to_boot_os(prov.os_family);
    let mode = match prov.mode {
        ProvisioningMode::PreBakedISO => boot::ProvisioningMode::PreBakedISO,
        ProvisioningMode::RemoteConfig => boot::ProvisioningMode::RemoteConfig,
        ProvisioningMode::BootstrapData => boot::ProvisioningMode::BootstrapData,
    };
    let bootstrap = match (prov.mode, &prov.bootstrap_data_secret_ref) {
        (ProvisioningMode::BootstrapData, Some(secret)) => {
            Some(read_bootstrap(ctx, &ns, secret).await?)
        }
        (ProvisioningMode::BootstrapData, None) => {
            return Err(Error::Invalid(
                "provisioning mode BootstrapData without bootstrapDataSecretRef".into(),
            ));
        }
        _ => None,
    };
    let format = bootstrap.as_ref().map(|b| b.1).unwrap_or_default();
    let config_slot = d
        .config_slot()
        .filter(|_| !force_url)
        .map(|(_, f)| match f {
            redfish::ImageFormat::Iso => boot::VolumeFormat::Iso,
            redfish::ImageFormat::Fat => boot::VolumeFormat::Fat,
        });
    let plan = boot::plan_delivery(&boot::PlanInput {
        os,
        mode,
        format,
        config_slot,
        config_url: prov.config_url.as_deref(),
    })?;

    if prov.mode == ProvisioningMode::PreBakedISO {
        // The image carries its own configuration: the BMC fetches it from where it is.
        return Ok(Media {
            boot_url: prov.image_url.clone(),
            config_url: None,
            delivery: ConfigDelivery::External,
            needs_secure_boot_off: false,
        });
    }

    let meta = boot::MetaData {
        instance_id: consumer
            .uid
            .clone()
            .unwrap_or_else(|| consumer.name.clone()),
        local_hostname: prov
            .hostname
            .clone()
            .unwrap_or_else(|| consumer.name.clone()),
        provider_id: provider_id(&ns, &host_name),
        extra: Default::default(),
    };
    // An OS that reads no config volume (Flatcar) finds its providerID on the kernel command
    // line, where the cluster templates read it for kubelet.
    let mut kernel_args = plan.kernel_args.clone();
    if plan.config_volume.is_none() {
        kernel_args.push(boot::KernelArg::Literal(format!(
            "{PROVIDER_ID_KERNEL_ARG}={}",
            meta.provider_id
        )));
    }
    let rendered = match &bootstrap {
        Some((data, format)) => Some(os.render(data, *format, &meta)?),
        None => None,
    };
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
            data: Bytes::from(boot::build_config_volume(os, volume.format, r)?),
        });
    }
    if let (true, Some(r)) = (plan.serve_config, &rendered) {
        set.config_document = Some(ConfigDocument {
            content_type: r.content_type.to_string(),
            data: Bytes::from(r.document.clone()),
        });
    }
    let token = ctx.artifact_token(
        host.metadata.uid.as_deref().unwrap_or(&host_name),
        &consumer_key(host, consumer),
    );
    let k = key(host);
    let urls = ctx.artifacts.register_with_token(&k, &token, set)?;
    let facts = ctx.artifacts.prepare(&k).await?;
    Ok(Media {
        needs_secure_boot_off: facts.uefi_needs_secure_boot_off,
        boot_url: urls
            .boot_iso
            .ok_or_else(|| Error::Invalid("artifact server returned no boot ISO URL".into()))?,
        config_url: urls.config_volume,
        delivery: if plan.config_volume.is_some() {
            ConfigDelivery::Volume
        } else if plan.serve_config {
            ConfigDelivery::Url
        } else {
            ConfigDelivery::External
        },
    })
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

fn hardware_details(inv: &redfish::Inventory) -> HardwareDetails {
    HardwareDetails {
        manufacturer: inv.manufacturer.clone(),
        model: inv.model.clone(),
        serial_number: inv.serial_number.clone(),
        system_uuid: inv.uuid.clone(),
        cpu: inv.cpu_count.map(|c| c as i64),
        memory: inv.memory_gib.map(|g| format!("{}Gi", g.round() as i64)),
        nics: inv
            .nic_macs
            .iter()
            .map(|m| Nic {
                mac: m.clone(),
                name: None,
            })
            .collect(),
    }
}

fn bmc_details(d: &redfish::Discovery) -> BmcDetails {
    let boot = d.boot_slot().map(|s| s.path.clone());
    let config = d.config_slot().map(|(s, _)| s.path.clone());
    BmcDetails {
        vendor: Some(d.vendor.name().to_string()),
        virtual_media_slots: d
            .slots
            .iter()
            .map(|s| VirtualMediaSlotInfo {
                path: s.path.clone(),
                media_types: s.media.media_types.clone().unwrap_or_default(),
                inserted: s.media.inserted,
                role: if Some(&s.path) == boot.as_ref() {
                    Some("boot".into())
                } else if Some(&s.path) == config.as_ref() {
                    Some("config".into())
                } else {
                    None
                },
            })
            .collect(),
        boot_override_targets: d
            .system
            .boot
            .as_ref()
            .and_then(|b| b.target_allowable_values.clone())
            .unwrap_or_default(),
    }
}

pub fn error_policy(host: Arc<PhysicalHost>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(host = %key(&host), error = %err, "reconcile error");
    Action::requeue(ctx.backoff(&key(&host), err.is_transient()))
}

//! PhysicalHost controller: the only code that talks to a BMC.
//!
//! Observe, plan, execute, report: one pass reads the credentials, the BMC's view of the system
//! and, when the claim needs them, its media ([`observe`]); [`plan::plan`] decides, purely, the
//! steps, the next state and the Ready condition; [`steps::Executor`] carries the steps out;
//! the status is written once at the end. The state is chosen in one place: the plan's, or
//! Error when observing or executing failed.

mod inventory;
mod media;
pub mod plan;
mod steps;

use std::sync::Arc;

use beskar7_api::{
    BOOT_ISSUED_ANNOTATION, ConfigDelivery, ConsumerRef, HostState, NODE_JOINED_ANNOTATION,
    PROVISIONING_LOCK_ANNOTATION, PhysicalHost, PhysicalHostStatus, REBOOT_ANNOTATION, RebootPhase,
};
use beskar7_redfish as redfish;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::shape;
use crate::conditions::{self, BMC_CONNECTED, READY, REBOOTED, VIRTUAL_MEDIA_READY, reason};
use crate::context::{Context, bmc_target};
use crate::error::{Error, Result};
pub use media::{PROVIDER_ID_KERNEL_ARG, to_boot_os};
use plan::{
    Claim, HostObservation, HostPlan, Power, PowerChange, RebootObservation, Requeue, SlotState,
};

pub const FIELD_MANAGER: &str = "beskar7-physicalhost";
use crate::conditions::reason::SECOND_MEDIA_REFUSED;

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

pub async fn reconcile(host: Arc<PhysicalHost>, ctx: Arc<Context>) -> Result<Action> {
    let k = key(&host);
    if host.metadata.deletion_timestamp.is_some() {
        ctx.bmcs.forget(&k).await;
        ctx.artifacts.revoke(&k);
        ctx.forget_host_version(&k);
        return Ok(Action::await_change());
    }
    // A pass writes the host twice or more (annotations, then status); the watch event of the
    // first can start the next pass while the cache still holds that middle version, which lacks
    // the status the pass wrote (the power request, the delivery). Planning from it would repeat
    // a power-on, and the status apply would drop what it lacks. When the copy is one of our own
    // superseded writes, the event of the newer one is still to come and its pass does the work
    // (no API or BMC request for this one); any other copy we did not write last is read afresh.
    ctx.note_host_copy(&k, host.as_ref());
    if ctx.host_copy_superseded(&k, host.as_ref()) {
        return Ok(Action::await_change());
    }
    let host = if ctx.host_copy_may_be_stale(&k, host.as_ref()) {
        let api = Api::<PhysicalHost>::namespaced(
            ctx.client.clone(),
            &host.namespace().unwrap_or_default(),
        );
        match api.get_opt(&host.name_any()).await? {
            Some(fresh) => {
                ctx.note_host_version(&k, &fresh);
                Arc::new(fresh)
            }
            None => return Ok(Action::await_change()),
        }
    } else {
        host
    };
    let before = host.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let generation = host.metadata.generation;
    let result = pass(&host, &ctx, &mut status).await;
    status.observed_generation = generation;
    let (state, action) = match result {
        Ok(p) => {
            ctx.reset_backoff(&k);
            status.last_error = None;
            conditions::set(
                &mut status.conditions,
                READY,
                p.ready,
                p.reason.as_str(),
                p.message,
                generation,
            );
            let after = match p.requeue {
                Requeue::Poll => ctx.settings.host_poll,
                Requeue::Refresh => ctx.settings.host_refresh,
                Requeue::Slow => ctx.backoff(&k, false),
            };
            (p.state, Action::requeue(after))
        }
        Err(e) => {
            let action = shape::report_error(
                &ctx,
                "physicalhost",
                &k,
                &mut status.conditions,
                generation,
                &e,
            );
            status.last_error = Some(e.to_string());
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
            (state_after_error(before.state, &e), action)
        }
    };
    if let Some(r) = &status.reboot {
        let (ok, why, message) = plan::reboot_condition(r);
        conditions::set(
            &mut status.conditions,
            REBOOTED,
            ok,
            why,
            message,
            generation,
        );
    }
    status.state = Some(state);
    write_status(&host, &ctx, &before, &status).await?;
    Ok(action)
}

/// A failure is an Error state unless retrying soon is expected to help (the API server was
/// busy); BMC failures always show, as only the BMC can tell when they end.
fn state_after_error(before: Option<HostState>, e: &Error) -> HostState {
    if !e.is_transient() || matches!(e, Error::Redfish(_)) {
        HostState::Error
    } else {
        before.unwrap_or_default()
    }
}

/// The claim's Machine has a Node (the machine controller says so on the host).
fn node_joined(host: &PhysicalHost, claim: Option<&Claim>) -> bool {
    claim.is_some_and(|c| host.annotations().get(NODE_JOINED_ANNOTATION) == Some(&c.key))
}

/// What the BMC side of one pass saw.
struct Bmc {
    client: redfish::Client,
    d: Arc<redfish::Discovery>,
    power: Option<String>,
}

/// Observe, plan, execute.
async fn pass(
    host: &PhysicalHost,
    ctx: &Context,
    status: &mut PhysicalHostStatus,
) -> Result<HostPlan> {
    let bmc = connect(host, ctx, status).await?;
    let claim = host
        .spec
        .consumer_ref
        .as_ref()
        .zip(host.spec.provisioning.as_ref());
    let obs_claim = claim.map(|(c, p)| Claim {
        key: consumer_key(host, c),
        boot_mode: p.boot_mode,
    });
    // Status lost (the host was moved to another cluster, or restored from a backup): the
    // annotation still says which claim's boot was issued, so it is not issued again.
    let boot_issued_for = status
        .boot_issued_for
        .clone()
        .or_else(|| host.annotations().get(BOOT_ISSUED_ANNOTATION).cloned());
    status.boot_issued_for = boot_issued_for.clone();
    let served = ctx.artifacts.urls_of(&key(host));
    let registered = served.is_some();
    // The status read may predate the pass that wrote the delivery (a lagging cache shows the
    // host with the boot annotation but not yet that status), and the apply below would then
    // drop it: what is served says it again. Only when unset: a refused second device keeps
    // `URL` while the old registration is replaced.
    if status.config_delivery.is_none()
        && let Some((_, prov)) = claim
    {
        status.config_delivery = media::delivery_served(prov.mode, served.as_ref());
    }
    let mut media = None;
    if let Some((consumer, prov)) = claim
        && plan::needs_media(
            obs_claim.as_ref(),
            boot_issued_for.as_deref(),
            registered,
            node_joined(host, obs_claim.as_ref()),
        )
    {
        let force_url = status.config_delivery == Some(ConfigDelivery::Url);
        let prepared = media::prepare(host, ctx, &bmc.d, consumer, prov, force_url).await?;
        status.config_delivery = Some(prepared.delivery);
        media = Some(prepared.media);
    }
    let obs = observe(host, ctx, status, &bmc, obs_claim, media, registered).await?;
    let config_slot = obs
        .media
        .as_ref()
        .and_then(|m| m.config.as_ref().map(|c| c.0.clone()));
    let plan = plan::plan(&obs);
    if plan.state == HostState::Available {
        status.config_delivery = None;
        status.config_withdrawn_at = None;
    }
    steps::Executor {
        host,
        ctx,
        bmc: &bmc.client,
        d: &bmc.d,
        config_slot,
    }
    .run(plan, &obs, status)
    .await
}

/// Credentials, the BMC client, discovery, power and inventory; the conditions that say whether
/// the BMC is usable.
async fn connect(
    host: &PhysicalHost,
    ctx: &Context,
    status: &mut PhysicalHostStatus,
) -> Result<Bmc> {
    let generation = host.metadata.generation;
    let target = bmc_target(ctx, host).await?;
    let system_id = target.system_id.clone();
    let client = ctx.bmcs.client(&key(host), target, &ctx.settings)?;
    let d = client.discover(system_id.as_deref()).await?;
    let power = client.power_state(&d).await?;
    conditions::set(
        &mut status.conditions,
        BMC_CONNECTED,
        true,
        reason::CONNECTED,
        format!("{} {}", d.vendor.name(), d.system_path),
        generation,
    );
    status.observed_power_state = power.clone();
    if status.hardware_details.is_none() || status.state.is_none_or(|s| s == HostState::Enrolling) {
        let inv = client.inventory(&d).await?;
        status.hardware_details = Some(inventory::hardware_details(&inv));
        status.addresses = inventory::addresses(&inv);
    }
    status.bmc = Some(inventory::bmc_details(&d));
    let Some(boot_slot) = d.boot_slot() else {
        conditions::set(
            &mut status.conditions,
            VIRTUAL_MEDIA_READY,
            false,
            reason::NO_VIRTUAL_MEDIA_CD,
            "the BMC offers no virtual media slot that takes a CD or DVD",
            generation,
        );
        return Err(Error::HostUnsuitable("the BMC offers no virtual media slot that takes a CD or DVD: this host cannot boot an ISO over virtual media".into()));
    };
    // The configuration goes by URL although the BMC lists a second slot: it refused it.
    let refused = status.config_delivery == Some(ConfigDelivery::Url) && d.config_slot().is_some();
    let (reason, message) = if refused {
        (SECOND_MEDIA_REFUSED, "the BMC refused the config volume in its second virtual media slot; the configuration is served by URL".to_string())
    } else {
        (reason::CD_SLOT_FOUND, boot_slot.path.clone())
    };
    conditions::set(
        &mut status.conditions,
        VIRTUAL_MEDIA_READY,
        true,
        reason,
        message,
        generation,
    );
    Ok(Bmc { client, d, power })
}

/// The rest of the observation: power, the pending power request, the slots (read only when a
/// claim's media may be in them), the lock, Secure Boot when it matters.
async fn observe(
    host: &PhysicalHost,
    ctx: &Context,
    status: &PhysicalHostStatus,
    bmc: &Bmc,
    claim: Option<Claim>,
    media: Option<plan::Media>,
    registered: bool,
) -> Result<HostObservation> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let pending_power = status.last_power_request.as_ref().and_then(|r| {
        let recent = now.duration_since(r.requested_at.0).unsigned_abs() < ctx.settings.power_grace;
        recent
            .then(|| PowerChange::from_persisted(&r.action))
            .flatten()
    });
    let lock = steps::lock_state(
        host.annotations()
            .get(PROVISIONING_LOCK_ANNOTATION)
            .map(String::as_str),
        &ctx.identity,
        now,
    );
    let booted = claim.is_some()
        && status.boot_issued_for.as_deref() == claim.as_ref().map(|c| c.key.as_str());
    // An idle Available host, or a booted one, has nothing of ours to find in its slots.
    let idle = claim.is_none()
        && status.state == Some(HostState::Available)
        && status.boot_issued_for.is_none()
        && lock == plan::Lock::Free
        && !registered;
    let joined = node_joined(host, claim.as_ref());
    let withdrawn = status.config_withdrawn_at.is_some();
    let reboot = host.annotations().get(REBOOT_ANNOTATION).map(|request| {
        let record = status.reboot.as_ref().filter(|r| &r.request == request);
        RebootObservation {
            request: request.clone(),
            phase: record.map(|r| r.phase),
            graceful_expired: record.is_some_and(|r| {
                r.phase == RebootPhase::ShuttingDown
                    && now.duration_since(r.started_at.0).unsigned_abs()
                        >= ctx.settings.reboot_graceful_timeout
            }),
        }
    });
    let mut slots = Vec::new();
    // A booted host's slots matter only while the withdrawal after its Node joined is due.
    let settled = booted && (withdrawn || !joined);
    if !(idle || settled) {
        for s in bmc.d.slots.iter().filter(|s| !s.skipped) {
            let current = bmc.client.read_slot(&s.path).await?;
            let image = current.media.current_image().map(str::to_string);
            let inserted = current.media.is_inserted() || image.is_some();
            slots.push(SlotState {
                path: s.path.clone(),
                image: inserted.then(|| image.unwrap_or_default()),
            });
        }
    }
    let boot_pending = claim.is_some() && status.boot_issued_for.is_none();
    let secure_boot_enforced = if boot_pending
        && claim
            .as_ref()
            .is_some_and(|c| c.boot_mode == beskar7_api::BootMode::Uefi)
        && media.as_ref().is_some_and(|m| m.needs_secure_boot_off)
    {
        bmc.client.secure_boot_enforced(&bmc.d).await?
    } else {
        None
    };
    Ok(HostObservation {
        state: status.state,
        claim,
        boot_issued_for: status.boot_issued_for.clone(),
        power: Power::from_redfish(bmc.power.as_deref()),
        pending_power,
        slots,
        lock,
        registered,
        media,
        secure_boot_enforced,
        node_joined: joined,
        withdrawn,
        reboot,
    })
}

/// Writes the status when it changed, with one event per state transition.
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
    let to = after.state.unwrap_or_default();
    // A lagging cache shows the state before our last write again: the transition was
    // announced then, not now.
    if before.state != after.state && ctx.note_transition(&key(host), to.as_str()) {
        let from = before.state.map(|s| s.as_str()).unwrap_or("New");
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
    let phase = |s: &PhysicalHostStatus| s.reboot.as_ref().map(|r| (r.request.clone(), r.phase));
    if phase(before) != phase(&after)
        && let Some(r) = &after.reboot
    {
        let (_, why, message) = plan::reboot_condition(r);
        info!(host = %key(host), request = %r.request, phase = r.phase.as_str(), "reboot");
        let warning = matches!(r.phase, RebootPhase::Refused | RebootPhase::ForcingOff);
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: why.to_string(),
            note: Some(message),
            action: "Reboot".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder().publish(&event, &host.object_ref(&())).await {
            warn!(error = %e, "publishing event");
        }
    }
    let patch =
        json!({"apiVersion": beskar7_api::API_VERSION, "kind": "PhysicalHost", "status": after});
    let written =
        Api::<PhysicalHost>::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default())
            .patch_status(
                &host.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    ctx.note_host_version(&key(host), &written);
    Ok(())
}

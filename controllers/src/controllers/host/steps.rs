//! Carrying out a [`HostPlan`](super::plan::HostPlan): one BMC or API call per step, in order.

use std::time::Duration;

use beskar7_api::{
    BOOT_ISSUED_ANNOTATION, ConfigDelivery, NODE_JOINED_ANNOTATION, PROVISIONING_LOCK_ANNOTATION,
    PhysicalHost, PhysicalHostStatus, PowerRequest, REBOOT_ANNOTATION, RebootPhase, RebootStatus,
};
use beskar7_redfish as redfish;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;
use tracing::warn;

use super::plan::{self, HostObservation, HostPlan, Lock, PowerChange, Step};
use super::{SECOND_MEDIA_REFUSED, key};
use crate::context::Context;
use crate::error::Result;

/// How long a provisioning lock holds against other managers without being renewed. Its holder
/// renews it on every pass (every few seconds while the sequence runs), so this only decides how
/// soon the lock of a manager that died is taken over, like a leader-election lease.
pub const PROVISIONING_LOCK_TTL: Duration = Duration::from_secs(30);

/// The lock annotation (`<holder> <RFC 3339 time> <claim>`) as this manager sees it.
pub fn lock_state(
    annotation: Option<&str>,
    identity: &str,
    now: k8s_openapi::jiff::Timestamp,
) -> Lock {
    let Some(lock) = annotation else {
        return Lock::Free;
    };
    let mut parts = lock.splitn(3, ' ');
    let (holder, taken) = (parts.next().unwrap_or(""), parts.next());
    if holder == identity {
        return Lock::Ours;
    }
    let live = taken
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|t| now.duration_since(t).unsigned_abs() < PROVISIONING_LOCK_TTL);
    if live { Lock::OtherLive } else { Lock::Expired }
}

/// How long ago the lock was taken (renewed).
fn lock_age(annotation: Option<&str>, now: k8s_openapi::jiff::Timestamp) -> Duration {
    annotation
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| now.duration_since(t).unsigned_abs())
        .unwrap_or(Duration::MAX)
}

/// Everything executing a plan needs.
pub struct Executor<'a> {
    pub host: &'a PhysicalHost,
    pub ctx: &'a Context,
    pub bmc: &'a redfish::Client,
    pub d: &'a redfish::Discovery,
    /// The claim's config slot, where a refused insert means: serve the config by URL.
    pub config_slot: Option<String>,
}

impl Executor<'_> {
    /// Runs the steps; returns the plan that holds afterwards (the plan itself, or what a
    /// refused lock or a refused second device leaves).
    pub async fn run(
        &self,
        p: HostPlan,
        obs: &HostObservation,
        status: &mut PhysicalHostStatus,
    ) -> Result<HostPlan> {
        for step in &p.steps {
            match step {
                Step::Revoke => {
                    self.ctx.artifacts.revoke(&key(self.host));
                }
                Step::TakeLock => {
                    let claim = obs.claim.as_ref().map(|c| c.key.as_str()).unwrap_or("");
                    if !take_lock(self.host, self.ctx, claim).await? {
                        return Ok(p.lock_refused(obs));
                    }
                }
                Step::Power(change) => self.power(*change, status).await?,
                Step::Eject(slot) => {
                    self.bmc.eject_media(slot).await?;
                }
                Step::Insert { slot, url } => match self.bmc.insert_media(slot, url).await {
                    Err(redfish::Error::Refused(why) | redfish::Error::NotSupported(why))
                        if self.config_slot.as_deref() == Some(slot.as_str()) =>
                    {
                        return self.fall_back_to_url(obs, status, &why).await;
                    }
                    r => {
                        r?;
                    }
                },
                Step::BootOnce(mode) => {
                    let mode = match mode {
                        beskar7_api::BootMode::Legacy => redfish::BootMode::Legacy,
                        beskar7_api::BootMode::Uefi => redfish::BootMode::Uefi,
                    };
                    self.bmc.set_boot_once_cd(self.d, Some(mode)).await?;
                }
                Step::RecordReboot {
                    request,
                    phase,
                    message,
                } => record_reboot(status, request, *phase, message.clone()),
                Step::RemoveRebootAnnotation(request) => {
                    remove_reboot_annotation(self.host, self.ctx, request).await?;
                }
                Step::RecordWithdrawn => {
                    status.config_withdrawn_at = Some(Time(k8s_openapi::jiff::Timestamp::now()));
                }
                Step::RecordBootIssued(claim) => {
                    record_boot_issued(self.host, self.ctx, claim.as_deref()).await?;
                    status.boot_issued_for = claim.clone();
                }
            }
        }
        Ok(p)
    }

    /// Asks the BMC for a power change and keeps the request in status, so it is not asked again
    /// while the BMC carries it out (also after a restart).
    async fn power(&self, change: PowerChange, status: &mut PhysicalHostStatus) -> Result<()> {
        let action = match change {
            PowerChange::On => redfish::PowerAction::On,
            PowerChange::GracefulOff => redfish::PowerAction::GracefulOff,
            PowerChange::ForceOff => redfish::PowerAction::ForceOff,
        };
        self.bmc.set_power(self.d, action).await?;
        status.last_power_request = Some(PowerRequest {
            action: change.as_str().to_string(),
            requested_at: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        Ok(())
    }

    /// The BMC refused the config volume in its second slot (some take one virtual media device
    /// at a time: Metal3 does not attach a second one on Dell): from now on this claim's
    /// configuration is served by URL, named on the boot ISO's kernel command line. What is
    /// inserted is ejected, as the boot ISO served under the same URL changes too.
    async fn fall_back_to_url(
        &self,
        obs: &HostObservation,
        status: &mut PhysicalHostStatus,
        why: &str,
    ) -> Result<HostPlan> {
        warn!(host = %key(self.host), reason = why, "second virtual media device refused; serving the configuration by URL");
        for slot in self.d.slots.iter().filter(|s| !s.skipped) {
            self.bmc.eject_media(&slot.path).await?;
        }
        status.config_delivery = Some(ConfigDelivery::Url);
        let message = format!(
            "the BMC refused the config volume in a second virtual media slot ({why}); the configuration is served by URL instead"
        );
        let event = Event {
            type_: EventType::Warning,
            reason: SECOND_MEDIA_REFUSED.into(),
            note: Some(message),
            action: "InsertMedia".into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder()
            .publish(&event, &self.host.object_ref(&()))
            .await
        {
            warn!(error = %e, "publishing event");
        }
        Ok(plan::second_media_refused(obs))
    }
}

/// Notes how far a reboot request got in `status.reboot` (written with the status at the end of
/// the pass, after the power change it follows was accepted by the BMC).
fn record_reboot(
    status: &mut PhysicalHostStatus,
    request: &str,
    phase: RebootPhase,
    message: Option<String>,
) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let r = match status.reboot.as_mut().filter(|r| r.request == request) {
        Some(r) => r,
        None => status.reboot.insert(RebootStatus {
            request: request.to_string(),
            phase,
            started_at: now.clone(),
            finished_at: None,
            forced: false,
            message: None,
        }),
    };
    r.phase = phase;
    r.forced |= phase == RebootPhase::ForcingOff;
    if phase.is_final() {
        r.finished_at = Some(now);
    }
    r.message = message;
}

/// Removes the reboot annotation while it still holds `request`: the patch carries the
/// resourceVersion of the copy that showed it, so a new request written meanwhile stays (the
/// conflict leaves the removal to the next pass, which sees that request).
async fn remove_reboot_annotation(host: &PhysicalHost, ctx: &Context, request: &str) -> Result<()> {
    if host
        .annotations()
        .get(REBOOT_ANNOTATION)
        .map(String::as_str)
        != Some(request)
    {
        return Ok(());
    }
    let patch = json!({"metadata": {
        "resourceVersion": host.resource_version(),
        "annotations": {REBOOT_ANNOTATION: null},
    }});
    match Api::<PhysicalHost>::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default())
        .patch(
            &host.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(written) => {
            ctx.note_host_version(&key(host), &written);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Records (or clears) the issued boot in the annotation that survives `clusterctl move`, and
/// lets go of the provisioning lock.
async fn record_boot_issued(host: &PhysicalHost, ctx: &Context, claim: Option<&str>) -> Result<()> {
    let annotations = host.annotations();
    let joined_left = claim.is_none() && annotations.contains_key(NODE_JOINED_ANNOTATION);
    if annotations.get(BOOT_ISSUED_ANNOTATION).map(String::as_str) == claim
        && !annotations.contains_key(PROVISIONING_LOCK_ANNOTATION)
        && !joined_left
    {
        return Ok(());
    }
    let mut patch = json!({"metadata": {"annotations": {
        BOOT_ISSUED_ANNOTATION: claim,
        PROVISIONING_LOCK_ANNOTATION: null,
    }}});
    if claim.is_none() {
        // Released: the Node of the claim is no longer this host's.
        patch["metadata"]["annotations"][NODE_JOINED_ANNOTATION] = serde_json::Value::Null;
    }
    let written =
        Api::<PhysicalHost>::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default())
            .patch(
                &host.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    ctx.note_host_version(&key(host), &written);
    Ok(())
}

/// Takes (or renews) the right to run `claim`'s boot sequence on this host. The host is read
/// from the API server, not the cache: if its boot was issued meanwhile, or another manager's
/// lock is live, the answer is no. The lock is written with the resourceVersion just read, so of
/// two managers racing only one gets it (the other sees a conflict and comes back).
async fn take_lock(host: &PhysicalHost, ctx: &Context, claim: &str) -> Result<bool> {
    let api: Api<PhysicalHost> =
        Api::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&host.name_any()).await? else {
        return Ok(false);
    };
    let issued = fresh
        .annotations()
        .get(BOOT_ISSUED_ANNOTATION)
        .cloned()
        .or(fresh
            .status
            .as_ref()
            .and_then(|s| s.boot_issued_for.clone()));
    let same_claim = fresh
        .spec
        .consumer_ref
        .as_ref()
        .is_some_and(|c| super::consumer_key(&fresh, c) == claim);
    if issued.is_some() || !same_claim {
        // Our copy was stale: the next pass works from the current one.
        return Ok(false);
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let lock = fresh
        .annotations()
        .get(PROVISIONING_LOCK_ANNOTATION)
        .map(String::as_str);
    let held_for_claim = lock.is_some_and(|l| l.splitn(3, ' ').nth(2) == Some(claim));
    match lock_state(lock, &ctx.identity, now) {
        Lock::OtherLive if held_for_claim => return Ok(false),
        // Ours and fresh: no write. Every write is a watch event that starts the next pass at
        // once, so renewing on every pass would retry a failing step in a tight loop.
        Lock::Ours if held_for_claim && lock_age(lock, now) < PROVISIONING_LOCK_TTL / 3 => {
            return Ok(true);
        }
        _ => {}
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
        Ok(written) => {
            ctx.note_host_version(&key(host), &written);
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_states() {
        let now: k8s_openapi::jiff::Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        assert_eq!(lock_state(None, "me", now), Lock::Free);
        assert_eq!(
            lock_state(Some("me 2026-12-02T09:00:00Z ns/m"), "me", now),
            Lock::Ours
        );
        assert_eq!(
            lock_state(Some("other 2026-12-02T09:59:50Z ns/m"), "me", now),
            Lock::OtherLive
        );
        assert_eq!(
            lock_state(Some("other 2026-12-02T09:59:00Z ns/m"), "me", now),
            Lock::Expired
        );
        assert_eq!(lock_state(Some("garbage"), "me", now), Lock::Expired);
    }
}

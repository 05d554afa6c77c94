//! Beskar7Remediation controller: CAPI's external remediation by reboot.
//!
//! Read (the Machine, its host), decide ([`decide`], pure), act, report. The reboot itself is
//! the host controller's (the only code that talks to a BMC): this controller writes the
//! PhysicalHost's reboot annotation and reads back `status.reboot`. Each try is recorded in this
//! object's status before the annotation is written, so a restarted manager resends an
//! unanswered request instead of starting a second try, and a try that completed is never
//! repeated. The MachineHealthCheck deletes the remediation once the Node is healthy again; if
//! it is still here `timeout` after the last reboot and the retries are used up, the Machine's
//! `OwnerRemediated` condition goes False and its owner (MachineSet, KubeadmControlPlane)
//! replaces it.

use std::sync::Arc;
use std::time::Duration;

use beskar7_api::remediation::parse_timeout;
use beskar7_api::{
    Beskar7Machine, Beskar7Remediation, Beskar7RemediationStatus, HostReference, PhysicalHost,
    REBOOT_ANNOTATION, RebootPhase, RebootStatus, RemediationPhase,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::shape;
use crate::capi;
use crate::conditions::{self, HOST_REBOOTED, OWNER_REMEDIATED, REMEDIATED, reason};
use crate::context::Context;
use crate::error::{Error, Result};

pub const FIELD_MANAGER: &str = "beskar7-remediation";

/// How often a remediation whose reboot is under way looks again (the host's watch events wake
/// it sooner).
const POLL: Duration = Duration::from_secs(5);

/// The host as the remediation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    /// The reboot annotation's value.
    pub annotation: Option<String>,
    pub reboot: Option<RebootStatus>,
}

/// Everything one pass decides from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub retry_limit: i32,
    pub timeout: Duration,
    /// Tries asked so far (`status.retryCount`).
    pub retry_count: i32,
    /// The current try's request (`status.rebootRequest`).
    pub request: Option<String>,
    /// Already given up (`status.phase: Failed`).
    pub failed: bool,
    /// None: the Machine has no host of ours (no providerID, or the host is gone).
    pub host: Option<HostView>,
    pub now: Timestamp,
}

/// What to do in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ask try `attempt`.
    Request { attempt: i32 },
    /// The current try is recorded here but not on the host (a restart between the two
    /// writes, or a conflict): write its annotation again. Not a new try.
    Resend,
    /// The host carries out the current try (`phase`: how far it got, None: not begun).
    Rebooting { phase: Option<RebootPhase> },
    /// Another reboot request is on the host: ours waits for it to end.
    WaitForOtherReboot(String),
    /// The host rebooted at `rebooted`: the Node has until `deadline` to recover.
    WaitForNode {
        rebooted: Timestamp,
        deadline: Timestamp,
    },
    /// Give up: the Machine's owner replaces it.
    GiveUp {
        reason: &'static str,
        message: String,
    },
}

/// The request annotation of try `attempt` of the remediation with `uid`: unique per try and
/// per remediation object (the MachineHealthCheck recreates one with the same name).
pub fn request_id(uid: &str, attempt: i32) -> String {
    format!("beskar7-remediation/{uid}/{attempt}")
}

/// Decides the pass (see the module docs).
pub fn decide(o: &Observation) -> Decision {
    if o.failed {
        return Decision::GiveUp {
            reason: reason::RETRY_LIMIT_REACHED,
            message: "remediation failed earlier; the Machine's owner replaces it".into(),
        };
    }
    let Some(host) = &o.host else {
        return Decision::GiveUp {
            reason: reason::HOST_NOT_FOUND,
            message:
                "the Machine has no PhysicalHost to reboot (no providerID, or the host is gone)"
                    .into(),
        };
    };
    let next = |o: &Observation| {
        if o.retry_count >= o.retry_limit {
            Decision::GiveUp {
                reason: reason::RETRY_LIMIT_REACHED,
                message: format!(
                    "the Node did not become healthy within {}s after {} reboot(s) (retryLimit {})",
                    o.timeout.as_secs(),
                    o.retry_count,
                    o.retry_limit
                ),
            }
        } else if let Some(other) = &host.annotation {
            Decision::WaitForOtherReboot(other.clone())
        } else {
            Decision::Request {
                attempt: o.retry_count + 1,
            }
        }
    };
    let Some(request) = &o.request else {
        return next(o);
    };
    let record = host.reboot.as_ref().filter(|r| &r.request == request);
    match record.map(|r| (r.phase, r.finished_at.as_ref())) {
        Some((RebootPhase::Completed, finished)) => {
            let rebooted = finished.map(|t| t.0).unwrap_or(o.now);
            let deadline = rebooted.checked_add(o.timeout).unwrap_or(Timestamp::MAX);
            if o.now < deadline {
                Decision::WaitForNode { rebooted, deadline }
            } else {
                next(o)
            }
        }
        Some((RebootPhase::Refused, _)) => Decision::GiveUp {
            reason: reason::REBOOT_REFUSED,
            message: record
                .and_then(|r| r.message.clone())
                .unwrap_or_else(|| "the host refused the reboot".into()),
        },
        Some((phase, _)) => Decision::Rebooting { phase: Some(phase) },
        None => match &host.annotation {
            Some(a) if a == request => Decision::Rebooting { phase: None },
            // Someone else's request arrived before ours was written: ours waits.
            Some(other) => Decision::WaitForOtherReboot(other.clone()),
            None => Decision::Resend,
        },
    }
}

pub async fn reconcile(rem: Arc<Beskar7Remediation>, ctx: Arc<Context>) -> Result<Action> {
    if rem.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let k = shape::key(&*rem);
    let before = rem.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let generation = rem.metadata.generation;
    let action = match pass(&rem, &ctx, &mut status).await {
        Ok(a) => {
            ctx.reset_backoff(&k);
            a
        }
        Err(e) => shape::report_error(
            &ctx,
            "beskar7remediation",
            &k,
            &mut status.conditions,
            generation,
            &e,
        ),
    };
    status.observed_generation = generation;
    shape::apply_status(&ctx, &*rem, FIELD_MANAGER, &before, &status, &[]).await?;
    Ok(action)
}

async fn pass(
    rem: &Beskar7Remediation,
    ctx: &Context,
    status: &mut Beskar7RemediationStatus,
) -> Result<Action> {
    let ns = rem.namespace().unwrap_or_default();
    let generation = rem.metadata.generation;
    let machine_name = capi::owner_name(&rem.metadata, "Machine").unwrap_or_else(|| rem.name_any());
    let Some(machine) = ctx
        .capi_object(&ctx.capi_machines, "Machine", &ns, &machine_name)
        .await?
    else {
        conditions::set(
            &mut status.conditions,
            REMEDIATED,
            false,
            reason::MACHINE_NOT_FOUND,
            format!("Machine {machine_name} not found"),
            generation,
        );
        return Ok(Action::requeue(ctx.settings.waiting_requeue));
    };
    let cluster = ctx
        .capi_cluster(
            &ns,
            capi::Machine::from_object(&machine).cluster_name.as_deref(),
        )
        .await?;
    if shape::paused(
        cluster.as_ref(),
        &rem.metadata,
        &mut status.conditions,
        generation,
    ) {
        return Ok(Action::await_change());
    }
    let spec = &rem.spec.strategy;
    let timeout = parse_timeout(&spec.timeout).ok_or_else(|| {
        Error::Invalid(format!(
            "spec.strategy.timeout {:?} is not a duration such as 300s, 5m or 1h30m",
            spec.timeout
        ))
    })?;
    let host = machine_host(ctx, &ns, &machine).await?;
    status.host_ref = host.as_ref().map(|h| HostReference {
        name: h.name_any(),
        namespace: h.namespace(),
    });
    let now = Timestamp::now();
    let obs = Observation {
        retry_limit: spec.retry_limit,
        timeout: Duration::from_secs(timeout),
        retry_count: status.retry_count.unwrap_or(0),
        request: status.reboot_request.clone(),
        failed: status.phase == Some(RemediationPhase::Failed),
        host: host.as_ref().map(|h| HostView {
            annotation: h.annotations().get(REBOOT_ANNOTATION).cloned(),
            reboot: h.status.as_ref().and_then(|s| s.reboot.clone()),
        }),
        now,
    };
    let decision = decide(&obs);
    let set = |status: &mut Beskar7RemediationStatus, type_, ok, why: &str, message: String| {
        conditions::set(&mut status.conditions, type_, ok, why, message, generation)
    };
    let host_name = host.as_ref().map(|h| h.name_any()).unwrap_or_default();
    match decision {
        Decision::Request { attempt } => {
            let request = request_id(&rem.uid().unwrap_or_default(), attempt);
            let before = status.clone();
            status.retry_count = Some(attempt);
            status.reboot_request = Some(request.clone());
            status.last_remediated = Some(Time(now));
            status.last_rebooted = None;
            status.phase = Some(RemediationPhase::Running);
            let message = format!(
                "asked PhysicalHost {host_name} to reboot (try {attempt} of {})",
                spec.retry_limit
            );
            set(
                status,
                HOST_REBOOTED,
                false,
                reason::REBOOT_REQUESTED,
                message.clone(),
            );
            set(
                status,
                REMEDIATED,
                false,
                reason::REBOOTING,
                message.clone(),
            );
            // The try is on record before it is asked: a restart in between resends it.
            shape::apply_status(ctx, rem, FIELD_MANAGER, &before, &*status, &[]).await?;
            if let Some(h) = &host {
                request_reboot(ctx, h, &request).await?;
            }
            info!(remediation = %shape::key(rem), host = %host_name, attempt, "reboot requested");
            publish(
                ctx,
                rem,
                EventType::Normal,
                reason::REBOOT_REQUESTED,
                message,
            )
            .await;
            Ok(Action::requeue(POLL))
        }
        Decision::Resend => {
            if let (Some(h), Some(request)) = (&host, &status.reboot_request) {
                request_reboot(ctx, h, request).await?;
            }
            Ok(Action::requeue(POLL))
        }
        Decision::Rebooting { phase } => {
            status.phase = Some(RemediationPhase::Running);
            let how_far = phase.map_or("not begun yet", RebootPhase::as_str);
            let message = format!("PhysicalHost {host_name} is rebooting: {how_far}");
            set(
                status,
                HOST_REBOOTED,
                false,
                reason::REBOOTING,
                message.clone(),
            );
            set(status, REMEDIATED, false, reason::REBOOTING, message);
            Ok(Action::requeue(POLL))
        }
        Decision::WaitForOtherReboot(other) => {
            status.phase = Some(RemediationPhase::Running);
            let message = format!(
                "PhysicalHost {host_name} carries another reboot request ({other:?}); waiting for it to end"
            );
            set(status, REMEDIATED, false, reason::REBOOTING, message);
            Ok(Action::requeue(POLL))
        }
        Decision::WaitForNode { rebooted, deadline } => {
            let first = status.phase != Some(RemediationPhase::Waiting);
            status.phase = Some(RemediationPhase::Waiting);
            status.last_rebooted = Some(Time(rebooted));
            let try_ = status.retry_count.unwrap_or(0);
            set(
                status,
                HOST_REBOOTED,
                true,
                reason::REBOOT_COMPLETED,
                format!("PhysicalHost {host_name} rebooted at {rebooted} (try {try_})"),
            );
            let message = format!(
                "waiting until {deadline} for the Node to become healthy; the MachineHealthCheck then ends this remediation"
            );
            set(status, REMEDIATED, false, reason::WAITING_FOR_NODE, message);
            if first {
                publish(
                    ctx,
                    rem,
                    EventType::Normal,
                    reason::REBOOT_COMPLETED,
                    format!("PhysicalHost {host_name} rebooted (try {try_}); waiting for the Node"),
                )
                .await;
            }
            let left = deadline.duration_since(now).unsigned_abs();
            Ok(Action::requeue(left + Duration::from_secs(1)))
        }
        Decision::GiveUp {
            reason: why,
            message,
        } => {
            let first = status.phase != Some(RemediationPhase::Failed);
            status.phase = Some(RemediationPhase::Failed);
            let message = format!("{message}; the Machine's owner replaces it");
            set(status, REMEDIATED, false, why, message.clone());
            mark_owner_remediated(ctx, &machine, &message).await?;
            if first {
                warn!(remediation = %shape::key(rem), reason = why, "remediation failed");
                publish(ctx, rem, EventType::Warning, why, message).await;
            }
            Ok(Action::await_change())
        }
    }
}

/// The host of the Machine: by its providerID (the Machine's, else its Beskar7Machine's). Read
/// from the API server, not a cache: the annotation this pass may write must not rest on an old
/// copy.
async fn machine_host(
    ctx: &Context,
    ns: &str,
    machine: &DynamicObject,
) -> Result<Option<PhysicalHost>> {
    let mut provider_id = machine.data["spec"]["providerID"]
        .as_str()
        .map(str::to_string);
    if provider_id.is_none()
        && machine.data["spec"]["infrastructureRef"]["kind"] == "Beskar7Machine"
        && let Some(name) = machine.data["spec"]["infrastructureRef"]["name"].as_str()
    {
        provider_id = Api::<Beskar7Machine>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
            .and_then(|m| m.spec.provider_id);
    }
    let Some((host_ns, host)) = provider_id
        .as_deref()
        .and_then(beskar7_api::parse_provider_id)
    else {
        return Ok(None);
    };
    Ok(Api::<PhysicalHost>::namespaced(ctx.client.clone(), host_ns)
        .get_opt(host)
        .await?)
}

/// Writes the reboot annotation, guarded by the resourceVersion read: a request someone else
/// wrote meanwhile is not overwritten (the conflict sends the pass round again).
async fn request_reboot(ctx: &Context, host: &PhysicalHost, request: &str) -> Result<()> {
    let patch = json!({"metadata": {
        "resourceVersion": host.resource_version(),
        "annotations": {REBOOT_ANNOTATION: request},
    }});
    Api::<PhysicalHost>::namespaced(ctx.client.clone(), &host.namespace().unwrap_or_default())
        .patch(
            &host.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Gives the Machine back to its owner: `OwnerRemediated=False` with CAPI's own reason, which
/// the MachineSet and KubeadmControlPlane act on by deleting and replacing the Machine. Applied
/// with our own field manager, so CAPI's writes of its conditions keep it.
async fn mark_owner_remediated(
    ctx: &Context,
    machine: &DynamicObject,
    message: &str,
) -> Result<()> {
    let conditions = machine.data["status"]["conditions"].as_array();
    let already = conditions.is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == OWNER_REMEDIATED && c["status"] == "False")
    });
    if already {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": format!("{}/{}", capi::CAPI_GROUP, capi::CAPI_VERSION),
        "kind": "Machine",
        "status": {"conditions": [{
            "type": OWNER_REMEDIATED,
            "status": "False",
            "reason": reason::WAITING_FOR_REMEDIATION,
            "message": message,
            "lastTransitionTime": Timestamp::now().to_string(),
            "observedGeneration": machine.metadata.generation,
        }]},
    });
    Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        &machine.namespace().unwrap_or_default(),
        &capi::resource("Machine"),
    )
    .patch_status(
        &machine.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    rem: &Beskar7Remediation,
    type_: EventType,
    why: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: why.to_string(),
        note: Some(note),
        action: "Remediate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&event, &rem.object_ref(&())).await {
        warn!(error = %e, "publishing event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-04T10:00:00Z";

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    fn obs(retry_count: i32, request: Option<&str>, host: Option<HostView>) -> Observation {
        Observation {
            retry_limit: 2,
            timeout: Duration::from_secs(300),
            retry_count,
            request: request.map(str::to_string),
            failed: false,
            host,
            now: at(NOW),
        }
    }

    fn host(
        annotation: Option<&str>,
        reboot: Option<(&str, RebootPhase, Option<&str>)>,
    ) -> HostView {
        HostView {
            annotation: annotation.map(str::to_string),
            reboot: reboot.map(|(request, phase, finished)| RebootStatus {
                request: request.into(),
                phase,
                started_at: Time(at("2026-12-04T09:50:00Z")),
                finished_at: finished.map(|f| Time(at(f))),
                forced: false,
                message: Some("refused because".into()),
            }),
        }
    }

    #[test]
    fn the_first_pass_asks_the_first_try() {
        assert_eq!(
            decide(&obs(0, None, Some(host(None, None)))),
            Decision::Request { attempt: 1 }
        );
        // An older, completed reboot of someone else's changes nothing.
        assert_eq!(
            decide(&obs(
                0,
                None,
                Some(host(
                    None,
                    Some(("manual", RebootPhase::Completed, Some(NOW)))
                ))
            )),
            Decision::Request { attempt: 1 }
        );
    }

    #[test]
    fn a_recorded_try_is_resent_never_repeated() {
        // Recorded, not on the host (a restart between the two writes): the same try again.
        assert_eq!(
            decide(&obs(1, Some("r1"), Some(host(None, None)))),
            Decision::Resend
        );
        // On the host, not begun / under way: wait.
        assert_eq!(
            decide(&obs(1, Some("r1"), Some(host(Some("r1"), None)))),
            Decision::Rebooting { phase: None }
        );
        assert_eq!(
            decide(&obs(
                1,
                Some("r1"),
                Some(host(
                    Some("r1"),
                    Some(("r1", RebootPhase::ShuttingDown, None))
                ))
            )),
            Decision::Rebooting {
                phase: Some(RebootPhase::ShuttingDown)
            }
        );
    }

    #[test]
    fn after_a_reboot_the_node_gets_the_timeout_then_the_next_try_then_give_up() {
        let done = |finished| {
            Some(host(
                None,
                Some(("r1", RebootPhase::Completed, Some(finished))),
            ))
        };
        // Rebooted 4 minutes ago: the Node has a minute left.
        assert_eq!(
            decide(&obs(1, Some("r1"), done("2026-12-04T09:56:00Z"))),
            Decision::WaitForNode {
                rebooted: at("2026-12-04T09:56:00Z"),
                deadline: at("2026-12-04T10:01:00Z"),
            }
        );
        // Timed out with a try left: the next one.
        assert_eq!(
            decide(&obs(1, Some("r1"), done("2026-12-04T09:54:00Z"))),
            Decision::Request { attempt: 2 }
        );
        // Timed out with none left: give up.
        assert!(matches!(
            decide(&obs(2, Some("r1"), done("2026-12-04T09:54:00Z"))),
            Decision::GiveUp { reason: r, .. } if r == reason::RETRY_LIMIT_REACHED
        ));
    }

    #[test]
    fn refusals_missing_hosts_and_other_requests() {
        assert!(matches!(
            decide(&obs(1, Some("r1"), Some(host(None, Some(("r1", RebootPhase::Refused, Some(NOW))))))),
            Decision::GiveUp { reason: r, message } if r == reason::REBOOT_REFUSED && message == "refused because"
        ));
        assert!(matches!(
            decide(&obs(0, None, None)),
            Decision::GiveUp { reason: r, .. } if r == reason::HOST_NOT_FOUND
        ));
        // A person's reboot is under way: ours waits, before and after it was recorded.
        assert_eq!(
            decide(&obs(0, None, Some(host(Some("manual"), None)))),
            Decision::WaitForOtherReboot("manual".into())
        );
        assert_eq!(
            decide(&obs(1, Some("r1"), Some(host(Some("manual"), None)))),
            Decision::WaitForOtherReboot("manual".into())
        );
        // Failed stays failed.
        let mut o = obs(0, None, Some(host(None, None)));
        o.failed = true;
        assert!(matches!(decide(&o), Decision::GiveUp { .. }));
    }

    #[test]
    fn request_ids_differ_per_try_and_per_remediation() {
        assert_ne!(request_id("u1", 1), request_id("u1", 2));
        assert_ne!(request_id("u1", 1), request_id("u2", 1));
    }
}

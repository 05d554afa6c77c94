//! What every reconciler here does the same way (the shape of CAPD's and controller-rs's
//! reconcilers): write the status once per pass when it changed, turn an error into the Ready
//! condition and the `reconcile_error` metric, gate on pause, and keep a finalizer.

use std::fmt::Debug;

use beskar7_api::Condition;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use crate::capi;
use crate::conditions::{self, PAUSED, READY};
use crate::context::{AppliedStatus, Context};
use crate::error::{Error, Result};

/// `<namespace>/<name>`: the key of an object in logs, backoff and metrics.
pub fn key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Server-side applies `status` when it differs from `before`. A 404 (the object was deleted
/// meanwhile, e.g. after its finalizer went) is not an error: nothing is left to report on.
/// `own_writes`: the resourceVersions this pass gave the object before its status (metadata or
/// spec patches); a later pass on one of those copies is older than this status write.
pub async fn apply_status<K, S>(
    ctx: &Context,
    obj: &K,
    field_manager: &str,
    before: &S,
    status: &S,
    own_writes: &[String],
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Serialize + PartialEq,
{
    if before == status {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    // A pass on a copy older than an earlier pass's status write (the very copy it read, or one
    // of its own writes before the status, whose watch events arrive first) that would write the
    // same status again has nothing to write.
    let memo_key = applied_key(obj);
    let version = obj.resource_version().unwrap_or_default();
    let digest = digest(&patch);
    if ctx
        .applied_status
        .lock()
        .unwrap()
        .get(&memo_key)
        .is_some_and(|a| a.digest == digest && a.older.contains(&version))
    {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    match api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {
            let older = std::iter::once(version)
                .chain(own_writes.iter().cloned())
                .collect();
            ctx.applied_status
                .lock()
                .unwrap()
                .insert(memo_key, AppliedStatus { older, digest });
            Ok(())
        }
        // Gone: nothing to remember of it.
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.applied_status.lock().unwrap().remove(&applied_key(obj));
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A digest of a status patch without its conditions' `lastTransitionTime`s: a pass on an older
/// copy sees a condition change again and stamps it with its own clock, and that alone is no
/// reason to write (it would move the time of a transition already recorded).
fn digest(v: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    fn without_transition_times(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), without_transition_times(v)))
                .collect(),
            serde_json::Value::Array(a) => a.iter().map(without_transition_times).collect(),
            other => other.clone(),
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    without_transition_times(v).to_string().hash(&mut h);
    h.finish()
}

/// `<kind>/<namespace>/<name>`: an object's entry in `Context::applied_status`.
fn applied_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}", K::kind(&()), key(obj))
}

/// A failed pass of `controller` on `key`: logged, counted by reason, shown as Ready=False with
/// the error's reason; returns when to try again.
pub fn report_error(
    ctx: &Context,
    controller: &str,
    key: &str,
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    e: &Error,
) -> Action {
    warn!(object = %key, controller, reason = e.reason(), error = %e, "reconcile failed");
    ctx.metrics.reconcile_error(controller, e.reason());
    conditions::set(
        conditions,
        READY,
        false,
        e.reason(),
        e.to_string(),
        generation,
    );
    Action::requeue(ctx.backoff(key, e.is_transient()))
}

/// The pause gate of the CAPI contract: paused while the owner Cluster has `spec.paused` or the
/// object the pause annotation; the `Paused` condition says which way. True: stop this pass.
pub fn paused(
    cluster: Option<&capi::Cluster>,
    meta: &kube::api::ObjectMeta,
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
) -> bool {
    let paused = capi::is_paused(cluster, meta);
    if paused {
        conditions::set(
            conditions,
            PAUSED,
            true,
            "Paused",
            "the Cluster or this object is paused",
            generation,
        );
    } else {
        conditions::set(conditions, PAUSED, false, "NotPaused", "", generation);
    }
    paused
}

/// Adds or removes `finalizer`, guarded by the object's resourceVersion so a concurrent change
/// is not overwritten (a conflict is an error; the next pass reads again). Returns the object
/// as written.
pub async fn set_finalizer<K>(ctx: &Context, obj: &K, finalizer: &str, present: bool) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({"metadata": {
        "finalizers": finalizers_with(obj, finalizer, present),
        "resourceVersion": obj.resource_version(),
    }});
    Ok(api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

/// The object's finalizers with `finalizer` present or not: the whole list a merge patch sends
/// (it replaces lists).
pub fn finalizers_with<K: ResourceExt>(obj: &K, finalizer: &str, present: bool) -> Vec<String> {
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if present {
        finalizers.push(finalizer.to_string());
    }
    finalizers
}

/// The error policy every controller registers: the backoff of [`Context::backoff`].
pub fn error_policy<K: ResourceExt>(
    obj: std::sync::Arc<K>,
    err: &Error,
    ctx: std::sync::Arc<Context>,
) -> Action {
    Action::requeue(ctx.backoff(&key(&*obj), err.is_transient()))
}

#[cfg(test)]
mod tests {
    use super::digest;
    use serde_json::json;

    #[test]
    fn status_digest_ignores_only_transition_times() {
        let status = |time: &str, message: &str| {
            json!({"status": {"phase": "Provisioning", "conditions": [
                {"type": "Ready", "status": "False", "reason": "HostProvisioning",
                 "message": message, "lastTransitionTime": time}]}})
        };
        let a = status("2026-12-04T05:00:00Z", "PhysicalHost h1 is provisioning");
        assert_eq!(
            digest(&a),
            digest(&status(
                "2026-12-04T05:00:07Z",
                "PhysicalHost h1 is provisioning"
            ))
        );
        assert_ne!(
            digest(&a),
            digest(&status(
                "2026-12-04T05:00:00Z",
                "PhysicalHost h1 is Provisioned"
            ))
        );
    }
}

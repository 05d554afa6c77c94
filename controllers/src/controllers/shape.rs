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
use crate::context::Context;
use crate::error::{Error, Result};

/// `<namespace>/<name>`: the key of an object in logs, backoff and metrics.
pub fn key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Server-side applies `status` when it differs from `before`. A 404 (the object was deleted
/// meanwhile, e.g. after its finalizer went) is not an error: nothing is left to report on.
pub async fn apply_status<K, S>(
    ctx: &Context,
    obj: &K,
    field_manager: &str,
    before: &S,
    status: &S,
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
    // A pass on the very copy an earlier pass already brought to this status (the cache has not
    // delivered our write yet: another watch woke the object) has nothing to write.
    let memo_key = applied_key(obj);
    let written = (obj.resource_version().unwrap_or_default(), digest(&patch));
    if ctx.applied_status.lock().unwrap().get(&memo_key) == Some(&written) {
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
            ctx.applied_status.lock().unwrap().insert(memo_key, written);
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

fn digest(v: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    v.to_string().hash(&mut h);
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
/// is not overwritten (a conflict is an error; the next pass reads again).
pub async fn set_finalizer<K>(ctx: &Context, obj: &K, finalizer: &str, present: bool) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if present {
        finalizers.push(finalizer.to_string());
    }
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The error policy every controller registers: the backoff of [`Context::backoff`].
pub fn error_policy<K: ResourceExt>(
    obj: std::sync::Arc<K>,
    err: &Error,
    ctx: std::sync::Arc<Context>,
) -> Action {
    Action::requeue(ctx.backoff(&key(&*obj), err.is_transient()))
}

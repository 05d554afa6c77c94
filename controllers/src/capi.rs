//! The few CAPI core objects we read (Machine, Cluster), as dynamic objects of
//! `cluster.x-k8s.io/v1beta2`: we need a handful of fields, not CAPI's whole API.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::core::ObjectMeta;
use serde_json::Value;

pub const CAPI_GROUP: &str = "cluster.x-k8s.io";
pub const CAPI_VERSION: &str = "v1beta2";
/// Label CAPI puts on every object of a cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Annotation that pauses reconciliation of one object.
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
/// Annotation CAPI topology puts on objects of a ClusterClass dry-run.
pub const DRY_RUN_ANNOTATION: &str = "topology.cluster.x-k8s.io/dry-run";
/// Set by `clusterctl move` on the source copy just before deleting it: the object lives on in
/// the target cluster, so its deletion must not release what it stands for.
pub const DELETE_FOR_MOVE_ANNOTATION: &str = "clusterctl.cluster.x-k8s.io/delete-for-move";
/// Label CAPI recommends for `--watch-filter`.
pub const WATCH_FILTER_LABEL: &str = "cluster.x-k8s.io/watch-filter";

pub fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(CAPI_GROUP, CAPI_VERSION, kind))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))?
        .as_str()
        .filter(|s| !s.is_empty())
}

fn bool_at(v: &Value, path: &[&str]) -> bool {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// What we read of a CAPI Machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    pub uid: Option<String>,
    pub cluster_name: Option<String>,
    /// `spec.bootstrap.dataSecretName`: set once the bootstrap provider produced the data.
    pub bootstrap_data_secret: Option<String>,
    pub failure_domain: Option<String>,
    /// `status.nodeRef.name`: the Node the Machine became.
    pub node_ref: Option<String>,
}

impl Machine {
    pub fn from_object(obj: &DynamicObject) -> Self {
        let d = &obj.data;
        Self {
            name: obj.metadata.name.clone().unwrap_or_default(),
            uid: obj.metadata.uid.clone(),
            cluster_name: str_at(d, &["spec", "clusterName"])
                .map(str::to_string)
                .or_else(|| {
                    obj.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(CLUSTER_NAME_LABEL).cloned())
                }),
            bootstrap_data_secret: str_at(d, &["spec", "bootstrap", "dataSecretName"])
                .map(str::to_string),
            failure_domain: str_at(d, &["spec", "failureDomain"]).map(str::to_string),
            node_ref: str_at(d, &["status", "nodeRef", "name"]).map(str::to_string),
        }
    }
}

/// What we read of a CAPI Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub paused: bool,
    pub infrastructure_provisioned: bool,
}

impl Cluster {
    pub fn from_object(obj: &DynamicObject) -> Self {
        let d = &obj.data;
        Self {
            name: obj.metadata.name.clone().unwrap_or_default(),
            paused: bool_at(d, &["spec", "paused"]),
            infrastructure_provisioned: bool_at(
                d,
                &["status", "initialization", "infrastructureProvisioned"],
            ),
        }
    }
}

/// Name of the owner of `kind` from CAPI (`cluster.x-k8s.io/*`) among the ownerReferences.
pub fn owner_name(meta: &ObjectMeta, kind: &str) -> Option<String> {
    meta.owner_references.iter().flatten().find_map(|o| {
        (o.kind == kind && o.api_version.split('/').next() == Some(CAPI_GROUP))
            .then(|| o.name.clone())
    })
}

/// Paused when the Cluster says so or the object carries the paused annotation.
pub fn is_paused(cluster: Option<&Cluster>, meta: &ObjectMeta) -> bool {
    cluster.is_some_and(|c| c.paused)
        || meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PAUSED_ANNOTATION))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    #[test]
    fn reads_the_machine_fields_we_need() {
        let mut obj = DynamicObject::new("m-1", &resource("Machine")).within("ns");
        obj.data = json!({"spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "m-1-bootstrap"}, "failureDomain": "rack-a"}});
        let m = Machine::from_object(&obj);
        assert_eq!(m.cluster_name.as_deref(), Some("c1"));
        assert_eq!(m.bootstrap_data_secret.as_deref(), Some("m-1-bootstrap"));
        assert_eq!(m.failure_domain.as_deref(), Some("rack-a"));

        obj.data = json!({"spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": ""}}});
        assert_eq!(
            Machine::from_object(&obj).bootstrap_data_secret,
            None,
            "an empty name is no data yet"
        );
    }

    #[test]
    fn finds_capi_owners_only() {
        let owner = |api_version: &str, kind: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: format!("{kind}-owner"),
            uid: "u".into(),
            ..Default::default()
        };
        let meta = ObjectMeta {
            owner_references: Some(vec![
                owner("example.com/v1", "Machine"),
                owner("cluster.x-k8s.io/v1beta2", "Machine"),
            ]),
            ..Default::default()
        };
        assert_eq!(
            owner_name(&meta, "Machine").as_deref(),
            Some("Machine-owner")
        );
        assert_eq!(owner_name(&meta, "Cluster"), None);
        let foreign = ObjectMeta {
            owner_references: Some(vec![owner("example.com/v1", "Machine")]),
            ..Default::default()
        };
        assert_eq!(owner_name(&foreign, "Machine"), None);
    }

    #[test]
    fn pause_comes_from_cluster_or_annotation() {
        let mut obj = DynamicObject::new("c", &resource("Cluster"));
        obj.data = json!({"spec": {"paused": true}});
        let paused = Cluster::from_object(&obj);
        assert!(is_paused(Some(&paused), &ObjectMeta::default()));
        obj.data = json!({"spec": {}});
        let running = Cluster::from_object(&obj);
        assert!(!is_paused(Some(&running), &ObjectMeta::default()));
        let annotated = ObjectMeta {
            annotations: Some([(PAUSED_ANNOTATION.to_string(), String::new())].into()),
            ..Default::default()
        };
        assert!(is_paused(Some(&running), &annotated));
        assert!(is_paused(None, &annotated));
    }
}

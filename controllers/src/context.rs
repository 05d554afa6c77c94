//! What every reconcile shares: the Kubernetes client, the BMC clients, the artifact store.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beskar7_api::PhysicalHost;
use beskar7_redfish as redfish;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::artifacts::ArtifactStore;
use crate::error::{Error, Result};

/// Tunables of the controllers (the manager's flags map onto this).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often an idle host's power state and inventory are re-read.
    pub host_refresh: Duration,
    /// How often a host is re-read while something is under way (provisioning, power change).
    pub host_poll: Duration,
    /// Requeue interval of a machine waiting for a host.
    pub waiting_requeue: Duration,
    /// How long a power change asked of a BMC is left to complete before it is asked again. Some
    /// BMCs take a minute and more (POST) and show the old state meanwhile; asking again could
    /// restart the transition.
    pub power_grace: Duration,
    /// Requests in flight to one BMC at once.
    pub bmc_concurrency: usize,
    /// How long a requested reboot waits for the OS to shut down before forcing the power off.
    pub reboot_graceful_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host_refresh: Duration::from_secs(120),
            host_poll: Duration::from_secs(3),
            waiting_requeue: Duration::from_secs(15),
            power_grace: Duration::from_secs(120),
            bmc_concurrency: 4,
            reboot_graceful_timeout: Duration::from_secs(180),
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub artifacts: Arc<ArtifactStore>,
    /// Key for the per-claim artifact tokens: a token is HMAC(key, host uid, consumer uid),
    /// so a restarted manager serves the same URLs the BMC already holds.
    pub token_key: ring::hmac::Key,
    pub bmcs: BmcPool,
    pub reporter: Reporter,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This manager process (`<pod or host>_<pid>`): holder of host provisioning locks.
    pub identity: String,
    /// The PhysicalHost controller's cache, once it runs: claim candidates come from here, so a
    /// waiting machine does not list every host from the API server on each pass (a stale
    /// candidate only costs a conflict on the claim's optimistic update).
    pub hosts: Arc<std::sync::OnceLock<kube::runtime::reflector::Store<beskar7_api::PhysicalHost>>>,
    /// Consecutive failures per object, for backoff only (never for state).
    pub failures: Mutex<HashMap<String, u32>>,
    /// The state each host's last announced transition went to, so a lagging cache does not
    /// announce it twice (events and metrics only, never decisions).
    pub transitions: Mutex<HashMap<String, String>>,
    /// The resourceVersions of each host as this manager last wrote or read it live (or first
    /// saw it): a cached copy with another one may predate our own last write, so the pass reads
    /// the host afresh, and one our own later write superseded is skipped (freshness checks on
    /// the cache, never a source of decisions).
    pub host_versions: Mutex<HashMap<String, HostVersions>>,
    /// The hosts' credentials and CA-bundle Secrets, kept current by the Secret watch.
    pub secrets: SecretCache,
    /// Per object (`<kind>/<namespace>/<name>`): what a pass last applied as its status
    /// (requests saved, never decisions).
    pub applied_status: Mutex<HashMap<String, AppliedStatus>>,
    /// The machine controller's caches of CAPI Machines and Clusters (their watches' copies,
    /// without managedFields), once it runs.
    pub capi_machines: std::sync::OnceLock<Store<DynamicObject>>,
    pub capi_clusters: std::sync::OnceLock<Store<DynamicObject>>,
}

/// What [`Context::applied_status`] keeps of an object's last status write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedStatus {
    /// resourceVersions known to be older than that write: the copy the pass read and the
    /// pass's own earlier writes.
    pub older: Vec<String>,
    /// Digest of the applied patch.
    pub digest: u64,
}

/// What [`Context::host_versions`] keeps of one host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostVersions {
    /// The newest version this manager has seen from the API server.
    pub newest: String,
    /// Versions it saw replaced by a newer one (a few, newest last).
    pub older: Vec<String>,
}

impl HostVersions {
    /// A pass writes a host at most a handful of times; older copies than that are not worth
    /// remembering (a pass on one reads the host afresh).
    const KEEP: usize = 8;

    fn superseded(&self, rv: &str) -> bool {
        self.older.iter().any(|o| o == rv)
    }

    fn note(&mut self, rv: String) {
        if rv == self.newest {
            return;
        }
        if !self.newest.is_empty() {
            self.older.push(std::mem::replace(&mut self.newest, rv));
            if self.older.len() > Self::KEEP {
                self.older.remove(0);
            }
        } else {
            self.newest = rv;
        }
    }
}

impl Context {
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    /// The artifact token of one claim of one host: 256 bits, unguessable without the key.
    pub fn artifact_token(&self, host_uid: &str, consumer: &str) -> String {
        let tag = ring::hmac::sign(
            &self.token_key,
            format!("{host_uid}\n{consumer}").as_bytes(),
        );
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Exponential backoff for an object's consecutive failures: 5 s, 10 s, ... up to 5 min.
    pub fn backoff(&self, key: &str, transient: bool) -> Duration {
        let mut failures = self.failures.lock().unwrap();
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let base = if transient { 5 } else { 30 };
        Duration::from_secs((base << (*n - 1).min(6)).min(300))
    }

    /// The PhysicalHosts of namespace `ns` (all namespaces: None) from the host controller's
    /// cache; a LIST from the API server only until that cache has synced.
    pub async fn cached_hosts(&self, ns: Option<&str>) -> Result<Vec<Arc<PhysicalHost>>> {
        // Bounded: a reconcile never waits on another controller's cache; until it has synced
        // the API server answers.
        if let Some(store) = self.hosts.get()
            && cache_synced(store, Some(Duration::from_secs(2))).await
        {
            return Ok(store
                .state()
                .into_iter()
                .filter(|h| ns.is_none_or(|n| h.namespace().as_deref() == Some(n)))
                .collect());
        }
        let api: Api<PhysicalHost> = match ns {
            Some(n) => Api::namespaced(self.client.clone(), n),
            None => Api::all(self.client.clone()),
        };
        Ok(api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect())
    }

    /// A CAPI object from one of the caches above, or from the API server when the cache has
    /// not synced or lacks it (a miss may be an object newer than the cache, so it is never
    /// taken for absence).
    pub async fn capi_object(
        &self,
        cache: &std::sync::OnceLock<Store<DynamicObject>>,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<DynamicObject>>> {
        let resource = crate::capi::resource(kind);
        if let Some(store) = cache.get()
            && cache_synced(store, Some(Duration::from_secs(2))).await
            && let Some(obj) = store.get(&ObjectRef::new_with(name, resource.clone()).within(ns))
        {
            return Ok(Some(obj));
        }
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &resource);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    /// The CAPI Cluster `name` in `ns` (None: no name given, or not found), from the cache.
    pub async fn capi_cluster(
        &self,
        ns: &str,
        name: Option<&str>,
    ) -> Result<Option<crate::capi::Cluster>> {
        let Some(name) = name else {
            return Ok(None);
        };
        Ok(self
            .capi_object(&self.capi_clusters, "Cluster", ns, name)
            .await?
            .map(|c| crate::capi::Cluster::from_object(&c)))
    }

    /// Whether a transition of `key` to `to` is new (not the last one announced).
    pub fn note_transition(&self, key: &str, to: &str) -> bool {
        let mut t = self.transitions.lock().unwrap();
        if t.get(key).map(String::as_str) == Some(to) {
            return false;
        }
        t.insert(key.to_string(), to.to_string());
        true
    }

    /// Remembers the newest resourceVersion of `key` this manager has seen from the API server
    /// (its own write's answer, or a live read). The one it replaces is older by construction.
    pub fn note_host_version(&self, key: &str, obj: &impl kube::ResourceExt) {
        if let Some(rv) = obj.resource_version() {
            self.host_versions
                .lock()
                .unwrap()
                .entry(key.to_string())
                .or_default()
                .note(rv);
        }
    }

    /// A host pass starts from `obj`: when this manager knows no version of the host yet, that
    /// copy is the newest it has seen (so once the pass writes, a pass on it is superseded).
    pub fn note_host_copy(&self, key: &str, obj: &impl kube::ResourceExt) {
        if let Some(rv) = obj.resource_version() {
            self.host_versions
                .lock()
                .unwrap()
                .entry(key.to_string())
                .or_insert_with(|| HostVersions {
                    newest: rv,
                    older: Vec::new(),
                });
        }
    }

    /// Whether a cached copy of `key` is other than the newest this manager has seen: it may be
    /// older than our own last write.
    pub fn host_copy_may_be_stale(&self, key: &str, obj: &impl kube::ResourceExt) -> bool {
        let seen = self.host_versions.lock().unwrap();
        seen.get(key)
            .is_some_and(|v| obj.resource_version().as_deref() != Some(v.newest.as_str()))
    }

    /// Whether a cached copy of `key` is one this manager has already seen superseded (a write of
    /// ours before the last one of a pass): the newer version's watch event is still to come,
    /// and that one's pass does the work.
    pub fn host_copy_superseded(&self, key: &str, obj: &impl kube::ResourceExt) -> bool {
        let seen = self.host_versions.lock().unwrap();
        match (seen.get(key), obj.resource_version()) {
            (Some(v), Some(rv)) => v.superseded(&rv),
            _ => false,
        }
    }

    pub fn forget_host_version(&self, key: &str) {
        self.host_versions.lock().unwrap().remove(key);
    }

    pub fn reset_backoff(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

/// Whether `store` has synced, waiting at most `limit` (`None`: until it has, or its writer is
/// gone). kube-runtime's readiness signal wakes only the last of several concurrent waiters (a
/// controller's runner, the readiness probe, reconciles), so the others would sleep through it:
/// this polls it again every 50 ms instead of waiting on it once.
pub async fn cache_synced<K>(store: &Store<K>, limit: Option<Duration>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    loop {
        match tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await {
            Ok(r) => return r.is_ok(),
            Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => return false,
            Err(_) => {}
        }
    }
}

/// BMC connection settings and credentials as read from the API server.
pub struct BmcTarget {
    pub address: String,
    pub system_id: Option<String>,
    pub credentials: redfish::Credentials,
    pub tls: redfish::Tls,
    fingerprint: u64,
}

/// One Redfish client (and so one session) per host, rebuilt when its address, credentials or
/// TLS settings change.
#[derive(Default)]
pub struct BmcPool {
    clients: Mutex<HashMap<String, (u64, redfish::Client)>>,
}

impl BmcPool {
    pub fn client(
        &self,
        key: &str,
        target: BmcTarget,
        settings: &Settings,
    ) -> Result<redfish::Client> {
        let mut clients = self.clients.lock().unwrap();
        if let Some((fp, c)) = clients.get(key)
            && *fp == target.fingerprint
        {
            return Ok(c.clone());
        }
        let mut config = redfish::ClientConfig::new(target.address, target.credentials);
        config.tls = target.tls;
        config.max_concurrency = settings.bmc_concurrency;
        let client = redfish::Client::new(config)?;
        if let Some((_, old)) =
            clients.insert(key.to_string(), (target.fingerprint, client.clone()))
        {
            tokio::spawn(async move {
                let _ = old.logout().await;
            });
        }
        Ok(client)
    }

    /// Forgets a host's client and ends its session.
    pub async fn forget(&self, key: &str) {
        let old = self.clients.lock().unwrap().remove(key);
        if let Some((_, c)) = old {
            let _ = c.logout().await;
        }
    }

    /// Ends every session (graceful shutdown).
    pub async fn logout_all(&self) {
        let all: Vec<_> = self
            .clients
            .lock()
            .unwrap()
            .drain()
            .map(|(_, (_, c))| c)
            .collect();
        for c in all {
            let _ = c.logout().await;
        }
    }
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.0.clone());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.clone().into_bytes())
}

/// Largest credential we accept: anything longer is a mistake, not a password.
const MAX_CREDENTIAL_BYTES: usize = 4096;

/// The Secrets that hold the hosts' BMC credentials and CA bundles, as the manager's Secret
/// watch last delivered them. Without it every host pass read its Secret from the API server
/// (one GET per pass and host, the largest share of the requests at 1000 hosts). A Secret is
/// kept once a host pass needed it or the watch saw one that a host references; the watch
/// replaces it on every change and drops it on deletion, so a pass never uses a copy older than
/// the watch's. Only the name, resourceVersion and data are kept.
#[derive(Default)]
pub struct SecretCache {
    secrets: Mutex<HashMap<String, Arc<Secret>>>,
    /// Keys the watch delivered since its current re-list began (`Init`): what it did not
    /// deliver again by `InitDone` was deleted while the watch was down.
    relisting: Mutex<Option<HashSet<String>>>,
}

fn secret_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn secret_key_of(s: &Secret) -> String {
    secret_key(
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// What a BMC connection needs of a Secret: identity, version, data.
fn slim(secret: &Secret) -> Arc<Secret> {
    let mut slim = Secret::default();
    slim.metadata.name = secret.metadata.name.clone();
    slim.metadata.namespace = secret.metadata.namespace.clone();
    slim.metadata.resource_version = secret.metadata.resource_version.clone();
    slim.data = secret.data.clone();
    slim.string_data = secret.string_data.clone();
    Arc::new(slim)
}

impl SecretCache {
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets
            .lock()
            .unwrap()
            .get(&secret_key(ns, name))
            .cloned()
    }

    /// A copy read from the API server, kept unless the watch delivered one meanwhile (as new
    /// or newer than this read).
    fn insert_read(&self, secret: &Secret) -> Arc<Secret> {
        self.secrets
            .lock()
            .unwrap()
            .entry(secret_key_of(secret))
            .or_insert_with(|| slim(secret))
            .clone()
    }

    /// One event of the Secret watch. `referenced`: whether a host names this Secret, so a
    /// Secret the cache does not hold yet is kept too.
    pub fn observe(&self, event: &watcher::Event<Secret>, referenced: impl Fn(&Secret) -> bool) {
        let mut secrets = self.secrets.lock().unwrap();
        match event {
            watcher::Event::Init => *self.relisting.lock().unwrap() = Some(HashSet::new()),
            watcher::Event::InitApply(s) | watcher::Event::Apply(s) => {
                let key = secret_key_of(s);
                if let Some(seen) = self.relisting.lock().unwrap().as_mut() {
                    seen.insert(key.clone());
                }
                if secrets.contains_key(&key) || referenced(s) {
                    secrets.insert(key, slim(s));
                }
            }
            watcher::Event::Delete(s) => {
                secrets.remove(&secret_key_of(s));
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting.lock().unwrap().take() {
                    secrets.retain(|k, _| seen.contains(k));
                }
            }
        }
    }

    /// The Secret from the cache, or from the API server (then kept) on a miss.
    async fn read(&self, api: &Api<Secret>, ns: &str, name: &str) -> Result<Option<Arc<Secret>>> {
        if let Some(s) = self.get(ns, name) {
            return Ok(Some(s));
        }
        Ok(api.get_opt(name).await?.map(|s| self.insert_read(&s)))
    }
}

/// Reads the host's credentials (and CA bundle) Secrets into a [`BmcTarget`].
pub async fn bmc_target(ctx: &Context, host: &PhysicalHost) -> Result<BmcTarget> {
    let ns = host.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let conn = &host.spec.redfish_connection;
    let name = &conn.credentials_secret_ref;
    let cred_err = |problem: &str| Error::Credentials {
        secret: format!("{ns}/{name}"),
        problem: problem.to_string(),
    };
    let secret = ctx
        .secrets
        .read(&secrets, &ns, name)
        .await?
        .ok_or_else(|| cred_err("not found"))?;
    let field = |key: &str| -> Result<String> {
        let raw =
            secret_value(&secret, key).ok_or_else(|| cred_err(&format!("has no key {key:?}")))?;
        if raw.len() > MAX_CREDENTIAL_BYTES {
            return Err(cred_err(&format!(
                "key {key:?} is longer than {MAX_CREDENTIAL_BYTES} bytes"
            )));
        }
        let text =
            String::from_utf8(raw).map_err(|_| cred_err(&format!("key {key:?} is not UTF-8")))?;
        let text = text.trim_end_matches(['\n', '\r']).to_string();
        if text.is_empty() {
            return Err(cred_err(&format!("key {key:?} is empty")));
        }
        Ok(text)
    };
    let username = field("username")?;
    let password = field("password")?;

    let mut h = DefaultHasher::new();
    conn.address.hash(&mut h);
    conn.system_id.hash(&mut h);
    conn.insecure_skip_verify.hash(&mut h);
    secret.resource_version().hash(&mut h);

    let tls = if let Some(ca_name) = &conn.ca_bundle_secret_ref {
        let ca_err = |problem: &str| Error::CaBundle {
            secret: format!("{ns}/{ca_name}"),
            problem: problem.to_string(),
        };
        let ca = ctx
            .secrets
            .read(&secrets, &ns, ca_name)
            .await?
            .ok_or_else(|| ca_err("not found"))?;
        ca.resource_version().hash(&mut h);
        redfish::Tls::CaBundle(
            secret_value(&ca, "ca.crt").ok_or_else(|| ca_err("has no key \"ca.crt\""))?,
        )
    } else if conn.insecure_skip_verify == Some(true) {
        redfish::Tls::Insecure
    } else {
        redfish::Tls::Verify
    };
    Ok(BmcTarget {
        address: conn.address.clone(),
        system_id: conn.system_id.clone(),
        credentials: redfish::Credentials::new(username, password),
        tls,
        fingerprint: h.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::HostVersions;

    #[test]
    fn host_versions_remember_what_our_own_writes_superseded() {
        let mut v = HostVersions::default();
        v.note("10".into());
        assert!(!v.superseded("10"), "the newest is not superseded");
        // one pass: annotation patch, then status apply
        v.note("11".into());
        v.note("12".into());
        assert_eq!(v.newest, "12");
        assert!(v.superseded("10") && v.superseded("11"));
        assert!(!v.superseded("12"));
        // a version someone else wrote is not ours to skip
        assert!(!v.superseded("13"));
        // noting the same version twice (a live read of our own write) changes nothing
        v.note("12".into());
        assert_eq!(v.older, ["10", "11"]);
        for rv in 13..30 {
            v.note(rv.to_string());
        }
        assert_eq!(v.older.len(), HostVersions::KEEP);
        assert!(v.superseded("28") && !v.superseded("10"));
    }

    use super::SecretCache;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::watcher::Event;

    fn secret(name: &str, rv: &str, password: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}]},
            "stringData": {"username": "u", "password": password},
        }))
        .unwrap()
    }

    fn password(c: &SecretCache, name: &str) -> Option<String> {
        c.get("ns", name)
            .and_then(|s| s.string_data.as_ref()?.get("password").cloned())
    }

    #[test]
    fn secret_cache_follows_the_watch() {
        let c = SecretCache::default();
        let referenced = |s: &Secret| s.metadata.name.as_deref() == Some("bmc");
        // A Secret no host names is not kept; one a host names is, without managedFields.
        c.observe(&Event::Apply(secret("other", "1", "x")), referenced);
        c.observe(&Event::Apply(secret("bmc", "2", "old")), referenced);
        assert!(c.get("ns", "other").is_none());
        assert_eq!(password(&c, "bmc").as_deref(), Some("old"));
        assert!(
            c.get("ns", "bmc")
                .unwrap()
                .metadata
                .managed_fields
                .is_none()
        );
        // A read from the API server does not replace what the watch delivered.
        c.insert_read(&secret("bmc", "1", "older"));
        assert_eq!(password(&c, "bmc").as_deref(), Some("old"));
        // A change replaces it even when no host names it any more; a read fills a miss.
        c.observe(&Event::Apply(secret("bmc", "3", "new")), |_| false);
        assert_eq!(password(&c, "bmc").as_deref(), Some("new"));
        c.insert_read(&secret("late", "4", "read"));
        assert_eq!(password(&c, "late").as_deref(), Some("read"));
        // Deletion drops it.
        c.observe(&Event::Delete(secret("bmc", "5", "new")), referenced);
        assert!(c.get("ns", "bmc").is_none());
        // A re-list drops what it no longer lists (deleted while the watch was down).
        c.observe(&Event::Apply(secret("bmc", "6", "again")), referenced);
        c.observe(&Event::Init, referenced);
        c.observe(
            &Event::InitApply(secret("bmc", "7", "relisted")),
            referenced,
        );
        c.observe(&Event::InitDone, referenced);
        assert_eq!(password(&c, "bmc").as_deref(), Some("relisted"));
        assert!(c.get("ns", "late").is_none(), "not in the re-list: deleted");
    }
}

//! What every reconcile shares: the Kubernetes client, the BMC clients, the artifact store.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beskar7_api::PhysicalHost;
use beskar7_redfish as redfish;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Recorder, Reporter};
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host_refresh: Duration::from_secs(120),
            host_poll: Duration::from_secs(3),
            waiting_requeue: Duration::from_secs(15),
            power_grace: Duration::from_secs(120),
            bmc_concurrency: 4,
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
    /// The resourceVersion of each host as this manager last wrote or read it live: a cached copy
    /// with another one may predate our own last write, so the pass reads the host afresh
    /// (a freshness check on the cache, never a source of decisions).
    pub host_versions: Mutex<HashMap<String, String>>,
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
            && tokio::time::timeout(Duration::from_secs(2), store.wait_until_ready())
                .await
                .is_ok_and(|r| r.is_ok())
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

    /// Whether a transition of `key` to `to` is new (not the last one announced).
    pub fn note_transition(&self, key: &str, to: &str) -> bool {
        let mut t = self.transitions.lock().unwrap();
        if t.get(key).map(String::as_str) == Some(to) {
            return false;
        }
        t.insert(key.to_string(), to.to_string());
        true
    }

    /// Remembers the newest resourceVersion of `key` this manager has seen from the API server.
    pub fn note_host_version(&self, key: &str, obj: &impl kube::ResourceExt) {
        if let Some(rv) = obj.resource_version() {
            self.host_versions
                .lock()
                .unwrap()
                .insert(key.to_string(), rv);
        }
    }

    /// Whether a cached copy of `key` is other than the newest this manager has seen: it may be
    /// older than our own last write.
    pub fn host_copy_may_be_stale(&self, key: &str, obj: &impl kube::ResourceExt) -> bool {
        let seen = self.host_versions.lock().unwrap();
        seen.get(key)
            .is_some_and(|rv| obj.resource_version().as_deref() != Some(rv.as_str()))
    }

    pub fn forget_host_version(&self, key: &str) {
        self.host_versions.lock().unwrap().remove(key);
    }

    pub fn reset_backoff(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
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

/// Reads the host's credentials (and CA bundle) Secrets into a [`BmcTarget`].
pub async fn bmc_target(client: &kube::Client, host: &PhysicalHost) -> Result<BmcTarget> {
    let ns = host.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let conn = &host.spec.redfish_connection;
    let name = &conn.credentials_secret_ref;
    let cred_err = |problem: &str| Error::Credentials {
        secret: format!("{ns}/{name}"),
        problem: problem.to_string(),
    };
    let secret = secrets
        .get_opt(name)
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
        let ca = secrets
            .get_opt(ca_name)
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

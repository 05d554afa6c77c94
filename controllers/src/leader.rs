//! Leader election through a `coordination.k8s.io/v1` Lease, as controller-runtime does it:
//! acquire before reconciling, renew while running, give it up on graceful shutdown.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

pub struct Lease {
    api: Api<KubeLease>,
    name: String,
    identity: String,
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// This manager process, as leases and host provisioning locks name it.
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "beskar7".into());
    format!("{host}_{}", std::process::id())
}

/// The Lease name of one manager: `base`, then the `--namespace` and `--watch-filter` it is
/// scoped to, so each shard elects its own leader. Lowercased, and characters a Lease name may
/// not hold (a label value may hold `_` and capitals) become `-`.
pub fn lease_name(base: &str, namespace: Option<&str>, watch_filter: Option<&str>) -> String {
    let mut name = base.to_string();
    for part in [namespace, watch_filter].into_iter().flatten() {
        name.push('-');
        name.push_str(part);
    }
    let name: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_end_matches(['-', '.'])
        .chars()
        .take(253)
        .collect()
}

/// Whether a lease held by someone else has expired.
fn expired(spec: &LeaseSpec) -> bool {
    let Some(renew) = &spec.renew_time else {
        return true;
    };
    let duration = spec.lease_duration_seconds.unwrap_or(15) as i64;
    let age = k8s_openapi::jiff::Timestamp::now().as_second() - renew.0.as_second();
    age > duration
}

impl Lease {
    /// Blocks until this process holds the lease; `on_standby` runs each time another holder
    /// is found to hold it.
    pub async fn acquire(
        client: kube::Client,
        namespace: &str,
        name: &str,
        duration: Duration,
        on_standby: impl Fn(),
    ) -> anyhow::Result<Lease> {
        let api: Api<KubeLease> = Api::namespaced(client, namespace);
        let me = identity();
        info!(lease = %format!("{namespace}/{name}"), identity = %me, "waiting for leadership");
        loop {
            if try_take(&api, name, &me, duration).await? {
                break;
            }
            on_standby();
            tokio::time::sleep(duration / 3).await;
        }
        info!(identity = %me, "became leader");
        let (tx, lost) = watch::channel(false);
        let renewer = {
            let (api, name, me) = (api.clone(), name.to_string(), me.clone());
            tokio::spawn(async move {
                let mut last_ok = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(duration / 3).await;
                    match try_take(&api, &name, &me, duration).await {
                        Ok(true) => last_ok = tokio::time::Instant::now(),
                        Ok(false) => break,
                        Err(e) => {
                            warn!(error = %e, "renewing the lease");
                            if last_ok.elapsed() > duration {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(true);
            })
        };
        Ok(Lease {
            api,
            name: name.to_string(),
            identity: me,
            lost,
            renewer,
        })
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Gives the lease up so another replica takes over at once.
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(mut l) = self.api.get(&self.name).await
            && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            if let Some(spec) = l.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &l)
                .await;
            info!("released the leader-election lease");
        }
    }
}

/// Takes or renews the lease; `false` when another holder's lease is still valid.
async fn try_take(
    api: &Api<KubeLease>,
    name: &str,
    me: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let seconds = duration.as_secs().max(1) as i32;
    match api.get_opt(name).await? {
        None => {
            let lease = KubeLease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.into()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let mine = spec.holder_identity.as_deref() == Some(me);
            if !mine && spec.holder_identity.is_some() && !expired(spec) {
                return Ok(false);
            }
            if !mine {
                spec.holder_identity = Some(me.into());
                spec.acquire_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(now());
            spec.lease_duration_seconds = Some(seconds);
            // replace carries the resourceVersion we read: two candidates cannot both win.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lease_name;

    #[test]
    fn each_shard_gets_its_own_lease() {
        assert_eq!(
            lease_name("beskar7-manager-leader", None, None),
            "beskar7-manager-leader"
        );
        assert_eq!(
            lease_name("beskar7-manager-leader", None, Some("Shard_0")),
            "beskar7-manager-leader-shard-0"
        );
        assert_eq!(
            lease_name("beskar7-manager-leader", Some("team-a"), Some("rack.7")),
            "beskar7-manager-leader-team-a-rack.7"
        );
        assert_ne!(
            lease_name("l", None, Some("a")),
            lease_name("l", None, Some("b"))
        );
    }
}

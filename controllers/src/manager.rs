//! `beskar7 manager`: runs the controllers, the artifact server, probes and metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use beskar7_api::common::failure_domain_of;
use beskar7_api::{
    Beskar7Cluster, Beskar7Machine, Beskar7MachineTemplate, Beskar7Remediation, PhysicalHost,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{error, info};

use crate::artifacts::{ArtifactServerArgs, ArtifactStore};
use crate::capi;
use crate::context::{BmcPool, Context, Settings};
use crate::controllers::{cluster, host, machine, remediation, shape, template};
use crate::error::Error;
use crate::leader;
use crate::metrics::Metrics;

#[derive(Clone, Debug, clap::Args)]
pub struct ManagerArgs {
    /// Kubeconfig to use; in-cluster config or $KUBECONFIG when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Only watch this namespace (all namespaces when absent).
    #[arg(long, env = "BESKAR7_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only reconcile objects labelled `cluster.x-k8s.io/watch-filter=<value>`.
    #[arg(long, env = "BESKAR7_WATCH_FILTER")]
    pub watch_filter: Option<String>,
    /// Elect a leader through a Lease so only one replica reconciles.
    #[arg(long, env = "BESKAR7_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (the pod's namespace by default).
    #[arg(long, env = "POD_NAMESPACE", default_value = "beskar7-system")]
    pub leader_election_namespace: String,
    /// Name of the leader-election Lease. Managers scoped by `--namespace` or `--watch-filter`
    /// (shards) each elect their own leader: the scope is appended to the name.
    #[arg(long, default_value = "beskar7-manager-leader")]
    pub leader_election_id: String,
    /// Seconds a leader's Lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub leader_lease_seconds: u64,
    /// Prometheus metrics listen address (`0` disables).
    #[arg(
        long,
        env = "BESKAR7_METRICS_BIND_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_bind_address: String,
    /// Health (`/healthz`) and readiness (`/readyz`) probe listen address.
    #[arg(
        long,
        env = "BESKAR7_HEALTH_PROBE_BIND_ADDRESS",
        default_value = "0.0.0.0:8081"
    )]
    pub health_probe_bind_address: SocketAddr,
    /// Concurrent reconciles per controller.
    #[arg(long, env = "BESKAR7_CONCURRENCY", default_value_t = 10)]
    pub concurrency: u16,
    /// Requests in flight to one BMC at once.
    #[arg(long, env = "BESKAR7_BMC_CONCURRENCY", default_value_t = 4)]
    pub bmc_concurrency: usize,
    /// File holding the key that derives artifact URL tokens (keep it across restarts so BMCs'
    /// URLs stay valid). A random key is used, with a warning, when the flag is absent or the
    /// file is missing or empty.
    #[arg(long, env = "BESKAR7_ARTIFACT_TOKEN_KEY_FILE")]
    pub artifact_token_key_file: Option<PathBuf>,
    /// Port of the admission webhook server (TLS); `0` disables it (the webhooks are then not
    /// served, so do not register them).
    #[arg(long, env = "BESKAR7_WEBHOOK_PORT", default_value_t = 9443)]
    pub webhook_port: u16,
    /// Directory with the webhook serving certificate (`tls.crt`, `tls.key`), e.g. from cert-manager.
    #[arg(
        long,
        env = "BESKAR7_WEBHOOK_CERT_DIR",
        default_value = "/tmp/k8s-webhook-server/serving-certs"
    )]
    pub webhook_cert_dir: PathBuf,
    /// Seconds between re-reads of an idle host's power state and inventory.
    #[arg(long, default_value_t = 120)]
    pub host_refresh_seconds: u64,
    /// Seconds a requested reboot (the PhysicalHost reboot annotation, a Beskar7Remediation)
    /// waits for the OS to shut down gracefully before the power is forced off.
    #[arg(long, default_value_t = 180)]
    pub reboot_graceful_timeout_seconds: u64,
    #[command(flatten)]
    pub artifacts: ArtifactServerArgs,
}

#[derive(Clone)]
struct Probes {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    hosts: Arc<std::sync::OnceLock<Store<PhysicalHost>>>,
}

fn token_key(path: Option<&PathBuf>) -> anyhow::Result<ring::hmac::Key> {
    let configured = match path {
        // The released Deployment mounts the key Secret as optional: absent until created.
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("artifact token key file {}: {e}", p.display()),
        },
        None => None,
    };
    let bytes = match configured {
        Some(b) if !b.trim_ascii().is_empty() => {
            anyhow::ensure!(
                b.len() >= 16,
                "artifact token key file {} holds fewer than 16 bytes",
                path.map(|p| p.display().to_string()).unwrap_or_default()
            );
            b
        }
        // Run, but say what it costs and how to fix it.
        _ => {
            use ring::rand::SecureRandom;
            let mut b = vec![0u8; 32];
            ring::rand::SystemRandom::new()
                .fill(&mut b)
                .map_err(|_| anyhow::anyhow!("OS random number generator failed"))?;
            tracing::warn!(
                key_file = %path.map(|p| p.display().to_string()).unwrap_or_default(),
                "no artifact token key (flag unset, or the file is missing or empty; in a cluster \
                 create the Secret beskar7-artifact-token-key with key=$(openssl rand -hex 32)): \
                 a random key is used, so artifact URLs change when the manager restarts"
            );
            b
        }
    };
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default().await?,
    };
    let metrics = Arc::new(Metrics::default());
    let probes = Probes {
        ready: Arc::new(AtomicBool::new(false)),
        metrics: metrics.clone(),
        hosts: Default::default(),
    };
    let shutdown = tokio_util_shutdown();

    // Probes and metrics answer from the start: liveness before leadership.
    spawn_http(
        args.health_probe_bind_address,
        probe_router(probes.clone()),
        "health probes",
    )
    .await?;
    if args.metrics_bind_address != "0" {
        let addr: SocketAddr = args.metrics_bind_address.parse()?;
        spawn_http(addr, metrics_router(probes.clone()), "metrics").await?;
    }

    // Webhooks answer on every replica (admission does not need leadership).
    if args.webhook_port != 0 {
        let bind = SocketAddr::from(([0, 0, 0, 0], args.webhook_port));
        // Runs detached for the life of the process; serving errors are logged by the server.
        let _server = crate::webhooks::spawn(bind, &args.webhook_cert_dir).await?;
        info!(%bind, cert_dir = %args.webhook_cert_dir.display(), "admission webhooks listening");
    }

    let artifact_config = args
        .artifacts
        .clone()
        .into_config()
        .map_err(|e| anyhow::anyhow!(e))?;
    let store = ArtifactStore::new(&artifact_config)?;
    {
        let listener = crate::artifacts::ArtifactListener::bind(&artifact_config).await?;
        info!(bind = %artifact_config.bind_address, base = %artifact_config.external_base_url, tls = listener.is_tls(), "artifact server listening");
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = listener.serve(store, futures::future::pending()).await {
                error!(error = %e, "artifact server stopped");
            }
        });
    }

    // Ready means this replica does its part: a standby serves webhooks and waits for the
    // lease, so it is ready while it waits; the leader is ready once its controllers' caches
    // have synced (below), not when its sockets are bound.
    let mut lease = None;
    if args.leader_elect {
        let ready = probes.ready.clone();
        let l = leader::Lease::acquire(
            client.clone(),
            &args.leader_election_namespace,
            &leader::lease_name(
                &args.leader_election_id,
                args.namespace.as_deref(),
                args.watch_filter.as_deref(),
            ),
            Duration::from_secs(args.leader_lease_seconds),
            move || ready.store(true, Ordering::SeqCst),
        )
        .await?;
        lease = Some(l);
    }

    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: Settings {
            host_refresh: Duration::from_secs(args.host_refresh_seconds),
            bmc_concurrency: args.bmc_concurrency,
            reboot_graceful_timeout: Duration::from_secs(args.reboot_graceful_timeout_seconds),
            ..Settings::default()
        },
        artifacts: store,
        token_key: token_key(args.artifact_token_key_file.as_ref())?,
        bmcs: BmcPool::default(),
        reporter: Reporter {
            controller: "beskar7".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        identity: crate::leader::identity(),
        hosts: probes.hosts.clone(),
        metrics: metrics.clone(),
        failures: Default::default(),
        transitions: Default::default(),
        host_versions: Default::default(),
        secrets: Default::default(),
        applied_status: Default::default(),
        capi_machines: Default::default(),
        capi_clusters: Default::default(),
    });

    let api = |_: ()| args.namespace.clone();
    let filtered = || match &args.watch_filter {
        Some(v) => watcher::Config::default().labels(&format!("{}={v}", capi::WATCH_FILTER_LABEL)),
        None => watcher::Config::default(),
    };
    fn namespaced<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = api(());
    let dyn_api = |kind: &str| match &ns {
        Some(n) => Api::<DynamicObject>::namespaced_with(client.clone(), n, &capi::resource(kind)),
        None => Api::<DynamicObject>::all_with(client.clone(), &capi::resource(kind)),
    };
    let config = kube::runtime::controller::Config::default().concurrency(args.concurrency);

    // PhysicalHost: woken by its credentials / CA Secrets. A `--watch-filter` shard owns the
    // hosts labelled for it, as it owns the machines.
    // One watch of the hosts feeds every controller, so each reads the host cache at least as
    // new as the event that woke it.
    let (host_store, mut host_events) =
        host_fan_out(namespaced::<PhysicalHost>(&client, &ns), filtered(), 5);
    let _ = probes.hosts.set(host_store.clone());
    let host_ctrl = Controller::for_stream(
        host_events
            .pop()
            .expect("one stream per controller")
            .applied_objects(),
        host_store.clone(),
    )
    .with_config(config.clone());
    // One Secret watch wakes the hosts that name a Secret and keeps their Secrets in the
    // context's cache, so a host pass reads its BMC credentials without a request.
    let hosts_for_secret = host_store.clone();
    let referenced = move |secret: &Secret| -> Vec<ObjectRef<PhysicalHost>> {
        let ns = secret.namespace();
        let name = secret.name_any();
        hosts_for_secret
            .state()
            .into_iter()
            .filter(|h| {
                h.namespace() == ns
                    && (h.spec.redfish_connection.credentials_secret_ref == name
                        || h.spec.redfish_connection.ca_bundle_secret_ref.as_deref()
                            == Some(name.as_str()))
            })
            .map(|h| ObjectRef::from_obj(&*h))
            .collect()
    };
    let secret_events = {
        let (ctx, referenced) = (ctx.clone(), referenced.clone());
        watcher(
            namespaced::<Secret>(&client, &ns),
            watcher::Config::default(),
        )
        .map_ok(move |event| {
            ctx.secrets.observe(&event, |s| !referenced(s).is_empty());
            event
        })
        .touched_objects()
    };
    let host_ctrl = host_ctrl
        .watches_stream(secret_events, move |secret: Secret| referenced(&secret))
        .trigger_backoff(WatchBackoff::default())
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            timed(host::reconcile, "physicalhost"),
            shape::error_policy,
            ctx.clone(),
        );

    // Beskar7Machine: woken by its host, its CAPI Machine, and its Cluster.
    let (machine_store, machine_events) =
        without_managed_fields(namespaced::<Beskar7Machine>(&client, &ns), filtered());
    let machine_ctrl =
        Controller::for_stream(machine_events, machine_store.clone()).with_config(config.clone());
    let machines_for_cluster = machine_store.clone();
    let machine_store_ready = machine_store.clone();
    let machine_ctrl = machine_ctrl
        .watches_stream(
            host_events
                .pop()
                .expect("one stream per controller")
                .touched_objects(),
            |h: PhysicalHost| {
                h.spec
                    .consumer_ref
                    .as_ref()
                    .filter(|c| c.kind.as_deref().is_none_or(|k| k == "Beskar7Machine"))
                    .map(|c| {
                        ObjectRef::<Beskar7Machine>::new(&c.name).within(
                            &c.namespace
                                .clone()
                                .or_else(|| h.namespace())
                                .unwrap_or_default(),
                        )
                    })
            },
        )
        .watches_stream_with(
            cached(
                dyn_api("Machine"),
                filtered(),
                "Machine",
                &ctx.capi_machines,
            ),
            |m: DynamicObject| infra_ref::<Beskar7Machine>(&m, "Beskar7Machine"),
            capi::resource("Machine"),
        )
        .watches_stream_with(
            cached(
                dyn_api("Cluster"),
                filtered(),
                "Cluster",
                &ctx.capi_clusters,
            ),
            move |c: DynamicObject| {
                let (ns, name) = (c.namespace(), c.name_any());
                machines_for_cluster
                    .state()
                    .into_iter()
                    .filter(|m| {
                        m.namespace() == ns
                            && m.labels().get(capi::CLUSTER_NAME_LABEL) == Some(&name)
                    })
                    .map(|m| ObjectRef::from_obj(&*m))
                    .collect::<Vec<_>>()
            },
            capi::resource("Cluster"),
        )
        .trigger_backoff(WatchBackoff::default())
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            timed(machine::reconcile, "beskar7machine"),
            shape::error_policy,
            ctx.clone(),
        );

    // Beskar7Cluster: woken by its CAPI Cluster and by hosts (their zones are failure domains).
    let cluster_ctrl = Controller::new(namespaced::<Beskar7Cluster>(&client, &ns), filtered())
        .with_config(config.clone());
    let cluster_store = cluster_ctrl.store();
    let clusters = cluster_store.clone();
    let cluster_ctrl = cluster_ctrl
        .watches_with(
            dyn_api("Cluster"),
            capi::resource("Cluster"),
            filtered(),
            |c: DynamicObject| infra_ref::<Beskar7Cluster>(&c, "Beskar7Cluster"),
        )
        .watches_stream(
            host_events
                .pop()
                .expect("one stream per controller")
                .touched_objects(),
            // Only clusters that take their failure domains from the hosts' zones, and only
            // for hosts that have one.
            move |h: PhysicalHost| {
                if failure_domain_of(h.labels()).is_none() {
                    return Vec::new();
                }
                same_namespace(&clusters, h.namespace(), |c: &Beskar7Cluster| {
                    c.spec.failure_domains.is_empty()
                })
            },
        )
        .trigger_backoff(WatchBackoff::default())
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            timed(cluster::reconcile, "beskar7cluster"),
            shape::error_policy,
            ctx.clone(),
        );

    // Beskar7MachineTemplate: woken by hosts in its namespace.
    let template_ctrl = Controller::new(
        namespaced::<Beskar7MachineTemplate>(&client, &ns),
        filtered(),
    )
    .with_config(config.clone());
    let template_store = template_ctrl.store();
    let templates = template_store.clone();
    let template_ctrl = template_ctrl
        .watches_stream(
            host_events
                .pop()
                .expect("one stream per controller")
                .touched_objects(),
            // Only the templates whose selector matches the host.
            move |h: PhysicalHost| {
                same_namespace(&templates, h.namespace(), |t: &Beskar7MachineTemplate| {
                    t.spec
                        .template
                        .spec
                        .host_selector
                        .as_ref()
                        .is_none_or(|sel| {
                            Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(h.labels()))
                        })
                })
            },
        )
        .trigger_backoff(WatchBackoff::default())
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            timed(template::reconcile, "beskar7machinetemplate"),
            shape::error_policy,
            ctx.clone(),
        );

    // Beskar7Remediation: woken by the host it reboots (status.hostRef).
    let remediation_ctrl =
        Controller::new(namespaced::<Beskar7Remediation>(&client, &ns), filtered())
            .with_config(config);
    let remediation_store = remediation_ctrl.store();
    let remediations = remediation_store.clone();
    let remediation_ctrl = remediation_ctrl
        .watches_stream(
            host_events
                .pop()
                .expect("one stream per controller")
                .touched_objects(),
            move |h: PhysicalHost| {
                let (ns, name) = (h.namespace(), h.name_any());
                remediations
                    .state()
                    .into_iter()
                    .filter(|r| {
                        r.status
                            .as_ref()
                            .and_then(|s| s.host_ref.as_ref())
                            .is_some_and(|hr| {
                                hr.name == name
                                    && hr.namespace.as_ref().or(r.namespace().as_ref())
                                        == ns.as_ref()
                            })
                    })
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .trigger_backoff(WatchBackoff::default())
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            timed(remediation::reconcile, "beskar7remediation"),
            shape::error_policy,
            ctx.clone(),
        );

    {
        let (hosts, machines, clusters, templates, remediations) = (
            host_store.clone(),
            machine_store_ready,
            cluster_store,
            template_store,
            remediation_store,
        );
        let capi_caches: Vec<_> = [
            ("Machine", &ctx.capi_machines),
            ("Cluster", &ctx.capi_clusters),
        ]
        .into_iter()
        .filter_map(|(kind, c)| Some((kind, c.get()?.clone())))
        .collect();
        let ready = probes.ready.clone();
        tokio::spawn(async move {
            use crate::context::cache_synced;
            let mut synced = vec![
                ("PhysicalHost", cache_synced(&hosts, None).await),
                ("Beskar7Machine", cache_synced(&machines, None).await),
                ("Beskar7Cluster", cache_synced(&clusters, None).await),
                (
                    "Beskar7MachineTemplate",
                    cache_synced(&templates, None).await,
                ),
                (
                    "Beskar7Remediation",
                    cache_synced(&remediations, None).await,
                ),
            ];
            for (kind, c) in &capi_caches {
                synced.push((kind, cache_synced(c, None).await));
            }
            for (kind, ok) in &synced {
                if !ok {
                    error!(kind, "cache stopped before it synced: not ready");
                }
            }
            if synced.iter().all(|(_, ok)| *ok) {
                ready.store(true, Ordering::SeqCst);
                info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "manager ready: caches synced"
                );
            }
        });
    }

    let drain = |s: futures::stream::BoxStream<'static, ()>| s;
    let all = futures::stream::select_all([
        drain(host_ctrl.map(|_| ()).boxed()),
        drain(machine_ctrl.map(|_| ()).boxed()),
        drain(cluster_ctrl.map(|_| ()).boxed()),
        drain(template_ctrl.map(|_| ()).boxed()),
        drain(remediation_ctrl.map(|_| ()).boxed()),
    ]);
    let lost = async {
        match &lease {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = all.collect::<Vec<_>>() => info!("controllers stopped"),
        _ = lost => {
            error!("lost the leader-election lease: exiting so another replica takes over");
            ctx.bmcs.logout_all().await;
            std::process::exit(1);
        }
    }
    // Graceful: in-flight reconciles finished; end BMC sessions, give the lease up.
    ctx.bmcs.logout_all().await;
    if let Some(l) = lease {
        l.release().await;
    }
    Ok(())
}

/// Pause of a controller's watches after a watch error: 250 ms doubling to 2 s, back to 250 ms
/// after an event without error. kube-runtime applies this backoff to the merged stream of all
/// of a controller's watches, so its default (doubling to 30 s) stops every watch of the
/// controller for up to 30 s per error: after a kube-apiserver restart each watch reports its
/// broken stream in turn, and the Beskar7Machine controller (four watches) stayed deaf for
/// over 90 s (controllers/tests/resilience_apiserver.rs).
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Wraps a reconcile with duration and result metrics.
fn timed<K, F, Fut>(
    f: F,
    name: &'static str,
) -> impl Fn(Arc<K>, Arc<Context>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + 'static + Copy,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
    K: Send + Sync + 'static,
{
    move |obj, ctx| {
        let metrics = ctx.metrics.clone();
        Box::pin(async move {
            let start = Instant::now();
            let r = f(obj, ctx).await;
            metrics.reconciled(name, r.is_ok(), start.elapsed());
            r
        })
    }
}

/// One watch of the PhysicalHosts and their cache, fanned out to `consumers` event streams. An
/// event reaches the streams after the cache holds it. Watch errors pause the watch (the
/// backoff of [`WatchBackoff`]) and are logged here; the streams see events only.
fn host_fan_out(
    api: Api<PhysicalHost>,
    config: watcher::Config,
    consumers: usize,
) -> (
    Store<PhysicalHost>,
    Vec<impl futures::Stream<Item = Result<watcher::Event<PhysicalHost>, watcher::Error>> + Send>,
) {
    let writer = Writer::default();
    let store = writer.as_reader();
    let (mut senders, receivers): (Vec<_>, Vec<_>) = (0..consumers)
        .map(|_| futures::channel::mpsc::channel(256))
        .unzip();
    let source = watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(|h| h.managed_fields_mut().clear())
        .reflect(writer);
    tokio::spawn(async move {
        let mut source = std::pin::pin!(source);
        while let Some(item) = source.next().await {
            match item {
                Ok(event) => {
                    for tx in &mut senders {
                        // A stopped controller (shutdown) takes no more events.
                        let _ = futures::SinkExt::send(tx, event.clone()).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "PhysicalHost watch failed; retrying"),
            }
        }
    });
    (store, receivers.into_iter().map(|rx| rx.map(Ok)).collect())
}

/// A watch of `api` whose cache keeps the objects without managedFields (the controllers never
/// read them; with status applied server-side they are a large share of each object), and the
/// stream of objects it applied.
fn without_managed_fields<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let writer = Writer::default();
    let store = writer.as_reader();
    let events = watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    (store, events)
}

/// A watch of CAPI objects of `kind` that keeps their latest copies, without managedFields, in
/// `cache` (set here) and yields each touched object.
fn cached(
    api: Api<DynamicObject>,
    config: watcher::Config,
    kind: &str,
    cache: &std::sync::OnceLock<Store<DynamicObject>>,
) -> impl futures::Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static {
    let writer = Writer::new(capi::resource(kind));
    let _ = cache.set(writer.as_reader());
    watcher(api, config)
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects()
}

fn infra_ref<K>(obj: &DynamicObject, kind: &str) -> Option<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    let r = obj.data.get("spec")?.get("infrastructureRef")?;
    if r.get("kind")?.as_str()? != kind {
        return None;
    }
    Some(ObjectRef::new(r.get("name")?.as_str()?).within(&obj.namespace().unwrap_or_default()))
}

fn same_namespace<K>(
    store: &Store<K>,
    ns: Option<String>,
    wanted: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.namespace() == ns && wanted(o))
        .map(|o| ObjectRef::from_obj(&*o))
        .collect()
}

async fn spawn_http(addr: SocketAddr, router: Router, what: &'static str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{what} on {addr}: {e}"))?;
    info!(%addr, "{what} listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            error!(error = %e, "{what} server stopped");
        }
    });
    Ok(())
}

fn probe_router(p: Probes) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(p): State<Probes>| async move {
                if p.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(p)
}

fn metrics_router(p: Probes) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(p): State<Probes>| async move {
                let mut by_state = BTreeMap::new();
                if let Some(store) = p.hosts.get() {
                    for h in store.state() {
                        let s = h.status.as_ref().and_then(|s| s.state).unwrap_or_default();
                        *by_state.entry(s.as_str().to_string()).or_insert(0u64) += 1;
                    }
                }
                p.metrics.render(&by_state)
            }),
        )
        .with_state(p)
}

/// A shutdown signal (SIGTERM or Ctrl-C) that many futures can wait on.
#[derive(Clone)]
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

fn tokio_util_shutdown() -> Shutdown {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutdown requested: finishing in-flight reconciles");
        let _ = tx.send(true);
    });
    Shutdown(rx)
}

#[cfg(test)]
mod tests {
    use super::token_key;

    fn sign(key: &ring::hmac::Key) -> Vec<u8> {
        ring::hmac::sign(key, b"host/claim").as_ref().to_vec()
    }

    #[test]
    fn token_key_from_file_is_stable_and_missing_or_empty_means_random() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            sign(&token_key(Some(&file)).unwrap()),
            sign(&token_key(Some(&file)).unwrap()),
            "the same key file gives the same tokens across restarts"
        );
        let missing = dir.path().join("absent");
        assert_ne!(
            sign(&token_key(Some(&missing)).unwrap()),
            sign(&token_key(Some(&missing)).unwrap()),
            "an absent optional Secret means a random key per start"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"\n").unwrap();
        assert!(token_key(Some(&empty)).is_ok());
        let short = dir.path().join("short");
        std::fs::write(&short, b"too short").unwrap();
        let err = token_key(Some(&short)).err().unwrap().to_string();
        assert!(err.contains("fewer than 16 bytes"), "{err}");
    }
}

//! A cheap in-process Redfish service for scale and resilience tests, where sushy-tools (one
//! Python process, image downloads, 1-11 s power changes) would be the bottleneck.
//!
//! It answers exactly what `beskar7-redfish` asks on the generic DMTF path: the service root,
//! sessions (or basic auth), `Systems`, `Systems/{id}` with `Boot` (PATCH, ETags) and
//! `ComputerSystem.Reset`, one NIC, the system's `VirtualMedia` collection with slots `Cd` and
//! `Floppy` (`InsertMedia`/`EjectMedia` actions and PATCH of `Image`/`Inserted`), and `Managers`.
//! Shapes follow the DMTF public rackmount mockup. State is kept in memory per system:
//! `InsertMedia` records the URL without downloading it and power changes happen at once.
//!
//! Every system has its own listener (`http://127.0.0.1:<port>`, as every server has its own
//! BMC) unless [`FakeBmcBuilder::shared_endpoint`] puts them all behind one address. Requests
//! are counted, and each system keeps a log of the boots it made, so tests can assert that a
//! host booted exactly once.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let bmc = beskar7_test::fake_bmc::FakeBmc::builder(40).start().await?;
//! let first = &bmc.systems[0]; // a `LabSystem`: enroll it with `fixtures::enroll(.., None, ..)`
//! # let _ = first;
//! println!("{} requests so far", bmc.requests().total);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::LabSystem;

const USERNAME: &str = "admin";
const PASSWORD: &str = "fake-bmc-password";
const SLOTS: [(&str, &[&str]); 2] = [("Cd", &["CD", "DVD"]), ("Floppy", &["Floppy", "USBStick"])];
const RESET_TYPES: [&str; 7] = [
    "On",
    "ForceOff",
    "GracefulShutdown",
    "GracefulRestart",
    "ForceRestart",
    "ForceOn",
    "PushPowerButton",
];

/// Request counts since start (every request, answered or refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub total: u64,
    pub get: u64,
    pub post: u64,
    pub patch: u64,
    pub delete: u64,
    /// Refused with 401.
    pub unauthorized: u64,
    /// Answered with an injected failure ([`FakeBmc::fail_next`]).
    pub injected_failures: u64,
}

/// One power-on of a system: what it would have booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootRecord {
    /// `BootSourceOverrideTarget` when a one-time override was pending, else `None` (disk).
    pub override_target: Option<String>,
    /// The image in the `Cd` slot at that moment.
    pub cd_image: Option<String>,
}

/// A system's state as the BMC holds it.
#[derive(Clone, Debug, Default)]
pub struct SystemSnapshot {
    pub power: String,
    pub boot_target: String,
    pub boot_enabled: String,
    pub boot_mode: String,
    /// Image per slot (`Cd`, `Floppy`), `None` when empty.
    pub media: HashMap<String, Option<String>>,
    pub boots: Vec<BootRecord>,
    pub inserts: u64,
    pub ejects: u64,
    /// `ComputerSystem.Reset` requests that ask for power on (`On`, `ForceOn`), whatever the
    /// state: what a test of "one power-on per provisioning" counts.
    pub power_on_requests: u64,
}

#[derive(Debug)]
struct SystemState {
    id: String,
    mac: String,
    power_on: bool,
    boot_target: String,
    boot_enabled: String,
    boot_mode: String,
    /// Bumped by every change: the ETag of the system.
    generation: u64,
    media: [Option<String>; 2],
    media_generation: [u64; 2],
    boots: Vec<BootRecord>,
    inserts: u64,
    ejects: u64,
    power_on_requests: u64,
    /// A power change asked of a slow BMC: (when it takes effect, on or off).
    pending_power: Option<(std::time::Instant, bool)>,
}

impl SystemState {
    /// Applies a pending power change whose time has come.
    fn settle(&mut self) {
        if let Some((at, on)) = self.pending_power
            && std::time::Instant::now() >= at
        {
            self.pending_power = None;
            if on && !self.power_on {
                power_on(self);
            } else if !on {
                self.power_on = false;
            }
            self.generation += 1;
        }
    }
}

#[derive(Default)]
struct Counters {
    total: AtomicU64,
    get: AtomicU64,
    post: AtomicU64,
    patch: AtomicU64,
    delete: AtomicU64,
    unauthorized: AtomicU64,
    injected: AtomicU64,
    /// Per `<METHOD> <path>`, each system's and session's id replaced by `{id}`.
    by_route: Mutex<HashMap<String, u64>>,
}

struct Shared {
    systems: Vec<Mutex<SystemState>>,
    index: HashMap<String, usize>,
    sessions: Mutex<HashMap<String, u64>>,
    next_session: AtomicU64,
    with_sessions: bool,
    counters: Counters,
    /// Injected failures: the next `fail_remaining` authenticated requests get `fail_status`.
    fail_remaining: AtomicU64,
    fail_status: AtomicU64,
    /// How long a power change takes; the old state is reported until then.
    power_delay: std::time::Duration,
}

#[derive(Clone)]
struct Scope {
    shared: Arc<Shared>,
    /// The one system this listener serves, or all.
    only: Option<usize>,
}

/// Options of a [`FakeBmc`].
pub struct FakeBmcBuilder {
    systems: usize,
    shared_endpoint: bool,
    sessions: bool,
    powered_on: bool,
    power_delay: std::time::Duration,
}

impl FakeBmcBuilder {
    /// Power changes take `delay`, and `PowerState` shows the old state until then, as slow
    /// BMCs do (the default: at once).
    pub fn power_delay(mut self, delay: std::time::Duration) -> Self {
        self.power_delay = delay;
        self
    }

    /// All systems behind one address (`Systems` lists them all; hosts need their `systemId`).
    pub fn shared_endpoint(mut self) -> Self {
        self.shared_endpoint = true;
        self
    }

    /// No `SessionService`: clients use basic auth on every request.
    pub fn without_sessions(mut self) -> Self {
        self.sessions = false;
        self
    }

    /// Systems start powered on (default: off).
    pub fn powered_on(mut self) -> Self {
        self.powered_on = true;
        self
    }

    pub async fn start(self) -> std::io::Result<FakeBmc> {
        let ids: Vec<String> = (0..self.systems).map(|i| format!("node-{i:04}")).collect();
        let shared = Arc::new(Shared {
            systems: ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    Mutex::new(SystemState {
                        id: id.clone(),
                        mac: format!(
                            "52:54:00:{:02x}:{:02x}:{:02x}",
                            i >> 16,
                            (i >> 8) & 0xff,
                            i & 0xff
                        ),
                        power_on: self.powered_on,
                        boot_target: "None".into(),
                        boot_enabled: "Disabled".into(),
                        boot_mode: "UEFI".into(),
                        generation: 1,
                        media: [None, None],
                        media_generation: [1, 1],
                        boots: Vec::new(),
                        inserts: 0,
                        ejects: 0,
                        power_on_requests: 0,
                        pending_power: None,
                    })
                })
                .collect(),
            index: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.to_ascii_lowercase(), i))
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            with_sessions: self.sessions,
            counters: Counters::default(),
            fail_remaining: AtomicU64::new(0),
            fail_status: AtomicU64::new(503),
            power_delay: self.power_delay,
        });
        let mut tasks = Vec::new();
        let mut addresses = Vec::new();
        let scopes: Vec<Option<usize>> = if self.shared_endpoint {
            vec![None]
        } else {
            (0..self.systems).map(Some).collect()
        };
        for only in scopes {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let router = Router::new().fallback(handle).with_state(Scope {
                shared: shared.clone(),
                only,
            });
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            }));
            addresses.push(format!("http://127.0.0.1:{port}"));
        }
        let systems = ids
            .iter()
            .enumerate()
            .map(|(i, id)| LabSystem {
                address: addresses[if self.shared_endpoint { 0 } else { i }].clone(),
                system_id: id.clone(),
                name: id.clone(),
                username: USERNAME.into(),
                password: PASSWORD.into(),
                mac: shared.systems[i].lock().unwrap().mac.clone(),
            })
            .collect();
        Ok(FakeBmc {
            shared,
            systems,
            tasks,
        })
    }
}

/// A running fake BMC (one or many listeners). Dropping it stops every listener.
pub struct FakeBmc {
    shared: Arc<Shared>,
    /// One entry per system, in the shape of the sushy lab's systems, so
    /// [`crate::fixtures::enroll`] takes them as they are (with no CA: the fake BMC speaks HTTP).
    pub systems: Vec<LabSystem>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeBmc {
    /// `systems` systems `node-0000`, `node-0001`, ... each behind its own address, with
    /// sessions, powered off.
    pub fn builder(systems: usize) -> FakeBmcBuilder {
        FakeBmcBuilder {
            systems,
            shared_endpoint: false,
            sessions: true,
            powered_on: false,
            power_delay: std::time::Duration::ZERO,
        }
    }

    pub fn requests(&self) -> RequestCounts {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            total: l(&c.total),
            get: l(&c.get),
            post: l(&c.post),
            patch: l(&c.patch),
            delete: l(&c.delete),
            unauthorized: l(&c.unauthorized),
            injected_failures: l(&c.injected),
        }
    }

    /// Requests received per `<METHOD> <path>` (ids of systems, managers and sessions shown as
    /// `{id}`), for the benches' breakdowns.
    pub fn requests_by_route(&self) -> HashMap<String, u64> {
        self.shared.counters.by_route.lock().unwrap().clone()
    }

    /// The next `n` authenticated requests (to any system) are answered with `status`
    /// (e.g. 503) instead of being served.
    pub fn fail_next(&self, n: u64, status: u16) {
        self.shared
            .fail_status
            .store(u64::from(status), Ordering::Relaxed);
        self.shared.fail_remaining.store(n, Ordering::Relaxed);
    }

    /// The state of system `id` (`node-NNNN`), `None` for an unknown id.
    pub fn system(&self, id: &str) -> Option<SystemSnapshot> {
        let i = *self.shared.index.get(&id.to_ascii_lowercase())?;
        let mut s = self.shared.systems[i].lock().unwrap();
        s.settle();
        Some(SystemSnapshot {
            power: power_word(s.power_on).into(),
            boot_target: s.boot_target.clone(),
            boot_enabled: s.boot_enabled.clone(),
            boot_mode: s.boot_mode.clone(),
            media: SLOTS
                .iter()
                .enumerate()
                .map(|(k, (name, _))| (name.to_string(), s.media[k].clone()))
                .collect(),
            boots: s.boots.clone(),
            inserts: s.inserts,
            ejects: s.ejects,
            power_on_requests: s.power_on_requests,
        })
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.lock().unwrap().len()
    }
}

impl Drop for FakeBmc {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn power_word(on: bool) -> &'static str {
    if on { "On" } else { "Off" }
}

fn json_response(status: StatusCode, body: Value, etag: Option<String>) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("odata-version", HeaderValue::from_static("4.0"));
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert(header::ETAG, tag);
    }
    r
}

fn no_content() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A Redfish error body (`error.@Message.ExtendedInfo`).
fn error(status: StatusCode, message_id: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error": {
            "code": format!("Base.1.8.{message_id}"),
            "message": message,
            "@Message.ExtendedInfo": [{"MessageId": format!("Base.1.8.{message_id}"), "Message": message}],
        }}),
        None,
    )
}

fn not_found(path: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!("{path} not found"),
    )
}

fn etag(generation: u64) -> String {
    format!("W/\"{generation}\"")
}

fn members(paths: impl IntoIterator<Item = String>) -> Value {
    let m: Vec<Value> = paths.into_iter().map(|p| json!({"@odata.id": p})).collect();
    json!(m)
}

fn collection(odata_id: &str, kind: &str, paths: Vec<String>) -> Value {
    json!({
        "@odata.id": odata_id,
        "@odata.type": format!("#{kind}.{kind}"),
        "Name": kind,
        "Members@odata.count": paths.len(),
        "Members": members(paths),
    })
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn basic_ok(headers: &HeaderMap) -> bool {
    use base64::Engine;
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v.strip_prefix("Basic ") else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|s| s == format!("{USERNAME}:{PASSWORD}"))
}

async fn handle(
    State(scope): State<Scope>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sh = &scope.shared;
    let c = &sh.counters;
    c.total.fetch_add(1, Ordering::Relaxed);
    let by_method = match method {
        Method::GET => Some(&c.get),
        Method::POST => Some(&c.post),
        Method::PATCH => Some(&c.patch),
        Method::DELETE => Some(&c.delete),
        _ => None,
    };
    if let Some(counter) = by_method {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let path = uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    {
        let route: Vec<&str> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let after = i.checked_sub(1).map(|p| segs[p]);
                if matches!(after, Some("Systems" | "Sessions" | "Managers")) {
                    "{id}"
                } else {
                    s
                }
            })
            .collect();
        *c.by_route
            .lock()
            .unwrap()
            .entry(format!("{method} /{}", route.join("/")))
            .or_insert(0) += 1;
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MalformedJSON",
                    "the request body is not valid JSON",
                );
            }
        }
    };

    // Session login needs no authentication.
    if sh.with_sessions
        && method == Method::POST
        && segs == ["redfish", "v1", "SessionService", "Sessions"]
    {
        let user = body.get("UserName").and_then(Value::as_str);
        let pass = body.get("Password").and_then(Value::as_str);
        if user != Some(USERNAME) || pass != Some(PASSWORD) {
            c.unauthorized.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::UNAUTHORIZED,
                "NoValidSession",
                "invalid credentials",
            );
        }
        let n = sh.next_session.fetch_add(1, Ordering::Relaxed);
        let token = random_token();
        sh.sessions.lock().unwrap().insert(token.clone(), n);
        let location = format!("/redfish/v1/SessionService/Sessions/{n}");
        let mut r = json_response(
            StatusCode::CREATED,
            json!({"@odata.id": location, "Id": n.to_string(), "UserName": USERNAME}),
            None,
        );
        if let (Ok(t), Ok(l)) = (
            HeaderValue::from_str(&token),
            HeaderValue::from_str(&location),
        ) {
            r.headers_mut().insert("x-auth-token", t);
            r.headers_mut().insert(header::LOCATION, l);
        }
        return r;
    }
    let session = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| sh.sessions.lock().unwrap().get(t).copied());
    if session.is_none() && !basic_ok(&headers) {
        c.unauthorized.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::UNAUTHORIZED,
            "NoValidSession",
            "authentication required",
        );
    }
    if sh
        .fail_remaining
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        c.injected.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(sh.fail_status.load(Ordering::Relaxed) as u16)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(status, "ServiceTemporarilyUnavailable", "injected failure");
    }

    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["redfish", "v1"]) => json_response(StatusCode::OK, service_root(sh), None),
        (Method::GET, ["redfish", "v1", "SessionService"]) if sh.with_sessions => json_response(
            StatusCode::OK,
            json!({
                "@odata.id": "/redfish/v1/SessionService",
                "Id": "SessionService",
                "ServiceEnabled": true,
                "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"},
            }),
            None,
        ),
        (Method::DELETE, ["redfish", "v1", "SessionService", "Sessions", id]) => {
            let mut sessions = sh.sessions.lock().unwrap();
            let before = sessions.len();
            sessions.retain(|_, n| n.to_string() != *id);
            if sessions.len() == before {
                not_found(&path)
            } else {
                no_content()
            }
        }
        (Method::GET, ["redfish", "v1", "Systems"]) => {
            let paths = visible(&scope)
                .map(|i| format!("/redfish/v1/Systems/{}", sh.systems[i].lock().unwrap().id))
                .collect();
            json_response(
                StatusCode::OK,
                collection("/redfish/v1/Systems", "ComputerSystemCollection", paths),
                None,
            )
        }
        (Method::GET, ["redfish", "v1", "Managers"]) => json_response(
            StatusCode::OK,
            collection(
                "/redfish/v1/Managers",
                "ManagerCollection",
                vec!["/redfish/v1/Managers/BMC".into()],
            ),
            None,
        ),
        (Method::GET, ["redfish", "v1", "Managers", "BMC"]) => {
            let servers = visible(&scope)
                .map(|i| format!("/redfish/v1/Systems/{}", sh.systems[i].lock().unwrap().id))
                .collect::<Vec<_>>();
            json_response(
                StatusCode::OK,
                json!({
                    "@odata.id": "/redfish/v1/Managers/BMC",
                    "@odata.type": "#Manager.v1_19_0.Manager",
                    "Id": "BMC",
                    "Name": "Fake BMC",
                    "ManagerType": "BMC",
                    "Manufacturer": "Beskar7",
                    "Model": "fake-bmc",
                    "FirmwareVersion": "1.0",
                    "Links": {"ManagerForServers": members(servers)},
                }),
                None,
            )
        }
        (_, ["redfish", "v1", "Systems", id, rest @ ..]) => {
            let Some(i) = system_index(&scope, id) else {
                return not_found(&path);
            };
            let mut s = sh.systems[i].lock().unwrap();
            s.settle();
            system_request(
                &mut s,
                &method,
                rest,
                &headers,
                &body,
                &path,
                sh.power_delay,
            )
        }
        _ => not_found(&path),
    }
}

fn visible(scope: &Scope) -> Box<dyn Iterator<Item = usize> + Send> {
    match scope.only {
        Some(i) => Box::new(std::iter::once(i)),
        None => Box::new(0..scope.shared.systems.len()),
    }
}

fn system_index(scope: &Scope, id: &str) -> Option<usize> {
    let i = *scope.shared.index.get(&id.to_ascii_lowercase())?;
    scope.only.is_none_or(|only| only == i).then_some(i)
}

fn service_root(sh: &Shared) -> Value {
    let mut root = json!({
        "@odata.id": "/redfish/v1",
        "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
        "Id": "RootService",
        "Name": "Root Service",
        "RedfishVersion": "1.15.0",
        "UUID": "5f2a4e1c-0000-4000-8000-000000000b7b",
        "Product": "Beskar7 fake BMC",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "Managers": {"@odata.id": "/redfish/v1/Managers"},
    });
    if sh.with_sessions {
        root["SessionService"] = json!({"@odata.id": "/redfish/v1/SessionService"});
        root["Links"] = json!({"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}});
    }
    root
}

fn system_json(s: &SystemState) -> Value {
    let base = format!("/redfish/v1/Systems/{}", s.id);
    json!({
        "@odata.id": base,
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "@odata.etag": etag(s.generation),
        "Id": s.id,
        "Name": s.id,
        "SystemType": "Physical",
        "Manufacturer": "Contoso",
        "Model": "3500",
        "SerialNumber": s.id.to_ascii_uppercase(),
        "UUID": format!("00000000-0000-4000-8000-{:012x}", s.mac.bytes().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b))) & 0xffff_ffff_ffff),
        "PowerState": power_word(s.power_on),
        "Status": {"State": "Enabled", "Health": "OK"},
        "Boot": {
            "BootSourceOverrideEnabled": s.boot_enabled,
            "BootSourceOverrideEnabled@Redfish.AllowableValues": ["Disabled", "Once", "Continuous"],
            "BootSourceOverrideTarget": s.boot_target,
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup"],
            "BootSourceOverrideMode": s.boot_mode,
            "BootSourceOverrideMode@Redfish.AllowableValues": ["Legacy", "UEFI"],
        },
        "ProcessorSummary": {"Count": 2, "LogicalProcessorCount": 16, "Model": "Multi-Core Intel(R) Xeon(R) processor 7xxx Series"},
        "MemorySummary": {"TotalSystemMemoryGiB": 96},
        "EthernetInterfaces": {"@odata.id": format!("{base}/EthernetInterfaces")},
        "VirtualMedia": {"@odata.id": format!("{base}/VirtualMedia")},
        "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/BMC"}]},
        "Actions": {"#ComputerSystem.Reset": {
            "target": format!("{base}/Actions/ComputerSystem.Reset"),
            "ResetType@Redfish.AllowableValues": RESET_TYPES,
        }},
    })
}

fn slot_json(s: &SystemState, k: usize) -> Value {
    let (name, types) = SLOTS[k];
    let base = format!("/redfish/v1/Systems/{}/VirtualMedia/{name}", s.id);
    json!({
        "@odata.id": base,
        "@odata.type": "#VirtualMedia.v1_6_5.VirtualMedia",
        "@odata.etag": etag(s.media_generation[k]),
        "Id": name,
        "Name": format!("Virtual {name}"),
        "MediaTypes": types,
        "Image": s.media[k],
        "Inserted": s.media[k].is_some(),
        "WriteProtected": true,
        "ConnectedVia": if s.media[k].is_some() { "URI" } else { "NotConnected" },
        "Actions": {
            "#VirtualMedia.InsertMedia": {"target": format!("{base}/Actions/VirtualMedia.InsertMedia")},
            "#VirtualMedia.EjectMedia": {"target": format!("{base}/Actions/VirtualMedia.EjectMedia")},
        },
    })
}

/// `If-Match` against the current ETag: `*` and absent pass.
fn if_match_ok(headers: &HeaderMap, current: &str) -> bool {
    match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v.trim() == "*" || v.split(',').any(|t| t.trim() == current),
    }
}

fn power_on(s: &mut SystemState) {
    s.power_on = true;
    let once = s.boot_enabled == "Once";
    let target =
        (s.boot_enabled != "Disabled" && s.boot_target != "None").then(|| s.boot_target.clone());
    s.boots.push(BootRecord {
        override_target: target,
        cd_image: s.media[0].clone(),
    });
    if once {
        // A one-time override is consumed by the boot it applied to.
        s.boot_enabled = "Disabled".into();
    }
}

fn system_request(
    s: &mut SystemState,
    method: &Method,
    rest: &[&str],
    headers: &HeaderMap,
    body: &Value,
    path: &str,
    power_delay: std::time::Duration,
) -> Response {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "PropertyValueNotInList", m);
    match (method.clone(), rest) {
        (Method::GET, []) => {
            json_response(StatusCode::OK, system_json(s), Some(etag(s.generation)))
        }
        (Method::PATCH, []) => {
            if !if_match_ok(headers, &etag(s.generation)) {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    "PreconditionFailed",
                    "ETag does not match",
                );
            }
            let Some(boot) = body.get("Boot").and_then(Value::as_object) else {
                return bad("only Boot can be changed");
            };
            for (k, v) in boot {
                let Some(v) = v.as_str() else {
                    return bad(&format!("{k} must be a string"));
                };
                match k.as_str() {
                    "BootSourceOverrideTarget"
                        if ["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup"].contains(&v) =>
                    {
                        s.boot_target = v.into()
                    }
                    "BootSourceOverrideEnabled"
                        if ["Disabled", "Once", "Continuous"].contains(&v) =>
                    {
                        s.boot_enabled = v.into()
                    }
                    "BootSourceOverrideMode" if ["Legacy", "UEFI"].contains(&v) => {
                        s.boot_mode = v.into()
                    }
                    _ => return bad(&format!("{k}={v} is not supported")),
                }
            }
            s.generation += 1;
            no_content()
        }
        (Method::POST, ["Actions", "ComputerSystem.Reset"]) => {
            let Some(t) = body.get("ResetType").and_then(Value::as_str) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ActionParameterMissing",
                    "ResetType is required",
                );
            };
            if matches!(t, "On" | "ForceOn") {
                s.power_on_requests += 1;
            }
            if !power_delay.is_zero() {
                // A slow BMC: it accepts now, changes later, and shows the old state meanwhile.
                let on = match t {
                    "On" | "ForceOn" | "ForceRestart" | "GracefulRestart" => true,
                    "ForceOff" | "GracefulShutdown" => false,
                    "PushPowerButton" => !s.power_on,
                    _ => return bad(&format!("ResetType {t} is not supported")),
                };
                s.pending_power = Some((std::time::Instant::now() + power_delay, on));
                return no_content();
            }
            match t {
                "On" | "ForceOn" => {
                    if !s.power_on {
                        power_on(s)
                    }
                }
                "PushPowerButton" => {
                    if s.power_on {
                        s.power_on = false
                    } else {
                        power_on(s)
                    }
                }
                "ForceOff" | "GracefulShutdown" => s.power_on = false,
                "ForceRestart" | "GracefulRestart" => power_on(s),
                _ => return bad(&format!("ResetType {t} is not supported")),
            }
            s.generation += 1;
            no_content()
        }
        (Method::GET, ["EthernetInterfaces"]) => json_response(
            StatusCode::OK,
            collection(
                &format!("/redfish/v1/Systems/{}/EthernetInterfaces", s.id),
                "EthernetInterfaceCollection",
                vec![format!("/redfish/v1/Systems/{}/EthernetInterfaces/1", s.id)],
            ),
            None,
        ),
        (Method::GET, ["EthernetInterfaces", "1"]) => json_response(
            StatusCode::OK,
            json!({
                "@odata.id": format!("/redfish/v1/Systems/{}/EthernetInterfaces/1", s.id),
                "Id": "1",
                "Name": "Ethernet Interface",
                "MACAddress": s.mac,
                "PermanentMACAddress": s.mac,
                "LinkStatus": "LinkUp",
            }),
            None,
        ),
        (Method::GET, ["VirtualMedia"]) => json_response(
            StatusCode::OK,
            collection(
                &format!("/redfish/v1/Systems/{}/VirtualMedia", s.id),
                "VirtualMediaCollection",
                SLOTS
                    .iter()
                    .map(|(n, _)| format!("/redfish/v1/Systems/{}/VirtualMedia/{n}", s.id))
                    .collect(),
            ),
            None,
        ),
        (m, ["VirtualMedia", slot, action @ ..]) => {
            let Some(k) = SLOTS.iter().position(|(n, _)| n.eq_ignore_ascii_case(slot)) else {
                return not_found(path);
            };
            let image_of = |body: &Value| {
                body.get("Image")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            match (m, action) {
                (Method::GET, []) => json_response(
                    StatusCode::OK,
                    slot_json(s, k),
                    Some(etag(s.media_generation[k])),
                ),
                (Method::POST, ["Actions", "VirtualMedia.InsertMedia"]) => {
                    let Some(image) = image_of(body) else {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "ActionParameterMissing",
                            "Image is required",
                        );
                    };
                    if s.media[k].is_some() {
                        return error(
                            StatusCode::CONFLICT,
                            "ResourceInUse",
                            "media is already inserted: eject it first",
                        );
                    }
                    s.media[k] = Some(image);
                    s.media_generation[k] += 1;
                    s.inserts += 1;
                    no_content()
                }
                (Method::POST, ["Actions", "VirtualMedia.EjectMedia"]) => {
                    if s.media[k].take().is_some() {
                        s.ejects += 1;
                    }
                    s.media_generation[k] += 1;
                    no_content()
                }
                (Method::PATCH, []) => {
                    if !if_match_ok(headers, &etag(s.media_generation[k])) {
                        return error(
                            StatusCode::PRECONDITION_FAILED,
                            "PreconditionFailed",
                            "ETag does not match",
                        );
                    }
                    let inserted = body.get("Inserted").and_then(Value::as_bool);
                    match (image_of(body), inserted) {
                        (Some(image), None | Some(true)) => {
                            s.media[k] = Some(image);
                            s.inserts += 1;
                        }
                        (None, _) | (_, Some(false)) => {
                            if s.media[k].take().is_some() {
                                s.ejects += 1;
                            }
                        }
                    }
                    s.media_generation[k] += 1;
                    no_content()
                }
                _ => not_found(path),
            }
        }
        _ => not_found(path),
    }
}

/// Objects for tests that run the manager without the CAPI managers: what CAPI would have
/// written (a Cluster whose infrastructure is provisioned, Machines owning their
/// Beskar7Machines), created directly, so a thousand machines cost only API writes.
pub mod stand_in {
    use kube::api::{
        Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    };
    use serde_json::json;

    use super::FakeBmc;

    const CAPI_GROUP: &str = "cluster.x-k8s.io";
    const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";

    fn api(
        client: &kube::Client,
        ns: &str,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Api<DynamicObject> {
        Api::namespaced_with(
            client.clone(),
            ns,
            &ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)),
        )
    }

    async fn create(
        client: &kube::Client,
        ns: &str,
        group: &str,
        version: &str,
        kind: &str,
        body: serde_json::Value,
    ) -> Result<DynamicObject, kube::Error> {
        let mut obj: DynamicObject =
            serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
        obj.types = Some(kube::core::TypeMeta {
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
        });
        api(client, ns, group, version, kind)
            .create(&PostParams::default(), &obj)
            .await
    }

    /// A credentials Secret and a PhysicalHost `<prefix>-NNNN` per fake system, `concurrency`
    /// creations at a time. Returns the host names in system order.
    pub async fn enroll(
        client: &kube::Client,
        ns: &str,
        bmc: &FakeBmc,
        prefix: &str,
        concurrency: usize,
    ) -> Result<Vec<String>, kube::Error> {
        enroll_range(
            client,
            ns,
            bmc,
            prefix,
            0..bmc.systems.len(),
            &[],
            concurrency,
        )
        .await
    }

    /// [`enroll`] for the systems in `systems` only, each host labelled with `labels` (e.g. a
    /// `--watch-filter` shard).
    pub async fn enroll_range(
        client: &kube::Client,
        ns: &str,
        bmc: &FakeBmc,
        prefix: &str,
        systems: std::ops::Range<usize>,
        labels: &[(&str, &str)],
        concurrency: usize,
    ) -> Result<Vec<String>, kube::Error> {
        use futures::StreamExt;
        let names: Vec<String> = systems
            .clone()
            .map(|i| format!("{prefix}-{i:04}"))
            .collect();
        let results: Vec<Result<_, kube::Error>> =
            futures::stream::iter(names.iter().zip(&bmc.systems[systems]))
                .map(|(name, s)| crate::fixtures::enroll(client, ns, name, s, None, labels))
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        for r in results {
            r?;
        }
        Ok(names)
    }

    /// A CAPI Cluster `name` whose status says its infrastructure is provisioned (what CAPI
    /// writes once the Beskar7Cluster is ready).
    pub async fn cluster(client: &kube::Client, ns: &str, name: &str) -> Result<(), kube::Error> {
        create(client, ns, CAPI_GROUP, "v1beta2", "Cluster", json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": "Beskar7Cluster", "name": name}},
        }))
        .await?;
        api(client, ns, CAPI_GROUP, "v1beta2", "Cluster")
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"initialization": {"infrastructureProvisioned": true}}}),
                ),
            )
            .await?;
        Ok(())
    }

    /// A CAPI Machine `name` in `cluster` and the Beskar7Machine it owns (PreBakedISO of
    /// `image_url`, so the manager neither waits for bootstrap data nor fetches the image).
    pub async fn machine(
        client: &kube::Client,
        ns: &str,
        cluster: &str,
        name: &str,
        image_url: &str,
    ) -> Result<(), kube::Error> {
        let spec =
            json!({"osFamily": "talos", "imageURL": image_url, "provisioningMode": "PreBakedISO"});
        machine_with(client, ns, cluster, name, json!({}), spec, json!({})).await
    }

    /// [`machine`] with more: `machine_spec` merged into the CAPI Machine's spec (e.g.
    /// `failureDomain`), `spec` as the Beskar7Machine's spec, `labels` on both.
    pub async fn machine_with(
        client: &kube::Client,
        ns: &str,
        cluster: &str,
        name: &str,
        machine_spec: serde_json::Value,
        spec: serde_json::Value,
        labels: serde_json::Value,
    ) -> Result<(), kube::Error> {
        let mut all_labels = json!({"cluster.x-k8s.io/cluster-name": cluster});
        if let (Some(a), Some(extra)) = (all_labels.as_object_mut(), labels.as_object()) {
            a.extend(extra.clone());
        }
        let mut mspec = json!({
            "clusterName": cluster,
            "bootstrap": {"dataSecretName": format!("{name}-bootstrap")},
            "infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": "Beskar7Machine", "name": name},
        });
        if let (Some(a), Some(extra)) = (mspec.as_object_mut(), machine_spec.as_object()) {
            a.extend(extra.clone());
        }
        let m = create(
            client,
            ns,
            CAPI_GROUP,
            "v1beta2",
            "Machine",
            json!({
                "metadata": {"name": name, "namespace": ns, "labels": all_labels},
                "spec": mspec,
            }),
        )
        .await?;
        create(
            client,
            ns,
            INFRA_GROUP,
            "v1alpha1",
            "Beskar7Machine",
            json!({
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": all_labels,
                    "ownerReferences": [{
                        "apiVersion": format!("{CAPI_GROUP}/v1beta2"),
                        "kind": "Machine",
                        "name": name,
                        "uid": m.metadata.uid,
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "spec": spec,
            }),
        )
        .await?;
        Ok(())
    }

    /// [`machine`] for each name, `concurrency` at a time; `image_url(name)` gives each its image.
    pub async fn machines(
        client: &kube::Client,
        ns: &str,
        cluster: &str,
        names: &[String],
        image_url: impl Fn(&str) -> String,
        concurrency: usize,
    ) -> Result<(), kube::Error> {
        use futures::StreamExt;
        let results: Vec<Result<(), kube::Error>> = futures::stream::iter(names)
            .map(|n| {
                let url = image_url(n);
                async move { machine(client, ns, cluster, n, &url).await }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }
}

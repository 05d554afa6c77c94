//! A recording, fault-injecting HTTPS reverse proxy in front of a BMC (normally the lab's
//! sushy-tools emulator).
//!
//! Point a PhysicalHost at [`BmcProxy::address`] (with [`BmcProxy::ca_pem`] as its CA bundle,
//! see [`crate::fixtures::enroll_via_proxy`]) and the proxy:
//!
//! - records every request it receives (method, path, status, time, and the JSON body of writes
//!   other than a session login), so a test can count e.g. the `ComputerSystem.Reset` POSTs or
//!   `VirtualMedia.InsertMedia` POSTs one host got;
//! - injects faults switched at runtime by the test ([`Fault`]): an error status (5xx bursts),
//!   a connection reset (TCP RST after the request was read), a stall before forwarding, a 401,
//!   503 with `Retry-After`; each fault applies to the next `n` matching requests or until
//!   cleared;
//! - optionally emulates a Redfish SessionService on top of a basic-auth BMC (sushy-tools has
//!   none), so session expiry can be injected with [`BmcProxy::expire_sessions`]: requests with a
//!   token issued before the expiry get 401 until the client logs in again.
//!
//! One proxy per PhysicalHost keeps each host's log and faults apart even when all hosts share
//! one emulator.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::certs::Ca;
use crate::{BmcLab, LabSystem};

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct ProxyRecord {
    /// Order of arrival (0, 1, ...), stable across [`BmcProxy::clear_log`].
    pub seq: u64,
    /// Time since the proxy started, at arrival.
    pub at: Duration,
    pub method: String,
    pub path: String,
    /// Status sent back; `None` while in flight, or when the proxy reset the connection or the
    /// client gave up (stall) before an answer.
    pub status: Option<u16>,
    /// The injected fault that answered this request, if any (`"status 500"`, `"reset"`,
    /// `"stall"`, `"401"`, `"retry-after"`, `"session-expired"`).
    pub fault: Option<String>,
    /// JSON body of a POST/PATCH (never of a session login).
    pub body: Option<serde_json::Value>,
    /// `PowerState` in the BMC's answer to a GET (of a ComputerSystem).
    pub power_state: Option<String>,
}

impl ProxyRecord {
    /// Whether the BMC behind the proxy answered with a 2xx (the request took effect).
    pub fn succeeded(&self) -> bool {
        self.fault.as_deref().is_none_or(|f| f == "stall")
            && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// `POST .../Actions/ComputerSystem.Reset`: its `ResetType`.
    pub fn reset_type(&self) -> Option<&str> {
        if self.method != "POST" || !self.path.ends_with("/Actions/ComputerSystem.Reset") {
            return None;
        }
        self.body.as_ref()?.get("ResetType")?.as_str()
    }

    /// An insert (POST `VirtualMedia.InsertMedia` or PATCH of a slot's `Image`): the image URL.
    pub fn inserted_image(&self) -> Option<&str> {
        let body = self.body.as_ref()?;
        let is_insert = (self.method == "POST"
            && self.path.ends_with("/Actions/VirtualMedia.InsertMedia"))
            || (self.method == "PATCH" && self.path.contains("/VirtualMedia/"));
        if !is_insert {
            return None;
        }
        body.get("Image")?.as_str()
    }

    /// POST `VirtualMedia.EjectMedia` (or a PATCH of a slot with `Image: null`).
    pub fn is_eject(&self) -> bool {
        (self.method == "POST" && self.path.ends_with("/Actions/VirtualMedia.EjectMedia"))
            || (self.method == "PATCH"
                && self.path.contains("/VirtualMedia/")
                && self
                    .body
                    .as_ref()
                    .is_some_and(|b| b.get("Image").is_some_and(|i| i.is_null())))
    }
}

/// What the proxy does instead of (or before) forwarding a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a Redfish error body (e.g. 500, 502).
    Status(u16),
    /// Read the request, then reset the TCP connection (no answer).
    Reset,
    /// Wait this long, then forward (the client may give up first).
    Stall(Duration),
    /// 401 with a Redfish `NoValidSession` error.
    Unauthorized,
    /// 503 with `Retry-After: <seconds>`.
    RetryAfter(u64),
    /// 204 without forwarding: the BMC takes the request and nothing comes of it, as a
    /// `GracefulShutdown` does when the OS ignores the ACPI power button (hung, or set so).
    Ignored,
}

impl Fault {
    fn label(&self) -> String {
        match self {
            Fault::Status(s) => format!("status {s}"),
            Fault::Reset => "reset".into(),
            Fault::Stall(_) => "stall".into(),
            Fault::Unauthorized => "401".into(),
            Fault::RetryAfter(_) => "retry-after".into(),
            Fault::Ignored => "ignored".into(),
        }
    }
}

/// A fault and the requests it applies to.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub fault: Fault,
    /// How many more matching requests it applies to; `None`: until cleared.
    pub remaining: Option<u32>,
    /// Only requests with this method (any when `None`).
    pub method: Option<String>,
    /// Only requests whose path contains this (any when `None`).
    pub path_contains: Option<String>,
    /// Only requests whose body contains this (any when `None`), e.g. `"GracefulShutdown"`.
    pub body_contains: Option<String>,
}

impl FaultRule {
    /// `fault` on every request until cleared.
    pub fn always(fault: Fault) -> Self {
        FaultRule {
            fault,
            remaining: None,
            method: None,
            path_contains: None,
            body_contains: None,
        }
    }

    /// `fault` on the next `n` matching requests.
    pub fn times(fault: Fault, n: u32) -> Self {
        FaultRule {
            remaining: Some(n),
            ..FaultRule::always(fault)
        }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_string());
        self
    }

    pub fn path_contains(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_string());
        self
    }

    pub fn body_contains(mut self, s: &str) -> Self {
        self.body_contains = Some(s.to_string());
        self
    }

    fn matches(&self, method: &str, path: &str, body: &[u8]) -> bool {
        self.remaining != Some(0)
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
            && self
                .body_contains
                .as_deref()
                .is_none_or(|b| String::from_utf8_lossy(body).contains(b))
    }
}

struct Sessions {
    username: String,
    password: String,
    next: u64,
    valid: HashSet<String>,
    issued: u64,
}

struct Inner {
    started: Instant,
    upstream: String,
    http: reqwest::Client,
    log: Mutex<Vec<ProxyRecord>>,
    next_seq: Mutex<u64>,
    faults: Mutex<Vec<FaultRule>>,
    sessions: Option<Mutex<Sessions>>,
}

/// A running proxy; stops on drop.
pub struct BmcProxy {
    /// `https://127.0.0.1:<port>`
    pub address: String,
    /// PEM of the CA that signed the proxy's certificate (the PhysicalHost's `caBundle`).
    pub ca_pem: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for BmcProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcProxy")
            .field("address", &self.address)
            .field("upstream", &self.inner.upstream)
            .finish_non_exhaustive()
    }
}

impl Drop for BmcProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BmcProxy {
    /// A proxy in front of the lab's emulator, passing authentication through.
    pub async fn start(lab: &BmcLab) -> Result<BmcProxy> {
        Self::start_upstream(&lab.address, &lab.ca_pem, None).await
    }

    /// A proxy in front of the lab's emulator that also offers a Redfish SessionService
    /// (checked against the lab's credentials; forwarded upstream with basic auth).
    pub async fn start_with_sessions(lab: &BmcLab) -> Result<BmcProxy> {
        Self::start_upstream(
            &lab.address,
            &lab.ca_pem,
            Some((lab.username.clone(), lab.password.clone())),
        )
        .await
    }

    /// A proxy in front of any HTTPS (verified against `upstream_ca_pem`) or HTTP BMC.
    pub async fn start_upstream(
        upstream: &str,
        upstream_ca_pem: &str,
        sessions: Option<(String, String)>,
    ) -> Result<BmcProxy> {
        crate::install_crypto_provider();
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none());
        if upstream.starts_with("https://") {
            let ca = reqwest::Certificate::from_pem(upstream_ca_pem.as_bytes())
                .context("upstream CA")?;
            http = http.tls_certs_only([ca]);
        }
        let http = http.build().context("upstream HTTP client")?;

        let ca = Ca::new("beskar7 BMC proxy CA").context("proxy CA")?;
        let serving = ca
            .loopback_serving_cert("bmc-proxy")
            .context("proxy certificate")?;
        let acceptor = tls_acceptor(&serving.cert_pem, &serving.key_pem)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind proxy")?;
        let addr: SocketAddr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            started: Instant::now(),
            upstream: upstream.trim_end_matches('/').to_string(),
            http,
            log: Mutex::new(Vec::new()),
            next_seq: Mutex::new(0),
            faults: Mutex::new(Vec::new()),
            sessions: sessions.map(|(username, password)| {
                Mutex::new(Sessions {
                    username,
                    password,
                    next: 0,
                    valid: HashSet::new(),
                    issued: 0,
                })
            }),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, inner.clone()));
        Ok(BmcProxy {
            address: format!("https://{addr}"),
            ca_pem: ca.cert_pem(),
            inner,
            task,
        })
    }

    /// `system` as seen through the proxy (same id and credentials, the proxy's address).
    pub fn system(&self, system: &LabSystem) -> LabSystem {
        LabSystem {
            address: self.address.clone(),
            ..system.clone()
        }
    }

    /// Every request received since the last [`BmcProxy::clear_log`], in order of arrival.
    pub fn requests(&self) -> Vec<ProxyRecord> {
        self.inner.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.inner.log.lock().unwrap().clear();
    }

    /// Requests with this method whose path ends with `path_suffix`.
    pub fn count(&self, method: &str, path_suffix: &str) -> usize {
        self.inner
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(path_suffix))
            .count()
    }

    /// Adds a fault rule (rules are tried in the order added; the first match applies).
    pub fn inject(&self, rule: FaultRule) {
        self.inner.faults.lock().unwrap().push(rule);
    }

    /// Removes every fault rule: from now on requests are forwarded as they are.
    pub fn clear_faults(&self) {
        self.inner.faults.lock().unwrap().clear();
    }

    /// Whether every `times` rule has been used up (and no `always` rule is left).
    pub fn faults_spent(&self) -> bool {
        self.inner
            .faults
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.remaining == Some(0))
    }

    /// Invalidates every session issued so far (emulated SessionService only): their next
    /// requests get 401 until the client logs in again.
    pub fn expire_sessions(&self) {
        if let Some(s) = &self.inner.sessions {
            s.lock().unwrap().valid.clear();
        }
    }

    /// Sessions issued by the emulated SessionService so far.
    pub fn sessions_issued(&self) -> u64 {
        self.inner
            .sessions
            .as_ref()
            .map(|s| s.lock().unwrap().issued)
            .unwrap_or(0)
    }
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("proxy certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("proxy key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("proxy TLS configuration")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    inner: Arc<Inner>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let inner = inner.clone();
        tokio::spawn(async move {
            let fd = tcp.as_raw_fd();
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let kill = Arc::new(tokio::sync::Notify::new());
            let k2 = kill.clone();
            let service = hyper::service::service_fn(move |req| {
                let inner = inner.clone();
                let kill = k2.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&inner, req, &kill).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {
                    // Reset rather than close: SO_LINGER 0 makes the close below send RST. The
                    // connection future (which owns the socket) is still alive here.
                    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                    // SAFETY: setsockopt on a socket this task owns, with a valid `linger`.
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &linger as *const libc::linger as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                }
            }
        });
    }
}

fn redfish_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": code, "message": message,
        "@Message.ExtendedInfo": [{"MessageId": code, "Message": message}]}});
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

impl Inner {
    fn record(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> u64 {
        let mut seq = self.next_seq.lock().unwrap();
        let n = *seq;
        *seq += 1;
        self.log.lock().unwrap().push(ProxyRecord {
            seq: n,
            at: self.started.elapsed(),
            method: method.to_string(),
            path: path.to_string(),
            status: None,
            fault: None,
            body,
            power_state: None,
        });
        n
    }

    fn finish(&self, seq: u64, status: Option<u16>, fault: Option<String>) {
        let mut log = self.log.lock().unwrap();
        if let Some(r) = log.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = status;
            r.fault = fault;
        }
    }

    fn set_power_state(&self, seq: u64, power: String) {
        let mut log = self.log.lock().unwrap();
        if let Some(r) = log.iter_mut().rev().find(|r| r.seq == seq) {
            r.power_state = Some(power);
        }
    }

    fn take_fault(&self, method: &str, path: &str, body: &[u8]) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let rule = faults.iter_mut().find(|r| r.matches(method, path, body))?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }
}

async fn handle(
    inner: &Inner,
    req: Request<Incoming>,
    kill: &tokio::sync::Notify,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let sessions_path = "/redfish/v1/SessionService/Sessions";
    let is_login = method == "POST" && path.trim_end_matches('/') == sessions_path;
    let json_body = (!is_login && (method == "POST" || method == "PATCH"))
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten();
    let seq = inner.record(&method, &path, json_body);
    let mut stalled = None;

    match inner.take_fault(&method, &path, &body) {
        Some(Fault::Ignored) => {
            inner.finish(seq, Some(204), Some(Fault::Ignored.label()));
            return Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()))
                .expect("valid response");
        }
        Some(Fault::Status(s)) => {
            inner.finish(seq, Some(s), Some(Fault::Status(s).label()));
            return redfish_error(
                s,
                "Base.1.8.InternalError",
                "injected by the test proxy: the BMC failed",
            );
        }
        Some(Fault::Unauthorized) => {
            inner.finish(seq, Some(401), Some(Fault::Unauthorized.label()));
            return redfish_error(401, "Base.1.8.NoValidSession", "injected 401");
        }
        Some(Fault::RetryAfter(secs)) => {
            inner.finish(seq, Some(503), Some(Fault::RetryAfter(secs).label()));
            let mut resp = redfish_error(
                503,
                "Base.1.8.ServiceTemporarilyUnavailable",
                "injected by the test proxy: the BMC is busy",
            );
            resp.headers_mut().insert(
                "retry-after",
                hyper::header::HeaderValue::from_str(&secs.to_string()).expect("digits"),
            );
            return resp;
        }
        Some(Fault::Reset) => {
            inner.finish(seq, None, Some(Fault::Reset.label()));
            kill.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Stall(d)) => {
            // Marked first: if the client gives up, this future is dropped mid-sleep.
            inner.finish(seq, None, Some(Fault::Stall(d).label()));
            tokio::time::sleep(d).await;
            stalled = Some(Fault::Stall(d).label());
        }
        None => {}
    }

    // Authentication: pass through, or the emulated SessionService.
    let mut auth = parts.headers.get("authorization").cloned();
    if let Some(sessions) = &inner.sessions {
        let mut s = sessions.lock().unwrap();
        if is_login {
            let creds: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if creds["UserName"].as_str() != Some(s.username.as_str())
                || creds["Password"].as_str() != Some(s.password.as_str())
            {
                drop(s);
                inner.finish(seq, Some(401), None);
                return redfish_error(401, "Base.1.8.NoValidSession", "wrong credentials");
            }
            s.next += 1;
            s.issued += 1;
            let token = format!(
                "proxy-session-{:x}-{}",
                inner.started.elapsed().as_nanos(),
                s.next
            );
            s.valid.insert(token.clone());
            let id = s.next;
            drop(s);
            inner.finish(seq, Some(201), None);
            let location = format!("{sessions_path}/{id}");
            return Response::builder()
                .status(201)
                .header("content-type", "application/json")
                .header("x-auth-token", token)
                .header("location", &location)
                .body(Full::new(Bytes::from(
                    serde_json::json!({"@odata.id": location, "Id": id.to_string(), "UserName": s_username(inner)})
                        .to_string(),
                )))
                .expect("valid response");
        }
        if let Some(token) = parts.headers.get("x-auth-token") {
            let token = token.to_str().unwrap_or_default().to_string();
            if !s.valid.contains(&token) {
                drop(s);
                inner.finish(seq, Some(401), Some("session-expired".into()));
                return redfish_error(401, "Base.1.8.NoValidSession", "the session expired");
            }
            if method == "DELETE"
                && path.starts_with(sessions_path)
                && path.len() > sessions_path.len()
            {
                s.valid.remove(&token);
                drop(s);
                inner.finish(seq, Some(204), None);
                return Response::builder()
                    .status(204)
                    .body(Full::new(Bytes::new()))
                    .expect("valid response");
            }
            auth = Some(basic_auth(&s.username, &s.password));
        }
    }

    // Forward.
    let url = format!("{}{}", inner.upstream, path_and_query);
    let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
        inner.finish(seq, Some(405), None);
        return redfish_error(405, "Base.1.8.GeneralError", "method not allowed");
    };
    let mut out = inner.http.request(m, &url);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if matches!(
            n,
            "host"
                | "connection"
                | "content-length"
                | "transfer-encoding"
                | "authorization"
                | "x-auth-token"
                | "keep-alive"
        ) {
            continue;
        }
        out = out.header(n, value.as_bytes());
    }
    if let Some(a) = auth {
        out = out.header("authorization", a.as_bytes());
    }
    if !body.is_empty() {
        out = out.body(body.clone());
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            inner.finish(seq, Some(502), stalled);
            return redfish_error(
                502,
                "Base.1.8.GeneralError",
                &format!("proxy: upstream failed: {e}"),
            );
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut bytes = resp.bytes().await.unwrap_or_default();
    if method == "GET"
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(p) = v.get("PowerState").and_then(|p| p.as_str())
    {
        inner.set_power_state(seq, p.to_string());
    }
    if inner.sessions.is_some()
        && method == "GET"
        && path.trim_end_matches('/') == "/redfish/v1"
        && let Ok(mut root) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && root.is_object()
    {
        root["SessionService"] = serde_json::json!({"@odata.id": "/redfish/v1/SessionService"});
        let links = root
            .as_object_mut()
            .expect("object")
            .entry("Links")
            .or_insert_with(|| serde_json::json!({}));
        if links.is_object() {
            links["Sessions"] = serde_json::json!({"@odata.id": sessions_path});
        }
        bytes = Bytes::from(root.to_string());
    }
    let mut builder =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in &headers {
        let n = name.as_str();
        if matches!(
            n,
            "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            continue;
        }
        if n == "location"
            && let Ok(v) = value.to_str()
            && let Some(rest) = v.strip_prefix(&inner.upstream)
        {
            builder = builder.header(n, rest);
            continue;
        }
        builder = builder.header(n, value);
    }
    inner.finish(seq, Some(status), stalled);
    builder
        .body(Full::new(bytes))
        .unwrap_or_else(|_| redfish_error(502, "Base.1.8.GeneralError", "proxy: bad response"))
}

fn s_username(inner: &Inner) -> String {
    inner
        .sessions
        .as_ref()
        .map(|s| s.lock().unwrap().username.clone())
        .unwrap_or_default()
}

fn basic_auth(user: &str, password: &str) -> hyper::header::HeaderValue {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut h = hyper::header::HeaderValue::from_str(&format!("Basic {v}")).expect("base64");
    h.set_sensitive(true);
    h
}

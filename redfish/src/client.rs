//! The HTTP side: TLS, tower layers (timeout, retry with jittered backoff, concurrency limit),
//! authentication (session with fallback to basic), ETags and task monitors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

use crate::error::{self, Error, Result};
use crate::models::{self, ServiceRoot, Task};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpService = BoxCloneService<reqwest::Request, reqwest::Response, BoxError>;

/// BMC user name and password. Debug output never shows the password.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    fn basic_header(&self) -> HeaderValue {
        let raw = format!("{}:{}", self.username, self.password);
        let mut v = HeaderValue::from_str(&format!("Basic {}", base64(raw.as_bytes())))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        v.set_sensitive(true);
        v
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS verification of the BMC's certificate.
#[derive(Clone, Debug, Default)]
pub enum Tls {
    /// Verify against the system roots.
    #[default]
    Verify,
    /// Verify against only these CA certificates (PEM bundle).
    CaBundle(Vec<u8>),
    /// Do not verify (opt-in, `insecureSkipVerify`).
    Insecure,
}

/// How to authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// A Redfish session where the BMC has a SessionService, else basic auth.
    #[default]
    Auto,
    /// Basic auth on every request.
    Basic,
    /// A session or an error.
    Session,
}

/// One request as seen by the recorder hook.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// `None` when no response came (transport error).
    pub status: Option<u16>,
}

pub type Recorder = Arc<dyn Fn(&RequestRecord) + Send + Sync>;

/// Counts of requests sent on the wire (retries included).
#[derive(Debug, Default)]
pub struct RequestStats {
    pub total: AtomicU64,
    pub get: AtomicU64,
    pub post: AtomicU64,
    pub patch: AtomicU64,
    pub delete: AtomicU64,
    pub retries: AtomicU64,
}

impl RequestStats {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn count(&self, method: &Method) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let c = match *method {
            Method::GET => &self.get,
            Method::POST => &self.post,
            Method::PATCH => &self.patch,
            Method::DELETE => &self.delete,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(total, get, post, patch, delete)`.
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.get.load(Ordering::Relaxed),
            self.post.load(Ordering::Relaxed),
            self.patch.load(Ordering::Relaxed),
            self.delete.load(Ordering::Relaxed),
        )
    }
}

/// Client settings. `ClientConfig::new(address, credentials)` gives production defaults.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host`, `host:port`, `https://host[:port]` (or `http://` for tests).
    pub address: String,
    pub credentials: Credentials,
    pub tls: Tls,
    pub auth: AuthMode,
    /// Per attempt, body included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_max: Duration,
    /// Requests in flight to this BMC at once.
    pub max_concurrency: usize,
    pub task_poll_interval: Duration,
    pub task_timeout: Duration,
    /// How long a discovery stays cached (slots, reset types, boot targets rarely change).
    pub discovery_ttl: Duration,
    /// Called once per request sent on the wire.
    pub recorder: Option<Recorder>,
    /// Largest response body read from the BMC; a longer one is an `Error::ResponseTooLarge`
    /// (memory stays bounded whatever the BMC sends).
    pub max_body_bytes: usize,
}

/// Default `ClientConfig::max_body_bytes`: Redfish resources are kilobytes; the largest
/// collections of real BMCs stay well under a mebibyte.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("address", &self.address)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("auth", &self.auth)
            .field("max_retries", &self.max_retries)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    pub fn new(address: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            address: address.into(),
            credentials,
            tls: Tls::Verify,
            auth: AuthMode::Auto,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_retries: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            retry_after_max: Duration::from_secs(60),
            max_concurrency: 4,
            task_poll_interval: Duration::from_secs(2),
            task_timeout: Duration::from_secs(600),
            discovery_ttl: Duration::from_secs(900),
            recorder: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A response with its body read.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// ETag header, else `@odata.etag` of the body.
    pub fn etag(&self) -> Option<String> {
        if let Some(e) = self.header("etag").filter(|e| !e.is_empty()) {
            return Some(e.to_string());
        }
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v.get("@odata.etag")?.as_str().map(str::to_string)
    }

    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T> {
        models::parse(&self.body).map_err(|e| {
            Error::Protocol(format!(
                "{what}: invalid JSON from BMC (HTTP {}, {} bytes): {e}",
                self.status,
                self.body.len()
            ))
        })
    }
}

/// A resource with its ETag.
#[derive(Clone, Debug)]
pub struct Fetched<T> {
    pub value: T,
    pub etag: Option<String>,
}

/// Request body.
#[derive(Clone, Debug)]
pub enum Body {
    None,
    Json(Value),
}

impl Body {
    pub fn json<T: Serialize>(v: &T) -> Body {
        Body::Json(serde_json::to_value(v).unwrap_or(Value::Null))
    }
}

#[derive(Clone)]
enum Auth {
    NotYet,
    Basic,
    Session {
        token: HeaderValue,
        location: Option<String>,
    },
}

struct AuthState {
    auth: Auth,
    generation: u64,
}

pub(crate) struct Inner {
    pub(crate) base: Url,
    pub(crate) config: ClientConfig,
    http: reqwest::Client,
    stack: StdMutex<HttpService>,
    auth: tokio::sync::Mutex<AuthState>,
    root: tokio::sync::Mutex<Option<ServiceRoot>>,
    pub(crate) stats: Arc<RequestStats>,
    pub(crate) discovery:
        tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<crate::ops::Discovery>)>>,
}

/// A Redfish client for one BMC. Cheap to clone; clones share the session, the limits and the counters.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .field("user", &self.inner.config.credentials.username())
            .finish_non_exhaustive()
    }
}

/// Parse `host`, `host:port`, `https://host:port/...` into the service's base URL.
pub fn base_url(address: &str) -> Result<Url> {
    let a = address.trim();
    if a.is_empty() {
        return Err(Error::Config("empty BMC address".into()));
    }
    let with_scheme = if let Some(rest) = a
        .strip_prefix("redfish+https://")
        .or_else(|| a.strip_prefix("redfish://"))
    {
        format!("https://{rest}")
    } else if let Some(rest) = a.strip_prefix("redfish+http://") {
        format!("http://{rest}")
    } else if a.contains("://") {
        a.to_string()
    } else {
        format!("https://{a}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| Error::Config(format!("invalid BMC address {a:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(Error::Config(format!(
            "unsupported scheme {:?} in BMC address",
            url.scheme()
        )));
    }
    if url.host_str().is_none() {
        return Err(Error::Config(format!("no host in BMC address {a:?}")));
    }
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The HTTP client for `config`'s TLS and timeout settings, shared by every BMC client with the
/// same ones: each reqwest client carries its own TLS configuration (the system roots parsed
/// again) and connection pool, hundreds of kilobytes apiece, which a manager of a thousand hosts
/// would otherwise hold a thousand times. Connections are still pooled per BMC address.
fn shared_http(config: &ClientConfig) -> Result<reqwest::Client> {
    type Key = (u8, Vec<u8>, Duration, Duration, usize);
    static CLIENTS: std::sync::OnceLock<StdMutex<std::collections::HashMap<Key, reqwest::Client>>> =
        std::sync::OnceLock::new();
    // The whole CA bundle is part of the key: two BMCs share a client only when they trust
    // exactly the same certificates.
    let (kind, pem) = match &config.tls {
        Tls::Verify => (0u8, Vec::new()),
        Tls::CaBundle(pem) => (1u8, pem.clone()),
        Tls::Insecure => (2u8, Vec::new()),
    };
    let key: Key = (
        kind,
        pem,
        config.connect_timeout,
        config.request_timeout,
        config.max_concurrency,
    );
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(config.max_concurrency.max(1))
        // Each idle connection holds its buffers: a host between refreshes (120 s) holds none.
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("beskar7-redfish/", env!("CARGO_PKG_VERSION")));
    match &config.tls {
        Tls::Verify => {}
        Tls::CaBundle(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("invalid CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Config("CA bundle holds no certificate".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        Tls::Insecure => {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
    }
    let http = builder
        .build()
        .map_err(|e| Error::Config(format!("cannot build HTTP client: {e}")))?;
    clients.insert(key, http.clone());
    Ok(http)
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self> {
        let base = base_url(&config.address)?;
        let http = shared_http(&config)?;
        let stats = Arc::new(RequestStats::default());
        let stack = build_stack(&config, http.clone(), stats.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                config,
                http,
                stack: StdMutex::new(stack),
                auth: tokio::sync::Mutex::new(AuthState {
                    auth: Auth::NotYet,
                    generation: 0,
                }),
                root: tokio::sync::Mutex::new(None),
                stats,
                discovery: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub fn stats(&self) -> &Arc<RequestStats> {
        &self.inner.stats
    }

    /// The base URL (`https://host:port/`).
    pub fn base(&self) -> &Url {
        &self.inner.base
    }

    /// Whether the client authenticates with a Redfish session (after the first request).
    pub async fn uses_session(&self) -> bool {
        matches!(self.inner.auth.lock().await.auth, Auth::Session { .. })
    }

    fn url_for(&self, path: &str) -> Result<Url> {
        if path.starts_with("http://") || path.starts_with("https://") {
            return Url::parse(path).map_err(|e| Error::Protocol(format!("bad URL {path:?}: {e}")));
        }
        self.inner
            .base
            .join(path)
            .map_err(|e| Error::Protocol(format!("bad path {path:?}: {e}")))
    }

    /// One request through the tower stack, with the given auth header. Any status is `Ok`.
    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: &Body,
        if_match: Option<&str>,
        auth: Option<HeaderValue>,
    ) -> Result<Response> {
        let url = self.url_for(path)?;
        let mut req = reqwest::Request::new(method.clone(), url);
        let h = req.headers_mut();
        h.insert("accept", HeaderValue::from_static("application/json"));
        h.insert("odata-version", HeaderValue::from_static("4.0"));
        if let Some(v) = auth {
            h.insert(
                if v.as_bytes().starts_with(b"Basic ") {
                    AUTHORIZATION.as_str()
                } else {
                    "x-auth-token"
                },
                v,
            );
        }
        if let Some(tag) = if_match
            && let Ok(v) = HeaderValue::from_str(tag)
        {
            h.insert("if-match", v);
        }
        if let Body::Json(v) = body {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let bytes = serde_json::to_vec(v).unwrap_or_default();
            *req.body_mut() = Some(bytes.into());
        } else if method == Method::POST || method == Method::PATCH {
            h.insert("content-length", HeaderValue::from_static("0"));
        }
        let svc = self.inner.stack.lock().expect("stack lock").clone();
        let resp = svc
            .oneshot(req)
            .await
            .map_err(|e| error::from_transport(e.as_ref(), self.inner.base.as_str()))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = self.read_body(resp, &method, path).await?;
        tracing::debug!(method = %method, path, status, bytes = body.len(), "redfish request");
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Read a response body, at most `max_body_bytes` of it (checked against Content-Length
    /// first, then chunk by chunk, so an endless or huge body never sits in memory).
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        method: &Method,
        path: &str,
    ) -> Result<Vec<u8>> {
        let limit = self.inner.config.max_body_bytes;
        let too_large = || Error::ResponseTooLarge {
            what: format!("{method} {path}"),
            limit,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(
            resp.content_length()
                .map_or(0, |n| usize::try_from(n).unwrap_or(0))
                .min(64 * 1024),
        );
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| error::from_transport(&e, self.inner.base.as_str()))?
        {
            if body.len().saturating_add(chunk.len()) > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The service root (cached). Fetched with basic auth on first use.
    pub async fn service_root(&self) -> Result<ServiceRoot> {
        if let Some(r) = self.inner.root.lock().await.clone() {
            return Ok(r);
        }
        self.ensure_auth().await?;
        let r = self.inner.root.lock().await.clone();
        match r {
            Some(r) => Ok(r),
            None => {
                let root: ServiceRoot = self.get("/redfish/v1/").await?.value;
                *self.inner.root.lock().await = Some(root.clone());
                Ok(root)
            }
        }
    }

    /// Log in if not yet done; returns the auth header value and its generation.
    async fn ensure_auth(&self) -> Result<(HeaderValue, u64)> {
        let mut st = self.inner.auth.lock().await;
        if let Some(h) = self.header_of(&st.auth) {
            return Ok((h, st.generation));
        }
        let auth = self.login().await?;
        st.auth = auth;
        st.generation += 1;
        Ok((self.header_of(&st.auth).expect("logged in"), st.generation))
    }

    fn header_of(&self, auth: &Auth) -> Option<HeaderValue> {
        match auth {
            Auth::NotYet => None,
            Auth::Basic => Some(self.inner.config.credentials.basic_header()),
            Auth::Session { token, .. } => Some(token.clone()),
        }
    }

    async fn login(&self) -> Result<Auth> {
        let creds = &self.inner.config.credentials;
        let resp = self
            .send_raw(
                Method::GET,
                "/redfish/v1/",
                &Body::None,
                None,
                Some(creds.basic_header()),
            )
            .await?;
        if !resp.is_success() {
            return Err(error::from_status(
                "GET",
                "/redfish/v1/",
                resp.status,
                &resp.body,
            ));
        }
        let root: ServiceRoot = resp.json("service root")?;
        *self.inner.root.lock().await = Some(root.clone());
        if self.inner.config.auth == AuthMode::Basic {
            return Ok(Auth::Basic);
        }
        let sessions = root
            .links
            .as_ref()
            .and_then(|l| l.sessions.as_ref())
            .and_then(|s| s.path().map(str::to_string))
            .or_else(|| {
                root.session_service
                    .as_ref()
                    .and_then(|s| s.path())
                    .map(|p| format!("{}/Sessions", p.trim_end_matches('/')))
            });
        let Some(sessions) = sessions else {
            if self.inner.config.auth == AuthMode::Session {
                return Err(Error::NotSupported("the BMC has no SessionService".into()));
            }
            tracing::debug!("no SessionService: basic auth");
            return Ok(Auth::Basic);
        };
        let body = Body::Json(serde_json::json!({
            "UserName": creds.username,
            "Password": creds.password,
        }));
        let resp = self
            .send_raw(Method::POST, &sessions, &body, None, None)
            .await?;
        if resp.status == 401 || resp.status == 403 {
            return Err(error::from_status(
                "POST",
                &sessions,
                resp.status,
                &resp.body,
            ));
        }
        let token = resp
            .header("x-auth-token")
            .filter(|t| !t.is_empty())
            .and_then(|t| HeaderValue::from_str(t).ok());
        match (resp.is_success(), token) {
            (true, Some(mut token)) => {
                token.set_sensitive(true);
                let location = resp.header("location").map(str::to_string).or_else(|| {
                    let v: Value = serde_json::from_slice(&resp.body).ok()?;
                    v.get("@odata.id")?.as_str().map(str::to_string)
                });
                tracing::debug!(session = ?location, "redfish session created");
                Ok(Auth::Session { token, location })
            }
            _ if self.inner.config.auth == AuthMode::Session => Err(error::from_status(
                "POST",
                &sessions,
                resp.status,
                &resp.body,
            )),
            _ => {
                tracing::debug!(status = resp.status, "session creation refused: basic auth");
                Ok(Auth::Basic)
            }
        }
    }

    /// Send with authentication; re-login once on 401 with a session. Any status is `Ok`
    /// except 401/403 after re-login, which is `Authentication`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: &Body,
        if_match: Option<&str>,
    ) -> Result<Response> {
        let (header, generation) = self.ensure_auth().await?;
        let resp = self
            .send_raw(method.clone(), path, body, if_match, Some(header))
            .await?;
        if resp.status != 401 {
            return Ok(resp);
        }
        // 401: session expired or deleted behind our back. Log in again, once.
        let header = {
            let mut st = self.inner.auth.lock().await;
            let is_session = matches!(st.auth, Auth::Session { .. });
            if !is_session {
                return Err(error::from_status(
                    method.as_str(),
                    path,
                    resp.status,
                    &resp.body,
                ));
            }
            if st.generation == generation {
                tracing::info!("redfish session rejected (401): logging in again");
                st.auth = self.login().await?;
                st.generation += 1;
            }
            self.header_of(&st.auth).expect("logged in")
        };
        let resp = self
            .send_raw(method.clone(), path, body, if_match, Some(header))
            .await?;
        if resp.status == 401 {
            return Err(error::from_status(
                method.as_str(),
                path,
                resp.status,
                &resp.body,
            ));
        }
        Ok(resp)
    }

    /// Send and map error statuses to errors; follow a 202 task monitor to its end.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: &Body,
        if_match: Option<&str>,
    ) -> Result<Response> {
        let resp = self.send(method.clone(), path, body, if_match).await?;
        self.finish(method.as_str(), path, resp).await
    }

    pub(crate) async fn finish(
        &self,
        method: &str,
        path: &str,
        resp: Response,
    ) -> Result<Response> {
        if resp.status == 202 && method != "GET" {
            if let Some(loc) = resp.header("location").map(str::to_string) {
                return self.wait_task(&loc).await;
            }
            return Ok(resp);
        }
        if resp.is_success() {
            Ok(resp)
        } else {
            Err(error::from_status(method, path, resp.status, &resp.body))
        }
    }

    /// GET a resource and parse it leniently.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Fetched<T>> {
        let resp = self.request(Method::GET, path, &Body::None, None).await?;
        let value = resp.json(path)?;
        Ok(Fetched {
            etag: resp.etag(),
            value,
        })
    }

    /// POST (an action); 202 + Location is followed as a task monitor.
    pub async fn post(&self, path: &str, body: &Body) -> Result<Response> {
        self.request(Method::POST, path, body, None).await
    }

    /// PATCH with `If-Match` when an ETag is known; on 412/428 refetch the ETag and retry once.
    pub async fn patch(&self, path: &str, body: &Value, etag: Option<&str>) -> Result<Response> {
        let b = Body::Json(body.clone());
        let resp = self.send(Method::PATCH, path, &b, etag).await?;
        if resp.status == 412 || resp.status == 428 {
            tracing::debug!(
                status = resp.status,
                path,
                "stale or missing ETag: refetching"
            );
            let fresh = self.request(Method::GET, path, &Body::None, None).await?;
            let tag = fresh.etag();
            let resp = self.send(Method::PATCH, path, &b, tag.as_deref()).await?;
            return self.finish("PATCH", path, resp).await;
        }
        self.finish("PATCH", path, resp).await
    }

    pub async fn delete(&self, path: &str) -> Result<Response> {
        self.request(Method::DELETE, path, &Body::None, None).await
    }

    /// Poll a task monitor until the task ends.
    pub async fn wait_task(&self, monitor: &str) -> Result<Response> {
        let deadline = tokio::time::Instant::now() + self.inner.config.task_timeout;
        loop {
            let resp = self.send(Method::GET, monitor, &Body::None, None).await?;
            let task: Option<Task> = serde_json::from_slice(&resp.body).ok();
            let running = resp.status == 202
                || (resp.is_success()
                    && task
                        .as_ref()
                        .is_some_and(|t| t.task_state.is_some() && !t.is_finished()));
            if !running {
                if !resp.is_success() {
                    return Err(error::from_status("GET", monitor, resp.status, &resp.body));
                }
                if let Some(t) = &task
                    && t.is_failed()
                {
                    let msgs: Vec<String> = t
                        .messages
                        .iter()
                        .flatten()
                        .filter_map(|m| m.message.clone().or_else(|| m.message_id.clone()))
                        .collect();
                    return Err(Error::Protocol(format!(
                        "task {monitor} ended {}: {}",
                        t.task_state.as_deref().unwrap_or("?"),
                        msgs.join("; ")
                    )));
                }
                return Ok(resp);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::BmcBusy(format!(
                    "task {monitor} still running after {:?}",
                    self.inner.config.task_timeout
                )));
            }
            let wait = resp
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(self.inner.config.task_poll_interval)
                .min(self.inner.config.retry_after_max);
            tokio::time::sleep(wait).await;
        }
    }

    /// Delete the session (if any). The client logs in again if used afterwards.
    pub async fn logout(&self) -> Result<()> {
        let auth = {
            let mut st = self.inner.auth.lock().await;
            std::mem::replace(&mut st.auth, Auth::NotYet)
        };
        if let Auth::Session {
            token,
            location: Some(loc),
        } = auth
        {
            let resp = self
                .send_raw(Method::DELETE, &loc, &Body::None, None, Some(token))
                .await?;
            if !resp.is_success() && resp.status != 404 {
                return Err(error::from_status("DELETE", &loc, resp.status, &resp.body));
            }
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: delete a session nobody logged out of.
        let Ok(mut st) = self.auth.try_lock() else {
            return;
        };
        let Auth::Session {
            token,
            location: Some(loc),
        } = std::mem::replace(&mut st.auth, Auth::NotYet)
        else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(url) = self.base.join(&loc) else {
            return;
        };
        let http = self.http.clone();
        let stats = self.stats.clone();
        handle.spawn(async move {
            stats.count(&Method::DELETE);
            let _ = http
                .delete(url)
                .header("x-auth-token", token)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
        });
    }
}

fn build_stack(
    config: &ClientConfig,
    http: reqwest::Client,
    stats: Arc<RequestStats>,
) -> HttpService {
    let recorder = config.recorder.clone();
    let stats_for_policy = stats.clone();
    let counting = tower::service_fn(move |req: reqwest::Request| {
        let http = http.clone();
        let stats = stats.clone();
        let recorder = recorder.clone();
        async move {
            stats.count(req.method());
            let method = req.method().to_string();
            let path = req.url().path().to_string();
            let result = http.execute(req).await;
            if let Some(rec) = &recorder {
                rec(&RequestRecord {
                    method,
                    path,
                    status: result.as_ref().ok().map(|r| r.status().as_u16()),
                });
            }
            result
        }
    });
    let policy = RetryPolicy {
        stats: stats_for_policy,
        attempt: 0,
        max_retries: config.max_retries,
        base: config.backoff_base,
        max: config.backoff_max,
        retry_after_max: config.retry_after_max,
    };
    let svc = ServiceBuilder::new()
        .retry(policy)
        .concurrency_limit(config.max_concurrency.max(1))
        .timeout(config.request_timeout)
        .service(counting);
    BoxCloneService::new(svc)
}

#[derive(Clone)]
struct RetryPolicy {
    stats: Arc<RequestStats>,
    attempt: u32,
    max_retries: u32,
    base: Duration,
    max: Duration,
    retry_after_max: Duration,
}

impl RetryPolicy {
    fn backoff(&self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        // Jitter: a random point in [exp/2, exp].
        let half = exp / 2;
        let jitter_ms = if half.as_millis() == 0 {
            0
        } else {
            random_u64() % (half.as_millis() as u64 + 1)
        };
        half + Duration::from_millis(jitter_ms)
    }
}

impl tower::retry::Policy<reqwest::Request, reqwest::Response, BoxError> for RetryPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        req: &mut reqwest::Request,
        result: &mut std::result::Result<reqwest::Response, BoxError>,
    ) -> Option<Self::Future> {
        if self.attempt >= self.max_retries {
            return None;
        }
        // POST (actions, session creation) is retried only when the BMC surely did not act on it.
        let idempotent = req.method() != Method::POST;
        let delay = match result {
            Ok(resp) => {
                let s = resp.status().as_u16();
                if s == 503 || s == 429 {
                    retry_after(resp.headers())
                        .map(|d| d.min(self.retry_after_max))
                        .unwrap_or_else(|| self.backoff())
                } else if idempotent && (500..600).contains(&s) && s != 501 {
                    self.backoff()
                } else {
                    return None;
                }
            }
            Err(e) => {
                let tls = error::from_transport(e.as_ref(), "");
                if matches!(tls, Error::TlsVerification(_)) {
                    return None;
                }
                let connect = find_reqwest(e.as_ref()).is_some_and(|r| r.is_connect());
                let timeout = e.is::<tower::timeout::error::Elapsed>()
                    || find_reqwest(e.as_ref()).is_some_and(|r| r.is_timeout());
                if connect || (idempotent && timeout) {
                    self.backoff()
                } else {
                    return None;
                }
            }
        };
        self.attempt += 1;
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            attempt = self.attempt,
            ?delay,
            path = req.url().path(),
            "retrying redfish request"
        );
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, req: &reqwest::Request) -> Option<reqwest::Request> {
        req.try_clone()
    }
}

fn find_reqwest<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a reqwest::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<reqwest::Error>() {
            return Some(r);
        }
        cur = c.source();
    }
    None
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("retry-after")?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials::new("admin", "s3cr3t-pw");
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t-pw"), "{d}");
        assert!(d.contains("admin"));
        let cfg = ClientConfig::new("bmc.example", c.clone());
        assert!(!format!("{cfg:?}").contains("s3cr3t-pw"));
        assert!(!format!("{:?}", c.basic_header()).contains("YWRtaW46"));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b"admin:password"), "YWRtaW46cGFzc3dvcmQ=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn addresses() {
        assert_eq!(base_url("10.0.0.1").unwrap().as_str(), "https://10.0.0.1/");
        assert_eq!(
            base_url("http://127.0.0.1:8000/redfish/v1")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000/"
        );
        assert_eq!(
            base_url("redfish://bmc:8443").unwrap().as_str(),
            "https://bmc:8443/"
        );
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("").is_err());
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = RetryPolicy {
            stats: Arc::default(),
            attempt: 3,
            max_retries: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
            retry_after_max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d = p.backoff();
            assert!(
                d >= Duration::from_millis(250) && d <= Duration::from_millis(500),
                "{d:?}"
            );
        }
    }
}

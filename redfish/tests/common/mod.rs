//! A small Redfish test server: serves a mockup tree read-only, records every request, and lets a
//! test script faults with a hook. Actions and PATCH are answered without changing state.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use beskar7_redfish::{Client, ClientConfig, Credentials};
use serde_json::Value;

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A scripted answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            headers: vec![],
            body: body.into(),
        }
    }
    pub fn json(status: u16, v: &Value) -> Self {
        Reply::new(status, v.to_string())
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// Called for each request before the mockup; `Some` overrides the answer.
pub type Hook = Arc<dyn Fn(&Recorded, &Server) -> Option<Reply> + Send + Sync>;

#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    pub root: Option<PathBuf>,
    /// Files sit at the root (DMTF public mockups) rather than under `redfish/v1/`.
    pub flat: bool,
    pub log: Arc<Mutex<Vec<Recorded>>>,
    sessions: Arc<AtomicUsize>,
}

pub fn mockups_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/redfish-mockups")
}

impl Server {
    /// Serve mockup `name` (a folder of `../shared/redfish-mockups`).
    pub async fn mockup(name: &str, hook: Option<Hook>) -> Server {
        let dir = mockups_dir().join(name);
        assert!(dir.is_dir(), "mockup {} missing", dir.display());
        let flat = !dir.join("redfish").is_dir();
        Self::start(Some(dir), flat, hook).await
    }

    pub async fn start(root: Option<PathBuf>, flat: bool, hook: Option<Hook>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server {
            addr,
            root,
            flat,
            log: Arc::new(Mutex::new(Vec::new())),
            sessions: Arc::new(AtomicUsize::new(0)),
        };
        let s2 = server.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = s2.clone();
                let hook = hook.clone();
                async move { s.handle(method, uri, headers, body, hook) }
            },
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client with fast retries and task polling.
    pub fn client(&self) -> Client {
        Client::new(self.config()).unwrap()
    }

    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.url(), Credentials::new("root", "hunter2-secret"));
        c.backoff_base = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(50);
        c.task_poll_interval = Duration::from_millis(20);
        c.request_timeout = Duration::from_secs(10);
        c
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Requests other than GET.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// The mockup's JSON for a resource path, if any.
    pub fn resource(&self, path: &str) -> Option<Value> {
        let root = self.root.as_ref()?;
        let rel = path.trim_matches('/');
        let rel = if self.flat {
            rel.strip_prefix("redfish/v1")?.trim_start_matches('/')
        } else {
            rel
        };
        if rel.split('/').any(|seg| seg == "..") {
            return None;
        }
        let file = root.join(rel).join("index.json");
        let text = std::fs::read_to_string(file).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn handle(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        hook: Option<Hook>,
    ) -> Response<Body> {
        let rec = Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers,
            body: body.to_vec(),
        };
        self.log.lock().unwrap().push(rec.clone());
        let reply = hook
            .and_then(|h| h(&rec, self))
            .unwrap_or_else(|| self.default_reply(&rec));
        let mut b = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
        for (k, v) in &reply.headers {
            b = b.header(k, v);
        }
        if !reply.body.is_empty()
            && !reply
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            b = b.header("content-type", "application/json");
        }
        b.body(Body::from(reply.body)).unwrap()
    }

    /// Next session token (`tok-1`, `tok-2`, ...).
    pub fn new_session(&self) -> Reply {
        let n = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::json(
            201,
            &serde_json::json!({"@odata.id": format!("/redfish/v1/SessionService/Sessions/s{n}"), "Id": format!("s{n}")}),
        )
        .header("X-Auth-Token", &format!("tok-{n}"))
        .header("Location", &format!("/redfish/v1/SessionService/Sessions/s{n}"))
    }

    pub fn sessions_created(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    fn default_reply(&self, rec: &Recorded) -> Reply {
        let is_root = rec.path.trim_end_matches('/') == "/redfish/v1";
        let is_login = rec.method == "POST"
            && rec
                .path
                .trim_end_matches('/')
                .ends_with("SessionService/Sessions");
        let authed = rec.header("x-auth-token").is_some() || rec.header("authorization").is_some();
        if !is_root && !is_login && !authed {
            return Reply::json(
                401,
                &serde_json::json!({"error": {"code": "Base.1.0.NoValidSession"}}),
            );
        }
        match rec.method.as_str() {
            "POST"
                if rec
                    .path
                    .trim_end_matches('/')
                    .ends_with("SessionService/Sessions") =>
            {
                self.new_session()
            }
            "GET" => match self.resource(&rec.path) {
                Some(v) => Reply::json(200, &v),
                None => Reply::json(
                    404,
                    &serde_json::json!({"error": {"code": "Base.1.0.ResourceMissingAtURI", "message": "not found"}}),
                ),
            },
            "POST" | "DELETE" => Reply::new(204, ""),
            "PATCH" => Reply::new(204, ""),
            _ => Reply::new(405, ""),
        }
    }
}

/// Paths, for assertions.
pub fn paths(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

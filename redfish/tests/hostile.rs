//! A hostile BMC: huge bodies, endless and trickling streams, deeply nested JSON, wrong types,
//! truncated bodies. The client answers each with a clear `Error` (or lenient success), never
//! panics, and its memory stays bounded by `ClientConfig::max_body_bytes`.
//!
//! The BMC here is a raw TCP server (not axum) so it can lie about lengths, stream without end
//! and close mid-body; it generates bodies on the fly so the test process holds none of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use beskar7_redfish::{AuthMode, Client, ClientConfig, Credentials, DEFAULT_MAX_BODY_BYTES, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROOT: &str = r#"{"@odata.id":"/redfish/v1/","Id":"RootService","RedfishVersion":"1.6.0","Systems":{"@odata.id":"/redfish/v1/Systems"},"Managers":{"@odata.id":"/redfish/v1/Managers"}}"#;
const SYSTEMS: &str = r#"{"@odata.id":"/redfish/v1/Systems","Members":[{"@odata.id":"/redfish/v1/Systems/1"}],"Members@odata.count":1}"#;
/// Far beyond the default cap: a client without one would hold all of it (twice).
const HUGE: u64 = 96 * 1024 * 1024;
/// Never write more than this on one connection, whatever the client does.
const WRITE_BOUND: u64 = 1024 * 1024 * 1024;
const PASSWORD: &str = "hostile-pw-4d2c";
/// The tests of this file run one at a time: the memory bound is checked on the process's peak RSS.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the BMC answers to one request.
#[derive(Clone)]
enum Behaviour {
    /// A normal answer with Content-Length.
    Json(u16, String),
    /// `len` bytes of a JSON string, Content-Length announced.
    HugeWithLength { status: u16, len: u64 },
    /// `len` bytes of a JSON string, chunked (no length known in advance).
    HugeChunked { len: u64 },
    /// Chunks until the client hangs up (or `WRITE_BOUND`).
    EndlessChunked,
    /// One byte every `every`, chunked, never finished (bounded to `WRITE_BOUND` anyway).
    Trickle { every: Duration },
    /// Announces `declared` bytes, sends `body`, closes.
    Truncated { declared: usize, body: String },
    /// Raw bytes as the body, with a correct Content-Length.
    Raw(u16, Vec<u8>),
}

type Script = Arc<dyn Fn(&str, &str) -> Behaviour + Send + Sync>;

struct Bmc {
    url: String,
    /// Bytes the server wrote in bodies, all connections together.
    written: Arc<AtomicU64>,
}

impl Bmc {
    /// Serves the minimal root at `/redfish/v1/` and the Systems collection unless `script` says
    /// otherwise (it is asked first).
    async fn start(
        script: impl Fn(&str, &str) -> Option<Behaviour> + Send + Sync + 'static,
    ) -> Bmc {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let written = Arc::new(AtomicU64::new(0));
        let script: Script = Arc::new(move |m: &str, p: &str| {
            if let Some(b) = script(m, p) {
                return b;
            }
            match p.trim_end_matches('/') {
                "/redfish/v1" => Behaviour::Json(200, ROOT.into()),
                "/redfish/v1/Systems" => Behaviour::Json(200, SYSTEMS.into()),
                _ => Behaviour::Json(404, r#"{"error":{"code":"Base.1.0.ResourceMissingAtURI","message":"no such resource"}}"#.into()),
            }
        });
        let w = written.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let script = script.clone();
                let w = w.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, script, w).await;
                });
            }
        });
        Bmc { url, written }
    }

    fn client(&self) -> Client {
        Client::new(self.config()).unwrap()
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.url.clone(), Credentials::new("root", PASSWORD));
        c.auth = AuthMode::Basic;
        c.max_retries = 1;
        c.backoff_base = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(20);
        c.request_timeout = Duration::from_secs(30);
        c
    }
}

async fn serve(
    mut sock: TcpStream,
    script: Script,
    written: Arc<AtomicU64>,
) -> std::io::Result<()> {
    // One request per connection: read the head (our client sends no body on GET).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let behaviour = script(&method, &path);
    let reason = |s: u16| if s < 400 { "OK" } else { "Error" };
    match behaviour {
        Behaviour::Json(status, body) => {
            let b = body.into_bytes();
            write_whole(&mut sock, status, reason(status), &b, &written).await?;
        }
        Behaviour::Raw(status, b) => {
            write_whole(&mut sock, status, reason(status), &b, &written).await?;
        }
        Behaviour::HugeWithLength { status, len } => {
            let h = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n",
                reason(status)
            );
            sock.write_all(h.as_bytes()).await?;
            stream_string(&mut sock, len, false, &written).await?;
        }
        Behaviour::HugeChunked { len } => {
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").await?;
            stream_string(&mut sock, len, true, &written).await?;
            sock.write_all(b"0\r\n\r\n").await?;
        }
        Behaviour::EndlessChunked => {
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").await?;
            stream_string(&mut sock, WRITE_BOUND, true, &written).await?;
        }
        Behaviour::Trickle { every } => {
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\n{\r\n").await?;
            for _ in 0..WRITE_BOUND {
                tokio::time::sleep(every).await;
                sock.write_all(b"1\r\n \r\n").await?;
                written.fetch_add(1, Ordering::Relaxed);
            }
        }
        Behaviour::Truncated { declared, body } => {
            let h = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\nconnection: close\r\n\r\n"
            );
            sock.write_all(h.as_bytes()).await?;
            sock.write_all(body.as_bytes()).await?;
            sock.flush().await?;
            // Close mid-body.
        }
    }
    sock.shutdown().await
}

async fn write_whole(
    sock: &mut TcpStream,
    status: u16,
    reason: &str,
    body: &[u8],
    written: &AtomicU64,
) -> std::io::Result<()> {
    let h = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(h.as_bytes()).await?;
    sock.write_all(body).await?;
    written.fetch_add(body.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// `{"Id":"xxxx…"}` of exactly `len` bytes (len >= 10), generated piece by piece.
async fn stream_string(
    sock: &mut TcpStream,
    len: u64,
    chunked: bool,
    written: &AtomicU64,
) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    let filler = vec![b'x'; PIECE];
    let mut left = len;
    let opening = b"{\"Id\":\"".to_vec();
    let closing = b"\"}".to_vec();
    let mut pieces_left = true;
    let mut first = true;
    while pieces_left {
        let mut piece = Vec::with_capacity(PIECE + 16);
        if first {
            piece.extend_from_slice(&opening);
            first = false;
        }
        let room =
            (PIECE as u64).min(left.saturating_sub(piece.len() as u64 + closing.len() as u64));
        piece.extend_from_slice(&filler[..room as usize]);
        if left <= piece.len() as u64 + closing.len() as u64 {
            piece.extend_from_slice(&closing);
            pieces_left = false;
        }
        let n = piece.len() as u64;
        written.fetch_add(n, Ordering::Relaxed);
        left = left.saturating_sub(n);
        if chunked {
            sock.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            sock.write_all(&piece).await?;
            sock.write_all(b"\r\n").await?;
        } else {
            sock.write_all(&piece).await?;
        }
    }
    Ok(())
}

/// Reset this process's peak RSS to its current RSS (`/proc/self/clear_refs`, Linux >= 4.0).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Peak resident set of this test process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// The memory bound every test here checks: the cap, a copy of it, and the process's own
/// baseline (debug test binary, tokio, reqwest). A client reading `HUGE` whole exceeds it.
const RSS_BOUND: u64 = 2 * DEFAULT_MAX_BODY_BYTES as u64 + 32 * 1024 * 1024;
const _: () = assert!(HUGE > RSS_BOUND, "the hostile body must exceed the bound");

fn assert_memory_bounded(what: &str) {
    let peak = peak_rss();
    println!("{what}: peak RSS {} MiB", peak / (1024 * 1024));
    assert!(
        peak < RSS_BOUND,
        "{what}: peak RSS {peak} bytes exceeds {RSS_BOUND}: the body was not capped"
    );
}

fn assert_too_large(e: &Error, path: &str) {
    match e {
        Error::ResponseTooLarge { what, limit } => {
            assert_eq!(*limit, DEFAULT_MAX_BODY_BYTES);
            assert!(what.contains(path), "{what}");
        }
        other => panic!("expected ResponseTooLarge for {path}, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains(&DEFAULT_MAX_BODY_BYTES.to_string()),
        "the message names the limit: {text}"
    );
    assert_eq!(e.reason(), "RedfishResponseTooLarge");
    assert!(!text.contains(PASSWORD));
}

fn nested(depth: usize) -> String {
    let mut s = String::with_capacity(depth * 2);
    s.extend(std::iter::repeat_n('[', depth));
    s.extend(std::iter::repeat_n(']', depth));
    s
}

/// The huge cases run one after the other, and alone (`SERIAL`), so that the peak RSS of each is
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_are_cut_at_the_limit_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    // Content-Length beyond the limit: refused from the header, before reading.
    reset_peak_rss();
    let bmc = Bmc::start(|_, p| {
        (p == "/redfish/v1/Systems").then_some(Behaviour::HugeWithLength {
            status: 200,
            len: HUGE,
        })
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    assert_too_large(&e, "/redfish/v1/Systems");
    assert_memory_bounded("content-length");
    let w = bmc.written.load(Ordering::Relaxed);
    assert!(w < HUGE, "server wrote {w} bytes");

    // Chunked, no length known: cut while reading.
    reset_peak_rss();
    let bmc = Bmc::start(|_, p| {
        (p == "/redfish/v1/Systems").then_some(Behaviour::HugeChunked { len: HUGE })
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    assert_too_large(&e, "/redfish/v1/Systems");
    assert_memory_bounded("chunked");

    // An error status with a huge body (the error path reads the body for its message).
    reset_peak_rss();
    let bmc = Bmc::start(|_, p| {
        (p == "/redfish/v1/Systems").then_some(Behaviour::HugeWithLength {
            status: 500,
            len: HUGE,
        })
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    assert_too_large(&e, "/redfish/v1/Systems");
    assert_memory_bounded("error status");

    // A stream without end on the very first request (login).
    reset_peak_rss();
    let bmc = Bmc::start(|_, p| {
        (p.trim_end_matches('/') == "/redfish/v1").then_some(Behaviour::EndlessChunked)
    })
    .await;
    let e = bmc.client().service_root().await.unwrap_err();
    assert_too_large(&e, "/redfish/v1/");
    assert_memory_bounded("endless");
    let w = bmc.written.load(Ordering::Relaxed);
    assert!(
        w < WRITE_BOUND,
        "the client stopped reading: server wrote {w} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_limit_is_honoured_and_a_body_at_the_limit_is_read() {
    let _serial = SERIAL.lock().await;
    let len = 4096u64;
    let bmc = Bmc::start(move |_, p| {
        (p == "/redfish/v1/Systems/1").then_some(Behaviour::HugeChunked { len })
    })
    .await;
    let mut cfg = bmc.config();
    cfg.max_body_bytes = len as usize;
    let c = Client::new(cfg.clone()).unwrap();
    // Exactly at the limit: read and parsed (a system with a long Id).
    let r = c
        .get::<serde_json::Value>("/redfish/v1/Systems/1")
        .await
        .unwrap();
    assert_eq!(r.value["Id"].as_str().unwrap().len(), len as usize - 9);
    // One byte under: refused, naming the limit.
    cfg.max_body_bytes = len as usize - 1;
    let c = Client::new(cfg).unwrap();
    let e = c
        .get::<serde_json::Value>("/redfish/v1/Systems/1")
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::ResponseTooLarge { limit, .. } if limit == len as usize - 1),
        "{e:?}"
    );
    assert!(e.to_string().contains("4095 bytes"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_body_times_out() {
    let _serial = SERIAL.lock().await;
    let bmc = Bmc::start(|_, p| {
        (p.trim_end_matches('/') == "/redfish/v1").then_some(Behaviour::Trickle {
            every: Duration::from_millis(100),
        })
    })
    .await;
    let mut cfg = bmc.config();
    cfg.request_timeout = Duration::from_secs(2);
    cfg.max_retries = 0;
    let e = Client::new(cfg).unwrap().service_root().await.unwrap_err();
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(e.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_a_protocol_error() {
    let _serial = SERIAL.lock().await;
    let deep = nested(100_000);
    // As a whole resource, as an unknown (ignored) field, as a typed field, as a lenient field.
    let bodies = [
        deep.clone(),
        format!(r#"{{"@odata.id":"/redfish/v1/Systems","Oem":{deep},"Members":[]}}"#),
        format!(r#"{{"@odata.id":"/redfish/v1/Systems","Members":{deep}}}"#),
        format!(r#"{{"@odata.id":{deep},"Members":[]}}"#),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let b = body.clone();
        let bmc = Bmc::start(move |_, p| {
            (p == "/redfish/v1/Systems").then(|| Behaviour::Json(200, b.clone()))
        })
        .await;
        let e = bmc.client().discover(None).await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "body {i}: {e:?}");
        let text = e.to_string();
        // A top-level array is refused at its first byte (a Collection is an object).
        let why = if i == 0 {
            "invalid type"
        } else {
            "recursion limit"
        };
        assert!(text.contains(why), "body {i}: {text}");
        assert!(text.contains("/redfish/v1/Systems"), "body {i}: {text}");
        // Errors stay short whatever the body.
        assert!(text.len() < 1000, "body {i}: {} bytes of error", text.len());
    }
    // Also through the error-status path (the error body is parsed for its message).
    let bmc = Bmc::start(move |_, p| {
        (p == "/redfish/v1/Systems").then(|| Behaviour::Json(500, nested(100_000)))
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(e.to_string().len() < 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_are_clear_errors_or_lenient() {
    let _serial = SERIAL.lock().await;
    // Systems collections of the wrong shape: no usable member is "not found", not a panic.
    let shapes = [
        r#"{"Members":"nope"}"#,
        r#"{"Members":[1,null,true,{"@odata.id":5},{"@odata.id":""}]}"#,
        r#"{"Members":{"@odata.id":"/redfish/v1/Systems/1"}}"#,
        r#"{"Members":[],"Members@odata.count":"many"}"#,
        r#"[]"#,
        r#"42"#,
        r#""a string""#,
        r#"null"#,
    ];
    for shape in shapes {
        let s = shape.to_string();
        let bmc = Bmc::start(move |_, p| {
            (p == "/redfish/v1/Systems").then(|| Behaviour::Json(200, s.clone()))
        })
        .await;
        let e = bmc.client().discover(None).await.unwrap_err();
        assert!(
            matches!(e, Error::NotFound(_) | Error::Protocol(_)),
            "{shape}: {e:?}"
        );
        assert!(!e.to_string().is_empty());
    }
    // A system whose every field has the wrong type: discovery still answers, leniently.
    let system = r#"{"@odata.id":"/redfish/v1/Systems/1","Id":7,"PowerState":7,"Boot":[],"Actions":"none","Links":5,"VirtualMedia":true,"Manufacturer":{"x":1}}"#;
    let bmc = Bmc::start(move |_, p| {
        (p == "/redfish/v1/Systems/1").then(|| Behaviour::Json(200, system.into()))
    })
    .await;
    let c = bmc.client();
    match c.discover(None).await {
        Ok(d) => {
            assert_eq!(d.system_path, "/redfish/v1/Systems/1");
            assert!(
                d.boot_slot().is_none(),
                "no virtual media in a broken system"
            );
            let p = c.power_state(&d).await.unwrap();
            assert_eq!(p, None, "PowerState of the wrong type reads as unknown");
        }
        Err(e) => assert!(
            matches!(e, Error::NotSupported(_) | Error::NotFound(_)),
            "{e:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_garbage_bodies() {
    let _serial = SERIAL.lock().await;
    // Content-Length promises more than comes: a transport error, retried, then reported.
    let bmc = Bmc::start(|_, p| {
        (p == "/redfish/v1/Systems").then(|| Behaviour::Truncated {
            declared: 10_000,
            body: SYSTEMS[..40].to_string(),
        })
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    assert!(
        matches!(e, Error::Unreachable(_) | Error::Protocol(_)),
        "{e:?}"
    );
    // Complete by length, but the JSON stops half way.
    let bmc = Bmc::start(|_, p| {
        (p == "/redfish/v1/Systems").then(|| Behaviour::Json(200, SYSTEMS[..40].to_string()))
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("invalid JSON"), "{e}");
    // Binary garbage, HTML, an empty body.
    let bodies: [Vec<u8>; 3] = [
        (0..=255u8).cycle().take(5000).collect(),
        b"<html><body>Internal error</body></html>".to_vec(),
        Vec::new(),
    ];
    for body in bodies {
        let b = body.clone();
        let bmc = Bmc::start(move |_, p| {
            (p == "/redfish/v1/Systems").then(|| Behaviour::Raw(200, b.clone()))
        })
        .await;
        let e = bmc.client().discover(None).await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        assert!(e.to_string().len() < 1000);
    }
    // Binary garbage as an error body: the message is short and printable.
    let bmc = Bmc::start(|_, p| {
        (p == "/redfish/v1/Systems")
            .then(|| Behaviour::Raw(400, (0..=255u8).cycle().take(100_000).collect()))
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.len() < 1000, "{}", text.len());
    assert!(!text.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_service_root_fails_login_clearly() {
    let _serial = SERIAL.lock().await;
    for b in [
        Behaviour::Json(200, nested(100_000)),
        Behaviour::Json(200, "{\"Systems\":".into()),
        Behaviour::Raw(200, vec![0xff, 0xfe, 0x00, 0x01]),
    ] {
        let bmc =
            Bmc::start(move |_, p| (p.trim_end_matches('/') == "/redfish/v1").then(|| b.clone()))
                .await;
        let e = bmc.client().discover(None).await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        assert!(e.to_string().contains("service root"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_bmc_messages_and_member_lists_give_short_errors() {
    let _serial = SERIAL.lock().await;
    // An error with 50k extended messages (~3 MB, under the body cap).
    let msgs: Vec<String> = (0..50_000)
        .map(|i| format!(r#"{{"MessageId":"Base.1.0.E{i}","Message":"message {i}"}}"#))
        .collect();
    let body = format!(
        r#"{{"error":{{"code":"Base.1.0.GeneralError","@Message.ExtendedInfo":[{}]}}}}"#,
        msgs.join(",")
    );
    let bmc = Bmc::start(move |_, p| {
        (p == "/redfish/v1/Systems").then(|| Behaviour::Json(400, body.clone()))
    })
    .await;
    let e = bmc.client().discover(None).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(text.contains("message 0"), "{text:.300}");
    assert!(text.len() < 1000, "{} bytes of error", text.len());

    // A Systems collection of 100k members, the wanted one not among them; and no id given.
    let members: Vec<String> = (0..100_000)
        .map(|i| format!(r#"{{"@odata.id":"/redfish/v1/Systems/{i}"}}"#))
        .collect();
    let systems = format!(r#"{{"Members":[{}]}}"#, members.join(","));
    let bmc = Bmc::start(move |_, p| {
        (p == "/redfish/v1/Systems").then(|| Behaviour::Json(200, systems.clone()))
    })
    .await;
    let e = bmc.client().discover(Some("nope")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    assert!(e.to_string().contains("and 99992 more"), "{e}");
    assert!(e.to_string().len() < 1000, "{} bytes", e.to_string().len());
    let e = bmc.client().discover(None).await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert!(e.to_string().contains("100000 systems"), "{e}");
    assert!(e.to_string().len() < 1000, "{} bytes", e.to_string().len());
}

//! The artifact server over real HTTP: Range/HEAD semantics, tokens, traversal, checksums, cache bounds.

mod artifacts_support;

use std::sync::atomic::Ordering;

use artifacts_support::*;
use beskar7_boot::{KernelArg, PatchedIso, VolumeFormat};
use beskar7_controllers::artifacts::{
    ArtifactError, ArtifactSet, BootIsoSource, ConfigDocument, ConfigVolume,
};
use bytes::Bytes;

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

fn full_set(url: String, sha256: Option<String>) -> ArtifactSet {
    ArtifactSet {
        boot_iso: Some(BootIsoSource {
            add_uefi_path: false,
            url,
            sha256,
            kernel_args: vec![
                KernelArg::ServedConfigUrl {
                    prefix: "config_url=".into(),
                },
                KernelArg::Literal("console=ttyS0".into()),
            ],
        }),
        config_volume: Some(ConfigVolume {
            format: VolumeFormat::Fat,
            data: (0..5000u32).map(|i| i as u8).collect::<Vec<_>>().into(),
        }),
        config_document: Some(ConfigDocument {
            content_type: "text/cloud-config".into(),
            data: Bytes::from_static(b"#cloud-config\ninstall:\n  auto: true\n"),
        }),
    }
}

async fn setup() -> (Artifacts, SourceServer, TempDir, Vec<u8>) {
    let src_dir = TempDir::new("src");
    let iso = test_iso();
    std::fs::write(src_dir.path().join("live.iso"), &iso).unwrap();
    let source = SourceServer::start(src_dir.path().to_path_buf()).await;
    let art = Artifacts::start(1 << 30).await;
    (art, source, src_dir, iso)
}

#[tokio::test]
async fn range_and_head_semantics() {
    let (art, source, _d, iso) = setup().await;
    let urls = art
        .store
        .register(
            "default/m0",
            full_set(source.url("live.iso"), Some(sha256_hex(&iso))),
        )
        .unwrap();
    let boot = urls.boot_iso.clone().unwrap();
    let config_url = urls.config_document.clone().unwrap();
    assert_eq!(
        urls.config_volume.as_deref(),
        Some(format!("http://{}/{}/config.img", art.addr, urls.token).as_str())
    );
    assert_eq!(boot, format!("http://{}/{}/boot.iso", art.addr, urls.token));
    assert!(urls.token.len() >= 32, "token has at least 128 bits");
    art.store.prepare("default/m0").await.unwrap();

    let args = vec![
        format!("config_url={config_url}"),
        "console=ttyS0".to_string(),
    ];
    let expected = {
        let p = PatchedIso::open(iso.clone(), &args).unwrap();
        let mut v = Vec::new();
        p.write_to(&mut v).unwrap();
        v
    };
    let len = expected.len() as u64;
    assert!(String::from_utf8_lossy(&expected).contains(&format!(
        "linux /boot/vmlinuz quiet config_url={config_url} console=ttyS0"
    )));

    let c = client();
    // HEAD: headers, no body
    let r = c.head(&boot).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert!(r.headers().contains_key("etag"));
    assert!(r.bytes().await.unwrap().is_empty());
    // HEAD with a range
    let r = c
        .head(&boot)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-length"], "100");
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-99/{len}").as_str()
    );

    // full GET
    let r = c.get(&boot).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(r.bytes().await.unwrap().as_ref(), expected.as_slice());

    // ranges
    let cases: Vec<(String, u64, u64)> = vec![
        ("bytes=0-99".into(), 0, 99),
        (format!("bytes={}-", len - 10), len - 10, len - 1),
        ("bytes=-2048".into(), len - 2048, len - 1),
        (format!("bytes=32768-{}", len + 1000), 32768, len - 1),
        ("bytes=40000-40000".into(), 40000, 40000),
    ];
    for (h, s, e) in cases {
        let r = c.get(&boot).header("range", &h).send().await.unwrap();
        assert_eq!(r.status(), 206, "{h}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {s}-{e}/{len}").as_str(),
            "{h}"
        );
        assert_eq!(
            r.headers()["content-length"],
            (e - s + 1).to_string().as_str(),
            "{h}"
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &expected[s as usize..=e as usize],
            "{h}"
        );
    }
    let mut x: u64 = 88172645463325252;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = x % len;
        let e = (s + (x >> 40) % 600_000).min(len - 1);
        let r = c
            .get(&boot)
            .header("range", format!("bytes={s}-{e}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &expected[s as usize..=e as usize]
        );
    }
    // unsatisfiable
    for h in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 5, len + 10),
        "bytes=-0".to_string(),
    ] {
        let r = c.get(&boot).header("range", &h).send().await.unwrap();
        assert_eq!(r.status(), 416, "{h}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{len}").as_str(),
            "{h}"
        );
    }
    // multiple ranges and malformed ranges get the whole image
    let r = c
        .get(&boot)
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len() as u64, len);
    // If-Range with a stale validator: whole image
    let r = c
        .get(&boot)
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&boot)
        .header("range", "bytes=0-9")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);

    // config volume and document
    let vol = urls.config_volume.unwrap();
    let r = c
        .get(&vol)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/5000");
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &(100..200u32).map(|i| i as u8).collect::<Vec<_>>()[..]
    );
    let r = c.head(&vol).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "5000");
    let r = c.get(&config_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/cloud-config");
    assert_eq!(
        r.text().await.unwrap(),
        "#cloud-config\ninstall:\n  auto: true\n"
    );
    // the other volume name is not served, nor other methods
    let r = c
        .get(art.url(&format!("/{}/config.iso", urls.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c.post(&boot).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // the source was downloaded once for all of this
    assert_eq!(source.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_and_revoked_tokens_are_404() {
    let (art, source, _d, _iso) = setup().await;
    let c = client();
    let urls = art
        .store
        .register("ns/a", full_set(source.url("live.iso"), None))
        .unwrap();
    art.store.prepare("ns/a").await.unwrap();
    for u in [
        urls.boot_iso.clone().unwrap(),
        urls.config_volume.clone().unwrap(),
        urls.config_document.clone().unwrap(),
    ] {
        assert_eq!(c.get(&u).send().await.unwrap().status(), 200, "{u}");
    }
    // re-registering keeps the token
    assert_eq!(
        art.store
            .register("ns/a", full_set(source.url("live.iso"), None))
            .unwrap()
            .token,
        urls.token
    );
    let other = art
        .store
        .register("ns/b", full_set(source.url("live.iso"), None))
        .unwrap();
    assert_ne!(other.token, urls.token);

    let mut wrong = urls.token.clone().into_bytes();
    wrong[5] = if wrong[5] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for path in [
        format!("/{wrong}/boot.iso"),
        format!("/{}/boot.iso", &urls.token[..31]),
        format!("/{}/boot.iso", urls.token.to_uppercase()),
        format!("/{}x/boot.iso", urls.token),
        "/boot.iso".to_string(),
        "/".to_string(),
        format!("/{}", urls.token),
        format!("/{}/", urls.token),
        format!("/{}/boot.iso/x", urls.token),
        format!("/{}/BOOT.ISO", urls.token),
    ] {
        let r = c.get(art.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let r = c.head(art.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "HEAD {path}");
    }

    assert!(art.store.revoke("ns/a"));
    assert!(!art.store.revoke("ns/a"));
    for u in [
        urls.boot_iso.unwrap(),
        urls.config_volume.unwrap(),
        urls.config_document.unwrap(),
    ] {
        assert_eq!(c.get(&u).send().await.unwrap().status(), 404, "{u}");
        assert_eq!(c.head(&u).send().await.unwrap().status(), 404, "{u}");
    }
    // the other machine is unaffected
    assert_eq!(
        c.get(other.config_document.unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // registering again gives a fresh token
    let again = art
        .store
        .register("ns/a", full_set(source.url("live.iso"), None))
        .unwrap();
    assert_ne!(again.token, urls.token);
}

#[tokio::test]
async fn traversal_attempts_are_refused() {
    let (art, source, _d, _iso) = setup().await;
    let urls = art
        .store
        .register("ns/t", full_set(source.url("live.iso"), None))
        .unwrap();
    let t = &urls.token;
    // a file the server could serve if a path reached the file system
    let cwd_secret = std::env::current_dir().unwrap().join("Cargo.toml");
    assert!(cwd_secret.is_file());
    for target in [
        "/../../../../etc/passwd".to_string(),
        "/%2e%2e/%2e%2e/etc/passwd".to_string(),
        format!("/{t}/../../../../etc/passwd"),
        format!("/{t}/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        format!("/{t}/..%2fCargo.toml"),
        format!("/{t}/Cargo.toml"),
        format!("/{t}/boot.iso%00"),
        format!("/{t}/./config"),
        "/etc/passwd".to_string(),
        format!("/{t}/{}", art.cache_dir.path().display()),
        format!("//{t}/config"),
        "/Cargo.toml".to_string(),
    ] {
        let (code, text) = raw_request(art.addr, &target).await;
        assert!(code == 404 || code == 400, "{target}: {code}\n{text}");
        assert!(
            !text.contains("root:") && !text.contains("[package]"),
            "{target} leaked a file: {text}"
        );
    }
    // the real one still works over the same raw path
    let (code, text) = raw_request(art.addr, &format!("/{t}/config")).await;
    assert_eq!(code, 200, "{text}");
}

#[tokio::test]
async fn checksum_mismatch_is_refused_with_a_clear_error() {
    let (art, source, _d, iso) = setup().await;
    let wrong = sha256_hex(b"something else");
    let urls = art
        .store
        .register(
            "ns/bad",
            full_set(source.url("live.iso"), Some(format!("sha256:{wrong}"))),
        )
        .unwrap();
    let err = art.store.prepare("ns/bad").await.unwrap_err();
    match &err {
        ArtifactError::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha256_hex(&iso));
        }
        e => panic!("expected a checksum mismatch, got {e}"),
    }
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    let r = client().get(urls.boot_iso.unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("sha256 mismatch") && body.contains(&wrong),
        "{body}"
    );
    assert!(
        !body.as_bytes().windows(5).any(|w| w == b"CD001"),
        "image bytes served"
    );
    // nothing was cached (no file, no entry); the error is remembered, not retried per request
    assert_eq!(art.store.cache().stats().entries, 0);
    assert_eq!(std::fs::read_dir(art.cache_dir.path()).unwrap().count(), 0);
    assert_eq!(source.requests.load(Ordering::SeqCst), 1);

    // malformed checksums are refused at registration
    let e = art
        .store
        .register(
            "ns/bad2",
            full_set(source.url("live.iso"), Some("md5:abc".into())),
        )
        .unwrap_err();
    assert!(matches!(e, ArtifactError::Invalid(_)), "{e}");
    // the right checksum works (uppercase hex accepted)
    art.store
        .register(
            "ns/good",
            full_set(
                source.url("live.iso"),
                Some(sha256_hex(&iso).to_uppercase()),
            ),
        )
        .unwrap();
    art.store.prepare("ns/good").await.unwrap();
    assert_eq!(art.store.cache().stats().entries, 1);
}

#[tokio::test]
async fn source_errors_and_bad_registrations() {
    let (art, source, _d, _iso) = setup().await;
    // a missing source is an upstream error, retried on the next request (not remembered)
    let urls = art
        .store
        .register("ns/missing", full_set(source.url("nope.iso"), None))
        .unwrap();
    let e = art.store.prepare("ns/missing").await.unwrap_err();
    assert!(matches!(e, ArtifactError::Fetch { .. }), "{e}");
    let r = client().get(urls.boot_iso.unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("404"));
    // only http(s) sources
    art.store
        .register("ns/file", full_set("file:///etc/passwd".into(), None))
        .unwrap();
    assert!(matches!(
        art.store.prepare("ns/file").await.unwrap_err(),
        ArtifactError::Invalid(_)
    ));
    // served config URL in kernel args needs a config document
    let mut s = full_set(source.url("live.iso"), None);
    s.config_document = None;
    assert!(matches!(
        art.store.register("ns/x", s).unwrap_err(),
        ArtifactError::Invalid(_)
    ));
    assert!(matches!(
        art.store.prepare("ns/unknown").await.unwrap_err(),
        ArtifactError::NotRegistered(_)
    ));
    // an ISO without bootloader config is a clear patch error
    let plain = beskar7_boot::build_volume(
        VolumeFormat::Iso,
        "X",
        &[beskar7_boot::VolumeFile::new("a", "b")],
    )
    .unwrap();
    std::fs::write(_d.path().join("plain.iso"), plain).unwrap();
    art.store
        .register("ns/plain", full_set(source.url("plain.iso"), None))
        .unwrap();
    let e = art.store.prepare("ns/plain").await.unwrap_err();
    assert!(e.to_string().contains("no bootloader configuration"), "{e}");
}

#[tokio::test]
async fn cache_is_bounded_and_evicts_unused_images() {
    let src_dir = TempDir::new("src");
    let iso = test_iso();
    for n in 0..4 {
        std::fs::write(src_dir.path().join(format!("i{n}.iso")), &iso).unwrap();
    }
    let source = SourceServer::start(src_dir.path().to_path_buf()).await;
    let limit = iso.len() as u64 * 2 + 100;
    let art = Artifacts::start(limit).await;
    let unpatched = |url: String| ArtifactSet {
        boot_iso: Some(BootIsoSource {
            add_uefi_path: false,
            url,
            sha256: None,
            kernel_args: vec![],
        }),
        ..Default::default()
    };
    for n in 0..4 {
        let key = format!("ns/m{n}");
        let urls = art
            .store
            .register(&key, unpatched(source.url(&format!("i{n}.iso"))))
            .unwrap();
        art.store.prepare(&key).await.unwrap();
        // unpatched: served byte-identical
        let body = client()
            .get(urls.boot_iso.unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.as_ref(), iso.as_slice());
        art.store.revoke(&key);
        let st = art.store.cache().stats();
        assert!(st.bytes <= limit, "{st:?}");
        let files = std::fs::read_dir(art.cache_dir.path()).unwrap().count();
        assert!(files <= 2, "{files} files in the cache");
    }
    assert_eq!(art.store.cache().stats().downloads, 4);
    // images held by registered machines are not evicted: a third one does not fit
    for n in 0..2 {
        art.store
            .register(
                &format!("ns/h{n}"),
                unpatched(source.url(&format!("i{n}.iso"))),
            )
            .unwrap();
        art.store.prepare(&format!("ns/h{n}")).await.unwrap();
    }
    art.store
        .register("ns/h2", unpatched(source.url("i2.iso")))
        .unwrap();
    let e = art.store.prepare("ns/h2").await.unwrap_err();
    assert!(e.to_string().contains("cache full"), "{e}");
    // the image that did not fit is not left on disk
    let files = std::fs::read_dir(art.cache_dir.path()).unwrap().count();
    assert_eq!(files, 2, "{files} files in the cache");
}

#[tokio::test]
async fn caller_supplied_tokens() {
    let (art, source, _d, _iso) = setup().await;
    let c = client();
    let t1 = "ab".repeat(32);
    let t2 = "cd".repeat(32);
    let urls = art
        .store
        .register_with_token("ns/k", &t1, full_set(source.url("live.iso"), None))
        .unwrap();
    assert_eq!(urls.token, t1);
    assert_eq!(
        urls.config_document.clone().unwrap(),
        format!("http://{}/{t1}/config", art.addr)
    );
    assert_eq!(
        c.get(urls.config_document.unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // malformed or taken tokens are refused
    for bad in ["AB".repeat(32), "ab".repeat(16), "zz".repeat(32)] {
        let e = art
            .store
            .register_with_token("ns/other", &bad, full_set(source.url("live.iso"), None))
            .unwrap_err();
        assert!(matches!(e, ArtifactError::Invalid(_)), "{bad}: {e}");
    }
    let e = art
        .store
        .register_with_token("ns/other", &t1, full_set(source.url("live.iso"), None))
        .unwrap_err();
    assert!(e.to_string().contains("another machine"), "{e}");
    // a new token for the same machine retires the old one
    let urls2 = art
        .store
        .register_with_token("ns/k", &t2, full_set(source.url("live.iso"), None))
        .unwrap();
    assert_eq!(
        c.get(art.url(&format!("/{t1}/config")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(urls2.config_document.unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // the boot ISO's kernel arguments point at the new config URL
    art.store.prepare("ns/k").await.unwrap();
    let body = c
        .get(urls2.boot_iso.unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body)
            .contains(&format!("config_url=http://{}/{t2}/config", art.addr))
    );
}

#[tokio::test]
async fn pipelined_requests_share_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (art, source, _d, _iso) = setup().await;
    let urls = art
        .store
        .register("ns/p", full_set(source.url("live.iso"), None))
        .unwrap();
    let t = &urls.token;
    let mut s = tokio::net::TcpStream::connect(art.addr).await.unwrap();
    // three requests in one write; the last asks to close
    let req = format!(
        "GET /{t}/config HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /{t}/config.img HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /{t}/config HTTP/1.1\r\nHost: x\r\nRange: bytes=0-12\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 206 Partial Content"
        ],
        "{text}"
    );
    assert_eq!(text.matches("#cloud-config\ninstall:").count(), 1, "{text}");
    assert!(text.ends_with("\r\n\r\n#cloud-config"), "{text}");
    assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    assert_eq!(
        text.matches("content-length: 5000\r\n").count(),
        1,
        "{text}"
    );
}

#[tokio::test]
async fn https_serves_the_patched_iso_to_a_verifying_client() {
    beskar7_test::install_crypto_provider();
    let ca = beskar7_test::certs::Ca::new("artifact-test-ca").unwrap();
    let pair = ca.loopback_serving_cert("beskar7-artifacts").unwrap();
    let certs = TempDir::new("certs");
    std::fs::write(certs.path().join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(certs.path().join("tls.key"), &pair.key_pem).unwrap();

    let src_dir = TempDir::new("src");
    let iso = test_iso();
    std::fs::write(src_dir.path().join("live.iso"), &iso).unwrap();
    let source = SourceServer::start(src_dir.path().to_path_buf()).await;
    let art = Artifacts::start_with_tls(1 << 30, Some(certs.path())).await;
    let urls = art
        .store
        .register("ns/tls", full_set(source.url("live.iso"), None))
        .unwrap();
    let boot = urls.boot_iso.clone().unwrap();
    let config_url = urls.config_document.clone().unwrap();
    assert!(boot.starts_with("https://"), "{boot}");
    assert!(config_url.starts_with("https://"), "{config_url}");
    let expected = {
        let args = vec![
            format!("config_url={config_url}"),
            "console=ttyS0".to_string(),
        ];
        let mut v = Vec::new();
        PatchedIso::open(iso.clone(), &args)
            .unwrap()
            .write_to(&mut v)
            .unwrap();
        v
    };

    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = trusting.get(&boot).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), expected.as_slice());
    // a range across the patched config file: the same bytes as the whole image's
    let needle = format!("config_url={config_url}");
    let at = expected
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap();
    let (start, end) = (at - 1000, at + 5000);
    let r = trusting
        .get(&boot)
        .header("range", format!("bytes={start}-{}", end - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &expected[start..end]);
    let r = trusting.get(&config_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().starts_with("#cloud-config"));

    // a client that does not trust the CA gets no bytes
    let other_ca = beskar7_test::certs::Ca::new("someone-else").unwrap();
    let distrusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(other_ca.cert_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let err = distrusting.get(&boot).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // plain HTTP on the TLS port is not answered with an artifact
    let (code, text) = raw_request(art.addr, &format!("/{}/config", urls.token)).await;
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("cloud-config"), "{text}");
}

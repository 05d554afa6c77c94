//! Streaming a patched 1 GiB image keeps the server's memory flat (own test binary: measures this process).

mod artifacts_support;

use artifacts_support::*;
use beskar7_boot::{KernelArg, PatchedIso};
use beskar7_controllers::artifacts::{ArtifactSet, BootIsoSource};

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_flat_while_streaming_a_sparse_1gib_image() {
    const SIZE: u64 = 1 << 30;
    let src_dir = TempDir::new("big");
    let iso = test_iso();
    let path = src_dir.path().join("big.iso");
    // a sparse 1 GiB image: the ISO at the start, zeros after it
    beskar7_test::fixtures::write_sparse_image(&path, &iso, SIZE).unwrap();
    let source = SourceServer::start(src_dir.path().to_path_buf()).await;
    let art = Artifacts::start(2 << 30).await;
    let set = ArtifactSet {
        boot_iso: Some(BootIsoSource {
            add_uefi_path: false,
            url: source.url("big.iso"),
            sha256: None,
            kernel_args: vec![KernelArg::Literal("console=ttyS0".into())],
        }),
        ..Default::default()
    };
    let urls = art.store.register("ns/big", set).unwrap();

    let before = status_kib("VmRSS:");
    art.store.prepare("ns/big").await.unwrap();
    let c = reqwest::Client::new();
    let mut r = c.get(urls.boot_iso.clone().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let len: u64 = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > SIZE);
    let mut got = 0u64;
    let mut head = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        if head.len() < iso.len() {
            head.extend_from_slice(&chunk[..chunk.len().min(iso.len() - head.len())]);
        }
        got += chunk.len() as u64;
    }
    assert_eq!(got, len);
    let peak = status_kib("VmHWM:");
    let after = status_kib("VmRSS:");
    eprintln!("RSS before {before} KiB, after {after} KiB, peak {peak} KiB, streamed {got} bytes");
    assert!(
        peak < before + 96 * 1024,
        "peak RSS {peak} KiB grew more than 96 MiB over {before} KiB while moving 1 GiB twice"
    );

    // and the content is right: the start and the tail equal the patched view computed locally
    let local = PatchedIso::open(
        std::fs::File::open(&path).unwrap(),
        &["console=ttyS0".to_string()],
    )
    .unwrap();
    assert_eq!(local.len(), len);
    let mut want = vec![0u8; iso.len()];
    local.read_at(0, &mut want).unwrap();
    assert_eq!(head, want);
    let r = c
        .get(urls.boot_iso.unwrap())
        // the rewritten config sits after the old end, before the 300 KiB of padding
        .header("range", "bytes=-409600")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let mut tail = vec![0u8; 409600];
    local.read_at(len - 409600, &mut tail).unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.as_ref(), tail.as_slice());
    assert!(String::from_utf8_lossy(&body).contains("console=ttyS0"));
    // the cached copy stayed sparse
    let cached: u64 = std::fs::read_dir(art.cache_dir.path())
        .unwrap()
        .map(|e| std::os::unix::fs::MetadataExt::blocks(&e.unwrap().metadata().unwrap()) * 512)
        .sum();
    assert!(cached < 64 << 20, "cache uses {cached} bytes on disk");
}

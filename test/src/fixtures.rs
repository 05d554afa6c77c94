//! Objects and media written as an operator writes them: BMC credentials, PhysicalHosts for the
//! lab's systems, and a small OS-shaped ISO.

use std::path::Path;
use std::process::{Command, Stdio};

use beskar7_api::PhysicalHost;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use crate::{BmcLab, LabSystem};

/// Name of the Secret holding the lab's CA, created by [`enroll_lab`].
pub const LAB_CA_SECRET: &str = "bmc-lab-ca";

/// A CA Secret and, per lab system, a credentials Secret and a PhysicalHost `server-NN`
/// verified against the lab's CA. Returns the host names.
pub async fn enroll_lab(
    client: &kube::Client,
    ns: &str,
    lab: &BmcLab,
    labels: &[(&str, &str)],
) -> Result<Vec<String>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": LAB_CA_SECRET, "labels": {beskar7_api::MOVE_LABEL: ""}},
        "stringData": {"ca.crt": lab.ca_pem},
    }))
    .expect("valid Secret");
    match secrets.create(&PostParams::default(), &ca).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let mut names = Vec::new();
    for (i, s) in lab.systems.iter().enumerate() {
        let name = format!("server-{i:02}");
        enroll(client, ns, &name, s, Some(LAB_CA_SECRET), labels).await?;
        names.push(name);
    }
    Ok(names)
}

/// A credentials Secret `<name>-bmc` and a PhysicalHost `name` for one lab system.
pub async fn enroll(
    client: &kube::Client,
    ns: &str,
    name: &str,
    s: &LabSystem,
    ca_secret: Option<&str>,
    labels: &[(&str, &str)],
) -> Result<PhysicalHost, kube::Error> {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        // Referenced by name only, so labelled for `clusterctl move` as our docs tell operators.
        "metadata": {"name": format!("{name}-bmc"), "labels": {beskar7_api::MOVE_LABEL: ""}},
        "stringData": {"username": s.username, "password": s.password},
    }))
    .expect("valid Secret");
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    let mut conn = serde_json::json!({
        "address": s.address,
        "credentialsSecretRef": format!("{name}-bmc"),
        "systemId": s.system_id,
    });
    if let Some(ca) = ca_secret {
        conn["caBundleSecretRef"] = serde_json::json!(ca);
    }
    let host: PhysicalHost = serde_json::from_value(serde_json::json!({
        "apiVersion": beskar7_api::API_VERSION,
        "kind": "PhysicalHost",
        "metadata": {"name": name, "labels": labels},
        "spec": {"redfishConnection": conn},
    }))
    .expect("valid PhysicalHost");
    Api::<PhysicalHost>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &host)
        .await
}

/// A small ISO shaped like an OS installer (not bootable: the boot-proof tests make bootable
/// ones): a GRUB config at `grub_path` with a kernel line, built by xorriso.
pub fn build_test_iso(dir: &Path, grub_path: &str) -> std::io::Result<Vec<u8>> {
    let root = dir.join("iso-root");
    let cfg = root.join(grub_path.trim_start_matches('/'));
    std::fs::create_dir_all(cfg.parent().expect("a path with a parent"))?;
    std::fs::write(
        &cfg,
        "set timeout=1\nmenuentry 'Test OS' {\n  linux /boot/vmlinuz console=ttyS0\n  initrd /boot/initrd\n}\n",
    )?;
    std::fs::create_dir_all(root.join("boot"))?;
    std::fs::write(root.join("boot/vmlinuz"), vec![0x5au8; 8192])?;
    let out = dir.join("test-os.iso");
    let status = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", "TESTOS", "-o"])
        .arg(&out)
        .arg(&root)
        .status()
        .map_err(|e| {
            std::io::Error::other(format!(
                "xorriso (Debian package xorriso; `make test` installs it): {e}"
            ))
        })?;
    if !status.success() {
        return Err(std::io::Error::other(
            "xorriso failed to build the test ISO",
        ));
    }
    std::fs::read(out)
}

/// Writes `head` (e.g. an ISO from [`build_test_iso`]) at the start of `path` and extends the file
/// to `size` bytes with a hole: an image of any size that takes `head.len()` bytes on disk.
pub fn write_sparse_image(path: &Path, head: &[u8], size: u64) -> std::io::Result<()> {
    std::fs::write(path, head)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(size.max(head.len() as u64))
}

/// Writes `head` then pseudo-random bytes up to `size`: an image whose every block holds data, so
/// a server has to move real bytes, not copy zeros of a hole.
pub fn write_filled_image(path: &Path, head: &[u8], size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(head)?;
    let mut left = size.saturating_sub(head.len() as u64);
    // xorshift64: fast, and nothing in it compresses or repeats within an image
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// Extracts one file of an ISO with xorriso (an independent reader of what we serve).
pub fn iso_extract(iso: &Path, file: &str, out: &Path) -> std::io::Result<Vec<u8>> {
    let status = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", file])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "xorriso could not extract {file} from {}",
            iso.display()
        )));
    }
    std::fs::read(out)
}

/// Reads one file of a FAT image with mtools' mcopy.
pub fn fat_extract(image: &Path, file: &str) -> std::io::Result<Vec<u8>> {
    let out = Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(image)
        .arg(format!("::{file}"))
        .arg("-")
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "mcopy {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// A PhysicalHost `name` for one lab system reached through `proxy` (one proxy per host): a CA
/// Secret `<name>-proxy-ca` with the proxy's CA, a credentials Secret `<name>-bmc`, and the
/// host pointing at the proxy's address.
pub async fn enroll_via_proxy(
    client: &kube::Client,
    ns: &str,
    name: &str,
    system: &LabSystem,
    proxy: &crate::BmcProxy,
    labels: &[(&str, &str)],
) -> Result<PhysicalHost, kube::Error> {
    let ca_name = format!("{name}-proxy-ca");
    let ca: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": ca_name},
        "stringData": {"ca.crt": proxy.ca_pem},
    }))
    .expect("valid Secret");
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ca)
        .await?;
    enroll(
        client,
        ns,
        name,
        &proxy.system(system),
        Some(&ca_name),
        labels,
    )
    .await
}

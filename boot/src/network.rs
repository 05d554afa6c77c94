//! Static addressing for networks without DHCP: the kernel arguments that bring an interface up
//! in the initrd (so a served config URL is reachable before any configuration exists), and the
//! OS's own persistent form merged into its configuration.
//!
//! Facts relied on (read from each project's docs):
//! - dracut (`dracut.cmdline(7)`), used by Kairos, Flatcar and Leap Micro initrds:
//!   `ip=<client-IP>:[<peer>]:<gateway-IP>:<netmask>:<client_hostname>:<interface>:none`, IPv6
//!   addresses in brackets, one `ip=` per interface; `ifname=<name>:<MAC>` names the NIC with
//!   that MAC (not `eth<N>`, which the kernel may hand out itself); `nameserver=<IP>` repeatable;
//!   `rd.neednet=1` brings the network up although the root is local.
//! - Talos reads the kernel's own `ip=` (nfsroot syntax,
//!   `<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>`)
//!   before it fetches its machine config, and keeps `machine.network.interfaces`
//!   (`deviceSelector.hardwareAddr` or `interface`, `addresses`, `routes`) and
//!   `machine.network.nameservers` in the machine config. Its `ip=` has no `ifname=`: a device
//!   named by MAC is the predictable `enx<mac>` name.
//! - Kairos (systemd flavours) runs systemd-networkd; its docs set a static address with a
//!   `stages.initramfs` file under `/etc/systemd/network/`.
//! - Flatcar runs systemd-networkd; Ignition writes `/etc/systemd/network/*.network` through
//!   `storage.files` before networkd starts (Ignition 2.x also needs `filesystem: root`).
//! - Leap Micro runs NetworkManager; keyfiles in `/etc/NetworkManager/system-connections/` must be
//!   mode 0600. Combustion scripts write them (with `umask 077`), Ignition through `storage.files`.

use std::fmt;
use std::net::IpAddr;

use crate::os::{OsFamily, ProfileError};

/// An address with its prefix length, as `10.0.0.10/24` or `2001:db8::10/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `<ip>/<prefix>`; the error says what is wrong in words a person can act on.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not an address with a prefix length (10.0.0.10/24)")
        })?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 or IPv6 address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?;
        Ok(Self { ip, prefix })
    }

    /// The netmask as dracut and the kernel take it: dotted for IPv4, the length for IPv6.
    fn netmask(&self) -> String {
        match self.ip {
            IpAddr::V4(_) => {
                let bits = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                std::net::Ipv4Addr::from(bits).to_string()
            }
            IpAddr::V6(_) => self.prefix.to_string(),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// One interface's static configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticInterface {
    /// The NIC's MAC (lower case, colon separated); None: matched by `name`.
    pub mac: Option<String>,
    /// The OS's interface name; used when no MAC is given.
    pub name: Option<String>,
    pub addresses: Vec<Cidr>,
    pub gateway: Option<IpAddr>,
}

/// A machine's static network configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticNetwork {
    pub interfaces: Vec<StaticInterface>,
    pub nameservers: Vec<IpAddr>,
}

/// An address as `ip=` writes it (IPv6 in brackets).
fn bracketed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

impl StaticNetwork {
    pub fn is_empty(&self) -> bool {
        self.interfaces.iter().all(|i| i.addresses.is_empty()) && self.nameservers.is_empty()
    }

    /// The name dracut gives the interface `index` matched by MAC (`ifname=`).
    fn dracut_name(index: usize) -> String {
        format!("b7net{index}")
    }

    /// Kernel arguments that configure the network in the initrd, before any config is read.
    pub fn kernel_args(&self, os: OsFamily, hostname: &str) -> Vec<String> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut args = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let Some(addr) = iface.addresses.first() else {
                continue;
            };
            let gateway = iface.gateway.as_ref().map(bracketed).unwrap_or_default();
            match os {
                OsFamily::Talos => {
                    let device = match (&iface.mac, &iface.name) {
                        (Some(mac), _) => format!("enx{}", mac.replace(':', "")),
                        (None, Some(name)) => name.clone(),
                        (None, None) => String::new(),
                    };
                    let dns = |n: usize| {
                        self.nameservers
                            .get(n)
                            .map(|d| d.to_string())
                            .unwrap_or_default()
                    };
                    args.push(format!(
                        "ip={}::{gateway}:{}:{hostname}:{device}:off:{}:{}:",
                        bracketed(&addr.ip),
                        addr.netmask(),
                        dns(0),
                        dns(1)
                    ));
                }
                OsFamily::Kairos | OsFamily::Flatcar | OsFamily::LeapMicro => {
                    let device = match (&iface.mac, &iface.name) {
                        (Some(mac), _) => {
                            let name = Self::dracut_name(i);
                            args.push(format!("ifname={name}:{mac}"));
                            name
                        }
                        (None, Some(name)) => name.clone(),
                        (None, None) => String::new(),
                    };
                    args.push(format!(
                        "ip={}::{gateway}:{}:{hostname}:{device}:none",
                        bracketed(&addr.ip),
                        addr.netmask()
                    ));
                }
            }
        }
        if os != OsFamily::Talos {
            args.extend(self.nameservers.iter().map(|d| format!("nameserver={d}")));
            args.push("rd.neednet=1".into());
        }
        args
    }

    /// A systemd-networkd `.network` unit for one interface (Kairos, Flatcar).
    fn networkd_unit(&self, iface: &StaticInterface) -> String {
        let mut s = String::from("[Match]\n");
        match (&iface.mac, &iface.name) {
            (Some(mac), _) => s.push_str(&format!("MACAddress={mac}\n")),
            (None, Some(name)) => s.push_str(&format!("Name={name}\n")),
            (None, None) => s.push_str("Name=*\n"),
        }
        s.push_str("\n[Network]\n");
        for a in &iface.addresses {
            s.push_str(&format!("Address={a}\n"));
        }
        if let Some(g) = &iface.gateway {
            s.push_str(&format!("Gateway={g}\n"));
        }
        for d in &self.nameservers {
            s.push_str(&format!("DNS={d}\n"));
        }
        s
    }

    /// A NetworkManager keyfile for one interface (Leap Micro).
    fn nm_keyfile(&self, index: usize, iface: &StaticInterface) -> String {
        let mut s = format!("[connection]\nid=beskar7-{index}\ntype=ethernet\nautoconnect=true\n");
        if let (None, Some(name)) = (&iface.mac, &iface.name) {
            s.push_str(&format!("interface-name={name}\n"));
        }
        if let Some(mac) = &iface.mac {
            s.push_str(&format!(
                "\n[ethernet]\nmac-address={}\n",
                mac.to_uppercase()
            ));
        }
        for (family, v4) in [("ipv4", true), ("ipv6", false)] {
            let addrs: Vec<&Cidr> = iface
                .addresses
                .iter()
                .filter(|a| a.ip.is_ipv4() == v4)
                .collect();
            s.push_str(&format!("\n[{family}]\n"));
            if addrs.is_empty() {
                s.push_str(if v4 {
                    "method=disabled\n"
                } else {
                    "method=ignore\n"
                });
                continue;
            }
            s.push_str("method=manual\n");
            let gateway = iface.gateway.filter(|g| g.is_ipv4() == v4);
            for (n, a) in addrs.iter().enumerate() {
                match (n, gateway) {
                    (0, Some(g)) => s.push_str(&format!("address1={a},{g}\n")),
                    _ => s.push_str(&format!("address{}={a}\n", n + 1)),
                }
            }
            let dns: Vec<String> = self
                .nameservers
                .iter()
                .filter(|d| d.is_ipv4() == v4)
                .map(|d| format!("{d};"))
                .collect();
            if !dns.is_empty() {
                s.push_str(&format!("dns={}\n", dns.concat()));
            }
        }
        s
    }

    /// The files the OS's own network stack reads: (path, mode, content).
    pub fn os_files(&self, os: OsFamily) -> Vec<(String, u32, String)> {
        self.interfaces
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.addresses.is_empty())
            .map(|(n, iface)| match os {
                OsFamily::LeapMicro => (
                    format!("/etc/NetworkManager/system-connections/beskar7-{n}.nmconnection"),
                    0o600,
                    self.nm_keyfile(n, iface),
                ),
                _ => (
                    format!("/etc/systemd/network/10-beskar7-{n}.network"),
                    0o644,
                    self.networkd_unit(iface),
                ),
            })
            .collect()
    }

    /// Kairos: a `stages.initramfs` step writing the networkd units (YAML mapping of the
    /// cloud-config).
    pub fn merge_kairos(&self, config: &mut serde_yaml::Mapping) -> Result<(), ProfileError> {
        let files: Vec<serde_yaml::Value> = self
            .os_files(OsFamily::Kairos)
            .into_iter()
            .map(|(path, mode, content)| {
                let mut f = serde_yaml::Mapping::new();
                f.insert("path".into(), path.into());
                f.insert("permissions".into(), u64::from(mode).into());
                f.insert("content".into(), content.into());
                serde_yaml::Value::Mapping(f)
            })
            .collect();
        if files.is_empty() {
            return Ok(());
        }
        let invalid = |err: &str| ProfileError::Invalid {
            os: OsFamily::Kairos,
            what: "cloud-config",
            err: err.into(),
        };
        let stages = config
            .entry("stages".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()))
            .as_mapping_mut()
            .ok_or_else(|| invalid("`stages` is not a mapping"))?;
        let initramfs = stages
            .entry("initramfs".into())
            .or_insert_with(|| serde_yaml::Value::Sequence(Vec::new()))
            .as_sequence_mut()
            .ok_or_else(|| invalid("`stages.initramfs` is not a list"))?;
        let mut step = serde_yaml::Mapping::new();
        step.insert("name".into(), "Beskar7 static network".into());
        step.insert("files".into(), serde_yaml::Value::Sequence(files));
        initramfs.push(serde_yaml::Value::Mapping(step));
        Ok(())
    }

    /// Flatcar and Leap Micro: `storage.files` entries in the Ignition config (2.x or 3.x).
    pub fn merge_ignition(
        &self,
        os: OsFamily,
        config: &mut serde_json::Value,
    ) -> Result<(), ProfileError> {
        let files = self.os_files(os);
        if files.is_empty() {
            return Ok(());
        }
        let v2 = config["ignition"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2."));
        let invalid = |err: &str| ProfileError::Invalid {
            os,
            what: "Ignition",
            err: err.into(),
        };
        let root = config
            .as_object_mut()
            .ok_or_else(|| invalid("the config is not a JSON object"))?;
        let storage = root
            .entry("storage")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .ok_or_else(|| invalid("`storage` is not an object"))?;
        let list = storage
            .entry("files")
            .or_insert_with(|| serde_json::json!([]))
            .as_array_mut()
            .ok_or_else(|| invalid("`storage.files` is not a list"))?;
        for (path, mode, content) in files {
            let mut file = serde_json::json!({
                "path": path,
                "mode": mode,
                "contents": {"source": data_url(&content)},
            });
            if v2 {
                file["filesystem"] = "root".into();
            } else {
                file["overwrite"] = true.into();
            }
            list.push(file);
        }
        Ok(())
    }

    /// Leap Micro's Combustion script: the keyfiles written right after the interpreter line
    /// (before anything of the user's script could exit).
    pub fn merge_combustion(&self, script: &str) -> String {
        let files = self.os_files(OsFamily::LeapMicro);
        if files.is_empty() {
            return script.to_string();
        }
        let (first, rest) = script.split_once('\n').unwrap_or((script, ""));
        let mut out = format!(
            "{first}\n# Beskar7 static network (NetworkManager keyfiles, mode 0600)\n(umask 077\nmkdir -p /etc/NetworkManager/system-connections\n"
        );
        for (path, _, content) in files {
            out.push_str(&format!(
                "cat > {path} <<'BESKAR7_EOF'\n{content}BESKAR7_EOF\n"
            ));
        }
        out.push_str(")\n");
        out.push_str(rest);
        out
    }

    /// Talos: `machine.network.interfaces` and `machine.network.nameservers` in the machine
    /// config (a YAML mapping).
    pub fn merge_talos(&self, config: &mut serde_yaml::Mapping) -> Result<(), ProfileError> {
        if self.is_empty() {
            return Ok(());
        }
        let invalid = |err: &str| ProfileError::Invalid {
            os: OsFamily::Talos,
            what: "Talos machine config",
            err: err.into(),
        };
        let machine = config
            .entry("machine".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()))
            .as_mapping_mut()
            .ok_or_else(|| invalid("`machine` is not a mapping"))?;
        let network = machine
            .entry("network".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()))
            .as_mapping_mut()
            .ok_or_else(|| invalid("`machine.network` is not a mapping"))?;
        let interfaces = network
            .entry("interfaces".into())
            .or_insert_with(|| serde_yaml::Value::Sequence(Vec::new()))
            .as_sequence_mut()
            .ok_or_else(|| invalid("`machine.network.interfaces` is not a list"))?;
        for iface in self.interfaces.iter().filter(|i| !i.addresses.is_empty()) {
            let mut m = serde_yaml::Mapping::new();
            match (&iface.mac, &iface.name) {
                (Some(mac), _) => {
                    let mut sel = serde_yaml::Mapping::new();
                    sel.insert("hardwareAddr".into(), mac.clone().into());
                    m.insert("deviceSelector".into(), serde_yaml::Value::Mapping(sel));
                }
                (None, Some(name)) => {
                    m.insert("interface".into(), name.clone().into());
                }
                (None, None) => {
                    let mut sel = serde_yaml::Mapping::new();
                    sel.insert("physical".into(), true.into());
                    m.insert("deviceSelector".into(), serde_yaml::Value::Mapping(sel));
                }
            }
            m.insert(
                "addresses".into(),
                serde_yaml::Value::Sequence(
                    iface
                        .addresses
                        .iter()
                        .map(|a| a.to_string().into())
                        .collect(),
                ),
            );
            if let Some(g) = &iface.gateway {
                let mut route = serde_yaml::Mapping::new();
                let default = if g.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                route.insert("network".into(), default.into());
                route.insert("gateway".into(), g.to_string().into());
                m.insert(
                    "routes".into(),
                    serde_yaml::Value::Sequence(vec![serde_yaml::Value::Mapping(route)]),
                );
            }
            interfaces.push(serde_yaml::Value::Mapping(m));
        }
        if !self.nameservers.is_empty() {
            network.insert(
                "nameservers".into(),
                serde_yaml::Value::Sequence(
                    self.nameservers
                        .iter()
                        .map(|d| d.to_string().into())
                        .collect(),
                ),
            );
        }
        Ok(())
    }
}

/// An RFC 2397 `data:` URL of `content` (percent-encoded, as Ignition reads it).
fn data_url(content: &str) -> String {
    let mut out = String::from("data:,");
    for b in content.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> StaticNetwork {
        StaticNetwork {
            interfaces: vec![
                StaticInterface {
                    mac: Some("52:54:00:12:34:56".into()),
                    name: None,
                    addresses: vec![Cidr::parse("10.0.0.10/24").unwrap()],
                    gateway: Some("10.0.0.1".parse().unwrap()),
                },
                StaticInterface {
                    mac: None,
                    name: Some("eth1".into()),
                    addresses: vec![Cidr::parse("2001:db8::10/64").unwrap()],
                    gateway: None,
                },
            ],
            nameservers: vec!["10.0.0.53".parse().unwrap()],
        }
    }

    #[test]
    fn cidrs_parse_or_say_why_not() {
        assert_eq!(
            Cidr::parse("10.0.0.10/24").unwrap().netmask(),
            "255.255.255.0"
        );
        assert_eq!(Cidr::parse("10.0.0.10/0").unwrap().netmask(), "0.0.0.0");
        assert_eq!(Cidr::parse("2001:db8::1/64").unwrap().netmask(), "64");
        for (bad, says) in [
            ("10.0.0.10", "prefix length"),
            ("300.0.0.1/24", "not an IPv4 or IPv6"),
            ("10.0.0.1/33", "0 to 32"),
            ("2001:db8::1/129", "0 to 128"),
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn dracut_arguments_name_the_nic_by_mac_and_bring_it_up() {
        assert_eq!(
            net().kernel_args(OsFamily::Flatcar, "node-1"),
            [
                "ifname=b7net0:52:54:00:12:34:56",
                "ip=10.0.0.10::10.0.0.1:255.255.255.0:node-1:b7net0:none",
                "ip=[2001:db8::10]:::64:node-1:eth1:none",
                "nameserver=10.0.0.53",
                "rd.neednet=1",
            ]
        );
    }

    #[test]
    fn talos_arguments_use_the_kernel_syntax() {
        assert_eq!(
            net().kernel_args(OsFamily::Talos, "node-1"),
            [
                "ip=10.0.0.10::10.0.0.1:255.255.255.0:node-1:enx525400123456:off:10.0.0.53::",
                "ip=[2001:db8::10]:::64:node-1:eth1:off:10.0.0.53::",
            ]
        );
        assert!(
            StaticNetwork::default()
                .kernel_args(OsFamily::Talos, "x")
                .is_empty()
        );
    }

    #[test]
    fn networkd_and_networkmanager_files() {
        let files = net().os_files(OsFamily::Kairos);
        assert_eq!(files[0].0, "/etc/systemd/network/10-beskar7-0.network");
        assert_eq!(
            files[0].2,
            "[Match]\nMACAddress=52:54:00:12:34:56\n\n[Network]\nAddress=10.0.0.10/24\nGateway=10.0.0.1\nDNS=10.0.0.53\n"
        );
        let nm = net().os_files(OsFamily::LeapMicro);
        assert_eq!(nm[0].1, 0o600);
        assert!(
            nm[0].2.contains("mac-address=52:54:00:12:34:56"),
            "{}",
            nm[0].2
        );
        assert!(
            nm[0]
                .2
                .contains("address1=10.0.0.10/24,10.0.0.1\ndns=10.0.0.53;"),
            "{}",
            nm[0].2
        );
        assert!(nm[1].2.contains("interface-name=eth1"), "{}", nm[1].2);
        assert!(
            nm[1]
                .2
                .contains("[ipv6]\nmethod=manual\naddress1=2001:db8::10/64"),
            "{}",
            nm[1].2
        );
    }

    #[test]
    fn ignition_2_and_3_get_their_file_shapes() {
        for (version, extra) in [("2.3.0", "filesystem"), ("3.4.0", "overwrite")] {
            let mut cfg = serde_json::json!({"ignition": {"version": version}});
            net().merge_ignition(OsFamily::Flatcar, &mut cfg).unwrap();
            let files = cfg["storage"]["files"].as_array().unwrap();
            assert_eq!(files.len(), 2);
            assert_eq!(files[0]["mode"], 420);
            assert!(files[0].get(extra).is_some(), "{version}: {}", files[0]);
            let source = files[0]["contents"]["source"].as_str().unwrap();
            assert!(
                source.starts_with("data:,%5BMatch%5D%0AMACAddress%3D52%3A54"),
                "{source}"
            );
        }
        let mut bad =
            serde_json::json!({"ignition": {"version": "3.4.0"}, "storage": {"files": {}}});
        assert!(net().merge_ignition(OsFamily::Flatcar, &mut bad).is_err());
    }

    #[test]
    fn kairos_talos_and_combustion_merges() {
        let mut kairos: serde_yaml::Mapping =
            serde_yaml::from_str("stages:\n  initramfs:\n    - name: users\n").unwrap();
        net().merge_kairos(&mut kairos).unwrap();
        let steps = kairos["stages"]["initramfs"].as_sequence().unwrap();
        assert_eq!(steps.len(), 2, "the user's step is kept");
        assert_eq!(steps[1]["files"][0]["permissions"], 0o644);

        let mut talos: serde_yaml::Mapping =
            serde_yaml::from_str("version: v1alpha1\nmachine:\n  type: worker\n").unwrap();
        net().merge_talos(&mut talos).unwrap();
        let n = &talos["machine"]["network"];
        assert_eq!(
            n["interfaces"][0]["deviceSelector"]["hardwareAddr"],
            "52:54:00:12:34:56"
        );
        assert_eq!(n["interfaces"][0]["routes"][0]["gateway"], "10.0.0.1");
        assert_eq!(n["interfaces"][1]["interface"], "eth1");
        assert_eq!(n["nameservers"][0], "10.0.0.53");
        assert_eq!(talos["machine"]["type"], "worker");

        let script = net().merge_combustion("#!/bin/bash\n# combustion: network\necho hi\n");
        assert!(
            script.starts_with("#!/bin/bash\n# Beskar7 static network"),
            "{script}"
        );
        assert!(script.contains("umask 077"));
        assert!(
            script.ends_with("# combustion: network\necho hi\n"),
            "{script}"
        );
    }
}

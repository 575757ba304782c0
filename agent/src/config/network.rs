//! `[network]`: the bridge that bridge-mode tasks are attached to, through CNI.

use super::{invalid, ConfigError};
use crate::network::NetworkConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    subnet: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    cni_conf_dir: Option<PathBuf>,
    cni_bin_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
}

pub(super) fn network(r: RawNetwork, state_dir: &Path) -> Result<NetworkConfig, ConfigError> {
    let d = NetworkConfig::defaults(state_dir);
    let subnet = match r.subnet {
        None => d.subnet,
        Some(s) => {
            let net: ipnet::Ipv4Net = s
                .parse()
                .map_err(|_| invalid("network.subnet", &format!("{s:?} is not an IPv4 network (a.b.c.d/n)")))?;
            if net.trunc() != net {
                return Err(invalid(
                    "network.subnet",
                    &format!("{s} has host bits set; the network is {}", net.trunc()),
                ));
            }
            if !(8..=30).contains(&net.prefix_len()) {
                return Err(invalid("network.subnet", &format!("{s}: the prefix length must be 8 to 30")));
            }
            net
        }
    };
    let bridge = r.bridge.unwrap_or(d.bridge);
    let ok_name = !bridge.is_empty()
        && bridge.len() <= 15
        && bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok_name {
        return Err(invalid(
            "network.bridge",
            &format!("{bridge:?} is not an interface name (1 to 15 letters, digits, '-', '_', '.')"),
        ));
    }
    let mtu = r.mtu.unwrap_or(d.mtu);
    if !(576..=65535).contains(&mtu) {
        return Err(invalid("network.mtu", &format!("{mtu} is not between 576 and 65535")));
    }
    for (key, p) in [
        ("network.cni_conf_dir", &r.cni_conf_dir),
        ("network.cni_bin_dir", &r.cni_bin_dir),
        ("network.run_dir", &r.run_dir),
    ] {
        if p.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(invalid(key, "must be an absolute path"));
        }
    }
    Ok(NetworkConfig {
        subnet,
        bridge,
        mtu,
        cni_conf_dir: r.cni_conf_dir,
        cni_bin_dir: r.cni_bin_dir.unwrap_or(d.cni_bin_dir),
        run_dir: r.run_dir.unwrap_or(d.run_dir),
        state_dir: d.state_dir,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn defaults_and_keys() {
        let c = Config::parse("", "h").unwrap().network;
        assert_eq!(c.subnet.to_string(), "10.88.0.0/16");
        assert_eq!((c.bridge.as_str(), c.mtu), ("berth0", 1500));
        assert_eq!(c.cni_bin_dir, Path::new("/usr/lib/cni"));
        assert_eq!(c.cni_conf_dir, None);
        assert_eq!(c.run_dir, Path::new("/run/berth/network"));
        assert_eq!(c.state_dir, Path::new("/var/lib/berth/state/network"));
        let c = Config::parse(
            "[network]\nsubnet = \"10.9.0.0/24\"\nbridge = \"br-t\"\nmtu = 9000\ncni_conf_dir = \"/etc/cni/net.d\"\n\
             cni_bin_dir = \"/opt/cni/bin\"\n",
            "h",
        )
        .unwrap()
        .network;
        assert_eq!((c.subnet.to_string().as_str(), c.bridge.as_str(), c.mtu), ("10.9.0.0/24", "br-t", 9000));
        assert_eq!(c.cni_conf_dir.as_deref(), Some(Path::new("/etc/cni/net.d")));
        assert_eq!(c.cni_bin_dir, Path::new("/opt/cni/bin"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("subnet = \"10.9.0.1/24\"", "network.subnet"),
            ("subnet = \"10.9.0.0/31\"", "network.subnet"),
            ("subnet = \"fd00::/64\"", "network.subnet"),
            ("bridge = \"a-very-long-bridge-name\"", "network.bridge"),
            ("bridge = \"a b\"", "network.bridge"),
            ("mtu = 100", "network.mtu"),
            ("cni_bin_dir = \"cni\"", "network.cni_bin_dir"),
            ("gateway = \"10.0.0.1\"", "unknown field"),
        ] {
            let e = Config::parse(&format!("[network]\n{text}\n"), "h").unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}

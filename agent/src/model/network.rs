//! A task's network as its run options ask for it: the mode, published ports,
//! DNS settings and extra `/etc/hosts` entries. Parsed in `spec`, carried out
//! by `network`.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// `--network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A network namespace of the task's own on the node's bridge, with NAT
    /// to the outside (docker's default, which Batch's `docker create` gets).
    #[default]
    Bridge,
    /// The node's network namespace (MPI, RDMA; `[policy] allow_host_network`).
    Host,
    /// A network namespace with only a loopback device.
    None,
}

impl NetworkMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `-p [HOSTIP:]HOSTPORT:PORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// None: every address of the node.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}/{}", self.host_port, self.container_port, self.protocol.as_str())
    }
}

impl PortMapping {
    /// Whether two mappings claim the same host port (an unspecified address
    /// claims it on every address).
    pub fn collides(&self, other: &PortMapping) -> bool {
        self.host_port == other.host_port
            && self.protocol == other.protocol
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

/// `--dns`, `--dns-search`, `--dns-option`: each list, when given, replaces
/// the node's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl DnsSettings {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// Everything about a task's network its run options say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    pub mode: NetworkMode,
    pub publish: Vec<PortMapping>,
    pub dns: DnsSettings,
    /// `--add-host NAME:IP`, in order.
    pub extra_hosts: Vec<(String, IpAddr)>,
}

impl NetworkRequest {
    /// Whether the task needs `/etc/resolv.conf` and `/etc/hosts` of its own
    /// (a host-network task without DNS or host options gets the node's).
    pub fn own_files(&self) -> bool {
        self.mode != NetworkMode::Host || !self.dns.is_empty() || !self.extra_hosts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ip: Option<&str>, port: u16, p: Protocol) -> PortMapping {
        PortMapping { host_ip: ip.map(|i| i.parse().unwrap()), host_port: port, container_port: 80, protocol: p }
    }

    #[test]
    fn mappings_collide_on_the_same_port_protocol_and_address() {
        assert!(m(None, 80, Protocol::Tcp).collides(&m(Some("127.0.0.1"), 80, Protocol::Tcp)));
        assert!(m(Some("127.0.0.1"), 80, Protocol::Tcp).collides(&m(Some("127.0.0.1"), 80, Protocol::Tcp)));
        assert!(!m(Some("127.0.0.1"), 80, Protocol::Tcp).collides(&m(Some("127.0.0.2"), 80, Protocol::Tcp)));
        assert!(!m(None, 80, Protocol::Tcp).collides(&m(None, 80, Protocol::Udp)));
        assert!(!m(None, 80, Protocol::Tcp).collides(&m(None, 81, Protocol::Tcp)));
    }

    #[test]
    fn mappings_print_as_written() {
        assert_eq!(m(None, 8080, Protocol::Tcp).to_string(), "8080:80/tcp");
        assert_eq!(m(Some("::1"), 53, Protocol::Udp).to_string(), "[::1]:53:80/udp");
    }

    #[test]
    fn only_a_plain_host_network_task_shares_the_nodes_files() {
        let mut r = NetworkRequest { mode: NetworkMode::Host, ..Default::default() };
        assert!(!r.own_files());
        r.extra_hosts.push(("db".into(), "10.0.0.1".parse().unwrap()));
        assert!(r.own_files());
        assert!(NetworkRequest::default().own_files());
    }
}

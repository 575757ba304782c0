//! A task's `/etc/resolv.conf` and `/etc/hosts`, as docker writes them. Pure:
//! the node's files come in as text.

use crate::model::{DnsSettings, NetworkMode};
use std::net::{IpAddr, Ipv4Addr};

/// The node's resolv.conf with the task's `--dns*` over it. A bridge or
/// `none` task has a loopback of its own, so the node's loopback name
/// servers (systemd-resolved's 127.0.0.53) mean nothing there: they are
/// dropped (the agent reads systemd-resolved's upstream file instead when
/// the node uses it; see `Networks::node_resolv_conf`).
pub fn resolv_conf(node: &str, mode: NetworkMode, dns: &DnsSettings) -> String {
    let own_loopback = mode != NetworkMode::Host;
    let mut servers: Vec<String> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    for line in node.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    if !(own_loopback && ip.is_loopback()) {
                        servers.push(ip.to_string());
                    }
                }
            }
            Some("search" | "domain") => search = words.map(str::to_owned).collect(),
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    if !dns.servers.is_empty() {
        servers = dns.servers.iter().map(IpAddr::to_string).collect();
    }
    if !dns.search.is_empty() {
        // `.` alone: no search domain (docker's rule).
        search = dns.search.iter().filter(|s| s.as_str() != ".").cloned().collect();
    }
    if !dns.options.is_empty() {
        options = dns.options.clone();
    }
    let mut out = String::from("# Written by berth for this task (--dns, --dns-search, --dns-option).\n");
    if !search.is_empty() {
        out += &format!("search {}\n", search.join(" "));
    }
    for s in servers {
        out += &format!("nameserver {s}\n");
    }
    if !options.is_empty() {
        out += &format!("options {}\n", options.join(" "));
    }
    out
}

/// The task's hosts file: a host-network task gets the node's with its
/// `--add-host` entries after; a bridge or `none` task the loopback names,
/// its own address under its host name, then `--add-host`.
pub fn hosts(
    node: &str,
    mode: NetworkMode,
    hostname: &str,
    ip: Option<Ipv4Addr>,
    extra: &[(String, IpAddr)],
) -> String {
    let mut out = match mode {
        NetworkMode::Host => {
            let mut n = node.to_owned();
            if !n.is_empty() && !n.ends_with('\n') {
                n.push('\n');
            }
            n
        }
        NetworkMode::Bridge | NetworkMode::None => {
            let mut s = String::from(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
                 ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
            );
            if let Some(ip) = ip {
                s += &format!("{ip}\t{hostname}\n");
            }
            s
        }
    };
    for (name, ip) in extra {
        out += &format!("{ip}\t{name}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str =
        "# node\nnameserver 127.0.0.53\nnameserver 168.63.129.16\nsearch internal.example\noptions edns0 trust-ad\n";

    #[test]
    fn bridge_tasks_drop_the_nodes_loopback_servers() {
        let r = resolv_conf(NODE, NetworkMode::Bridge, &DnsSettings::default());
        assert!(r.contains("nameserver 168.63.129.16\n") && !r.contains("127.0.0.53"), "{r}");
        assert!(r.contains("search internal.example\n") && r.contains("options edns0 trust-ad\n"), "{r}");
        let h = resolv_conf(NODE, NetworkMode::Host, &DnsSettings::default());
        assert!(h.contains("nameserver 127.0.0.53\n"), "the node's loopback is the host task's: {h}");
    }

    #[test]
    fn dns_flags_replace_each_list() {
        let dns = DnsSettings {
            servers: vec!["192.0.2.53".parse().unwrap()],
            search: vec!["a.test".into(), "b.test".into()],
            options: vec!["ndots:2".into()],
        };
        let r = resolv_conf(NODE, NetworkMode::Bridge, &dns);
        let lines: Vec<&str> = r.lines().skip(1).collect();
        assert_eq!(lines, ["search a.test b.test", "nameserver 192.0.2.53", "options ndots:2"]);
        let dot = DnsSettings { search: vec![".".into()], ..Default::default() };
        assert!(!resolv_conf(NODE, NetworkMode::Bridge, &dot).lines().any(|l| l.starts_with("search")));
    }

    #[test]
    fn hosts_files() {
        let extra = [("db".to_string(), "10.1.2.3".parse().unwrap())];
        let b = hosts("ignored", NetworkMode::Bridge, "worker", Some("10.88.0.5".parse().unwrap()), &extra);
        assert!(b.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"), "{b}");
        assert!(b.ends_with("10.88.0.5\tworker\n10.1.2.3\tdb\n"), "{b}");
        assert!(!b.contains("ignored"));
        let n = hosts("", NetworkMode::None, "worker", None, &[]);
        assert!(!n.contains("worker"));
        let h = hosts("127.0.0.1 localhost\n10.0.0.4 node", NetworkMode::Host, "w", None, &extra);
        assert_eq!(h, "127.0.0.1 localhost\n10.0.0.4 node\n10.1.2.3\tdb\n");
    }
}

//! The network flags: `--network`, `-p/--publish`, `--dns`, `--dns-search`,
//! `--dns-option`, `--add-host`, as docker reads them.

use crate::model::{NetworkMode, PortMapping, Protocol};
use std::net::IpAddr;

/// Most entries of one list, as resolv.conf readers take them (glibc reads 3
/// name servers and 6 search domains; more only waste a task's time).
const MAX_SERVERS: usize = 3;
const MAX_SEARCH: usize = 6;
const MAX_PUBLISH: usize = 64;
const MAX_EXTRA_HOSTS: usize = 256;

pub(super) fn mode(value: &str) -> Result<NetworkMode, String> {
    Ok(match value {
        "bridge" | "default" => NetworkMode::Bridge,
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        v if v.starts_with("container:") => {
            return Err(format!("{v:?}: joining another container's network is not supported (tasks are isolated)"))
        }
        v => return Err(format!("{v:?}: the networks are bridge (the default), host and none")),
    })
}

fn port(text: &str, what: &str) -> Result<u16, String> {
    if text.contains('-') {
        return Err(format!("{what} {text:?}: port ranges are not supported; publish each port"));
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{what} {text:?} is not a port (1 to 65535)")),
        Ok(p) => Ok(p),
    }
}

/// `[HOSTIP:]HOSTPORT:PORT[/tcp|udp]`; an IPv6 host address in brackets.
pub(super) fn publish(value: &str, so_far: usize) -> Result<PortMapping, String> {
    if so_far >= MAX_PUBLISH {
        return Err(format!("at most {MAX_PUBLISH} ports may be published"));
    }
    let (spec, protocol) = match value.rsplit_once('/') {
        Some((s, "tcp")) => (s, Protocol::Tcp),
        Some((s, "udp")) => (s, Protocol::Udp),
        Some((_, p)) => return Err(format!("{value:?}: protocol {p:?} is not tcp or udp")),
        None => (value, Protocol::Tcp),
    };
    let (host_ip, rest) = match spec.strip_prefix('[') {
        Some(v6) => {
            let (ip, rest) = v6.split_once("]:").ok_or_else(|| format!("{value:?}: [IPv6]:HOSTPORT:PORT expected"))?;
            (Some(ip), rest)
        }
        None => match spec.matches(':').count() {
            2 => spec.split_once(':').map(|(ip, rest)| (Some(ip), rest)).unwrap_or((None, spec)),
            _ => (None, spec),
        },
    };
    let (host, container) = rest.split_once(':').ok_or_else(|| {
        format!("{value:?} is not HOSTPORT:PORT (a container port alone would be given a random host port; name one)")
    })?;
    let host_ip = match host_ip.filter(|ip| !ip.is_empty()) {
        None => None,
        Some(ip) => {
            let ip: IpAddr = ip.parse().map_err(|_| format!("{value:?}: {ip:?} is not an IP address"))?;
            (!ip.is_unspecified()).then_some(ip)
        }
    };
    if host_ip.is_some_and(|ip| ip.is_multicast()) {
        return Err(format!("{value:?}: a multicast address cannot be published on"));
    }
    Ok(PortMapping { host_ip, host_port: port(host, "host port")?, container_port: port(container, "port")?, protocol })
}

pub(super) fn dns_server(value: &str, so_far: usize) -> Result<IpAddr, String> {
    if so_far >= MAX_SERVERS {
        return Err(format!("at most {MAX_SERVERS} name servers are read from resolv.conf"));
    }
    value.parse().map_err(|_| format!("{value:?} is not an IP address"))
}

/// A search domain: DNS labels (or `.`, docker's "no search domain").
pub(super) fn dns_search(value: &str, so_far: usize) -> Result<String, String> {
    if so_far >= MAX_SEARCH {
        return Err(format!("at most {MAX_SEARCH} search domains are read from resolv.conf"));
    }
    if value == "." {
        return Ok(value.to_owned());
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    if hostname(name) {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a domain name"))
    }
}

/// `ndots:2`, `timeout:1`, `rotate`...: one resolv.conf option word.
pub(super) fn dns_option(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.".contains(&b));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a resolv.conf option (such as ndots:2)"))
    }
}

/// `NAME:IP` (docker's form; `NAME=IP` too). The IPv6 address is everything
/// after the first separator.
pub(super) fn add_host(value: &str, so_far: usize) -> Result<(String, IpAddr), String> {
    if so_far >= MAX_EXTRA_HOSTS {
        return Err(format!("at most {MAX_EXTRA_HOSTS} host entries may be added"));
    }
    let (name, ip) =
        value.split_once('=').or_else(|| value.split_once(':')).ok_or_else(|| format!("{value:?} is not NAME:IP"))?;
    if ip == "host-gateway" {
        return Err(format!("{value:?}: host-gateway is not supported; give the address"));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip.parse().map_err(|_| format!("{value:?}: {ip:?} is not an IP address"))?;
    if !hostname(name) {
        return Err(format!("{value:?}: {name:?} is not a host name"));
    }
    Ok((name.to_owned(), ip))
}

/// DNS labels of letters, digits, `-` and `_`, 253 characters at most.
pub(super) fn hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_read_as_docker_writes_them() {
        let p = publish("8080:80", 0).unwrap();
        assert_eq!((p.host_ip, p.host_port, p.container_port, p.protocol), (None, 8080, 80, Protocol::Tcp));
        let p = publish("127.0.0.1:5353:53/udp", 0).unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, Protocol::Udp);
        let p = publish("[::1]:8080:80/tcp", 0).unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(publish("0.0.0.0:81:80", 0).unwrap().host_ip, None);
        assert_eq!(publish(":81:80", 0).unwrap().host_ip, None);
        for bad in ["80", "8080:80/sctp", "x:80", "0:80", "80:70000", "8000-8001:80", "a.b:1:2", "224.0.0.1:1:2"] {
            assert!(publish(bad, 0).is_err(), "{bad}");
        }
        assert!(publish("1:2", MAX_PUBLISH).is_err());
    }

    #[test]
    fn network_modes() {
        assert_eq!(mode("bridge").unwrap(), NetworkMode::Bridge);
        assert_eq!(mode("host").unwrap(), NetworkMode::Host);
        assert_eq!(mode("none").unwrap(), NetworkMode::None);
        assert!(mode("container:x").unwrap_err().contains("not supported"));
        assert!(mode("macvlan").is_err());
    }

    #[test]
    fn dns_values() {
        assert!(dns_server("192.0.2.1", 0).is_ok() && dns_server("::1", 0).is_ok());
        assert!(dns_server("dns.example", 0).is_err() && dns_server("192.0.2.1", 3).is_err());
        assert!(dns_search("example.test", 0).is_ok() && dns_search(".", 0).is_ok());
        assert!(dns_search("bad domain", 0).is_err() && dns_search("a\nnameserver 1.1.1.1", 0).is_err());
        assert!(dns_option("ndots:2").is_ok() && dns_option("rotate").is_ok());
        assert!(dns_option("ndots:2 x").is_err() && dns_option("").is_err());
    }

    #[test]
    fn added_hosts() {
        assert_eq!(add_host("db:10.1.2.3", 0).unwrap(), ("db".into(), "10.1.2.3".parse().unwrap()));
        assert_eq!(add_host("db=10.1.2.3", 0).unwrap().0, "db");
        assert_eq!(add_host("v6:::1", 0).unwrap().1, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(add_host("v6:[fd00::1]", 0).unwrap().1, "fd00::1".parse::<IpAddr>().unwrap());
        for bad in ["db", "db:x", "d b:1.2.3.4", "db:host-gateway", "-x:1.2.3.4"] {
            assert!(add_host(bad, 0).is_err(), "{bad}");
        }
    }
}

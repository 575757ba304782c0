//! The node-wide iptables rules of the agent's own network, made once when
//! the agent starts rather than by the plugins for every task (each
//! per-task rule costs several `iptables` runs on RunTask's path):
//!
//! - masquerading of the subnet's traffic leaving it (what the `bridge`
//!   plugin's `ipMasq` adds per container): chain `BERTH-MASQ-<bridge>`,
//!   jumped to from `nat POSTROUTING` for `-s <subnet>`;
//! - forwarding to and from the bridge (what the `firewall` plugin adds per
//!   container), first in `filter FORWARD`, so that a `DROP` policy (docker
//!   sets one) does not cut the tasks off.
//!
//! Idempotent: an agent started again finds them and adds nothing; a jump
//! left for an earlier subnet of the same bridge is removed. An operator's
//! configuration list (`cni_conf_dir`) gets none of them: it brings its own.

use super::NetworkError;

/// The rules' chain and comment.
fn names(bridge: &str) -> (String, String) {
    (format!("BERTH-MASQ-{bridge}"), format!("berth {bridge}"))
}

/// `iptables` argument lists: (rule to check, rule to add), in order.
pub(super) fn rules(bridge: &str, subnet: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let (chain, comment) = names(bridge);
    let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let pair = |table: &str, chain_: &str, insert: bool, rule: &[&str]| {
        let mut check = v(&["-t", table, "-C", chain_]);
        check.extend(v(rule));
        let mut add = if insert { v(&["-t", table, "-I", chain_, "1"]) } else { v(&["-t", table, "-A", chain_]) };
        add.extend(v(rule));
        (check, add)
    };
    vec![
        pair("nat", &chain, false, &["-d", subnet, "-j", "RETURN"]),
        pair("nat", &chain, false, &["-d", "224.0.0.0/4", "-j", "RETURN"]),
        pair("nat", &chain, false, &["-j", "MASQUERADE"]),
        pair("nat", "POSTROUTING", false, &["-s", subnet, "-m", "comment", "--comment", &comment, "-j", &chain]),
        pair(
            "filter",
            "FORWARD",
            true,
            &[
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ],
        ),
        pair("filter", "FORWARD", true, &["-i", bridge, "-m", "comment", "--comment", &comment, "-j", "ACCEPT"]),
    ]
}

/// Jumps to the bridge's chain from `POSTROUTING` for another subnet (an
/// earlier configuration): the `-D` argument lists that remove them.
pub(super) fn stale_jumps(postrouting: &str, bridge: &str, subnet: &str) -> Vec<Vec<String>> {
    let (chain, _) = names(bridge);
    postrouting
        .lines()
        .filter_map(|l| shell_words::split(l).ok())
        .filter(|w| w.first().is_some_and(|a| a == "-A") && w.last() == Some(&chain))
        .filter(|w| w.windows(2).all(|p| !(p[0] == "-s" && p[1] == subnet)))
        .map(|mut w| {
            w[0] = "-D".into();
            let mut args = vec!["-t".to_string(), "nat".into()];
            args.append(&mut w);
            args
        })
        .collect()
}

async fn iptables(args: &[String]) -> Result<std::process::Output, NetworkError> {
    tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(super::io("running iptables (the package `iptables`)"))
}

fn failed(args: &[String], out: &std::process::Output) -> NetworkError {
    NetworkError::Io {
        what: format!("iptables {}", args.join(" ")),
        source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

/// Makes the rules for `bridge` and `subnet` (those missing).
pub(super) async fn ensure(bridge: &str, subnet: &str) -> Result<(), NetworkError> {
    let (chain, _) = names(bridge);
    // "Chain already exists" is the answer of every start but the first.
    iptables(&["-t".into(), "nat".into(), "-N".into(), chain]).await?;
    let listed = iptables(&["-t".into(), "nat".into(), "-S".into(), "POSTROUTING".into()]).await?;
    for del in stale_jumps(&String::from_utf8_lossy(&listed.stdout), bridge, subnet) {
        let out = iptables(&del).await?;
        if !out.status.success() {
            return Err(failed(&del, &out));
        }
    }
    for (check, add) in rules(bridge, subnet) {
        if iptables(&check).await?.status.success() {
            continue;
        }
        let out = iptables(&add).await?;
        if !out.status.success() {
            return Err(failed(&add, &out));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_and_forward_rules_for_the_bridge() {
        let r = rules("berth0", "10.88.0.0/16");
        assert_eq!(r.len(), 6);
        assert_eq!(r[2].1.join(" "), "-t nat -A BERTH-MASQ-berth0 -j MASQUERADE");
        assert_eq!(
            r[3].1.join(" "),
            "-t nat -A POSTROUTING -s 10.88.0.0/16 -m comment --comment berth berth0 -j BERTH-MASQ-berth0"
        );
        assert_eq!(r[3].0[2], "-C", "each is checked before it is added");
        assert_eq!(r[5].1[..5], ["-t", "filter", "-I", "FORWARD", "1"], "forwarding comes before any DROP");
        assert!(r.iter().all(|(check, add)| check.last() == add.last()), "the check is of the rule added");
    }

    #[test]
    fn only_jumps_for_another_subnet_are_stale() {
        let listed = "-P POSTROUTING ACCEPT\n\
             -A POSTROUTING -s 10.88.0.0/16 -m comment --comment \"berth berth0\" -j BERTH-MASQ-berth0\n\
             -A POSTROUTING -s 10.77.0.0/16 -m comment --comment \"berth berth0\" -j BERTH-MASQ-berth0\n\
             -A POSTROUTING -s 10.66.0.0/16 -m comment --comment \"berth other\" -j BERTH-MASQ-other\n";
        let stale = stale_jumps(listed, "berth0", "10.88.0.0/16");
        assert_eq!(stale.len(), 1);
        assert_eq!(
            stale[0],
            [
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-s",
                "10.77.0.0/16",
                "-m",
                "comment",
                "--comment",
                "berth berth0",
                "-j",
                "BERTH-MASQ-berth0"
            ]
        );
    }
}

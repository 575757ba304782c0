//! Container networking with Debian's CNI plugins and a real containerd:
//! bridge (the default), host and none. Traffic stays on this machine: it
//! goes only between the network namespaces these tasks get, and to the
//! node's 127.0.0.1; every loop is bounded.

use berth_proto::v1 as pb;
use berth_tests::*;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

fn stdout(agent: &Agent, job: &str, task: &str) -> String {
    std::fs::read_to_string(agent.task_path(job, task, "stdout.txt")).unwrap_or_default()
}

fn ip_of(t: &pb::TaskInfo) -> String {
    t.container_info.as_ref().map(|c| c.ip_address.clone()).unwrap_or_default()
}

/// An agent on a bridge and subnet it is told (so the test knows them).
async fn agent_on(bridge: &str, subnet: &str) -> Agent {
    let network = Some(format!("bridge = \"{bridge}\"\nsubnet = \"{subnet}\""));
    Agent::start(AgentOptions { network, ..AgentOptions::default() }).await
}

/// The names of the veths on a bridge (the host ends of its tasks' links).
fn veths_on(bridge: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show", "master", bridge]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_owned()))
        .collect()
}

/// Every iptables rule (all tables) that names one of these container ids.
fn rules_naming(ids: &[String]) -> Vec<String> {
    let out = Command::new("iptables-save").output().expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id)))
        .map(String::from)
        .collect()
}

fn container_id(t: &pb::TaskInfo) -> String {
    t.container_info.as_ref().map(|c| c.container_id.clone()).unwrap_or_default()
}

#[tokio::test]
async fn two_bridge_tasks_get_their_own_addresses_and_reach_each_other() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let serve =
        "/bin/sh -c 'mkdir -p /tmp/w && echo hello-from-a > /tmp/w/index.html && exec httpd -f -p 8000 -h /tmp/w'";
    c.run(task("net", "a", serve)).await.unwrap();
    let a = c.wait_state("net", "a", pb::TaskState::Running, Duration::from_secs(60)).await;
    let ip_a = ip_of(&a);
    assert!(ip_a.starts_with("10.201."), "A has an address on the agent's subnet: {a:?}");
    // busybox's wget is unusable here (static glibc); nc speaks HTTP/1.0 well enough.
    let fetch = format!(
        "/bin/sh -c 'ip -4 -o addr show eth0; for i in $(seq 50); do \
         printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc -w 2 {ip_a} 8000 | grep hello && exit 0; sleep 0.2; done; exit 1'"
    );
    let b = c.run_done(task("net", "b", &fetch)).await;
    let stderr = |t: &str| std::fs::read_to_string(agent.task_path("net", t, "stderr.txt")).unwrap_or_default();
    assert_eq!(
        b.exit_code,
        Some(0),
        "B reached A:\n{}\n{}\nA: {}",
        stdout(&agent, "net", "b"),
        stderr("b"),
        stderr("a")
    );
    let out = stdout(&agent, "net", "b");
    assert!(out.contains("hello-from-a"), "{out}");
    let ip_b = ip_of(&b);
    assert!(!ip_b.is_empty() && ip_b != ip_a, "{ip_a} and {ip_b}");
    assert!(out.contains(&format!("inet {ip_b}/24")), "B's eth0 has its address: {out}");
    c.terminate("net", "a").await;
}

#[tokio::test]
async fn a_published_port_is_reachable_from_the_node() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = "/bin/sh -c 'mkdir -p /tmp/w && echo published > /tmp/w/index.html && exec httpd -f -p 8000 -h /tmp/w'";
    let spec = with_options(task("pub", "a", serve), &format!("-p 127.0.0.1:{port}:8000"));
    c.run(spec).await.unwrap();
    c.wait_state("pub", "a", pb::TaskState::Running, Duration::from_secs(60)).await;
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(text) = http_get(port) {
            body = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(body.contains("published"), "{body:?}");
    // Another task cannot take the same host port.
    let clash = c.run_done(with_options(task("pub", "b", "/bin/true"), &format!("-p {port}:80"))).await;
    assert_eq!(failure_code(&clash), "NetworkSetupFailed", "{clash:?}");
    let f = clash.failure_info.unwrap();
    assert_eq!(f.category, pb::FailureCategory::UserError as i32);
    assert!(f.message.contains(&port.to_string()), "{}", f.message);
    c.terminate("pub", "a").await;
}

/// A minimal HTTP/1.0 GET of `/` on 127.0.0.1:port, bounded by timeouts.
fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test]
async fn a_bridge_task_cannot_reach_the_nodes_loopback() {
    let (bridge, subnet) = test_network();
    let gateway = subnet.replace(".0/24", ".1");
    let agent = agent_on(&bridge, &subnet).await;
    let mut c = agent.client().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and closes at once (so a client that got in ends), counting; bounded.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_secs(300);
        while std::time::Instant::now() < end {
            match listener.accept() {
                Ok(_) => drop(count.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let probe = format!(
        "/bin/sh -c 'nc -w 2 127.0.0.1 {port} </dev/null; echo loopback=$?; nc -w 2 {gateway} {port} </dev/null; \
         echo gateway=$?'"
    );
    let t = c.run_done(task("lo", "t", &probe)).await;
    let out = stdout(&agent, "lo", "t");
    assert_eq!(t.exit_code, Some(0), "{t:?}");
    assert!(out.contains("loopback=1") && out.contains("gateway=1"), "both refused: {out}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "no connection came");
    // The same probe on the node's network does reach it.
    let host = c.run_done(with_options(task("lo", "h", &probe), "--network host")).await;
    assert!(stdout(&agent, "lo", "h").contains("loopback=0"), "{host:?}");
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn network_modes_see_their_own_interfaces() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let list = "/bin/sh -c 'ls /sys/class/net | tr \"\\n\" \" \"'";
    let none = c.run_done(with_options(task("modes", "none", list), "--network none")).await;
    assert_eq!(none.exit_code, Some(0), "{none:?}");
    assert_eq!(stdout(&agent, "modes", "none").trim(), "lo");
    assert!(ip_of(&none).is_empty());
    let bridge = c.run_done(task("modes", "bridge", list)).await;
    assert_eq!(stdout(&agent, "modes", "bridge").trim(), "eth0 lo", "{bridge:?}");
    // `none` gets its own hosts file too, with the added entries.
    let hosts = "/bin/cat /etc/hosts";
    let t = c.run_done(with_options(task("modes", "none-hosts", hosts), "--network none --add-host db:10.1.2.3")).await;
    let out = stdout(&agent, "modes", "none-hosts");
    assert!(out.contains("127.0.0.1\tlocalhost") && out.ends_with("10.1.2.3\tdb\n"), "{t:?}\n{out}");
    let host = c.run_done(with_options(task("modes", "host", list), "--network host")).await;
    let seen = stdout(&agent, "modes", "host");
    assert!(seen.split_whitespace().count() > 2, "the node's interfaces: {seen} {host:?}");
    assert!(ip_of(&host).is_empty());

    // The policy can close the node's network to tasks.
    let closed = Agent::start(AgentOptions {
        extra_config: "[policy]\nallow_host_network = false\n".into(),
        ..Default::default()
    })
    .await;
    let err = closed.client().await.run(with_options(task("modes", "h", "/bin/true"), "--network host")).await;
    let err = err.expect_err("host network refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("allow_host_network"), "{}", err.message());
}

#[tokio::test]
async fn resolv_conf_and_hosts_follow_the_options() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let show = "/bin/sh -c 'cat /etc/resolv.conf /etc/hosts; hostname; echo x >> /etc/hosts || echo read-only'";
    let opts = "--hostname h1 --dns 192.0.2.53 --dns-search example.test --dns-option ndots:2 --add-host db:10.1.2.3";
    let t = c.run_done(with_options(task("dns", "b", show), opts)).await;
    assert_eq!(t.exit_code, Some(0), "{t:?}");
    let out = stdout(&agent, "dns", "b");
    let lines: Vec<&str> = out.lines().collect();
    for want in
        ["search example.test", "nameserver 192.0.2.53", "options ndots:2", "127.0.0.1\tlocalhost", "10.1.2.3\tdb"]
    {
        assert!(lines.contains(&want), "{want:?} in\n{out}");
    }
    assert!(lines.contains(&format!("{}\th1", ip_of(&t)).as_str()), "its own name and address:\n{out}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("nameserver")).count(), 1, "--dns replaces the node's: {out}");
    assert!(lines.contains(&"h1") && lines.contains(&"read-only"), "{out}");

    // On the node's network: the node's hosts file with the added entry.
    let t = c.run_done(with_options(task("dns", "h", show), "--network host --add-host db:10.1.2.3")).await;
    let out = stdout(&agent, "dns", "h");
    let node_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    let first = node_hosts.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(out.contains(first) && out.contains("10.1.2.3\tdb"), "{t:?}\n{out}");
}

/// A /30 has one address for tasks: the second task can only run if the
/// first one's address was released.
#[tokio::test]
async fn after_an_agent_sigkill_nothing_is_leaked_and_the_address_is_reused() {
    let (bridge, _) = test_network();
    let n: u32 = bridge.trim_start_matches("bt").parse().unwrap();
    // A bridge of its own: the bridge plugin refuses one with another subnet's address.
    let bridge = format!("{bridge}s");
    let mut agent = agent_on(&bridge, &format!("10.202.{n}.0/30")).await;
    let mut c = agent.client().await;
    c.run(task("kill", "a", "/bin/sleep 300")).await.unwrap();
    let a = c.wait_state("kill", "a", pb::TaskState::Running, Duration::from_secs(60)).await;
    let (ip_a, cid_a) = (ip_of(&a), container_id(&a));
    assert_eq!(ip_a, format!("10.202.{n}.2"));
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    // The container goes while the agent is away: recovery finds it gone.
    let ns = agent.namespace();
    for args in [
        &["task", "kill", "-s", "SIGKILL", &cid_a][..],
        &["task", "delete", "-f", &cid_a],
        &["container", "delete", &cid_a],
    ] {
        let _ = Command::new("ctr")
            .args(["--address", &env("BERTH_TEST_CONTAINERD_SOCKET"), "--namespace", &ns])
            .args(args)
            .output();
    }
    agent.spawn().await;
    let mut c = agent.client().await;
    let a = c.wait_done("kill", "a").await;
    assert_eq!(failure_code(&a), "ContainerLost", "{a:?}");
    let b = c.run_done(task("kill", "b", "/bin/sh -c 'ip -4 -o addr show eth0'")).await;
    assert_eq!(b.exit_code, Some(0), "{b:?}");
    assert_eq!(ip_of(&b), ip_a, "the one address was released and given again");
    c.wait_container_deleted("kill", "b").await;
    assert_eq!(veths_on(&bridge), Vec::<String>::new());
    assert_eq!(rules_naming(&[cid_a.clone(), container_id(&b)]), Vec::<String>::new());
    assert!(entries(&agent.network_run_dir().join("netns")).is_empty(), "no namespace left");
    assert!(entries(&agent.state_dir().join("network/attachments")).is_empty(), "no attachment left");
}

#[tokio::test]
async fn fifty_tasks_in_a_row_leave_no_veth_rule_or_address_behind() {
    let (bridge, subnet) = test_network();
    let agent = agent_on(&bridge, &subnet).await;
    let mut c = agent.client().await;
    let mut ids = Vec::new();
    // Each publishes a port too (portmap's rules), the same one in turn.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for i in 0..50 {
        let opts = format!("-p 127.0.0.1:{port}:80");
        let t = c.run_done(with_options(task("fifty", &format!("t{i}"), "/bin/true"), &opts)).await;
        let t = match t.exit_code {
            Some(0) => t,
            _ => panic!("{t:?}"),
        };
        ids.push(container_id(&t));
    }
    // run_done returns at COMPLETED; the container (and its network) goes right after.
    c.wait_container_deleted("fifty", "t49").await;
    assert_eq!(veths_on(&bridge), Vec::<String>::new());
    assert_eq!(rules_naming(&ids), Vec::<String>::new());
    assert!(entries(&agent.state_dir().join("network/attachments")).is_empty());
    let ipam = agent.state_dir().join("network/ipam").join("berth");
    let reserved: Vec<String> = entries(&ipam).into_iter().filter(|e| e.starts_with("10.")).collect();
    assert!(reserved.is_empty(), "host-local holds {reserved:?}");
    assert!(entries(&agent.network_run_dir().join("netns")).is_empty());
    assert!(entries(&agent.network_run_dir().join("files")).is_empty());
}

/// `[network] cni_conf_dir`: the operator's configuration list replaces the
/// agent's (here a bridge and subnet of its own, written by the test).
#[tokio::test]
async fn an_operators_conflist_is_used() {
    let (bridge, _) = test_network();
    let n: u32 = bridge.trim_start_matches("bt").parse().unwrap();
    let bridge = format!("{bridge}c");
    let conf = tempfile::tempdir().unwrap();
    let ipam = conf.path().join("ipam");
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "operators",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.205.{n}.0/24")}]], "dataDir": ipam}},
            {"type": "firewall"}
        ]
    });
    std::fs::write(conf.path().join("10-operators.conflist"), list.to_string()).unwrap();
    let network = Some(format!("cni_conf_dir = \"{}\"", conf.path().display()));
    let agent = Agent::start(AgentOptions { network, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let t = c.run_done(task("conf", "t", "/bin/sh -c 'ip -4 -o addr show eth0'")).await;
    assert_eq!(t.exit_code, Some(0), "{t:?}");
    let ip = ip_of(&t);
    assert!(ip.starts_with(&format!("10.205.{n}.")), "{ip}");
    assert!(stdout(&agent, "conf", "t").contains(&format!("inet {ip}/24")));
    c.wait_container_deleted("conf", "t").await;
    assert_eq!(veths_on(&bridge), Vec::<String>::new());
    let held: Vec<String> = entries(&ipam.join("operators")).into_iter().filter(|e| e.starts_with("10.")).collect();
    assert!(held.is_empty(), "released: {held:?}");
}

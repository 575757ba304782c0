//! Operating the agent: TLS and mutual TLS on TCP (with certificates made here
//! by rcgen), SIGHUP certificate reload, request limits, systemd notifications,
//! the metrics endpoint.

use berth_tests::v1 as pb;
use berth_tests::v1::node_agent_client::NodeAgentClient;
use berth_tests::{binary, task, Agent, AgentOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    Ca { cert: p.self_signed(&key).unwrap(), key }
}

/// A certificate signed by `ca`: PEM of the certificate and of its key.
fn leaf(ca: &Ca, cn: &str, server: bool, expired: bool) -> (String, String) {
    let sans = if server { vec!["127.0.0.1".to_string()] } else { vec![] };
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A client over TLS trusting `ca_pem`, presenting `client` when given.
async fn tls_client(
    port: u16,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<NodeAgentClient<tonic::transport::Channel>, String> {
    let tls = berth_proto::ClientTls {
        ca: Some(ca_pem.as_bytes().to_vec()),
        cert_and_key: client.map(|(c, k)| (c.as_bytes().to_vec(), k.as_bytes().to_vec())),
    };
    let ch =
        berth_proto::connect_tls(&format!("https://127.0.0.1:{port}"), Some(tls)).await.map_err(|e| e.to_string())?;
    Ok(NodeAgentClient::new(ch))
}

/// A call's outcome: Ok, or the status code (a refused handshake shows as
/// a failed connect or UNAVAILABLE/UNKNOWN).
async fn run_one(port: u16, ca_pem: &str, client: Option<&(String, String)>, task_id: &str) -> Result<(), String> {
    let mut c = tls_client(port, ca_pem, client).await?;
    c.run_task(pb::RunTaskRequest { task: Some(task("tls", task_id, "/bin/true")) })
        .await
        .map(drop)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn mutual_tls_admits_only_the_schedulers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (ca("berth test CA"), ca("another CA"));
    let ca_pem = ca1.cert.pem();
    let server = leaf(&ca1, "node", true, false);
    let good = leaf(&ca1, "scheduler", false, false);
    let other_ca = leaf(&ca2, "scheduler", false, false);
    let expired = leaf(&ca1, "scheduler", false, true);
    let intruder = leaf(&ca1, "intruder", false, false);
    let port = free_port();
    let api = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\nallowed_subjects = [\"CN=scheduler\"]\n",
        write(dir.path(), "server.pem", &server.0).display(),
        write(dir.path(), "server.key", &server.1).display(),
        write(dir.path(), "ca.pem", &ca_pem).display(),
    );
    let agent = Agent::start(AgentOptions {
        listen: Some(format!("127.0.0.1:{port}")),
        api_extra: api,
        ..AgentOptions::default()
    })
    .await;

    run_one(port, &ca_pem, Some(&good), "good").await.expect("the scheduler's certificate is admitted");
    for (name, client) in [("no certificate", None), ("another CA", Some(&other_ca)), ("expired", Some(&expired))] {
        let err = run_one(port, &ca_pem, client, "refused").await.expect_err(name);
        assert!(!err.starts_with("PermissionDenied"), "{name}: refused at the handshake, not after: {err}");
    }
    let err = run_one(port, &ca_pem, Some(&intruder), "intruder").await.unwrap_err();
    assert!(err.starts_with("PermissionDenied") && err.contains("intruder"), "{err}");
    // Health is behind the same check.
    let tls = berth_proto::ClientTls {
        ca: Some(ca_pem.as_bytes().to_vec()),
        cert_and_key: Some((intruder.0.as_bytes().to_vec(), intruder.1.as_bytes().to_vec())),
    };
    let ch = berth_proto::connect_tls(&format!("https://127.0.0.1:{port}"), Some(tls)).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert_eq!(health.unwrap_err().code(), Code::PermissionDenied);
    // A client that does not trust the agent's CA refuses it too.
    assert!(run_one(port, &ca2.cert.pem(), Some(&good), "distrust").await.is_err());

    let mut c = tls_client(port, &ca_pem, Some(&good)).await.unwrap();
    let tasks = c.list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner().tasks;
    assert_eq!(tasks.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(), ["good"], "no refused task was created");
    drop(agent);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_tasks_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (ca("old CA"), ca("new CA"));
    let port = free_port();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let server = leaf(&old_ca, "node", true, false);
    std::fs::write(&cert, &server.0).unwrap();
    std::fs::write(&key, &server.1).unwrap();
    let agent = Agent::start(AgentOptions {
        listen: Some(format!("127.0.0.1:{port}")),
        api_extra: format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ninsecure_loopback = true\n",
            cert.display(),
            key.display()
        ),
        ..AgentOptions::default()
    })
    .await;
    let mut c = tls_client(port, &old_ca.cert.pem(), None).await.unwrap();
    c.run_task(pb::RunTaskRequest { task: Some(task("hup", "sleeper", "/bin/sh -c 'sleep 3; echo done'")) })
        .await
        .unwrap();
    assert!(tls_client(port, &new_ca.cert.pem(), None).await.is_err(), "the new CA is not trusted yet");

    let rotated = leaf(&new_ca, "node", true, false);
    std::fs::write(&cert, &rotated.0).unwrap();
    std::fs::write(&key, &rotated.1).unwrap();
    let pid = nix::unistd::Pid::from_raw(agent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut c = loop {
        if let Ok(mut c) = tls_client(port, &new_ca.cert.pem(), None).await {
            if c.get_node(pb::GetNodeRequest {}).await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The task started before the reload finishes normally.
    let done = loop {
        let t = c.get_task(pb::GetTaskRequest { job_id: "hup".into(), task_id: "sleeper".into() }).await.unwrap();
        let t = t.into_inner();
        if t.state == pb::TaskState::Completed as i32 {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.exit_code, Some(0), "{done:?}");
}

#[tokio::test]
async fn non_loopback_tcp_without_tls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "agent.toml", "[api]\nlisten = \"0.0.0.0:7999\"\n");
    let out = std::process::Command::new(binary("berth-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address") && err.contains("tls_cert"), "{err}");
}

#[tokio::test]
async fn oversized_requests_are_refused_and_the_agent_serves_on() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let cases: Vec<(&str, pb::TaskSpec, Code)> = vec![
        ("5 MiB message", task("big", "t", &"x".repeat(5 << 20)), Code::ResourceExhausted),
        (
            "40 KiB command line",
            task("big", "t", &format!("/bin/echo {}", "x".repeat(40 << 10))),
            Code::InvalidArgument,
        ),
        (
            "2000 variables",
            {
                let mut t = task("big", "t", "/bin/true");
                t.environment = (0..2000).map(|i| (format!("V{i}"), "x".into())).collect();
                t
            },
            Code::InvalidArgument,
        ),
        (
            "long run options",
            {
                let mut t = task("big", "t", "/bin/true");
                t.container.as_mut().unwrap().run_options = "--rm ".repeat(3000);
                t
            },
            Code::InvalidArgument,
        ),
    ];
    for (name, spec, code) in cases {
        let err = c.run(spec).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
    }
    let done = c.run_done(task("big", "fine", "/bin/true")).await;
    assert_eq!(done.exit_code, Some(0));
    let list = c.inner.list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.tasks.len(), 1, "only the fine task exists");
}

#[tokio::test]
async fn systemd_is_told_ready_and_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), sock_path.display().to_string()),
        ("WATCHDOG_USEC".to_string(), "200000".to_string()),
    ];
    let agent = Agent::start(AgentOptions { env, ..AgentOptions::default() }).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m: &String| m.contains("READY=1")) && seen.iter().any(|m| m.contains("WATCHDOG=1"))) {
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    drop(agent);
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        if stopping {
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on shutdown: {seen:?}");
}

use berth_tests::scrape;

#[tokio::test]
async fn metrics_count_tasks_rpcs_and_start_latency_and_hold_no_secrets() {
    let port = free_port();
    let agent = Agent::start(AgentOptions {
        extra_config: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..AgentOptions::default()
    })
    .await;
    let mut c = agent.client().await;
    for i in 0..3 {
        c.run_done(task("metrics", &format!("t{i}"), "/bin/true")).await;
    }
    // A task carrying a registry password (for an image that is not there).
    let mut secret = berth_tests::task_on(
        "metrics",
        "secret",
        "/bin/true",
        format!("{}/berth-test/none:x", berth_tests::env("BERTH_TEST_REGISTRY")),
    );
    secret.container.as_mut().unwrap().registry = Some(pb::RegistryCredentials {
        username: "u".into(),
        password: "hunter2-metrics".into(),
        identity_token: String::new(),
    });
    c.run_done(secret).await;
    let _ = c.run(task("metrics", "t0", "/bin/true")).await; // ALREADY_EXISTS
                                                             // A slot is free once the task's container and network are gone, just after COMPLETED.
    let mut text = scrape(port);
    for _ in 0..100 {
        if text.contains("berth_slots_used 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape(port);
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for want in [
        "berth_tasks{state=\"COMPLETED\"} 4",
        "berth_task_start_latency_seconds_count 3",
        "berth_rpc_requests_total{method=\"RunTask\",code=\"Ok\"} 4",
        "berth_rpc_requests_total{method=\"RunTask\",code=\"AlreadyExists\"} 1",
        "berth_slots_used 0",
        "berth_image_pull_bytes_total",
        "berth_containerd_reconnects_total 0",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert!(!text.contains("hunter2"), "no secret in metrics");
    // GetNode carries the node root's disk space.
    let node = c.inner.get_node(pb::GetNodeRequest {}).await.unwrap().into_inner();
    let disk = node.node_root_disk.expect("node root disk");
    assert!(disk.total_bytes > 0 && disk.free_bytes <= disk.total_bytes, "{disk:?}");
    assert_eq!(disk.path, agent.root().display().to_string());
    assert!(!agent.log().contains("hunter2-metrics"), "no secret in the log");
}

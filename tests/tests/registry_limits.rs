//! What a registry can make the agent do, against real registries: no
//! manifest larger than `max_manifest_bytes` is read, no layer beyond the
//! size its descriptor declares or beyond `max_layer_bytes` decompressed is
//! stored (and nothing of it is left behind), and basic credentials never go
//! to a token service over plain HTTP.

use berth_tests::{env, failure_code, task_on, Agent, AgentOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Pushes a one-layer image of `mib` MiB of zeros (gzipped) to the plain test
/// registry; returns the layer's digest.
fn push(reference: &str, mib: u32, pad: usize, size_delta: i64) -> String {
    push_as(reference, mib, pad, size_delta, "gzip")
}

/// [`push`] with the layer compressed by `compression` (gzip, zstd).
fn push_as(reference: &str, mib: u32, pad: usize, size_delta: i64, compression: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("probe/push-image.sh");
    let out = Command::new(script)
        .args([&env("BERTH_TEST_REGISTRY"), reference, &mib.to_string(), &pad.to_string(), &size_delta.to_string()])
        .arg(compression)
        .output()
        .unwrap();
    assert!(out.status.success(), "push-image.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `ctr` against the test containerd, in the agent's namespace.
fn ctr(agent: &Agent, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .args(["--address", &env("BERTH_TEST_CONTAINERD_SOCKET"), "--namespace", &agent.namespace()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing of a refused layer is left: no content, no ingest, no lease, no snapshot.
async fn nothing_left(agent: &Agent, layer: &str) {
    // Leases are deleted in the background just after the pull ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leases = ctr(agent, &["leases", "ls", "-q"]);
        if leases.trim().is_empty() || Instant::now() > deadline {
            assert_eq!(leases.trim(), "", "a lease was left behind");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!ctr(agent, &["content", "ls", "-q"]).contains(layer), "the refused layer is in the content store");
    assert_eq!(ctr(agent, &["content", "active"]).lines().count(), 1, "an ingest was left (only the header)");
    assert_eq!(ctr(agent, &["snapshots", "ls"]).lines().count(), 1, "a snapshot was left (only the header)");
}

fn image(repo: &str) -> String {
    format!("{}/{repo}", env("BERTH_TEST_REGISTRY"))
}

#[tokio::test]
async fn a_decompression_bomb_fails_the_pull_and_leaves_nothing() {
    let extra = "max_layer_bytes = 8388608\n";
    let agent = Agent::start(AgentOptions { registries_extra: extra.into(), ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    // 64 MiB of zeros: about 64 KiB gzipped, eight times the limit unpacked.
    let layer = push("limits/bomb:1", 64, 0, 0);
    let done = c.run_done(task_on("limits", "bomb", "/zeros", image("limits/bomb:1"))).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    let message = done.failure_info.unwrap().message;
    assert!(message.contains("max_layer_bytes"), "{message}");
    nothing_left(&agent, &layer).await;
    // The same in zstd.
    let layer = push_as("limits/zbomb:1", 64, 0, 0, "zstd");
    let done = c.run_done(task_on("limits", "zbomb", "/zeros", image("limits/zbomb:1"))).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    assert!(done.failure_info.unwrap().message.contains("max_layer_bytes"));
    nothing_left(&agent, &layer).await;
    // Within the limit, the same kind of image is pulled.
    push("limits/small:1", 4, 0, 0);
    let done = c.run_done(task_on("limits", "small", "/zeros", image("limits/small:1"))).await;
    assert_ne!(failure_code(&done), "ImagePullFailed", "{done:?}");
}

#[tokio::test]
async fn a_layer_larger_than_declared_is_cut_off() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let layer = push("limits/liar:1", 4, 0, -100);
    let done = c.run_done(task_on("limits", "liar", "/zeros", image("limits/liar:1"))).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    let message = done.failure_info.unwrap().message;
    assert!(message.contains("declares"), "{message}");
    nothing_left(&agent, &layer).await;
}

#[tokio::test]
async fn manifests_larger_than_the_cap_are_not_read() {
    let extra = "max_manifest_bytes = 2048\n";
    let agent = Agent::start(AgentOptions { registries_extra: extra.into(), ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    push("limits/fat:1", 1, 4096, 0);
    let done = c.run_done(task_on("limits", "fat", "/zeros", image("limits/fat:1"))).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    let message = done.failure_info.unwrap().message;
    assert!(message.contains("larger than 2048 bytes") && message.contains("max_manifest_bytes"), "{message}");
    // A manifest under the cap still is.
    push("limits/thin:1", 1, 0, 0);
    let done = c.run_done(task_on("limits", "thin", "/zeros", image("limits/thin:1"))).await;
    assert_ne!(failure_code(&done), "ImagePullFailed", "{done:?}");
}

#[tokio::test]
async fn basic_credentials_never_go_to_a_plain_http_token_service() {
    // A token service on loopback that records every request it gets.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let token_port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 4096];
                        let n = s.read(&mut buf).unwrap_or(0);
                        seen.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                        let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    // A real registry over TLS that sends clients to that service.
    let dir = tempfile::tempdir().unwrap();
    let tls = PathBuf::from(env("BERTH_TEST_TLS_CA")).parent().unwrap().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: \
         127.0.0.1:{port}\n  tls:\n    certificate: {t}/server.pem\n    key: {t}/server-key.pem\nauth:\n  token:\n    \
         realm: http://127.0.0.1:{token_port}/token\n    service: berth-test\n    issuer: berth-test\n    \
         rootcertbundle: {t}/ca.pem\n",
        d = dir.path().display(),
        t = tls.display()
    );
    std::fs::write(dir.path().join("reg.yml"), cfg).unwrap();
    let mut registry = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("reg.yml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the token-auth registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task_on("realm", "t", "/bin/true", format!("127.0.0.1:{port}/any/image:1"));
    spec.container.as_mut().unwrap().registry = Some(berth_tests::v1::RegistryCredentials {
        username: "user".into(),
        password: "realm-secret-pw".into(),
        identity_token: String::new(),
    });
    let done = c.run_done(spec).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = registry.kill();
    let _ = registry.wait();
    server.join().unwrap();
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    let message = done.failure_info.unwrap().message;
    assert!(message.contains("plain HTTP") && !message.contains("realm-secret-pw"), "{message}");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|r| !r.to_lowercase().contains("authorization")), "credentials were sent: {seen:?}");
    assert!(!agent.log().contains("realm-secret-pw"));
}

#[tokio::test]
async fn registry_servers_are_matched_as_users_write_them() {
    // The TLS test registry's credentials under a scheme and a /v2/ path, as
    // `docker login` and Batch users write servers.
    let password = std::fs::read_to_string(env("BERTH_TEST_REGISTRY_PASSWORD_FILE")).unwrap();
    let extra = format!(
        "[[registries.credentials]]\nserver = \"https://{}/v2/\"\nusername = \"{}\"\npassword = \"{}\"\n",
        env("BERTH_TEST_TLS_REGISTRY"),
        env("BERTH_TEST_REGISTRY_USER"),
        password.trim_end()
    );
    let agent = Agent::start(AgentOptions { extra_config: extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let done = c.run_done(task_on("servers", "tls", "/bin/true", env("BERTH_TEST_TLS_IMAGE_BUSYBOX"))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    // A server with a path that is not the API's is refused by name.
    let req = berth_tests::v1::ConfigureContainersRequest {
        prefetch_images: vec![],
        registries: vec![berth_tests::v1::ContainerRegistry {
            server: "myreg.example/team".into(),
            credentials: Some(berth_tests::v1::RegistryCredentials {
                username: "u".into(),
                password: "p".into(),
                identity_token: String::new(),
            }),
        }],
    };
    let err = c.inner.configure_containers(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("the path /team"), "{}", err.message());
}

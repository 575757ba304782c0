//! Image pulls against the real local registries started by scripts/test: TLS
//! with basic auth, multi-architecture indexes, digest pinning, shared
//! downloads, and images moving both ways between berth and `ctr`.

use berth_tests::{binary, env, failure_code, image, task_on, v1 as pb, Agent, AgentOptions};
use std::collections::HashMap;
use std::process::Command;

fn password() -> String {
    std::fs::read_to_string(env("BERTH_TEST_REGISTRY_PASSWORD_FILE")).unwrap().trim_end().to_owned()
}

fn ctr(namespace: &str, args: &[&str]) -> std::process::Output {
    Command::new("ctr")
        .args(["--address", &env("BERTH_TEST_CONTAINERD_SOCKET"), "--namespace", namespace])
        .args(args)
        .output()
        .expect("run ctr")
}

#[tokio::test]
async fn tls_registry_with_basic_auth_and_no_leaked_password() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let tls_image = env("BERTH_TEST_TLS_IMAGE_BUSYBOX");
    let creds = |password: String| pb::RegistryCredentials {
        username: env("BERTH_TEST_REGISTRY_USER"),
        password,
        identity_token: String::new(),
    };

    // Wrong password: ImagePullFailed saying unauthorized.
    let wrong = "Wrong-Passw0rd-xyzzy".to_string();
    let mut spec = task_on("tlsjob", "wrong", "/bin/true", tls_image.clone());
    spec.container.as_mut().unwrap().registry = Some(creds(wrong.clone()));
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    assert!(done.failure_info.as_ref().unwrap().message.contains("unauthorized"), "{done:?}");

    // No credentials: unauthorized too, and the message says none were given.
    let spec = task_on("tlsjob", "anonymous", "/bin/true", tls_image.clone());
    let done = c.run_done(spec).await;
    assert!(done.failure_info.as_ref().unwrap().message.contains("no credentials"), "{done:?}");

    // The right password pulls over TLS (CA from the config) and runs.
    let mut spec = task_on("tlsjob", "right", "/bin/echo pulled-over-tls", tls_image.clone());
    spec.container.as_mut().unwrap().registry = Some(creds(password()));
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("tlsjob", "right", "stdout.txt").await.unwrap(), "pulled-over-tls\n");

    // The passwords appear nowhere: log, task records, events.
    let log = agent.log();
    for secret in [password(), wrong] {
        assert!(!log.contains(&secret), "a password is in the agent log");
        for id in ["wrong", "right"] {
            let t = c.get("tlsjob", id).await.unwrap();
            assert!(!format!("{t:?}").contains(&secret), "a password is in GetTask's answer");
        }
        let db = std::fs::read(agent.state_dir().join("berth.db")).unwrap();
        let wal = std::fs::read(agent.state_dir().join("berth.db-wal")).unwrap_or_default();
        let needle = secret.as_bytes();
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "a password is in the state database");
        }
    }
}

#[tokio::test]
async fn berthctl_pull_with_password_on_stdin() {
    use std::io::Write;
    let agent = Agent::start(AgentOptions::default()).await;
    let mut child = Command::new(binary("berthctl"))
        .args(["--addr", &agent.addr(), "pull", &env("BERTH_TEST_TLS_IMAGE_BUSYBOX")])
        .args(["--username", &env("BERTH_TEST_REGISTRY_USER"), "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{}\n", password()).as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pulled"), "{out:?}");
    // Now on the node: a task with pull policy NEVER runs it.
    let mut c = agent.client().await;
    let mut spec = task_on("pulljob", "never", "/bin/true", env("BERTH_TEST_TLS_IMAGE_BUSYBOX"));
    spec.container.as_mut().unwrap().pull_policy = pb::PullPolicy::Never as i32;
    assert_eq!(c.run_done(spec).await.exit_code, Some(0));
    // A wrong password: PERMISSION_DENIED from PullImage, exit 1.
    let mut child = Command::new(binary("berthctl"))
        .args(["--addr", &agent.addr(), "pull", &image("layers_b")])
        .args(["--username", "nobody", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"irrelevant\n").unwrap();
    let out = child.wait_with_output().unwrap();
    // The plain registry has no auth: any credentials pull.
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn multi_arch_index_runs_the_nodes_entry_or_fails_clearly() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let spec = task_on("archjob", "multi", "/bin/cat /etc/berth-arch", image("multiarch"));
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("archjob", "multi", "stdout.txt").await.unwrap(), "amd64");

    let spec = task_on("archjob", "armonly", "/bin/true", image("armonly"));
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "ImagePlatformMismatch", "{done:?}");
    let message = done.failure_info.unwrap().message;
    assert!(message.contains("linux/arm64/v8") && message.contains("linux/s390x"), "{message}");
}

#[tokio::test]
async fn digest_pinned_reference_runs() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let spec = task_on("digestjob", "pinned", "/bin/echo pinned", env("BERTH_TEST_IMAGE_BUSYBOX_DIGEST"));
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let images = String::from_utf8_lossy(&ctr(&agent.namespace(), &["images", "ls", "-q"]).stdout).into_owned();
    assert!(images.contains("@sha256:"), "{images}");
}

/// Blob GETs per digest for `repo` in the plain registry's access log.
fn blob_gets(repo: &str) -> HashMap<String, usize> {
    let log = std::fs::read_to_string(env("BERTH_TEST_REGISTRY_LOG")).unwrap();
    let needle = format!("\"GET /v2/{repo}/blobs/");
    let mut counts = HashMap::new();
    for line in log.lines() {
        if let Some(rest) = line.split(&needle).nth(1) {
            let digest = rest.split([' ', '"']).next().unwrap_or_default().to_owned();
            *counts.entry(digest).or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn ten_tasks_on_a_new_image_fetch_each_blob_once() {
    let agent = Agent::start(AgentOptions { task_slots: 10, ..Default::default() }).await;
    let mut c = agent.client().await;
    let img = image("layers_a");
    let repo = img.split_once('/').unwrap().1.rsplit_once(':').unwrap().0.to_owned();
    // Counted from now: the environment may have served this repository before.
    let before = blob_gets(&repo);
    for i in 0..10 {
        let spec =
            task_on("dedupjob", &format!("t{i}"), "/bin/sh -c 'test -s /data/one && test -s /data/two'", img.clone());
        c.run(spec).await.unwrap();
    }
    for i in 0..10 {
        let t = c.wait_done("dedupjob", &format!("t{i}")).await;
        assert_eq!(t.exit_code, Some(0), "{t:?}");
    }
    let mut gets = blob_gets(&repo);
    for (digest, n) in before {
        *gets.get_mut(&digest).unwrap() -= n;
    }
    gets.retain(|_, n| *n > 0);
    // Config + 3 layers, each fetched exactly once.
    assert_eq!(gets.len(), 4, "{gets:?}");
    assert!(gets.values().all(|n| *n == 1), "a blob was fetched more than once: {gets:?}");
}

#[tokio::test]
async fn images_move_both_ways_between_berth_and_ctr() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let ns = agent.namespace();
    // Pulled by berth, run by ctr.
    let img = image("entrypoint");
    let spec = task_on("interop", "berth-pulls", "/bin/true", img.clone());
    assert_eq!(c.run_done(spec).await.exit_code, Some(0));
    let cid = format!("ctr-{ns}");
    let out = ctr(&ns, &["run", "--rm", "--fifo-dir", &env("BERTH_TEST_FIFO_DIR"), &img, &cid]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-entrypoint default-cmd\n");
    // Pulled by ctr, run by berth without pulling.
    let img = image("workdir");
    let out = ctr(&ns, &["images", "pull", "--plain-http", &img]);
    assert!(out.status.success(), "{out:?}");
    let mut spec = task_on("interop", "ctr-pulls", "", img);
    spec.container.as_mut().unwrap().pull_policy = pb::PullPolicy::Never as i32;
    spec.container.as_mut().unwrap().working_directory = pb::WorkingDirectory::ImageDefault as i32;
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(c.read("interop", "ctr-pulls", "stdout.txt").await.unwrap(), "/app\n");
}

#[tokio::test]
async fn prefetch_remove_and_garbage_collection() {
    use std::time::{Duration, Instant};
    // Collection always wanted (1 % high-water mark), never satisfied (0 % low).
    let agent = Agent::start(AgentOptions { image_gc: Some((1, 0)), ..Default::default() }).await;
    let mut c = agent.client().await;
    let prefetched = image("busybox");
    let req = pb::ConfigureContainersRequest { prefetch_images: vec![prefetched.clone()], registries: vec![] };
    c.inner.configure_containers(req).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = c.inner.get_node(pb::GetNodeRequest {}).await.unwrap().into_inner();
        assert_eq!(n.prefetch.len(), 1);
        if n.prefetch[0].state == "READY" {
            assert_eq!(n.prefetch[0].image, prefetched);
            break;
        }
        assert!(n.prefetch[0].state == "PENDING" && Instant::now() < deadline, "{:?}", n.prefetch);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An image used once, and one in use by a running task.
    let spec = task_on("gcjob", "once", "/bin/true", image("entrypoint"));
    assert_eq!(c.run_done(spec).await.exit_code, Some(0));
    let spec = task_on("gcjob", "busy", "/bin/sleep 300", image("workdir"));
    c.run(spec).await.unwrap();
    c.wait_state("gcjob", "busy", pb::TaskState::Running, Duration::from_secs(60)).await;

    let err = c.inner.remove_image(pb::RemoveImageRequest { reference: image("workdir") }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let names = |c: &mut berth_tests::Client| {
        let mut c = c.clone();
        async move {
            let l = c.inner.list_images(pb::ListImagesRequest {}).await.unwrap().into_inner().images;
            l.into_iter().map(|i| i.name).collect::<Vec<_>>()
        }
    };
    // The collector removes the unused image, keeps the prefetched and the used ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    while names(&mut c).await.contains(&image("entrypoint")) {
        assert!(Instant::now() < deadline, "the unused image was not collected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = names(&mut c).await;
    assert!(left.contains(&prefetched) && left.contains(&image("workdir")), "{left:?}");
    assert!(agent.log().contains("image garbage-collected"));

    // Removing: unknown → NOT_FOUND; once the task is done, the image goes.
    let err = c.inner.remove_image(pb::RemoveImageRequest { reference: image("entrypoint") }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let kill = pb::TerminateTaskRequest { job_id: "gcjob".into(), task_id: "busy".into(), grace_period: None };
    c.inner.terminate_task(kill).await.unwrap();
    c.wait_done("gcjob", "busy").await;
    c.inner.remove_image(pb::RemoveImageRequest { reference: image("workdir") }).await.unwrap();
    assert!(!names(&mut c).await.contains(&image("workdir")));
}

#[tokio::test]
async fn pull_image_streams_progress_per_layer() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let req = pb::PullImageRequest { reference: image("layers_c"), credentials: None };
    let mut stream = c.inner.pull_image(req).await.unwrap().into_inner();
    let mut messages = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        messages.push(m);
    }
    let last = messages.last().unwrap();
    assert!(last.done, "{messages:?}");
    assert_eq!(last.layers.len(), 3, "{last:?}");
    assert!(last.bytes_total > 4 << 20, "{last:?}");
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(last.layers.iter().all(|l| l.bytes_done == l.bytes_total && l.digest.starts_with("sha256:")));
    assert!(messages.iter().all(|m| m.bytes_done <= m.bytes_total));
    // Unknown image: NOT_FOUND from the registry.
    let req = pb::PullImageRequest {
        reference: format!("{}/berth-test/nope:1", env("BERTH_TEST_REGISTRY")),
        credentials: None,
    };
    let err = match c.inner.pull_image(req).await {
        Ok(resp) => resp.into_inner().message().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn prefetch_list_from_the_config_file() {
    use std::time::{Duration, Instant};
    let agent = Agent::start(AgentOptions { prefetch: vec![image("workdir")], ..Default::default() }).await;
    let mut c = agent.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = c.inner.get_node(pb::GetNodeRequest {}).await.unwrap().into_inner();
        if n.prefetch.first().is_some_and(|p| p.state == "READY") {
            break;
        }
        assert!(Instant::now() < deadline, "prefetch not ready: {:?}", n.prefetch);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let images = c.inner.list_images(pb::ListImagesRequest {}).await.unwrap().into_inner().images;
    assert!(images.iter().any(|i| i.name == image("workdir") && i.prefetched), "{images:?}");
}

#[tokio::test]
async fn node_credentials_from_the_config_file() {
    let agent = Agent::start(AgentOptions { tls_registry_credentials: true, ..Default::default() }).await;
    let mut c = agent.client().await;
    let spec = task_on("nodecreds", "t", "/bin/true", env("BERTH_TEST_TLS_IMAGE_BUSYBOX"));
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert!(!agent.log().contains(&password()), "the password is in the agent log");
}

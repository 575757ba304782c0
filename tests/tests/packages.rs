//! Application packages against a real agent and containerd: archives
//! served by a test server of the test's own on 127.0.0.1 (which counts the
//! downloads), unpacked once per node, shared read-only, announced as
//! `AZ_BATCH_APP_PACKAGE_*`, removed when nothing references them.

use berth_tests::archive::{tar_gz, tar_gz_with_fifo, zip, Entry};
use berth_tests::blob::{assert_no_secret, Answer, Sink};
use berth_tests::v1 as pb;
use berth_tests::{as_auto_user, entries, failure_code, host_task, task, Agent, AgentOptions, Client};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use tonic::Code;

fn reference(id: &str, version: &str, url: &str) -> pb::ApplicationPackageReference {
    pb::ApplicationPackageReference { application_id: id.into(), version: version.into(), url: url.into() }
}

async fn configure(
    c: &mut Client,
    packages: Vec<pb::ApplicationPackageReference>,
) -> Result<Vec<pb::ApplicationPackageInfo>, tonic::Status> {
    let req = pb::ConfigureApplicationPackagesRequest { packages };
    c.inner.configure_application_packages(req).await.map(|r| r.into_inner().packages)
}

async fn wait_requests(sink: &Sink, path: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count("GET", path) < n {
        assert!(Instant::now() < deadline, "no GET {path} reached the test server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ten_tasks_share_one_download_of_a_read_only_package() {
    let sink = Sink::start(100).await;
    let pkg = tar_gz(&[
        Entry { name: "bin/hello.sh", mode: 0o755, data: b"#!/bin/sh\necho hello from the package\n" },
        Entry { name: "share/data.txt", mode: 0o600, data: b"data\n" },
    ]);
    sink.file("/apps/tool.tar.gz", &pkg);
    let agent = Agent::start(AgentOptions { task_slots: 10, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let dir = agent.root().join("applications/Tool/1.0");
    // Both of Batch's Linux spellings; the package cannot be changed, not
    // even by an admin task (root in its container).
    let cmd = "/bin/sh -c '$AZ_BATCH_APP_PACKAGE_tool_1_0/bin/hello.sh; cat $AZ_BATCH_APP_PACKAGE_Tool_1_0/share/data.txt; \
               echo $AZ_BATCH_APP_PACKAGE_tool_1_0; touch $AZ_BATCH_APP_PACKAGE_tool_1_0/x 2>/dev/null && echo writable \
               || echo read-only'";
    let url = sink.url("/apps/tool.tar.gz");
    for i in 0..10 {
        let mut spec = task("apps", &format!("t{i}"), cmd);
        spec.application_packages = vec![reference("Tool", "1.0", &url)];
        if i == 0 {
            spec = as_auto_user(spec, pb::AutoUserScope::Pool, true);
        }
        c.run(spec).await.unwrap();
    }
    let want = format!("hello from the package\ndata\n{}\nread-only\n", dir.display());
    let mut shown = String::new();
    for i in 0..10 {
        let done = c.wait_done("apps", &format!("t{i}")).await;
        assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "t{i}: {done:?}");
        assert_eq!(c.read("apps", &format!("t{i}"), "stdout.txt").await.unwrap(), want, "t{i}");
        shown.push_str(&format!("{done:?}"));
    }
    assert_eq!(sink.count("GET", "/apps/tool.tar.gz"), 1, "one download for ten tasks");
    // Unpacked with the agent's modes: root's, readable by every task.
    let run = std::fs::metadata(dir.join("bin/hello.sh")).unwrap();
    assert_eq!((run.mode() & 0o7777, run.uid()), (0o755, 0));
    assert_eq!(std::fs::metadata(dir.join("share/data.txt")).unwrap().mode() & 0o7777, 0o644);
    // A task that does not reference it is not told of it.
    let other = c.run_done(task("apps", "none", "/bin/sh -c 'env | grep -c AZ_BATCH_APP_PACKAGE; true'")).await;
    assert_eq!(other.exit_code, Some(0), "{other:?}");
    assert_eq!(c.read("apps", "none", "stdout.txt").await.unwrap(), "0\n");
    // GetNode lists it: a task package, no task not completed references it.
    let node = c.node().await;
    let p = &node.application_packages[0];
    assert_eq!(
        (p.application_id.as_str(), p.version.as_str(), p.node_level, p.task_references),
        ("Tool", "1.0", false, 0),
        "{p:?}"
    );
    assert_eq!(p.environment_variables, ["AZ_BATCH_APP_PACKAGE_Tool_1_0", "AZ_BATCH_APP_PACKAGE_tool_1_0"]);
    assert_eq!(p.path, dir.display().to_string());
    assert!(shown.contains("tool.tar.gz?<redacted>"), "{shown}");
    assert_no_secret(&agent, &shown, &["SINKSECRET"]);
}

#[tokio::test]
async fn node_packages_reach_every_task_and_go_when_nothing_references_them() {
    let sink = Sink::start(100).await;
    sink.file("/apps/lib.zip", &zip(&[Entry { name: "lib/readme", mode: 0o644, data: b"node-level\n" }]));
    sink.file("/apps/junk.tar.gz", b"\x1f\x8b\x08\x00junk, not gzip");
    sink.file("/apps/fifo.tar.gz", &tar_gz_with_fifo());
    sink.plan("/apps/down.zip", &[Answer::Unavailable]);
    let opts = AgentOptions {
        staging_extra: "retries = 1\n".into(),
        extra_config: "[policy]\nallow_host_tasks = true\n".into(),
        ..AgentOptions::default()
    };
    let mut agent = Agent::start(opts).await;
    let mut c = agent.client().await;
    let lib = reference("lib", "2", &sink.url("/apps/lib.zip"));
    let got = configure(&mut c, vec![lib.clone()]).await.unwrap();
    assert_eq!((got.len(), got[0].node_level), (1, true), "{got:?}");
    let cmd = "/bin/sh -c 'cat $AZ_BATCH_APP_PACKAGE_lib_2/lib/readme'";
    for spec in [task("node", "container", cmd), host_task("node", "host", cmd)] {
        let id = spec.task_id.clone();
        let done = c.run_done(spec).await;
        assert_eq!(done.exit_code, Some(0), "{done:?}");
        assert_eq!(c.read("node", &id, "stdout.txt").await.unwrap(), "node-level\n");
    }

    // A package that cannot be installed: the call fails precisely, the
    // node's set stays as it was, nothing partial is left.
    let apps = agent.root().join("applications");
    for (path, code, says) in [
        ("/apps/missing.zip", Code::FailedPrecondition, "HTTP 404"),
        ("/apps/junk.tar.gz", Code::FailedPrecondition, "cannot be read"),
        ("/apps/fifo.tar.gz", Code::FailedPrecondition, "FIFO"),
        ("/apps/down.zip", Code::Unavailable, "HTTP 503"),
    ] {
        let e = configure(&mut c, vec![lib.clone(), reference("bad", "1", &sink.url(path))]).await.unwrap_err();
        assert_eq!(e.code(), code, "{path}: {e:?}");
        assert!(e.message().contains(says) && !e.message().contains("SINKSECRET"), "{path}: {e:?}");
        assert_eq!(entries(&apps), ["lib"], "{path}");
    }
    let e = configure(&mut c, vec![reference("a/b", "1", &sink.url("/apps/lib.zip"))]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let twice = vec![lib.clone(), lib.clone()];
    assert_eq!(configure(&mut c, twice).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(c.node().await.application_packages[0].node_level);

    // Kept across a restart of the agent, without a second download.
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.run_done(task("node", "after", cmd)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(sink.count("GET", "/apps/lib.zip"), 1);

    // An empty set: nothing references it any more, so it is removed.
    assert_eq!(configure(&mut c, vec![]).await.unwrap(), []);
    assert_eq!(entries(&apps), Vec::<String>::new());
    let done = c.run_done(task("node", "gone", "/bin/sh -c 'env | grep -c AZ_BATCH_APP_PACKAGE; true'")).await;
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(c.read("node", "gone", "stdout.txt").await.unwrap(), "0\n");
    assert_no_secret(&agent, "", &["SINKSECRET"]);
}

#[tokio::test]
async fn a_package_that_cannot_be_installed_fails_the_task_before_it_runs() {
    let sink = Sink::start(100).await;
    sink.plan("/apps/down.zip", &[Answer::Unavailable]);
    sink.file("/apps/fifo.tar.gz", &tar_gz_with_fifo());
    let opts = AgentOptions { staging_extra: "retries = 0\n".into(), ..AgentOptions::default() };
    let agent = Agent::start(opts).await;
    let mut c = agent.client().await;
    for (id, path, category, says) in [
        ("missing", "/apps/missing.zip", pb::FailureCategory::UserError, "HTTP 404"),
        ("down", "/apps/down.zip", pb::FailureCategory::ServerError, "HTTP 503"),
        ("fifo", "/apps/fifo.tar.gz", pb::FailureCategory::UserError, "FIFO"),
    ] {
        let mut spec = task("bad", id, "/bin/sh -c 'echo ran'");
        spec.application_packages = vec![reference(id, "1", &sink.url(path))];
        let done = c.run_done(spec).await;
        let f = done.failure_info.clone().unwrap_or_default();
        assert_eq!((f.code.as_str(), f.category), ("ApplicationPackageFailed", category as i32), "{id}: {done:?}");
        assert!(f.message.contains(says) && !f.message.contains("SINKSECRET"), "{id}: {f:?}");
        assert_eq!(done.exit_code, None, "{id}: the process never ran");
        assert_eq!(c.read("bad", id, "stdout.txt").await.unwrap_or_default(), "");
    }
    assert_eq!(entries(&agent.root().join("applications")), Vec::<String>::new(), "nothing partial is left");
    // A reference that breaks Batch's rules is refused, with no record.
    let mut spec = task("bad", "version", "true");
    spec.application_packages = vec![reference("tool", "", &sink.url("/apps/x.zip"))];
    let e = c.run(spec).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("version"), "{e:?}");
    assert_eq!(c.get("bad", "version").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn an_agent_killed_mid_download_installs_the_package_on_restart() {
    let sink = Sink::start(50).await;
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    sink.file("/apps/big.tar.gz", &tar_gz(&[Entry { name: "blob.bin", mode: 0o644, data: &big }]));
    sink.plan("/apps/big.tar.gz", &[Answer::Truncated, Answer::Serve]);
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task("crash", "pkg", "/bin/sh -c 'cmp $AZ_BATCH_APP_PACKAGE_big_1/blob.bin blob.bin && echo same'");
    spec.application_packages = vec![reference("big", "1", &sink.url("/apps/big.tar.gz"))];
    spec.resource_files = vec![berth_tests::blob::http_file(&sink.url("/in/blob.bin"), "blob.bin", "")];
    sink.file("/in/blob.bin", &big);
    c.run(spec).await.unwrap();
    wait_requests(&sink, "/apps/big.tar.gz", 1).await;
    let apps = agent.root().join("applications");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !entries(&apps).iter().any(|e| e.starts_with(".partial-")) {
        assert!(Instant::now() < deadline, "no partial download in {}", apps.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.wait_done("crash", "pkg").await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(c.read("crash", "pkg", "stdout.txt").await.unwrap(), "same\n");
    assert_eq!(sink.count("GET", "/apps/big.tar.gz"), 2);
    assert_eq!(entries(&apps), ["big"], "the partial download is gone");
}

#[tokio::test]
async fn berthctl_sets_packages_from_blob_storage_for_the_node_and_for_a_task() {
    use berth_tests::blob::{container_name, BlobStore, EARLIER, LATER};
    let store = BlobStore::from_env();
    let con = container_name("packages");
    store.create_container(&con).await;
    store.put(&con, "node.zip", &zip(&[Entry { name: "n.txt", mode: 0o644, data: b"node\n" }])).await;
    store.put(&con, "task.tar.gz", &tar_gz(&[Entry { name: "t.txt", mode: 0o644, data: b"task\n" }])).await;
    let sas = store.sas("r", LATER);
    let agent = Agent::start(AgentOptions::default()).await;
    let ctl = || {
        let mut cmd = std::process::Command::new(berth_tests::binary("berthctl"));
        cmd.args(["--addr", &agent.addr()]);
        cmd
    };
    let out = ctl()
        .args(["app-packages", "--app-package"])
        .arg(format!("id=node-tools,version=1.2,url={}", store.blob_url(&con, "node.zip", &sas)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-tools/1.2"), "{out:?}");
    let out = ctl()
        .args(["run", "--job", "cli", "--task", "pkg", "--image"])
        .arg(berth_tests::image("busybox"))
        .args([
            "--command-line",
            "/bin/sh -c 'cat $AZ_BATCH_APP_PACKAGE_node_tools_1_2/n.txt $AZ_BATCH_APP_PACKAGE_mine_3/t.txt'",
        ])
        .arg("--app-package")
        .arg(format!("id=mine,version=3,url={}", store.blob_url(&con, "task.tar.gz", &sas)))
        .arg("--wait")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = agent.client().await;
    assert_eq!(c.read("cli", "pkg", "stdout.txt").await.unwrap(), "node\ntask\n");
    // An expired SAS: the blob service's 403, the task's fault.
    let mut spec = task("cli", "expired", "true");
    spec.application_packages =
        vec![reference("old", "1", &store.blob_url(&con, "task.tar.gz", &store.sas("r", EARLIER)))];
    let done = c.run_done(spec).await;
    let f = done.failure_info.clone().unwrap_or_default();
    assert_eq!((f.code.as_str(), f.category), ("ApplicationPackageFailed", pb::FailureCategory::UserError as i32));
    assert!(f.message.contains("HTTP 403"), "{f:?}");
    let bad = ctl().args(["app-packages", "--app-package", "id=x,version=1"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("url=URL are required"));
    let sig = sas.split('&').find_map(|p| p.strip_prefix("sig=")).unwrap().to_owned();
    assert_no_secret(&agent, &format!("{done:?}"), &[&sig]);
}

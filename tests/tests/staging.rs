//! Data staging against a real agent, containerd and Azurite: resource files
//! downloaded before the task runs, output files uploaded after it exits,
//! their failures, their secrets, and an agent SIGKILLed in the middle of
//! either (a test server of the test's own on 127.0.0.1 holds a request open).

use berth_tests::blob::{assert_no_secret, container_name, http_file, output, Answer, BlobStore, Sink, EARLIER, LATER};
use berth_tests::v1 as pb;
use berth_tests::{failure_code, host_task, task, Agent, AgentOptions};
use pb::OutputFileUploadCondition as Cond;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use tonic::Code;

/// The pool auto-user's uid (the default identity).
const POOL_UID: u32 = 20000;

fn sig_of(sas: &str) -> String {
    sas.split('&').find_map(|p| p.strip_prefix("sig=")).unwrap().to_owned()
}

#[tokio::test]
async fn resource_files_are_downloaded_before_the_task_runs() {
    let store = BlobStore::from_env();
    let con = container_name("resources");
    store.create_container(&con).await;
    store.put(&con, "tool.sh", b"#!/bin/sh\necho tool ran\n").await;
    store.put(&con, "data/one.txt", b"one\n").await;
    store.put(&con, "data/sub/two.txt", b"two\n").await;
    store.put(&con, "other/three.txt", b"three\n").await;
    let sas = store.sas("rl", LATER);
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task(
        "stage",
        "in",
        "/bin/sh -c 'in/tool.sh; stat -c \"%a %u\" in/tool.sh; cat inputs/data/one.txt inputs/data/sub/two.txt; \
         ls inputs'",
    );
    spec.resource_files = vec![
        http_file(&store.blob_url(&con, "tool.sh", &sas), "in/tool.sh", "0750"),
        pb::ResourceFile {
            storage_container_url: store.container_url(&con, &sas),
            blob_prefix: "data/".into(),
            file_path: "inputs".into(),
            ..Default::default()
        },
    ];
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    let out = c.read("stage", "in", "stdout.txt").await.unwrap();
    assert_eq!(out, format!("tool ran\n750 {POOL_UID}\none\ntwo\ndata\n"));
    // The files belong to the task's identity, directories made on the way too.
    let sub = agent.task_path("stage", "in", "wd/inputs/data/sub");
    assert_eq!(std::fs::metadata(&sub).unwrap().uid(), POOL_UID);
    assert_eq!(std::fs::metadata(sub.join("two.txt")).unwrap().uid(), POOL_UID);
    // TaskInfo shows the URLs without their query; nothing stored has it.
    let shown = format!("{:?}", done.spec);
    assert!(shown.contains("tool.sh?<redacted>"), "{shown}");
    assert_no_secret(&agent, &shown, &[&sig_of(&sas)]);
}

#[tokio::test]
async fn bad_resource_files_are_refused_or_fail_the_task_without_running_it() {
    let store = BlobStore::from_env();
    let con = container_name("bad-resources");
    store.create_container(&con).await;
    store.put(&con, "a.txt", b"a").await;
    let agent =
        Agent::start(AgentOptions { staging_extra: "max_task_bytes = 4\nretries = 2".into(), ..Default::default() })
            .await;
    let mut c = agent.client().await;
    let ok_sas = store.sas("rl", LATER);

    // Unsafe paths and bad URLs: INVALID_ARGUMENT, no record, no directory.
    for (i, rf) in [
        http_file(&store.blob_url(&con, "a.txt", &ok_sas), "../escape", ""),
        http_file(&store.blob_url(&con, "a.txt", &ok_sas), "/etc/passwd", ""),
        http_file("ftp://127.0.0.1/a", "a", ""),
        http_file(&store.blob_url(&con, "a.txt", &ok_sas), "a", "4755"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut spec = task("badres", &format!("refused{i}"), "true");
        spec.resource_files = vec![rf];
        let e = c.run(spec).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("resource_files") && !e.message().contains(&sig_of(&ok_sas)), "{}", e.message());
        assert_eq!(c.get("badres", &format!("refused{i}")).await.unwrap_err().code(), Code::NotFound);
        assert!(!agent.task_path("badres", &format!("refused{i}"), "").exists());
    }

    // Refusals by the store are the task's: it completes without running.
    let expired = store.sas("rl", EARLIER);
    let runs = [
        ("expired", http_file(&store.blob_url(&con, "a.txt", &expired), "a.txt", ""), "403"),
        ("missing", http_file(&store.blob_url(&con, "nope.txt", &ok_sas), "a.txt", ""), "404"),
        // Listing needs the l permission: a read-only SAS cannot list the container.
        (
            "nolist",
            pb::ResourceFile {
                storage_container_url: store.container_url(&con, &store.sas("r", LATER)),
                ..Default::default()
            },
            "403",
        ),
    ];
    for (id, rf, status) in runs {
        let mut spec = task("badres", id, "/bin/sh -c 'echo ran > ran.txt'");
        spec.resource_files = vec![rf];
        let done = c.run_done(spec).await;
        let f = done.failure_info.clone().unwrap();
        assert_eq!(
            (f.code.as_str(), f.category),
            ("ResourceFileDownloadFailed", pb::FailureCategory::UserError as i32)
        );
        assert!(f.message.contains(status) && f.message.contains("<redacted>"), "{}", f.message);
        assert_eq!(done.exit_code, None, "the task did not run");
        assert!(!agent.task_path("badres", id, "wd/ran.txt").exists());
        assert!(!agent.task_path("badres", id, "wd/a.txt").exists(), "no partial file left");
        assert_no_secret(&agent, &format!("{done:?}"), &[&sig_of(&expired), &sig_of(&ok_sas)]);
    }

    // More than max_task_bytes (4): the task's fault, nothing kept.
    store.put(&con, "big.bin", b"0123456789").await;
    let mut spec = task("badres", "toobig", "true");
    spec.resource_files = vec![http_file(&store.blob_url(&con, "big.bin", &ok_sas), "big.bin", "")];
    let done = c.run_done(spec).await;
    let f = done.failure_info.unwrap();
    assert!(f.message.contains("max_task_bytes"), "{}", f.message);
    assert!(!agent.task_path("badres", "toobig", "wd/big.bin").exists());

    // A server that fails once (500, then 503): retried, and the task runs.
    let sink = Sink::start(20).await;
    sink.file("/once", b"ok\n"); // under the 4-byte cap
    sink.plan("/once", &[Answer::InternalError, Answer::Unavailable, Answer::Serve]);
    let mut spec = task("badres", "retried", "cat f");
    spec.resource_files = vec![http_file(&sink.url("/once"), "f", "")];
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(c.read("badres", "retried", "stdout.txt").await.unwrap(), "ok\n");
    assert_eq!(sink.count("GET", "/once"), 3, "two failures, then the file");

    // A server that keeps failing: the node's fault, after every retry.
    sink.plan("/flaky", &[Answer::Unavailable]);
    let mut spec = task("badres", "flaky", "true");
    spec.resource_files = vec![http_file(&sink.url("/flaky"), "f", "")];
    let done = c.run_done(spec).await;
    let f = done.failure_info.unwrap();
    assert_eq!((f.code.as_str(), f.category), ("ResourceFileDownloadFailed", pb::FailureCategory::ServerError as i32));
    assert!(f.message.contains("503") && f.message.contains("3 attempts"), "{}", f.message);
    assert_eq!(sink.count("GET", "/flaky"), 3, "the first attempt and two retries");
}

#[tokio::test]
async fn output_files_are_uploaded_as_their_patterns_and_conditions_say() {
    let store = BlobStore::from_env();
    let con = container_name("outputs");
    store.create_container(&con).await;
    let sas = store.sas("rwlc", LATER);
    let url = store.container_url(&con, &sas);
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task(
        "out",
        "ok",
        "/bin/sh -c 'mkdir -p res/sub && echo a > res/a.txt && echo b > res/sub/b.txt && echo h > res/.h.txt && \
         echo log > res/run.log && echo said-hello'",
    );
    let mut with_type = output("../stdout.txt", &url, "logs/stdout.txt", Cond::TaskCompletion);
    with_type.destination.as_mut().unwrap().container.as_mut().unwrap().upload_headers =
        vec![pb::HttpHeader { name: "Content-Type".into(), value: "text/plain; charset=utf-8".into() }];
    spec.output_files = vec![
        output("res/**/*.txt", &url, "run1", Cond::TaskSuccess),
        output("$AZ_BATCH_TASK_WORKING_DIR/res/*.log", &url, "", Cond::TaskCompletion),
        output("res/a.txt", &url, "failed-only.txt", Cond::TaskFailure),
        with_type,
    ];
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(store.list(&con).await, ["logs/stdout.txt", "run.log", "run1/a.txt", "run1/sub/b.txt"]);
    let (body, ct) = store.get(&con, "logs/stdout.txt").await.unwrap();
    assert_eq!((body.as_slice(), ct.as_str()), (&b"said-hello\n"[..], "text/plain; charset=utf-8"));
    assert_eq!(store.get(&con, "run1/sub/b.txt").await.unwrap().0, b"b\n");
    let log = std::fs::read_to_string(agent.task_path("out", "ok", "fileuploadout.txt")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("Uploaded")).count(), 4, "{log}");
    assert!(log.contains("?<redacted>"), "{log}");
    assert!(!agent.task_path("out", "ok", "fileuploaderr.txt").exists());
    assert_no_secret(&agent, &format!("{done:?}{log}"), &[&sig_of(&sas)]);

    // A failing task uploads what asks for failure, keeps its exit code.
    let mut spec = task("out", "fails", "/bin/sh -c 'echo a > a.txt; exit 3'");
    spec.output_files = vec![
        output("a.txt", &url, "fails/a.txt", Cond::TaskFailure),
        output("a.txt", &url, "fails/never.txt", Cond::TaskSuccess),
        output("a.txt", &url, "fails/always.txt", Cond::TaskCompletion),
    ];
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(3), "FailureExitCode"));
    assert!(store.get(&con, "fails/a.txt").await.is_some());
    assert!(store.get(&con, "fails/never.txt").await.is_none());
    assert!(store.get(&con, "fails/always.txt").await.is_some());

    // No match is no failure (as Batch): the log says so.
    let mut spec = task("out", "nomatch", "true");
    spec.output_files = vec![output("*.nothing", &url, "", Cond::TaskCompletion)];
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""));
    let log = std::fs::read_to_string(agent.task_path("out", "nomatch", "fileuploadout.txt")).unwrap();
    assert!(log.contains("no file matched"), "{log}");
}

#[tokio::test]
async fn a_failed_upload_is_file_upload_failed_and_keeps_the_exit_code() {
    let store = BlobStore::from_env();
    let con = container_name("upload-fails");
    store.create_container(&con).await;
    let read_only = store.sas("rl", LATER);
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task("upfail", "t", "/bin/sh -c 'echo x > x.txt; ln -s /etc/shadow shadow.txt; exit 0'");
    spec.output_files = vec![
        output("x.txt", &store.container_url(&con, &read_only), "", Cond::TaskCompletion),
        output("/etc/*", &store.container_url(&con, &read_only), "", Cond::TaskCompletion),
    ];
    let done = c.run_done(spec).await;
    assert_eq!(done.exit_code, Some(0), "the exit code stays the process's");
    let f = done.failure_info.clone().unwrap();
    assert_eq!((f.code.as_str(), f.category), ("FileUploadFailed", pb::FailureCategory::UserError as i32));
    assert_eq!(done.result, pb::TaskResult::Failure as i32);
    let err = std::fs::read_to_string(agent.task_path("upfail", "t", "fileuploaderr.txt")).unwrap();
    assert!(err.contains("403") && err.contains("outside the node root"), "{err}");
    assert!(store.list(&con).await.is_empty());
    assert_no_secret(&agent, &format!("{done:?}{err}"), &[&sig_of(&read_only)]);
}

#[tokio::test]
async fn host_tasks_stage_their_files_too() {
    let store = BlobStore::from_env();
    let con = container_name("host-staging");
    store.create_container(&con).await;
    store.put(&con, "in.txt", b"input\n").await;
    let sas = store.sas("rwlc", LATER);
    let agent =
        Agent::start(AgentOptions { extra_config: "[policy]\nallow_host_tasks = true\n".into(), ..Default::default() })
            .await;
    let mut c = agent.client().await;
    let mut spec = host_task("hoststage", "t", "/bin/sh -c 'tr a-z A-Z < in.txt > out.txt'");
    spec.resource_files = vec![http_file(&store.blob_url(&con, "in.txt", &sas), "in.txt", "")];
    spec.output_files = vec![output("out.txt", &store.container_url(&con, &sas), "result.txt", Cond::TaskSuccess)];
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(store.get(&con, "result.txt").await.unwrap().0, b"INPUT\n");
}

/// Waits until the sink saw `n` requests of `method` to `path`.
async fn wait_requests(sink: &Sink, method: &str, path: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count(method, path) < n {
        assert!(Instant::now() < deadline, "no {method} {path} reached the test server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_agent_killed_mid_transfer_resumes_and_sends_nothing_twice() {
    let sink = Sink::start(50).await;
    sink.file("/in/data", b"payload\n");
    sink.plan("/in/data", &[Answer::Hang, Answer::Serve]);
    sink.plan("/out/con/second.txt", &[Answer::Hang, Answer::Serve]);
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;

    // Killed while a resource file downloads: prepared again, the file complete.
    let mut spec = task("crash", "down", "cat data");
    spec.resource_files = vec![http_file(&sink.url("/in/data"), "data", "")];
    c.run(spec).await.unwrap();
    wait_requests(&sink, "GET", "/in/data", 1).await;
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.wait_done("crash", "down").await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(c.read("crash", "down", "stdout.txt").await.unwrap(), "payload\n");
    assert_eq!(sink.count("GET", "/in/data"), 2);

    // Killed while the second of two uploads hangs: the first is not sent
    // again, the second is, and the task completes once with its exit code.
    let mut spec = task("crash", "up", "/bin/sh -c 'echo 1 > first.txt; echo 2 > second.txt; exit 4'");
    let dest = sink.url("/out/con");
    spec.output_files = vec![
        output("first.txt", &dest, "", Cond::TaskCompletion),
        output("second.txt", &dest, "", Cond::TaskCompletion),
    ];
    c.run(spec).await.unwrap();
    wait_requests(&sink, "PUT", "/out/con/second.txt", 1).await;
    let during = c.get("crash", "up").await.unwrap();
    assert_eq!((during.state, during.exit_code), (pb::TaskState::Running as i32, Some(4)), "{during:?}");
    let progress = during.staging_progress.expect("upload progress while uploading");
    assert_eq!((progress.direction.as_str(), progress.files_done, progress.files_total), ("upload", 1, 2));
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.wait_done("crash", "up").await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(4), "FailureExitCode"), "{done:?}");
    assert_eq!(sink.count("PUT", "/out/con/first.txt"), 1, "a finished upload is not sent again");
    assert_eq!(sink.count("PUT", "/out/con/second.txt"), 2);
    assert_eq!(sink.body("/out/con/second.txt").unwrap(), b"2\n");
    let events = c.inner.watch_tasks(pb::WatchTasksRequest { from_sequence: 0 }).await.unwrap().into_inner();
    let completed = collect_completions(events, "up").await;
    assert_eq!(completed, 1, "the completion is recorded once");
    assert_no_secret(&agent, &format!("{done:?}"), &["SINKSECRET"]);
    // The secrets directory is emptied as tasks complete.
    let left: Vec<_> =
        std::fs::read_dir(agent.dir.path().join("secrets")).map(|d| d.flatten().count()).into_iter().collect();
    assert_eq!(left.iter().sum::<usize>(), 0);
}

/// COMPLETED events of task `crash/<id>` in the replayed log.
async fn collect_completions(mut events: tonic::Streaming<pb::TaskEvent>, id: &str) -> usize {
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), events.message()).await {
            Ok(Ok(Some(ev))) => {
                let t = ev.task.unwrap();
                if t.task_id == id && t.state == pb::TaskState::Completed as i32 {
                    n += 1;
                }
            }
            _ => return n,
        }
    }
}

#[tokio::test]
async fn transfers_stall_out_and_queue_behind_the_node_cap() {
    let sink = Sink::start(20).await;
    sink.plan("/stall", &[Answer::Hang]);
    let agent = Agent::start(AgentOptions {
        staging_extra: "stall_timeout_seconds = 1\nretries = 1\nmax_concurrent_transfers = 1".into(),
        ..Default::default()
    })
    .await;
    let mut c = agent.client().await;

    // A server that never answers: abandoned after the stall timeout, retried, then the node's fault.
    let mut spec = task("cap", "stalls", "true");
    spec.resource_files = vec![http_file(&sink.url("/stall"), "f", "")];
    let done = c.run_done(spec).await;
    let f = done.failure_info.unwrap();
    assert_eq!((f.code.as_str(), f.category), ("ResourceFileDownloadFailed", pb::FailureCategory::ServerError as i32));
    assert!(f.message.contains("no answer") && f.message.contains("2 attempts"), "{}", f.message);
    assert_eq!(sink.count("GET", "/stall"), 2);

    // One transfer at a time on this node: the second task's waits for the first's.
    sink.plan("/slow-a", &[Answer::Hang]);
    sink.plan("/slow-b", &[Answer::Hang]);
    let agent2 = Agent::start(AgentOptions {
        staging_extra: "stall_timeout_seconds = 600\nmax_concurrent_transfers = 1".into(),
        ..Default::default()
    })
    .await;
    let mut c2 = agent2.client().await;
    for (id, path) in [("a", "/slow-a"), ("b", "/slow-b")] {
        let mut spec = task("cap", id, "true");
        spec.resource_files = vec![http_file(&sink.url(path), "f", "")];
        c2.run(spec).await.unwrap();
    }
    wait_requests(&sink, "GET", "/slow-a", 1).await;
    // PREPARING is recorded before the download step starts: wait for its progress.
    let deadline = Instant::now() + Duration::from_secs(10);
    let progress = loop {
        let b = c2.get("cap", "b").await.unwrap();
        if let Some(p) = b.staging_progress {
            assert_eq!(b.state, pb::TaskState::Preparing as i32);
            break p;
        }
        assert!(Instant::now() < deadline, "no download progress while PREPARING: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((progress.direction.as_str(), progress.files_done, progress.files_total), ("download", 0, 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count("GET", "/slow-b"), 0, "the second transfer waits for the node's one slot");
    // A terminate ends a download under way; the next transfer then starts.
    let t = pb::TerminateTaskRequest { job_id: "cap".into(), task_id: "a".into(), ..Default::default() };
    c2.inner.terminate_task(t).await.unwrap();
    let a = c2.wait_done("cap", "a").await;
    assert_eq!(failure_code(&a), "TaskTerminated");
    wait_requests(&sink, "GET", "/slow-b", 1).await;
    let t = pb::TerminateTaskRequest { job_id: "cap".into(), task_id: "b".into(), ..Default::default() };
    c2.inner.terminate_task(t).await.unwrap();
    assert_eq!(failure_code(&c2.wait_done("cap", "b").await), "TaskTerminated");
}

#[tokio::test]
async fn berthctl_stages_files_with_docker_style_items() {
    let store = BlobStore::from_env();
    let con = container_name("cli-staging");
    store.create_container(&con).await;
    store.put(&con, "in.txt", b"from the cli\n").await;
    let sas = store.sas("rwlc", LATER);
    let agent = Agent::start(AgentOptions::default()).await;
    let out = std::process::Command::new(berth_tests::binary("berthctl"))
        .args(["--addr", &agent.addr(), "run", "--job", "cli", "--task", "stage", "--image"])
        .arg(berth_tests::image("busybox"))
        .args(["--command-line", "cp in.txt out.txt", "--wait"])
        .arg("--resource-file")
        .arg(format!("url={},path=in.txt", store.blob_url(&con, "in.txt", &sas)))
        .arg("--output-file")
        .arg(format!(
            "pattern=out.txt,container={},path=cli/out.txt,condition=success,content-type=text/plain",
            store.container_url(&con, &sas)
        ))
        .output()
        .expect("run berthctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (body, ct) = store.get(&con, "cli/out.txt").await.expect("uploaded");
    assert_eq!((body.as_slice(), ct.as_str()), (&b"from the cli\n"[..], "text/plain"));
    let bad = std::process::Command::new(berth_tests::binary("berthctl"))
        .args(["--addr", &agent.addr(), "run", "--job", "cli", "--task", "bad", "--image", "busybox"])
        .args(["--resource-file", "path=x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("url=URL or container=URL"));
}

#[tokio::test]
async fn an_agent_killed_half_way_through_a_64_mib_upload_sends_it_again_whole() {
    let sink = Sink::start(20).await;
    sink.plan("/big/con/big.bin", &[Answer::StallBody, Answer::Serve]);
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task("crash", "big", "dd if=/dev/urandom of=big.bin bs=1048576 count=64");
    spec.output_files = vec![output("big.bin", &sink.url("/big/con"), "", Cond::TaskSuccess)];
    c.run(spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.stalled("/big/con/big.bin") {
        assert!(Instant::now() < deadline, "the upload never reached half-way");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = c.get("crash", "big").await.unwrap();
    assert_eq!((during.state, during.exit_code), (pb::TaskState::Running as i32, Some(0)), "{during:?}");
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.wait_done("crash", "big").await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(sink.count("PUT", "/big/con/big.bin"), 2);
    let sent = sink.body("/big/con/big.bin").expect("the whole file, sent again");
    let file = std::fs::read(agent.task_path("crash", "big", "wd/big.bin")).unwrap();
    assert_eq!(sent.len(), 64 << 20);
    assert!(sent == file, "the blob is the task's file, byte for byte");
}

#[tokio::test]
async fn container_sas_tokens_read_list_and_write_only_their_container() {
    let store = BlobStore::from_env();
    let (con, other) = (container_name("csas-in"), container_name("csas-other"));
    store.create_container(&con).await;
    store.create_container(&other).await;
    store.put(&con, "data/a.txt", b"a\n").await;
    store.put(&other, "b.txt", b"b\n").await;
    let read = store.container_sas(&con, "rl", LATER);
    let write = store.container_sas(&con, "cw", LATER);
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut spec = task("csas", "ok", "/bin/sh -c 'cat in/data/a.txt > copy.txt'");
    spec.resource_files = vec![pb::ResourceFile {
        storage_container_url: store.container_url(&con, &read),
        file_path: "in".into(),
        ..Default::default()
    }];
    spec.output_files = vec![output("copy.txt", &store.container_url(&con, &write), "out/copy.txt", Cond::TaskSuccess)];
    let done = c.run_done(spec).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(store.get(&con, "out/copy.txt").await.expect("uploaded").0, b"a\n");
    // The same token on another container: the blob service's 403, the task's fault.
    let mut spec = task("csas", "other", "true");
    spec.resource_files = vec![http_file(&store.blob_url(&other, "b.txt", &read), "b.txt", "")];
    let done = c.run_done(spec).await;
    let f = done.failure_info.clone().unwrap_or_default();
    assert_eq!((f.code.as_str(), f.category), ("ResourceFileDownloadFailed", pb::FailureCategory::UserError as i32));
    assert!(f.message.contains("HTTP 403"), "{f:?}");
    // A read-only token cannot upload.
    let mut spec = task("csas", "readonly", "/bin/sh -c 'echo x > x.txt'");
    spec.output_files = vec![output("x.txt", &store.container_url(&con, &read), "", Cond::TaskCompletion)];
    let done = c.run_done(spec).await;
    assert_eq!(failure_code(&done), "FileUploadFailed", "{done:?}");
    assert_no_secret(&agent, &format!("{done:?}"), &[&sig_of(&read), &sig_of(&write)]);
}

#[tokio::test]
async fn https_urls_need_the_servers_ca_in_staging_ca_files() {
    let (ca, cert, key) = berth_tests::blob::test_tls();
    let sink = Sink::start_tls(20, &cert, &key).await;
    sink.file("/in/a.txt", b"over tls\n");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let spec = || {
        let mut spec = task("tls", "stage", "/bin/sh -c 'cat a.txt; cp a.txt b.txt'");
        spec.resource_files = vec![http_file(&sink.url("/in/a.txt"), "a.txt", "")];
        spec.output_files = vec![output("b.txt", &sink.url("/out/con"), "", Cond::TaskSuccess)];
        spec
    };
    let staging_extra = format!("ca_files = [\"{}\"]\n", ca_file.display());
    let agent = Agent::start(AgentOptions { staging_extra, ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let done = c.run_done(spec()).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(c.read("tls", "stage", "stdout.txt").await.unwrap(), "over tls\n");
    assert_eq!(sink.body("/out/con/b.txt").unwrap(), b"over tls\n");
    drop(c);
    drop(agent);
    // Without the CA the server is not trusted: the node's failure (its configuration).
    let agent = Agent::start(AgentOptions { staging_extra: "retries = 0\n".into(), ..AgentOptions::default() }).await;
    let mut c = agent.client().await;
    let done = c.run_done(spec()).await;
    let f = done.failure_info.clone().unwrap_or_default();
    assert_eq!((f.code.as_str(), f.category), ("ResourceFileDownloadFailed", pb::FailureCategory::ServerError as i32));
    assert_eq!(done.exit_code, None, "{done:?}");
    assert_no_secret(&agent, &format!("{done:?}"), &["SINKSECRET"]);
}

#[tokio::test]
async fn a_jobs_stored_preparation_and_release_tasks_keep_their_sas_across_a_restart() {
    let store = BlobStore::from_env();
    let con = container_name("stored-sas");
    store.create_container(&con).await;
    store.put(&con, "prep.txt", b"prep input\n").await;
    store.put(&con, "release.txt", b"release input\n").await;
    let sas = store.sas("r", LATER);
    let mut agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let mut prep = task("", "", "cat prep.txt");
    prep.resource_files = vec![http_file(&store.blob_url(&con, "prep.txt", &sas), "prep.txt", "")];
    let mut release = task("", "", "cat release.txt");
    release.resource_files = vec![http_file(&store.blob_url(&con, "release.txt", &sas), "release.txt", "")];
    let req = pb::ConfigureJobRequest { job_id: "stored".into(), preparation: Some(prep), release: Some(release) };
    c.inner.configure_job(req).await.unwrap();
    // The job's configuration is stored without the queries; the agent starts again.
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    agent.spawn().await;
    let mut c = agent.client().await;
    let done = c.run_done(task("stored", "t", "true")).await;
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(c.read("stored", "jobpreparation", "stdout.txt").await.unwrap(), "prep input\n");
    let r = c.inner.release_job(pb::ReleaseJobRequest { job_id: "stored".into(), terminate_tasks: false }).await;
    assert!(r.unwrap().into_inner().released);
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        if let Ok(t) = c.get("stored", "jobrelease").await {
            if t.state == pb::TaskState::Completed as i32 {
                break t;
            }
        }
        assert!(Instant::now() < deadline, "the release task did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((done.exit_code, failure_code(&done).as_str()), (Some(0), ""), "{done:?}");
    assert_eq!(c.read("stored", "jobrelease", "stdout.txt").await.unwrap(), "release input\n");
    assert_no_secret(&agent, &format!("{done:?}"), &[&sig_of(&sas)]);
}

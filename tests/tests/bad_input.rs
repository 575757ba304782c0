//! Bad requests get a precise status and leave nothing behind.

use berth_tests::{entries, task, Agent, AgentOptions};
use tonic::Code;

/// A change that makes a valid spec invalid.
type Edit = Box<dyn Fn(&mut berth_tests::v1::TaskSpec)>;

#[tokio::test]
async fn refused_requests_leave_nothing_behind() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    let long = "x".repeat(65);
    let cases: Vec<(&str, Edit, Code, &str)> = vec![
        ("job with slash", Box::new(|s| s.job_id = "a/b".into()), Code::InvalidArgument, "job id"),
        ("task with slash", Box::new(|s| s.task_id = "a/b".into()), Code::InvalidArgument, "task id"),
        ("dot-dot", Box::new(|s| s.task_id = "..".into()), Code::InvalidArgument, "task id"),
        ("NUL", Box::new(|s| s.job_id = "a\0b".into()), Code::InvalidArgument, "job id"),
        ("65 chars", Box::new(move |s| s.task_id = long.clone()), Code::InvalidArgument, "65 characters"),
        ("empty id", Box::new(|s| s.task_id = String::new()), Code::InvalidArgument, "task id is empty"),
        (
            "empty image",
            Box::new(|s| s.container.as_mut().unwrap().image = String::new()),
            Code::InvalidArgument,
            "image",
        ),
        (
            "bad image",
            Box::new(|s| s.container.as_mut().unwrap().image = "UPPER/case".into()),
            Code::InvalidArgument,
            "image",
        ),
        (
            "reserved env",
            Box::new(|s| {
                s.environment.insert("AZ_BATCH_TASK_ID".into(), "x".into());
            }),
            Code::InvalidArgument,
            "AZ_BATCH_",
        ),
        (
            "unknown run option",
            Box::new(|s| s.container.as_mut().unwrap().run_options = "--rm --frobnicate".into()),
            Code::InvalidArgument,
            "--frobnicate",
        ),
        (
            "unclosed quote",
            Box::new(|s| s.command_line = "/bin/sh -c 'oops".into()),
            Code::InvalidArgument,
            "command line",
        ),
        ("too many slots", Box::new(|s| s.required_slots = 99), Code::InvalidArgument, "required_slots"),
        ("no container", Box::new(|s| s.container = None), Code::InvalidArgument, "container"),
    ];
    for (name, edit, code, text) in cases {
        let mut spec = task("badjob", "t", "/bin/true");
        edit(&mut spec);
        let err = c.run(spec).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(err.message().contains(text), "{name}: {:?}", err.message());
    }
    // Nothing recorded, no directory created.
    let list = c.inner.list_tasks(berth_tests::v1::ListTasksRequest::default()).await.unwrap().into_inner();
    assert!(list.tasks.is_empty(), "{:?}", list.tasks);
    assert!(entries(&agent.root().join("workitems")).is_empty());

    // Duplicate id.
    c.run_done(task("badjob", "dup", "/bin/true")).await;
    let err = c.run(task("badjob", "dup", "/bin/true")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Unknown task, unsafe and missing file paths.
    assert_eq!(c.get("badjob", "nope").await.unwrap_err().code(), Code::NotFound);
    for (path, code) in [
        ("../../../../etc/passwd", Code::InvalidArgument),
        ("/etc/passwd", Code::InvalidArgument),
        ("wd/../../dup/stdout.txt", Code::InvalidArgument),
        ("wd/missing.txt", Code::NotFound),
    ] {
        let err = c.read("badjob", "dup", path).await.unwrap_err();
        assert_eq!(err.code(), code, "{path}: {err:?}");
    }
    assert_eq!(c.read("badjob", "dup", "stdout.txt").await.unwrap(), "");
}

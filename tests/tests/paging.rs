//! ListTasks pages: bounded answers in acceptance order, followed to the
//! end by berthctl, and a token that is not the agent's refused.

use berth_tests::{binary, task, v1 as pb, Agent, AgentOptions};
use std::process::Command;
use tonic::Code;

#[tokio::test]
async fn list_tasks_pages_walk_every_task_once_in_acceptance_order() {
    let agent = Agent::start(AgentOptions::default()).await;
    let mut c = agent.client().await;
    for i in 0..25 {
        c.run(task(if i % 2 == 0 { "pg-even" } else { "pg-odd" }, &format!("t{i:02}"), "/bin/true")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListTasksRequest { page_size: 10, page_token, ..Default::default() };
        let page = c.inner.list_tasks(req).await.unwrap().into_inner();
        pages.push(page.tasks.len());
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, [10, 10, 5]);
    let want: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    assert_eq!(seen, want, "each task once, in the order they were accepted");
    let all = c.inner.list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner();
    assert_eq!((all.tasks.len(), all.next_page_token.as_str()), (25, ""), "the default page holds them");

    // A filter holds across pages.
    let req = pb::ListTasksRequest { job_id: "pg-odd".into(), page_size: 5, ..Default::default() };
    let first = c.inner.list_tasks(req.clone()).await.unwrap().into_inner();
    let next = pb::ListTasksRequest { page_token: first.next_page_token.clone(), ..req.clone() };
    let second = c.inner.list_tasks(next).await.unwrap().into_inner();
    let last = pb::ListTasksRequest { page_token: second.next_page_token.clone(), ..req };
    let third = c.inner.list_tasks(last).await.unwrap().into_inner();
    assert_eq!((first.tasks.len(), second.tasks.len(), third.tasks.len()), (5, 5, 2), "12 odd tasks");
    assert!(third.next_page_token.is_empty());
    assert!(first.tasks.iter().chain(&second.tasks).chain(&third.tasks).all(|t| t.job_id == "pg-odd"));

    let err = c
        .inner
        .list_tasks(pb::ListTasksRequest { page_token: "not-a-token".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{err:?}");

    // berthctl follows the pages.
    let out = Command::new(binary("berthctl"))
        .args(["--addr", &agent.addr(), "list", "--page-size", "7", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 25);
}

//! Bearer-token auth for real: Debian's registry in token mode and a token
//! service of the harness (`berth_tests::token`), pulled from by a real agent.
//! Docker Hub's anonymous flow, basic credentials exchanged for a token, an
//! identity (refresh) token, a token scoped to one repository, tokens renewed
//! once expired; no secret in the agent's log or in what the scheduler sees.

use berth_tests::token::{TokenRegistry, REFRESH};
use berth_tests::{failure_code, task_on, v1 as pb, Agent, AgentOptions};

async fn agent_for(reg: &TokenRegistry) -> Agent {
    Agent::start(AgentOptions { insecure: vec![reg.addr.clone(), reg.realm.clone()], ..AgentOptions::default() }).await
}

fn with_basic(mut spec: pb::TaskSpec, user: &str, password: &str) -> pb::TaskSpec {
    spec.container.as_mut().unwrap().registry = Some(pb::RegistryCredentials {
        username: user.into(),
        password: password.into(),
        identity_token: String::new(),
    });
    spec
}

fn with_identity(mut spec: pb::TaskSpec, token: &str) -> pb::TaskSpec {
    spec.container.as_mut().unwrap().registry = Some(pb::RegistryCredentials {
        username: String::new(),
        password: String::new(),
        identity_token: token.into(),
    });
    spec
}

/// Neither a secret nor a token issued appears in the agent's log or in `text`.
fn assert_no_secret(agent: &Agent, reg: &TokenRegistry, text: &str) {
    let log = agent.log();
    let secrets = ["wonderland", "narrow", "quick", "not-the-password", REFRESH, "refresh-wrong"];
    for s in secrets.iter().map(|s| s.to_string()).chain(reg.issued().into_iter().map(|i| i.token)) {
        assert!(!log.contains(&s), "the agent's log holds a secret or token ({}…)", &s[..s.len().min(8)]);
        assert!(!text.contains(&s), "a reply holds a secret or token ({}…)", &s[..s.len().min(8)]);
    }
}

#[tokio::test]
async fn anonymous_pulls_go_through_the_token_challenge_as_on_docker_hub() {
    let reg = TokenRegistry::start().await;
    let agent = agent_for(&reg).await;
    let mut c = agent.client().await;
    let done = c.run_done(task_on("tok", "anon", "/bin/true", reg.image("busybox"))).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}\n{}", reg.log());
    let anon: Vec<_> = reg.issued().into_iter().filter(|i| i.subject == "anonymous").collect();
    assert!(!anon.is_empty() && anon.iter().all(|i| i.granted == ["berth-test/busybox"]), "{anon:?}");

    // A private repository: the anonymous token grants nothing, the registry refuses it.
    let done = c.run_done(task_on("tok", "private", "/bin/true", reg.image("entrypoint"))).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    let message = done.failure_info.as_ref().unwrap().message.clone();
    assert!(message.contains("unauthorized") && message.contains("no credentials"), "{message}");
}

#[tokio::test]
async fn basic_credentials_are_exchanged_for_a_token_and_a_scoped_token_is_refused_elsewhere() {
    let reg = TokenRegistry::start().await;
    let agent = agent_for(&reg).await;
    let mut c = agent.client().await;
    let done = c
        .run_done(with_basic(task_on("tok", "alice", "/bin/true", reg.image("entrypoint")), "alice", "wonderland"))
        .await;
    assert_eq!(done.exit_code, Some(0), "{done:?}\n{}", reg.log());
    assert!(reg.issued().iter().any(|i| i.subject == "alice" && i.granted == ["berth-test/entrypoint"]));

    let wrong = with_basic(task_on("tok", "wrong", "/bin/true", reg.image("workdir")), "alice", "not-the-password");
    let done = c.run_done(wrong).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    assert!(done.failure_info.as_ref().unwrap().message.contains("unauthorized"), "{done:?}");
    assert!(reg.refused() >= 1);
    assert_no_secret(&agent, &reg, &format!("{done:?}"));

    // A token for busybox only: good for busybox, refused for another repository.
    let done = c
        .run_done(with_basic(task_on("tok", "scoped-ok", "/bin/true", reg.image("busybox")), "scoped", "narrow"))
        .await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    let done =
        c.run_done(with_basic(task_on("tok", "scoped-no", "/bin/true", reg.image("user")), "scoped", "narrow")).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    assert!(done.failure_info.as_ref().unwrap().message.contains("unauthorized"), "{done:?}");
    let scoped: Vec<_> = reg.issued().into_iter().filter(|i| i.subject == "scoped").collect();
    assert!(scoped.iter().any(|i| i.granted.is_empty()), "the token for berth-test/user granted nothing: {scoped:?}");
    assert_no_secret(&agent, &reg, &format!("{done:?}"));
}

#[tokio::test]
async fn an_identity_token_is_exchanged_at_the_token_service() {
    let reg = TokenRegistry::start().await;
    let agent = agent_for(&reg).await;
    let mut c = agent.client().await;
    let done =
        c.run_done(with_identity(task_on("tok", "identity", "/bin/true", reg.image("entrypoint")), REFRESH)).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}\n{}", reg.log());
    let exchanged: Vec<_> = reg.issued().into_iter().filter(|i| i.subject == "refresh:alice").collect();
    assert!(!exchanged.is_empty() && exchanged.iter().all(|i| i.method == "POST"), "{exchanged:?}");
    assert_eq!(exchanged[0].granted, ["berth-test/entrypoint"], "scoped to the repository pulled");

    let done =
        c.run_done(with_identity(task_on("tok", "bad-id", "/bin/true", reg.image("workdir")), "refresh-wrong")).await;
    assert_eq!(failure_code(&done), "ImagePullFailed", "{done:?}");
    let message = &done.failure_info.as_ref().unwrap().message;
    assert!(message.contains("refused the identity token"), "{message}");
    assert_no_secret(&agent, &reg, &format!("{done:?}"));
}

#[tokio::test]
async fn expired_tokens_are_renewed_not_reused() {
    let reg = TokenRegistry::start().await;
    let agent = agent_for(&reg).await;
    let mut c = agent.client().await;
    // Every token of `brief` is expired to the client when it arrives (the
    // registry still takes it, within its clock-skew allowance): each blob
    // request after the manifest's must ask for a new one.
    let done =
        c.run_done(with_basic(task_on("tok", "brief", "/bin/true", reg.image("nameduser")), "brief", "quick")).await;
    assert_eq!(done.exit_code, Some(0), "{done:?}\n{}", reg.log());
    let blob_gets = reg.log().matches("\"GET /v2/berth-test/nameduser/blobs/").count();
    assert!(blob_gets >= 1, "no blob was fetched:\n{}", reg.log());
    let tokens = reg.issued().iter().filter(|i| i.subject == "brief").count();
    assert!(tokens > blob_gets, "{tokens} tokens for the manifest and {blob_gets} blob requests: one was reused");
    assert_no_secret(&agent, &reg, &format!("{done:?}"));
}

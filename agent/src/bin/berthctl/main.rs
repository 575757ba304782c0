//! `berthctl`: the reference scheduler-side client of a berth agent.
//!
//! Exit status: 0 on success; for `run --wait`, the task's exit code, or 125 when
//! the task completed without its process running (image not found, container
//! create failed, terminated while waiting), or 124 when the process exited 0
//! but the task failed (terminated, wall clock); 1 when the agent answered with
//! an error or could not be reached; 2 for a usage error.

mod output;
mod progress;
mod staging_args;
mod task_args;

use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_client::NodeAgentClient;
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use task_args::TaskArgs;
use tonic::transport::Channel;

/// Exit status of `run --wait` when the task's process never ran.
const EXIT_NOT_RUN: u8 = 125;
/// Exit status of `run --wait` when the process exited 0 but the task failed
/// (terminated, or stopped at its wall-clock limit).
const EXIT_FAILED_ZERO: u8 = 124;

#[derive(Parser)]
#[command(name = "berthctl", version, about = "Talk to a berth node agent")]
struct Cli {
    /// Agent address: unix:///path/to/socket, http://host:port, or https://host:port (TLS).
    #[arg(long, global = true, env = "BERTH_ADDR", default_value = "unix:///run/berth/agent.sock")]
    addr: String,
    /// CA certificate (PEM) that signed the agent's certificate (https://).
    #[arg(long, global = true, env = "BERTH_CA")]
    ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for mutual TLS.
    #[arg(long, global = true, env = "BERTH_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM), for mutual TLS.
    #[arg(long, global = true, env = "BERTH_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Output format of the read verbs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
struct TaskRef {
    #[arg(long)]
    job: String,
    #[arg(long)]
    task: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    Enable,
    Disable,
}

/// Who a start, preparation or release task runs as.
#[derive(clap::Args)]
struct Identity {
    /// Run as this pool user account ([[users]] in the agent's config).
    #[arg(long, conflicts_with = "auto_user")]
    user: Option<String>,
    /// Run as an auto-user of this scope (the default: pool).
    #[arg(long, value_enum)]
    auto_user: Option<Scope>,
    /// Elevation of the auto-user (admin: root).
    #[arg(long, value_enum, default_value_t = Elevation::Nonadmin, conflicts_with = "user")]
    elevation: Elevation,
}

/// A task spec with a command line, on the host or in `image`.
fn simple_spec(
    command_line: String,
    image: Option<String>,
    who: &Identity,
    env: HashMap<String, String>,
) -> pb::TaskSpec {
    pb::TaskSpec {
        command_line,
        container: image.map(|image| pb::ContainerSettings { image, ..Default::default() }),
        environment: env,
        user: Some(identity(who.user.clone(), who.auto_user, who.elevation)),
        ..Default::default()
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Scope {
    Pool,
    Task,
}

#[derive(Clone, Copy, ValueEnum)]
enum Elevation {
    Admin,
    Nonadmin,
}

fn identity(user: Option<String>, scope: Option<Scope>, elevation: Elevation) -> pb::UserIdentity {
    match user {
        Some(user_name) => pb::UserIdentity { user_name, auto_user: None },
        None => pb::UserIdentity {
            user_name: String::new(),
            auto_user: Some(pb::AutoUserSpecification {
                scope: match scope.unwrap_or(Scope::Pool) {
                    Scope::Pool => pb::AutoUserScope::Pool,
                    Scope::Task => pb::AutoUserScope::Task,
                } as i32,
                elevation_level: match elevation {
                    Elevation::Admin => pb::ElevationLevel::Admin,
                    Elevation::Nonadmin => pb::ElevationLevel::NonAdmin,
                } as i32,
            }),
        },
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Submit a task: in a container with --image, else on the host (if the
    /// agent's policy allows host tasks).
    Run {
        #[command(flatten)]
        task: TaskArgs,
        /// Wait for the task to complete and exit with its exit code.
        #[arg(long)]
        wait: bool,
    },
    /// Show what the agent would do with a task, without running it: the
    /// identity, image, devices and policy decisions, and the exact OCI
    /// runtime spec its container would get (or why it would be refused).
    Explain {
        #[command(flatten)]
        task: TaskArgs,
    },
    /// Set the node's start task and run it (on the host without --image).
    StartTask {
        #[arg(long, allow_hyphen_values = true)]
        command_line: String,
        #[arg(long)]
        image: Option<String>,
        /// The node takes no task until the start task succeeded.
        #[arg(long)]
        wait_for_success: bool,
        #[command(flatten)]
        who: Identity,
        /// KEY=VALUE, repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// Set the node's application packages (every task gets them); none:
    /// the node has none. Packages nothing references any more are removed.
    AppPackages {
        /// `id=ID,version=V,url=URL`; repeatable.
        #[arg(long = "app-package", value_name = "ITEMS", value_parser = staging_args::app_package)]
        app_package: Vec<pb::ApplicationPackageReference>,
    },
    /// Set a job's preparation and/or release task on the node.
    ConfigureJob {
        #[arg(long)]
        job: String,
        #[arg(long, allow_hyphen_values = true)]
        prep_command_line: Option<String>,
        #[arg(long, requires = "prep_command_line")]
        prep_image: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        release_command_line: Option<String>,
        #[arg(long, requires = "release_command_line")]
        release_image: Option<String>,
        #[command(flatten)]
        who: Identity,
    },
    /// Show a job's preparation and release tasks.
    Job {
        #[arg(long)]
        job: String,
    },
    /// Release a job from the node: its release task runs once its tasks ended.
    ReleaseJob {
        #[arg(long)]
        job: String,
        /// Terminate the job's tasks instead of waiting for them.
        #[arg(long)]
        terminate_tasks: bool,
    },
    /// Enable or disable task scheduling on the node.
    Scheduling {
        #[arg(value_enum)]
        switch: Switch,
    },
    /// Show one task (the start task is --job @node --task starttask).
    Get {
        #[command(flatten)]
        id: TaskRef,
    },
    /// Running tasks by CPU and memory, refreshed (with the node's load).
    Top {
        /// Time between refreshes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// List tasks.
    List {
        #[arg(long)]
        job: Option<String>,
        /// ACTIVE, PREPARING, RUNNING or COMPLETED.
        #[arg(long)]
        state: Option<String>,
        /// Tasks per ListTasks call (0: the agent's default); every page is fetched.
        #[arg(long, default_value_t = 0)]
        page_size: u32,
    },
    /// Follow task state changes.
    Watch {
        /// Replay events after this sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Print a task's stdout.txt (or stderr.txt).
    Logs {
        #[command(flatten)]
        id: TaskRef,
        #[arg(long)]
        stderr: bool,
        /// Keep printing what the task writes until it completes.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Terminate a task (SIGTERM, then SIGKILL after the grace period).
    Kill {
        #[command(flatten)]
        id: TaskRef,
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
    },
    /// Delete a completed task's record and directory.
    Rm {
        #[command(flatten)]
        id: TaskRef,
    },
    /// Show the node.
    Node,
    /// List the node's images.
    Images,
    /// Remove an image (refused while a task uses it).
    Rmi { image: String },
    /// Set the node's prefetch list (images pulled in the background and kept).
    Prefetch { images: Vec<String> },
    /// Pull an image onto the node.
    Pull {
        image: String,
        /// Registry user (the password is read from stdin).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
}

/// Credentials with the password read from stdin (never from the command line).
fn stdin_credentials(username: Option<String>) -> Result<Option<pb::RegistryCredentials>, String> {
    let Some(username) = username else { return Ok(None) };
    let mut password = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut password)
        .map_err(|e| format!("reading the password: {e}"))?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err("no password on standard input".into());
    }
    Ok(Some(pb::RegistryCredentials { username, password, identity_token: String::new() }))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("berthctl: {msg}");
    ExitCode::FAILURE
}

fn status_msg(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn print_task(out: Output, t: &pb::TaskInfo) {
    match out {
        Output::Json => println!("{}", output::task_json(t)),
        Output::Text => println!("{}", output::task_human(t)),
    }
}

fn print_job(out: Output, j: &pb::JobInfo) {
    match out {
        Output::Json => println!("{}", output::job_json(j)),
        Output::Text => println!("{}", output::job_human(j)),
    }
}

fn parse_env(env: &[String]) -> Result<HashMap<String, String>, String> {
    env.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--env {kv:?} is not KEY=VALUE"))
        })
        .collect()
}

async fn wait_for(
    client: &mut NodeAgentClient<Channel>,
    job: &str,
    task: &str,
    from: u64,
) -> Result<pb::TaskInfo, String> {
    let mut stream = client
        .watch_tasks(pb::WatchTasksRequest { from_sequence: from })
        .await
        .map_err(|s| status_msg(&s))?
        .into_inner();
    while let Some(ev) = stream.message().await.map_err(|s| status_msg(&s))? {
        if let Some(t) = ev.task {
            if t.job_id == job && t.task_id == task && t.state == pb::TaskState::Completed as i32 {
                return Ok(t);
            }
        }
    }
    Err("the agent closed the event stream".into())
}

/// Every task of `ListTasks`, page by page.
async fn all_tasks(
    client: &mut NodeAgentClient<Channel>,
    job_id: String,
    state: pb::TaskState,
    page_size: u32,
) -> Result<Vec<pb::TaskInfo>, String> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListTasksRequest { job_id: job_id.clone(), state: state as i32, page_size, page_token };
        let page = client.list_tasks(req).await.map_err(|s| status_msg(&s))?.into_inner();
        out.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let tls = if cli.addr.starts_with("https://") {
        let ca = cli.ca.as_deref().map(read).transpose()?;
        let cert_and_key = match (&cli.cert, &cli.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        Some(berth_proto::ClientTls { ca, cert_and_key })
    } else {
        None
    };
    let channel = berth_proto::connect_tls(&cli.addr, tls).await.map_err(|e| e.to_string())?;
    let mut client = NodeAgentClient::new(channel);
    let out = cli.output;
    let st = |s: tonic::Status| status_msg(&s);
    match cli.cmd {
        Cmd::Run { task, wait } => {
            let id = TaskRef { job: task.id.job.clone(), task: task.id.task.clone() };
            let spec = task.spec()?;
            let info = client.run_task(pb::RunTaskRequest { task: Some(spec) }).await.map_err(st)?.into_inner();
            if !wait {
                print_task(out, &info);
                return Ok(ExitCode::SUCCESS);
            }
            let bar = (out == Output::Text)
                .then(|| tokio::spawn(progress::follow_preparing(client.clone(), id.job.clone(), id.task.clone())));
            let done = wait_for(&mut client, &id.job, &id.task, info.sequence.saturating_sub(1)).await?;
            if let Some(bar) = bar {
                let _ = bar.await;
            }
            print_task(out, &done);
            let failed = done.result == pb::TaskResult::Failure as i32;
            Ok(match done.exit_code {
                Some(0) if failed => ExitCode::from(EXIT_FAILED_ZERO),
                Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
                None => ExitCode::from(EXIT_NOT_RUN),
            })
        }
        Cmd::Explain { task } => {
            let spec = task.spec()?;
            let e = client.explain_task(pb::ExplainTaskRequest { task: Some(spec) }).await.map_err(st)?.into_inner();
            match out {
                Output::Json => println!("{}", output::explanation_json(&e)),
                Output::Text => print!("{}", output::explanation_human(&e)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::StartTask { command_line, image, wait_for_success, who, env } => {
            let task = simple_spec(command_line, image, &who, parse_env(&env)?);
            let req = pb::ConfigureStartTaskRequest { task: Some(task), wait_for_success };
            print_task(out, client.configure_start_task(req).await.map_err(st)?.get_ref());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AppPackages { app_package } => {
            let req = pb::ConfigureApplicationPackagesRequest { packages: app_package };
            let r = client.configure_application_packages(req).await.map_err(st)?.into_inner();
            let list = output::packages_json(&r.packages);
            match out {
                Output::Json => println!("{list}"),
                Output::Text => {
                    for p in &r.packages {
                        let level = if p.node_level { "node" } else { "tasks" };
                        println!(
                            "{}/{}  {}  {level}  {} task(s)",
                            p.application_id, p.version, p.path, p.task_references
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ConfigureJob { job, prep_command_line, prep_image, release_command_line, release_image, who } => {
            let req = pb::ConfigureJobRequest {
                job_id: job,
                preparation: prep_command_line.map(|c| simple_spec(c, prep_image, &who, HashMap::new())),
                release: release_command_line.map(|c| simple_spec(c, release_image, &who, HashMap::new())),
            };
            print_job(out, client.configure_job(req).await.map_err(st)?.get_ref());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Job { job } => {
            print_job(out, client.get_job(pb::GetJobRequest { job_id: job }).await.map_err(st)?.get_ref());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ReleaseJob { job, terminate_tasks } => {
            let req = pb::ReleaseJobRequest { job_id: job, terminate_tasks };
            print_job(out, client.release_job(req).await.map_err(st)?.get_ref());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Scheduling { switch } => {
            let req = pb::SetNodeSchedulingRequest { enabled: switch == Switch::Enable };
            let r = client.set_node_scheduling(req).await.map_err(st)?.into_inner();
            println!("{}", output::node_state_name(r.state));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get { id } => {
            let t = client.get_task(pb::GetTaskRequest { job_id: id.job, task_id: id.task }).await.map_err(st)?;
            print_task(out, t.get_ref());
            if let (Output::Text, Some(s)) = (out, &t.get_ref().stats) {
                println!("{}", output::stats_human(s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Top { interval, count } => {
            use std::io::IsTerminal;
            let tty = std::io::stdout().is_terminal();
            let mut shown = 0u64;
            loop {
                let node = client.get_node(pb::GetNodeRequest {}).await.map_err(st)?.into_inner();
                let tasks = all_tasks(&mut client, String::new(), pb::TaskState::Running, 0).await?;
                if tty {
                    print!("\x1b[H\x1b[2J");
                }
                match out {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({
                            "cpu_used_percent": node.cpu_used_percent,
                            "memory_used_bytes": node.memory_used_bytes,
                            "load_average": [node.load_average_1m, node.load_average_5m, node.load_average_15m],
                            "tasks": tasks.iter().map(output::task_json).collect::<Vec<_>>(),
                        })
                    ),
                    Output::Text => {
                        println!(
                            "node {}: cpu {:.0}%  memory used {:.1} GiB, available {:.1} GiB  load {:.2} {:.2} {:.2}",
                            node.node_id,
                            node.cpu_used_percent,
                            node.memory_used_bytes as f64 / f64::from(1u32 << 30),
                            node.memory_available_bytes as f64 / f64::from(1u32 << 30),
                            node.load_average_1m,
                            node.load_average_5m,
                            node.load_average_15m
                        );
                        println!("{}", output::top(&tasks));
                    }
                }
                shown += 1;
                if count.is_some_and(|n| shown >= n) {
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(interval).await;
            }
        }
        Cmd::List { job, state, page_size } => {
            let state = match state {
                None => pb::TaskState::Unspecified,
                Some(s) => {
                    pb::TaskState::from_str_name(&s.to_uppercase()).ok_or_else(|| format!("unknown state {s:?}"))?
                }
            };
            let tasks = all_tasks(&mut client, job.unwrap_or_default(), state, page_size).await?;
            match out {
                Output::Json => println!("{}", serde_json::Value::Array(tasks.iter().map(output::task_json).collect())),
                Output::Text => println!("{}", output::table(&tasks)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Watch { from } => {
            let mut stream =
                client.watch_tasks(pb::WatchTasksRequest { from_sequence: from }).await.map_err(st)?.into_inner();
            while let Some(ev) = stream.message().await.map_err(st)? {
                match out {
                    Output::Json => println!("{}", output::event_json(&ev)),
                    Output::Text => {
                        let t = ev.task.as_ref().map(output::task_human).unwrap_or_default();
                        println!("{:>8}  {t}", ev.sequence)
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs { id, stderr, follow } => {
            let path = if stderr { "stderr.txt" } else { "stdout.txt" };
            progress::follow_file(&mut client, &id.job, &id.task, path, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { .. } => unreachable!("answered before connecting"),
        Cmd::Kill { id, grace } => {
            let req = pb::TerminateTaskRequest {
                job_id: id.job,
                task_id: id.task,
                grace_period: grace.and_then(|d| d.try_into().ok()),
            };
            print_task(out, client.terminate_task(req).await.map_err(st)?.get_ref());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rm { id } => {
            client.delete_task(pb::DeleteTaskRequest { job_id: id.job, task_id: id.task }).await.map_err(st)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pull { image, username, password_stdin: _ } => {
            let req = pb::PullImageRequest { reference: image, credentials: stdin_credentials(username)? };
            let mut stream = client.pull_image(req).await.map_err(st)?.into_inner();
            let bar = if out == Output::Text { progress::bar("pulling") } else { None };
            while let Some(p) = stream.message().await.map_err(st)? {
                if let Some(bar) = &bar {
                    progress::update(bar, &p);
                    if p.done {
                        bar.finish_and_clear();
                    }
                }
                match out {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({"reference": p.reference, "bytes_fetched": p.bytes_fetched,
                            "blobs_fetched": p.blobs_fetched, "done": p.done})
                    ),
                    Output::Text if p.done => {
                        println!(
                            "{}: pulled ({} bytes in {} blobs fetched)",
                            p.reference, p.bytes_fetched, p.blobs_fetched
                        )
                    }
                    Output::Text => {}
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Images => {
            let images = client.list_images(pb::ListImagesRequest {}).await.map_err(st)?.into_inner().images;
            for i in images {
                match out {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({"name": i.name, "digest": i.digest, "in_use": i.in_use, "prefetched": i.prefetched})
                    ),
                    Output::Text => println!(
                        "{}  {}{}{}",
                        i.name,
                        i.digest,
                        if i.in_use { "  in-use" } else { "" },
                        if i.prefetched { "  prefetched" } else { "" }
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rmi { image } => {
            client.remove_image(pb::RemoveImageRequest { reference: image }).await.map_err(st)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Prefetch { images } => {
            let req = pb::ConfigureContainersRequest { prefetch_images: images, registries: vec![] };
            client.configure_containers(req).await.map_err(st)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Node => {
            let n = client.get_node(pb::GetNodeRequest {}).await.map_err(st)?.into_inner();
            match out {
                Output::Json => println!("{}", output::node_json(&n)),
                Output::Text => {
                    for (k, v) in output::node_json(&n).as_object().into_iter().flatten() {
                        println!("{k:<20} {}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.cmd {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "berthctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

//! What `berthctl` shows while it waits: a progress bar for an image pull
//! (`pull`, and `run --wait` while the task's image is pulled), on a terminal
//! only; `logs --follow`.

use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_client::NodeAgentClient;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tonic::transport::Channel;

/// A byte progress bar on stderr, or None when stderr is not a terminal.
pub(crate) fn bar(label: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(label.to_owned());
    Some(pb)
}

pub(crate) fn update(bar: &ProgressBar, p: &pb::PullProgress) {
    bar.set_length(p.bytes_total);
    bar.set_position(p.bytes_done);
}

/// While the task is ACTIVE or PREPARING, shows its image's pull progress (the
/// agent reports it on `GetTask`); returns when the task has left PREPARING.
pub(crate) async fn follow_preparing(mut client: NodeAgentClient<Channel>, job: String, task: String) {
    let Some(bar) = bar(&format!("{job}/{task}: pulling")) else { return };
    loop {
        let req = pb::GetTaskRequest { job_id: job.clone(), task_id: task.clone() };
        let Ok(t) = client.get_task(req).await.map(|r| r.into_inner()) else { break };
        if t.state == pb::TaskState::Running as i32 || t.state == pb::TaskState::Completed as i32 {
            break;
        }
        if let Some(p) = &t.pull_progress {
            update(&bar, p);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
}

/// Writes a task file from `offset` on as it grows, until the task has
/// completed and everything it wrote is out.
pub(crate) async fn follow_file(
    client: &mut NodeAgentClient<Channel>,
    job: &str,
    task: &str,
    path: &str,
    follow: bool,
) -> Result<(), String> {
    let st = |s: tonic::Status| crate::status_msg(&s);
    let mut offset = 0;
    let mut stdout = std::io::stdout().lock();
    loop {
        // Whether the task was done before this read: then EOF is final.
        let done = if follow {
            let req = pb::GetTaskRequest { job_id: job.into(), task_id: task.into() };
            client.get_task(req).await.map_err(st)?.into_inner().state == pb::TaskState::Completed as i32
        } else {
            true
        };
        loop {
            let req = pb::ReadTaskFileRequest {
                job_id: job.into(),
                task_id: task.into(),
                path: path.into(),
                offset,
                length: 0,
            };
            let r = match client.read_task_file(req).await {
                Ok(r) => r.into_inner(),
                // Not there yet: the task is still waiting for its directory.
                Err(s) if s.code() == tonic::Code::NotFound && !done => break,
                Err(s) => return Err(st(s)),
            };
            offset += r.data.len() as u64;
            stdout.write_all(&r.data).map_err(|e| e.to_string())?;
            if r.eof || r.data.is_empty() {
                break;
            }
        }
        stdout.flush().map_err(|e| e.to_string())?;
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

//! When each task reached RUNNING and COMPLETED, as `WatchTasks` tells it (one
//! stream for the whole run: the way a scheduler observes tasks).

use berth_proto::v1::node_agent_client::NodeAgentClient;
use berth_proto::v1::{TaskState, WatchTasksRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;
use tonic::transport::Channel;

#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Seen {
    pub running: Option<Instant>,
    pub completed: Option<Instant>,
    pub exit_code: Option<i32>,
}

#[derive(Clone, Default)]
pub(crate) struct Watcher {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    changed: Arc<Notify>,
}

impl Watcher {
    /// Follows the agent's event stream in the background.
    pub(crate) async fn start(client: &NodeAgentClient<Channel>) -> Watcher {
        let w = Watcher::default();
        let mut stream =
            client.clone().watch_tasks(WatchTasksRequest { from_sequence: 0 }).await.expect("watch").into_inner();
        let w2 = w.clone();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                let Some(t) = ev.task else { continue };
                let now = Instant::now();
                let key = format!("{}/{}", t.job_id, t.task_id);
                {
                    let mut seen = w2.seen.lock().unwrap();
                    let s = seen.entry(key).or_default();
                    if t.state == TaskState::Running as i32 {
                        s.running.get_or_insert(now);
                    }
                    if t.state == TaskState::Completed as i32 {
                        s.completed.get_or_insert(now);
                        s.exit_code = t.exit_code.or(Some(-1));
                    }
                }
                w2.changed.notify_waiters();
            }
        });
        w
    }

    pub(crate) fn get(&self, key: &str) -> Seen {
        self.seen.lock().unwrap().get(key).copied().unwrap_or_default()
    }

    /// Waits until `done` holds for every key.
    pub(crate) async fn wait_all(&self, keys: &[String], done: impl Fn(&Seen) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if keys.iter().all(|k| done(&self.get(k))) {
                return;
            }
            notified.await;
        }
    }
}

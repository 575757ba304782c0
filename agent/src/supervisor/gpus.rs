//! GPUs held by running tasks. A task that asked for specific GPUs (`--gpus N`,
//! `--gpus device=...`, or GPU devices by name) holds them from just before its
//! container is made until its runner ends; another such task waits in
//! PREPARING until the GPUs it needs are free, unless `[devices] share_gpus`.
//! Tasks that asked for nothing get every GPU, shared (as on a Batch GPU pool).

use crate::devices::gpus::GpuRequest;
use crate::model::TaskKey;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct GpuHolds {
    held: Mutex<HashMap<String, TaskKey>>,
    freed: Notify,
}

/// What a task wants: some of the node's GPUs, or named ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Count(usize),
    Named(Vec<String>),
}

impl Want {
    /// The exclusive request behind a task's `--gpus` and named GPU devices, if any.
    pub fn of(req: Option<&GpuRequest>, named_gpus: Vec<String>, gpus: &[String]) -> Option<Want> {
        match req {
            Some(GpuRequest::Count(n)) if named_gpus.is_empty() => Some(Want::Count(*n)),
            Some(r) => {
                let mut names = crate::devices::gpus::select(r, gpus).unwrap_or_default();
                names.extend(named_gpus);
                names.dedup();
                Some(Want::Named(names))
            }
            None if !named_gpus.is_empty() => Some(Want::Named(named_gpus)),
            None => None,
        }
    }
}

impl GpuHolds {
    /// Takes the GPUs `want` names (or `n` free ones of `gpus`) for `key`, if
    /// they are free now.
    pub(super) fn try_take(&self, key: &TaskKey, want: &Want, gpus: &[String]) -> Option<Vec<String>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let free = |g: &String| held.get(g).is_none_or(|k| k == key);
        let names: Vec<String> = match want {
            Want::Count(n) => {
                let f: Vec<String> = gpus.iter().filter(|g| free(g)).take(*n).cloned().collect();
                (f.len() == *n).then_some(f)?
            }
            Want::Named(names) => names.iter().all(free).then(|| names.clone())?,
        };
        for g in &names {
            held.insert(g.clone(), key.clone());
        }
        Some(names)
    }

    /// Waits until [`GpuHolds::try_take`] succeeds.
    pub(super) async fn take(&self, key: &TaskKey, want: &Want, gpus: &[String]) -> Vec<String> {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(names) = self.try_take(key, want, gpus) {
                return names;
            }
            tracing::info!(job_id = %key.job, task_id = %key.task, ?want, "waiting for GPUs held by other tasks");
            notified.await;
        }
    }

    /// Marks `names` held by `key` (a task re-attached after a restart).
    pub(super) fn claim(&self, key: &TaskKey, names: &[String]) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for g in names {
            held.insert(g.clone(), key.clone());
        }
    }

    pub(super) fn release(&self, key: &TaskKey) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let before = held.len();
        held.retain(|_, k| k != key);
        if held.len() != before {
            self.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn specific_gpus_are_held_until_released() {
        let holds = std::sync::Arc::new(GpuHolds::default());
        let gpus: Vec<String> = vec!["v/gpu=0".into(), "v/gpu=1".into()];
        let (a, b, c) =
            (TaskKey::new("j", "a").unwrap(), TaskKey::new("j", "b").unwrap(), TaskKey::new("j", "c").unwrap());
        assert_eq!(holds.try_take(&a, &Want::Count(1), &gpus).unwrap(), ["v/gpu=0"]);
        assert_eq!(holds.try_take(&b, &Want::Count(1), &gpus).unwrap(), ["v/gpu=1"], "the next free one");
        assert_eq!(holds.try_take(&c, &Want::Count(1), &gpus), None);
        assert_eq!(holds.try_take(&c, &Want::Named(vec!["v/gpu=0".into()]), &gpus), None);
        let waiter = {
            let (holds, gpus, c) = (holds.clone(), gpus.clone(), c.clone());
            tokio::spawn(async move { holds.take(&c, &Want::Named(vec!["v/gpu=0".into()]), &gpus).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while a holds it");
        holds.release(&a);
        assert_eq!(waiter.await.unwrap(), ["v/gpu=0"]);
        assert_eq!(Want::of(Some(&GpuRequest::Count(2)), vec![], &gpus), Some(Want::Count(2)));
        assert_eq!(Want::of(None, vec![], &gpus), None, "no request: shared");
        assert_eq!(Want::of(Some(&GpuRequest::All), vec![], &gpus), Some(Want::Named(gpus.clone())));
    }
}

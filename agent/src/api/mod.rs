//! The scheduler API (`berth.v1.NodeAgent`) over tonic. Each RPC decodes its
//! request, makes one supervisor call and encodes the answer; conversions are in
//! `convert`, error codes in `error`.

mod authority;
mod convert;
mod error;
mod metrics_layer;
mod server;
mod staging;
mod tls;

pub use server::{serve, ServeError, ServeOptions};

use crate::layout::Layout;
use crate::model::TaskInfo;
use crate::supervisor::Supervisor;
use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_server::NodeAgent;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// `WatchTasks` streams open at once, node-wide; more are RESOURCE_EXHAUSTED.
pub const MAX_WATCHERS: usize = 64;

#[derive(Clone)]
pub struct Api {
    sup: Supervisor,
    layout: Layout,
    watchers: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Api {
    pub fn new(sup: Supervisor, layout: Layout) -> Self {
        Self { sup, layout, watchers: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)) }
    }

    fn info(&self, t: &TaskInfo) -> pb::TaskInfo {
        let p = self.layout.task(t.key());
        let mut info = convert::task_info(t, p.task_dir.display().to_string(), p.working_dir.display().to_string());
        if let Some(live) = self.sup.live_stats(t) {
            info.stats = Some(convert::stats_to_proto(&live));
        }
        if t.state == crate::model::TaskState::Preparing {
            if let Some((name, progress)) = t.spec.container.as_ref().and_then(|c| self.sup.pull_progress(&c.image)) {
                info.pull_progress = Some(convert::pull_progress(&name, &progress));
            }
        }
        if t.state != crate::model::TaskState::Completed {
            info.staging_progress = self.sup.staging_progress(t.key()).map(|p| staging::progress(&p));
        }
        info
    }
}

impl Api {
    fn job_info(&self, s: &crate::supervisor::JobStatus) -> pb::JobInfo {
        pb::JobInfo {
            job_id: s.job.to_string(),
            preparation: s.config.preparation.as_ref().map(convert::spec_to_proto),
            release: s.config.release.as_ref().map(convert::spec_to_proto),
            released: s.config.released,
            preparation_task: s.preparation.as_ref().map(|t| self.info(t)),
            release_task: s.release.as_ref().map(|t| self.info(t)),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for Api {
    async fn get_node(&self, _: Request<pb::GetNodeRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        let mut node = convert::node_info(&self.sup.node_status().await);
        if let Some((config, record)) = self.sup.start_task().await {
            node.start_task_wait_for_success = config.wait_for_success;
            node.start_task = record.as_ref().map(|t| self.info(t));
        }
        Ok(Response::new(node))
    }

    async fn configure_start_task(
        &self,
        req: Request<pb::ConfigureStartTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let r = req.into_inner();
        let task = r.task.ok_or_else(|| error::DecodeError::new("task", "is required"))?;
        let spec = convert::special_spec(task, &crate::model::TaskKey::start_task())?;
        let info = self.sup.configure_start_task(spec, r.wait_for_success).await?;
        Ok(Response::new(self.info(&info)))
    }

    async fn set_node_scheduling(
        &self,
        req: Request<pb::SetNodeSchedulingRequest>,
    ) -> Result<Response<pb::SetNodeSchedulingResponse>, Status> {
        let view = self.sup.set_scheduling(req.into_inner().enabled).await?;
        Ok(Response::new(pb::SetNodeSchedulingResponse { state: convert::node_state_to_proto(view.state) as i32 }))
    }

    type WatchNodeStream = Pin<Box<dyn Stream<Item = Result<pb::NodeStateEvent, Status>> + Send>>;

    async fn watch_node(&self, _: Request<pb::WatchNodeRequest>) -> Result<Response<Self::WatchNodeStream>, Status> {
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("{MAX_WATCHERS} watch streams are open already; close one"))
        })?;
        self.sup.refresh_state().await;
        let stream = tokio_stream::wrappers::WatchStream::new(self.sup.watch_node()).map(move |v| {
            let _held = &permit;
            Ok(pb::NodeStateEvent {
                state: convert::node_state_to_proto(v.state) as i32,
                state_reason: v.reason,
                scheduling_enabled: v.scheduling_enabled,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn configure_application_packages(
        &self,
        req: Request<pb::ConfigureApplicationPackagesRequest>,
    ) -> Result<Response<pb::ConfigureApplicationPackagesResponse>, Status> {
        let packages = staging::packages("packages", req.into_inner().packages)?;
        let installed = self.sup.configure_application_packages(packages).await?;
        Ok(Response::new(pb::ConfigureApplicationPackagesResponse {
            packages: installed.iter().map(staging::package_info).collect(),
        }))
    }

    async fn configure_job(&self, req: Request<pb::ConfigureJobRequest>) -> Result<Response<pb::JobInfo>, Status> {
        let r = req.into_inner();
        let job = crate::model::JobId::new(r.job_id).map_err(crate::supervisor::Error::from)?;
        let special =
            |t: Option<pb::TaskSpec>, key: crate::model::TaskKey| t.map(|t| convert::special_spec(t, &key)).transpose();
        let prep = special(r.preparation, crate::model::TaskKey::job_preparation(&job))?;
        let release = special(r.release, crate::model::TaskKey::job_release(&job))?;
        if prep.is_none() && release.is_none() {
            return Err(error::DecodeError::new("preparation", "or release is required").into());
        }
        let status = self.sup.configure_job(&job, prep, release).await?;
        Ok(Response::new(self.job_info(&status)))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::JobInfo>, Status> {
        let job = crate::model::JobId::new(req.into_inner().job_id).map_err(crate::supervisor::Error::from)?;
        Ok(Response::new(self.job_info(&self.sup.job_status(&job).await?)))
    }

    async fn release_job(&self, req: Request<pb::ReleaseJobRequest>) -> Result<Response<pb::JobInfo>, Status> {
        let r = req.into_inner();
        let job = crate::model::JobId::new(r.job_id).map_err(crate::supervisor::Error::from)?;
        Ok(Response::new(self.job_info(&self.sup.release_job(&job, r.terminate_tasks).await?)))
    }

    async fn run_task(&self, req: Request<pb::RunTaskRequest>) -> Result<Response<pb::TaskInfo>, Status> {
        let task = req.into_inner().task.ok_or_else(|| error::DecodeError::new("task", "is required"))?;
        let (spec, job_preparation) = convert::task_spec(task)?;
        let info = self.sup.run_task(spec, job_preparation).await?;
        Ok(Response::new(self.info(&info)))
    }

    async fn explain_task(
        &self,
        req: Request<pb::ExplainTaskRequest>,
    ) -> Result<Response<pb::TaskExplanation>, Status> {
        let task = req.into_inner().task.ok_or_else(|| error::DecodeError::new("task", "is required"))?;
        let (spec, job_preparation) = convert::task_spec(task)?;
        let explained = self.sup.explain(spec, job_preparation.is_some()).await?;
        Ok(Response::new(convert::explanation(&explained)))
    }

    async fn get_task(&self, req: Request<pb::GetTaskRequest>) -> Result<Response<pb::TaskInfo>, Status> {
        let r = req.into_inner();
        let info = self.sup.get_task(&convert::key(&r.job_id, &r.task_id)?).await?;
        Ok(Response::new(self.info(&info)))
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = req.into_inner();
        let state = convert::task_state(r.state)?;
        let job = (!r.job_id.is_empty()).then_some(r.job_id);
        let after = convert::page_token(&r.page_token)?;
        let (tasks, last) = self.sup.list_tasks(job, state, after, convert::page_size(r.page_size)).await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.iter().map(|t| self.info(t)).collect(),
            next_page_token: last.map(convert::next_page_token).unwrap_or_default(),
        }))
    }

    type WatchTasksStream = EventStream;

    async fn configure_containers(
        &self,
        req: Request<pb::ConfigureContainersRequest>,
    ) -> Result<Response<pb::ConfigureContainersResponse>, Status> {
        let r = req.into_inner();
        let mut registries = Vec::new();
        for reg in r.registries {
            match convert::credentials(reg.credentials)? {
                Some(c) => registries.push((reg.server, c)),
                None => return Err(error::DecodeError::new("registries.credentials", "are required").into()),
            }
        }
        self.sup.configure_containers(r.prefetch_images, registries).await?;
        Ok(Response::new(pb::ConfigureContainersResponse {}))
    }

    async fn list_images(&self, _: Request<pb::ListImagesRequest>) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.sup.list_images().await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images
                .into_iter()
                .map(|i| pb::ImageInfo { name: i.name, digest: i.digest, in_use: i.in_use, prefetched: i.prefetched })
                .collect(),
        }))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        self.sup.remove_image(&req.into_inner().reference).await?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }
    type PullImageStream = Pin<Box<dyn Stream<Item = Result<pb::PullProgress, Status>> + Send>>;

    async fn pull_image(&self, req: Request<pb::PullImageRequest>) -> Result<Response<Self::PullImageStream>, Status> {
        let r = req.into_inner();
        let creds = convert::credentials(r.credentials)?;
        let name = crate::images::normalize(&r.reference).map_err(crate::supervisor::Error::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let sup = self.sup.clone();
        // The pull runs on; progress goes out at most every 200 ms while it changes.
        tokio::spawn(async move {
            let pull = sup.pull_image(&name, creds);
            tokio::pin!(pull);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            let mut last: Option<crate::images::Progress> = None;
            loop {
                tokio::select! {
                    result = &mut pull => {
                        let msg = result.map(|(reference, report)| {
                            let mut p = convert::pull_progress(&reference, &report.progress);
                            p.bytes_fetched = report.bytes_fetched;
                            p.blobs_fetched = u32::try_from(report.blobs_fetched).unwrap_or(u32::MAX);
                            p.done = true;
                            p
                        });
                        let _ = tx.send(msg.map_err(Status::from)).await;
                        return;
                    }
                    _ = tick.tick() => {
                        if let Some((reference, progress)) = sup.pull_progress(&name) {
                            if last.as_ref() != Some(&progress) {
                                let msg = convert::pull_progress(&reference, &progress);
                                last = Some(progress);
                                if tx.send(Ok(msg)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn watch_tasks(&self, req: Request<pb::WatchTasksRequest>) -> Result<Response<EventStream>, Status> {
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("{MAX_WATCHERS} WatchTasks streams are open already; close one"))
        })?;
        let rx = self.sup.watch(req.into_inner().from_sequence);
        let layout = self.layout.clone();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |ev| {
            let _held = &permit; // released when the stream is dropped
            let ev = ev.map_err(Status::from)?;
            let p = layout.task(ev.task.key());
            let info =
                convert::task_info(&ev.task, p.task_dir.display().to_string(), p.working_dir.display().to_string());
            Ok(convert::event(&ev, info))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn terminate_task(&self, req: Request<pb::TerminateTaskRequest>) -> Result<Response<pb::TaskInfo>, Status> {
        let r = req.into_inner();
        let key = convert::key(&r.job_id, &r.task_id)?;
        let grace = convert::duration("grace_period", r.grace_period)?;
        let info = self.sup.terminate(&key, grace).await?;
        Ok(Response::new(self.info(&info)))
    }

    async fn delete_task(
        &self,
        req: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        let r = req.into_inner();
        self.sup.delete(&convert::key(&r.job_id, &r.task_id)?).await?;
        Ok(Response::new(pb::DeleteTaskResponse {}))
    }

    async fn read_task_file(
        &self,
        req: Request<pb::ReadTaskFileRequest>,
    ) -> Result<Response<pb::ReadTaskFileResponse>, Status> {
        let r = req.into_inner();
        let key = convert::key(&r.job_id, &r.task_id)?;
        let f = self.sup.read_file(&key, &r.path, r.offset, r.length).await?;
        Ok(Response::new(pb::ReadTaskFileResponse { data: f.data, size: f.size, eof: f.eof }))
    }
}

//! Pulls (issue 23): cold pulls through the agent against `ctr images pull`
//! of images of the same shape, every run on images whose blobs nobody
//! pulled before, berth and `ctr` taking turns at going first; where berth's
//! time went, from its "image pulled" log lines; then 10 tasks at once on a
//! new image, bytes fetched from the registry against the image's size.

use crate::agent::Agent;
use crate::ctr::Ctr;
use crate::report::Row;
use crate::scenarios::{ms, run, spec};
use crate::watch::Watcher;
use berth_proto::v1 as pb;
use berth_proto::v1::node_agent_client::NodeAgentClient;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Client = NodeAgentClient<Channel>;

/// Pulls `image` through the agent, to its end.
pub(crate) async fn pull(c: &mut Client, image: &str) -> Duration {
    let start = Instant::now();
    let req = pb::PullImageRequest { reference: image.into(), credentials: None };
    let mut stream = c.pull_image(req).await.expect("PullImage").into_inner();
    while stream.message().await.expect("pull progress").is_some() {}
    start.elapsed()
}

/// Images of one shape, each with blobs of its own: berth pulls the
/// `berth` ones, `ctr` the others, one of each per run.
pub(crate) struct Shape<'a> {
    /// "8 layers, 200 MiB"
    pub label: String,
    pub berth: &'a [String],
    pub ctr: &'a [String],
}

pub(crate) struct PullImages<'a> {
    pub shapes: Vec<Shape<'a>>,
    pub shared: &'a str,
    pub shared_bytes: u64,
    pub registry_log: &'a str,
}

/// The parts of berth's pulls, from its log, in the order of the rows.
const PARTS: [(&str, &str); 6] = [
    ("fetch_ms", "fetch: the layers into the content store (containerd hashes them as it writes)"),
    ("check_ms", "decompressing to count the layers' size (max_layer_bytes), summed"),
    ("apply_ms", "Diff.Apply (containerd decompresses, hashes and writes the files), summed"),
    ("snapshots_ms", "snapshot prepare and commit, summed"),
    ("unpack_tail_ms", "unpacking left after the last layer arrived"),
    ("records_ms", "manifests, config and image record"),
];

pub(crate) async fn pulls(c: &mut Client, agent: &Agent, w: &Watcher, ctr: &Ctr, images: &PullImages<'_>) -> Vec<Row> {
    let mut rows = Vec::new();
    // Pulled images are removed (with containerd's GC) once timed, for the disk's sake.
    let berth_side = Ctr { namespace: agent.namespace.clone(), ..ctr.clone() };
    for shape in &images.shapes {
        let (mut berth, mut base) = (Vec::new(), Vec::new());
        for (i, (b, other)) in shape.berth.iter().zip(shape.ctr).enumerate() {
            if i % 2 == 1 {
                base.push(ms(ctr.pull(other)));
            }
            berth.push(ms(pull(c, b).await));
            if i % 2 == 0 {
                base.push(ms(ctr.pull(other)));
            }
            ctr.remove_image(other);
            berth_side.remove_image(b);
        }
        let name = format!("pull: cold, {}, fresh blobs each run (ms)", shape.label);
        rows.push(Row::medians(&name, &berth, &base, "≤ 0.8× ctr pull"));
        let log = agent.log();
        for (field, what) in PARTS {
            let parts: Vec<f64> = shape.berth.iter().filter_map(|image| logged(&log, image, field)).collect();
            if parts.len() == shape.berth.len() {
                rows.push(Row::median_alone(&format!("pull split, {}: {what} (ms)", shape.label), &parts, ""));
            } else {
                eprintln!("berth-bench: {field} missing from the agent's log for some of {:?}", shape.berth);
            }
        }
    }

    let before = registry_bytes(images.registry_log, images.shared);
    let keys: Vec<String> = (0..10).map(|i| format!("shared/t{i}")).collect();
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (mut c, s) = (c.clone(), spec("shared", &format!("t{i}"), images.shared, "/bin/true"));
        submits.spawn(async move { run(&mut c, s).await });
    }
    while submits.join_next().await.is_some() {}
    w.wait_all(&keys, |s| s.completed.is_some()).await;
    let fetched = registry_bytes(images.registry_log, images.shared) - before;
    rows.push(Row::new(
        "pull: 10 tasks on a new image, bytes fetched ÷ image size",
        fetched as f64 / images.shared_bytes as f64,
        None,
        "1.0",
    ));
    rows
}

/// `field` of the agent's (JSON) "image pulled" line for `image`.
fn logged(log: &str, image: &str, field: &str) -> Option<f64> {
    log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| {
        let f = v.get("fields")?;
        // The agent logs the reference as it normalised it.
        let logged = f.get("image")?.as_str()?;
        let pulled = f.get("message")?.as_str()? == "image pulled" && (logged == image || logged.ends_with(image));
        pulled.then(|| f.get(field)?.as_f64()).flatten()
    })
}

/// Bytes the registry sent for blob GETs of `image`'s repository (access log lines).
fn registry_bytes(log: &str, image: &str) -> u64 {
    let repo = image.split_once('/').map_or(image, |(_, r)| r);
    let repo = repo.rsplit_once(':').map_or(repo, |(r, _)| r);
    let needle = format!("\"GET /v2/{repo}/blobs/");
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let after = l.split("HTTP/1.1\" ").nth(1)?;
            let mut f = after.split_whitespace();
            let status = f.next()?;
            let bytes: u64 = f.next()?.parse().ok()?;
            (status == "200").then_some(bytes)
        })
        .sum()
}
